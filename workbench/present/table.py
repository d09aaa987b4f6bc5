"""Text rendering of a `Comparison`: the side-by-side table the CLI prints."""

from __future__ import annotations

import math

DASH = "–"  # a missing or non-finite number (null in the JSON)


def fmt(v, spec: str = ".6g") -> str:
    """A number for a text table: "–" for None, NaN and +-inf."""
    if v is None or not math.isfinite(v):
        return DASH
    return format(v, spec)


def _row(name: str, mu, sigma2, tau2, objective=None, status: str = "") -> list[str]:
    sd = [math.sqrt(v) if v is not None and v >= 0 else None for v in (sigma2, tau2)]
    return [name, *map(fmt, (mu, sigma2, tau2, *sd, objective)), status]


def comparison_table(c) -> str:
    """One row per method (every joint-MAP variant, MCMC mean/median/mode), one column per
    quantity, then the joint-MAP verdicts, the MCMC diagnostics and any warnings."""
    rows = []
    if c.anova is not None:
        a = c.anova
        rows.append(
            _row(
                "ANOVA (moments)",
                a.mu,
                a.sigma2,
                a.tau2,
                status=f"F = {fmt(a.f_statistic, '.4g')}, p = {fmt(a.p_value, '.3g')}",
            )
        )
    if c.eb_ml is not None and "eb-ml" in c.settings.methods:
        f = c.eb_ml
        rows.append(
            _row(
                "EB-ML", f.mu, f.sigma2, f.tau2, f.loglik, "boundary tau2 = 0" if f.boundary else ""
            )
        )
    if c.eb_reml is not None:
        f = c.eb_reml
        rows.append(
            _row(
                "EB-REML",
                f.mu,
                f.sigma2,
                f.tau2,
                -0.5 * f.reml_criterion,
                "boundary tau2 = 0" if f.boundary else "",
            )
        )
    for (par, pri), r in c.joint_maps.items():
        name = f"joint MAP {par}{' +priors' if pri else ''}"
        best = r.best
        rows.append(
            _row(
                name,
                r.mu,
                r.sigma2,
                r.tau2,
                r.log_joint,
                "interior"
                if best
                else "none: " + ", ".join(f"{v} {k}" for k, v in sorted(r.counts().items())),
            )
        )
    if c.mcmc is not None:
        s = c.mcmc.summary
        for stat in ("mean", "median", "mode"):
            rows.append(_row(f"MCMC {stat}", s["mu"][stat], s["sigma2"][stat], s["tau2"][stat]))
    head = ["method", "mu", "sigma2", "tau2", "sigma", "tau", "objective", "note"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(
            x.ljust(w) if i in (0, 7) else x.rjust(w)
            for i, (x, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    d = c.data
    out = [
        f"{d.y_name} ~ 1 + (1 | {d.group_name})   N = {d.n_obs}, groups = {d.n_groups}; "
        f"objective: log likelihood (EB-ML), restricted log likelihood (EB-REML), "
        f"log joint (joint MAP)",
        line(head),
        *map(line, rows),
        "",
    ]
    for r in (c.joint_map, c.joint_map_posterior):
        if r is not None:
            out.append(("joint MAP +priors: " if r.with_priors else "joint MAP: ") + r.message)
    if c.mcmc is not None:
        dg = c.mcmc.diagnostics
        out.append(
            f"MCMC ({c.mcmc.settings.parametrization}, {c.mcmc.sampler}): R-hat max "
            f"{fmt(dg['r_hat_max'], '.4f')}, bulk ESS min {fmt(dg['ess_bulk_min'], '.0f')}"
            f", tail ESS min {fmt(dg['ess_tail_min'], '.0f')}, divergences "
            f"{dg['divergences']}, E-BFMI min {fmt(dg['e_bfmi_min'], '.2f')}"
        )
    out += [f"WARNING {w}" for w in c.warnings()]
    return "\n".join(out)
