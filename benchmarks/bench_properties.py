"""The property checks of tests/test_properties.py (issue 9, item 2) on many more examples,
printing counts instead of stopping at the first failure (not a test):

* oneway-ml / oneway-reml: `workbench.fit.eb_oneway` vs the exact 1-D profile;
* intercept-ml / intercept-reml: `workbench.fit.eb`, `y ~ {1, x, cat, x + cat} + (1 | grp)`,
  vs the exact 1-D profile;
* slope-ml: `workbench.fit.eb`, `y ~ {x, x + cat} + (1 + x | grp)`, vs the best of statsmodels
  MixedLM's optimisers, each estimate's log likelihood evaluated exactly (slow: about 0.5-1 s an
  example); also our loglik vs the exact log likelihood at our own theta.

For each: examples drawn, examples fitted (the rest were data the model cannot be fitted to),
how many have ours >= reference - 1e-6, how many are above an exact reference by more than
1e-6, the worst shortfall (reference - ours) and the worst excess (ours - reference), the share
of failures with a true tau of 0 / with outliers / with an uncentred covariate, the wall time,
and the worst examples with every generator parameter.

Run: .venv/bin/python benchmarks/bench_properties.py [--examples 2000] [--slope-examples 500]
     [--seed 0] [--only oneway-ml,intercept-reml,...] [--show 3]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_properties as tp  # noqa: E402 - the same generator, references and checks

PROPERTIES = {
    "oneway-ml": (lambda: {"case": tp.cases()}, lambda case: tp.check_oneway(case, "ml")),
    "oneway-reml": (lambda: {"case": tp.cases()}, lambda case: tp.check_oneway(case, "reml")),
    "intercept-ml": (
        lambda: {"case": tp.cases(), "fixed": st.sampled_from(tp.FIXED)},
        lambda case, fixed: tp.check_intercept_formula(case, fixed, "ml"),
    ),
    "intercept-reml": (
        lambda: {"case": tp.cases(), "fixed": st.sampled_from(tp.FIXED)},
        lambda case, fixed: tp.check_intercept_formula(case, fixed, "reml"),
    ),
    "slope-ml": (
        lambda: {
            "case": tp.cases(x_levels=("obs", "mixed"), slope=True),
            "fixed": st.sampled_from(("x", "x + cat")),
        },
        lambda case, fixed: tp.check_slope_formula(case, fixed),
    ),
}


def run_property(name: str, n_examples: int, master_seed: int) -> list[tuple]:
    """(kwargs, Outcome | None | Exception) for each example hypothesis draws."""
    strategies, check = PROPERTIES[name]
    rows: list[tuple] = []

    @seed(master_seed)
    @settings(
        max_examples=n_examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(**strategies())
    def collect(**kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.append((kwargs, check(**kwargs)))
        except Exception as exc:  # noqa: BLE001 - counted and shown, not fatal
            rows.append((kwargs, exc))

    collect()
    return rows


def summarise(name: str, rows: list[tuple], wall: float, show: int) -> None:
    fitted = [(kw, o) for kw, o in rows if isinstance(o, tp.Outcome)]
    errors = [(kw, o) for kw, o in rows if isinstance(o, Exception)]
    below_ok = sum(o.ours >= o.ref - tp.TOL for _, o in fitted)
    above = [(kw, o) for kw, o in fitted if o.exact and o.ours > o.ref + tp.TOL]
    failed = [(kw, o) for kw, o in fitted if not o.ok]
    shortfall = max((o.ref - o.ours for _, o in fitted), default=float("nan"))
    excess = max((o.ours - o.ref for _, o in fitted), default=float("nan"))
    print(
        f"\n== {name}: {len(rows)} examples, {len(fitted)} fitted, {len(errors)} errors, "
        f"{wall:.1f} s ({wall / max(len(rows), 1) * 1e3:.0f} ms an example)"
    )
    print(
        f"   ours >= reference - 1e-6: {below_ok} / {len(fitted)}"
        + (
            f"; above the exact optimum by > 1e-6: {len(above)}"
            if fitted and fitted[0][1].exact
            else " (reference not exact: no upper check)"
        )
    )
    print(
        f"   worst shortfall (reference - ours): {shortfall:.3g}; "
        f"worst excess (ours - reference): {excess:.3g}"
    )
    checked = [o for _, o in fitted if o.ours_exact is not None]
    if checked:
        worst = max(abs(o.ours - o.ours_exact) for o in checked)
        print(
            f"   our loglik vs the exact log likelihood at our own theta: "
            f"{sum(o.misreported for o in checked)} / {len(checked)} off by > 1e-6, "
            f"worst |difference| {worst:.3g}"
        )
    if failed:
        tags = {
            "true tau = 0": sum(kw["case"].tau == 0.0 for kw, _ in failed),
            "outliers": sum(kw["case"].n_outliers > 0 for kw, _ in failed),
            "x offset != 0": sum(kw["case"].x_offset != 0.0 for kw, _ in failed),
            "y scale < 1e-3 or > 1e3": sum(
                not 1e-3 <= kw["case"].y_scale <= 1e3 for kw, _ in failed
            ),
        }
        base = {
            "true tau = 0": sum(kw["case"].tau == 0.0 for kw, _ in fitted),
            "outliers": sum(kw["case"].n_outliers > 0 for kw, _ in fitted),
            "x offset != 0": sum(kw["case"].x_offset != 0.0 for kw, _ in fitted),
            "y scale < 1e-3 or > 1e3": sum(
                not 1e-3 <= kw["case"].y_scale <= 1e3 for kw, _ in fitted
            ),
        }
        print(
            "   failures with: "
            + ", ".join(
                f"{k} {v}/{len(failed)} (all examples {base[k]}/{len(fitted)})"
                for k, v in tags.items()
            )
        )
        worst = sorted(failed, key=lambda r: -abs(r[1].ours - r[1].ref))[:show]
        for kw, o in worst:
            print(
                f"   - {o.what}: ours {o.ours!r}, reference {o.ref!r} "
                f"(diff {o.ours - o.ref:.3g}); {o.detail}"
            )
            print(f"     {kw}")
    for kw, exc in errors[:show]:
        print(f"   ! error {type(exc).__name__}: {exc}\n     {kw}")
        traceback.print_exception(exc, limit=-2, file=sys.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--slope-examples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=",".join(PROPERTIES))
    ap.add_argument("--show", type=int, default=3)
    args = ap.parse_args()
    print(f"property checks, tolerance {tp.TOL:g} (absolute, log likelihood), seed {args.seed}")
    for name in args.only.split(","):
        n = args.slope_examples if name.startswith("slope") else args.examples
        t0 = time.perf_counter()
        rows = run_property(name, n, args.seed)
        summarise(name, rows, time.perf_counter() - t0, args.show)


if __name__ == "__main__":
    main()
