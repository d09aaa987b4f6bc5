"""The self-contained HTML report: numbers, explanation, plots (inline PNG) and provenance,
rendered from jinja2 templates in `workbench/templates/` and written atomically."""

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

from workbench.explain import explain
from workbench.objectives.oneway import Stats
from workbench.present import plots
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
FORMULAS = {
    "likelihood": r"y_{ij} \mid \mu_j,\sigma \sim \mathrm{N}(\mu_j,\ \sigma^2),\quad "
    r"i = 1..n_j,\ j = 1..m",
    "centered": r"\mu_j \mid \mu,\tau \sim \mathrm{N}(\mu,\ \tau^2)",
    "noncentered": r"z_j \sim \mathrm{N}(0, 1),\quad \mu_j = \mu + \tau z_j",
    "priors": r"\mu \sim \mathrm{N}(m_0, s_0^2),\quad \sigma \sim \mathrm{HalfNormal}(s_\sigma),"
    r"\quad \tau \sim \mathrm{HalfNormal}(s_\tau)",
    "joint": r"h = \log p(y \mid \mu, \sigma, a) + \log p(a \mid \tau),\qquad "
    r"\ell = \log \int p(y \mid \mu,\sigma,a)\, p(a \mid \tau)\, da",
    "laplace": r"\ell(\theta) = h(\theta, \hat a(\theta)) + \frac{1}{2}\sum_j \log v_j + "
    r"\frac{m}{2}\log 2\pi,\qquad v_j = (n_j/\sigma^2 + 1/\tau^2)^{-1}",
    "em": r"\sigma^2_{ML} = \frac{RSS + \sum_j n_j v_j}{N},\qquad "
    r"\sigma^2_{joint} = \frac{RSS}{N}",
}


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


def estimates_rows(c) -> tuple[list[str], list[list[str]]]:
    """The estimates table: one column per method, one row per quantity."""
    cols: list[tuple[str, dict]] = []
    if c.anova is not None:
        a = c.anova
        cols.append(("ANOVA (moments)", {"mu": a.mu, "tau2": a.tau2, "sigma2": a.sigma2}))
    for fit, name in (
        (c.eb_ml if "eb-ml" in c.settings.methods else None, "EB-ML"),
        (c.eb_reml, "EB-REML"),
    ):
        if fit is not None:
            cols.append(
                (
                    name,
                    {
                        "mu": fit.mu,
                        "se_mu": fit.se["mu"],
                        "tau2": fit.tau2,
                        "sigma2": fit.sigma2,
                        "se_tau2": fit.se["tau2"],
                        "se_sigma2": fit.se["sigma2"],
                        "ci_tau": fit.ci_profile.get("tau"),
                        "ci_sigma": fit.ci_profile.get("sigma"),
                        "objective": fit.loglik if fit.method == "ml" else fit.reml_criterion,
                    },
                )
            )
    for (par, pri), r in c.joint_maps.items():
        name = f"joint MAP {'+ priors ' if pri else ''}({par})"
        vals = {
            "mu": r.mu,
            "tau2": r.tau2,
            "sigma2": r.sigma2,
            "objective": r.log_joint,
            "status": r.status.replace("_", " "),
        }
        if r.intervals:
            vals["se_mu"] = r.intervals["se"]["mu"]
            vals["ci_tau"] = [float(np.sqrt(v)) for v in r.intervals["tau2"]]
            vals["ci_sigma"] = [float(np.sqrt(v)) for v in r.intervals["sigma2"]]
        cols.append((name, vals))
    if c.mcmc is not None:
        s = c.mcmc.summary
        for stat in ("mean", "median", "mode"):
            cols.append(
                (
                    f"MCMC {stat}",
                    {"mu": s["mu"][stat], "tau2": s["tau2"][stat], "sigma2": s["sigma2"][stat]},
                )
            )
        cols[-3][1].update(
            {"se_mu": s["mu"]["sd"], "ci_tau": s["tau"]["hdi"], "ci_sigma": s["sigma"]["hdi"]}
        )
    rows_spec = [
        ("mu (overall mean)", "mu"),
        ("SE / posterior sd of mu", "se_mu"),
        ("tau² (between groups)", "tau2"),
        ("SE of tau²", "se_tau2"),
        ("sigma² (within groups)", "sigma2"),
        ("SE of sigma²", "se_sigma2"),
        ("interval for tau", "ci_tau"),
        ("interval for sigma", "ci_sigma"),
        ("log lik / REML crit. / log joint", "objective"),
        ("joint-mode status", "status"),
    ]
    head = [name for name, _ in cols]
    rows = [
        [label, *[_fmt(v.get(key)) for _, v in cols]]
        for label, key in rows_spec
        if any(key in v for _, v in cols)
    ]
    return head, rows


def _sqrt(v):
    return float(np.sqrt(v)) if v is not None and np.isfinite(v) and v >= 0 else None


def lme4_text(c) -> str:
    """An lme4-like printout of the EB-ML fit."""
    f = c.eb_ml
    d = c.data
    return "\n".join(
        [
            "Linear mixed model fit by maximum likelihood (workbench EB-ML)",
            f"Formula: {d.y_name} ~ 1 + (1 | {d.group_name})",
            "     logLik  deviance",
            f"  {f.loglik:9.4f}  {-2 * f.loglik:8.4f}",
            "Random effects:",
            " Groups   Name        Variance  Std.Dev.",
            f" {d.group_name[:8]:<8} (Intercept) {_fmt(f.tau2):<9} {_fmt(_sqrt(f.tau2), 5)}",
            f" Residual             {_fmt(f.sigma2):<9} {_fmt(_sqrt(f.sigma2), 5)}",
            f"Number of obs: {d.n_obs}, groups:  {d.group_name}, {d.n_groups}",
            "Fixed effects:",
            "            Estimate Std. Error",
            f"(Intercept) {_fmt(f.mu):>8} {_fmt(f.se['mu']):>10}",
        ]
    )


LMM_FORMULAS = {
    "model": r"y = X\beta + Zb + e,\quad b_j \sim \mathrm{N}(0, G),\quad "
    r"e \sim \mathrm{N}(0, \sigma^2 I),\quad G = \sigma^2 TT'",
    "laplace": r"\ell(\theta) = h(\theta, \hat b(\theta)) - \frac{1}{2}\log\det\left("
    r"\frac{Z'Z}{\sigma^2} + G^{-1}\right) + \frac{mq}{2}\log 2\pi",
    "em": r"\sigma^2_{ML} = \frac{RSS + \mathrm{tr}(Z V_b Z')}{N},\qquad "
    r"\sigma^2_{joint} = \frac{RSS}{N}",
}
LMM_TERMS = [
    ("sigma²", "sigma2"),
    ("RSS = ||y − Xβ − Zb||²", "rss"),
    ("missing term tr(Z V_b Z′)", "missing"),
    ("hidden df p_D", "p_d"),
    ("volume ½ Σ log det V_bj", "volume"),
    ("log joint h", "log_joint"),
    ("log marginal l", "log_marginal"),
    ("EM σ² with the missing term", "em_sigma2"),
    ("EM σ² without it", "em_sigma2_no_missing"),
]


def lmm_lme4_text(c) -> str:
    """An lme4-like printout of the EB-ML fit of a formula model."""
    f, d = c.eb_ml, c.data
    comps = f.components
    lines = [
        "Linear mixed model fit by maximum likelihood (workbench EB-ML)",
        f"Formula: {d.formula}",
        "     logLik  deviance",
        f"  {f.loglik:9.4f}  {f.objective:8.4f}",
        "Random effects:",
        " Groups   Name          Variance  Std.Dev.",
    ]
    for k, (name, v) in enumerate(comps.variances.items()):
        grp = d.group_name[:8] if k == 0 else ""
        lines.append(f" {grp:<8} {name:<13} {_fmt(v):<9} {_fmt(_sqrt(v), 5)}")
    lines.append(f" Residual               {_fmt(f.sigma2):<9} {_fmt(_sqrt(f.sigma2), 5)}")
    for name, r in comps.correlations.items():  # 0/0 at a singular fit: "–"
        lines.append(f" Corr({name}) = {_fmt(r, 4) if not np.isfinite(r) else f'{r:.4f}'}")
    lines += [
        f"Number of obs: {d.n_obs}, groups:  {d.group_name}, {d.n_groups}",
        "Fixed effects:",
        "                   Estimate Std. Error",
    ]
    lines += [
        f"{n:<18} {_fmt(v['estimate']):>9} {_fmt(v['se']):>10}"
        for n, v in f.fixed_effects().items()
    ]
    return "\n".join(lines)


def _shared_context(
    c,
    *,
    t0: float,
    figures,
    command: str,
    case_text: str | None,
    truth: dict | None,
    fragment: bool,
) -> dict:
    """The keys both report templates use the same way: plots, diagnostics and the warning
    banner, settings, and provenance (versions, command, timestamp, seconds per step)."""
    images, figure_notes = _draw(figures)
    diag = c.mcmc.diagnostics if c.mcmc is not None else None
    banner = []
    if diag is not None and (_rhat_bad(diag) or diag["divergences"] > 0):
        banner = list(c.mcmc.warnings)
    timings = dict(c.timings)
    timings["report (explanation and plots)"] = time.perf_counter() - t0
    return {
        "fragment": fragment,
        "data": c.data.summary(),
        "priors": c.priors.describe(),
        "settings": c.settings.to_dict(),
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
        "truth": truth or {},
        "seed": c.settings.seed,
    }


def _lmm_context(
    c, *, command: str, case_text: str | None, truth: dict | None, fragment: bool
) -> dict:
    from workbench.present import plots_lmm as lplots

    t0 = time.perf_counter()
    ex = c.explanation() if c.eb_ml is not None else None
    figures = []
    if not fragment and c.eb_ml is not None:
        figures.append(
            (
                "components",
                "Variance components: posterior and every point estimate",
                lambda: lplots.plot_components(c),
            )
        )
        figures.append(
            (
                "scalepath",
                "Log marginal and log joint as the variances shrink",
                lambda: lplots.plot_scale_path(c, lplots.scale_path(c)),
            )
        )
        figures.append(
            ("caterpillar", "Random-effect intervals by method", lambda: lplots.plot_caterpillar(c))
        )
        if c.mcmc is not None:
            figures.append(("rank", "Sampler diagnostics: rank plots", lambda: lplots.plot_rank(c)))
    formulas = (
        {k: _png_uri(formula_png(v)) for k, v in LMM_FORMULAS.items()} if not fragment else {}
    )
    cols, rows = c.rows()
    d = c.data
    return {
        **_shared_context(
            c,
            t0=t0,
            figures=figures,
            command=command,
            case_text=case_text,
            truth=truth,
            fragment=fragment,
        ),
        "title": f"{d.formula}: joint MAP vs empirical Bayes vs posterior",
        "formulas": formulas,
        "head": cols,
        "rows": [[lab, *[_fmt(v) for v in vals]] for lab, vals in rows],
        "lme4": lmm_lme4_text(c) if c.eb_ml is not None else "",
        "jm": ([("h-likelihood, centered", c.joint_map)] if c.joint_map is not None else [])
        + [
            (f"{'with priors' if pri else 'h-likelihood'}, {par}", r)
            for (par, pri), r in c.joint_variants.items()
        ],
        "ex": ex,
        "terms": LMM_TERMS,
        "profile": (
            [
                (iv.name, _fmt(iv.estimate), _fmt(iv.lower), _fmt(iv.upper))
                for iv in c.profile.intervals
            ]
            if c.profile is not None
            else []
        ),
        "profile_level": c.profile.level if c.profile is not None else None,
    }


def build_context(
    c,
    *,
    command: str,
    case_text: str | None = None,
    truth: dict | None = None,
    fragment: bool = False,
) -> dict:
    """Everything the template shows, computed once (plots as inline PNG)."""
    if hasattr(c, "explanation"):  # a formula model (LMMComparison)
        return _lmm_context(c, command=command, case_text=case_text, truth=truth, fragment=fragment)
    t0 = time.perf_counter()
    st = Stats.of(c.data)
    ex = explain(c) if c.eb_ml is not None else None
    figures = []
    if not fragment and c.eb_ml is not None:
        if c.mcmc is not None:
            figures.append(
                (
                    "marginals",
                    "Marginal posteriors and every point estimate",
                    lambda: plots.plot_marginals(c, truth),
                )
            )
        figures.append(
            (
                "profiles",
                "Log marginal and log joint over sigma²: the volume term",
                lambda: plots.plot_profiles(c, plots.profile_curves(st, c.eb_ml.sigma2)),
            )
        )
        tau_ref = np.sqrt(c.eb_ml.tau2) if c.eb_ml.tau2 > 0 else np.sqrt(st.W / st.N) * 0.3
        figures.append(
            (
                "taupath",
                "The log joint along tau → 0",
                lambda: plots.plot_tau_path(c, plots.tau_path(st, tau_ref)),
            )
        )
        if c.mcmc is not None:
            figures.append(
                ("funnel", "The funnel: tau against group effects", lambda: plots.plot_funnel(c))
            )
        figures.append(
            ("caterpillar", "Group-mean intervals by method", lambda: plots.plot_caterpillar(c))
        )
        if c.mcmc is not None:
            figures.append(("rank", "Sampler diagnostics: rank plots", lambda: plots.plot_rank(c)))
    formulas = {k: _png_uri(formula_png(v)) for k, v in FORMULAS.items()} if not fragment else {}
    head, rows = estimates_rows(c)
    d = c.data
    return {
        **_shared_context(
            c,
            t0=t0,
            figures=figures,
            command=command,
            case_text=case_text,
            truth=truth,
            fragment=fragment,
        ),
        "title": f"{d.y_name} by {d.group_name}: joint MAP vs empirical Bayes vs posterior",
        "sizes": {"median": float(np.median(d.n))},
        "formulas": formulas,
        "head": head,
        "rows": rows,
        "lme4": lme4_text(c) if c.eb_ml is not None else "",
        "jm": [
            (f"{'with priors' if pri else 'h-likelihood'}, {par}", r)
            for (par, pri), r in c.joint_maps.items()
        ],
        "ex": ex,
    }


def render(c, **kwargs) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    name = "report_lmm.html.j2" if hasattr(c, "explanation") else "report.html.j2"
    return env.get_template(name).render(**build_context(c, **kwargs))
