"""A formula is data, not code (issue 9, item 6): nothing in it is evaluated as Python, from the
CLI, from a case file or from the API; every allowed transform gives the column computed by hand;
`(x || g)` is lme4's expansion."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from workbench.cli import main
from workbench.compare import compare
from workbench.errors import InputError
from workbench.model import design
from workbench.model.formula import parse


def _frame(m=12, n=6, seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x = rng.uniform(0.5, 3.0, m * n)
    f = np.array(["lo", "mid", "hi"])[rng.integers(0, 3, m * n)]
    k = rng.integers(1, 4, m * n)
    y = 2 + x + (f == "hi") + rng.normal(size=m)[g] + rng.normal(size=m * n)
    return pd.DataFrame({"y": y, "x": x, "f": f, "k": k, "g": [f"s{j}" for j in g]})


# every attack tries to leave a file called MARKER in the working directory
ATTACKS = {
    "os.system": 'y ~ x + pd.io.common.os.system("touch MARKER") + (1 | g)',
    "__import__": 'y ~ x + __import__("os").system("touch MARKER") + (1 | g)',
    "attribute": 'y ~ x + I(x.__class__.__init__.__globals__) + os.system("touch MARKER") + (1|g)',
    "open": 'y ~ x + open("MARKER", "w") + (1 | g)',
    "lambda": 'y ~ x + (lambda: __import__("os").system("touch MARKER"))() + (1 | g)',
    "subscript": 'y ~ x + C(x)[__import__("os").system("touch MARKER")] + (1 | g)',
    "f-string": "y ~ x + I(f\"{__import__('os').system('touch MARKER')}\") + (1 | g)",
    "dunder": "y ~ x + __builtins__ + I(exec(\"open('MARKER', 'w')\")) + (1 | g)",
    "keyword": "y ~ x + log(x, base = exec(\"open('MARKER', 'w')\")) + (1 | g)",
}


@pytest.fixture()
def data_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data.csv"
    _frame().to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", list(ATTACKS))
def test_cli_refuses_code_in_a_formula(name, data_csv, capsys):
    """`workbench compare data.csv --formula ...` (the console script's `main`): exit 2, one line
    naming the term and what is allowed, nothing run, nothing written."""
    out = data_csv.parent / "out.json"
    rc = main(["compare", str(data_csv), "--formula", ATTACKS[name], "--json", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "is not allowed" in err and "log()" in err and "I()" in err
    assert not (data_csv.parent / "MARKER").exists()
    assert not out.exists()


def test_cli_subprocess_and_case_file_refuse_code(tmp_path):
    """The real command line and a colleague's case file: exit 2, one line, no side effect."""
    _frame().to_csv(tmp_path / "data.csv", index=False)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "compare",
            "data.csv",
            "--formula",
            ATTACKS["os.system"],
            "--quiet",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "'pd.io.common.os.system(...)'" in r.stderr and "is not allowed" in r.stderr
    assert not (tmp_path / "MARKER").exists()

    case = tmp_path / "colleague.toml"
    case.write_text(
        '[data]\npath = "data.csv"\n'
        f"formula = '''{ATTACKS['__import__']}'''\n"
        '[compare]\nmethods = ["eb-ml"]\n'
        '[output]\nreport = "colleague.html"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "run", str(case), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "__import__" in r.stderr
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "colleague.html").exists()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_api_refuses_code_before_reading_data(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="is not allowed"):
        parse(ATTACKS[name])
    with pytest.raises(InputError, match="is not allowed"):
        compare(_frame(), formula=ATTACKS[name], methods="eb-ml")
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize(
    "formula, culprit",
    [
        ("y ~ x + np.log(x) + (1 | g)", "'np.log(...)'"),
        ("y ~ x + x$a + (1 | g)", "'$'"),
        ("y ~ x + (x + f)^2 + (1 | g)", "'^' outside I()"),
        ("y ~ x + x %in% f + (1 | g)", "'%'"),
        ("y ~ x - f + (1 | g)", "removing a term"),
        ("y ~ . + (1 | g)", "'.'"),
        ("y ~ x + 'f' + (1 | g)", "the string 'f'"),
        ("y ~ x + C(f, helmert) + (1 | g)", "the contrast 'helmert'"),
        ("y ~ x + C(f, levels = c(a + b)) + (1 | g)", "level list"),
        ("y ~ x + I(x; 1) + (1 | g)", "';'"),
        ("y ~ x + I(x) + 2 + (1 | g)", "the number 2"),
    ],
)
def test_other_syntax_is_refused_naming_the_term(formula, culprit):
    with pytest.raises(InputError) as err:
        parse(formula)
    msg = str(err.value)
    assert culprit in msg and "is not allowed" in msg and "\n" not in msg


def test_no_evaluating_library_is_imported():
    """Designs are computed from the parsed tree: building one, in a fresh interpreter, imports
    neither `formulae` nor `patsy` (libraries that evaluate formula terms as Python)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, pandas as pd\n"
        "from workbench.model import design\n"
        "rng = np.random.default_rng(0)\n"
        "df = pd.DataFrame({'y': rng.normal(size=40), 'x': rng.uniform(1, 2, 40),\n"
        "                   'f': list('ab') * 20, 'g': np.repeat(list('abcd'), 10)})\n"
        "d = design.from_frame(df, 'y ~ log(x) * f + I(x^2) + (1 + x | g)')\n"
        "assert d.p == 5 and d.q == 2, (d.p, d.q)\n"
        "print(sorted(m for m in ('formulae', 'patsy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _by_hand(df):
    x = df.x.to_numpy()
    sd = np.sqrt(((x - x.mean()) ** 2).sum() / (x.size - 1))
    return {
        "log(x)": np.log(x),
        "exp(x)": np.exp(x),
        "sqrt(x)": np.sqrt(x),
        "scale(x)": (x - x.mean()) / sd,
        "center(x)": x - x.mean(),
        "I(x^2)": x**2,
        "I(x**3 - 2*x)": x**3 - 2 * x,
        "I((x + 1)/2)": (x + 1) / 2,
        "I(-x^2)": -(x**2),
        "I(2^-x)": 2.0**-x,
        "I(log(x) * sqrt(x))": np.log(x) * np.sqrt(x),
        "scale(log(x))": (np.log(x) - np.log(x).mean()) / np.log(x).std(ddof=1),
        "I(1e-3 * x - .5)": 1e-3 * x - 0.5,
    }


@pytest.mark.parametrize("term", list(_by_hand(_frame())))
def test_numeric_transforms_equal_the_column_by_hand(term):
    df = _frame()
    d = design.from_frame(df, f"y ~ {term} + (1 | g)")
    assert d.fixed_names[0] == "(Intercept)" and len(d.fixed_names) == 2
    np.testing.assert_allclose(d.X[:, 1], _by_hand(df)[term], rtol=1e-13, atol=1e-15)
    assert d.fixed_names[1] == parse(f"y ~ {term} + (1 | g)").fixed  # R's deparse


def test_scale_is_r_scale_with_n_minus_1():
    df = _frame()
    col = design.from_frame(df, "y ~ scale(x) + (1 | g)").X[:, 1]
    assert abs(col.mean()) < 1e-14 and abs(col.std(ddof=1) - 1) < 1e-14


def test_factors_contrasts_and_levels_by_hand():
    df = _frame()
    ind = {lev: (df.f == lev).to_numpy(float) for lev in ("hi", "lo", "mid")}
    d = design.from_frame(df, "y ~ f + (1 | g)")  # treatment, sorted levels: hi is reference
    assert d.fixed_names == ("(Intercept)", "flo", "fmid")
    np.testing.assert_array_equal(d.X[:, 1:], np.column_stack([ind["lo"], ind["mid"]]))

    d = design.from_frame(df, 'y ~ C(f, levels = c("lo", "mid", "hi")) + (1 | g)')
    assert d.fixed_names[1:] == (
        'C(f, levels = c("lo", "mid", "hi"))mid',
        'C(f, levels = c("lo", "mid", "hi"))hi',
    )
    np.testing.assert_array_equal(d.X[:, 1:], np.column_stack([ind["mid"], ind["hi"]]))

    d = design.from_frame(df, "y ~ C(f, sum) + (1 | g)")  # R's contr.sum: last level -1
    assert d.fixed_names[1:] == ("C(f, sum)1", "C(f, sum)2")
    np.testing.assert_array_equal(
        d.X[:, 1:], np.column_stack([ind["hi"] - ind["mid"], ind["lo"] - ind["mid"]])
    )

    d = design.from_frame(df, "y ~ factor(k) + (1 | g)")  # numeric codes as levels
    assert d.fixed_names[1:] == ("factor(k)2", "factor(k)3")
    np.testing.assert_array_equal(d.X[:, 1:], np.column_stack([df.k == 2, df.k == 3]))

    d = design.from_frame(df, "y ~ f + (1 | g)", levels={"f": ["mid", "lo", "hi"]})
    assert d.fixed_names == ("(Intercept)", "flo", "fhi")


def test_interactions_intercepts_and_column_order_follow_r():
    df = _frame()
    ind = {lev: (df.f == lev).to_numpy(float) for lev in ("hi", "lo", "mid")}
    x = df.x.to_numpy()
    d = design.from_frame(df, "y ~ x * f + (1 | g)")
    assert d.fixed_names == ("(Intercept)", "x", "flo", "fmid", "x:flo", "x:fmid")
    np.testing.assert_array_equal(d.X[:, 4], x * ind["lo"])
    for formula in (
        "y ~ 0 + f + x + (1 | g)",
        "y ~ -1 + f + x + (1 | g)",
        "y ~ f + x - 1 + (1 | g)",
    ):
        d = design.from_frame(df, formula)
        assert d.fixed_names == ("fhi", "flo", "fmid", "x")  # no intercept: all levels
    d = design.from_frame(df, "y ~ 1 + x:f + (1 | g)")  # margin x absent: all levels of f
    assert d.fixed_names == ("(Intercept)", "x:fhi", "x:flo", "x:fmid")
    d = design.from_frame(df, "y ~ (x + log(x)):f + f + (1 | g)")
    assert d.fixed_names[:3] == ("(Intercept)", "flo", "fmid")
    assert d.fixed_names[3:6] == ("x:fhi", "x:flo", "x:fmid")


def test_double_bar_with_a_factor_is_lme4s_expansion():
    """lme4 (reformulas::expandDoubleVerts) splits the *terms* of the expression:
    (1 + x + f || g) is (1 | g) + (0 + x | g) + (0 + f | g), f's dummies one correlated block."""
    df = _frame()
    spec = parse("y ~ x + (1 + x + f || g)")
    assert spec.text() == "y ~ x + (1 | g) + (0 + x | g) + (0 + f | g)"
    d = design.from_frame(df, spec)
    explicit = design.from_frame(df, "y ~ x + (1 | g) + (0 + x | g) + (0 + f | g)")
    assert [b.names for b in d.blocks] == [("(Intercept)",), ("x",), ("fhi", "flo", "fmid")]
    assert d.blocks == explicit.blocks
    np.testing.assert_array_equal(d.Z, explicit.Z)
    # numeric terms are split as before
    d = design.from_frame(df, "y ~ x + (x || g)")
    assert [b.names for b in d.blocks] == [("(Intercept)",), ("x",)]
    assert parse("y ~ x + (1 + x * f || g)").text() == (
        "y ~ x + (1 | g) + (0 + x | g) + (0 + f | g) + (0 + x:f | g)"
    )


def test_quoted_and_dotted_column_names():
    df = _frame().rename(columns={"x": "Sepal.Length", "f": "my factor"})
    d = design.from_frame(df, "y ~ log(Sepal.Length) + `my factor` + (1 | g)")
    assert d.fixed_names == ("(Intercept)", "log(Sepal.Length)", "`my factor`lo", "`my factor`mid")
    np.testing.assert_array_equal(d.X[:, 1], np.log(df["Sepal.Length"]))


def test_transform_domain_and_type_errors_are_one_line():
    df = _frame()
    with pytest.raises(InputError, match=r"'log\(x - 1\)' is not a finite number in data row"):
        design.from_frame(df, "y ~ log(x - 1) + (1 | g)")
    with pytest.raises(InputError, match="column 'f', which is not numeric"):
        design.from_frame(df, "y ~ I(f^2) + (1 | g)")
    with pytest.raises(InputError, match="scales a constant"):
        design.from_frame(df.assign(c=1.0), "y ~ x + scale(c) + (1 | g)")
    with pytest.raises(InputError, match="column 'z', which the data do not have"):
        design.from_frame(df, "y ~ I(z + 1) + (1 | g)")


def test_python_keywords_are_ordinary_column_names():
    """Nothing is evaluated, so `yield` or `class` are just names (lme4 fits them); R's reserved
    words stay refused, as R refuses them."""
    import numpy as np
    import pandas as pd

    from workbench.errors import InputError
    from workbench.model import design

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "yield": rng.normal(size=30),
            "class": rng.normal(size=30),
            "g": np.repeat(list("abcde"), 6),
        }
    )
    d = design.from_frame(df, "yield ~ class + (1 | g)")
    assert d.fixed_names == ("(Intercept)", "class")
    with pytest.raises(InputError, match="TRUE"):
        design.from_frame(df.rename(columns={"class": "TRUE"}), "yield ~ TRUE + (1 | g)")
