"""Why the joint mode differs from EB, in numbers (DESIGN.md section 1), for every model.

At a parameter point (beta, sigma^2, G) with random effects b_j (by default their conditional
modes) and conditional covariances V_bj = (Z_j'Z_j / sigma^2 + G^-1)^-1:

* RSS = ||y - X beta - Z b||^2, the residual sum of squares;
* missing = tr(Z V_b Z') = sum_j tr(V_bj Z_j'Z_j) (one-way: sum_j n_j v_j), the posterior
  variance of the effects that the joint mode leaves out;
* p_D = missing / sigma^2, the hidden degrees of freedom;
* volume = 1/2 sum_j log det V_bj, the Laplace volume term: l = h(theta, b_hat) + volume
  + (m q / 2) log 2 pi, exact for the LMM;
* the EM identities: at the ML point sigma^2 = (RSS + missing) / N and
  G = (sum_j b_j b_j' + sum_j V_bj) / m; the joint mode solves them without the V terms.

Computed at the EB-ML point and at the centered joint mode (h-likelihood). The one-way model
y ~ 1 + (1 | g) uses the per-group closed forms over its sufficient statistics (and, for
balanced data, DESIGN.md's closed form of the joint mode); every other model the general
per-group matrices. `sentences` turns the numbers into plain words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.jsonsafe import clean
from workbench.model.data import Stats
from workbench.model.design import LMMData
from workbench.objectives import oneway as dens

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class PointTerms:
    """The decomposition at one parameter point. `mu`, `tau2`, `tau2_em_with` and
    `tau2_em_without` are the one-way names of beta[0], G[0, 0] and the EM updates of G[0, 0]
    (None for other models)."""

    label: str
    sigma2: float
    G: np.ndarray  # (q, q)
    variances: dict[str, float]  # G's diagonal by random-effect term
    rss: float
    missing: float  # tr(Z V_b Z')
    p_d: float
    volume: float  # 1/2 sum_j log det V_bj (-inf for a singular G)
    log_joint: float  # h at the point (+inf for a singular G)
    log_marginal: float
    sigma2_em_with: float  # (RSS + missing) / N
    sigma2_em_without: float  # RSS / N
    G_em_with: np.ndarray  # (sum b b' + sum V) / m
    G_em_without: np.ndarray  # sum b b' / m
    mu: float | None = None
    tau2: float | None = None
    tau2_em_with: float | None = None
    tau2_em_without: float | None = None

    @property
    def is_oneway(self) -> bool:
        return self.tau2 is not None

    def to_dict(self) -> dict:
        out = {
            "label": self.label,
            "sigma2": self.sigma2,
            "G": self.G.tolist(),
            "variances": dict(self.variances),
            "rss": self.rss,
            "missing": self.missing,
            "p_d": self.p_d,
            "volume": self.volume,
            "log_joint": self.log_joint,
            "log_marginal": self.log_marginal,
            "sigma2_em_with": self.sigma2_em_with,
            "sigma2_em_without": self.sigma2_em_without,
            "G_em_with": self.G_em_with.tolist(),
            "G_em_without": self.G_em_without.tolist(),
        }
        if self.is_oneway:
            out.update(
                mu=self.mu,
                tau2=self.tau2,
                tau2_em_with=self.tau2_em_with,
                tau2_em_without=self.tau2_em_without,
            )
        return out


def oneway_terms(
    label: str, mu: float, s: float, t: float, st: Stats, effects: np.ndarray | None = None
) -> PointTerms:
    """The one-way kernel: the decomposition at (mu, sigma^2 = s, tau^2 = t) in closed form over
    the per-group statistics. `effects` are the group effects of the point (the joint mode's own
    a_j); by default the conditional modes given (mu, s, t)."""
    a_hat, v = dens.conditional_effects(mu, s, t, st)
    a = a_hat if effects is None else np.asarray(effects, float)
    r = st.ybar - mu - a
    rss = st.W + float(st.n @ (r * r))
    missing = float(st.n @ v)
    x = np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(max(t, 1e-300))], a])
    t_with = (float(a @ a) + float(v.sum())) / st.m
    t_without = float(a @ a) / st.m
    return PointTerms(
        label=label,
        sigma2=s,
        G=np.array([[t]]),
        variances={"(Intercept)": t},
        rss=rss,
        missing=missing,
        p_d=missing / s,
        volume=0.5 * float(np.log(v).sum()) if t > 0 else -np.inf,
        log_joint=dens.log_joint(x, st) if t > 0 else np.inf,
        log_marginal=dens.marginal_loglik((mu, s, t), st),
        sigma2_em_with=(rss + missing) / st.N,
        sigma2_em_without=rss / st.N,
        G_em_with=np.array([[t_with]]),
        G_em_without=np.array([[t_without]]),
        mu=mu,
        tau2=t,
        tau2_em_with=t_with,
        tau2_em_without=t_without,
    )


def general_terms(
    label: str,
    data: LMMData,
    beta: np.ndarray,
    sigma2: float,
    G: np.ndarray,
    effects: np.ndarray | None = None,
) -> PointTerms:
    """The general kernel: the decomposition at (beta, sigma^2, G) from per-group q x q
    matrices. With G = sigma^2 T T' (T from G's eigendecomposition, so a singular G is fine)
    and A_j = I + T'Z_j'Z_j T: V_bj = sigma^2 T A_j^-1 T', b_hat_j = T A_j^-1 T'Z_j'r_j and
    y_j ~ N(X_j beta, sigma^2 (I + Z_j T T'Z_j')) (determinant lemma, Woodbury)."""
    G = np.asarray(G, float)
    beta = np.asarray(beta, float)
    N, m, q = data.n_obs, data.n_groups, data.q
    ztz = data.factors.ztz
    r0 = data.y - data.X @ beta
    ztr = np.stack([np.bincount(data.codes, data.Z[:, k] * r0, minlength=m) for k in range(q)], 1)
    w, U = np.linalg.eigh(G / sigma2)
    T = U * np.sqrt(np.clip(w, 0.0, None))
    A = np.eye(q) + T.T @ ztz @ T  # (m, q, q): T'Z_j'Z_j T + I
    Ainv = np.linalg.inv(A)
    V = sigma2 * T @ Ainv @ T.T
    b_hat = np.einsum("jab,jb->ja", T @ Ainv @ T.T, ztr)
    b = b_hat if effects is None else np.asarray(effects, float)
    resid = r0 - np.einsum("ik,ik->i", data.Z, b[data.codes])
    rss = float(resid @ resid)
    missing = float(np.einsum("jab,jba->", V, ztz))
    sign_g, logdet_g = np.linalg.slogdet(G)
    singular = sign_g <= 0 or np.min(w) <= 0
    logdet_a = float(np.linalg.slogdet(A)[1].sum())
    if singular:
        volume, log_joint = -np.inf, np.inf
    else:
        # log det V_j = log det G - log det A_j (V = G^1/2 (...)^-1 G^1/2 with A similar)
        volume = 0.5 * (m * float(logdet_g) - logdet_a)
        quad = float(np.einsum("ja,ja->", b, np.linalg.solve(G, b.T).T))
        log_joint = -0.5 * (
            N * (LOG_2PI + np.log(sigma2)) + rss / sigma2 + m * (q * LOG_2PI + logdet_g) + quad
        )
    fitted = float(np.einsum("ja,ja->", ztr, b_hat))  # sum_j r_j'Z_j T A_j^-1 T'Z_j'r_j
    log_marginal = -0.5 * (N * (LOG_2PI + np.log(sigma2)) + logdet_a + (r0 @ r0 - fitted) / sigma2)
    bb = b.T @ b / m
    return PointTerms(
        label=label,
        sigma2=float(sigma2),
        G=G,
        variances={n: float(G[i, i]) for i, n in enumerate(data.re_names)},
        rss=rss,
        missing=missing,
        p_d=missing / sigma2,
        volume=float(volume),
        log_joint=float(log_joint),
        log_marginal=float(log_marginal),
        sigma2_em_with=(rss + missing) / N,
        sigma2_em_without=rss / N,
        G_em_with=bb + V.sum(axis=0) / m,
        G_em_without=bb,
    )


def point_terms(
    label: str,
    data: LMMData,
    beta,
    sigma2: float,
    G,
    effects: np.ndarray | None = None,
    kernel: str = "auto",
) -> PointTerms:
    """The decomposition at (beta, sigma^2, G) with random effects `effects` ((m, q); by
    default the conditional modes). kernel "auto" takes the one-way closed forms when
    `data.is_oneway`, else the general matrices; "general" forces the latter."""
    if kernel == "auto" and data.is_oneway:
        a = None if effects is None else np.asarray(effects, float).reshape(-1)
        G = np.asarray(G, float)
        return oneway_terms(label, float(beta[0]), float(sigma2), float(G[0, 0]), data.oneway, a)
    return general_terms(label, data, beta, sigma2, G, effects)


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

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def balanced_form(st: Stats, sigma2_ml: float) -> BalancedForm | None:
    """The closed form when every group has the same size, else None."""
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


def balanced_note(data: LMMData) -> str | None:
    """Why the balanced closed form does not apply (None when it does)."""
    if not data.is_oneway:
        return (
            "The balanced closed form of the joint mode is for the one-way model y ~ 1 + (1 | g) "
            f"only; this model is {data.formula or 'a general mixed model'}."
        )
    n = np.bincount(data.codes, minlength=data.n_groups)
    if not np.all(n == n[0]):
        return (
            f"The balanced closed form of the joint mode needs groups of equal size; here they "
            f"range from {n.min()} to {n.max()}."
        )
    return None


@dataclass(frozen=True)
class Explanation:
    """The decomposition at the EB-ML point (`eb`) and at the centered joint mode (`joint`,
    None without an interior mode), the balanced closed form (one-way balanced data only,
    else None with `balanced_note` saying why) and the story in words."""

    eb: PointTerms
    joint: PointTerms | None
    joint_status: str  # interior, no_interior_mode, or not_run
    balanced: BalancedForm | None
    balanced_note: str | None
    n_obs: int
    n_groups: int
    sentences: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-ready: non-finite terms (a zero variance: volume -inf, log joint +inf) become
        null, each named in `notes`."""
        out, notes = clean(
            {
                "eb_ml": self.eb.to_dict(),
                "joint_map": self.joint.to_dict() if self.joint else None,
                "joint_status": self.joint_status,
                "balanced": self.balanced.to_dict() if self.balanced else None,
                "balanced_note": self.balanced_note,
                "sentences": list(self.sentences),
            }
        )
        if notes and not np.isfinite(self.eb.volume):
            notes.append(
                f"{_var_words(self.eb)} at the EB-ML point: there the volume term is -infinity "
                f"and the log joint +infinity"
            )
        out["notes"] = notes
        return out


# ----------------------------------------------------------------------------------------------
# Words


def _pct(x: float) -> str:
    return f"{abs(100 * x):.0f}%"


def _zero_terms(p: PointTerms) -> list[str]:
    return [n for n, v in p.variances.items() if v <= 0.0]


def _var_words(p: PointTerms) -> str:
    """How the singular G of a boundary point is singular, in words."""
    if p.is_oneway:
        return "tau^2 = 0"
    zero = _zero_terms(p)
    if zero:
        return "the variance of " + _join(zero) + " is 0"
    names, G = list(p.variances), p.G
    pairs = [
        f"{names[i]} and {names[j]} correlated {G[i, j] / np.sqrt(G[i, i] * G[j, j]):+.0f}"
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if abs(G[i, j]) >= (1 - 1e-6) * np.sqrt(G[i, i] * G[j, j])
    ]
    if pairs:
        return "G is singular: " + _join(pairs)
    return f"G is singular: rank {np.linalg.matrix_rank(G)} of {len(names)}"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _cmp(a: float, b: float, more: str, less: str) -> str:
    return more if a > b else less


def _g(v: float, spec: str = ".5g") -> str:
    return format(v, spec) if np.isfinite(v) else ("+infinity" if v > 0 else "-infinity")


def sentences(
    eb: PointTerms,
    joint: PointTerms | None,
    status: str,
    bal: BalancedForm | None,
    data: LMMData,
) -> tuple[str, ...]:
    """Plain words generated from the numbers, true for every model: the one-way model in its
    own names (group effects, tau^2, sum n_j v_j), any other with the terms named."""
    N, m, q = data.n_obs, data.n_groups, data.q
    ow = eb.is_oneway
    effects = "group effects" if ow else f"random effects (by {data.group_name})"
    miss = "sum n_j v_j" if ow else "tr(Z V_b Z')"
    n_eff = f"m = {m} groups" if ow else f"m q = {m * q} random effects"
    out = []
    if ow:
        est = f"EB-ML estimates sigma^2 = {eb.sigma2:.5g} and tau^2 = {eb.tau2:.5g}."
    else:
        vs = ", ".join(f"{n} {v:.5g}" for n, v in eb.variances.items())
        est = (
            f"EB-ML estimates sigma^2 = {eb.sigma2:.5g} and, for the {q} random-effect "
            f"term{'s' if q > 1 else ''} of {data.group_name}, the variance{'s' if q > 1 else ''} "
            f"{vs}."
        )
    ok_em = abs(eb.sigma2_em_with - eb.sigma2) <= 1e-4 * eb.sigma2
    em = (
        "the ML estimate itself"
        if ok_em
        else f"against the ML estimate {eb.sigma2:.5g} (the fit is not at a stationary point)"
    )
    if eb.missing > 0 and np.isfinite(eb.volume):
        out.append(
            f"{est} At that point the {effects} are uncertain: their conditional variances add "
            f"up to {miss} = {eb.missing:.4g}, worth p_D = {eb.p_d:.3g} hidden degrees of "
            f"freedom out of {n_eff}. ML counts that uncertainty: sigma^2 = (RSS + "
            f"{eb.missing:.4g}) / N = {eb.sigma2_em_with:.5g}, {em}."
        )
    else:
        out.append(
            f"{est} The fit is on the boundary ({_var_words(eb)}): "
            + (
                f"the {effects} are shrunk to 0 with no uncertainty left, "
                if eb.missing == 0
                else f"part of the {effects} is shrunk away ({miss} = {eb.missing:.4g}), "
            )
            + f"so sigma^2 = (RSS + {eb.missing:.4g}) / N = {eb.sigma2_em_with:.5g}, {em}; "
            f"there the volume term is -infinity and the log joint +infinity."
        )
    if joint is not None:
        low_s = 1.0 - joint.sigma2 / eb.sigma2
        solved = abs(joint.sigma2_em_without - joint.sigma2) <= 1e-4 * joint.sigma2
        if ow:
            var_parts = [_change("tau^2", joint.tau2, eb.tau2)]
        else:
            var_parts = [
                _change(f"the variance of {n}", joint.variances[n], v)
                for n, v in eb.variances.items()
            ]
        out.append(
            "The joint mode maximises the log joint, which leaves that term out: "
            + (
                f"it solves sigma^2 = RSS / N, so it divides the residual sum of squares by "
                f"N = {N} where ML in effect divides by about N - p_D = {N - eb.p_d:.1f}"
                if solved
                else f"its sigma^2 = {joint.sigma2:.5g} against RSS / N = "
                f"{joint.sigma2_em_without:.5g} (not at a stationary point)"
            )
            + f", and sigma^2 comes out {_pct(low_s)} {'low' if low_s > 0 else 'high'} "
            f"({joint.sigma2:.5g} against {eb.sigma2:.5g}); {'; '.join(var_parts)}."
        )
        out.append(
            f"Its log joint is {_cmp(joint.log_joint, eb.log_joint, 'higher', 'lower')} "
            f"({_g(joint.log_joint, '.6g')} against {_g(eb.log_joint, '.6g')} at the EB point "
            f"with its conditional modes), "
            f"{'yet' if joint.log_joint > eb.log_joint else 'and'} its marginal likelihood is "
            f"{_cmp(joint.log_marginal, eb.log_marginal, 'higher', 'lower')} "
            f"({joint.log_marginal:.6g} against {eb.log_marginal:.6g}): the difference is the "
            f"volume term 1/2 sum log det V_bj ({_g(joint.volume)} against {_g(eb.volume)}), "
            f"which grows with sigma^2 and the random-effect variances and which the joint mode "
            f"ignores."
        )
    elif status == "no_interior_mode":
        if ow:
            out.append(
                "The log joint has no interior maximum here (none of the starts found one): "
                "with every group effect at mu it rises without bound as tau -> 0 (the funnel), "
                "so any optimiser of the joint density runs to tau = 0 with sigma^2 heading for "
                "the pooled variance. The EB and posterior answers exist because they integrate "
                "the group effects out and keep the volume term, which falls to -infinity as "
                "tau -> 0."
            )
        else:
            terms = _join(list(data.re_names))
            out.append(
                f"The log joint has no interior maximum here (none of the starts found one): "
                f"with the random effects at 0 it rises without bound as G -> 0 (the variance "
                f"of {terms} by {data.group_name} going to 0, a funnel), so an optimiser of "
                f"the joint density collapses onto the boundary. The EB and posterior answers "
                f"exist because they integrate the random effects out and keep the volume term "
                f"1/2 sum log det V_bj, which falls to -infinity as G -> 0."
            )
    else:
        out.append("The joint mode was not computed (method joint-map not run).")
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


def _change(name: str, joint: float, eb: float) -> str:
    if eb > 0:
        low = 1.0 - joint / eb
        return (
            f"{name} comes out {_pct(low)} {'low' if low > 0 else 'high'} "
            f"({joint:.5g} against {eb:.5g})"
        )
    return f"{name} comes out {joint:.5g} against ML's boundary value 0"


def explain(comparison) -> Explanation:
    """Decomposition at the EB-ML point and at the centered joint mode (h-likelihood), for any
    model: `comparison` needs data (LMMData), eb_ml and joint_map (None when not run)."""
    c = comparison
    d: LMMData = c.data
    ml = c.eb_ml
    eb = point_terms("EB-ML", d, ml.beta, ml.sigma2, ml.G)
    jm = c.joint_map
    status = jm.status if jm is not None else "not_run"
    joint = None
    if jm is not None and jm.status == "interior" and jm.sigma2 is not None:
        joint = point_terms("joint MAP", d, jm.beta, jm.sigma2, jm.G, effects=jm.re_mode)
    bal = balanced_form(d.oneway, ml.sigma2) if d.is_oneway else None
    return Explanation(
        eb=eb,
        joint=joint,
        joint_status=status,
        balanced=bal,
        balanced_note=balanced_note(d),
        n_obs=d.n_obs,
        n_groups=d.n_groups,
        sentences=sentences(eb, joint, status, bal, d),
    )
