"""CIAO parameter files: parsing/writing, PFILES lookup, command line, prompting, learning."""

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stk_astrometry.errors import OutputError, ParameterError
from stk_astrometry.parameters import (
    ParameterSet,
    describe_tool,
    expand_env,
    find_par_file,
    format_par,
    format_plist,
    load_parameters,
    parse_par,
    parse_pfiles,
    read_par,
    system_par_dirs,
    to_bool,
    tool_synopsis,
    unlearn,
    write_par,
)

REPO = Path(__file__).resolve().parents[1]

PAR = """\
# stk_demo: a parameter file exercising every feature
infile,f,a,"",,,"Input matched-pairs file"
outfile,f,a,"",,,"Output file"
loss,s,h,"cauchy",linear|soft_l1|huber|cauchy|arctan,,"Robust loss function"
speed,s,h,"fast",fast|fastest|slow,,"Speed"
max_shift,r,h,5,0,10,"Bound on each shift component (arcsec)"
f_scale,r,h,1.0,0,,"Loss scale"
force,b,h,no,,,"Force?"
match,i,h,3,1,,"Minimum matches"
match_radius,r,h,INDEF,0,,"Match radius, arcsec"

title,s,h,'A, B',,,'Title, with comma'
tmpdir,s,h,"${STK_TEST_TMP}/work",,,"Temporary directory"
outroot,f,h,")outfile",,,"Output root"
clobber,b,h,no,,,"OK to overwrite existing output file?"
verbose,i,h,1,0,5,"Amount of tool chatter (0-5)"
mode,s,h,"ql",,,
"""


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """stk_demo in a private system dir; an empty user dir; PFILES pointing at both."""
    sysdir = tmp_path / "sys"
    userdir = tmp_path / "user"
    sysdir.mkdir()
    userdir.mkdir()
    (sysdir / "stk_demo.par").write_text(PAR)
    # the system file must look older than anything learned during the test
    old = time.time() - 3600
    os.utime(sysdir / "stk_demo.par", (old, old))
    monkeypatch.setenv("PFILES", f"{userdir};{sysdir}")
    monkeypatch.setenv("STK_TEST_TMP", "/scratch")
    return userdir, sysdir


def load(argv, **kw):
    kw.setdefault("interactive", False)
    return load_parameters("stk_demo", argv, **kw)


# ----------------------------------------------------------------------------
# parse_par / format_par
# ----------------------------------------------------------------------------


def test_parse_every_field():
    pf = parse_par(PAR)
    assert pf.names[:3] == ("infile", "outfile", "loss")
    assert pf.names[-1] == "mode"
    loss = pf.param("loss")
    assert (loss.type, loss.mode, loss.value, loss.prompt) == (
        "s",
        "h",
        "cauchy",
        "Robust loss function",
    )
    assert loss.enum == ("linear", "soft_l1", "huber", "cauchy", "arctan")
    ms = pf.param("max_shift")
    assert (ms.min, ms.max, ms.value, ms.value_quote) == ("0", "10", "5", "")
    assert pf.param("title").value == "A, B"
    assert pf.param("title").value_quote == "'"
    assert pf.param("title").prompt == "Title, with comma"
    assert pf.param("match_radius").prompt == "Match radius, arcsec"
    assert pf.param("tmpdir").value == "${STK_TEST_TMP}/work"  # stored unexpanded
    assert pf.param("outroot").value == ")outfile"
    assert pf.param("mode").value == "ql"
    assert not pf.param("infile").hidden and pf.param("clobber").hidden


def test_unchanged_file_round_trips_byte_for_byte():
    assert format_par(parse_par(PAR)) == PAR


@pytest.mark.parametrize(
    "text",
    [
        "a,s,h,x,,,p\r\nb,i,h,1,,,q\r\n",  # CRLF
        "a,s,h,x,,,p",  # no final newline
        "  # indented comment\n\t\n a , s , h , x , , , p \n",  # spaces around fields
        "mode,s,h,ql\n",  # fewer than 7 fields
        'p,s,h,"v",,,Prompt, with an unquoted comma\n',
        "x,fr,h,a.fits,,,in\ny,fw,h,b.fits,,,out\nz,fe,q,,,,e\nw,fn,ql,,,,n\n",
    ],
)
def test_round_trip_odd_but_valid_files(text):
    assert format_par(parse_par(text)) == text


def test_file_types_are_accepted_and_kept():
    pf = parse_par("x,fr,h,a.fits,,,in\ny,fw,h,b.fits,,,out\n")
    assert pf.param("x").type == "fr" and pf.param("x").base_type == "f"
    assert "x,fr,h,c.fits,,,in" in format_par(pf.with_value("x", "c.fits"))


def test_unquoted_comma_prompt_is_all_prompt():
    assert (
        parse_par('p,s,h,"v",,,Prompt, with a comma\n').param("p").prompt
        == "Prompt, with a comma"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('a,s,h,"unterminated,,,p\n', 'line 1: unterminated " quote'),
        ("ok,s,h,x,,,p\nb,z,h,x,,,p\n", "line 2: parameter 'b' has unknown type 'z'"),
        ("b,s,x,x,,,p\n", "parameter 'b' has unknown mode 'x'"),
        (
            "a,s,h,x,,,p\na,i,h,1,,,q\n",
            "line 2: parameter 'a' already defined on line 1",
        ),
        ("justaname\n", "line 1: expected 'name,type,mode,value,min,max,prompt'"),
        ("1abc,s,h,x,,,p\n", "invalid parameter name '1abc'"),
        ('a,s,h,"x"y,,,p\n', "unexpected text after a closing quote"),
    ],
)
def test_parse_errors_name_the_line(text, message):
    with pytest.raises(ParameterError, match="demo.par") as exc:
        parse_par(text, source="demo.par")
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("name", "new", "expected_line"),
    [
        ("infile", "a.fits", 'infile,f,a,"a.fits",,,"Input matched-pairs file"'),
        ("title", "C", "title,s,h,'C',,,'Title, with comma'"),
        ("title", "it's", "title,s,h,\"it's\",,,'Title, with comma'"),
        ("clobber", "yes", 'clobber,b,h,yes,,,"OK to overwrite existing output file?"'),
        (
            "max_shift",
            "2.5",
            'max_shift,r,h,2.5,0,10,"Bound on each shift component (arcsec)"',
        ),
        (
            "max_shift",
            "",
            'max_shift,r,h,,0,10,"Bound on each shift component (arcsec)"',
        ),
        ("match", "a, b", 'match,i,h,"a, b",1,,"Minimum matches"'),
        ("match", 'say "hi"', 'match,i,h,\'say "hi"\',1,,"Minimum matches"'),
        ("match", " padded ", 'match,i,h," padded ",1,,"Minimum matches"'),
    ],
)
def test_changed_value_rerenders_only_its_field(name, new, expected_line):
    pf = parse_par(PAR)
    out = format_par(pf.with_value(name, new))
    old_lines = PAR.splitlines()
    new_lines = out.splitlines()
    changed = [
        i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b
    ]
    assert len(changed) == 1
    assert new_lines[changed[0]] == expected_line
    assert parse_par(out).param(name).value == new


@pytest.mark.parametrize("bad", ["a\nb", "both ' and \""])
def test_unstorable_values_are_refused(bad):
    with pytest.raises(ParameterError, match="parameter 'title'"):
        parse_par(PAR).with_value("title", bad)


def test_with_value_of_unknown_name():
    with pytest.raises(ParameterError, match="has no parameter 'nope'"):
        parse_par(PAR).with_value("nope", "x")


def test_read_write_par_atomic_and_exact(tmp_path):
    path = tmp_path / "sub" / "stk_demo.par"
    write_par(path, parse_par(PAR))
    assert path.read_bytes() == PAR.encode()
    os.chmod(path, 0o640)
    pf = read_par(path)
    write_par(path, pf.with_value("verbose", "3"))
    assert (path.stat().st_mode & 0o777) == 0o640
    assert read_par(path).param("verbose").value == "3"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "stk_demo.par"
    ]  # no temp left


def test_read_par_keeps_crlf_and_odd_bytes(tmp_path):
    path = tmp_path / "x.par"
    data = b"# caf\xe9 in latin-1\r\na,s,h,x,,,p\r\n"
    path.write_bytes(data)
    write_par(path, read_par(path))
    assert path.read_bytes() == data


def test_a_parse_is_remembered_and_a_changed_file_is_seen(tmp_path):
    """The parse of a text is remembered (a tool run again in one process does not parse its
    files again), but read_par reads the file every time: a change is seen at once, whatever
    the file's timestamps; a malformed text raises every time."""
    path = tmp_path / "stk_demo.par"
    write_par(path, parse_par(PAR))
    first = read_par(path)
    assert read_par(path) is first                       # the same text: the same parse
    assert first.param("verbose") is first.param("verbose")
    write_par(path, first.with_value("verbose", "3"))    # same size, same second
    again = read_par(path)
    assert again is not first and again.param("verbose").value == "3"
    assert first.param("verbose").value != "3"           # the remembered one is untouched
    assert parse_par(PAR, source="other.par").source == "other.par"   # its own messages
    path.write_text(PAR + "a,s,h,x,,,p\na,i,h,1,,,q\n")
    for _ in range(2):
        with pytest.raises(ParameterError, match="already defined"):
            read_par(path)


def test_param_lookups_by_name():
    pf = parse_par(PAR)
    assert [pf.param(n).name for n in pf.names] == list(pf.names)
    assert all(n in pf for n in pf.names)
    assert "nope" not in pf and ["unhashable"] not in pf
    for bad in ("nope", ["unhashable"]):
        with pytest.raises(ParameterError, match="has no parameter"):
            pf.param(bad)
    changed = pf.with_value("verbose", "3")               # a copy has its own views
    assert changed.param("verbose").value == "3" and pf.param("verbose").value != "3"


def test_with_values_is_with_value_in_turn():
    pf = parse_par(PAR)
    texts = {"verbose": "3", "title": "it's", "match": "a, b"}
    one_by_one = pf
    for name, text in texts.items():
        one_by_one = one_by_one.with_value(name, text)
    assert pf.with_values(texts) == one_by_one
    assert format_par(pf.with_values(texts)) == format_par(one_by_one)
    assert pf.with_values({}) is pf
    # the first bad entry in the mapping's order is the error, as one by one
    with pytest.raises(ParameterError, match="has no parameter 'nope'"):
        pf.with_values({"verbose": "3", "nope": "x", "title": "a\nb"})
    with pytest.raises(ParameterError, match="parameter 'title'"):
        pf.with_values({"verbose": "3", "title": "a\nb", "nope": "x"})
    # a ParFile made by hand with a name twice (a file cannot have it): every line of the
    # name changed, each from its own line, as with_value does
    second = dataclasses.replace(pf.param("title"), prompt="Another title", lineno=99)
    twice = dataclasses.replace(pf, lines=pf.lines + (second,))
    one_by_one = twice
    for name, text in texts.items():
        one_by_one = one_by_one.with_value(name, text)
    assert twice.with_values(texts) == one_by_one
    assert format_par(twice.with_values(texts)) == format_par(one_by_one)


def test_read_par_missing_file(tmp_path):
    with pytest.raises(
        ParameterError, match=r"Unable to open parameter file .*nope\.par"
    ):
        read_par(tmp_path / "nope.par")


def test_write_par_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="Unable to write parameter file"):
        write_par(blocker / "x.par", parse_par(PAR))


# ----------------------------------------------------------------------------
# plist
# ----------------------------------------------------------------------------


def test_plist_layout_matches_ciao():
    # the dmlist example of the CIAO thread "Using Parameter Files"
    par = (
        'infile,f,a,"",,,"Input dataset/block specification"\n'
        'opt,s,a,"data",,,"Option"\n'
        'outfile,f,h,"",,,"Output file (optional)"\n'
        'rows,s,h,"",,,"Range of table rows to print (min:max)"\n'
        'verbose,i,h,0,0,5,"Debug Level(0-5)"\n'
        'mode,s,h,"ql",,,\n'
    )
    expected = (
        "\n"
        "Parameters for /home/username/cxcds_param4/dmlist.par\n"
        "\n"
        "        infile =                  Input dataset/block specification\n"
        "           opt = data             Option\n"
        "      (outfile = )                Output file (optional)\n"
        "         (rows = )                Range of table rows to print (min:max)\n"
        "      (verbose = 0)               Debug Level(0-5)\n"
        "         (mode = ql)\n"
    )
    assert (
        format_plist(parse_par(par), "/home/username/cxcds_param4/dmlist.par")
        == expected
    )


def test_plist_long_value_keeps_a_space_before_prompt():
    out = format_plist(
        parse_par('f,f,h,"a_very_long_file_name.fits",,,"Prompt"\n'), "x.par"
    )
    assert "(f = a_very_long_file_name.fits) Prompt" in out


def test_synopsis():
    assert tool_synopsis("stk_demo", parse_par(PAR)).startswith(
        "stk_demo infile outfile [loss] [speed]"
    )


# ----------------------------------------------------------------------------
# PFILES
# ----------------------------------------------------------------------------


def test_parse_pfiles_forms(tmp_path):
    assert parse_pfiles("/u;/s1:/s2") == ([Path("/u")], [Path("/s1"), Path("/s2")])
    assert parse_pfiles("/u1:/u2;/s") == ([Path("/u1"), Path("/u2")], [Path("/s")])
    assert parse_pfiles("/a:/b") == ([Path("/a"), Path("/b")], [Path("/a"), Path("/b")])
    assert parse_pfiles("~/p;/s", home="/home/me") == (
        [Path("/home/me/p")],
        [Path("/s")],
    )
    assert parse_pfiles(";/s") == ([], [Path("/s")])
    with pytest.raises(ParameterError, match="at most one ';'"):
        parse_pfiles("/a;/b;/c")


def test_user_copy_first_then_system(dirs):
    userdir, sysdir = dirs
    loc = find_par_file("stk_demo")
    assert loc.path == sysdir / "stk_demo.par"
    assert loc.learn_path == userdir / "stk_demo.par"
    write_par(userdir / "stk_demo.par", parse_par(PAR).with_value("verbose", "4"))
    loc = find_par_file("stk_demo")
    assert loc.path == userdir / "stk_demo.par"
    assert load(["a", "b"])["verbose"] == 4


def test_several_system_dirs(tmp_path, monkeypatch):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.mkdir()
    s2.mkdir()
    (s2 / "stk_demo.par").write_text(PAR)
    monkeypatch.setenv("PFILES", f"{tmp_path / 'u'};{s1}:{s2}")
    assert find_par_file("stk_demo").path == s2 / "stk_demo.par"


def test_not_found_lists_the_dirs(dirs):
    userdir, sysdir = dirs
    with pytest.raises(ParameterError) as exc:
        find_par_file("stk_nosuchtool")
    msg = str(exc.value)
    assert msg.startswith(
        "Unable to open parameter file for stk_nosuchtool. Looked in:"
    )
    assert str(userdir) in msg and str(sysdir) in msg


def test_default_dirs_when_pfiles_unset(tmp_path):
    source = REPO / "param"
    assert source in system_par_dirs()
    tools = sorted(source.glob("*.par"))
    if not tools:
        pytest.skip("no par file in the source tree yet")
    tool = tools[0].stem
    loc = find_par_file(tool, environ={"HOME": str(tmp_path)})
    assert loc.path == tools[0]
    assert loc.learn_path == tmp_path / "cxcds_param4" / f"{tool}.par"
    loc = find_par_file(
        tool, environ={"HOME": str(tmp_path), "UPARM": str(tmp_path / "up")}
    )
    assert loc.learn_path == tmp_path / "up" / f"{tool}.par"


def test_stale_user_copy_renamed_aside(dirs, caplog):
    userdir, sysdir = dirs
    user = userdir / "stk_demo.par"
    write_par(user, parse_par(PAR).with_value("verbose", "4"))
    older = time.time() - 7200
    os.utime(user, (older, older))  # older than the system file
    with caplog.at_level(logging.WARNING, logger="stk_astrometry.parameters"):
        params = load(["a", "b"])
    assert params["verbose"] == 1  # the system default
    assert params.path == sysdir / "stk_demo.par"
    assert not user.exists()
    aside = list(userdir.glob("stk_demo_*.par"))
    assert len(aside) == 1
    assert read_par(aside[0]).param("verbose").value == "4"
    assert "found possibly out of date user parameter file, renamed to" in caplog.text
    assert str(aside[0]) in caplog.text


def test_broken_user_copy_renamed_aside(dirs, caplog):
    userdir, _ = dirs
    (userdir / "stk_demo.par").write_text('infile,f,a,"unterminated\n')
    with caplog.at_level(logging.WARNING, logger="stk_astrometry.parameters"):
        assert load(["a", "b"])["verbose"] == 1
    assert "unreadable user parameter file" in caplog.text
    assert len(list(userdir.glob("stk_demo_*.par"))) == 1


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def test_defaults_typed(dirs):
    p = load(["in.fits", "out.fits"])
    assert isinstance(p, ParameterSet)
    assert p.tool == "stk_demo"
    assert p["infile"] == "in.fits" and p["outfile"] == "out.fits"
    assert p["max_shift"] == 5.0 and isinstance(p["max_shift"], float)
    assert p["match"] == 3 and isinstance(p["match"], int)
    assert p["match_radius"] is None  # INDEF
    assert p["force"] is False and p["clobber"] is False
    assert p["title"] == "A, B"
    assert p["tmpdir"] == "/scratch/work"
    assert p["outroot"] == "out.fits"  # the redirect
    assert p["mode"] == "ql"
    assert list(p) == list(parse_par(PAR).names)
    with pytest.raises(TypeError):
        p["infile"] = "x"  # read-only


def test_name_value_and_prefixes(dirs):
    p = load(["in=a.fits", "outf=b.fits", "max_s=2", "verb=0", "f_=0.5", "fo=yes"])
    assert (p["infile"], p["outfile"], p["max_shift"], p["verbose"]) == (
        "a.fits",
        "b.fits",
        2.0,
        0,
    )
    assert p["f_scale"] == 0.5 and p["force"] is True


def test_exact_name_wins_over_prefix(dirs):
    p = load(["a", "b", "match=5", "match_r=2"])
    assert p["match"] == 5 and p["match_radius"] == 2.0


def test_ambiguous_name_lists_candidates(dirs):
    with pytest.raises(ParameterError) as exc:
        load(["a", "b", "f=1"])
    assert (
        str(exc.value)
        == "Multiple matches for stk_demo parameter 'f', choose from: f_scale, force"
    )


def test_unknown_name_names_tool_and_name(dirs):
    with pytest.raises(
        ParameterError,
        match="stk_demo has no parameter 'clobbr' \\(did you mean clobber",
    ):
        load(["a", "b", "clobbr=yes"])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("fast", "fast"),
        ("fastest", "fastest"),
        ("fas", None),
        ("sl", "slow"),
        ("SLOW", "slow"),
    ],
)
def test_enum_value_abbreviation(dirs, given, expected):
    if expected is None:
        with pytest.raises(ParameterError) as exc:
            load(["a", "b", f"speed={given}"])
        assert (
            "Multiple matches for stk_demo parameter 'speed' value 'fas', choose from: fast, fastest"
            == str(exc.value)
        )
    else:
        assert load(["a", "b", f"speed={given}"])["speed"] == expected


def test_enum_abbreviation_is_learned_in_full(dirs):
    userdir, sysdir = dirs
    # make 'loss' hidden+learn, so that its value is learned at all
    (sysdir / "stk_demo.par").write_text(PAR.replace('loss,s,h,"cauchy"', 'loss,s,hl,"cauchy"'))
    load(["a", "b", "lo=hub"]).learn()
    assert read_par(userdir / "stk_demo.par").param("loss").value == "huber"


def test_enum_value_not_allowed(dirs):
    with pytest.raises(
        ParameterError,
        match="parameter 'loss' value 'l2' is not one of: linear\\|soft_l1",
    ):
        load(["a", "b", "loss=l2"])


def test_positional_fill_a_params_in_order(dirs):
    p = load(["x.fits", "y.fits"])
    assert (p["infile"], p["outfile"]) == ("x.fits", "y.fits")
    p = load(["x.fits", "outfile=z.fits"])
    assert (p["infile"], p["outfile"]) == ("x.fits", "z.fits")


def test_too_many_positionals(dirs):
    with pytest.raises(
        ParameterError, match="too many positional values: c.fits .*infile, outfile"
    ):
        load(["a.fits", "b.fits", "c.fits"])


def test_positional_and_named_conflict(dirs):
    with pytest.raises(ParameterError, match="'infile' given both by position"):
        load(["a.fits", "infile=b.fits"])


def test_given_twice_differently(dirs):
    with pytest.raises(ParameterError, match="'verbose' given twice"):
        load(["a", "b", "verbose=1", "verb=2"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", True),
        ("YES", True),
        ("y", True),
        ("true", True),
        ("True", True),
        ("1", True),
        ("on", True),
        ("no", False),
        ("N", False),
        ("false", False),
        ("0", False),
        ("off", False),
        ("OFF", False),
    ],
)
def test_boolean_spellings(dirs, text, expected):
    assert load(["a", "b", f"clobber={text}"])["clobber"] is expected


def test_plus_minus_flags(dirs):
    assert load(["a", "b", "clob+"])["clobber"] is True
    assert load(["a", "b", "clob+", "force-"])["force"] is False


def test_bad_boolean(dirs):
    with pytest.raises(
        ParameterError, match="parameter 'clobber' value 'maybe' is not a boolean"
    ):
        load(["a", "b", "clobber=maybe"])


def test_flag_on_non_boolean(dirs):
    with pytest.raises(
        ParameterError,
        match="'verbose\\+' sets a boolean, but parameter 'verbose' is of type 'i'",
    ):
        load(["a", "b", "verbose+"])


def test_to_bool():
    assert (
        to_bool(" Yes ") is True
        and to_bool("off") is False
        and to_bool("maybe") is None
    )


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("verbose=2.5", "parameter 'verbose' value '2.5' is not an integer"),
        ("verbose=x", "parameter 'verbose' value 'x' is not an integer"),
        ("verbose=7", "parameter 'verbose' value 7 is outside the allowed range 0:5"),
        ("verbose=-1", "parameter 'verbose' value -1 is outside the allowed range 0:5"),
        (
            "max_shift=abc",
            "parameter 'max_shift' value 'abc' is not a finite real number",
        ),
        (
            "max_shift=nan",
            "parameter 'max_shift' value 'nan' is not a finite real number",
        ),
        (
            "max_shift=11",
            "parameter 'max_shift' value 11 is outside the allowed range 0:10",
        ),
        ("match=0", "parameter 'match' value 0 is outside the allowed range 1:"),
        ("clobber=", "parameter 'clobber' value '' is not a boolean"),
    ],
)
def test_validation_errors(dirs, arg, message):
    with pytest.raises(ParameterError) as exc:
        load(["a", "b", arg])
    assert str(exc.value).startswith(f"stk_demo: {message}")


def test_indef_and_blank(dirs):
    p = load(["a", "b", "max_shift=INDEF", "verbose=indef", "title="])
    assert p["max_shift"] is None and p["verbose"] is None and p["title"] is None


def test_bad_bound_in_par_file(tmp_path):
    par = tmp_path / "bad.par"
    par.write_text('n,i,h,1,zero,,"N"\nmode,s,h,"ql",,,\n')
    with pytest.raises(
        ParameterError, match="parameter 'n' minimum 'zero' is not an integer"
    ):
        load_parameters("bad", [f"@@{par}"], interactive=False)


def test_numeric_enumeration(tmp_path):
    par = tmp_path / "e.par"
    par.write_text('bin,i,h,1,1|2|4,,"Binning"\nmode,s,h,"ql",,,\n')
    assert load_parameters("e", [f"@@{par}", "bin=4"], interactive=False)["bin"] == 4
    with pytest.raises(
        ParameterError, match="parameter 'bin' value '3' is not one of: 1\\|2\\|4"
    ):
        load_parameters("e", [f"@@{par}", "bin=3"], interactive=False)


# ----------------------------------------------------------------------------
# Environment and redirects
# ----------------------------------------------------------------------------


def test_env_expansion_forms():
    env = {"A": "/a", "B_2": "b"}
    assert expand_env("${A}/x/$B_2.fits", env) == "/a/x/b.fits"
    assert expand_env("cost $5 and $", env) == "cost $5 and $"
    with pytest.raises(
        ParameterError,
        match="parameter 'p' value '\\$NOPE/x' uses environment variable 'NOPE', which is not set",
    ):
        expand_env("$NOPE/x", env, tool="t", name="p")


def test_env_expanded_when_used_not_when_learned(dirs):
    userdir, _ = dirs
    p = load(
        ["a", "outfile=$STK_TEST_TMP/o.fits"],
        environ={**os.environ, "STK_TEST_TMP": "/other"},
    )
    assert p["outfile"] == "/other/o.fits" and p["tmpdir"] == "/other/work"
    assert dict(p.history_items())["outfile"] == "/other/o.fits"
    p.learn()
    learned = read_par(userdir / "stk_demo.par")
    assert learned.param("outfile").value == "$STK_TEST_TMP/o.fits"
    assert learned.param("tmpdir").value == "${STK_TEST_TMP}/work"


def test_env_unset_is_an_error(dirs, monkeypatch):
    monkeypatch.delenv("STK_TEST_TMP")
    with pytest.raises(
        ParameterError,
        match="'tmpdir' value '\\$\\{STK_TEST_TMP\\}/work' uses environment variable 'STK_TEST_TMP'",
    ):
        load(["a", "b"])


def test_redirect_follows_this_runs_value(dirs):
    assert load(["a", "b.fits"])["outroot"] == "b.fits"
    assert load(["a", "b", "outroot=)infile"])["outroot"] == "a"


def _redirect_par(tmp_path, lines):
    par = tmp_path / "r.par"
    par.write_text("".join(line + "\n" for line in lines) + 'mode,s,h,"ql",,,\n')
    return f"@@{par}"


def test_redirect_chain(tmp_path):
    at = _redirect_par(
        tmp_path,
        ['a,s,h,")b",,,""', 'b,s,h,")c",,,""', 'c,i,h,7,,,""', 'd,i,h,")c",,,""'],
    )
    p = load_parameters("r", [at], interactive=False)
    assert p["a"] == "7" and p["d"] == 7


def test_redirect_loop(tmp_path):
    at = _redirect_par(
        tmp_path, ['a,s,h,")b",,,""', 'b,s,h,")c",,,""', 'c,s,h,")a",,,""']
    )
    with pytest.raises(
        ParameterError, match="r: parameter redirect loop: a -> b -> c -> a"
    ):
        load_parameters("r", [at], interactive=False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (")nope", "redirects to 'nope', which is not a parameter of r"),
        (")other.par", "redirects to another tool's parameters are not supported"),
        ("))pwd", "(value of a command) is not supported"),
    ],
)
def test_redirect_errors(tmp_path, value, message):
    at = _redirect_par(tmp_path, [f'a,s,h,"{value}",,,""'])
    with pytest.raises(ParameterError, match="parameter 'a'") as exc:
        load_parameters("r", [at], interactive=False)
    assert message in str(exc.value)


# ----------------------------------------------------------------------------
# @@ files
# ----------------------------------------------------------------------------


def test_at_at_par_file_used_and_learned_into(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "PFILES", f"{tmp_path / 'nouser'};{tmp_path / 'nosys'}"
    )  # no lookup
    monkeypatch.setenv("STK_TEST_TMP", "/t")
    own = tmp_path / "mine.par"
    own.write_text(PAR.replace('"cauchy"', '"huber"'))
    p = load_parameters(
        "stk_demo", [f"@@{own}", "a", "b", "verbose=2"], interactive=False
    )
    assert p["loss"] == "huber" and p["verbose"] == 2
    assert p.path == own and p.learn_path == own
    p.learn()
    assert read_par(own).param("infile").value == "a"  # learned into the @@ file
    assert read_par(own).param("verbose").value == "1"  # hidden: not learned
    assert not (tmp_path / "nouser").exists()


def test_at_at_par_missing(dirs):
    with pytest.raises(
        ParameterError, match="stk_demo: Unable to open parameter file nope.par"
    ):
        load(["@@nope.par"])


def test_two_at_at_par_files(dirs, tmp_path):
    with pytest.raises(ParameterError, match="more than one @@ parameter file"):
        load(["@@a.par", "@@b.par"])


def test_yaml_flat_and_precedence(dirs, tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text(
        "infile: y_in.fits\noutfile: y_out.fits\nverbose: 3\nclobber: yes\nmax_shift: 2\nloss: hub\n"
    )
    p = load([f"@@{y}", "verbose=4"])
    assert p["infile"] == "y_in.fits" and p["outfile"] == "y_out.fits"
    assert p["verbose"] == 4  # command line beats YAML
    assert p["clobber"] is True and p["max_shift"] == 2.0 and p["loss"] == "huber"
    assert p["speed"] == "fast"  # par file default


def test_yaml_keyed_by_tool(dirs, tmp_path):
    y = tmp_path / "chain.yml"
    y.write_text(
        "stk_match:\n  verbose: 0\n"
        "stk_demo:\n  infile: in.fits\n  outfile: out.fits\n  match_radius: 1.5\n  title: null\n"
        "stk_xfm:\n  loss: linear\n"
    )
    p = load([f"@@{y}"])
    assert (p["infile"], p["match_radius"], p["title"], p["verbose"]) == (
        "in.fits",
        1.5,
        None,
        1,
    )


def test_yaml_keyed_by_other_tools_gives_nothing(dirs, tmp_path):
    y = tmp_path / "chain.yaml"
    y.write_text("stk_match:\n  verbose: 0\nstk_xfm:\n  nonsense: 1\n")
    p = load([f"@@{y}", "a", "b"])
    assert p["verbose"] == 1 and p.explicit == {"infile": "a", "outfile": "b"}


def test_yaml_list_is_a_stack(dirs, tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text("infile: [a.fits, b.fits]\noutfile: o\n")
    assert load([f"@@{y}"])["infile"] == "a.fits,b.fits"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "!!python/object/apply:os.system ['echo hacked']\n",
            "only plain YAML is accepted",
        ),
        ("infile: !!python/object:builtins.object {}\n", "only plain YAML is accepted"),
        ("- a\n- b\n", "must hold a mapping"),
        (
            "title: yes\n",
            "parameter 'title' is of type 's' but YAML read a boolean (True); quote the value",
        ),
        ("verbose: 2.5\n", "parameter 'verbose' value 2.5 is not an integer"),
        ("nonsense: 1\n", "stk_demo has no parameter 'nonsense'"),
        ("stk_demo:\n  verbose: 1\nverbose: 2\n", "mixes tool sections"),
        ("verbose: {a: 1}\nx: 1\n", "mixes tool sections"),
        ("infile: [a, [b]]\n", "is not a scalar"),
        ("infile: 'unterminated\n", "only plain YAML"),
    ],
)
def test_yaml_errors(dirs, tmp_path, content, message):
    y = tmp_path / "p.yaml"
    y.write_text(content)
    with pytest.raises(ParameterError) as exc:
        load([f"@@{y}", "a", "b"])
    assert message in str(exc.value)
    assert str(y) in str(exc.value) or "no parameter" in str(exc.value)


def test_yaml_missing_file(dirs):
    with pytest.raises(
        ParameterError, match="Unable to open YAML parameter file nope.yaml"
    ):
        load(["@@nope.yaml"])


def test_yaml_is_imported_lazily():
    code = (
        "import sys; import stk_astrometry.parameters; "
        "print(sorted(m for m in ('yaml', 'numpy', 'astropy', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "lib")},
        timeout=60,
    )
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------
# Missing values: prompting, or failing at once without a terminal
# ----------------------------------------------------------------------------


def test_missing_value_without_terminal_fails_at_once(dirs):
    with pytest.raises(ParameterError) as exc:
        load([])
    assert str(exc.value) == (
        "stk_demo: parameter 'infile' has no value and stdin is not a terminal; give infile=..."
    )


def test_missing_value_with_mode_h(dirs):
    with pytest.raises(
        ParameterError,
        match="parameter 'outfile' has no value and mode=h, so no prompting",
    ):
        load(
            ["a", "mode=h"],
            interactive=True,
            prompt_func=lambda q: pytest.fail("prompted"),
        )


def test_prompt_text_and_answers_learned(dirs):
    userdir, _ = dirs
    asked = []
    answers = iter(["in.fits", "out.fits"])

    def prompt(question):
        asked.append(question)
        return next(answers)

    p = load([], interactive=True, prompt_func=prompt)
    assert asked == ["Input matched-pairs file (): ", "Output file (): "]
    assert (p["infile"], p["outfile"]) == ("in.fits", "out.fits")
    p.learn()
    learned = read_par(userdir / "stk_demo.par")
    assert (
        learned.param("infile").value == "in.fits"
        and learned.param("outfile").value == "out.fits"
    )
    # next time the learned values are offered as the prompt defaults (Enter keeps them)
    asked.clear()
    p = load([], interactive=True, prompt_func=lambda q: asked.append(q) or "")
    assert asked == ["Input matched-pairs file (in.fits): ", "Output file (out.fits): "]
    assert p["infile"] == "in.fits"
    # but without a terminal a learned value is never reused silently (a script that drops
    # an argument must not overwrite the previous run's output) ...
    with pytest.raises(ParameterError, match="'infile' was not given .* learned value 'in.fits'"):
        load([], interactive=False)
    # ... unless the user asks for the file's values with mode=h
    assert load(["mode=h"], interactive=False)["infile"] == "in.fits"


def test_prompt_repeats_on_invalid(dirs, tmp_path, capsys):
    par = tmp_path / "q.par"
    par.write_text('n,i,a,,0,5,"How many"\nok,b,a,,,,"Sure"\nmode,s,h,"ql",,,\n')
    at = f"@@{par}"
    answers = iter(["9", "x", "-1"])
    with pytest.raises(
        ParameterError, match="no valid value for parameter 'n' after 3 tries"
    ):
        load_parameters(
            "q", [at], interactive=True, prompt_func=lambda q: next(answers)
        )
    err = capsys.readouterr().err
    assert "value 9 is outside the allowed range 0:5" in err
    assert "value 'x' is not an integer" in err
    answers = iter(["9", "4", "", "perhaps", "y"])
    p = load_parameters(
        "q", [at], interactive=True, prompt_func=lambda q: next(answers)
    )
    assert p["n"] == 4 and p["ok"] is True
    assert "parameter 'ok' value '' is not a boolean" in capsys.readouterr().err


def test_prompt_blank_answer_kept_where_blank_is_allowed(dirs, tmp_path):
    par = tmp_path / "q.par"
    par.write_text(
        'outdir,f,a,"",,,"Output directory (blank: in place)"\nmode,s,h,"ql",,,\n'
    )
    p = load_parameters("q", [f"@@{par}"], interactive=True, prompt_func=lambda q: "")
    assert p["outdir"] is None
    # without a terminal, an explicitly blank value is accepted, a missing one is not
    assert (
        load_parameters("q", [f"@@{par}", "outdir="], interactive=False)["outdir"]
        is None
    )
    with pytest.raises(ParameterError, match="'outdir' has no value"):
        load_parameters("q", [f"@@{par}"], interactive=False)


def test_no_prompt_before_a_command_line_error(dirs):
    with pytest.raises(ParameterError, match="'verbose' value 9 is outside"):
        load(["verbose=9"], interactive=True, prompt_func=lambda q: pytest.fail("asked"))


def test_prompt_end_of_input(dirs):
    with pytest.raises(
        ParameterError, match="no answer for parameter 'infile' \\(end of input\\)"
    ):
        load([], interactive=True, prompt_func=lambda q: None)


def test_q_mode_always_asked_when_interactive(tmp_path):
    par = tmp_path / "q.par"
    par.write_text('level,r,q,0.5,0,1,"Level"\nmode,s,h,"ql",,,\n')
    at = f"@@{par}"
    asked = []
    p = load_parameters(
        "q", [at], interactive=True, prompt_func=lambda q: asked.append(q) or ""
    )
    assert asked == ["Level (0.5): "] and p["level"] == 0.5  # Enter keeps the value
    p = load_parameters("q", [at], interactive=True, prompt_func=lambda q: "0.25")
    assert p["level"] == 0.25
    p = load_parameters(
        "q",
        [at, "level=0.75"],
        interactive=True,
        prompt_func=lambda q: pytest.fail("asked"),
    )
    assert p["level"] == 0.75
    # a q parameter is always asked: without a terminal it must be given
    with pytest.raises(ParameterError, match="'level' was not given and stdin is not a terminal"):
        load_parameters("q", [at], interactive=False)


def test_interactive_default_follows_stdin(dirs, monkeypatch):
    class NotATty:
        def isatty(self):
            return False

    monkeypatch.setattr(sys, "stdin", NotATty())
    with pytest.raises(ParameterError, match="stdin is not a terminal"):
        load_parameters("stk_demo", [])


def test_script_without_terminal_never_hangs(dirs, tmp_path):
    """A real process with stdin a pipe: must fail at once with the CIAO error line."""
    code = (
        "import sys\n"
        "from stk_astrometry.runner import run_tool\n"
        "sys.exit(run_tool('stk_demo', sys.argv[1:], lambda p: 0, description='demo'))\n"
    )
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO / "lib")},
        timeout=60,
    )
    assert time.monotonic() - start < 30
    assert out.returncode == 1
    assert (
        "# stk_demo (stk_astrometry 0.1.0): ERROR parameter 'infile' has no value and stdin is not a terminal"
        in out.stderr
    )
    assert "Traceback" not in out.stderr


# ----------------------------------------------------------------------------
# ParameterSet: history, plist, learn, unlearn, describe
# ----------------------------------------------------------------------------


def test_history_items(dirs):
    p = load(["in.fits", "out.fits", "clob+", "max_shift=2.50"])
    items = p.history_items()
    assert [n for n, _ in items] == [n for n in parse_par(PAR).names if n != "mode"]
    h = dict(items)
    assert h["clobber"] == "yes" and h["force"] == "no"
    assert h["match_radius"] == "INDEF"
    assert h["max_shift"] == "2.50"  # as typed
    assert h["title"] == "A, B"  # unquoted
    assert h["outroot"] == "out.fits" and h["tmpdir"] == "/scratch/work"


def test_parameter_set_plist_shows_this_run(dirs):
    _userdir, sysdir = dirs
    out = load(["in.fits", "out.fits", "verbose=3"]).format_plist()
    assert f"Parameters for {sysdir / 'stk_demo.par'}" in out
    assert "        infile = in.fits          Input matched-pairs file" in out
    assert "      (verbose = 3)               Amount of tool chatter (0-5)" in out


def test_learn_follows_the_mode_letters(dirs):
    userdir, sysdir = dirs
    par = PAR.replace("verbose,i,h,1,", "verbose,i,hl,1,")
    (sysdir / "stk_demo.par").write_text(par)
    p = load(["in.fits", "out.fits", "clob+", "verb=3"])
    assert p.learn() == userdir / "stk_demo.par"
    learned = (userdir / "stk_demo.par").read_text()
    expected = (
        par.replace('infile,f,a,""', 'infile,f,a,"in.fits"')
        .replace('outfile,f,a,""', 'outfile,f,a,"out.fits"')
        .replace("verbose,i,hl,1,", "verbose,i,hl,3,")
    )
    # a-mode (effective ql) and hl values are learned; plain hidden clobber is not
    assert learned == expected
    assert (sysdir / "stk_demo.par").read_text() == par  # system file untouched


def test_hidden_clobber_is_not_learned_into_the_next_run(dirs):
    load(["in.fits", "out.fits", "clob+"]).learn()
    assert load(["in.fits", "out.fits"])["clobber"] is False


def test_mode_h_on_the_command_line_learns_no_a_parameter(dirs):
    userdir, _ = dirs
    load(["in.fits", "out.fits", "mode=h"]).learn()
    learned = read_par(userdir / "stk_demo.par")
    assert learned.param("infile").value == "" and learned.param("mode").value == "ql"


def test_learn_nothing_changed_copies_then_leaves_alone(dirs):
    userdir, _ = dirs
    load(["in=a", "outf=b"]).learn()
    user = userdir / "stk_demo.par"
    old = time.time() - 60
    os.utime(user, (old, old))
    before = user.stat().st_mtime
    p = load(["mode=h"])
    assert p.path == user
    assert p.learn() == user
    assert user.stat().st_mtime == before  # not rewritten


def test_learn_first_run_creates_user_dir(tmp_path, monkeypatch, dirs):
    _userdir, sysdir = dirs
    newdir = tmp_path / "fresh" / "cxcds_param4"
    monkeypatch.setenv("PFILES", f"{newdir};{sysdir}")
    load(["a", "b"]).learn()
    assert read_par(newdir / "stk_demo.par").param("infile").value == "a"


def test_learn_failure_is_a_warning(dirs, tmp_path, monkeypatch, caplog):
    _userdir, sysdir = dirs
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("PFILES", f"{blocker / 'sub'};{sysdir}")
    p = load(["a", "b"])
    with caplog.at_level(logging.WARNING, logger="stk_astrometry.parameters"):
        assert p.learn() is None
    assert "stk_demo parameters not learned" in caplog.text


def test_learn_without_user_dir_warns(dirs, monkeypatch, caplog):
    _userdir, sysdir = dirs
    monkeypatch.setenv("PFILES", f";{sysdir}")
    with caplog.at_level(logging.WARNING, logger="stk_astrometry.parameters"):
        assert load(["a", "b"]).learn() is None
    assert "no user parameter directory" in caplog.text


def test_unlearn(dirs):
    userdir, _ = dirs
    load(["a", "b", "verbose=5"]).learn()
    assert load(["mode=h"])["infile"] == "a"
    assert unlearn("stk_demo") == userdir / "stk_demo.par"
    assert not (userdir / "stk_demo.par").exists()
    assert unlearn("stk_demo") is None
    with pytest.raises(ParameterError, match="stdin is not a terminal"):
        load([])


def test_unlearn_refuses_to_delete_the_system_file(dirs, monkeypatch):
    _userdir, sysdir = dirs
    monkeypatch.setenv("PFILES", str(sysdir))
    with pytest.raises(ParameterError, match="is also the system file"):
        unlearn("stk_demo")
    assert (sysdir / "stk_demo.par").exists()


def test_describe_tool_shows_system_defaults(dirs):
    _userdir, sysdir = dirs
    load(["a", "b", "verbose=5"]).learn()
    out = describe_tool("stk_demo")
    assert f"Parameters for {sysdir / 'stk_demo.par'}" in out
    assert "(verbose = 1)" in out
    with pytest.raises(
        ParameterError, match="Unable to open parameter file for stk_nosuch"
    ):
        describe_tool("stk_nosuch")


def test_every_shipped_par_file_round_trips_and_loads(tmp_path):
    files = sorted((REPO / "param").glob("*.par"))
    for path in files:
        text = path.read_text()
        pf = parse_par(text, source=str(path))
        assert format_par(pf) == text
        assert pf.names[-1] == "mode", f"{path}: the last parameter must be mode"
        required = [f"{p.name}=x" for p in pf.params if p.mode == "a"]
        # every default must type-check (required ones given a dummy value)
        load_parameters(
            path.stem,
            required,
            interactive=False,
            environ={**os.environ, "HOME": str(tmp_path)},
        )


# ----------------------------------------------------------------------------
# @@ files of another tool, YAML sections of unknown tools
# ----------------------------------------------------------------------------


def test_at_at_par_file_of_another_tool_is_a_clean_error(tmp_path):
    other = tmp_path / "xfm.par"
    other.write_text((REPO / "param" / "stk_xfm.par").read_text())
    with pytest.raises(ParameterError, match=r"is not a parameter file for stk_match \(missing: .*detfile"):
        load_parameters("stk_match", [f"@@{other}", "mode=h"], interactive=False)


def test_at_at_par_file_copy_of_the_tool_is_accepted(tmp_path):
    own = tmp_path / "m.par"
    own.write_text((REPO / "param" / "stk_match.par").read_text())
    p = load_parameters("stk_match", [f"@@{own}", "d.fits", "g.fits", "o.fits"], interactive=False)
    assert p["detfile"] == "d.fits"


def test_yaml_section_for_an_unknown_tool_is_an_error(tmp_path):
    y = tmp_path / "chain.yaml"
    y.write_text("stk_mtach:\n  max_pm: 5\nstk_xfm:\n  loss: huber\n")
    with pytest.raises(ParameterError, match=r"sections for unknown tools \(stk_mtach\)"):
        load_parameters("stk_xfm", [f"@@{y}", "a", "b"], interactive=False)


def test_yaml_empty_section_reads_as_no_values(tmp_path):
    y = tmp_path / "chain.yaml"
    y.write_text("stk_match:\nstk_xfm:\n  loss: huber\n")
    p = load_parameters("stk_match", [f"@@{y}", "d", "g", "o"], interactive=False)
    assert p["max_pm"] == 50
    assert load_parameters("stk_xfm", [f"@@{y}", "a", "b"], interactive=False)["loss"] == "huber"
    alone = tmp_path / "alone.yaml"  # a file with nothing but an empty section for the tool
    alone.write_text("stk_match:\n")
    assert load_parameters("stk_match", [f"@@{alone}", "d", "g", "o"], interactive=False)["max_pm"] == 50
