"""Why the joint mode differs from EB, in numbers (DESIGN.md section 1).

At a point theta = (mu, sigma^2, tau^2) with the conditional modes a_hat_j and variances v_j of
the group effects:

* RSS = sum_ij (y_ij - mu - a_hat_j)^2, the residual sum of squares;
* missing = sum_j n_j v_j, the posterior variance of the effects that the joint mode leaves out;
* p_D = missing / sigma^2, the hidden degrees of freedom;
* volume = 1/2 sum_j log v_j, the Laplace volume term (l = h(theta, a_hat) + volume + m/2 log 2pi);
* the EM identity: sigma^2 = (RSS + missing) / N and tau^2 = (sum a_hat^2 + sum v) / m at the ML
  point; the joint mode solves sigma^2 = RSS / N and tau^2 = sum a_hat^2 / m.

Computed at the EB-ML point and at the centered joint mode (h-likelihood), plus, for balanced
data, DESIGN.md's closed form. `sentences` turns the numbers into plain words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from workbench.jsonsafe import clean
from workbench.objectives import oneway as dens
from workbench.objectives.oneway import Stats


@dataclass(frozen=True)
class PointTerms:
    """The decomposition at one point."""

    label: str
    mu: float
    sigma2: float
    tau2: float
    rss: float
    missing: float
    p_d: float
    volume: float
    log_joint: float
    log_marginal: float
    sigma2_em_with: float  # (RSS + missing) / N
    sigma2_em_without: float  # RSS / N
    tau2_em_with: float  # (sum a^2 + sum v) / m
    tau2_em_without: float  # sum a^2 / m


def point_terms(
    label: str, mu: float, s: float, t: float, st: Stats, effects: np.ndarray | None = None
) -> PointTerms:
    """Decomposition at (mu, s, t). `effects` are the group effects of the point (the joint
    mode's own a_j); by default the conditional modes given (mu, s, t)."""
    a_hat, v = dens.conditional_effects(mu, s, t, st)
    a = a_hat if effects is None else effects
    r = st.ybar - mu - a
    rss = st.W + float(st.n @ (r * r))
    missing = float(st.n @ v)
    x = np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(max(t, 1e-300))], a])
    return PointTerms(
        label=label,
        mu=mu,
        sigma2=s,
        tau2=t,
        rss=rss,
        missing=missing,
        p_d=missing / s,
        volume=0.5 * float(np.log(v).sum()) if t > 0 else -np.inf,
        log_joint=dens.log_joint(x, st) if t > 0 else np.inf,
        log_marginal=dens.marginal_loglik((mu, s, t), st),
        sigma2_em_with=(rss + missing) / st.N,
        sigma2_em_without=rss / st.N,
        tau2_em_with=(float(a @ a) + float(v.sum())) / st.m,
        tau2_em_without=float(a @ a) / st.m,
    )


@dataclass(frozen=True)
class BalancedForm:
    """DESIGN.md's closed form for m groups of n (centered h-likelihood)."""

    n: int
    m: int
    f_statistic: float
    f_threshold: float
    interior_exists: bool
    shrinkage: float | None
    sigma2_joint: float | None
    tau2_joint: float | None
    sigma2_ml: float
    limit_ratio: float  # (n - 1) / n


def balanced_form(st: Stats, sigma2_ml: float) -> BalancedForm | None:
    if not np.all(st.n == st.n[0]):
        return None
    n, m = int(st.n[0]), st.m
    B = float(((st.ybar - st.ybar.mean()) ** 2).sum())
    f = (n * B / (m - 1)) / (st.W / (m * (n - 1)))
    thr = 4.0 * (n * n - 1) * m / ((m - 1) * n * n)
    disc = (n + 2) ** 2 - 4.0 * (n + 1) * (1.0 + st.W / (n * B)) if B > 0 else -1.0
    s = float((n + 2) + np.sqrt(disc)) / (2.0 * (n + 1)) if disc >= 0 else None
    s2 = (st.W + n * B * (1 - s) ** 2) / (m * n) if s is not None else None
    t2 = s * s2 / (n * (1 - s)) if s is not None else None
    return BalancedForm(
        n=n,
        m=m,
        f_statistic=f,
        f_threshold=thr,
        interior_exists=f >= thr,
        shrinkage=s,
        sigma2_joint=s2,
        tau2_joint=t2,
        sigma2_ml=sigma2_ml,
        limit_ratio=(n - 1) / n,
    )


@dataclass(frozen=True)
class Explanation:
    eb: PointTerms
    joint: PointTerms | None  # None when the centered h-likelihood has no interior mode
    joint_status: str
    balanced: BalancedForm | None
    n_obs: int
    n_groups: int
    sentences: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-ready: infinite terms (tau^2 = 0: volume -inf, log joint +inf) become null,
        each named in `notes`."""
        out, notes = clean(
            {
                "eb_ml": asdict(self.eb),
                "joint_map": asdict(self.joint) if self.joint else None,
                "joint_status": self.joint_status,
                "balanced": asdict(self.balanced) if self.balanced else None,
                "sentences": list(self.sentences),
            }
        )
        if notes and self.eb.tau2 == 0:
            notes.append(
                "tau^2 = 0 at the EB-ML point: there the volume term is -infinity and "
                "the log joint +infinity"
            )
        out["notes"] = notes
        return out


def _pct(x: float) -> str:
    return f"{abs(100 * x):.0f}%"


def sentences(
    eb: PointTerms, joint: PointTerms | None, bal: BalancedForm | None, N: int, m: int
) -> tuple[str, ...]:
    """Plain words generated from the numbers."""
    out = [
        f"At the EB-ML point the group effects are uncertain: their conditional variances add "
        f"up to sum n_j v_j = {eb.missing:.4g}, worth p_D = {eb.p_d:.3g} hidden degrees of "
        f"freedom out of m = {m} groups. ML counts that uncertainty: sigma^2 = (RSS + "
        f"{eb.missing:.4g}) / N = {eb.sigma2_em_with:.5g}, the ML estimate itself.",
    ]
    if joint is not None:
        low_s = 1.0 - joint.sigma2 / eb.sigma2
        if eb.tau2 > 0:
            low_t = 1.0 - joint.tau2 / eb.tau2
            tau_part = (
                f"tau^2 comes out {_pct(low_t)} {'low' if low_t > 0 else 'high'} "
                f"({joint.tau2:.5g} against {eb.tau2:.5g})"
            )
        else:
            tau_part = f"tau^2 comes out {joint.tau2:.5g} against ML's boundary value 0"
        out.append(
            f"The joint mode maximises the log joint, which leaves that term out: it solves "
            f"sigma^2 = RSS / N, so it divides the residual sum of squares by N = {N} where ML "
            f"in effect divides by about N - p_D = {N - eb.p_d:.1f}, and sigma^2 comes out "
            f"{_pct(low_s)} {'low' if low_s > 0 else 'high'} ({joint.sigma2:.5g} against "
            f"{eb.sigma2:.5g}); {tau_part}."
        )
        out.append(
            f"Its log joint is higher ({joint.log_joint:.6g} against {eb.log_joint:.6g} at the "
            f"EB point with its conditional modes), yet its marginal likelihood is lower "
            f"({joint.log_marginal:.6g} against {eb.log_marginal:.6g}): the difference is the "
            f"volume term 1/2 sum log v_j ({joint.volume:.5g} against {eb.volume:.5g}), which "
            f"grows with sigma^2 and tau^2 and which the joint mode ignores."
        )
    else:
        out.append(
            "The log joint has no interior maximum here: with every group effect at mu it rises "
            "without bound as tau -> 0 (the funnel), so any optimiser of the joint density runs "
            "to tau = 0 with sigma^2 heading for the pooled variance. The EB and posterior "
            "answers exist because they integrate the group effects out and keep the volume "
            "term, which falls to -infinity as tau -> 0."
        )
    if bal is not None:
        if bal.interior_exists and bal.sigma2_joint is not None:
            out.append(
                f"Balanced data ({bal.m} groups of {bal.n}): F = {bal.f_statistic:.3g} is above "
                f"the threshold {bal.f_threshold:.3g}, so an interior joint mode exists; the "
                f"closed form gives sigma^2 = {bal.sigma2_joint:.5g}, i.e. "
                f"{bal.sigma2_joint / bal.sigma2_ml:.3f} x ML, and the ratio tends to (n - 1)/n "
                f"= {bal.limit_ratio:.3f} as F grows: the joint mode divides the within-group "
                f"sum of squares by N instead of N - m."
            )
        else:
            out.append(
                f"Balanced data ({bal.m} groups of {bal.n}): F = {bal.f_statistic:.3g} is below "
                f"the threshold {bal.f_threshold:.3g} = 4 (n^2 - 1) m / ((m - 1) n^2), so no "
                f"interior stationary point of the log joint exists."
            )
    return tuple(out)


def explain(comparison) -> Explanation:
    """Decomposition at the EB-ML point and at the centered joint mode (h-likelihood)."""
    c = comparison
    st = Stats.of(c.data)
    ml = c.eb_ml
    eb_terms = point_terms("EB-ML", ml.mu, ml.sigma2, ml.tau2, st)
    jm = c.joint_maps.get(("centered", False))
    joint = None
    status = jm.status if jm is not None else "not_run"
    if jm is not None and jm.best is not None:
        joint = point_terms("joint MAP", jm.mu, jm.sigma2, jm.tau2, st, effects=jm.group_effects)
    bal = balanced_form(st, ml.sigma2)
    return Explanation(
        eb=eb_terms,
        joint=joint,
        joint_status=status,
        balanced=bal,
        n_obs=c.data.n_obs,
        n_groups=c.data.n_groups,
        sentences=sentences(eb_terms, joint, bal, c.data.n_obs, c.data.n_groups),
    )
