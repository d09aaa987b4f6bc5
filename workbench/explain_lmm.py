"""Why the joint mode differs, for the general LMM (DESIGN.md section 1, last paragraph).

At a parameter point (beta, sigma^2, G) with conditional modes b_j and conditional covariances
V_bj = (Z_j'Z_j / sigma^2 + G^-1)^-1: RSS = ||y - X beta - Z b||^2, the missing term
tr(Z V_b Z') = sum_j tr(V_bj Z_j'Z_j), p_D = tr(Z V_b Z') / sigma^2, the volume term
1/2 sum_j log det V_bj = -1/2 log det(Z'Z / sigma^2 + G^-1), and the Laplace identity
l = h + volume + (m q / 2) log(2 pi), exact for the LMM. EM: at the ML point
sigma^2 = (RSS + tr(Z V_b Z')) / N and G = (sum_j b_j b_j' + sum_j V_bj) / m; the joint mode
solves the same equations without the V terms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from workbench.jsonsafe import clean
from workbench.objectives.deviance import PLS


@dataclass(frozen=True)
class Terms:
    sigma2: float
    G: list[list[float]]
    rss: float
    missing: float  # tr(Z V_b Z')
    p_d: float
    volume: float  # 1/2 sum log det V_bj
    log_joint: float  # h at (beta, sigma^2, G, b_hat)
    log_marginal: float
    em_sigma2: float  # (RSS + missing) / N
    em_sigma2_no_missing: float  # RSS / N
    em_G: list[list[float]]
    em_G_no_missing: list[list[float]]


def terms(pls: PLS, sigma2: float, ztz: np.ndarray) -> Terms:
    """The decomposition at theta = pls.theta and the given sigma^2 (beta, b at their PLS
    values, which maximise both h and the integrand for these variances)."""
    n, m, q = pls.n_obs, pls.m, pls.T.shape[0]
    V = pls.cond_cov(sigma2)
    uu = float((pls.u * pls.u).sum())
    rss = pls.r2 - uu
    missing = float(np.einsum("jab,jba->", V, ztz))
    sign, logdet = np.linalg.slogdet(V)
    volume = 0.5 * float(logdet.sum()) if np.all(sign > 0) else float("-inf")
    G = sigma2 * pls.T @ pls.T.T
    with np.errstate(divide="ignore"):
        log_joint = -0.5 * (
            (n + m * q) * np.log(2 * np.pi)
            + n * np.log(sigma2)
            + rss / sigma2
            + m * np.linalg.slogdet(G)[1]
            + uu / sigma2
        )
    bb = pls.b.T @ pls.b / m
    return Terms(
        sigma2=sigma2,
        G=G.tolist(),
        rss=rss,
        missing=missing,
        p_d=missing / sigma2,
        volume=volume,
        log_joint=float(log_joint),
        log_marginal=pls.loglik(sigma2),
        em_sigma2=(rss + missing) / n,
        em_sigma2_no_missing=rss / n,
        em_G=(bb + V.sum(axis=0) / m).tolist(),
        em_G_no_missing=bb.tolist(),
    )


@dataclass(frozen=True)
class Explanation:
    eb: Terms
    joint: Terms | None
    sentences: list[str]

    def to_dict(self) -> dict:
        """JSON-ready: non-finite terms (a zero variance: volume -inf) become null, each named
        in `notes`."""
        out, notes = clean(
            {
                "eb_ml": asdict(self.eb),
                "joint_mode": asdict(self.joint) if self.joint else None,
                "sentences": list(self.sentences),
            }
        )
        out["notes"] = notes
        return out


def explain(eb_fit, joint) -> Explanation:
    """Terms at the EB-ML point and at the joint mode (if interior), and the story in words."""
    cp = eb_fit.data.factors
    e = terms(eb_fit.pls, eb_fit.sigma2, cp.ztz)
    j = terms(joint.pls, joint.sigma2, cp.ztz) if joint is not None and joint.pls else None
    n = eb_fit.data.n_obs
    s = [
        f"At the EB-ML estimates the random effects carry posterior uncertainty "
        f"tr(Z V_b Z') = {e.missing:.6g} ({e.p_d:.4g} 'hidden' degrees of freedom out of "
        f"{eb_fit.data.n_groups * eb_fit.data.q} random effects); ML's sigma^2 = "
        f"(RSS + tr(Z V_b Z')) / N = ({e.rss:.6g} + {e.missing:.6g}) / {n} = {e.em_sigma2:.6g}. "
        f"Dropping that term gives {e.em_sigma2_no_missing:.6g}: that is what the joint mode "
        f"does."
    ]
    if j is None:
        s.append(
            "The log joint has no interior local maximum here: it rises without bound as "
            "a random-effect variance goes to 0 (the volume term -1/2 log det(Z'Z/sigma^2 "
            "+ G^-1) that the marginal likelihood keeps, and the joint drops, is what "
            "stops the marginal likelihood from doing the same)."
        )
    else:
        s.append(
            f"At the joint mode sigma^2 = {j.sigma2:.6g} ({j.sigma2 / e.sigma2:.4f} x ML); "
            f"its log joint is higher ({j.log_joint:.6g} vs {e.log_joint:.6g}) but its "
            f"log marginal likelihood is lower ({j.log_marginal:.6g} vs "
            f"{e.log_marginal:.6g}); the volume term is {j.volume:.6g} there against "
            f"{e.volume:.6g} at ML."
        )
    return Explanation(eb=e, joint=j, sentences=s)
