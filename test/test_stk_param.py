"""stk_param: list / get / set / unlearn (plist, pget, pset, punlearn for users without CIAO)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stk_astrometry import __version__
from stk_astrometry.parameters import format_par, parse_par, read_par
from stk_astrometry.tools.stk_param import main

REPO = Path(__file__).resolve().parents[1]
ERR = f"# stk_param (stk_astrometry {__version__}): ERROR "

PAR = """\
# demo
infile,f,a,"",,,"Input file"
outfile,f,a,"",,,"Output file"
loss,s,h,"cauchy",linear|soft_l1|huber|cauchy|arctan,,"Robust loss function"
max_shift,r,h,5,0,10,"Bound on each shift component (arcsec)"
outroot,f,h,")outfile",,,"Output root"
tmpdir,s,h,"${STK_PARAM_TEST}/w",,,"Work dir"
clobber,b,h,no,,,"OK to overwrite existing output file?"
verbose,i,h,1,0,5,"Amount of tool chatter (0-5)"
mode,s,h,"ql",,,
"""


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    sysdir, userdir = tmp_path / "sys", tmp_path / "user"
    sysdir.mkdir()
    userdir.mkdir()
    (sysdir / "stk_demo.par").write_text(PAR)
    old = time.time() - 3600
    os.utime(sysdir / "stk_demo.par", (old, old))
    monkeypatch.setenv("PFILES", f"{userdir};{sysdir}")
    monkeypatch.setenv("STK_PARAM_TEST", "/scratch")
    return userdir, sysdir


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_list_tool(dirs, capsys):
    _userdir, sysdir = dirs
    assert main(["list", "stk_demo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"\nParameters for {sysdir / 'stk_demo.par'}\n\n")
    assert "        infile =                  Input file\n" in out
    assert (
        "      (clobber = no)              OK to overwrite existing output file?\n"
        in out
    )
    assert out.endswith("         (mode = ql)\n")


def test_list_file(dirs, tmp_path, capsys):
    path = tmp_path / "mine.par"
    path.write_text(PAR.replace('"cauchy"', '"huber"'))
    assert main(["list", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"Parameters for {path}" in out and "(loss = huber)" in out


def test_get(dirs, capsys):
    assert (
        main(
            ["get", "stk_demo", "loss", "max_s", "clob", "outroot", "tmpdir", "infile"]
        )
        == 0
    )
    assert capsys.readouterr().out == "cauchy\n5\nno\n\n/scratch/w\n\n"


def test_set_writes_user_copy_in_ciao_format(dirs, capsys):
    userdir, sysdir = dirs
    assert (
        main(
            [
                "set",
                "stk_demo",
                "in.fits",
                "out.fits",
                "lo=hub",
                "max_shift=2.5",
                "clob+",
            ]
        )
        == 0
    )
    text = (userdir / "stk_demo.par").read_text()
    expected = (
        PAR.replace('infile,f,a,""', 'infile,f,a,"in.fits"')
        .replace('outfile,f,a,""', 'outfile,f,a,"out.fits"')
        .replace('loss,s,h,"cauchy"', 'loss,s,h,"huber"')
        .replace("max_shift,r,h,5,", "max_shift,r,h,2.5,")
        .replace("clobber,b,h,no", "clobber,b,h,yes")
    )
    assert text == expected
    assert (sysdir / "stk_demo.par").read_text() == PAR
    capsys.readouterr()
    assert main(["get", "stk_demo", "outroot", "loss"]) == 0
    assert capsys.readouterr().out == "out.fits\nhuber\n"


def test_set_keeps_env_and_blank(dirs):
    userdir, _ = dirs
    assert main(["set", "stk_demo", "outfile=${UNSET_VAR_XYZ}/o.fits", "infile="]) == 0
    pf = read_par(userdir / "stk_demo.par")
    assert pf.param("outfile").value == "${UNSET_VAR_XYZ}/o.fits"
    assert pf.param("infile").value == ""


def test_set_then_unlearn(dirs, capsys):
    userdir, _ = dirs
    assert main(["set", "stk_demo", "verbose=4"]) == 0
    assert (userdir / "stk_demo.par").exists()
    assert main(["unlearn", "stk_demo"]) == 0
    assert not (userdir / "stk_demo.par").exists()
    assert main(["unlearn", "stk_demo"]) == 0  # nothing to do is fine
    capsys.readouterr()
    assert main(["get", "stk_demo", "verbose"]) == 0
    assert capsys.readouterr().out == "1\n"


def test_set_par_file_in_place(dirs, tmp_path):
    userdir, _ = dirs
    path = tmp_path / "mine.par"
    path.write_text(PAR)
    assert main(["set", str(path), "verbose=0"]) == 0
    assert path.read_text() == PAR.replace("verbose,i,h,1,", "verbose,i,h,0,")
    assert not (userdir / "stk_demo.par").exists()


def test_unchanged_set_is_byte_identical(dirs, tmp_path):
    path = tmp_path / "mine.par"
    path.write_bytes(PAR.replace("\n", "\r\n").encode())
    assert main(["set", str(path), "verbose=1"]) == 0
    assert path.read_bytes() == PAR.replace("\n", "\r\n").encode()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no sub-command given"),
        (["frobnicate", "stk_demo"], "unknown sub-command 'frobnicate'"),
        (["list"], "'list' takes one tool name or .par file"),
        (
            ["list", "stk_nosuch"],
            "Unable to open parameter file for stk_nosuch. Looked in:",
        ),
        (["list", "nope.par"], "Unable to open parameter file nope.par"),
        (["get", "stk_demo"], "'get' needs a tool and at least one parameter name"),
        (["get", "stk_demo", "xyz"], "stk_demo has no parameter 'xyz'"),
        (
            ["get", "stk_demo", "o"],
            "Multiple matches for stk_demo parameter 'o', choose from: outfile, outroot",
        ),
        (["set", "stk_demo"], "'set' needs a tool and name=value arguments"),
        (
            ["set", "stk_demo", "verbose=9"],
            "stk_demo: parameter 'verbose' value 9 is outside the allowed range 0:5",
        ),
        (["set", "stk_demo", "loss=l2"], "parameter 'loss' value 'l2' is not one of"),
        (
            ["set", "stk_demo", "clobber=maybe"],
            "parameter 'clobber' value 'maybe' is not a boolean",
        ),
        (
            ["set", "stk_demo", "clobber="],
            "boolean parameter 'clobber' cannot be blank",
        ),
        (["set", "stk_demo", "a", "b", "c"], "too many positional values: c"),
        (["set", "stk_demo", "verbose+"], "'verbose+' sets a boolean"),
        (["set", "stk_demo", "outroot=)nope"], "redirects to 'nope'"),
        (
            ["set", "stk_demo", "@@x.yaml"],
            "@@ files cannot be used when setting parameters",
        ),
        (["unlearn"], "'unlearn' needs at least one tool name"),
        (["unlearn", "stk_nosuch"], "Unable to open parameter file for stk_nosuch"),
        (["unlearn", "x.par"], "'unlearn' takes tool names, not files"),
    ],
)
def test_errors_give_ciao_line_and_exit_1(dirs, capsys, argv, message):
    userdir, _ = dirs
    assert main(argv) == 1
    err = _err(capsys)
    assert err.startswith(ERR)
    assert message in err
    assert not (userdir / "stk_demo.par").exists()  # a failed set writes nothing


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "stk_param list" in out and "unlearn" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"stk_param (stk_astrometry {__version__})\n"


def test_bin_script_in_a_shell_chain(dirs, tmp_path):
    """The installed-style script, chained in a shell as a user would."""
    userdir, _ = dirs
    script = (
        f'set -e\n"{sys.executable}" "{REPO / "bin" / "stk_param"}" set stk_demo in.fits out.fits verbose=2\n'
        f'v=$("{sys.executable}" "{REPO / "bin" / "stk_param"}" get stk_demo verbose)\n'
        f'test "$v" = 2\n'
        f'"{sys.executable}" "{REPO / "bin" / "stk_param"}" list stk_demo\n'
        f'"{sys.executable}" "{REPO / "bin" / "stk_param"}" unlearn stk_demo\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    out = subprocess.run(
        ["sh", "-c", script],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "        infile = in.fits          Input file" in out.stdout
    assert not (userdir / "stk_demo.par").exists()
    bad = subprocess.run(
        [sys.executable, str(REPO / "bin" / "stk_param"), "get", "stk_demo", "nope"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.startswith(ERR)


def test_bin_script_is_three_lines_and_executable():
    path = REPO / "bin" / "stk_param"
    assert os.access(path, os.X_OK)
    lines = [
        line for line in path.read_text().splitlines() if not line.startswith("#!")
    ]
    assert lines == [
        "import sys",
        "from stk_astrometry.tools.stk_param import main",
        "sys.exit(main())",
    ]


def test_result_is_parseable_ciao_format(dirs):
    userdir, _ = dirs
    assert main(["set", "stk_demo", "infile=a, b.fits"]) == 0
    text = (userdir / "stk_demo.par").read_text()
    assert 'infile,f,a,"a, b.fits",,,"Input file"' in text
    assert format_par(parse_par(text)) == text
