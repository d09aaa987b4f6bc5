"""Figures for formula models: curves computed apart from drawing, as in `workbench.plots`."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from workbench.objectives.deviance import Layout, solve  # noqa: E402
from workbench.present import plots as base_plots  # noqa: E402
from workbench.present.plots import COLORS, _vlines, density, finite, plain_text, short  # noqa: E402

JOINT_COLOR = "#d62728"


@dataclass(frozen=True)
class ScalePath:
    """Both objectives along theta = c x theta_ML (every variance scaled by c^2, relative to
    sigma^2), beta, b and sigma^2 maximised at each c."""

    scale: np.ndarray
    log_marginal: np.ndarray
    log_joint: np.ndarray


def scale_path(c, npts: int = 80) -> ScalePath:
    d = c.eb_ml.data
    lay = Layout.of(d.blocks, d.q)
    theta = c.eb_ml.theta.copy()
    diag = lay.diagonal
    theta[diag] = np.maximum(theta[diag], 0.05)
    grid = np.geomspace(1e-4, 4.0, npts)
    lm, lj = [], []
    for s in grid:
        pls = solve(d.factors, lay, s * theta)
        lm.append(-0.5 * pls.objective("ml"))
        lj.append(-0.5 * pls.objective("joint"))
    return ScalePath(grid, np.array(lm), np.array(lj))


def _marks(c, key: str, kind: str) -> list[tuple[str, float, str, str]]:
    """(label, value, colour, style) of every point estimate of variance/correlation `key`."""
    out = []
    for fit, name in ((c.eb_ml, "EB-ML"), (c.eb_reml, "EB-REML")):
        if fit is not None:
            comps = fit.components
            value = fit.sigma2 if kind == "sigma2" else getattr(comps, kind)[key]
            out.append((name, value, COLORS[name], ":"))
    j = c.joint_map
    if j is not None and j.pls is not None:
        from workbench.fit.eb import variance_components

        comps = variance_components(j.G, c.data.blocks, c.data.group_name)
        value = j.sigma2 if kind == "sigma2" else getattr(comps, kind)[key]
        out.append(("joint MAP (centered)", value, JOINT_COLOR, "-"))
    if c.mcmc is not None:
        import arviz as az

        draws = (
            c.mcmc.draws("sigma2")
            if kind == "sigma2"
            else (c.mcmc.variance_draws() if kind == "variances" else c.mcmc.correlation_draws())[
                key
            ]
        )
        out.append(
            (
                "MCMC marginal mode",
                float(az.mode(np.asarray(draws), round_to="none")),
                COLORS["MCMC mode"],
                "-.",
            )
        )
    return out


@plain_text
def plot_components(c):
    """Marginal posterior of sigma^2, every variance and every correlation, with the point
    estimates of every method."""
    d = c.data
    panels = (
        [("sigma2", "sigma2", f"sigma^2 (residual, {d.y_name}^2)")]
        + [("variances", n, f"variance of {n} effects") for n in d.re_names]
        + [("correlations", n, f"correlation {n}") for n in c.eb_ml.components.correlations]
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.0), squeeze=False)
    for ax, (kind, key, title) in zip(axes[0], panels, strict=True):
        window = None
        if c.mcmc is not None:
            draws = np.asarray(
                c.mcmc.draws("sigma2")
                if kind == "sigma2"
                else (
                    c.mcmc.variance_draws() if kind == "variances" else c.mcmc.correlation_draws()
                )[key]
            ).reshape(-1)
            window = density(ax, draws, label="posterior (MCMC, KDE)")
        _vlines(ax, _marks(c, key, kind), window)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@plain_text
def plot_scale_path(c, path: ScalePath):
    """Log marginal and log joint as all random-effect variances shrink together (two axes:
    the joint's rise is far larger than the marginal's peak)."""
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    at_ml = int(np.argmin(np.abs(np.log(path.scale))))
    lm, lj = finite(path.log_marginal), finite(path.log_joint)
    ax.plot(
        path.scale,
        lm - np.nanmax(lm),
        color=COLORS["EB-ML"],
        lw=2,
        label="log marginal likelihood l (profiled), left axis",
    )
    ax.set_ylim(-40, 3)
    ax.set_ylabel("l minus its maximum", color=COLORS["EB-ML"])
    ax2 = ax.twinx()
    ax2.plot(
        path.scale,
        lj - lj[at_ml],
        color=JOINT_COLOR,
        lw=2,
        label="log joint h (profiled over beta, b, sigma^2), right axis",
    )
    ax2.set_ylabel("h minus its value at c = 1", color=JOINT_COLOR)
    ax.axvline(1.0, color=COLORS["EB-ML"], ls=":", label="EB-ML (c = 1)")
    ax.set_xscale("log")
    ax.set_xlabel("c: relative covariance factor scaled to c x its ML value (log scale)")
    ax.set_title("Shrinking every random-effect variance: l peaks at ML, h keeps rising")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower center")
    fig.tight_layout()
    return fig


@plain_text
def plot_caterpillar(c, max_groups: int = 30):
    """Random-effect intervals per term: EB conditional 95%, joint MAP, MCMC 94% HDI."""
    d = c.data
    m = d.n_groups
    order = np.argsort(c.eb_ml.re_mode[:, 0])
    if m > max_groups:
        order = order[np.linspace(0, m - 1, max_groups).round().astype(int)]
    fig, axes = plt.subplots(
        1, d.q, figsize=(5.5 * d.q, max(3.5, 0.26 * len(order) + 1.5)), squeeze=False, sharey=True
    )
    ypos = np.arange(len(order))
    z = 1.959963984540054
    for k, ax in enumerate(axes[0]):
        series = []
        for fit, name, off in ((c.eb_ml, "EB-ML conditional 95%", 0.0),):
            sd = np.sqrt(fit.re_cov[order, k, k])
            mode = fit.re_mode[order, k]
            series.append((name, mode - z * sd, mode + z * sd, COLORS["EB-ML"], off))
        j = c.joint_map
        if j is not None and j.pls is not None:
            sd = np.sqrt(j.re_cov[order, k, k])
            mode = j.re_mode[order, k]
            series.append(
                ("joint MAP 95% (variances fixed)", mode - z * sd, mode + z * sd, JOINT_COLOR, 0.25)
            )
        if c.mcmc is not None:
            import arviz as az

            b = c.mcmc.draws("b")[:, order, k]
            hdi = np.array([np.asarray(az.hdi(b[:, i], prob=0.94)) for i in range(len(order))])
            series.append(("MCMC 94% HDI", hdi[:, 0], hdi[:, 1], COLORS["MCMC mode"], -0.25))
        for name, lo, hi, color, off in series:  # a non-finite end: the interval is left out
            ax.hlines(ypos + off, finite(lo), finite(hi), color=color, lw=2.0, label=name)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_title(f"{d.re_names[k]} effects b_j")
        ax.set_xlabel(d.re_names[k])
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_yticks(ypos, [short(d.labels[j]) for j in order], fontsize=7)
    axes[0][0].set_ylabel(
        f"{d.group_name}" + (f" ({len(order)} of {m} shown)" if m > max_groups else "")
    )
    fig.tight_layout()
    return fig


def plot_rank(c):
    return base_plots.plot_rank(c, var_names=("beta", "sigma", "sd"), width=14)
