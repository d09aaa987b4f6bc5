"""Bad options, bad output paths and wrong-typed case/study-file values (issue 9, items 4 and 5):
one line on stderr naming the option/file/key and the fix, exit status 2, no traceback, nothing
written (no study store either), all before any computing."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.cli import main

DATA = "g,y\na,1\na,2\nb,3\nb,5\nc,4\nc,4.5\n"
CASE = '[data]\npath = "d.csv"\ny = "y"\ngroup = "g"\n[compare]\nmethods = ["anova"]\n'
STUDY = (
    '[simulation]\nm = 5\ngroup_sizes = "3"\nmu = 0.0\nsigma = 1.0\ntau = 1.0\n'
    'replicates = 1\nmethods = ["eb-ml"]\n'
)
QUICK = ["--replicates", "1", "--m", "5", "--methods", "eb-ml", "--quiet"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder (the cwd) with a small data set; default outputs would land here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text(DATA)
    return tmp_path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refused(argv, capsys, root: Path, *expect: str) -> str:
    """Exit status 2, one line naming the culprit, no traceback, nothing new under `root`."""
    before = _tree(root)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("workbench: error: ") and "Traceback" not in err
    for text in expect:
        assert text in err, err
    assert _tree(root) == before
    return err.strip()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder this process cannot write in: chmod 555, or for root (who ignores permission
    bits) the immutable attribute; skipped where neither works."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
    try:
        (d / "probe").touch()
    except OSError:
        pass
    else:
        (d / "probe").unlink()
        d.chmod(0o755)
        pytest.skip("cannot make a read-only folder here")
    yield d
    if immutable:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    d.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# compare: options and output paths

COMPARE = ["compare", "d.csv", "--y", "y", "--group", "g", "--methods", "anova", "--quiet"]

COMPARE_OPTIONS = [
    (["--draws", "0"], "--draws must be between 1 and 1000000, got 0."),
    (["--chains", "0"], "--chains must be between 1 and 64, got 0."),
    (["--tune", "-1"], "--tune must be between 0 and 1000000, got -1."),
    (["--target-accept", "1.5"], "--target-accept must be in (0, 1), got 1.5."),
    (["--n-starts", "0"], "--n-starts must be between 1 and 1000, got 0."),
    (["--n-starts", "100000"], "--n-starts must be between 1 and 1000, got 100000."),
    (["--n-jobs", "0"], "--n-jobs must be a number of processes from 1 to 1024, or -1"),
    (["--seed", "-1"], "--seed must be at least 0, got -1."),
    (["--methods", ","], "--methods is empty; choose from anova,"),
    (
        ["--parametrization", "x"],
        "--parametrization (the MCMC model) must be 'collapsed', 'noncentered' or 'centered'",
    ),
    (
        ["--methods", "joint-map:sideways"],
        "--methods: unknown method 'joint-map:sideways'; did you mean 'joint-map'?",
    ),
]


@pytest.mark.parametrize(
    "extra,expect", COMPARE_OPTIONS, ids=[" ".join(c[0]) for c in COMPARE_OPTIONS]
)
def test_compare_bad_option(work, capsys, extra, expect):
    _refused([*COMPARE, *extra, "--json", "out.json"], capsys, work, expect)


FORMULA_DATA = "g,y,x\na,1,0.1\na,2,0.5\nb,3,0.2\nb,5,0.9\nc,4,0.3\nc,4.5,0.7\n"


@pytest.mark.parametrize(
    "extra,expect",
    [
        (
            ["--formula", "y ~ x + (1 | g)", "--methods", "anova"],
            "method 'anova' (the method of moments) is only for the one-way model",
        ),
        (
            ["--formula", "y ~ 1 + (1 | g)", "--y", "y", "--methods", "eb-ml"],
            "give either a formula or y/group, not both.",
        ),
    ],
)
def test_compare_formula_model_refusals(work, capsys, extra, expect):
    """One model for every route: ANOVA only for the one-way design, and one way to name it."""
    (work / "f.csv").write_text(FORMULA_DATA)
    _refused(["compare", "f.csv", *extra, "--quiet", "--json", "out.json"], capsys, work, expect)


def test_compare_readonly_folder(work, capsys, readonly_dir):
    for opt, name in (("--json", "x.json"), ("--report", "x.html")):
        _refused(
            [*COMPARE, opt, str(readonly_dir / name)],
            capsys,
            work,
            f"{opt} {readonly_dir / name}: cannot write in folder",
            "choose a writable",
        )


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_compare_unwritable_system_folder(work, capsys):
    _refused(
        [*COMPARE, "--json", "/sys/x.json"],
        capsys,
        work,
        "--json /sys/x.json: cannot write in folder /sys",
    )


def test_compare_output_is_a_special_file_or_folder(work, capsys):
    fifo = work / "pipe"
    os.mkfifo(fifo)
    link = work / "link.json"
    link.symlink_to(fifo)
    for path in (fifo, link):
        _refused(
            [*COMPARE, "--json", str(path)],
            capsys,
            work,
            f"--json {path} is not a regular file (a device, pipe or socket)",
        )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()  # untouched
    (work / "sub").mkdir()
    _refused([*COMPARE, "--report", "sub"], capsys, work, "--report sub is a folder")
    _refused([*COMPARE, "--json", "d.csv/x.json"], capsys, work, "is a file, not a folder")
    _refused([*COMPARE, "--json", "d.csv"], capsys, work, "names the data file d.csv")
    _refused(
        [*COMPARE, "--json", "a.json", "--report", "a.json"],
        capsys,
        work,
        "two outputs name the same file",
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_compare_json_to_a_device_is_refused_in_a_process(work):
    before = os.stat("/dev/full")
    res = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *COMPARE, "--json", "/dev/full"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == (
        "workbench: error: --json /dev/full is not a regular file (a device, "
        "pipe or socket); give the path of a file to write.\n"
    )
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


def test_symlinked_output_writes_the_target(work, capsys):
    (work / "real.json").write_text("old")
    (work / "link.json").symlink_to("real.json")
    assert main([*COMPARE, "--json", "link.json"]) == 0
    assert (work / "link.json").is_symlink()
    assert '"anova"' in (work / "real.json").read_text()


# ---------------------------------------------------------------------------------------------
# run: case-file values

CASE_VALUES = [
    (
        '[compare]\nmethods = ["anova"]\nseed = "abc"\n',
        "[compare] seed must be a whole number, got 'abc'.",
    ),
    ("[compare]\nmethods = 5\n", "[compare] methods must be a list of names in quotes"),
    (
        '[compare]\nmethods = ["anova", "mcnc"]\n',
        "[compare] methods: unknown method 'mcnc'; did you mean 'mcmc'?",
    ),
    ('[compare]\nmethods = ["anova"]\nn_starts = 0\n', "[compare] n_starts must be between 1"),
    ('[compare]\nmethods = ["anova"]\nn_jobs = 0\n', "[compare] n_jobs must be a number of"),
    ('[compare]\nmethods = ["anova"]\nparametrization = 1\n', "[compare] parametrization must be"),
    ('[compare]\nmethods = ["anova"]\n[mcmc]\nchains = 0\n', "[mcmc] chains must be between 1"),
    (
        '[compare]\nmethods = ["anova"]\n[mcmc]\ndraws = "x"\n',
        "[mcmc] draws must be a whole number",
    ),
    (
        '[compare]\nmethods = ["anova"]\n[mcmc]\ntarget_accept = 1.5\n',
        "[mcmc] target_accept must be in (0, 1), got 1.5.",
    ),
    ('[compare]\nmethods = ["anova"]\n[mcmc]\ntune = true\n', "[mcmc] tune must be a whole number"),
    (
        '[compare]\nmethods = ["anova"]\n[truth]\nmu = "abc"\n',
        "[truth] mu must be a number, got 'abc'.",
    ),
    ('[compare]\nmethods = ["anova"]\n[truth]\nsigma2 = -1\n', "[truth] sigma2 must be >= 0"),
    (
        '[compare]\nmethods = ["anova"]\n[priors]\nsigma_scale = "x"\n',
        "[priors] sigma_scale must be a number",
    ),
    ('[compare]\nmethods = ["anova"]\n[output]\njson = 5\n', "[output] json must be a string"),
]


@pytest.mark.parametrize("extra,expect", CASE_VALUES, ids=[c[1][:30] for c in CASE_VALUES])
def test_case_file_value_of_wrong_type(work, capsys, extra, expect):
    head = '[data]\npath = "d.csv"\ny = "y"\ngroup = "g"\n'
    (work / "c.toml").write_text(head + extra)
    _refused(["run", "c.toml", "--quiet"], capsys, work, f"c.toml: {expect}")


def test_case_file_structure_and_encoding(work, capsys):
    (work / "c.toml").write_text('[data]\npath = 5\ny = "y"\ngroup = "g"\n')
    _refused(["run", "c.toml", "--quiet"], capsys, work, "c.toml: [data] path must be a string")
    (work / "c.toml").write_text("data = 5\n")
    _refused(["run", "c.toml", "--quiet"], capsys, work, "c.toml: 'data' must be a section")
    (work / "c.toml").write_bytes(b'title = "caf\xe9"\n' + CASE.encode())
    _refused(
        ["run", "c.toml", "--quiet"],
        capsys,
        work,
        "c.toml: not UTF-8 text (byte 0xe9 on line 1); save the case file as UTF-8.",
    )


def test_run_makes_the_report_folder(work, capsys, monkeypatch):
    import workbench.present.report

    monkeypatch.setattr(workbench.present.report, "render", lambda *a, **k: "<html>report</html>")
    (work / "c.toml").write_text(CASE)
    assert main(["run", "c.toml", "--quiet"]) == 0
    assert sorted(p.name for p in (work / "reports").iterdir()) == ["c.html", "c.json"]


def test_run_readonly_report_folder(work, capsys, readonly_dir):
    (work / "c.toml").write_text(CASE + f'[output]\nreport = "{readonly_dir}/sub/c.html"\n')
    _refused(["run", "c.toml", "--quiet"], capsys, work, f"cannot write in folder {readonly_dir}")


# ---------------------------------------------------------------------------------------------
# simulate: options, study-file values, the output folder; nothing (no store) is made

SIM_OPTIONS = [
    (
        ["--n-jobs", "0"],
        "--n-jobs must be a number of processes from 1 to 1024, or -1 (all cores), got 0.",
    ),
    (["--seed", "-1"], "--seed must be at least 0, got -1."),
    (["--m", ""], "--m needs at least one value"),
    (["--methods", ","], "--methods is empty; choose from eb-ml,"),
    (["--methods", "eb-ml,bogus"], "--methods: unknown method 'bogus'"),
    (
        ["--scheduler", "bogus"],
        "--scheduler 'bogus' is not an address; give the address of a "
        "running Dask scheduler, like tcp://127.0.0.1:8786.",
    ),
    (["--n-starts", "0"], "--n-starts must be between 1 and 1000, got 0."),
    (["--n-starts", "100000"], "--n-starts must be between 1 and 1000, got 100000."),
    (["--replicates", "0"], "--replicates must be between 1 and 1000000, got 0."),
    (["--level", "2"], "--level must be in (0, 1), got 2."),
    (["--level", "nan"], "--level must be a finite number"),
    (["--mu", "inf"], "--mu must be a finite number"),
    (["--sigma", "0"], "--sigma must be > 0, got 0."),
    (["--tau", "-1"], "--tau must be >= 0, got -1."),
    (["--m", "1"], "--m must be between 2 and 100000, got 1."),
    (["--group-sizes", "1"], "--group-sizes '1' needs 1 <= min <= max and max >= 2"),
    (["--group-sizes", "2-x"], "--group-sizes '2-x' must look like '3' (balanced) or '2-8'"),
    (["--m", "100000", "--group-sizes", "2-200"], "observations per data set"),
]


@pytest.mark.parametrize("extra,expect", SIM_OPTIONS, ids=[" ".join(c[0]) for c in SIM_OPTIONS])
def test_simulate_bad_option(work, capsys, extra, expect):
    _refused(["simulate", *QUICK, "--out", "store", *extra], capsys, work, expect)


def test_simulate_unreachable_scheduler(work, capsys):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    _refused(
        ["simulate", *QUICK, "--out", "store", "--scheduler", address],
        capsys,
        work,
        f"--scheduler '{address}': no scheduler answers there",
    )


def test_simulate_bad_out(work, capsys, readonly_dir):
    _refused(
        ["simulate", *QUICK, "--out", "d.csv"], capsys, work, "--out d.csv is a file, not a folder"
    )
    _refused(
        ["simulate", *QUICK, "--out", str(readonly_dir / "store")],
        capsys,
        work,
        f"--out {readonly_dir / 'store'}: cannot write in folder {readonly_dir}",
    )
    (work / "other").mkdir()
    (work / "other" / "x.txt").write_text("x")
    _refused(["simulate", *QUICK, "--out", "other"], capsys, work, "not a study store")
    (work / "bad").mkdir()
    (work / "bad" / "study.json").write_text("{half")
    _refused(["simulate", *QUICK, "--out", "bad"], capsys, work, "not a study record")


STUDY_VALUES = [
    ('seed = "abc"\n', "[simulation] seed must be a whole number, got 'abc'."),
    ("n_starts = 0\n", "[simulation] n_starts must be between 1 and 1000, got 0."),
    ("level = 1.5\n", "[simulation] level must be in (0, 1), got 1.5."),
    ("mcmc = { chains = 0 }\n", "[simulation] mcmc.chains must be between 1 and 64, got 0."),
    ("mcmc = { draws = 0 }\n", "[simulation] mcmc.draws must be between 1 and 1000000, got 0."),
    ("mcmc = 5\n", "[simulation] mcmc must be a table"),
    ("mcmc = { chain = 2 }\n", "[simulation] mcmc: unknown key 'chain'"),
]


@pytest.mark.parametrize("extra,expect", STUDY_VALUES, ids=[c[1][:30] for c in STUDY_VALUES])
def test_study_file_value_of_wrong_type(work, capsys, extra, expect):
    (work / "s.toml").write_text(STUDY + extra)
    _refused(["simulate", "s.toml", "--quiet"], capsys, work, f"s.toml: {expect}")


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ('methods = ["eb-ml"]', "methods = 5", "[simulation] methods must be a list of names"),
        ("replicates = 1", 'replicates = "abc"', "[simulation] replicates must be a whole number"),
        ("mu = 0.0", 'mu = "abc"', "[simulation] mu must be a number, got 'abc'."),
        ("m = 5", "m = 2.5", "[simulation] m must be a whole number, got 2.5."),
        ('group_sizes = "3"', "group_sizes = true", "[simulation] group_sizes must be like '3'"),
    ],
)
def test_study_file_replaced_value(work, capsys, old, new, expect):
    (work / "s.toml").write_text(STUDY.replace(old, new))
    _refused(["simulate", "s.toml", "--quiet"], capsys, work, f"s.toml: {expect}")


def test_study_file_not_utf8(work, capsys):
    (work / "s.toml").write_bytes(STUDY.encode() + b"# \xff\n")
    _refused(
        ["simulate", "s.toml", "--quiet"],
        capsys,
        work,
        "s.toml: not UTF-8 text (byte 0xff on line 9); save the study file as UTF-8.",
    )


def test_flag_named_over_file_key(work, capsys):
    (work / "s.toml").write_text(STUDY)
    _refused(
        ["simulate", "s.toml", "--quiet", "--n-starts", "0"],
        capsys,
        work,
        "--n-starts must be between 1 and 1000",
    )


def test_corrected_command_is_not_refused_afterwards(work, capsys):
    """A refused command makes no store, so the corrected one runs (it used to be refused as
    'a different study definition')."""
    _refused(["simulate", *QUICK, "--out", "store", "--m", ""], capsys, work, "--m needs")
    _refused(["simulate", *QUICK, "--out", "store", "--seed", "-1"], capsys, work, "--seed")
    assert main(["simulate", *QUICK, "--out", "store", "--seed", "1"]) == 0
    assert "1 replicates computed, 0 resumed" in capsys.readouterr().out
    assert {p.name for p in (work / "store").iterdir()} == {
        "replicates",
        "study.json",
        "replicates_table.csv",
        "summary.csv",
        "report.html",
    }


def test_simulate_process_exit_status_and_no_traceback(work):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "simulate",
            *QUICK,
            "--out",
            "store",
            "--n-starts",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "workbench: error: --n-starts must be between 1 and 1000, got 0.\n"
    assert not (work / "store").exists()


# ----------------------------------------------------------------------------------------------
# Help, progress and library warnings (issue 13, item 8)


def _subparsers():
    import argparse

    from workbench.cli import _parser

    p = _parser()
    (sub,) = (a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return p, sub.choices


def test_help_documents_every_option_with_its_default(capsys):
    """`workbench --help` and every command's --help: each option listed with a help text,
    each option with a default states it, examples in the epilogs."""
    top, commands = _subparsers()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--version" in out
    for name in commands:
        assert name in out
    for name, parser in commands.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal width
        shown = parser._get_formatter()._get_help_string  # the text --help prints
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = action.option_strings[-1]
            assert flag in out, (name, flag)
            assert action.help, f"{name} {flag} has no help text"
            if action.default is not None and action.default is not False:
                assert "default" in shown(action), (name, flag)
        if name != "rerun":
            assert "examples:" in out, name


def test_progress_line_never_shows_a_zero_rate():
    """The sampler's progress on a terminal: the compile, the chains starting, then draws with a
    rate only once it is measured (never '0.00 draws/s'); in a log, phase lines only."""
    import io
    from types import SimpleNamespace

    from workbench.fit import nuts

    class Tty(io.StringIO):
        def isatty(self):
            return True

    def chains(done, tuning=True):
        return [SimpleNamespace(finished_draws=d, divergences=0, tuning=tuning) for d in done]

    for stream in (Tty(), io.StringIO()):
        prog = nuts.Progress(2, 100, 100, stream=stream)
        prog.compiling()
        prog(chains([0, 0]))
        prog(chains([5, 3]))
        prog.first = (prog.first[0] - 2.0, prog.first[1])  # two seconds after the first draws
        prog(chains([200, 200], tuning=False))
        prog.done()
        text = stream.getvalue()
        assert "compiling the log density" in text and "starting 2 chains" in text
        assert "0.00 draws/s" not in text and " 0 draws/s" not in text
        assert "(200 draws kept)" in text
        if isinstance(stream, Tty):
            assert "tuning: chain draws 8/400, 0 divergences" in text
            assert re.search(r"chain draws 400/400, [1-9]\d* draws/s", text)
        else:
            assert len(text.splitlines()) == 3 and "draws/s" not in text


def test_pytensor_blas_warning_is_filtered_and_ours_are_not():
    """PyTensor's 'could not link to a BLAS installation' (raised the first time a C-compiled
    function asks for BLAS flags, as the slopes case's initial point did) is silenced at the
    compile, in a fresh process; another UserWarning inside the same block still shows."""
    code = (
        "import warnings\n"
        "import pytensor\n"
        "from pytensor.link.c.cmodule import default_blas_ldflags\n"
        "from workbench.fit import nuts\n"
        "with nuts.quiet_library_warnings():\n"
        "    pytensor.config.blas__ldflags\n"  # the first request: where PyTensor warns
        "    warnings.warn('our own warning', UserWarning)\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    default_blas_ldflags()\n"  # the control: does PyTensor warn here at all?
        "print(sum('could not link to a BLAS' in str(w.message) for w in seen))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "BLAS" not in res.stderr and "our own warning" in res.stderr
    assert res.stdout.strip() in ("0", "1")  # 1: PyTensor finds no BLAS here, the filter acted


def test_mcmc_run_in_a_terminal_shows_progress_and_no_library_warnings(work):
    """A small MCMC run of the CLI with stderr on a pseudo-terminal: the compile and sampling
    progress lines, no '0.00 draws/s', no library warning text."""
    import pty
    import threading

    main_fd, tty_fd = pty.openpty()
    chunks: list[bytes] = []

    def read():
        while True:
            try:
                data = os.read(main_fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    argv = ["compare", "d.csv", "--y", "y", "--group", "g", "--methods", "mcmc"]
    argv += ["--chains", "1", "--draws", "30", "--tune", "30", "--json", "out.json"]
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=tty_fd,
        text=True,
    )
    os.close(tty_fd)
    reader.join(timeout=10)
    os.close(main_fd)
    err = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "compiling the log density" in err and "sampling: done" in err, err
    assert "0.00 draws/s" not in err
    assert not re.search(r"\w+Warning\b|could not link|warnings\.warn", err), err
