"""Property-based tests of the .par parser/formatter (hypothesis).

Generated valid par files must come back byte-for-byte, parse to the values
they were built from, and give back any value set into them.
"""

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stk_astrometry.errors import ParameterError
from stk_astrometry.parameters import format_par, load_parameters, parse_par, to_bool

# Anything that may sit inside a field: no line breaks, no quotes, no commas
# (those are added by the field strategies below).  Odd characters included.
_PLAIN = st.text(
    alphabet=st.characters(
        blacklist_characters="\n\r\"',", blacklist_categories=("Cs",)
    ),
    max_size=12,
)
_WS = st.text(alphabet=" \t", max_size=2)
_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
_TYPES = st.sampled_from(["b", "i", "r", "s", "f", "fr", "fw", "fe", "fn", "S", "B"])
_MODES = st.sampled_from(["a", "h", "q", "l", "hl", "ql", "H"])


@st.composite
def field(draw, *, allow_comma=False):
    """(raw field text, expected parsed value)."""
    style = draw(st.sampled_from(["", '"', "'"]))
    lead, trail = draw(_WS), draw(_WS)
    if style == "":
        text = draw(_PLAIN)
        if allow_comma and draw(st.booleans()):
            text = text + ", " + draw(_PLAIN)
        return lead + text + trail, (lead + text + trail).strip(" \t")
    inner = draw(
        st.text(
            alphabet=st.characters(
                blacklist_characters="\n\r" + style, blacklist_categories=("Cs",)
            ),
            max_size=12,
        )
    )
    return f"{lead}{style}{inner}{style}{trail}", inner


@st.composite
def param_line(draw, name):
    """(line text, dict of expected values)."""
    ptype = draw(_TYPES)
    mode = draw(_MODES)
    nfields = draw(st.sampled_from([3, 4, 5, 6, 7, 7, 7]))
    raws = [draw(_WS) + name + draw(_WS), ptype, mode]
    expected = {"name": name, "type": ptype.lower(), "mode": mode.lower()}
    for key in ("value", "min", "max", "prompt")[: nfields - 3]:
        raw, value = draw(field(allow_comma=(key == "prompt")))
        raws.append(raw)
        expected[key] = value
    return ",".join(raws), expected


@st.composite
def par_text(draw):
    """(text of a valid par file, [expected values of each parameter])."""
    names = draw(st.lists(_NAMES, min_size=1, max_size=8, unique=True))
    chunks = []
    expected = []
    for name in names:
        for _ in range(draw(st.integers(0, 1))):
            kind = draw(st.sampled_from(["comment", "blank"]))
            if kind == "comment":
                chunks.append(draw(_WS) + "#" + draw(_PLAIN | st.text(max_size=0)))
            else:
                chunks.append(draw(_WS))
        line, exp = draw(param_line(name))
        chunks.append(line)
        expected.append(exp)
    eols = draw(
        st.lists(
            st.sampled_from(["\n", "\r\n"]), min_size=len(chunks), max_size=len(chunks)
        )
    )
    if draw(st.booleans()):
        eols[-1] = ""
    text = "".join(c + e for c, e in zip(chunks, eols, strict=True))
    return text, expected


@settings(max_examples=200, deadline=None)
@given(par_text())
def test_round_trip_byte_for_byte(case):
    text, _expected = case
    assert format_par(parse_par(text)) == text


@settings(max_examples=200, deadline=None)
@given(par_text())
def test_parsed_values_are_what_was_written(case):
    text, expected = case
    params = parse_par(text).params
    assert len(params) == len(expected)
    for p, exp in zip(params, expected, strict=True):
        for key, value in exp.items():
            assert getattr(p, key) == value, key


_STORABLE = st.text(
    alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
    max_size=15,
).filter(lambda t: not ("'" in t and '"' in t))


@settings(max_examples=200, deadline=None)
@given(par_text(), st.data())
def test_set_format_parse_gives_the_value_back(case, data):
    text, _expected = case
    pf = parse_par(text)
    name = data.draw(st.sampled_from(pf.names))
    new_value = data.draw(_STORABLE)
    out = format_par(pf.with_value(name, new_value))
    again = parse_par(out)
    assert again.param(name).value == new_value
    # every other line is untouched
    old_lines = [line.render() for line in pf.lines]
    new_lines = [line.render() for line in again.lines]
    differ = [
        i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b
    ]
    assert len(differ) <= 1
    for p in pf.params:
        if p.name != name:
            assert again.param(p.name).value == p.value


@settings(max_examples=100, deadline=None)
@given(_PLAIN, st.sampled_from(["'\"", "\"'", "\n", "\r"]), _PLAIN)
def test_unstorable_value_is_a_clean_error(head, bad, tail):
    value = head + bad + tail
    with pytest.raises(ParameterError):
        parse_par("a,s,h,x,,,p\n").with_value("a", value)


_DEMO = """\
infile,f,a,"",,,"Input"
count,i,h,3,-100,100,"Count"
level,r,h,0.5,-1e6,1e6,"Level"
flag,b,h,no,,,"Flag"
method,s,h,"alpha",alpha|alphabet|beta|gamma,,"Method"
mode,s,h,"ql",,,
"""


@pytest.fixture(scope="module")
def demo_par(tmp_path_factory):
    path = tmp_path_factory.mktemp("props") / "demo.par"
    path.write_text(_DEMO)
    return f"@@{path}"


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(-100, 100),
    level=st.floats(-1e6, 1e6, allow_nan=False),
    flag=st.sampled_from(
        ["yes", "no", "Y", "n", "TRUE", "false", "on", "Off", "1", "0"]
    ),
)
def test_typed_values_come_back(demo_par, count, level, flag):
    p = load_parameters(
        "demo",
        [demo_par, "x", f"count={count}", f"lev={level!r}", f"fl={flag}"],
        interactive=False,
    )
    assert p["count"] == count and p["level"] == level and p["flag"] is to_bool(flag)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["alpha", "alphabet", "beta", "gamma"]), st.data())
def test_any_unique_prefix_of_a_choice_resolves(demo_par, choice, data):
    others = [c for c in ("alpha", "alphabet", "beta", "gamma") if c != choice]
    lengths = [
        n
        for n in range(1, len(choice) + 1)
        if not any(o.startswith(choice[:n]) for o in others) or choice[:n] == choice
    ]
    n = data.draw(st.sampled_from(lengths))
    p = load_parameters(
        "demo", [demo_par, "x", f"meth={choice[:n]}"], interactive=False
    )
    assert p["method"] == choice


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=5))
def test_unknown_or_ambiguous_names_are_errors_never_crashes(demo_par, word):
    names = ["infile", "count", "level", "flag", "method", "mode"]
    matches = [n for n in names if n.startswith(word)]
    argv = [demo_par, "x", f"{word}=1"]
    if len(matches) == 1 or word in names:
        return
    with pytest.raises(ParameterError) as exc:
        load_parameters("demo", argv, interactive=False)
    if matches:
        assert str(exc.value).startswith(
            f"Multiple matches for demo parameter '{word}', choose from:"
        )
    else:
        assert f"demo has no parameter '{word}'" in str(exc.value)
