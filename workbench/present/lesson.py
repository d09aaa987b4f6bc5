"""The interactive lesson's numbers: the balanced one-way model's closed forms (DESIGN.md 1), the
same formulas `templates/lesson.js` evaluates in the browser, and the report's context for it.

m groups of n observations enter only through the within sum of squares W and the between sum
of squares nB = n sum_j (ybar_j - ybar)^2; with the within mean square W / (m (n - 1)) as the unit
of variance they depend on (n, m, F) alone, F = MSB / MSW. With mu and the effects a_j at their
conditional modes,

    l(s2, t2) = -1/2 [N log 2 pi + m (n - 1) log s2 + m log(s2 + n t2) + W/s2 + nB/(s2 + n t2)]
    h(s2, t2) = -1/2 [N log 2 pi s2 + m log 2 pi t2 + W/s2 + nB/(s2 + n t2)]

(`log_marginal`, `log_joint`). The lesson draws three curves from them: the marginal profile
over s2 (t2 >= 0 maximised); the joint profile over s2 on its interior branch (the local maximum
over t2, which exists for s2 <= nB / (4m)), whose interior local maximum is the joint mode (near
the threshold the branch climbs again past the saddle to its end, a fold, not a mode); and the
joint along tau (s2 maximised: the root of a cubic). Units: the functions take (n, m, F) in units
of the MSW; `Balanced.of` gives the same model in the data's units."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from workbench.model.data import Stats

LOG_2PI = float(np.log(2.0 * np.pi))
SCRIPT = Path(__file__).parent / "templates" / "lesson.js"
# slider ranges (the report's data widen them when it lies outside)
N_RANGE, M_RANGE, F_RANGE = (2, 50), (2, 200), (0.3, 1000.0)
F_STEPS = 600  # positions of the F slider (log scale), as `lesson-f`'s max in _lesson.html.j2


def threshold(n: float, m: float) -> float:
    """The F below which the centered log joint has no interior stationary point."""
    return 4.0 * (n * n - 1.0) * m / ((m - 1.0) * n * n)


@dataclass(frozen=True)
class Mode:
    """A stationary point of the log joint: shrinkage s = n t2 / (n t2 + s2), s2, t2, h."""

    shrinkage: float
    sigma2: float
    tau2: float
    log_joint: float


@dataclass(frozen=True)
class Balanced:
    """m groups of n with within sum of squares W and between sum of squares nB."""

    n: float
    m: int
    W: float
    nB: float

    @classmethod
    def unit(cls, n: float, m: int, F: float) -> Balanced:
        """The model at F with the within mean square as the unit of variance."""
        return cls(float(n), int(m), m * (n - 1.0), F * (m - 1.0))

    @classmethod
    def of(cls, st: Stats) -> Balanced:
        """Balanced data's model in the data's units."""
        if not np.all(st.n == st.n[0]):
            raise ValueError("Balanced.of needs groups of equal size")
        n = float(st.n[0])
        return cls(n, st.m, st.W, n * float(((st.ybar - st.ybar.mean()) ** 2).sum()))

    @property
    def N(self) -> float:
        return self.n * self.m

    @property
    def msw(self) -> float:
        return self.W / (self.m * (self.n - 1.0))

    @property
    def F(self) -> float:
        return (self.nB / (self.m - 1.0)) / self.msw

    @property
    def threshold(self) -> float:
        return threshold(self.n, self.m)

    @property
    def limit(self) -> float:
        """sigma^2_joint / sigma^2_ML as F grows: (n - 1) / n."""
        return (self.n - 1.0) / self.n

    # -- densities (mu and a_j at their conditional modes) ------------------------------------

    def log_marginal(self, s2, t2):
        lam = s2 + self.n * np.asarray(t2)
        return -0.5 * (
            self.N * LOG_2PI
            + self.m * (self.n - 1.0) * np.log(s2)
            + self.m * np.log(lam)
            + self.W / s2
            + self.nB / lam
        )

    def log_joint(self, s2, t2):
        t2 = np.asarray(t2, float)
        with np.errstate(divide="ignore"):
            return -0.5 * (
                self.N * (LOG_2PI + np.log(s2))
                + self.m * (LOG_2PI + np.log(t2))
                + self.W / s2
                + self.nB / (s2 + self.n * t2)
            )

    # -- estimates -------------------------------------------------------------------------

    @cached_property
    def ml(self) -> tuple[float, float]:
        """(sigma^2, tau^2) of ML; tau^2 = 0 at the boundary nB/m <= MSW."""
        lam = self.nB / self.m
        if lam > self.msw:
            return self.msw, (lam - self.msw) / self.n
        return (self.W + self.nB) / self.N, 0.0

    @cached_property
    def stationary(self) -> tuple[Mode, Mode] | None:
        """(joint mode, saddle) of the log joint: the larger and the smaller root s of
        (n + 1) s^2 - (n + 2) s + 1 + W/nB = 0; None below the threshold."""
        n = self.n
        if self.nB <= 0 or self.F < self.threshold:
            return None
        disc = max((n + 2.0) ** 2 - 4.0 * (n + 1.0) * (1.0 + self.W / self.nB), 0.0)
        out = []
        for sign in (1.0, -1.0):
            s = ((n + 2.0) + sign * np.sqrt(disc)) / (2.0 * (n + 1.0))
            s2 = (self.W + self.nB * (1.0 - s) ** 2) / self.N
            t2 = s * s2 / (n * (1.0 - s))
            out.append(Mode(s, s2, t2, float(self.log_joint(s2, t2))))
        return out[0], out[1]

    @property
    def joint(self) -> Mode | None:
        return self.stationary[0] if self.stationary else None

    # -- the curves ------------------------------------------------------------------------

    def marginal_profile(self, s2):
        """l maximised over tau^2 >= 0 (and mu) at each sigma^2: (tau^2, l)."""
        s2 = np.asarray(s2, float)
        lam = np.maximum(self.nB / self.m, s2)
        return (lam - s2) / self.n, self.log_marginal(s2, (lam - s2) / self.n)

    def joint_branch(self, s2):
        """h at its interior local maximum over tau^2 at each sigma^2: (tau^2, h), NaN where
        there is none (sigma^2 > nB / (4m)). With c = n tau^2 the stationary points solve
        m c^2 + (2 m s2 - nB) c + m s2^2 = 0; the larger root is the maximum."""
        s2 = np.asarray(s2, float)
        disc = self.nB * (self.nB - 4.0 * self.m * s2)
        ok = (disc >= 0) & (self.nB > 0)
        root = np.sqrt(np.where(ok, disc, 0.0))
        c = np.where(ok, (self.nB - 2.0 * self.m * s2 + root) / (2.0 * self.m), np.nan)
        t2 = c / self.n
        return t2, np.where(ok, self.log_joint(s2, np.where(ok, t2, 1.0)), np.nan)

    def tau_path(self, t2):
        """h maximised over sigma^2 (and mu, a) at each tau^2: (sigma^2, h). The stationary
        sigma^2 solve N x^3 + (2 N c - W - nB) x^2 + (N c^2 - 2 W c) x - W c^2 = 0, c = n t2;
        the positive root with the largest h."""
        t2 = np.atleast_1d(np.asarray(t2, float))
        s2s, hs = [], []
        for t in t2:
            c = self.n * t
            coef = [self.N, 2 * self.N * c - self.W - self.nB, self.N * c * c - 2 * self.W * c]
            roots = np.roots([*coef, -self.W * c * c])
            x = roots.real[(np.abs(roots.imag) <= 1e-9 * np.abs(roots)) & (roots.real > 0)]
            x = np.array([_polish(coef, -self.W * c * c, r) for r in x])
            h = self.log_joint(x, t)
            k = int(np.argmax(h))
            s2s.append(x[k])
            hs.append(h[k])
        return np.array(s2s), np.array(hs)

    def summary(self) -> dict:
        """The numbers the lesson's text line states (and the page's `summary` returns)."""
        s2, t2 = self.ml
        j = self.joint
        return {
            "n": self.n,
            "m": self.m,
            "F": self.F,
            "threshold": self.threshold,
            "limit": self.limit,
            "sigma2_ml": s2,
            "tau2_ml": t2,
            "interior": j is not None,
            "sigma2_joint": j.sigma2 if j else None,
            "tau2_joint": j.tau2 if j else None,
            "shrinkage": j.shrinkage if j else None,
            "ratio": j.sigma2 / s2 if j else None,
            "saddle_tau2": self.stationary[1].tau2 if j else None,
        }


def _polish(coef: list[float], d: float, x: float) -> float:
    """Two Newton steps on the cubic from np.roots' root (companion-matrix roots lose digits)."""
    a, b, c = coef
    for _ in range(2):
        p = ((a * x + b) * x + c) * x + d
        dp = (3 * a * x + 2 * b) * x + c
        if dp != 0:
            x -= p / dp
    return float(x)


def sentence(b: Balanced, unit: float = 1.0, y_name: str = "") -> str:
    """The lesson's text line in words (the page writes the same line as the sliders move)."""
    s = b.summary()
    sq = f" {y_name}²" if y_name else ""
    head = (
        f"n = {b.n:.0f}, m = {b.m}, F = {b.F:.3g} (threshold {b.threshold:.3g}): "
        f"ML σ² = {unit * s['sigma2_ml']:.4g}{sq}"
        + (" with τ² = 0 (boundary)" if s["tau2_ml"] == 0 else "")
    )
    if not s["interior"]:
        return (
            f"{head}; no interior joint mode: F is below the threshold, the log joint rises "
            f"without bound as τ → 0 and nothing stops it."
        )
    return (
        f"{head}; joint σ² = {unit * s['sigma2_joint']:.4g}{sq}, ratio {s['ratio']:.3f} "
        f"(limit (n − 1)/n = {b.limit:.3f})."
    )


# ----------------------------------------------------------------------------------------------
# The report's part


def start_values(st: Stats) -> dict:
    """The lesson's starting (n, m, F) for one-way data and the unit (MSW): balanced data give
    them exactly; unbalanced data give the mean group size (rounded), the number of groups and
    the ANOVA F (MSB / MSW), and a note saying so. Raises ValueError without within-group
    variation or between-group differences to form F from."""
    m, N = st.m, st.N
    if m < 2:
        raise ValueError("one group only, so no between-group F")
    if N <= m or st.W <= 0:
        raise ValueError("no within-group variation (every group has one value or equal values)")
    msw = st.W / (N - m)
    grand = float(st.n @ st.ybar / N)
    F = float(st.n @ (st.ybar - grand) ** 2) / (m - 1) / msw
    balanced = bool(np.all(st.n == st.n[0]))
    n_mean = N / m
    note = (
        None
        if balanced
        else (
            f"These data are unbalanced (group sizes {st.n.min():.0f} to {st.n.max():.0f}): the "
            f"lesson starts from the mean group size {n_mean:.3g} rounded to {round(n_mean)}, "
            f"the {m} groups and the ANOVA F = MSB/MSW = {F:.3g}; its balanced curves approximate "
            f"these data's, so its numbers differ from the fits above."
        )
    )
    return {"n": max(2, round(n_mean)), "m": m, "F": F, "unit": msw, "note": note}


def context(c) -> dict:
    """The template's `lesson`: `shown` with the page's JSON (`data`) and the static text line
    at the report's data, or a one-line `note` saying why there is no lesson."""
    d = c.data
    if not d.is_oneway:
        return {
            "shown": False,
            "note": (
                "The interactive lesson uses the closed forms of the balanced one-way model "
                "y ~ 1 + (1 | g); this model has no single group size, number of groups and F "
                "to start it from, so it is not shown (models/lesson.ipynb has the lesson)."
            ),
        }
    return stats_context(d.oneway, d.y_name)


def stats_context(st: Stats, y_name: str = "y") -> dict:
    """`context` for one-way per-group statistics (a report's data, or a simulated data set)."""
    try:
        start = start_values(st)
    except ValueError as exc:
        return {"shown": False, "note": f"No interactive lesson for these data: {exc}."}
    lo_f, hi_f = F_RANGE
    F = min(max(start["F"], lo_f), hi_f)
    clamped = F != start["F"]
    b = Balanced.unit(start["n"], start["m"], F)
    data = {
        "n": start["n"],
        "m": start["m"],
        "F": F,
        "F_data": start["F"],
        "f_pos": round(F_STEPS * np.log(F / lo_f) / np.log(hi_f / lo_f)),
        "unit": start["unit"],
        "y": y_name,
        "ranges": {
            "n": [N_RANGE[0], max(N_RANGE[1], start["n"])],
            "m": [M_RANGE[0], max(M_RANGE[1], start["m"])],
            "F": [lo_f, hi_f],
        },
    }
    notes = [start["note"]] if start["note"] else []
    if clamped:
        notes.append(f"The data's F = {start['F']:.3g} is off the slider; it starts at {F:.3g}.")
    return {
        "shown": True,
        # inside <script>: '<', '>' and '&' as JSON escapes, so a column named '</script>...'
        # cannot end the element (the page parses the same values)
        "data_json": json.dumps(data)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026"),
        "line": sentence(b, start["unit"], y_name),
        "start": data,
        "notes": notes,
    }


def standalone(ctx: dict, title: str = "The joint mode: an interactive lesson") -> str:
    """The lesson alone as one self-contained HTML page (the report's section and style)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(SCRIPT.parent),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>{{ title }}</title><style>{% include "report.css" %}</style></head>'
        '<body><div class="wb-report"><h1>{{ title }}</h1>{% include "_lesson.html.j2" %}'
        "</div></body></html>"
    )
    from workbench.present.report import _fmt

    return env.from_string(page).render(lesson=ctx, title=title, fmt=_fmt)
