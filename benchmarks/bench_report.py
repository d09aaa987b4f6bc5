"""Reports end to end (issue 3): `workbench run` on a case (all estimators, MCMC 4 chains x 1000
draws, all plots, the HTML report), wall time of the whole command with a warm compile cache.

Run: .venv/bin/python benchmarks/bench_report.py
Targets: Dyestuff <= 30 s, Hsb82 <= 60 s.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import command_wall

ROOT = Path(__file__).resolve().parents[1]
CASES = {"dyestuff": 30.0, "hsb82": 60.0, "small_groups": None}


def main() -> None:
    exe = str(Path(sys.executable).parent / "workbench")
    with tempfile.TemporaryDirectory() as tmp:
        for name, target in CASES.items():
            text = (ROOT / "models" / f"{name}.toml").read_text()
            text = text.replace('path = "data/', f'path = "{ROOT}/models/data/')
            text = text.replace("draws = 2000", "draws = 1000")  # the 4 x 1000
            case = Path(tmp) / f"{name}.toml"
            case.write_text(text + f'\n[output]\nreport = "{tmp}/{name}.html"\n')
            cmd = [exe, "run", str(case), "--quiet"]
            wall = command_wall(cmd, 2)  # the first, untimed run warms the compile cache
            size = (Path(tmp) / f"{name}.html").stat().st_size / 1e6
            verdict = "" if target is None else f" (target <= {target:.0f} s)"
            print(
                f"{name}: report end to end, MCMC 4x1000, warm cache: median "
                f"{wall:.1f} s over 2 runs{verdict}; report {size:.1f} MB"
            )


if __name__ == "__main__":
    main()
