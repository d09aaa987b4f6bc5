"""Bad and ambiguous inputs with several grouping factors (issue 11, item 5): a factor with one
level, a factor that indexes the rows (not identifiable beside the residual), and nested factors
coded with labels that repeat across parents (fitted as crossed, with a note; `a/b` nests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.errors import InputError
from workbench.fit import eb
from workbench.model.design import from_frame
from workbench.model.formula import parse

PASTES = Path(__file__).resolve().parent / "reference" / "crossed_data" / "pastes.csv"


def _frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = np.repeat([f"a{i}" for i in range(8)], 12)
    b = np.tile([f"b{i}" for i in range(6)], 16)
    y = rng.standard_normal(96) + np.repeat(rng.standard_normal(8), 12)
    return pd.DataFrame({"y": y, "a": a, "b": b, "one": "x", "row": np.arange(96)})


def test_single_level_factor_is_refused_naming_it():
    with pytest.raises(InputError, match=r"column 'one' has 1 level\(s\) \(x\).*at least 2"):
        from_frame(_frame(), "y ~ 1 + (1 | a) + (1 | one)")


def test_single_level_interaction_is_refused_naming_it():
    df = _frame().assign(c="k")
    with pytest.raises(InputError, match="grouping factor 'one:c' has 1 level"):
        from_frame(df, "y ~ 1 + (1 | a) + (1 | one:c)")


def test_observation_index_factor_is_refused():
    with pytest.raises(InputError, match="every group of 'row' has one observation .*indexes"):
        from_frame(_frame(), "y ~ 1 + (1 | a) + (1 | row)")


def test_factor_with_more_effects_than_rows_is_refused():
    df = _frame()
    df["pair"] = np.arange(96) // 2  # 48 levels of 2 rows: 96 slopes + intercepts >= 96 rows
    df["x"] = np.random.default_rng(1).standard_normal(96)
    with pytest.raises(InputError, match="not more than the 96 random effects"):
        from_frame(df, "y ~ 1 + (1 | a) + (1 + x | pair)")


def test_nesting_expands_as_lme4_and_names_the_inner_factor_first():
    spec = parse("strength ~ 1 + (1 | batch/cask)")
    assert [t.factor for t in spec.random] == ["cask:batch", "batch"]
    assert parse("y ~ (1 | a/b/c)").factors == ("c:b:a", "b:a", "a")
    assert parse("y ~ x + (1 + x || g/h)").factors == ("h:g", "g")


def test_repeated_nested_labels_are_crossed_with_a_note_and_a_slash_nests():
    df = pd.read_csv(PASTES)
    crossed = from_frame(df, "strength ~ 1 + (1 | batch) + (1 | cask)")
    assert [g.n_levels for g in crossed.groupings] == [10, 3]
    (note,) = crossed.notes
    assert "'cask' (3 levels) is crossed with 'batch'" in note
    assert "(1 | batch/cask)" in note
    nested = from_frame(df, "strength ~ 1 + (1 | batch/cask)")
    colon = from_frame(df, "strength ~ 1 + (1 | batch) + (1 | cask:batch)")
    assert nested.factor_names == ("cask:batch", "batch") == colon.factor_names
    assert nested.groupings[0].n_levels == 30 and nested.notes == ()
    a, b = eb.fit(nested, "reml"), eb.fit(colon, "reml")
    assert a.objective == pytest.approx(b.objective, abs=1e-9)
    assert a.objective < eb.fit(crossed, "reml").objective


def test_uniquely_coded_nesting_needs_no_note():
    df = _frame()
    df["b"] = df["a"] + "_" + df["b"]  # unique within parents: b nested in a by its labels
    d = from_frame(df, "y ~ 1 + (1 | a) + (1 | b)")
    assert d.notes == ()


def test_cli_bad_grouping_exits_2_with_one_line(tmp_path):
    csv = tmp_path / "d.csv"
    _frame().to_csv(csv, index=False)
    out = tmp_path / "out.json"
    r = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "compare", str(csv), "--formula",
         "y ~ 1 + (1 | a) + (1 | row)", "--json", str(out), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "'row'" in r.stderr and not out.exists()


def test_interaction_levels_are_the_combinations_not_joined_strings():
    """a = "1:2", b = "3" and a = "1", b = "2:3" are two combinations with one joined label:
    refused by name (lme4 would merge them into one level), never silently merged."""
    df = _frame().assign(p=["1:2", "1"] * 48, q=["3", "2:3"] * 48)
    with pytest.raises(InputError, match="two different combinations both labelled '1:2:3'"):
        from_frame(df, "y ~ 1 + (1 | a) + (1 | p:q)")


def test_two_factors_with_one_partition_get_a_note():
    df = _frame().assign(a2=lambda f: "x" + f["a"])
    d = from_frame(df, "y ~ 1 + (1 | a) + (1 | a2) + (1 | b)")
    assert any("'a' and 'a2' group the rows identically" in n for n in d.notes)
    df["u"] = df["a"] + "-" + df["b"]  # each u inside one a: a:u is the same partition as u
    d = from_frame(df, "y ~ 1 + (1 | u/a)")
    assert any("group the rows identically" in n for n in d.notes)
