"""One-line summaries of the fit records, for their reprs and `Comparison.__repr__`: a few
numbers in a line, never arrays (a record's default dataclass repr printed every random
effect and design matrix: tens of kB in a notebook)."""

from __future__ import annotations

import math


def num(v) -> str:
    """A number at 4 significant digits (one decimal from 1000 up, so 1527.5 stays whole);
    None and non-finite values as words."""
    if v is None:
        return "–"
    v = float(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if 1e3 <= abs(v) < 1e6:
        return f"{v:.1f}"
    return f"{v:.4g}"


def loglik(v) -> str:
    """A log likelihood or log joint: two decimals (they are compared by differences)."""
    return "–" if v is None else f"{float(v):.2f}"


def variances(data, sigma2, components: dict) -> str:
    """`sigma2=.. tau2=..` (one-way) or `sigma2=.. var[term]=.. cor[a:b]=..` (lme4's term
    names, `|factor` added with several grouping factors). `components`: {factor: {"variances":
    {term: v}, "correlations": {"a:b": r}}} with v, r numbers or summaries ({"mean": ...})."""

    def value(v):
        return v["mean"] if isinstance(v, dict) else v

    if data.is_oneway:
        (comp,) = components.values()
        (tau2,) = comp["variances"].values()
        return f"sigma2={num(value(sigma2))} tau2={num(value(tau2))}"
    parts = [f"sigma2={num(value(sigma2))}"]
    several = data.n_factors > 1
    for factor, comp in components.items():
        tag = f"|{factor}" if several else ""
        parts += [f"var[{t}{tag}]={num(value(v))}" for t, v in comp["variances"].items()]
        parts += [f"cor[{p}{tag}]={num(value(r))}" for p, r in comp["correlations"].items()]
    return " ".join(parts)


def fit_variances(fit) -> str:
    """`variances` of a record with `data`, `sigma2` and `components_by_factor` (EB, joint MAP)."""
    comps = {k: v.to_dict() for k, v in fit.components_by_factor.items()}
    return variances(fit.data, fit.sigma2, comps)
