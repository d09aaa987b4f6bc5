"""The self-contained HTML report of a comparison, one template for every model: numbers,
explanation, figures (inline PNG) and provenance, rendered from `templates/report.html.j2` and
written atomically by the CLI. One context builder reads the one `Comparison`; the parts that
exist for the one-way model only (ANOVA, the balanced closed form, the profile over sigma^2,
the tau path) are gated by the design (`data.is_oneway`), the others by what was run."""

from __future__ import annotations

import base64
import datetime as dt
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench import provenance
from workbench.fit import diagnostics
from workbench.fit.exact_oneway import SCALES, on_scale
from workbench.present import curves, lesson, plots, table

# (alt text, TeX) per place in the report; the one-way model gets its own notation
FORMULAS = {
    "model": [
        (
            "model",
            r"y = X\beta + Zb + e,\quad b_j \sim \mathrm{N}(0, G),\quad "
            r"e \sim \mathrm{N}(0, \sigma^2 I),\quad G = \sigma^2 TT'",
        )
    ],
    "why": [
        (
            "Laplace identity",
            r"\ell(\theta) = h(\theta, \hat b(\theta)) - \frac{1}{2}\log\det\left("
            r"\frac{Z'Z}{\sigma^2} + G^{-1}\right) + \frac{mq}{2}\log 2\pi",
        ),
        (
            "EM identity",
            r"\sigma^2_{ML} = \frac{RSS + \mathrm{tr}(Z V_b Z')}{N},\qquad "
            r"\sigma^2_{joint} = \frac{RSS}{N}",
        ),
    ],
}
ONEWAY_FORMULAS = {
    "model": [
        (
            "likelihood",
            r"y_{ij} \mid \mu_j,\sigma \sim \mathrm{N}(\mu_j,\ \sigma^2),\quad "
            r"i = 1..n_j,\ j = 1..m",
        ),
        ("centered form", r"\mu_j \mid \mu,\tau \sim \mathrm{N}(\mu,\ \tau^2)"),
        ("non-centered form", r"z_j \sim \mathrm{N}(0, 1),\quad \mu_j = \mu + \tau z_j"),
    ],
    "why": [
        (
            "h and l",
            r"h = \log p(y \mid \mu, \sigma, a) + \log p(a \mid \tau),\qquad "
            r"\ell = \log \int p(y \mid \mu,\sigma,a)\, p(a \mid \tau)\, da",
        ),
        (
            "Laplace identity",
            r"\ell(\theta) = h(\theta, \hat a(\theta)) + \frac{1}{2}\sum_j \log v_j + "
            r"\frac{m}{2}\log 2\pi,\qquad v_j = (n_j/\sigma^2 + 1/\tau^2)^{-1}",
        ),
        (
            "EM identity",
            r"\sigma^2_{ML} = \frac{RSS + \sum_j n_j v_j}{N},\qquad "
            r"\sigma^2_{joint} = \frac{RSS}{N}",
        ),
    ],
}
# rows of the explanation table: (label, key of explain(c).to_dict()["eb_ml"/"joint_map"])
TERMS = [
    ("σ²", "sigma2"),
    ("RSS = ||y − Xβ − Zb||²", "rss"),
    ("missing term tr(Z V_b Z′) (one-way: Σ n_j v_j)", "missing"),
    ("hidden degrees of freedom p_D", "p_d"),
    ("volume ½ Σ log det V_bj", "volume"),
    ("log joint h", "log_joint"),
    ("log marginal ℓ", "log_marginal"),
    ("EM σ² with the missing term", "sigma2_em_with"),
    ("EM σ² without it", "sigma2_em_without"),
]
ONEWAY_TERMS = [
    ("EM τ² with the missing term, (Σ â² + Σ v)/m", "tau2_em_with"),
    ("EM τ² without it, Σ â²/m", "tau2_em_without"),
]


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def formula_png(tex: str) -> bytes:
    """Render a formula with matplotlib's mathtext (offline, no LaTeX install)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(0.01, 0.01))
    fig.text(0, 0, f"${tex}$", fontsize=13)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight", pad_inches=0.04, transparent=True)
    plt.close(fig)
    return buf.getvalue()


def versions() -> dict[str, str]:
    """The provenance rows: versions, lock hash, git commit, BLAS and threads
    (`workbench.provenance.rows`)."""
    return provenance.rows()


def _fmt(v, digits: int = 6) -> str:
    """A value for the report: "–" for None and NaN, "∞"/"−∞" for an unbounded end."""
    if v is None:
        return "–"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x, digits) for x in v) + "]"
    if isinstance(v, (float, np.floating)) and not np.isfinite(v):
        return "∞" if v > 0 else ("−∞" if v < 0 else "–")
    return f"{v:.{digits}g}" if isinstance(v, (float, np.floating)) else str(v)


def _draw(figures) -> tuple[list[dict], list[str]]:
    """Inline PNGs of `figures` [(id, title, build)]. A figure that cannot be drawn never
    stops the report: a stated reason (`plots.SkippedFigureError`) or the error becomes a note
    shown where the figure would be."""
    images, notes = [], []
    for i, title, build in figures:
        try:
            images.append({"id": i, "title": title, "src": _png_uri(plots.to_png(build()))})
        except plots.SkippedFigureError as exc:
            notes.append(f"{title}: not drawn ({exc}).")
        except Exception as exc:  # noqa: BLE001 - the numbers are computed; keep the report
            import matplotlib.pyplot as plt

            plt.close("all")
            warnings.warn(f"report figure '{title}' could not be drawn: {exc!r}", stacklevel=2)
            notes.append(f"{title}: could not be drawn ({type(exc).__name__}: {exc}).")
    return images, notes


def _rhat_bad(diag: dict) -> bool:
    """R-hat above the limit, or not computed (one chain, chains that did not move): either
    way convergence is not shown."""
    return diagnostics.failed(diag)["r_hat"]


MAX_FACTOR_FIGURES = 4  # caterpillars (and funnels) drawn for at most this many factors


def _factor_figures(c) -> list[tuple[str, str, object]]:
    """The funnel (with MCMC, for a factor with a random intercept) and the caterpillar of
    every grouping factor, up to `MAX_FACTOR_FIGURES` factors (levels thinned in each). One
    factor keeps the ids "funnel" and "caterpillar"; several number them by factor."""
    d = c.data
    out = []
    for k, g in enumerate(d.groupings[:MAX_FACTOR_FIGURES]):
        tag = "" if d.n_factors == 1 else f"-{k + 1}"
        by = "" if d.n_factors == 1 else f" ({g.name})"
        if c.mcmc is not None and curves.has_intercept(d, k):
            out.append(
                (
                    f"funnel{tag}",
                    f"The funnel{by}: the intercept SD against group effects (MCMC draws)",
                    lambda k=k, g=g: plots.plot_funnel(curves.funnel(c, k), g.name),
                )
            )
        out.append(
            (
                f"caterpillar{tag}",
                f"Random-effect intervals by method{by}",
                lambda k=k, g=g: plots.plot_caterpillars(curves.caterpillars(c, factor=k), g.name),
            )
        )
    return out


def figures(c, truth: dict | None) -> list[tuple[str, str, object]]:
    """(id, caption, build) of every figure that applies to this comparison: the design gates
    the one-way figures, what was run gates the rest. Each build computes its curves
    (`curves.py`) and draws them (`plots.py`) only when called."""
    d = c.data
    if c.eb_ml is None:
        return []
    out = [
        (
            "marginals",
            "Every variance component: the posterior (MCMC) and every point estimate"
            if c.mcmc is not None
            else "Every variance component: every point estimate (MCMC not run: no posterior)",
            lambda: plots.plot_marginals(curves.marginals(c, truth)),
        )
    ]
    jm = c.joint_maps.get(("centered", False))
    if d.is_oneway:
        st = d.oneway
        out.append(
            (
                "profiles",
                "Log marginal and log joint over sigma²: the volume term"
                + ("" if curves.interior(jm) else " (no interior joint mode: no maximum of h)"),
                lambda: plots.plot_profiles(
                    curves.profile_curves(
                        st, c.eb_ml.sigma2, float(jm.sigma2) if curves.interior(jm) else None
                    ),
                    d.y_name,
                ),
            )
        )
        tau2 = float(c.eb_ml.G[0, 0])
        joint = (float(np.sqrt(jm.G[0, 0])), float(jm.log_joint)) if curves.interior(jm) else None
        out.append(
            (
                "taupath",
                "The log joint along tau → 0",
                lambda: plots.plot_tau_path(
                    curves.tau_path(st, curves.tau_reference(st, tau2)),
                    d.y_name,
                    float(np.sqrt(tau2)) if tau2 > 0 else None,
                    joint,
                    zoom=curves.tau_zoom(
                        st, curves.tau_reference(st, tau2), at=(joint[0],) if joint else ()
                    ),
                ),
            )
        )
    else:
        out.append(
            (
                "scalepath",
                "Log marginal and log joint as every variance shrinks",
                lambda: plots.plot_scale_path(*curves.scale_paths(c.eb_ml)),
            )
        )
    out += exact_figures(c)
    out += _factor_figures(c)
    if c.mcmc is not None:
        out.append(
            (
                "rank",
                "Sampler diagnostics: rank plots of the fixed effects, sigma, the SDs and the "
                "correlations, with the p of the rank test",
                lambda: plots.plot_rank(c.mcmc),
            )
        )
    return out


# the most value columns in one estimates table: with the method column this fits 800 px and
# A4 portrait (~650 px of content); more columns continue in a further table
MAX_COLUMNS = 4
# what each method's objective is (the objective column's second line)
OBJECTIVES = {
    "EB-ML": "log lik",
    "EB-REML": "restricted log lik",
}


@dataclass(frozen=True)
class Quantity:
    """One column of the estimates tables: a value (`key`) with an optional second line (the
    SE, the SD) and its head and words."""

    label: str
    key: str
    sub_key: str | None = None
    sub_label: str = ""
    head_note: str = ""


def _method_values(c) -> list[tuple[str, str, dict]]:
    """(method, status words or "", {quantity key: value}) of every method run: ANOVA (one-way),
    EB-ML, EB-REML, the four joint MAP variants, MCMC mean/median/mode. The objective of
    EB-REML is the restricted log likelihood, as the CLI's table (lme4's logLik; its REML
    criterion is -2 times it)."""
    d = c.data
    out: list[tuple[str, str, dict]] = []

    def point(beta, sigma2, G) -> dict:
        vals = {f"beta:{n}": float(b) for n, b in zip(d.fixed_names, beta, strict=True)}
        vals.update(curves.component_values(G, d))
        vals.update({"sd" + k[3:]: _sqrt(v) for k, v in vals.copy().items() if k[:4] == "var:"})
        vals.update(sigma2=sigma2, sigma=_sqrt(sigma2))
        return vals

    anova = c.anova
    if anova is not None:
        vals = {
            "beta:(Intercept)": anova.mu,
            "var:(Intercept)": anova.tau2,
            "sd:(Intercept)": _sqrt(anova.tau2),
            "sigma2": anova.sigma2,
            "sigma": _sqrt(anova.sigma2),
        }
        out.append(("ANOVA (moments)", "", vals))
    for fit in (c.eb_ml if "eb-ml" in c.settings.methods else None, c.eb_reml):
        if fit is not None:
            name = f"EB-{fit.method.upper()}"
            vals = point(fit.beta, fit.sigma2, fit.G)
            vals.update({f"se:{n}": float(s) for n, s in zip(d.fixed_names, fit.se, strict=True)})
            vals.update(objective=fit.loglik, objective_what=OBJECTIVES[name])
            out.append((name, "", vals))
    for key, r in c.joint_maps.items():
        what = "log joint" + (" + priors" if key[1] else "")
        vals = {"objective": r.log_joint, "objective_what": what}
        if curves.interior(r):
            vals.update(point(r.beta, r.sigma2, r.G))
        out.append((curves.JOINT_LABELS[key], r.status.replace("_", " "), vals))
    if c.mcmc is not None:
        o = c.mcmc.to_dict()
        for stat in ("mean", "median", "mode"):
            vals = {f"beta:{n}": v[stat] for n, v in o["fixed_effects"].items()}
            vals.update(curves.summary_values(d, o["variance_components"], stat))
            vals.update(table.sd_values(d, o["variance_components"], stat))  # the SDs' own
            vals.update(sigma2=o["sigma2"][stat], sigma=o["sigma"][stat])
            if stat == "mean":
                vals.update({f"se:{n}": v["sd"] for n, v in o["fixed_effects"].items()})
            out.append((f"MCMC {stat}", "", vals))
    return out


def _quantities(d) -> tuple[list[Quantity], list[Quantity], Quantity]:
    """The columns: the fixed effects (estimate, SE beneath), the variance components
    (variance, SD beneath; correlations; the residual), and the objective."""
    fixed = [
        Quantity(f"β {n}" if not d.is_oneway else "μ", f"beta:{n}", f"se:{n}", "±", "± SE / sd")
        for n in d.fixed_names
    ]
    several = d.n_factors > 1
    comps = curves.components(d)
    var = [
        Quantity(
            "τ² (" + p.factor + ")" if d.is_oneway else f"{p.name} ({p.factor})",
            p.key,
            "sd" + p.key[3:],
            "τ" if d.is_oneway else "SD",
            "variance, τ" if d.is_oneway else "variance, SD",
        )
        for p in comps
        if p.kind == "var"
    ]
    var += [
        Quantity(p.name + (f" ({p.factor})" if several else ""), p.key, head_note="correlation")
        for p in comps
        if p.kind == "cor"
    ]
    var.append(Quantity("σ² (residual)", "sigma2", "sigma", "σ", "variance, σ"))
    return fixed, var, Quantity("objective", "objective", "objective_what", "", "see below")


def estimates(c) -> list[dict]:
    """The estimates tables, methods as rows (ANOVA for the one-way model, EB-ML, EB-REML, the
    four joint MAP variants with their status, MCMC mean/median/mode) and quantities as columns,
    at most `MAX_COLUMNS` value columns a table so that each fits 800 px and A4 portrait: one
    table when everything fits, else the fixed effects with the objective, then the variance
    components (each continued in a further table when it has more columns). Each table:
    {"id", "caption", "head": [(label, note)], "rows": [(method, status, [(value, second)])]}."""
    d = c.data
    methods = _method_values(c)
    fixed, var, objective = _quantities(d)
    every = [*fixed, *var, objective]
    if len(every) <= MAX_COLUMNS:
        groups = [("est", "Every method's estimates", every)]
    else:
        groups = [
            (
                "est-fixed",
                "Fixed effects (estimate, ± its SE or posterior sd)",
                [*fixed, objective],
            ),
            ("est-variances", "Variance components (variance, its SD beneath)", var),
        ]
    out = []
    for gid, caption, qs in groups:
        qs = [q for q in qs if any(q.key in v for _, _, v in methods)]
        parts = [qs[i : i + MAX_COLUMNS] for i in range(0, len(qs), MAX_COLUMNS)]
        for k, part in enumerate(parts):
            rows = [(name, status, [_cell(v, q) for q in part]) for name, status, v in methods]
            out.append(
                {
                    "id": gid if k == 0 else f"{gid}-{k + 1}",
                    "caption": caption + (f" (continued, {k + 1} of {len(parts)})" if k else ""),
                    "head": [(q.label, q.head_note) for q in part],
                    "rows": rows,
                }
            )
    return out


def _cell(vals: dict, q: Quantity) -> tuple[str, str]:
    """(value, second line) of quantity `q` for one method; the second line is empty where the
    method has no value for it."""
    main = _fmt(vals.get(q.key))
    if q.sub_key is None or q.sub_key not in vals:
        return main, ""
    sub = vals[q.sub_key]
    return main, (sub if isinstance(sub, str) else f"{q.sub_label} {_fmt(sub)}".strip())


def _sqrt(v):
    return float(np.sqrt(v)) if v is not None and np.isfinite(v) and v >= 0 else None


def priors_text(c) -> dict[str, str]:
    """The priors as the report states them: the LKJ prior only where a term has correlations
    (a block of several random effects); the record lists it whenever there are several."""
    out = c.priors.describe()
    if not any(len(b.cols) > 1 for b in c.data.blocks):
        out.pop("correlations", None)
    return out


def formula_of(d) -> str:
    return d.formula or f"{d.y_name} ~ 1 + (1 | {d.group_name})"


def groups_text(d) -> str:
    """lme4's "groups:" list: "plate, 24; sample, 6"."""
    return "; ".join(f"{g.name}, {g.n_levels}" for g in d.groupings)


def lme4_text(fit) -> str:
    """An lme4-like printout of an EB-ML fit: one row group per grouping factor."""
    d = fit.data
    comps = fit.components_by_factor
    width = max(8, *(len(g) for g in comps))
    lines = [
        "Linear mixed model fit by maximum likelihood (workbench EB-ML)",
        f"Formula: {formula_of(d)}",
        "     logLik  deviance",
        f"  {fit.loglik:9.4f}  {fit.objective:8.4f}",
        "Random effects:",
        f" {'Groups':<{width}} Name          Variance  Std.Dev.",
    ]
    for group, vc in comps.items():
        for k, (name, v) in enumerate(vc.variances.items()):
            grp = group if k == 0 else ""
            lines.append(f" {grp:<{width}} {name:<13} {_fmt(v):<9} {_fmt(_sqrt(v), 5)}")
    lines.append(
        f" {'Residual':<{width}} {'':<13} {_fmt(fit.sigma2):<9} {_fmt(_sqrt(fit.sigma2), 5)}"
    )
    for group, vc in comps.items():
        for name, r in vc.correlations.items():  # 0/0 at a singular fit: "–"
            where = "" if d.n_factors == 1 else f" | {group}"
            text = f"{r:.4f}" if np.isfinite(r) else _fmt(r, 4)
            lines.append(f" Corr({name}{where}) = {text}")
    lines += [
        f"Number of obs: {d.n_obs}, groups:  {groups_text(d)}",
        "Fixed effects:",
        "                   Estimate Std. Error",
    ]
    lines += [
        f"{n:<18} {_fmt(v['estimate']):>9} {_fmt(v['se']):>10}"
        for n, v in fit.fixed_effects().items()
    ]
    return "\n".join(lines)


def _explanation(c) -> tuple[dict | None, str | None]:
    """explain(c) as JSON-ready numbers (non-finite terms null), or None without EB-ML; with
    several grouping factors a failure becomes a note in place of the section."""
    if c.eb_ml is None:
        return None, None
    from workbench.explain import explain

    if c.data.n_factors == 1:
        return explain(c).to_dict(), None
    try:
        return explain(c).to_dict(), None
    except Exception as exc:  # noqa: BLE001 - the estimates stand; say what is missing
        warnings.warn(f"report: no explanation ({exc!r})", stacklevel=2)
        return None, f"The explanation could not be computed ({type(exc).__name__}: {exc})."


def explanation_variances(ex: dict | None, d) -> list[tuple[str, object, object]]:
    """(label, EB-ML value, joint-mode value or None) of every variance in the explanation:
    keyed by term (one factor) or lme4's "term|factor" (several), labelled "term (factor)"
    as in the estimates table."""
    if not ex:
        return []
    labels = {f"{p.name}|{p.factor}": f"{p.name} ({p.factor})" for p in curves.components(d)}
    jm = (ex.get("joint_map") or {}).get("variances") or {}
    return [(labels.get(k, k), v, jm.get(k)) for k, v in ex["eb_ml"]["variances"].items()]


def explanation_by_factor(ex: dict | None) -> list[dict]:
    """Several grouping factors: each factor's part of the explanation at the EB-ML point and
    the joint mode (`explain.FactorTerms`), one row per (factor, point)."""
    if not ex or not ex["eb_ml"].get("by_factor"):
        return []
    points = [("EB-ML", ex["eb_ml"])]
    if ex.get("joint_map") and ex["joint_map"].get("by_factor"):
        points.append(("joint mode", ex["joint_map"]))
    return [
        {"factor": name, "point": label, **p["by_factor"][name]}
        for name in ex["eb_ml"]["by_factor"]
        for label, p in points
        if name in p["by_factor"]
    ]


def grouping_factors(d) -> list[dict]:
    """Per grouping factor: the data summary's row (name, levels, level sizes, its terms) with
    the median level size and whether the levels are balanced."""
    out = []
    for g, row in zip(d.groupings, d.summary()["grouping_factors"], strict=True):
        n = g.sizes()
        out.append({**row, "size_median": float(np.median(n)), "balanced": bool(np.all(n == n[0]))})
    return out


def build_context(
    c,
    *,
    command: str,
    case_text: str | None = None,
    truth: dict | None = None,
    fragment: bool = False,
    title: str | None = None,
) -> dict:
    """Everything the template shows, computed once (figures as inline PNG), for any model.
    `title`: the report's h1 (by default the case file's title, read from `case_text`)."""
    t0 = time.perf_counter()
    d = c.data
    oneway = d.is_oneway
    ex, ex_failure = _explanation(c)
    top = story(c, fragment)
    images, figure_notes = _draw([] if fragment else figures(c, truth))
    if not fragment and d.n_factors > MAX_FACTOR_FIGURES and c.eb_ml is not None:
        figure_notes.append(
            f"Random-effect intervals are drawn for the first {MAX_FACTOR_FIGURES} of the "
            f"{d.n_factors} grouping factors; the JSON output has every factor's."
        )
    diag = c.mcmc.diagnostics if c.mcmc is not None else None
    bad = diagnostics.failed(diag) if diag is not None else {}
    banner = list(c.mcmc.warnings) if any(bad.values()) else []  # any check failed
    timings = dict(c.timings)
    timings["report (explanation and plots)"] = time.perf_counter() - t0
    tex = ONEWAY_FORMULAS if oneway else FORMULAS
    formulas = (
        {}
        if fragment
        else {k: [(alt, _png_uri(formula_png(t))) for alt, t in v] for k, v in tex.items()}
    )
    prof = c.profile
    return {
        "fragment": fragment,
        "oneway": oneway,
        "title": title
        or case_title(case_text)
        or f"{formula_of(d)}: joint MAP vs empirical Bayes vs posterior",
        **top,
        "formula": formula_of(d),
        "data": {**d.summary(), "citation": provenance.citation(d.source)},
        "factors": grouping_factors(d),
        "several": d.n_factors > 1,
        "groups_text": groups_text(d),
        "priors": priors_text(c),
        "priors_used": priors_used(c),
        # the form MCMC sampled (the collapsed one falls back to noncentered for large models)
        "mcmc_parametrization": c.mcmc.settings.parametrization if c.mcmc is not None else None,
        "settings": c.settings.to_dict(),
        "formulas": formulas,
        "estimates": estimates(c),
        "reml_criterion": c.eb_reml.objective if c.eb_reml is not None else None,
        "lme4": lme4_text(c.eb_ml) if c.eb_ml is not None else "",
        "anova": c.anova.to_dict() if c.anova is not None else None,
        "profile": [
            (iv.name, _fmt(iv.estimate), _fmt(iv.lower), _fmt(iv.upper)) for iv in prof.intervals
        ]
        if prof is not None
        else [],
        "profile_level": prof.level if prof is not None else None,
        "profile_failure": c.profile_failure,
        "jm": [(curves.JOINT_LABELS[k], r) for k, r in c.joint_maps.items()],
        "ex": ex,
        "ex_failure": ex_failure,
        "ex_variances": explanation_variances(ex, d),
        "ex_by_factor": explanation_by_factor(ex),
        "exact": exact_context(c),
        "lesson": None if fragment else lesson.context(c),
        "terms": TERMS + (ONEWAY_TERMS if oneway else []),
        "fmt": _fmt,
        "diag": diag,
        "banner": banner,
        "warnings": c.warnings(),
        "images": images,
        "figure_notes": figure_notes,
        "rhat_bad": _rhat_bad(diag) if diag is not None else False,
        "bad": bad,
        "versions": versions(),
        "command": command,
        "case_text": case_text,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "timings": timings,
        "seed": c.settings.seed,
    }


def case_title(case_text: str | None) -> str | None:
    """The case file's `title` (None without a case file or a title)."""
    if not case_text:
        return None
    import tomllib

    try:
        title = tomllib.loads(case_text).get("title")
    except tomllib.TOMLDecodeError:
        return None
    return str(title).strip() or None if title else None


def story(c, fragment: bool = False) -> dict:
    """The top of the report: the headline's two sentences and the second framing (the joint
    mode beside the marginal posterior modes on each scale), from `explain`."""
    from workbench.explain import framing, headline, variant_roles

    roles = {curves.JOINT_LABELS[k]: v for k, v in variant_roles(c).items()}
    if c.eb_ml is None and c.eb_reml is None and c.mcmc is None:
        return {
            "headline": [],
            "framing": None,
            "framing_images": [],
            "framing_notes": [],
            "jm_roles": roles,
        }
    fr = framing(c)
    fd = fr.to_dict() if fr else None
    images, notes = _draw(
        [
            (
                "framing",
                f"The joint mode against the {fd['source']}'s marginal modes, on each scale",
                lambda: plots.plot_framing(fd),
            )
        ]
        if fd is not None and not fragment
        else []
    )
    return {
        "headline": list(headline(c)),
        "framing": fd,
        "framing_images": images,
        "framing_notes": notes,
        "jm_roles": roles,
    }


def priors_used(c) -> str:
    """Which of the computed estimators used the priors, in words ("" when none did: then the
    priors are not shown as settings)."""
    users = []
    if c.mcmc is not None:
        users.append("MCMC")
    if any(with_priors for _, with_priors in c.joint_maps):
        users.append("the joint MAP “+ priors”")
    if c.exact_posterior is not None:
        users.append("the exact posterior")
    return ", ".join(users[:-1]) + " and " + users[-1] if len(users) > 1 else "".join(users)


def key_figure(c) -> str:
    """The id of the notebook's one figure: with MCMC, every variance component's posterior
    against every point estimate; without, the log marginal against the log joint (one-way:
    over sigma^2, the volume term; otherwise along the scale path of every variance)."""
    if c.mcmc is not None:
        return "marginals"
    return "profiles" if c.data.is_oneway else "scalepath"


def notebook(c) -> str:
    """Jupyter's display of comparison `c` (`Comparison._repr_html_`): the headline, the
    estimates, the key figure (`key_figure`) and what ran, MCMC's settings and diagnostics only
    when it ran; the whole report is `render`. Template: templates/notebook.html.j2."""
    from dataclasses import asdict

    import jinja2

    d = c.data
    key = key_figure(c)
    images, notes = _draw([f for f in figures(c, None) if f[0] == key])
    # the settings the sampler ran with (parametrization after any fallback), only when it ran
    mcmc = {**asdict(c.mcmc.settings), "sampler": c.mcmc.sampler} if c.mcmc else None
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("notebook.html.j2").render(
        headline=story(c, fragment=True)["headline"],
        formula=formula_of(d),
        data=d.summary(),
        groups_text=groups_text(d),
        estimates=estimates(c),
        images=images,
        figure_notes=notes,
        methods=list(c.settings.methods),
        n_starts=c.settings.n_starts if c.joint_maps else None,
        mcmc=mcmc,
        diag=c.mcmc.diagnostics if c.mcmc is not None else None,
        priors=priors_text(c),
        priors_used=priors_used(c),
        warnings=c.warnings(),
        fmt=_fmt,
    )


def render(c, **kwargs) -> str:
    """The report of comparison `c` as one HTML string (see `build_context` for kwargs)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html.j2").render(**build_context(c, **kwargs))


# ----------------------------------------------------------------------------------------------
# The exact posterior of the one-way model (`Comparison.exact_posterior`): figure, text, table

# (quantity, label) in panel order; each quantity's scale is `exact_oneway.SCALES`'
EXACT_PANELS = (
    ("tau", "τ"),
    ("tau2", "τ²"),
    ("log_tau", "log τ"),
    ("sigma", "σ"),
    ("sigma2", "σ²"),
    ("log_sigma", "log σ"),
)
# the joint mode set beside the exact marginal modes: the first interior one of these
JOINT_ORDER = (
    ("centered", True),
    ("centered", False),
    ("noncentered", True),
    ("noncentered", False),
)


def _point_variances(c) -> list[tuple[str, float, float]]:
    """(label, sigma^2, tau^2) of EB-ML, EB-REML and every interior joint mode."""
    out = [
        (f"EB-{f.method.upper()}", float(f.sigma2), float(f.G[0, 0]))
        for f in (c.eb_ml, c.eb_reml)
        if f is not None
    ]
    out += [
        (curves.JOINT_LABELS[key], float(r.sigma2), float(r.G[0, 0]))
        for key, r in c.joint_maps.items()
        if curves.interior(r)
    ]
    return out


def _mcmc_sd_draws(c, var: str) -> np.ndarray | None:
    """MCMC draws of sigma or tau (None without MCMC)."""
    if c.mcmc is None:
        return None
    try:
        return np.asarray(c.mcmc.draws(var), float).reshape(-1)
    except KeyError:
        return np.asarray(c.mcmc.draws("sd"), float)[:, 0] if var == "tau" else None


def _num(v: float) -> str:
    """4 significant digits, without an exponent for values from 1e-3 to 1e7."""
    if 1e4 <= abs(v) < 1e7:
        return f"{v:.0f}"
    return f"{v:.4g}"


def _relative(value: float, ref: float) -> str:
    """'12% below' / '3.4% above' / 'equal to'."""
    if ref == 0 or not np.isfinite(value):
        return "not comparable with"
    r = (value - ref) / abs(ref)
    if abs(r) < 5e-4:
        return "equal to"
    if r > 1:
        return f"{value / ref:.3g} times"
    return f"{100 * abs(r):.3g}% " + ("below" if r < 0 else "above")


def exact_panels(c) -> tuple[plots.ExactPanel, ...]:
    """The panels of the exact marginal posterior of tau and sigma on each scale, every
    estimator marked: the exact mode (and interior local mode), mean and median, EB-ML and
    EB-REML, the interior joint modes and MCMC's half-sample mode of its draws."""
    e = c.exact_posterior
    points = _point_variances(c)
    no_joint = not any(curves.interior(r) for r in c.joint_maps.values())
    no_centered = not any(
        curves.interior(r) for (par, _), r in c.joint_maps.items() if par == "centered"
    )
    panels = []
    for name, label in EXACT_PANELS:
        axis, power = SCALES[name]
        var = ("sigma", "tau")[axis]
        s, curve = e.summaries[name], e.curves[name]
        marks: list[tuple[str, float | None]] = [("exact mode", s.mode)]
        if s.local_mode is not None:
            marks.append(("exact local mode", s.local_mode))
        marks += [("exact mean", s.mean), ("exact median", s.median)]
        notes = []
        for lab, s2, t2 in points:
            v = on_scale(t2 if var == "tau" else s2, power)
            marks.append((lab, v))
            if v is None and lab.startswith("EB"):
                notes.append(f"{lab}: {label} at −∞ ({'τ²' if var == 'tau' else 'σ²'} = 0)")
        draws = _mcmc_sd_draws(c, var)
        if draws is not None:
            pos = draws[draws > 0]
            draws = pos**power if power else np.log(pos)
            marks.append(("MCMC mode (half-sample)", curves.mode(draws)))
        if name == "tau2":
            notes.insert(0, "density → ∞ at 0: the mode is 0 (boundary)")
        elif s.boundary:
            notes.insert(0, f"density largest at {label} = 0: the mode is 0 (boundary)")
        if no_joint and c.joint_maps:
            notes.append("no interior joint mode (any joint MAP variant)")
        elif no_centered and c.joint_maps:
            notes.append("no interior centered joint mode")
        q0, q1 = (float(v) for v in e.quantile(name, [0.001, 0.995]))
        width = q1 - q0
        if power and q0 < 0.25 * q1:  # from just left of 0: marks at 0 stay visible
            lo, hi = -0.02 * q1, q1 * 1.03
        else:
            lo, hi = q0 - 0.05 * width, q1 + 0.05 * width
        x, y = np.asarray(curve.x), np.asarray(curve.density)
        body = (x >= lo + 0.03 * (hi - lo)) & (x <= hi)
        body = body if body.any() else (x >= lo) & (x <= hi)
        ymax = 1.15 * float(np.nanmax(y[body])) if body.any() else 1.0
        what = {1: "", 2: " (variance)", 0: " (log of the SD)"}[power]
        panels.append(
            plots.ExactPanel(
                title=f"{label}{what}: exact marginal posterior",
                xlabel=f"{label} ({c.data.y_name}{'²' if power == 2 else ''})" if power else label,
                x=x,
                density=y,
                window=(lo, hi),
                ymax=ymax if np.isfinite(ymax) and ymax > 0 else 1.0,
                marks=tuple(marks),
                note="\n".join(notes),
            )
        )
    return tuple(panels)


def exact_sentences(c) -> list[str]:
    """Where each exact marginal mode is, on which scale, and how far the joint mode (the first
    interior one of `JOINT_ORDER`) sits from the marginal modes of tau^2 and sigma^2."""
    s = c.exact_posterior.summaries

    def mode_text(name: str, label: str) -> str:
        m = s[name]
        if name == "tau2" and m.boundary:
            local = (
                f", its interior local mode {_num(m.local_mode)}"
                if m.local_mode is not None
                else ", no interior local mode"
            )
            return f"{label} 0 (a boundary mode: the density of {label} is unbounded at 0{local})"
        if m.boundary:
            return f"{label} 0 (a boundary mode: the density of {label} is largest at 0)"
        if name.startswith("log_"):
            sd = "τ" if name == "log_tau" else "σ"
            return f"{label} {_num(m.mode)} ({sd} = {_num(np.exp(m.mode))})"
        return f"{label} {_num(m.mode)}"

    out = [
        "Exact marginal posterior modes, each of the density on its own scale: "
        + ", ".join(mode_text(n, lab) for n, lab in EXACT_PANELS[:3])
        + "; "
        + ", ".join(mode_text(n, lab) for n, lab in EXACT_PANELS[3:])
        + ". The mode of τ² is not the square of the mode of τ: a mode moves with the scale."
    ]
    key = next((k for k in JOINT_ORDER if curves.interior(c.joint_maps.get(k))), None)
    if key is None:
        if c.joint_maps:
            out.append(
                "No joint MAP variant has an interior mode on these data (the log joint rises "
                "without bound as τ → 0), so there is no joint mode to set beside these."
            )
    else:
        lead = f"The {curves.JOINT_LABELS[key]}"
        if key[0] != "centered" and any(k[0] == "centered" for k in c.joint_maps):
            lead = (
                "The centered joint MAP has no interior mode on these data (the log joint rises "
                f"without bound as τ → 0); the {curves.JOINT_LABELS[key]}, a mode of another "
                "density, has one"
            )
        r = c.joint_maps[key]
        t2, s2 = float(r.G[0, 0]), float(r.sigma2)
        m_t, m_s = s["tau2"], s["sigma2"]
        ref_t = m_t.local_mode if m_t.boundary else m_t.mode
        if ref_t is None:
            tau_part = (
                f"the exact marginal density of τ² has no interior mode to compare its τ² "
                f"({_num(t2)}) with"
            )
        else:
            which = "interior local mode" if m_t.boundary else "mode"
            tau_part = (
                f"its τ² ({_num(t2)}) is {_relative(t2, ref_t)} the exact marginal {which} of "
                f"τ² ({_num(ref_t)})"
            )
        out.append(
            f"{lead}: {tau_part}, and its σ² ({_num(s2)}) is "
            f"{_relative(s2, m_s.mode)} the exact marginal mode of σ² ({_num(m_s.mode)})."
        )
    return out


def exact_context(c) -> dict | None:
    """The template's part for the exact posterior: table rows, sentences, method."""
    e = c.exact_posterior
    if e is None:
        return None
    names = {
        "sigma": "σ",
        "sigma2": "σ²",
        "log_sigma": "log σ",
        "tau": "τ",
        "tau2": "τ²",
        "log_tau": "log τ",
        "mu": "μ",
    }
    rows = []
    for q, label in names.items():
        s = e.summaries[q]
        mode = _fmt(s.mode) + (" (boundary)" if s.boundary else "")
        if s.local_mode is not None:
            mode += f"; interior local mode {_fmt(s.local_mode)}"
        rows.append((label, mode, _fmt(s.mean), _fmt(s.median), _fmt(s.sd), _fmt(list(s.hdi))))
    return {
        "rows": rows,
        "sentences": exact_sentences(c),
        "method": e.method,
        "hdi_prob": e.hdi_prob,
    }


def exact_figures(c) -> list[tuple[str, str, object]]:
    """The exact marginal posterior figure (one-way models with an exact posterior)."""
    if c.exact_posterior is None:
        return []
    return [
        (
            "exact",
            "Exact marginal posterior of tau and sigma on each scale, with every estimator",
            lambda: plots.plot_exact(exact_panels(c)),
        )
    ]
