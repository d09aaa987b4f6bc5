"""Every bad input: one line naming the culprit, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from workbench import compare
from workbench.cli import main
from workbench.errors import InputError
from workbench.model.data import from_arrays

GOOD = {"g": ["a", "a", "b", "b", "c"], "y": [1.0, 2.0, 3.0, 5.0, 4.0]}


def _csv(tmp_path, frame: dict | str, name="d.csv"):
    p = tmp_path / name
    if isinstance(frame, str):
        p.write_text(frame)
    else:
        pd.DataFrame(frame).to_csv(p, index=False)
    return p


CASES = [
    ("missing file", None, ["--y", "y", "--group", "g"], "no such file"),
    ("unknown y column", GOOD, ["--y", "yy", "--group", "g"], "did you mean 'y'"),
    (
        "unknown group column",
        {"group": GOOD["g"], "y": GOOD["y"]},
        ["--y", "y", "--group", "grp"],
        "did you mean 'group'",
    ),
    (
        "non-numeric response",
        {"g": GOOD["g"], "y": ["1", "2", "x", "4", "5"]},
        ["--y", "y", "--group", "g"],
        "data row 3",
    ),
    (
        "NaN response",
        {"g": GOOD["g"], "y": [1.0, np.nan, 3.0, 4.0, 5.0]},
        ["--y", "y", "--group", "g"],
        "data row 2",
    ),
    (
        "inf response",
        {"g": GOOD["g"], "y": [1.0, 2.0, 3.0, np.inf, 5.0]},
        ["--y", "y", "--group", "g"],
        "data row 4",
    ),
    (
        "missing group label",
        {"g": ["a", None, "b", "b", "c"], "y": GOOD["y"]},
        ["--y", "y", "--group", "g"],
        "missing group label in data row 2",
    ),
    (
        "one group",
        {"g": ["a"] * 5, "y": GOOD["y"]},
        ["--y", "y", "--group", "g"],
        "at least 2 groups",
    ),
    (
        "no group with 2 obs",
        {"g": ["a", "b", "c", "d", "e"], "y": GOOD["y"]},
        ["--y", "y", "--group", "g"],
        "2 or more observations",
    ),
    (
        "zero within variance",
        {"g": ["a", "a", "b", "b"], "y": [1.0, 1.0, 3.0, 3.0]},
        ["--y", "y", "--group", "g"],
        "zero within-group variance",
    ),
    (
        "unknown method",
        GOOD,
        ["--y", "y", "--group", "g", "--methods", "eb-ml,mcnc"],
        "did you mean 'mcmc'",
    ),
    (
        "bad parametrization",
        GOOD,
        ["--y", "y", "--group", "g", "--parametrization", "center"],
        "--parametrization",
    ),
    ("bad chains", GOOD, ["--y", "y", "--group", "g", "--chains", "0"], "--chains"),
    (
        "bad target accept",
        GOOD,
        ["--y", "y", "--group", "g", "--target-accept", "1.5"],
        "--target-accept",
    ),
    (
        "json folder missing",
        GOOD,
        ["--y", "y", "--group", "g", "--json", "nope/out.json"],
        "does not exist",
    ),
    ("not a number option", GOOD, ["--y", "y", "--group", "g", "--seed", "abc"], "--seed"),
]


@pytest.mark.parametrize("label,frame,args,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_status_2_nothing_written(
    tmp_path, capsys, monkeypatch, label, frame, args, expect
):
    monkeypatch.chdir(tmp_path)
    path = _csv(tmp_path, frame) if frame is not None else tmp_path / "absent.csv"
    out_json = tmp_path / "out.json"
    argv = ["compare", str(path), *args, "--quiet", "--methods", "anova,eb-ml"]
    if "--methods" in args:
        argv = ["compare", str(path), *args, "--quiet"]
    if "--json" not in args:
        argv += ["--json", str(out_json)]
    if label == "not a number option":  # argparse's own check: it exits with status 2
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    assert "Traceback" not in err
    assert not out_json.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name] if frame is not None else []
    )


def test_cli_process_exit_status_and_no_traceback(tmp_path):
    p = _csv(tmp_path, {"g": GOOD["g"], "y": ["1", "2", "x", "4", "5"]})
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "compare",
            str(p),
            "--y",
            "y",
            "--group",
            "g",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "column 'y'" in res.stderr and "data row 3" in res.stderr


def test_python_api_raises_input_error():
    with pytest.raises(InputError, match="did you mean 'y'"):
        compare(pd.DataFrame(GOOD), y="Y", group="g", methods=["eb-ml"])
    with pytest.raises(InputError, match="at least 2 groups"):
        from_arrays([1.0, 2.0], ["a", "a"])


def test_bad_case_file(tmp_path, capsys):
    case = tmp_path / "c.toml"
    case.write_text('[data]\npath = "x.csv"\ny = "y"\ngroup = "g"\n[mcmc]\nchain = 4\n')
    assert main(["run", str(case), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'chain' in [mcmc]" in err and len(err.strip().splitlines()) == 1


def test_csv_missing_values_as_in_r(tmp_path):
    """Only "NA" and empty cells are missing (R's read.csv); "None" is a level like any other."""
    from workbench.model.data import read_csv

    p = tmp_path / "d.csv"
    p.write_text("y,g,h\n1.5,None,NA\n2.5,null,\n3.5,a,x\n")
    df = read_csv(p)
    assert list(df["g"]) == ["None", "null", "a"]
    assert df["h"].isna().tolist() == [True, True, False]
