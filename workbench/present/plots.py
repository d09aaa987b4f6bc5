"""Plots of a comparison (matplotlib; ArviZ 1.x for the sampler diagnostics). Each function
takes the `Comparison` (and precomputed curves where it needs them) and returns a Figure;
`to_png` turns one into PNG bytes for the report.

Kept apart from the numbers: the curves come from `curves.py`-style helpers below that return
plain arrays, so a plot can be fed precomputed statistics.

Robust to what a result may hold: text is drawn plain (`text.parse_math` off, so group labels
and column names like `$`, `a_b^c` are not read as mathtext), non-finite points and intervals
are left out, a density is drawn only where the draws have spread, and a figure that cannot be
drawn for a stated reason (rank plots of one chain) raises `SkippedFigureError` with it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402

from workbench.fit.eb_oneway import argmax_nonneg  # noqa: E402
from workbench.objectives import oneway as dens  # noqa: E402
from workbench.objectives.oneway import Stats  # noqa: E402

COLORS = {"EB-ML": "#1f77b4", "EB-REML": "#17becf", "MCMC mode": "#2ca02c", "truth": "black"}
JM_STYLE = {
    ("centered", False): ("joint MAP (centered)", "#d62728", "-"),
    ("centered", True): ("joint MAP + priors (centered)", "#ff7f0e", "--"),
    ("noncentered", False): ("joint MAP (non-centered)", "#9467bd", "-"),
    ("noncentered", True): ("joint MAP + priors (non-centered)", "#e377c2", "--"),
}


PLAIN_TEXT = {"text.parse_math": False}  # labels are data: `$`, `_`, `^` drawn as they are
plain_text = matplotlib.rc_context(PLAIN_TEXT)  # also a decorator for the figure functions
LABEL_MAX = 40  # characters of a group label shown in a figure


class SkippedFigureError(Exception):
    """A figure that is not drawn, for the reason given (shown in the report instead)."""


def short(label, n: int = LABEL_MAX) -> str:
    """A label for a figure: at most `n` characters, one line."""
    text = " ".join(str(label).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def finite(x) -> np.ndarray:
    """Float array of `x` with None and +-inf as NaN (matplotlib leaves NaN points out)."""
    arr = np.array([np.nan if v is None else v for v in np.ravel(x)], dtype=float)
    arr[~np.isfinite(arr)] = np.nan
    return arr.reshape(np.shape(x))


def density(ax, draws, lower: float = -np.inf, label: str = "posterior density (MCMC, KDE)"):
    """Draw a KDE of the finite draws on `ax`; return the x window for the point estimates, or
    None (with a note on the axes) when the draws have no spread to estimate a density from."""
    d = np.asarray(draws, dtype=float).reshape(-1)
    d = d[np.isfinite(d)]
    if d.size < 2 or np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        ax.text(
            0.5,
            0.5,
            "no density: the draws do not vary\n(the chains did not move)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="0.35",
        )
        if d.size:
            ax.axvline(float(np.median(d)), color="0.3", lw=2, label="posterior draws (constant)")
        return None
    lo, hi = np.quantile(d, [0.001, 0.995])
    if hi <= lo:
        lo, hi = float(d.min()), float(d.max())
    grid = np.linspace(max(lo - 0.1 * (hi - lo), lower), hi, 400)
    try:
        y = sps.gaussian_kde(d)(grid)
    except (np.linalg.LinAlgError, ValueError):  # degenerate spread: a histogram instead
        ax.hist(d, bins=30, density=True, color="0.85", label="posterior draws (histogram)")
    else:
        ax.plot(grid, y, color="0.3", lw=2, label=label)
        ax.fill_between(grid, y, color="0.85")
    width = grid[-1] - grid[0]
    return grid[0] - 0.5 * width, grid[-1] + 0.5 * width


@plain_text
def to_png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Curves (plain numbers)


@dataclass(frozen=True)
class ProfileCurves:
    """Along the marginal profile in sigma^2: theta(sigma^2) = (mu, tau^2) maximising l."""

    sigma2: np.ndarray
    log_marginal: np.ndarray
    log_joint: np.ndarray  # h(theta(sigma^2), a_hat(theta))
    volume: np.ndarray  # 1/2 sum log v_j + (m/2) log 2 pi  (= log_marginal - log_joint)


def profile_curves(st: Stats, s_ml: float, npts: int = 60) -> ProfileCurves:
    grid = s_ml * np.geomspace(0.4, 2.5, npts)
    scale = st.W / st.N + float(np.var(st.ybar))
    lm, lj, vol = [], [], []
    for s in grid:

        def val(t, s=s):
            return dens.marginal_loglik((dens.gls_mean(s, t, st), s, t), st)

        def grad(t, s=s):
            return dens.marginal_grad((dens.gls_mean(s, t, st), s, t), st)[2]

        t = max(
            argmax_nonneg(val, grad, 1e-10 * scale, 1e6 * scale, allow_zero=True), 1e-12 * scale
        )
        mu = dens.gls_mean(s, t, st)
        a, v = dens.conditional_effects(mu, s, t, st)
        x = np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(t)], a])
        lm.append(dens.marginal_loglik((mu, s, t), st))
        lj.append(dens.log_joint(x, st))
        vol.append(0.5 * np.log(v).sum() + 0.5 * st.m * dens.LOG_2PI)
    return ProfileCurves(grid, np.array(lm), np.array(lj), np.array(vol))


@dataclass(frozen=True)
class TauPath:
    """The centered log joint maximised over (mu, sigma, a) for each fixed tau."""

    tau: np.ndarray
    log_joint: np.ndarray
    sigma2: np.ndarray


def tau_path(st: Stats, tau_ref: float, npts: int = 70, iters: int = 400) -> TauPath:
    """Coordinate ascent at each tau (a, mu and sigma^2 each have closed forms given the rest);
    warm-started from the previous tau, walking down from large tau."""
    taus = tau_ref * np.geomspace(4.0, 1e-4, npts)
    mu, s = float(st.n @ st.ybar / st.N), st.W / st.N + float(np.var(st.ybar))
    hs, ss = [], []
    for tau in taus:
        t = tau * tau
        for _ in range(iters):
            a = st.n * t / (s + st.n * t) * (st.ybar - mu)
            mu_new = float(st.n @ (st.ybar - a) / st.N)
            r = st.ybar - mu_new - a
            s_new = (st.W + float(st.n @ (r * r))) / st.N
            done = abs(s_new - s) <= 1e-12 * s and abs(mu_new - mu) <= 1e-12 * (1 + abs(mu))
            mu, s = mu_new, s_new
            if done:
                break
        a = st.n * t / (s + st.n * t) * (st.ybar - mu)
        hs.append(dens.log_joint(np.concatenate([[mu, 0.5 * np.log(s), np.log(tau)], a]), st))
        ss.append(s)
    order = np.argsort(taus)
    return TauPath(taus[order], np.array(hs)[order], np.array(ss)[order])


# ----------------------------------------------------------------------------------------------
# Figures


def _vlines(ax, marks: list[tuple[str, float, str, str]], window=None) -> None:
    """Vertical lines; a mark outside `window` (lo, hi) is listed in the legend as off scale."""
    for label, value, color, style in marks:
        if value is None or not np.isfinite(value):
            continue
        if window is not None and not window[0] <= value <= window[1]:
            ax.plot(
                [], [], color=color, ls=style, lw=1.6, label=f"{label}: {value:.4g} (off scale)"
            )
        else:
            ax.axvline(value, color=color, ls=style, lw=1.6, label=label)


def _marks(c, q: str, truth: dict | None) -> list[tuple[str, float, str, str]]:
    out = []
    for key, r in c.joint_maps.items():
        if r.best is not None:
            label, color, style = JM_STYLE[key]
            out.append((label, getattr(r, q), color, style))
    for fit, name in ((c.eb_ml, "EB-ML"), (c.eb_reml, "EB-REML")):
        if fit is not None:
            out.append((name, getattr(fit, q), COLORS[name], ":"))
    if c.mcmc is not None:
        out.append(("MCMC marginal mode", c.mcmc.summary[q]["mode"], COLORS["MCMC mode"], "-."))
    if truth and q in truth:
        out.append(("truth", truth[q], COLORS["truth"], "-"))
    return out


@plain_text
def plot_marginals(c, truth: dict | None = None):
    """Marginal posterior densities of sigma^2, tau^2 and mu with every point estimate."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    units = c.data.y_name
    for ax, q, xl in zip(
        axes,
        ("sigma2", "tau2", "mu"),
        (
            f"sigma^2 (within-group variance, {units}^2)",
            f"tau^2 (between-group variance, {units}^2)",
            f"mu (overall mean, {units})",
        ),
        strict=True,
    ):
        window = None
        if c.mcmc is not None:
            window = density(ax, c.mcmc.draws(q), 0.0 if q != "mu" else -np.inf)
        _vlines(ax, _marks(c, q, truth), window)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_xlabel(xl)
        ax.set_ylabel("density")
        ax.set_title(f"Posterior of {q} and the point estimates")
    fig.tight_layout()
    return fig


@plain_text
def plot_profiles(c, curves: ProfileCurves):
    """Log marginal and log joint along the marginal profile over log sigma^2, and their
    difference, the volume term."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.4))
    s = curves.sigma2
    lm = finite(curves.log_marginal)
    lj = finite(curves.log_joint)
    lm, lj = lm - np.nanmax(lm), lj - np.nanmax(lj)
    ax.plot(s, lm, color=COLORS["EB-ML"], lw=2, label="log marginal l (profiled)")
    ax.plot(
        s,
        lj,
        color=JM_STYLE[("centered", False)][1],
        lw=2,
        label="log joint h at the conditional modes",
    )
    i, j = int(np.nanargmax(lm)), int(np.nanargmax(lj))
    ax.plot(s[i], 0, "o", color=COLORS["EB-ML"], ms=8, label=f"max of l: sigma^2 = {s[i]:.4g}")
    ax.plot(
        s[j],
        0,
        "s",
        color=JM_STYLE[("centered", False)][1],
        ms=8,
        label=f"max of h: sigma^2 = {s[j]:.4g}",
    )
    ax.set_xscale("log")
    ax.set_xlabel(f"sigma^2 ({c.data.y_name}^2, log scale)")
    ax.set_ylabel("log density minus its maximum")
    ax.set_ylim(max(float(np.nanmin(np.concatenate([lm, lj]))), -30), 2)
    ax.set_title("Profiles over sigma^2 (mu, tau^2 at their ML values given sigma^2)")
    ax.legend(fontsize=8)
    ax2.plot(
        s,
        finite(curves.volume),
        color="0.3",
        lw=2,
        label="volume term 1/2 sum log v_j + (m/2) log 2 pi",
    )
    ax2.plot(
        s,
        finite(curves.log_marginal - curves.log_joint),
        "w--",
        lw=1,
        label="l - h (equal: Laplace identity)",
    )
    ax2.set_xscale("log")
    ax2.set_xlabel(f"sigma^2 ({c.data.y_name}^2, log scale)")
    ax2.set_ylabel("volume term (nats)")
    ax2.set_title("The difference l - h: what the joint mode ignores")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


@plain_text
def plot_tau_path(c, path: TauPath):
    """The centered log joint along tau -> 0, maximised over everything else."""
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.plot(
        path.tau,
        finite(path.log_joint),
        color=JM_STYLE[("centered", False)][1],
        lw=2,
        label="max over mu, sigma, a of the log joint",
    )
    jm = c.joint_maps.get(("centered", False))
    if jm is not None and jm.best is not None:
        ax.plot(
            np.sqrt(jm.tau2),
            jm.log_joint,
            "*",
            ms=16,
            color="gold",
            mec="k",
            label=f"interior local maximum (tau = {np.sqrt(jm.tau2):.4g})",
        )
    if c.eb_ml is not None and c.eb_ml.tau2 > 0:
        ax.axvline(np.sqrt(c.eb_ml.tau2), color=COLORS["EB-ML"], ls=":", label="EB-ML tau")
    ax.set_xscale("log")
    ax.set_xlabel(f"tau ({c.data.y_name}, log scale)")
    ax.set_ylabel("log joint (nats)")
    ax.set_title("The log joint is unbounded as tau -> 0 (centered)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _pick_groups(c, k: int = 3) -> list[int]:
    order = np.argsort(c.eb_ml.re_mode)
    return sorted({int(order[0]), int(order[len(order) // 2]), int(order[-1])})[:k]


@plain_text
def plot_funnel(c):
    """Posterior draws of log tau against a few group effects a_j = theta_j - mu."""
    groups = _pick_groups(c)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    post = c.mcmc.posterior.posterior
    mu = np.asarray(post["mu"]).reshape(-1)
    log_tau = np.log(np.asarray(post["tau"]).reshape(-1))
    theta = np.asarray(post["theta"]).reshape(mu.size, -1)
    jm = c.joint_maps.get(("centered", False))
    for ax, j in zip(axes, groups, strict=True):
        ax.scatter(
            theta[:, j] - mu, log_tau, s=3, alpha=0.25, color="0.35", label="posterior draws"
        )
        if c.eb_ml.tau2 > 0:
            ax.plot(
                c.eb_ml.re_mode[j],
                0.5 * np.log(c.eb_ml.tau2),
                "o",
                color=COLORS["EB-ML"],
                ms=9,
                mec="k",
                label="EB-ML (conditional mode)",
            )
        if jm is not None and jm.best is not None:
            ax.plot(
                jm.group_effects[j],
                0.5 * np.log(jm.tau2),
                "*",
                color="gold",
                ms=16,
                mec="k",
                label="joint MAP (centered)",
            )
        ax.set_xlabel(
            f"a_j = theta_j - mu for group {short(c.data.labels[j])} ({short(c.data.y_name)})"
        )
        ax.set_title(f"Funnel: group {short(c.data.labels[j])}")
    axes[0].set_ylabel("log tau")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


@plain_text
def plot_caterpillar(c, max_groups: int = 40):
    """Group-mean intervals by method: joint-MAP Hessian, EB conditional, MCMC HDI."""
    m = c.data.n_groups
    order = np.argsort(c.eb_ml.mu + c.eb_ml.re_mode)
    if m > max_groups:
        order = order[np.linspace(0, m - 1, max_groups).round().astype(int)]
    labels = [c.data.labels[j] for j in order]  # keys of the interval records
    fig, ax = plt.subplots(figsize=(8, max(3.5, 0.28 * len(order) + 1.5)))
    ypos = np.arange(len(order))
    eb = c.eb_ml
    z = 1.959963984540054
    rows = [
        (
            "EB-ML conditional 95%",
            eb.mu + eb.re_mode[order],
            eb.re_sd[order] * z,
            COLORS["EB-ML"],
            0.0,
        )
    ]
    series = []
    jm = c.joint_maps.get(("centered", False))
    if jm is not None and jm.best is not None:
        ci = jm.intervals["random_effects"]
        lo = np.array([ci[lab]["group_mean_ci"][0] for lab in labels])
        hi = np.array([ci[lab]["group_mean_ci"][1] for lab in labels])
        series.append(
            ("joint MAP Hessian 95% (centered)", lo, hi, JM_STYLE[("centered", False)][1], 0.25)
        )
    for name, centre, half, color, off in rows:
        series.append((name, centre - half, centre + half, color, off))
    if c.mcmc is not None:
        g = c.mcmc.group_summary
        lo = np.array([g[lab]["hdi"][0] for lab in labels])
        hi = np.array([g[lab]["hdi"][1] for lab in labels])
        series.append(("MCMC 94% HDI", lo, hi, COLORS["MCMC mode"], -0.25))
    unbounded = False
    for name, lo, hi, color, off in series:
        lo, hi = finite(lo), finite(hi)  # an interval with a non-finite end is left out
        unbounded |= bool(np.isnan(lo).any() or np.isnan(hi).any())
        ax.hlines(ypos + off, lo, hi, color=color, lw=2.2, label=name)
        ax.plot((lo + hi) / 2, ypos + off, "|", color=color, ms=8)
    if unbounded:
        ax.plot([], [], " ", label="(intervals with a non-finite end are not drawn)")
    ax.set_yticks(ypos, [short(lab) for lab in labels], fontsize=7 if len(order) > 25 else 9)
    ax.set_xlabel(f"group mean theta_j ({c.data.y_name})")
    ax.set_ylabel(
        f"group ({c.data.group_name})" + (f", {len(order)} of {m} shown" if m > max_groups else "")
    )
    ax.set_title("Group-mean intervals by method")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


@plain_text
def plot_rank(c, var_names=("mu", "sigma", "tau"), width: float = 13):
    """Rank plots (ArviZ) of the scalar parameters: flat and overlapping when the chains mix.
    Raises `SkippedFigureError` for one chain (rank plots compare chains)."""
    import arviz as az

    if int(c.mcmc.posterior.posterior.sizes["chain"]) < 2:
        raise SkippedFigureError(
            "rank plots compare chains, and this run has 1 chain; run 2 or more chains to see them"
        )
    pc = az.plot_rank(c.mcmc.posterior, var_names=list(var_names), backend="matplotlib")
    pc.add_legend("chain")
    fig = pc.viz["figure"].item()
    fig.set_size_inches(width, 3.8)
    fig.suptitle(
        "Rank plots by chain (ArviZ: fractional-rank ECDF differences, with the "
        "p-value of a uniformity test; small p = chains disagree)",
        y=1.04,
    )
    return fig
