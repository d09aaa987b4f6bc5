"""Text rendering of a `Comparison`: the side-by-side table the CLI prints, for every model.

Methods are columns (ANOVA, EB-ML, EB-REML, the centered h-likelihood joint MAP, the other
joint-MAP variants that have an interior mode, MCMC posterior mean and mode), quantities are rows
(fixed effects, random-effect variances, SDs and correlations, sigma^2 and sigma, the objective;
the one-way model in its own names mu, sigma^2, tau^2, sigma, tau). MCMC's SDs (sigma, tau,
every sd) are the posterior summaries of their own draws, not roots of the variances'. Columns
that do not fit in `width` characters wrap into a further block with the same row labels, and
names too long for the label column are shortened with "…", so no line is wider than `width`
(80: a terminal) and no number is ever broken. The objective of EB-REML is the restricted log
likelihood, as in the HTML report (lme4's logLik; its "REML criterion" is -2 times it).
"""

from __future__ import annotations

import math
import textwrap

from workbench import explain
from workbench.present import curves

DASH = "–"  # a missing or non-finite number (null in the JSON)
WIDTH = 80
GAP = 2

# joint-MAP variants by (parametrization, with priors): column header, words for the legend
JOINT_NAMES = {
    ("centered", False): ("joint MAP", "centered h-likelihood (the joint mode)"),
    ("centered", True): ("JM c+pri", "centered, with the priors (the posterior's mode)"),
    ("noncentered", False): ("JM nc", "non-centered h-likelihood"),
    ("noncentered", True): ("JM nc+pri", "non-centered, with the priors"),
}


def fmt(v, spec: str = ".6g") -> str:
    """A number for a text table: "–" for None, NaN and +-inf."""
    if v is None or not math.isfinite(v):
        return DASH
    return format(v, spec)


def _sqrt(v):
    return math.sqrt(v) if v is not None and math.isfinite(v) and v >= 0 else None


def clip(name: str, n: int | None) -> str:
    """`name` cut in the middle to at most `n` characters, "…" marking the cut (None: as it
    is); its start and end stay, which tell names like "plate_a" and "plate_b" apart."""
    if n is None or len(name) <= n:
        return name
    head = max(n - 1, 2) // 2 + max(n - 1, 2) % 2
    return name[:head] + "…" + name[len(name) - (max(n - 1, 2) - head) :]


def _rows(d, names: int | None = None) -> list[tuple[str | None, str]]:
    """(key, label) of every row; keys index the per-method value dicts, a None key is a
    heading line without cells. Several grouping factors: lme4's "Random effects:" layout,
    one row group per factor (Groups, Name, then Variance, Std.Dev. and Corr rows). Names
    (fixed effects, terms, factors) are cut to `names` characters."""
    if d.is_oneway:
        return [
            ("beta:(Intercept)", "mu"),
            ("sigma2", "sigma²"),
            ("var:(Intercept)", "tau²"),
            ("sigma", "sigma"),
            ("tau", "tau"),
            ("objective", "objective"),
        ]
    comps = curves.components(d)
    fixed = [(f"beta:{n}", f"beta: {clip(n, names)}") for n in d.fixed_names]
    if d.n_factors == 1:
        return (
            fixed
            + [(p.key, f"var: {clip(p.name, names)}") for p in comps if p.kind == "var"]
            + [("sd" + p.key[3:], f"sd: {clip(p.name, names)}") for p in comps if p.kind == "var"]
            + [(p.key, f"cor: {clip(p.name, names)}") for p in comps if p.kind == "cor"]
            + [("sigma2", "sigma²"), ("sigma", "sigma"), ("objective", "objective")]
        )
    gw = max(len("Residual"), *(len(clip(g.name, names)) for g in d.groupings))
    nw = max(len("Name"), *(len(clip(n, names)) for b in d.blocks for n in b.names))

    def label(group: str, name: str, stat: str) -> str:
        return f" {clip(group, names):<{gw}} {clip(name, names):<{nw}} {stat}"

    rows: list[tuple[str | None, str]] = [*fixed, (None, "Random effects:")]
    rows.append((None, label("Groups", "Name", "")))
    for g in d.groupings:
        first = True
        for p in (p for p in comps if p.factor == g.name and p.kind == "var"):
            rows.append((p.key, label(g.name if first else "", p.name, "Variance")))
            rows.append(("sd" + p.key[3:], label("", "", "Std.Dev.")))
            first = False
            # lme4's Corr column: on a term's rows, its correlations with the terms before it
            for c in comps:
                if c.kind == "cor" and c.factor == g.name and c.pair[1] == p.name:
                    rows.append((c.key, label("", "", f"Corr {clip(c.pair[0], names)}")))
    rows += [("sigma2", label("Residual", "", "Variance")), ("sigma", label("", "", "Std.Dev."))]
    return [*rows, ("objective", "objective")]


def _point(d, beta, G, sigma2, objective) -> dict:
    """The values of one method at a point estimate (beta, G, sigma^2)."""
    out: dict = {"sigma2": sigma2, "objective": objective, "sigma": _sqrt(sigma2)}
    if beta is not None:
        out.update({f"beta:{n}": float(b) for n, b in zip(d.fixed_names, beta, strict=True)})
    if G is not None:
        out.update(curves.component_values(G, d))
        out.update(_sds(out))
        out["tau"] = _sqrt(out.get("var:(Intercept)"))
    return out


def _sds(vals: dict) -> dict:
    """The standard deviation of every variance in `vals` ("sd:..." for "var:...")."""
    return {"sd" + k[3:]: _sqrt(v) for k, v in vals.items() if k.startswith("var:")}


def sd_values(d, variance_components: dict, stat: str) -> dict:
    """One statistic of every SD's own posterior summary ("sd:..." keys, as `_sds` keys the
    roots of point estimates) from the JSON's `{factor: {sds: {term: summary}}}`; missing ones
    left out. The mean and mode of an SD are not the roots of its variance's."""
    out = {}
    for p in curves.components(d):
        sds = (variance_components.get(p.factor) or {}).get("sds") or {}
        if p.kind == "var" and p.name in sds:
            out["sd" + p.key[3:]] = sds[p.name].get(stat)
    return out


def _mcmc(d, summary: dict, stat: str) -> dict:
    """One posterior summary (mean or mode) of every quantity, from `Posterior.to_dict()`:
    sigma, tau and the SDs summarise their own draws (not roots of the variances')."""
    comps = summary.get("variance_components") or {}
    out = {f"beta:{n}": v.get(stat) for n, v in summary["fixed_effects"].items()}
    out.update(curves.summary_values(d, comps, stat))
    out.update(sd_values(d, comps, stat))
    out["sigma2"] = summary["sigma2"].get(stat)
    out["sigma"] = (summary.get("sigma") or {}).get(stat)
    if d.is_oneway:
        out["tau"] = (summary.get("tau") or {}).get(stat)
    return out


def _columns(c) -> list[tuple[str, dict]]:
    d = c.data
    cols: list[tuple[str, dict]] = []
    if c.anova is not None:
        a = c.anova
        cols.append(("ANOVA", _point(d, [a.mu], [[a.tau2]], a.sigma2, None)))
    for name, f in (("EB-ML", c.eb_ml), ("EB-REML", c.eb_reml)):
        if f is None or (name == "EB-ML" and "eb-ml" not in c.settings.methods):
            continue
        cols.append((name, _point(d, f.beta, f.G, f.sigma2, -0.5 * f.objective)))
    for key, (name, _) in JOINT_NAMES.items():
        r = c.joint_maps.get(key)
        if r is None or (key != ("centered", False) and r.status != "interior"):
            continue
        cols.append((name, _point(d, r.beta, r.G, r.sigma2, r.log_joint)))
    if c.mcmc is not None:
        s = c.mcmc.to_dict()
        for stat in ("mean", "mode"):
            cols.append((f"MCMC {stat}", _mcmc(d, s, stat)))
    return cols


def _table(d, cols, width: int) -> list[str]:
    """The rows of `d` over the methods `cols` in blocks of `width` characters; names are cut
    until the labels take at most half the width (room for the method columns) and the label
    column and the widest method column fit."""
    cells = [(name, [fmt(vals.get(key)) for key, _ in _rows(d)]) for name, vals in cols]
    widest = max(max(len(name), *map(len, vs)) for name, vs in cells)
    room = min(width - GAP - widest, width // 2)
    names, rows = None, _rows(d)
    while max(len(lab) for _, lab in rows) > room and (names is None or names > 4):
        longest = max(len(n) for n in [*d.fixed_names, *d.factor_names, *_terms(d)])
        names = min(longest, names or longest) - 1
        rows = _rows(d, names)
    return _blocks(rows, cols, width)


def _terms(d) -> list[str]:
    return [n for b in d.blocks for n in b.names]


def _blocks(rows, cols, width: int) -> list[str]:
    """The table, wrapped into blocks of columns that fit in `width` characters (a row with
    key None is a heading: its label alone)."""
    labels = [lab for _, lab in rows]
    lw = max(map(len, labels))
    cells = [(name, [fmt(vals.get(key)) for key, _ in rows]) for name, vals in cols]
    widths = [max(len(name), *map(len, vs)) for name, vs in cells]
    out, start = [], 0
    while start < len(cells):
        used, stop = lw, start
        while stop < len(cells) and (stop == start or used + GAP + widths[stop] <= width):
            used += GAP + widths[stop]
            stop += 1
        part = range(start, stop)
        if out:
            out.append("")
        out.append(" " * lw + "".join(" " * GAP + cells[i][0].rjust(widths[i]) for i in part))
        for r, (key, lab) in enumerate(rows):
            if key is None:
                out.append(lab.rstrip())
                continue
            out.append(
                lab.ljust(lw) + "".join(" " * GAP + cells[i][1][r].rjust(widths[i]) for i in part)
            )
        start = stop
    return out


def _notes(c) -> list[str]:
    """Verdicts under the table: ANOVA's F test, boundary fits, every joint-MAP variant, MCMC's
    diagnostics, then the warnings."""
    out = []
    if c.anova is not None:
        a = c.anova
        out.append(f"ANOVA: F = {fmt(a.f_statistic, '.4g')}, p = {fmt(a.p_value, '.3g')}")
    for name, f in (("EB-ML", c.eb_ml), ("EB-REML", c.eb_reml)):
        if f is not None and f.singular:
            several = c.data.n_factors > 1
            zero = [
                f"{n} | {g}" if several else n
                for g, vc in f.components_by_factor.items()
                for n, v in vc.variances.items()
                if v <= 0
            ]
            what = (
                "tau² = 0"
                if c.data.is_oneway
                else ("zero variance: " + ", ".join(zero) if zero else "G singular")
            )
            out.append(f"{name}: on the boundary ({what})")
    roles = _story(c, explain.variant_roles, {})
    for key, (name, words) in JOINT_NAMES.items():
        r = c.joint_maps.get(key)
        if r is None:
            continue
        if key in (("centered", False), ("centered", True)):
            verdict = r.message
        else:  # a mode of another density: the verdict, then what it is (explain.variant_roles)
            verdict = (
                "interior mode"
                if r.status == "interior"
                else "no interior mode ("
                + ", ".join(f"{v} {k}" for k, v in sorted(r.counts().items()))
                + ")"
            )
            if roles.get(key):
                verdict += ". " + roles[key]
        out.append(f"{name} [{words}]: {verdict}")
    if c.mcmc is not None:
        dg = c.mcmc.diagnostics
        out.append(
            f"MCMC ({c.mcmc.settings.parametrization}, {c.mcmc.sampler}): R-hat max "
            f"{fmt(dg.get('r_hat_max'), '.4f')}, bulk ESS min {fmt(dg.get('ess_bulk_min'), '.0f')}"
            f", tail ESS min {fmt(dg.get('ess_tail_min'), '.0f')}, divergences "
            f"{dg.get('divergences')}, E-BFMI min {fmt(dg.get('e_bfmi_min'), '.2f')}, rank "
            f"test p min {fmt(dg.get('rank_p_min'), '.2g')} (Holm-adjusted)"
        )
    return out + [f"WARNING {w}" for w in c.warnings()]


def head_lines(d, width: int = WIDTH) -> list[str]:
    """The model and its size: one line for one grouping factor; lme4's "Number of obs: N,
    groups: plate, 24; sample, 6" under the formula for several."""
    formula = d.formula or f"{d.y_name} ~ 1 + (1 | {d.group_name})"
    if d.n_factors == 1:
        line = f"{formula}   N = {d.n_obs}, groups = {d.n_groups} ({d.group_name})"
        return textwrap.wrap(line, width, subsequent_indent="  ")
    groups = "; ".join(f"{g.name}, {g.n_levels}" for g in d.groupings)
    size = f"Number of obs: {d.n_obs}, groups: {groups}"
    return [
        *textwrap.wrap(formula, width, subsequent_indent="  "),
        *textwrap.wrap(size, width, subsequent_indent="  "),
    ]


def comparison_table(c, width: int = WIDTH) -> str:
    """The head (model, N, groups), the estimates (methods as columns, wrapped to `width`),
    the objective's meaning, then the data's notes, the verdicts and warnings."""
    d = c.data
    cols = _columns(c)
    body = _table(d, cols, width) if cols else ["(no estimates)"]
    legend = (
        "objective: log likelihood (EB-ML), restricted log likelihood (EB-REML: lme4's logLik; "
        "its REML criterion is -2 times it"
        + (f", {fmt(c.eb_reml.objective)}" if c.eb_reml is not None else "")
        + "), log joint density (joint MAP; with the priors for +pri)"
    )
    if c.mcmc is not None:
        legend += (
            "; MCMC sigma, tau, sd and Std.Dev.: the posterior mean / mode of the SD's own draws "
            "(not the root of the variance's)"
        )
    notes = [f"NOTE {n}" for n in d.notes]
    answer = _story(c, explain.headline, ())
    answer = (
        [textwrap.fill("In words: " + " ".join(answer), width, break_on_hyphens=False), ""]
        if answer
        else []
    )
    text = [
        textwrap.fill(t, width, subsequent_indent="  ", break_on_hyphens=False)
        for t in (legend, *notes, *_notes(c))
    ]
    return "\n".join([*head_lines(d, width), "", *body, "", *answer, *text])


def _story(c, sentences, empty):
    """The report's generated sentences for the printout (`explain.headline`,
    `explain.variant_roles`); `empty` when they cannot be made (without EB, say): the table is
    printed after all the computing and must not fail on a sentence."""
    try:
        return sentences(c) or empty
    except Exception:  # noqa: BLE001 - the numbers above stand without the sentence
        return empty
