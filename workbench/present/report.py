"""The self-contained HTML report of a comparison, one template for every model: numbers,
explanation, figures (inline PNG) and provenance, rendered from `templates/report.html.j2` and
written atomically by the CLI. One context builder reads the one `Comparison`; the parts that
exist for the one-way model only (ANOVA, the balanced closed form, the profile over sigma^2,
the tau path) are gated by the design (`data.is_oneway`), the others by what was run."""

from __future__ import annotations

import base64
import datetime as dt
import io
import platform
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from workbench.fit.eb import variance_components
from workbench.present import curves, plots
from workbench.provenance import lock_sha256

PACKAGES = (
    "workbench",
    "numpy",
    "scipy",
    "pandas",
    "pymc",
    "pytensor",
    "arviz",
    "arviz-stats",
    "arviz-plots",
    "nutpie",
    "matplotlib",
    "jinja2",
)
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
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    out["requirements.lock sha256"] = lock_sha256() or "none (installed without the lock)"
    return out


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
    r = diag["r_hat_max"]
    return r is None or not np.isfinite(r) or r > 1.01


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
            "Every variance component: the posterior (MCMC) and every point estimate",
            lambda: plots.plot_marginals(curves.marginals(c, truth)),
        )
    ]
    jm = c.joint_maps.get(("centered", False))
    if d.is_oneway:
        st = d.oneway
        out.append(
            (
                "profiles",
                "Log marginal and log joint over sigma²: the volume term",
                lambda: plots.plot_profiles(curves.profile_curves(st, c.eb_ml.sigma2), d.y_name),
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
                ),
            )
        )
    else:
        out.append(
            (
                "scalepath",
                "Log marginal and log joint as every variance shrinks",
                lambda: plots.plot_scale_path(curves.scale_path(c.eb_ml)),
            )
        )
    if c.mcmc is not None and "(Intercept)" in d.re_names:
        out.append(
            (
                "funnel",
                "The funnel: the intercept SD against group effects (MCMC draws)",
                lambda: plots.plot_funnel(curves.funnel(c), d.group_name),
            )
        )
    out.append(
        (
            "caterpillar",
            "Random-effect intervals by method",
            lambda: plots.plot_caterpillars(curves.caterpillars(c), d.group_name),
        )
    )
    if c.mcmc is not None:
        out.append(
            (
                "rank",
                "Sampler diagnostics: rank plots of the fixed effects, sigma and the SDs",
                lambda: plots.plot_rank(curves.idata(c.mcmc)),
            )
        )
    return out


def estimates(c) -> tuple[list[str], list[list[str]]]:
    """The estimates table: one column per method (ANOVA for the one-way model, EB-ML,
    EB-REML, the four joint MAP variants, MCMC mean/median/mode), one row per quantity."""
    d = c.data
    cols: list[tuple[str, dict]] = []

    def point(beta, sigma2, G) -> dict:
        comps = variance_components(G, d.blocks, d.group_name)
        out = {f"beta:{n}": float(b) for n, b in zip(d.fixed_names, beta, strict=True)}
        out.update({f"var:{n}": v for n, v in comps.variances.items()})
        out.update({f"cor:{n}": v for n, v in comps.correlations.items()})
        out["sigma2"] = sigma2
        return out

    anova = c.anova
    if anova is not None:
        cols.append(
            (
                "ANOVA (moments)",
                {
                    "beta:(Intercept)": anova.mu,
                    "var:(Intercept)": anova.tau2,
                    "sigma2": anova.sigma2,
                },
            )
        )
    for fit in (c.eb_ml if "eb-ml" in c.settings.methods else None, c.eb_reml):
        if fit is not None:
            vals = point(fit.beta, fit.sigma2, fit.G)
            vals.update({f"se:{n}": float(s) for n, s in zip(d.fixed_names, fit.se, strict=True)})
            vals["objective"] = fit.loglik
            cols.append((f"EB-{fit.method.upper()}", vals))
    for key, r in c.joint_maps.items():
        vals = {"objective": r.log_joint, "status": r.status.replace("_", " ")}
        if curves.interior(r):
            vals.update(point(r.beta, r.sigma2, r.G))
        cols.append((curves.JOINT_LABELS[key], vals))
    if c.mcmc is not None:
        o = c.mcmc.to_dict()
        vc = o["variance_components"][d.group_name]
        for stat in ("mean", "median", "mode"):
            vals = {f"beta:{n}": v[stat] for n, v in o["fixed_effects"].items()}
            vals.update({f"var:{n}": v[stat] for n, v in vc["variances"].items()})
            vals.update({f"cor:{n}": v[stat] for n, v in vc["correlations"].items()})
            vals["sigma2"] = o["sigma2"][stat]
            if stat == "mean":
                vals.update({f"se:{n}": v["sd"] for n, v in o["fixed_effects"].items()})
            cols.append((f"MCMC {stat}", vals))
    corr = (
        list(variance_components(c.eb_ml.G, d.blocks, d.group_name).correlations)
        if (c.eb_ml is not None)
        else []
    )
    spec = []
    for n in d.fixed_names:
        spec += [(f"β {n}", f"beta:{n}"), (f"SE / posterior sd of β {n}", f"se:{n}")]
    spec += [(f"variance of {n} ({d.group_name})", f"var:{n}") for n in d.re_names]
    spec += [(f"correlation {n}", f"cor:{n}") for n in corr]
    spec += [
        ("σ² (residual)", "sigma2"),
        ("log lik (EB-ML) / restricted log lik (EB-REML) / log joint", "objective"),
        ("joint-mode status", "status"),
    ]
    head = [name for name, _ in cols]
    rows = [
        [label, *[_fmt(v.get(key)) for _, v in cols]]
        for label, key in spec
        if any(key in v for _, v in cols)
    ]
    return head, rows


def _sqrt(v):
    return float(np.sqrt(v)) if v is not None and np.isfinite(v) and v >= 0 else None


def formula_of(d) -> str:
    return d.formula or f"{d.y_name} ~ 1 + (1 | {d.group_name})"


def lme4_text(fit) -> str:
    """An lme4-like printout of an EB-ML fit."""
    d = fit.data
    comps = fit.components
    lines = [
        "Linear mixed model fit by maximum likelihood (workbench EB-ML)",
        f"Formula: {formula_of(d)}",
        "     logLik  deviance",
        f"  {fit.loglik:9.4f}  {fit.objective:8.4f}",
        "Random effects:",
        " Groups   Name          Variance  Std.Dev.",
    ]
    for k, (name, v) in enumerate(comps.variances.items()):
        grp = d.group_name[:8] if k == 0 else ""
        lines.append(f" {grp:<8} {name:<13} {_fmt(v):<9} {_fmt(_sqrt(v), 5)}")
    lines.append(f" Residual               {_fmt(fit.sigma2):<9} {_fmt(_sqrt(fit.sigma2), 5)}")
    for name, r in comps.correlations.items():  # 0/0 at a singular fit: "–"
        lines.append(f" Corr({name}) = {_fmt(r, 4) if not np.isfinite(r) else f'{r:.4f}'}")
    lines += [
        f"Number of obs: {d.n_obs}, groups:  {d.group_name}, {d.n_groups}",
        "Fixed effects:",
        "                   Estimate Std. Error",
    ]
    lines += [
        f"{n:<18} {_fmt(v['estimate']):>9} {_fmt(v['se']):>10}"
        for n, v in fit.fixed_effects().items()
    ]
    return "\n".join(lines)


def _explanation(c) -> dict | None:
    """explain(c) as JSON-ready numbers (non-finite terms null), or None without EB-ML."""
    if c.eb_ml is None:
        return None
    from workbench.explain import explain

    return explain(c).to_dict()


def build_context(
    c,
    *,
    command: str,
    case_text: str | None = None,
    truth: dict | None = None,
    fragment: bool = False,
) -> dict:
    """Everything the template shows, computed once (figures as inline PNG), for any model."""
    t0 = time.perf_counter()
    d = c.data
    oneway = d.is_oneway
    ex = _explanation(c)
    images, figure_notes = _draw([] if fragment else figures(c, truth))
    diag = c.mcmc.diagnostics if c.mcmc is not None else None
    banner = list(c.mcmc.warnings) if diag and (_rhat_bad(diag) or diag["divergences"]) else []
    timings = dict(c.timings)
    timings["report (explanation and plots)"] = time.perf_counter() - t0
    tex = ONEWAY_FORMULAS if oneway else FORMULAS
    formulas = (
        {}
        if fragment
        else {k: [(alt, _png_uri(formula_png(t))) for alt, t in v] for k, v in tex.items()}
    )
    head, rows = estimates(c)
    prof = c.profile
    return {
        "fragment": fragment,
        "oneway": oneway,
        "title": f"{formula_of(d)}: joint MAP vs empirical Bayes vs posterior",
        "formula": formula_of(d),
        "data": d.summary(),
        "size_median": float(np.median(np.bincount(d.codes, minlength=d.n_groups))),
        "priors": c.priors.describe(),
        "settings": c.settings.to_dict(),
        "formulas": formulas,
        "head": head,
        "rows": rows,
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
        "terms": TERMS + (ONEWAY_TERMS if oneway else []),
        "fmt": _fmt,
        "diag": diag,
        "banner": banner,
        "warnings": c.warnings(),
        "images": images,
        "figure_notes": figure_notes,
        "rhat_bad": _rhat_bad(diag) if diag is not None else False,
        "versions": versions(),
        "command": command,
        "case_text": case_text,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "timings": timings,
        "seed": c.settings.seed,
    }


def render(c, **kwargs) -> str:
    """The report of comparison `c` as one HTML string (see `build_context` for kwargs)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html.j2").render(**build_context(c, **kwargs))
