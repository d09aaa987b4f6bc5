"""The report's figures (matplotlib; ArviZ for the rank plots), drawn from the frozen records
of `curves.py`, the same functions for every model. `to_png` turns a figure into PNG bytes.

Robust to what a result may hold: text is drawn plain (`text.parse_math` off, so group labels
and column names like `$`, `a_b^c` are not read as mathtext), non-finite points and intervals
are left out, a density is drawn only where the draws have spread, and a figure that cannot be
drawn for a stated reason (rank plots of one chain) raises `SkippedFigureError` with it.
"""

from __future__ import annotations

import io
import textwrap
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
from workbench.present.table import fmt  # noqa: E402  (the tables' digits, in the labels)

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


# Drawn for a page 800 px wide: figures at most FIG_WIDTH inches (880 px at to_png's 110 dpi,
# so scaled by at most 0.87 there), text of at least 9 pt, legends outside the axes
PLAIN_TEXT = {
    "text.parse_math": False,  # labels are data: `$`, `_`, `^` drawn as they are
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
}
plain_text = matplotlib.rc_context(PLAIN_TEXT)  # also a decorator for the figure functions
FIG_WIDTH = 8.0
MIN_FONT = 9.0
LABEL_MAX = 40  # characters of a group label shown in a figure
PANELS_PER_ROW = 2


class SkippedFigureError(Exception):
    """A figure that is not drawn, for the reason given (shown in the report instead)."""


def wrap(text: str, width: int = 44) -> str:
    """A title on at most two lines of `width` characters (a panel is half the page wide)."""
    return textwrap.fill(" ".join(str(text).split()), width, max_lines=2, placeholder=" …")


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
    ax.xaxis.set_major_formatter(_PlainLog())
    ax.xaxis.set_minor_formatter(_PlainLog(minor_thresholds=(1, 0.5)))


class _PlainLog(ticker.LogFormatter):
    """LogFormatter's choice of ticks to label, written plainly ("0.4", "2000", not "4e-01")."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _x_scale(ax, lo: float, hi: float) -> bool:
    """Log x where the range spans more than a factor 3 (it is then the natural scale of a
    variance), linear on a zoom (a large data set's narrow window); True when log."""
    if lo > 0 and hi / lo > 3.0:
        _log_x(ax)
        return True
    return False


def legend_below(host, handles=None, labels=None, ncol: int = 2, **kw):
    """A legend below the axes of `host` (a constrained-layout figure or subfigure), outside
    the data area; `fit_legends` narrows it to its host's width after layout."""
    args = () if handles is None else (handles, labels) if labels is not None else (handles,)
    return host.legend(*args, loc="outside lower center", ncol=ncol, frameon=False, **kw)


def fit_legends(fig) -> None:
    """Fewer legend columns where a legend is wider than its (sub)figure: legends never run
    into their neighbours."""
    for _ in range(3):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        changed = False
        for host in [fig, *fig.subfigs]:
            width = host.bbox.width
            for lg in host.legends:
                if lg.get_window_extent(r).width > width + 1 and lg._ncols > 1:
                    lg.set_ncols(lg._ncols - 1)
                    changed = True
        if not changed:
            return


def _vlines(ax, marks, window=None) -> None:
    """A vertical line per `curves.Estimate`, with the method's marker at a height of its own
    (lines at equal values stay told apart); one outside `window` (lo, hi) is listed in the
    legend as off scale, a non-finite one is left out."""
    at = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for k, e in enumerate(marks):
        if e.value is None or not np.isfinite(e.value):
            continue
        mk = style(e.method)
        if window is not None and not window[0] <= e.value <= window[1]:
            ax.plot(
                [],
                [],
                color=mk.color,
                ls=mk.ls,
                lw=1.8,
                label=f"{e.method}\n= {fmt(e.value)} (off scale)",
            )
        else:
            ax.axvline(e.value, color=mk.color, ls=mk.ls, lw=1.8)
            ax.plot(
                [e.value], [0.93 - 0.07 * (k % 10)], mk.marker, color=mk.color, mec="k",
                mew=0.6, ms=7, ls=mk.ls, transform=at, label=e.method,
            )  # fmt: skip


def _grid(n: int, cols: int = PANELS_PER_ROW, height: float = 3.0, width: float = FIG_WIDTH):
    """A constrained-layout figure of `n` subfigures, `cols` to a row, one axes each (each
    subfigure holds its own legend below its axes)."""
    cols = max(1, min(n, cols))
    rows = -(-n // cols)
    fig = plt.figure(figsize=(width, height * rows), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(rows, cols, squeeze=False)).reshape(-1)
    for sf in subs[n:]:
        sf.set_visible(False)
    return fig, [(sf, sf.subplots()) for sf in subs[:n]]


@plain_text
def plot_marginals(panels: tuple[Marginal, ...]):
    """One panel per quantity: the MCMC posterior density (when sampled) and every point
    estimate of it, the legend beneath each panel."""
    fig, cells = _grid(len(panels), height=4.2 if len(panels) > 1 else 3.6)
    for (sf, ax), p in zip(cells, panels, strict=True):
        window = density(ax, p.draws, p.lower) if p.draws is not None else None
        _vlines(ax, p.estimates, window)
        if p.draws is None:
            ax.set_yticks([])
            v = np.array([e.value for e in p.estimates if e.value is not None], float)
            v = v[np.isfinite(v)]
            if p.lower == 0.0 and v.size and v.min() > 0 and v.max() > 10 * v.min():
                _log_x(ax)  # a variance whose estimates span decades
                ax.set_xlabel("log scale")
        ax.set_title(wrap(p.title))
        ax.set_ylabel("density" if p.draws is not None else "")
        legend_below(sf, ncol=1 if len(panels) > 1 else 2)
    fit_legends(fig)
    return fig


def _mark_label(method: str, what: str, value: float, extra: str = "") -> str:
    return f"{method}: {what} = {fmt(value)}{extra}"


@plain_text
def plot_profiles(curves: ProfileCurves, y_name: str):
    """One-way, over sigma^2 (one shared axis): above, the log marginal l profiled over
    (mu, tau^2) and the centered log joint h profiled over (mu, a) and its interior local
    maximum in tau^2, each minus its maximum, with the maxima at the fitted values themselves
    (EB-ML's sigma^2, the interior joint mode's; labelled with the tables' digits); below, the
    volume term l - h along l's profile (the Laplace identity). No joint maximum is drawn
    where none exists, and what is not drawn is said in the legend."""
    fig, (ax, ax2) = plt.subplots(
        2,
        1,
        figsize=(FIG_WIDTH, 7.6),
        sharex=True,
        layout="constrained",
        gridspec_kw={"height_ratios": [3, 2]},
    )
    s = curves.sigma2
    jc, eb = STYLE[_JC], STYLE["EB-ML"]
    lm = finite(curves.log_marginal)
    i_ml = int(np.argmin(np.abs(s - curves.ml_sigma2)))
    lm = lm - lm[i_ml]
    ax.plot(s, lm, color=eb.color, lw=2.2, label="log marginal l, profiled over mu and tau²")
    hp = finite(curves.joint_profile)
    shown = [lm]
    if curves.joint_sigma2 is not None:
        i_j = int(np.argmin(np.abs(s - curves.joint_sigma2)))
        hp = hp - hp[i_j]
        ax.plot(s, hp, color=jc.color, lw=2.2, label="log joint h, profiled over mu, a, tau²")
        ax.plot(
            s[i_j], 0.0, jc.marker, color=jc.color, ms=9, mec="k", zorder=5,
            label=_mark_label("joint MAP (centered)", "σ²", curves.joint_sigma2, ", max of h"),
        )  # fmt: skip
        ax2.axvline(curves.joint_sigma2, color=jc.color, ls=jc.ls, lw=1.2)
        shown.append(hp)
    elif np.isfinite(hp).any():
        hp = hp - np.nanmax(hp)
        ax.plot(
            s, hp, color=jc.color, lw=2.2, ls="--",
            label="log joint h, profiled over mu, a and a local maximum in tau²\n"
            "(minus its largest value shown; it ends where that local maximum vanishes)",
        )  # fmt: skip
        shown.append(hp)
        ax.plot([], [], " ", label="no interior joint mode: h has no maximum (none drawn)")
    else:
        ax.plot(
            [], [], " ",
            label="log joint h: no interior local maximum in tau² at any sigma² shown\n"
            "(h rises without bound as tau² → 0): no curve and no joint mode",
        )  # fmt: skip
    ax.plot(
        s[i_ml], 0.0, eb.marker, color=eb.color, ms=9, mec="k", zorder=6,
        label=_mark_label("EB-ML", "σ²", curves.ml_sigma2, ", max of l"),
    )  # fmt: skip
    ax2.axvline(curves.ml_sigma2, color=eb.color, ls=eb.ls, lw=1.2)
    low = float(np.nanmin(np.concatenate(shown)))
    ax.set_ylim(max(low, -15.0) - 0.5, 1.0)
    ax.set_ylabel("log density minus its maximum")
    ax.set_title(f"Profiles over sigma² ({short(y_name)}²)")
    vol, diff = finite(curves.volume), finite(curves.log_marginal - curves.log_joint)
    ax2.plot(s, vol, color="0.3", lw=2.2, label="volume 1/2 sum log v_j + (m/2) log 2 pi")
    ax2.plot(s, diff, color="0.8", ls="--", lw=1.2, label="l - h (equal: Laplace identity)")
    if np.isnan(vol).any():
        zero = s[np.isnan(vol)]
        ax2.axvspan(zero.min(), zero.max(), color="0.93", zorder=0)
        ax2.plot(
            [], [], " ",
            label=f"tau² = 0 on l's profile for sigma² in [{fmt(zero.min(), '.4g')}, "
            f"{fmt(zero.max(), '.4g')}]:\nthere h = +inf and the volume = -inf (not drawn)",
        )  # fmt: skip
    log = _x_scale(ax2, float(s[0]), float(s[-1]))
    ax2.set_xlabel(f"sigma² ({short(y_name)}²{', log scale' if log else ''})")
    ax2.set_ylabel("volume term (nats)")
    ax2.set_title("The difference l - h along l's profile: what the joint mode ignores")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    legend_below(fig, h1 + h2, l1 + l2, ncol=1)
    return fig


@plain_text
def plot_tau_path(
    path: TauPath,
    y_name: str,
    eb_tau: float | None,
    joint: tuple[float, float] | None,
    zoom: TauPath | None = None,
):
    """One-way: the centered log joint along tau -> 0, maximised over everything else, minus
    its value nearest EB-ML's tau; `joint` = (tau, log joint) of the interior joint MAP, if
    any; `zoom`, the same path on a fine grid around the fitted tau (on large data the
    interior bump is a few nats beside a rise of thousands), drawn beneath."""
    fitted = eb_tau is not None or joint is not None
    paths = [path] + ([zoom] if zoom is not None and fitted else [])  # no zoom on nothing
    fig, axes = plt.subplots(
        len(paths), 1, figsize=(FIG_WIDTH, 3.6 * len(paths) + 0.8), layout="constrained"
    )
    axes = np.atleast_1d(axes)
    jc, eb = STYLE[_JC], STYLE["EB-ML"]
    ref_tau = eb_tau or (joint[0] if joint else float(np.median(path.tau)))
    ref = float(finite(path.log_joint)[int(np.argmin(np.abs(np.log(path.tau / ref_tau))))])
    for k, (ax, p) in enumerate(zip(axes, paths, strict=True)):
        ax.plot(
            p.tau, finite(p.log_joint) - ref, color=jc.color, lw=2.2,
            label="log joint, maximised over mu, sigma, a" if k == 0 else None,
        )  # fmt: skip
        if joint is not None:
            ax.plot(
                joint[0], joint[1] - ref, jc.marker, ms=10, color=jc.color, mec="k", zorder=5,
                label=(
                    f"interior local maximum: joint MAP (centered), tau² = {fmt(joint[0] ** 2)}"
                    if k == 0 else None
                ),
            )  # fmt: skip
        if eb_tau:
            ax.axvline(
                eb_tau, color=eb.color, ls=eb.ls, lw=1.8,
                label=f"EB-ML: tau² = {fmt(eb_tau**2)}" if k == 0 else None,
            )  # fmt: skip
        _log_x(ax) if k == 0 else _x_scale(ax, float(p.tau[0]), float(p.tau[-1]))
        ax.set_ylabel(
            "log joint minus its value\n"
            + ("at EB-ML's tau (nats)" if eb_tau else f"at tau = {fmt(ref_tau, '.4g')} (nats)")
        )
        ax.set_xlabel(f"tau ({short(y_name)}{', log scale' if ax.get_xscale() == 'log' else ''})")
    if joint is None:
        axes[0].plot([], [], " ", label="no interior local maximum: no joint mode (none drawn)")
    axes[0].set_title("The centered log joint rises without bound as tau → 0")
    if len(paths) > 1:
        axes[1].set_title("Zoom around the fitted tau")
    legend_below(fig, ncol=1)
    return fig


@plain_text
def plot_scale_path(path: ScalePath, zoom: ScalePath | None = None):
    """Log marginal and log joint as every random-effect variance shrinks together (two axes:
    the joint's rise is far larger than the marginal's peak); `zoom`, the same on a fine grid
    around s = 1, beneath (on large data l's peak is narrow)."""
    paths = [path] + ([zoom] if zoom is not None else [])
    fig, axes = plt.subplots(
        len(paths), 1, figsize=(FIG_WIDTH, 3.8 * len(paths) + 0.9), layout="constrained"
    )
    jc, eb = STYLE[_JC], STYLE["EB-ML"]
    for k, (ax, p) in enumerate(zip(np.atleast_1d(axes), paths, strict=True)):
        at_ml = int(np.argmin(np.abs(np.log(p.scale))))
        lm, lj = finite(p.log_marginal), finite(p.log_joint)
        first = k == 0
        ax.plot(
            p.scale, lm - lm[at_ml], color=eb.color, lw=2.2,
            label="log marginal l (profiled), left axis" if first else None,
        )  # fmt: skip
        if first:
            ax.set_ylim(-40, 3)
        ax.set_ylabel("l minus its maximum", color=eb.color)
        ax2 = ax.twinx()
        ax2.plot(
            p.scale, lj - lj[at_ml], color=jc.color, ls=jc.ls, lw=2.2,
            label="log joint h (profiled over beta, b, sigma²), right axis" if first else None,
        )  # fmt: skip
        ax2.set_ylabel("h minus its value at s = 1", color=jc.color)
        ax.axvline(1.0, color=eb.color, ls=eb.ls, lw=1.8, label="EB-ML (s = 1)" if first else None)
        log = _log_x(ax) if first else _x_scale(ax, float(p.scale[0]), float(p.scale[-1]))
        ax.set_xlabel(
            "s: every relative covariance factor at s x its ML value"
            + (" (log scale)" if first or log else "")
        )
        if first:
            ax.set_title("Shrinking every random-effect variance: l peaks at ML, h keeps rising")
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
        else:
            ax.set_title("Zoom around s = 1 (where l is within 12 nats of its maximum)")
    legend_below(fig, h1 + h2, l1 + l2, ncol=1)
    return fig


@plain_text
def plot_funnel(f: Funnel, group_name: str):
    """Posterior draws of log sd against a few effects b_j of the same term."""
    k = len(f.labels)
    fig, axes = plt.subplots(
        1, k, figsize=(FIG_WIDTH, 3.8), sharey=True, squeeze=False, layout="constrained"
    )
    log_sd = finite(f.log_sd)
    jc, eb = STYLE[_JC], STYLE["EB-ML"]
    for i, (ax, lab) in enumerate(zip(axes[0], f.labels, strict=True)):
        ax.scatter(f.effects[:, i], log_sd, s=3, alpha=0.25, color="0.35", label="posterior draws")
        if f.eb is not None:
            ax.plot(
                f.eb[0][i], f.eb[1], eb.marker, color=eb.color, ms=9, mec="k", label="EB-ML (modes)"
            )
        if f.joint is not None:
            ax.plot(
                f.joint[0][i], f.joint[1], jc.marker, color=jc.color, ms=9, mec="k",
                label=JOINT_LABELS[("centered", False)],
            )  # fmt: skip
        ax.set_xlabel(f"b_j ({f.term})")
        ax.set_title(f"{short(group_name, 16)} {short(lab, 16)}")
    axes[0][0].set_ylabel(f"log sd of the {f.term} effects")
    if f.eb is None:
        axes[0][0].plot([], [], " ", label="EB-ML: sd = 0 (log sd = -inf, not drawn)")
    legend_below(fig, *axes[0][0].get_legend_handles_labels(), ncol=2, markerscale=1.5)
    fit_legends(fig)
    return fig


@plain_text
def plot_caterpillars(cats: tuple[Caterpillar, ...], group_name: str):
    """Random-effect intervals by method, one panel per term, each method with its colour and
    line style, the legend beneath."""
    k = len(cats)
    shown = len(cats[0].labels)
    fig, axes = plt.subplots(
        1, k, figsize=(FIG_WIDTH, max(3.5, 0.2 * shown + 2.2)), squeeze=False, sharey=True,
        layout="constrained",
    )  # fmt: skip
    ypos = np.arange(shown)
    offsets = np.linspace(0.25, -0.25, max(len(cats[0].series), 1))
    unbounded = False
    for ax, cat in zip(axes[0], cats, strict=True):
        for s, off in zip(cat.series, offsets, strict=False):
            mk = style(s.method)
            lo, hi = finite(s.lower), finite(s.upper)  # a non-finite end: left out
            unbounded |= bool(np.isnan(lo).any() or np.isnan(hi).any())
            ax.hlines(ypos + off, lo, hi, color=mk.color, ls=mk.ls, lw=2.0, label=s.label)
            ax.plot(finite(s.centre), ypos + off, "|", color=mk.color, ms=7)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_title(f"{short(cat.term, 30)} effects b_j")
        ax.set_xlabel(short(cat.term, 30))
    cat = cats[0]
    axes[0][0].set_yticks(ypos, [short(lab) for lab in cat.labels], fontsize=MIN_FONT)
    axes[0][0].set_ylim(-0.7, shown - 0.3)
    axes[0][0].set_ylabel(
        short(group_name) + (f" ({shown} of {cat.n_groups} shown)" if cat.n_groups > shown else "")
    )
    if unbounded:
        axes[0][0].plot([], [], " ", label="(intervals with a non-finite end are not drawn)")
    legend_below(fig, *axes[0][0].get_legend_handles_labels(), ncol=2)
    fit_legends(fig)
    return fig


@plain_text
def plot_rank(post, width: float = FIG_WIDTH):
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

    cols = 3
    rows = -(-len(p) // cols)
    pc = az.plot_rank(
        ds,
        backend="matplotlib",
        labeller=Labeller(),
        col_wrap=cols,
        figure_kwargs={"figsize": (width, 2.7 * rows + 1.4), "layout": "constrained"},
    )
    fig = pc.viz["figure"].item()
    handles = []
    for ax in fig.axes:  # ArviZ's own p and flagged points: its test on the unthinned draws
        for artist in [*ax.texts, *ax.collections]:
            artist.remove()
        ax.title.set_fontsize(PLAIN_TEXT["axes.titlesize"])
        ax.xaxis.label.set_fontsize(PLAIN_TEXT["axes.labelsize"])
        ax.tick_params(labelsize=PLAIN_TEXT["xtick.labelsize"])
        handles = handles or [ln for ln in ax.lines if ln.get_xdata().size > 1]
    chains = [str(c) for c in np.asarray(tree.posterior["chain"])]
    legend_below(fig, handles[: len(chains)], [f"chain {c}" for c in chains], ncol=len(chains))
    fig.suptitle(
        "Rank plots by chain (ArviZ: fractional-rank ECDF differences; flat = the chains\n"
        "agree). p: the diagnostics' rank test (ArviZ's multi-chain test, each quantity\n"
        f"thinned to half its within-chain ESS, Holm-adjusted over {len(p)}); it warns below "
        f"{diagnostics.RANK_ALPHA}",
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
    """The exact marginal posterior densities, one panel per scale (two to a row), with every
    estimator as a vertical line, its value in the legend beneath the panel; one outside the
    window is listed as off scale."""
    fig, cells = _grid(len(panels), height=5.2)
    for (sf, ax), p in zip(cells, panels, strict=True):
        x, y = finite(p.x), finite(p.density)
        ax.plot(x, y, color="0.25", lw=2, label="exact marginal density")
        ax.fill_between(x, np.nan_to_num(y), color="0.88")
        lo, hi = p.window
        for label, value in p.marks:
            if value is None or not np.isfinite(value):
                continue
            mk = EXACT_STYLE.get(label) or style(label)
            text = f"{label}: {fmt(value)}" if len(label) <= 24 else f"{label}\n= {fmt(value)}"
            if lo <= value <= hi:
                ax.axvline(value, color=mk.color, ls=mk.ls, lw=1.8, label=text)
            else:
                ax.plot([], [], color=mk.color, ls=mk.ls, lw=1.8, label=f"{text} (off scale)")
        for line in p.note.splitlines():  # in the legend: it finds the room
            ax.plot([], [], " ", label=line)
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, p.ymax)
        ax.set_title(wrap(p.title))
        ax.set_xlabel(wrap(p.xlabel))
        ax.set_ylabel("density")
        legend_below(sf, ncol=1)
    fit_legends(fig)
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
        ax.tick_params(axis="x", labelsize=9)
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
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 1.05 / (0.62 * len(rows) + 1.3), 1, 1))
    return fig
