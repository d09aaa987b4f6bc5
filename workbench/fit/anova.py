"""Method of moments (one-way ANOVA), the seed lecture's first answer: tau^2 = (MSG - MSE) / n0
with n0 = (N - sum n_j^2 / N) / (m - 1) (n0 = n when balanced), sigma^2 = MSE, and the F test."""

from __future__ import annotations

from dataclasses import dataclass

from scipy import stats as sps

from workbench.model.data import Stats


@dataclass(frozen=True)
class AnovaFit:
    mu: float  # grand mean of all observations
    sigma2: float  # MSE
    tau2: float  # max(0, (MSG - MSE) / n0)
    tau2_raw: float  # (MSG - MSE) / n0, may be negative
    msg: float
    mse: float
    n0: float
    df_between: int
    df_within: int
    f_statistic: float
    p_value: float

    def brief(self) -> str:
        """One line: the estimates and the F test."""
        from workbench.fit.brief import num

        return (
            f"mu={num(self.mu)} sigma2={num(self.sigma2)} tau2={num(self.tau2)} "
            f"F({self.df_between}, {self.df_within})={num(self.f_statistic)} "
            f"p={self.p_value:.2g}"
        )

    def __repr__(self) -> str:
        return f"AnovaFit({self.brief()})"

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        if self.tau2_raw < 0:
            out["notes"] = [
                "MSG < MSE: the moment estimate of tau^2 is negative and is "
                "reported as 0 (tau2_raw keeps the raw value)."
            ]
        return out


def fit(st: Stats) -> AnovaFit:
    N, m = st.N, st.m
    grand = float(st.n @ st.ybar / N)
    df_b, df_w = m - 1, int(N) - m
    msg = float(st.n @ (st.ybar - grand) ** 2) / df_b
    mse = st.W / df_w
    n0 = (N - float(st.n @ st.n) / N) / df_b
    raw = (msg - mse) / n0
    f = msg / mse
    return AnovaFit(
        mu=grand,
        sigma2=mse,
        tau2=max(raw, 0.0),
        tau2_raw=raw,
        msg=msg,
        mse=mse,
        n0=n0,
        df_between=df_b,
        df_within=df_w,
        f_statistic=f,
        p_value=float(sps.f.sf(f, df_b, df_w)),
    )
