"""The shared tool runner: CIAO error line, help, version, verbose, learning."""

import logging

import pytest

from stk_astrometry import __version__
from stk_astrometry.errors import InputError
from stk_astrometry.runner import error_line, run_tool

PAR = """\
infile,f,a,"",,,"Input file"
factor,r,h,2.5,0,10,"A factor"
kind,s,h,"fast",fast|slow|fastest,,"Which kind"
clobber,b,h,no,,,"OK to overwrite existing output file?"
verbose,i,h,1,0,5,"Amount of tool chatter (0-5)"
mode,s,h,"ql",,,
"""


@pytest.fixture
def demo_tool(tmp_path, monkeypatch):
    """A tool 'stk_demo' with its own system par dir and user dir."""
    sysdir = tmp_path / "sys"
    userdir = tmp_path / "user"
    sysdir.mkdir()
    userdir.mkdir()
    (sysdir / "stk_demo.par").write_text(PAR)
    monkeypatch.setenv("PFILES", f"{userdir};{sysdir}")
    return userdir


def _run(argv, body):
    return run_tool("stk_demo", argv, body, description="Demo tool.\n\nMore text.")


def test_success_returns_zero_and_learns(demo_tool, capsys):
    seen = {}

    def body(params):
        seen.update(params)

    assert _run(["in.fits", "factor=3", "kind=slow"], body) == 0
    assert seen["infile"] == "in.fits" and seen["factor"] == 3.0 and seen["kind"] == "slow"
    learned = (demo_tool / "stk_demo.par").read_text()
    assert "in.fits" in learned and "slow" in learned


def test_user_error_gives_ciao_line_and_exit_1(demo_tool, capsys):
    def body(params):
        raise InputError("infile=in.fits: file in.fits does not exist")

    assert _run(["in.fits"], body) == 1
    err = capsys.readouterr().err
    assert err == f"# stk_demo (stk_astrometry {__version__}): ERROR infile=in.fits: file in.fits does not exist\n"
    assert not (demo_tool / "stk_demo.par").exists()  # a failed run learns nothing


def test_bug_is_reported_as_a_bug_with_traceback(demo_tool, capsys):
    def body(params):
        return {}["missing"]

    assert _run(["in.fits"], body) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"# stk_demo (stk_astrometry {__version__}): ERROR internal error - this is a bug")
    assert "Traceback" in err and "KeyError" in err


def test_parameter_errors_have_no_traceback(demo_tool, capsys):
    assert _run(["in.fits", "factor=99"], lambda p: None) == 1
    err = capsys.readouterr().err
    assert err.startswith("# stk_demo (stk_astrometry") and "factor" in err and "Traceback" not in err
    assert _run(["in.fits", "nosuch=1"], lambda p: None) == 1
    assert "nosuch" in capsys.readouterr().err


def test_missing_required_parameter_fails_without_prompting(demo_tool, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    assert _run([], lambda p: None) == 1
    err = capsys.readouterr().err
    assert "ERROR" in err and "infile" in err


def test_version_and_help(demo_tool, capsys):
    assert _run(["--version"], lambda p: 1 / 0) == 0
    assert capsys.readouterr().out.strip() == f"stk_demo (stk_astrometry {__version__})"
    assert _run(["-h"], lambda p: 1 / 0) == 0
    out = capsys.readouterr().out
    assert "Demo tool." in out and "infile" in out and "factor" in out and "(clobber" in out
    assert "More text." in out


def test_help_shows_title_and_one_paragraph_only(demo_tool, capsys):
    doc = "stk_demo: title.\n\nThe user paragraph.\n\nDeveloper notes: see :mod:`x`."
    assert run_tool("stk_demo", ["--help"], lambda p: 0, description=doc) == 0
    out = capsys.readouterr().out
    assert "stk_demo: title." in out and "The user paragraph." in out
    assert "Developer notes" not in out


def test_verbose_echoes_parameters_and_zero_is_quiet(demo_tool, capsys):
    def body(params):
        logging.getLogger("stk_astrometry.demo").info("working")
        logging.getLogger("stk_astrometry.demo").warning("careful")

    assert _run(["in.fits", "verbose=1"], body) == 0
    cap = capsys.readouterr()
    assert "stk_demo (stk_astrometry" in cap.out and "infile" in cap.out and "working" in cap.out
    assert cap.err == f"# stk_demo (stk_astrometry {__version__}): WARNING careful\n"
    assert _run(["in.fits", "verbose=0"], body) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "WARNING careful" in cap.err


def test_body_exit_status_is_passed_through_and_not_learned(demo_tool):
    assert _run(["in.fits"], lambda p: 3) == 3
    assert not (demo_tool / "stk_demo.par").exists()


def test_error_line_not_doubled():
    assert error_line("t", "ERROR: bad") == f"# t (stk_astrometry {__version__}): ERROR bad"
    assert error_line("t", "t: parameter 'x'") == f"# t (stk_astrometry {__version__}): ERROR parameter 'x'"


def test_broken_pipe_is_not_a_traceback(demo_tool):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "lib"))
    code = (
        "import sys; from stk_astrometry.runner import run_tool; "
        "sys.exit(run_tool('stk_demo', ['-h'] , lambda p: 0, description='x' * 200000))"
    )
    argv = [sys.executable, "-c", code]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        proc.stdout.read(10)
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait()
    assert b"Traceback" not in err and proc.returncode == 0
