"""The whole formula pipeline on every model of the lme4 battery: compare (EB-ML, EB-REML,
profile intervals, joint MAP and its variants), JSON Schema validation and the HTML report.
Prints one line per model (time, joint-MAP status, null profile ends, warnings about the
profile) and the count of models that raised. Not a test: about 10 minutes on 2 cores.

Run: .venv/bin/python benchmarks/bench_pipeline_sweep.py [--starts 4] [MODEL-PREFIX ...]
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
import warnings
from pathlib import Path

import pandas as pd

import workbench
from workbench.jsonsafe import validate
from workbench.present.report import render

REF = Path(__file__).resolve().parents[1] / "tests" / "reference"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("prefix", nargs="*")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    entries, seen = json.loads((REF / "lme4_battery.json").read_text()), set()
    ok, failed, t0 = 0, [], time.perf_counter()
    for e in entries:
        model = e["model"]
        if model in seen or (args.prefix and not any(model.startswith(p) for p in args.prefix)):
            continue
        seen.add(model)
        levels = e.get("levels") or None
        df = pd.read_csv(
            REF / "battery_data" / e["data"],
            keep_default_na=False,
            na_values=["NA", ""],
            dtype={c: str for c in (levels or {})},
        )
        t = time.perf_counter()
        try:
            c = workbench.compare(
                df,
                formula=e["formula"],
                levels=levels,
                methods=["eb-ml", "eb-reml", "joint-map"],
                n_starts=args.starts,
                n_jobs=1,
            )
            out = c.to_dict()
            validate(out)
            render(c, command="bench_pipeline_sweep")
        except Exception as exc:  # noqa: BLE001 - the count of crashes is the figure
            failed.append((model, repr(exc)[:200]))
            traceback.print_exc(limit=-3)
            continue
        ok += 1
        nulls = sum(None in v for v in out["eb_ml"].get("ci_profile", {}).values())
        prof = [w for w in out["warnings"] if "profile" in w]
        print(
            f"{model:28s} {time.perf_counter() - t:6.1f} s  "
            f"joint MAP {out['joint_map']['status']:17s} null profile ends {nulls}  {prof[:1]}",
            flush=True,
        )
    print(
        f"models {ok + len(failed)}: ran {ok}, raised {len(failed)}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    for model, msg in failed:
        print(f"  {model}: {msg}")


if __name__ == "__main__":
    main()
