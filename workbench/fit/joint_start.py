"""The joint MAP's one start type, one classifier and one message, shared by its kernels
(`joint_oneway`, `joint_profiled`, `joint_general`): every end point is a `Start` on the
user's scale, `classify` decides its status (interior / collapse / boundary / escape /
not_converged) from what the kernel saw, `message` says the result in words.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

PARAMETRIZATIONS = ("centered", "noncentered")
FIND_MAP_NOTE = (
    "pm.find_MAP maximises the same density with priors (constrained scale, no Jacobian) by one "
    "L-BFGS-B run from the model's initial point and reports success even where a variance has "
    "collapsed towards 0; here every start is run to its end and classified, and a collapsed "
    "point is never reported as the MAP."
)
SCALE_NOTE = (
    "a mode on the scale of sigma and of the Cholesky factors L_k of the random-effect "
    "covariances (PyMC's value variables, no Jacobian); not a mode on the log scale or of the "
    "other parametrization"
)
SE_NOTE = (
    "Wald SEs and intervals from the Hessian of the log joint in all parameters at the mode "
    "(ci_hessian)"
)
BOX = 18.0
ESCAPE_AT = 8.0
DECREMENT_TOL = 1e-8
PARALLEL_THRESHOLD = 20000  # n_starts x m below which the starts run in this process
LOG_2PI = float(np.log(2.0 * np.pi))

# ----------------------------------------------------------------------------------------------
# One start type, one classifier, one message (every kernel)


@dataclass(frozen=True)
class Start:
    """One start: where it began (`kind`: eb, pooled, no_pooling, random), where it ended on the
    user's scale and what that end point is. `x` is the end point in the kernel's own
    coordinates (what the Hessian intervals are taken in); it is not part of the output."""

    index: int
    kind: str
    status: str  # interior, collapse, boundary, escape, not_converged
    log_joint: float
    beta: np.ndarray  # (p,)
    sigma2: float
    G: np.ndarray  # (q, q)
    # the random effects b at the end point: (m, q) for one grouping factor; for several, a
    # tuple of (n_k, q_k) per factor (columns data.factor_cols(k))
    re_mode: np.ndarray | tuple[np.ndarray, ...] = field(repr=False)
    theta: np.ndarray  # lme4's theta at the end point
    iterations: int
    newton_decrement: float | None
    x: np.ndarray = field(repr=False, compare=False)

    def __repr__(self) -> str:
        from workbench.fit.brief import loglik, num

        return (
            f"Start({self.index}, {self.kind} -> {self.status}: log joint="
            f"{loglik(self.log_joint)} sigma2={num(self.sigma2)}, {self.iterations} iterations)"
        )

    def to_dict(self, oneway: bool = False) -> dict:
        out = {
            "index": self.index,
            "start": self.kind,
            "status": self.status,
            "log_joint": self.log_joint,
            "theta": [float(t) for t in self.theta],
            "iterations": self.iterations,
            "newton_decrement": self.newton_decrement,
        }
        if oneway:
            out.update(mu=float(self.beta[0]), sigma2=self.sigma2, tau2=float(self.G[0, 0]))
        return out


def classify(
    *,
    to_zero: bool = False,
    rising_to_zero: Callable[[], bool] = lambda: False,
    escaping: bool = False,
    sigma_to_zero: bool = False,
    polish: Callable[[], bool] = lambda: False,
    rising_to_infinity: Callable[[], bool] = lambda: False,
) -> str:
    """The status of a run's end point, from what its kernel saw there (the callables are
    evaluated only when the decision needs them):

    * a random-effect variance at the floor of its box (`to_zero`): collapse if the log joint
      still rises along the ray to 0 (`rising_to_zero`), else boundary;
    * the run stopped walking off to a variance -> infinity (`escaping`): escape;
    * sigma at the floor of its box: collapse;
    * otherwise Newton polishing (`polish`: True when it reached a point with a negative
      definite Hessian and Newton decrement < DECREMENT_TOL): interior; if not, escape when the
      log joint still rises along the ray to infinity, else not_converged."""
    if to_zero:
        return "collapse" if rising_to_zero() else "boundary"
    if escaping:
        return "escape"
    if sigma_to_zero:
        return "collapse"
    if polish():
        return "interior"
    return "escape" if rising_to_infinity() else "not_converged"


def tally(starts: Sequence) -> dict[str, int]:
    """How many starts ended in each status."""
    return dict(Counter(s.status for s in starts))


def message(
    starts: Sequence,
    best,
    *,
    parametrization: str,
    with_priors: bool,
    oneway: bool,
) -> str:
    """The result in plain words: the interior mode found (a local one), or why there is none.
    `best` is the best interior start (anything with sigma2 and, one-way, G or tau2), or None."""
    par, k = parametrization, len(starts)
    counts = tally(starts)
    what = ("log joint with priors" if with_priors else "log joint (h-likelihood)") + f", {par}"
    shown = ", ".join(f"{v} {s}" for s, v in sorted(counts.items()))
    variance = "tau" if oneway else "a random-effect variance"
    if best is not None:
        if par == "centered":
            caveat = (
                f"It is a local maximum only: the centered log joint is unbounded as "
                f"{'tau' if oneway else 'a variance'} -> 0."
            )
        else:
            caveat = (
                "It is a mode of the non-centered density, a different point from the centered "
                "joint mode" + (" (the two differ by the term m log tau)." if oneway else ".")
            )
        tau2 = getattr(best, "tau2", None)
        if tau2 is None and oneway:
            tau2 = float(best.G[0, 0])
        est = f"sigma^2 = {best.sigma2:.6g}" + (f", tau^2 = {tau2:.6g}" if oneway else "")
        return (
            f"Interior local maximum of the {what} found ({shown} of {k} starts): {est}. {caveat}"
        )
    hints = []
    if counts.get("collapse"):
        hints.append(
            "the log joint rises without bound as tau -> 0 (all group effects pulled to mu), so "
            "no global joint mode exists"
            if oneway
            else "the log joint rises without bound as a random-effect variance -> 0"
        )
    if counts.get("escape"):
        hints.append(
            f"runs escaped to {variance} -> infinity"
            + (" (the supremum there is the no-pooling fit)" if oneway else "")
        )
    if counts.get("boundary"):
        hints.append(
            "runs stopped at tau -> 0 where the log joint levels off (the pooled fit)"
            if oneway
            else "runs stopped at a variance -> 0 where the log joint levels off"
        )
    if counts.get("not_converged"):
        hints.append("some runs did not converge")
    return (
        f"No interior joint mode of the {what}: none of {k} starts ended at an interior local "
        f"maximum ({shown}); " + "; ".join(hints) + ". No point is reported as the MAP."
    )


def run_all(fn: Callable, jobs: list[tuple], n_jobs: int, work: int) -> list:
    """`fn(*job)` for every job, in `n_jobs` joblib processes (-1: all cores) unless n_jobs is
    1 or `work` (n_starts x m) is below PARALLEL_THRESHOLD, where starting workers costs more
    than the fits. Results do not depend on n_jobs."""
    if n_jobs == 1 or work < PARALLEL_THRESHOLD:
        return [fn(*job) for job in jobs]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs)(delayed(fn)(*job) for job in jobs)
