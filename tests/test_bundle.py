"""Reproducibility bundles (`workbench run CASE --out DIR`, `compare ... --out DIR`, `workbench
rerun DIR`): the bundle holds the report, JSON, case file (its data path into the bundle), the
data and its citation, a rerun script and a manifest of SHA-256s; re-running it gives identical
numbers, a changed number is named with both values, a folder that is not a bundle is one line
with exit 2; no output holds the machine's absolute paths; a failed write leaves no bundle;
`--version`; the data hash is the same for a CSV and the same data as a DataFrame."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tomllib
from importlib.metadata import version

import pandas as pd
import pytest
from conftest import DATA, ROOT

from workbench import bundle, provenance
from workbench.cli import main
from workbench.compare import _model

CASE = """title = "Dyestuff, a bundle test"
# this comment stays in the bundle's copy
[data]
path = "input/dyestuff.csv"  # relative to this file
y = "Yield"
group = "Batch"

[compare]
methods = ["eb-ml", "eb-reml", "joint-map+priors:noncentered"]
seed = 3
n_starts = 2
n_jobs = 1
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A case in a temporary folder, run with --out from that folder (relative paths, as a
    user types them): (folder, exit status, the bundle). The report is the real one without
    its figures (drawn and checked in test_schema and test_report_browser; here they would
    take most of the time)."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "input").mkdir()
    for name in ("dyestuff.csv", "README.md"):
        shutil.copyfile(DATA / name, root / "input" / name)
    (root / "case.toml").write_text(CASE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr("workbench.present.report.figures", lambda c, truth: [])
        rc = main(["run", "case.toml", "--out", "bun", "--quiet"])
    return root, rc, root / "bun"


@pytest.fixture
def inside(made, monkeypatch):
    monkeypatch.chdir(made[0])
    return made


def test_bundle_holds_the_outputs_case_data_script_and_manifest(made):
    root, rc, out = made
    assert rc == 0
    meta = json.loads((out / bundle.MANIFEST).read_text())
    names = {"report.html", "result.json", "case.toml", "data/dyestuff.csv", "data/README.md"}
    names |= {"README.txt", "rerun.sh"}
    assert set(meta["files"]) == names  # no MCMC: no posterior.nc
    for name, digest in meta["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert (out / "data/dyestuff.csv").read_bytes() == (DATA / "dyestuff.csv").read_bytes()
    case = (out / "case.toml").read_text()
    assert "# this comment stays in the bundle's copy" in case
    assert 'path = "data/dyestuff.csv"  # relative to this file' in case
    want = tomllib.loads(CASE)
    want["data"]["path"] = "data/dyestuff.csv"
    assert tomllib.loads(case) == want
    assert os.stat(out / "rerun.sh").st_mode & stat.S_IXUSR
    readme = (out / "README.txt").read_text()
    assert "workbench rerun ." in readme and "workbench run case.toml --out" in readme
    assert meta["command"] == "workbench run case.toml --out bun --quiet"
    assert (
        meta["data"]["content_sha256"]
        == json.loads((out / "result.json").read_text())["data"]["sha256"]
    )


def test_outputs_hold_no_absolute_path_of_the_machine(made):
    root, _, out = made
    machine = {str(root), str(root.resolve()), os.getcwd()}
    for name in json.loads((out / bundle.MANIFEST).read_text())["files"]:
        if name.startswith("data/"):
            continue
        text = (out / name).read_text()
        for path in machine:
            assert path not in text, (name, path)
    result = json.loads((out / "result.json").read_text())
    assert result["data"]["source"] == "input/dyestuff.csv"  # relative, as in the case file


def test_provenance_and_citation_in_json_and_report(made):
    out = made[2]
    result = json.loads((out / "result.json").read_text())
    prov = result["provenance"]
    assert prov["lock_sha256"] == provenance.lock_sha256()
    assert prov["git_commit"] == (provenance.git_state() or {}).get("commit")
    assert prov["blas"] and all(b["num_threads"] >= 1 for b in prov["blas"])
    cite = result["data"]["citation"]
    assert cite.startswith("O.L. Davies and P.L. Goldsmith (eds), Statistical Methods")
    html = (out / "report.html").read_text()
    assert "Statistical Methods in Research and Production" in html
    for row in ("requirements.lock SHA-256", "git commit", "BLAS / OpenMP (threadpoolctl)"):
        assert f"<th>{row}</th>" in html


def test_rerun_reproduces_the_numbers(inside, capsys):
    assert main(["rerun", "bun", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert said.strip().splitlines()[-1].startswith("identical: all ")


def test_rerun_names_each_changed_value_with_both_values(inside, tmp_path, capsys):
    copy = tmp_path / "changed"
    shutil.copytree(inside[2], copy)
    result = json.loads((copy / "result.json").read_text())
    true_sigma2 = result["eb_ml"]["sigma2"]
    result["eb_ml"]["sigma2"] = 1.5
    result["provenance"]["packages"]["numpy"] = "0.0"  # provenance: a note, not a failure
    (copy / "result.json").write_text(json.dumps(result))
    assert main(["rerun", str(copy), "--quiet"]) == 1
    said = capsys.readouterr().out
    assert f"eb_ml.sigma2: bundle 1.5, now {true_sigma2!r}" in said
    assert "1 of " in said and "note: provenance.packages.numpy differs" in said


def test_rerun_of_a_folder_that_is_not_a_bundle_is_one_line(tmp_path, capsys):
    assert main(["rerun", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a workbench bundle" in err
    assert main(["rerun", str(tmp_path / "missing")]) == 2


def test_rerun_with_changed_data_says_the_data_differ(inside, tmp_path, capsys):
    copy = tmp_path / "edited"
    shutil.copytree(inside[2], copy)
    csv = copy / "data" / "dyestuff.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",1234"
    csv.write_text("\n".join(lines) + "\n")
    assert main(["rerun", str(copy), "--quiet"]) == 1
    said = capsys.readouterr().out
    assert "the data differ" in said and "data.sha256: bundle" in said


@pytest.mark.parametrize("text", ["{", "[1]"])
def test_rerun_of_a_damaged_result_json_is_one_line(inside, tmp_path, capsys, text):
    copy = tmp_path / "damaged"
    shutil.copytree(inside[2], copy)
    (copy / "result.json").write_text(text)
    assert main(["rerun", str(copy), "--quiet"]) == 2  # was a JSONDecodeError traceback
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "result.json" in err


def test_out_refuses_a_folder_with_other_files(inside, capsys):
    os.makedirs("other", exist_ok=True)
    open("other/notes.txt", "w").close()
    assert main(["run", "case.toml", "--out", "other", "--quiet"]) == 2
    assert "not a workbench bundle" in capsys.readouterr().err
    assert os.listdir("other") == ["notes.txt"]


@pytest.fixture
def cheap_report(monkeypatch):
    """The report itself is checked above; here only the bundle around it."""
    monkeypatch.setattr("workbench.present.report.render", lambda c, **kw: "<html></html>")


def test_compare_out_writes_a_case_from_the_options_and_reruns(
    cheap_report, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(DATA / "dyestuff.csv", "d.csv")
    args = ["compare", "d.csv", "--y", "Yield", "--group", "Batch", "--methods", "eb-ml"]
    args += ["--seed", "5", "--prior", "sigma ~ HalfNormal(50)", "--out", "b", "--quiet"]
    assert main(args) == 0
    case = tomllib.loads(open("b/d.toml").read())
    assert case["data"] == {"path": "data/d.csv", "y": "Yield", "group": "Batch"}
    assert case["compare"]["methods"] == ["eb-ml"] and case["compare"]["seed"] == 5
    assert case["priors"] == {"sigma": "HalfNormal(50)"}
    assert not os.path.exists("b/data/README.md")  # no README beside d.csv: no citation
    assert main(["rerun", "b", "--quiet"]) == 0
    capsys.readouterr()
    assert main([*args[:-3], "--report", "r.html", "--out", "b2"]) == 2
    assert "leave out --report" in capsys.readouterr().err


def test_a_failed_write_leaves_no_bundle(cheap_report, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(DATA / "dyestuff.csv", "d.csv")

    def full(src, dst):
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(bundle.shutil, "copyfile", full)
    args = ["compare", "d.csv", "--y", "Yield", "--group", "Batch", "--methods", "eb-ml"]
    assert main([*args, "--out", "b", "--quiet"]) == 1
    assert "no output was written" in capsys.readouterr().err
    assert not os.path.exists("b")  # nor the folders made for it


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"workbench {version('workbench')}"


def test_data_hash_is_the_same_for_a_csv_and_the_same_dataframe():
    path = DATA / "dyestuff.csv"
    df = pd.read_csv(path)
    csv = _model(path, "Yield", "Batch", None, None).sha256
    assert _model(df, "Yield", "Batch", None, None).sha256 == csv
    # another dtype, column order, an extra column, categorical labels, the formula route
    other = df.assign(Yield=df.Yield.astype(float), Batch=df.Batch.astype("category"), x=1)
    other = other[["x", "Batch", "Yield"]]
    assert _model(other, None, None, "Yield ~ 1 + (1 | Batch)", None).sha256 == csv
    changed = df.assign(Yield=df.Yield.where(df.index != 3, df.Yield + 1))
    assert _model(changed, "Yield", "Batch", None, None).sha256 != csv
    hsb = DATA / "hsb82.csv"
    formula, levels = "mAch ~ ses + sector + (1 | school)", {"sector": ["Public", "Catholic"]}
    assert (
        _model(hsb, None, None, formula, levels).sha256
        == _model(pd.read_csv(hsb), None, None, formula, levels).sha256
    )


def test_citations_are_read_from_the_data_readme_as_text(tmp_path):
    assert provenance.citation(DATA / "dyestuff2.csv").startswith("G.E.P. Box and G.C. Tiao")
    assert provenance.citation(DATA / "penicillin.csv").endswith("section 6.6.")
    assert "Raudenbush and A.S. Bryk" in provenance.citation(DATA / "hsb82.csv")
    assert provenance.citation(DATA / "small_groups.csv") is None  # no section: none
    assert provenance.citation("<DataFrame>") is None
    (tmp_path / "README.md").write_text(
        "## a.csv\nCitation: A. *Title* {{ 7 * 7 }} `__import__('os')`\n"
    )
    assert provenance.citation(tmp_path / "a.csv") == "A. Title {{ 7 * 7 }} __import__('os')"


def test_citation_cff_is_valid_cff_1_2_and_names_this_version():
    """Against the Citation File Format 1.2.0 schema (citation-file-format.github.io, vendored
    in tests/reference)."""
    import jsonschema
    import yaml

    schema = json.loads((ROOT / "tests/reference/citation-cff-1.2.0.schema.json").read_text())
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    jsonschema.Draft7Validator(schema).validate(cff)
    assert cff["cff-version"] == "1.2.0" and cff["version"] == version("workbench")
    assert cff["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
