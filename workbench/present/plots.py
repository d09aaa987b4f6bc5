"""The report's figures (matplotlib; ArviZ for the rank plots), drawn from the frozen records
of `curves.py`, the same functions for every model. `to_png` turns a figure into PNG bytes.

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
from matplotlib import ticker  # noqa: E402
from scipy import stats as sps  # noqa: E402

from workbench.present.curves import (  # noqa: E402
    JOINT_LABELS,
    Caterpillar,
    Funnel,
    Marginal,
    ProfileCurves,
    ScalePath,
    TauPath,
)

# The Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"): eight colours that stay
# apart for protanopes, deuteranopes and tritanopes; yellow is left out (unreadable on white).
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}


@dataclass(frozen=True)
class Mark:
    """How one method is drawn in every figure: colour, line style, marker, bar hatch. Colour
    is never the only cue: each method also has its own line style and marker."""

    color: str
    ls: object
    marker: str
    hatch: str = ""


_JC, _JCP = JOINT_LABELS[("centered", False)], JOINT_LABELS[("centered", True)]
_JN, _JNP = JOINT_LABELS[("noncentered", False)], JOINT_LABELS[("noncentered", True)]
# Each method's mark, by the report's label. The headline pair, joint MAP (vermillion) and
# MCMC (bluish green), differs in lightness and in the blue-yellow axis, so protanopes and
# deuteranopes see them apart (tests/test_plots.py checks it under Machado et al. 2009).
STYLE: dict[str, Mark] = {
    "EB-ML": Mark(OKABE_ITO["blue"], ":", "o"),
    "EB-REML": Mark(OKABE_ITO["sky blue"], (0, (4, 1.5, 1, 1.5)), "v", ".."),
    _JC: Mark(OKABE_ITO["vermillion"], "-", "s", "//"),
    _JCP: Mark(OKABE_ITO["orange"], "--", "D", "\\\\"),
    _JN: Mark(OKABE_ITO["reddish purple"], "-", "^", "xx"),
    _JNP: Mark(OKABE_ITO["reddish purple"], (0, (5, 2)), "X", "++"),
    "MCMC mean": Mark(OKABE_ITO["bluish green"], "--", "o", "oo"),
    "MCMC mode": Mark(OKABE_ITO["bluish green"], "-.", "P"),
    "truth": Mark(OKABE_ITO["black"], "-", "*"),
}
OTHER = Mark("0.4", "-", ".")  # a label without a mark of its own
EB_COLOR = STYLE["EB-ML"].color
JOINT_COLOR = STYLE[_JC].color
# compare's and the simulation's method names (`--methods`, `simulate`) -> the report's labels
METHOD_NAMES = {
    "eb-ml": "EB-ML",
    "eb-reml": "EB-REML",
    "joint-map": _JC,
    "joint-map:centered": _JC,
    "joint-map+priors:centered": _JCP,
    "joint-map:noncentered": _JN,
    "joint-map+priors:noncentered": _JNP,
    "mcmc": "MCMC mean",
}


def style(method: str) -> Mark:
    """The mark of a method, by the report's label or by compare's / the simulation's name."""
    return STYLE.get(method) or STYLE.get(METHOD_NAMES.get(method, ""), OTHER)


PLAIN_TEXT = {"text.parse_math": False}  # labels are data: `$`, `_`, `^` drawn as they are
plain_text = matplotlib.rc_context(PLAIN_TEXT)  # also a decorator for the figure functions
LABEL_MAX = 40  # characters of a group label shown in a figure
PANELS_PER_ROW = 4


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


def _log_x(ax) -> None:
    """A log x axis with plain-text tick labels (the default ones are mathtext, which the
    figures turn off so that data labels are drawn as they are)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.LogFormatter())
    ax.xaxis.set_minor_formatter(ticker.LogFormatter(minor_thresholds=(1, 0.5)))


def _vlines(ax, marks, window=None) -> None:
    """A vertical line per `curves.Estimate`; one outside `window` (lo, hi) is listed in the
    legend as off scale, a non-finite one is left out."""
    for e in marks:
        if e.value is None or not np.isfinite(e.value):
            continue
        mk = style(e.method)
        if window is not None and not window[0] <= e.value <= window[1]:
            ax.plot(
                [],
                [],
                color=mk.color,
                ls=mk.ls,
                lw=1.6,
                label=f"{e.method}: {e.value:.4g} (off scale)",
            )
        else:
            ax.axvline(e.value, color=mk.color, ls=mk.ls, lw=1.6, label=e.method)


@plain_text
def plot_marginals(panels: tuple[Marginal, ...]):
    """One panel per quantity: the MCMC posterior density (when sampled) and every point
    estimate of it."""
    n = len(panels)
    cols = min(n, PANELS_PER_ROW)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.0 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels, strict=False):
        window = density(ax, p.draws, p.lower) if p.draws is not None else None
        _vlines(ax, p.estimates, window)
        ax.set_title(short(p.title, 60), fontsize=10)
        ax.set_ylabel("density" if p.draws is not None else "")
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


@plain_text
def plot_profiles(curves: ProfileCurves, y_name: str):
    """One-way: log marginal and log joint along the marginal profile over log sigma^2, and
    their difference, the volume term."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.4))
    s = curves.sigma2
    lm, lj = finite(curves.log_marginal), finite(curves.log_joint)
    lm, lj = lm - np.nanmax(lm), lj - np.nanmax(lj)
    ax.plot(s, lm, color=EB_COLOR, lw=2, label="log marginal l (profiled)")
    ax.plot(s, lj, color=JOINT_COLOR, lw=2, label="log joint h at the conditional modes")
    i, j = int(np.nanargmax(lm)), int(np.nanargmax(lj))
    ax.plot(s[i], 0, "o", color=EB_COLOR, ms=8, label=f"max of l: sigma² = {s[i]:.4g}")
    ax.plot(s[j], 0, "s", color=JOINT_COLOR, ms=8, label=f"max of h: sigma² = {s[j]:.4g}")
    _log_x(ax)
    ax.set_xlabel(f"sigma² ({short(y_name)}², log scale)")
    ax.set_ylabel("log density minus its maximum")
    ax.set_ylim(max(float(np.nanmin(np.concatenate([lm, lj]))), -30), 2)
    ax.set_title("Profiles over sigma² (mu, tau² at their ML values given sigma²)")
    ax.legend(fontsize=8)
    ax2.plot(
        s, finite(curves.volume), color="0.3", lw=2, label="volume 1/2 sum log v_j + (m/2) log 2 pi"
    )
    ax2.plot(
        s,
        finite(curves.log_marginal - curves.log_joint),
        "w--",
        lw=1,
        label="l - h (equal: Laplace identity)",
    )
    _log_x(ax2)
    ax2.set_xlabel(f"sigma² ({short(y_name)}², log scale)")
    ax2.set_ylabel("volume term (nats)")
    ax2.set_title("The difference l - h: what the joint mode ignores")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


@plain_text
def plot_tau_path(
    path: TauPath, y_name: str, eb_tau: float | None, joint: tuple[float, float] | None
):
    """One-way: the centered log joint along tau -> 0, maximised over everything else;
    `joint` = (tau, log joint) of the interior joint MAP, if any."""
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.plot(
        path.tau,
        finite(path.log_joint),
        color=JOINT_COLOR,
        lw=2,
        label="max over mu, sigma, a of the log joint",
    )
    if joint is not None:
        ax.plot(
            *joint,
            "*",
            ms=16,
            color=JOINT_COLOR,
            mec="k",
            label=f"interior local maximum (tau = {joint[0]:.4g})",
        )
    if eb_tau:
        ax.axvline(eb_tau, color=EB_COLOR, ls=":", label="EB-ML tau")
    _log_x(ax)
    ax.set_xlabel(f"tau ({short(y_name)}, log scale)")
    ax.set_ylabel("log joint (nats)")
    ax.set_title("The log joint is unbounded as tau -> 0 (centered)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@plain_text
def plot_scale_path(path: ScalePath):
    """Log marginal and log joint as every random-effect variance shrinks together (two axes:
    the joint's rise is far larger than the marginal's peak)."""
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    at_ml = int(np.argmin(np.abs(np.log(path.scale))))
    lm, lj = finite(path.log_marginal), finite(path.log_joint)
    ax.plot(
        path.scale,
        lm - np.nanmax(lm),
        color=EB_COLOR,
        lw=2,
        label="log marginal likelihood l (profiled), left axis",
    )
    ax.set_ylim(-40, 3)
    ax.set_ylabel("l minus its maximum", color=EB_COLOR)
    ax2 = ax.twinx()
    ax2.plot(
        path.scale,
        lj - lj[at_ml],
        color=JOINT_COLOR,
        lw=2,
        label="log joint h (profiled over beta, b, sigma²), right axis",
    )
    ax2.set_ylabel("h minus its value at s = 1", color=JOINT_COLOR)
    ax.axvline(1.0, color=EB_COLOR, ls=":", label="EB-ML (s = 1)")
    _log_x(ax)
    ax.set_xlabel("s: relative covariance factor scaled to s x its ML value (log scale)")
    ax.set_title("Shrinking every random-effect variance: l peaks at ML, h keeps rising")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower center")
    fig.tight_layout()
    return fig


@plain_text
def plot_funnel(f: Funnel, group_name: str):
    """Posterior draws of log sd against a few effects b_j of the same term."""
    k = len(f.labels)
    fig, axes = plt.subplots(1, k, figsize=(4.6 * k, 4.2), sharey=True, squeeze=False)
    log_sd = finite(f.log_sd)
    for i, (ax, lab) in enumerate(zip(axes[0], f.labels, strict=True)):
        ax.scatter(f.effects[:, i], log_sd, s=3, alpha=0.25, color="0.35", label="posterior draws")
        if f.eb is not None:
            ax.plot(f.eb[0][i], f.eb[1], "o", color=EB_COLOR, ms=9, mec="k", label="EB-ML (modes)")
        if f.joint is not None:
            ax.plot(
                f.joint[0][i],
                f.joint[1],
                "*",
                color=JOINT_COLOR,
                ms=16,
                mec="k",
                label=JOINT_LABELS[("centered", False)],
            )
        ax.set_xlabel(f"b_j, {f.term}, {short(group_name)} {short(lab)}")
        ax.set_title(f"Funnel: {short(group_name)} {short(lab)}")
    axes[0][0].set_ylabel(f"log sd of the {f.term} effects")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


@plain_text
def plot_caterpillars(cats: tuple[Caterpillar, ...], group_name: str):
    """Random-effect intervals by method, one panel per term."""
    k = len(cats)
    shown = len(cats[0].labels)
    fig, axes = plt.subplots(
        1, k, figsize=(5.5 * k, max(3.5, 0.26 * shown + 1.5)), squeeze=False, sharey=True
    )
    ypos = np.arange(shown)
    offsets = np.linspace(0.25, -0.25, max(len(cats[0].series), 1))
    for ax, cat in zip(axes[0], cats, strict=True):
        unbounded = False
        for s, off in zip(cat.series, offsets, strict=False):
            color = style(s.method).color
            lo, hi = finite(s.lower), finite(s.upper)  # a non-finite end: left out
            unbounded |= bool(np.isnan(lo).any() or np.isnan(hi).any())
            ax.hlines(ypos + off, lo, hi, color=color, lw=2.0, label=s.label)
            ax.plot(finite(s.centre), ypos + off, "|", color=color, ms=8)
        if unbounded:
            ax.plot([], [], " ", label="(intervals with a non-finite end are not drawn)")
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_title(f"{short(cat.term)} effects b_j")
        ax.set_xlabel(short(cat.term))
        ax.legend(fontsize=7, loc="lower right")
    cat = cats[0]
    axes[0][0].set_yticks(ypos, [short(lab) for lab in cat.labels], fontsize=7 if shown > 25 else 9)
    axes[0][0].set_ylabel(
        short(group_name) + (f" ({shown} of {cat.n_groups} shown)" if cat.n_groups > shown else "")
    )
    fig.tight_layout()
    return fig


@plain_text
def plot_rank(post, width: float = 14):
    """Rank plots (ArviZ) of the quantities of the rank test (`fit.diagnostics.rank_quantities`:
    fixed effects, sigma, the SDs, correlations; one-way mu, sigma, tau), flat and overlapping
    when the chains mix, each titled with the test's p from the record's diagnostics (the p of
    the warning banner, not ArviZ's own on the unthinned draws). Raises `SkippedFigureError`
    for one chain (rank plots compare chains)."""
    import arviz as az
    from arviz_base.labels import BaseLabeller

    from workbench.fit import diagnostics
    from workbench.fit.mcmc import _monitored  # the Dataset `diagnose` was given

    tree = post.idata
    if int(tree.posterior.sizes["chain"]) < 2:
        raise SkippedFigureError(
            "rank plots compare chains, and this run has 1 chain; run 2 or more chains to see them"
        )
    ds = diagnostics.rank_quantities(_monitored(tree, post.data))
    p = post.diagnostics.get("rank_p")
    if p is None:  # a record from before the rank test
        p = diagnostics.holm(diagnostics.rank_test(ds))

    class Labeller(BaseLabeller):
        def make_label_vert(self, var_name, sel, isel):
            name = self.make_label_flat(var_name, sel, isel)
            v = p.get(name)
            return name if v is None or not np.isfinite(v) else f"{name}\np = {v:.2g}"

    pc = az.plot_rank(ds, backend="matplotlib", labeller=Labeller())
    pc.add_legend("chain")
    fig = pc.viz["figure"].item()
    for ax in fig.axes:  # ArviZ's own p and flagged points: its test on the unthinned draws
        for artist in [*ax.texts, *ax.collections]:
            artist.remove()
    fig.set_size_inches(width, 3.8 * max(1, -(-len(p) // 4)))
    fig.subplots_adjust(hspace=0.75)  # a row's two-line titles clear the x labels above
    fig.suptitle(
        "Rank plots by chain (ArviZ: fractional-rank ECDF differences; flat = the chains agree)\n"
        "p: the diagnostics' rank test (ArviZ's multi-chain test, each quantity thinned to half "
        f"its within-chain ESS, Holm-adjusted over {len(p)}); it warns below "
        f"{diagnostics.RANK_ALPHA}",
        y=1.02,
        va="bottom",  # above the panels' two-line titles
    )
    return fig


# The exact posterior's own marks: black and grey (apart for every colour vision), each with
# its own line style
EXACT_STYLE = {
    "exact mode": Mark(OKABE_ITO["black"], "-", "*"),
    "exact local mode": Mark(OKABE_ITO["black"], (0, (1, 1)), "*"),
    "exact mean": Mark("0.5", "--", "d"),
    "exact median": Mark("0.5", "-.", "h"),
    "MCMC mode (half-sample)": STYLE["MCMC mode"],
}


@dataclass(frozen=True)
class ExactPanel:
    """One panel of the exact marginal posterior: its density on one scale (`x`, `density`),
    the x window shown, the y limit (the density of tau^2 is unbounded at 0), every
    estimator's value on this scale (`marks`: (label, value); None = not defined here) and
    notes (lines) added to the legend."""

    title: str
    xlabel: str
    x: np.ndarray
    density: np.ndarray
    window: tuple[float, float]
    ymax: float
    marks: tuple[tuple[str, float | None], ...]
    note: str = ""


@plain_text
def plot_exact(panels: tuple[ExactPanel, ...]):
    """The exact marginal posterior densities, one panel per scale (a row per variance), with
    every estimator as a vertical line; one outside the window is listed as off scale."""
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.1 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels, strict=False):
        x, y = finite(p.x), finite(p.density)
        ax.plot(x, y, color="0.25", lw=2, label="exact marginal density")
        ax.fill_between(x, np.nan_to_num(y), color="0.88")
        lo, hi = p.window
        for label, value in p.marks:
            if value is None or not np.isfinite(value):
                continue
            mk = EXACT_STYLE.get(label) or style(label)
            text = f"{label}: {value:.4g}"
            if lo <= value <= hi:
                ax.axvline(value, color=mk.color, ls=mk.ls, lw=1.6, label=text)
            else:
                ax.plot([], [], color=mk.color, ls=mk.ls, lw=1.6, label=f"{text} (off scale)")
        for line in p.note.splitlines():  # in the legend: it finds the room
            ax.plot([], [], " ", label=line)
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, p.ymax)
        ax.set_title(short(p.title, 70), fontsize=10)
        ax.set_xlabel(short(p.xlabel, 60))
        ax.set_ylabel("density")
        ax.legend(fontsize=6.5, loc="upper right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


@plain_text
def plot_framing(framing: dict):
    """The question's second framing (`explain.framing(c).to_dict()`): one strip per quantity
    and scale, the posterior's 94% HDI as a grey bar with its marginal mode (a boundary mode at
    0 drawn hollow, an interior local mode beside it), the joint mode with its Wald interval
    and the EB fit, each on that scale's own axis. The legend sits below the strips."""
    rows = framing["rows"]
    jc, eb_label = style(_JC), framing.get("eb") or "EB-ML"
    ebm = style(eb_label)
    fig, axes = plt.subplots(len(rows), 1, figsize=(8.0, 0.62 * len(rows) + 1.3), squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        lo, hi = r["hdi"] or (np.nan, np.nan)
        ax.plot([lo, hi], [0, 0], color="0.75", lw=9, solid_capstyle="butt")
        mode = r["posterior_mode"]
        ax.plot(
            [mode], [0], "*", ms=13, color="black",
            mfc="white" if r["boundary"] else "black", zorder=4,
        )  # fmt: skip
        if r["local_mode"] is not None:
            ax.plot([r["local_mode"]], [0], "*", ms=11, color="0.35", zorder=4)
        values = [lo, hi, mode, r["local_mode"], r["eb"], r["joint_mode"]]
        if r["joint_mode"] is not None:
            ci = r["joint_mode_ci"]
            err = None if ci is None else [[r["joint_mode"] - ci[0]], [ci[1] - r["joint_mode"]]]
            ax.errorbar(
                [r["joint_mode"]], [0.28], xerr=err, fmt=jc.marker, color=jc.color,
                ms=7, capsize=3, lw=1.4, zorder=5,
            )  # fmt: skip
            values += list(ci or [])
        if r["eb"] is not None:
            ax.plot([r["eb"]], [-0.28], ebm.marker, color=ebm.color, ms=7, zorder=5)
        v = finite([x for x in values if x is not None])
        v = v[np.isfinite(v)]
        if v.size:
            pad = 0.06 * max(float(v.max() - v.min()), 1e-9 * max(1.0, abs(float(v.max()))))
            ax.set_xlim(float(v.min()) - pad, float(v.max()) + pad)
        ax.set_ylim(-0.6, 0.6)
        ax.set_yticks([])
        ax.set_ylabel(short(r["label"], 28), rotation=0, ha="right", va="center", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
    src = framing["source"]
    handles = [
        plt.Line2D(
            [], [], color="0.75", lw=9, label=f"{src}: {100 * framing['hdi_prob']:.0f}% HDI"
        ),
        plt.Line2D([], [], ls="", marker="*", ms=12, color="black", label=f"{src}: marginal mode"),
        plt.Line2D(
            [],
            [],
            ls="",
            marker="*",
            ms=12,
            color="black",
            mfc="white",
            label="marginal mode at the boundary 0",
        ),  # fmt: skip
        plt.Line2D([], [], ls="", marker="*", ms=10, color="0.35", label="interior local mode"),
        plt.Line2D(
            [],
            [],
            ls="-",
            marker=jc.marker,
            color=jc.color,
            label="joint mode (centered, no priors), Wald interval",
        ),  # fmt: skip
        plt.Line2D([], [], ls="", marker=ebm.marker, color=ebm.color, label=eb_label),
    ]
    drawn = [True, True, any(r["boundary"] for r in rows)]
    drawn += [any(r["local_mode"] is not None for r in rows)]
    drawn += [
        any(r["joint_mode"] is not None for r in rows),
        any(r["eb"] is not None for r in rows),
    ]
    handles = [h for h, keep in zip(handles, drawn, strict=True) if keep]  # only what is drawn
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 1.05 / (0.62 * len(rows) + 1.3), 1, 1))
    return fig
