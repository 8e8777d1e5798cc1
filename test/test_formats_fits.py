"""stk_astrometry.formats._fits: the FITS table writer and reader every file module uses --
the fast (fitsio) path against astropy's, header cards, long keywords, column descriptions."""

import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry.api import _Run
from stk_astrometry.errors import OutputError
from stk_astrometry.formats import pairs, transform
from stk_astrometry.tableio import read_table

from formats_testlib import (
    HIST,
    components,
    keywords,
    make_pairs,
)


@pytest.fixture(autouse=True)
def _card_memo_cleared():
    """Each test sees the card formatter itself, not text cards remembered by format_card's
    memo from earlier tests in the same process (which would hide a formatter fault)."""
    from stk_astrometry.formats import _fits

    _fits._text_card.cache_clear()
    _fits._number_card.cache_clear()
    for memo in (_fits._column_cards, _fits._name_kept, _fits._row_dtype, _fits._column_type,
                 _fits._fields_dtype, _fits._history_text):
        memo.cache_clear()
    _fits._CARD_IMAGES.clear()


def test_columns_carry_descriptions_and_ucds(tmp_path):
    """TCOMMn/TUCDn on every column the formats write (TOPCAT/STILTS show them)."""
    p = make_pairs(np.random.default_rng(2))
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    comps = components()
    transform.write_transform(tmp_path / "x.fits", comps, keywords(comps[0]), HIST,
                              instrument="HRC", ra_ref=10.0, dec_ref=-12.5)
    for path in (tmp_path / "p.fits", tmp_path / "x.fits"):
        with fits.open(path) as hdul:
            for hdu in hdul[1:]:
                h = hdu.header
                for i in range(1, h["TFIELDS"] + 1):
                    assert h.get(f"TCOMM{i}"), (path.name, hdu.name, h[f"TTYPE{i}"])
                    assert len(h.comments[f"TCOMM{i}"]) == 0
    with fits.open(tmp_path / "p.fits") as hdul:
        h = hdul["GAIA_PAIRS"].header
        ucd = {h[f"TTYPE{i}"]: h.get(f"TUCD{i}") for i in range(1, h["TFIELDS"] + 1)}
        assert ucd["ref_ra"] == "pos.eq.ra" and ucd["sep"] == "pos.angDistance"
    with fits.open(tmp_path / "x.fits") as hdul:
        h = hdul["STKXFM"].header
        names = {h[f"TTYPE{i}"]: i for i in range(1, h["TFIELDS"] + 1)}
        assert "corrected xi" in h[f"TCOMM{names['d_xi']}"]
        assert f"TUCD{names['a11']}" not in h          # no UCD fits a matrix element


def test_readers_keep_empty_and_long_string_keywords(tmp_path):
    """fitsio's parsed headers drop KEY = '' and cut CONTINUE strings; the readers must not."""
    p = make_pairs(np.random.default_rng(9))
    long_text = ("a long value " * 10).strip()     # FITS strings lose trailing blanks
    keys = tuple(k if k[0] != "STACKID" else ("STACKID", "", "detect_stack_id")
                 for k in p.keywords) + (("SEPNOTE", long_text, ""),)
    p = pairs.Pairs(**{**p.__dict__, "keywords": keys, "stackid": ""})
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    q = pairs.read_pairs(tmp_path / "p.fits")
    assert q.keywords == keys
    assert ("STACKID", "", "detect_stack_id") in q.cards["GAIA_PAIRS"]
    # the catalog reader (tableio) too
    h = fits.Header()
    h["STACKID"] = ""
    h["NOTE"] = long_text
    cols = [fits.Column(name="ra", format="D", array=[1.0])]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, header=h)]).writeto(
        tmp_path / "t.fits")
    tin = read_table(str(tmp_path / "t.fits"), param="x")
    assert tin.header["STACKID"] == "" and tin.header["NOTE"] == long_text


def test_format_card_is_astropys_card_image():
    """The fast writer's cards are byte for byte what astropy writes."""
    import warnings

    from astropy.io.fits import Card

    from stk_astrometry.formats._fits import format_card

    rng = np.random.default_rng(11)
    values = [None, "", "a", "x" * 30, "o'k", True, False, 0, -5, 2**40, 1.5, -0.0, 1e-300,
              189.12345678901235, 1e20, 3.0, np.float64(2.5), np.int32(7), np.bool_(True)]
    values += list(rng.normal(size=200) * 10.0 ** rng.integers(-20, 20, 200))
    for value in values:
        for comment in ("", "a comment", "[arcsec] applied shift in xi", "c" * 60):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")       # astropy warns when it cuts a comment
                want = Card("KEY", value, comment).image
            assert format_card("KEY", value, comment) == want, (value, comment)
    for value in (62.2, -89.99999999999999, 1e-5, 0.0, 12):
        for comment in ("", "[deg] stack tangent point Dec"):
            assert (format_card("DEC_STACK", value, comment)
                    == Card("HIERARCH DEC_STACK", value, comment).image), value


def test_format_cards_remembered_are_astropys_cards_again():
    # format_card remembers text cards (issue 11): asked again -- also after equal-comparing
    # numbers (0, 0.0, -0.0, False) -- every card is still astropy's
    from astropy.io.fits import Card

    from stk_astrometry.formats._fits import format_card

    values = ["", "a", "0", "o'k", "x" * 40, 0, 0.0, -0.0, False, 1, 1.0, True]
    for _ in range(2):
        for value in values:
            for comment in ("", "a comment"):
                assert format_card("KEY", value, comment) == Card("KEY", value, comment).image


def test_history_records_of_a_write_are_formatted_once_per_counter():
    from stk_astrometry.fitsutil import history_records
    from stk_astrometry.formats._fits import _records_memo

    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs["start"])
        return history_records(*args, **kwargs)

    items = [("infile", "a.fits"), ("outfile", "b" * 80)]
    memo = _records_memo(counted)
    kw = dict(when="2026-01-02T03:04:05", stacks={})
    for start in (1, 1, 4, 1, 4):
        assert memo("stk_x", items, start=start, **kw) == history_records("stk_x", items,
                                                                          start=start, **kw)
    assert calls == [1, 4]


def test_appended_text_cards_are_the_ones_fitsio_writes(tmp_path):
    """The column descriptions (TCOMMn, TUCDn) appended as card images are byte for byte the
    cards ``hdu.write_key(name, value, " ")`` writes, for every length (issue 11)."""
    import fitsio

    from stk_astrometry.formats._fits import _append_text_card

    values = ["x" * n for n in range(0, 75)] + ["it's", "meta.id", "pos.eq.ra;meta.main",
                                                "a\tb", "caf\u00e9", " lead and trail "]
    images = {}
    for how in ("write_key", "fast"):
        path = tmp_path / f"{how}.fits"
        with fitsio.FITS(str(path), "rw", clobber=True) as fh:
            fh.create_table_hdu(dtype=np.dtype([("a", "f8")]), extname="T")
            hdu = fh[-1]
            for i, value in enumerate(values):
                if how == "write_key":
                    hdu.write_key(f"TCOMM{i}", value, " ")
                else:
                    _append_text_card(hdu._FITS, hdu.get_extnum() + 1, f"TCOMM{i}", value)
        raw = path.read_bytes()
        cards = [raw[i:i + 80] for i in range(0, len(raw), 80)]
        images[how] = [c for c in cards if not c.startswith((b"CHECKSUM", b"DATASUM"))]
    assert images["fast"] == images["write_key"]


def _specs_of_every_kind():
    from stk_astrometry.formats._fits import HduSpec

    cols = {"region_id": np.array([1, 2, 3], dtype=np.int32), "ref_id": np.array([5, 2**40, 7]),
            "ra": np.array([1.5, np.nan, -2.25]), "f": np.array([1, 2, 3], dtype=np.float32),
            "flag": np.array([True, False, True]), "name": np.array(["a", "bcd", ""]),
            "small": np.array([1, 2, 3], dtype=np.int16), "u8": np.array([1, 2, 3], dtype=np.uint8),
            "vec": np.arange(6, dtype=np.int32).reshape(3, 2)}
    return [HduSpec(None, keys=(("CONTENT", "STKTEST", "a test"), ("DEC_STACK", -12.5, "[deg] dec"),
                                ("NOTE", "x" * 80, "long"), ("UNDEF", None, "undefined"),
                                ("FLAG", True, ""), ("N", 5, "count"),
                                ("LONGCOMM", "v" * 40, "c" * 40), ("HISTNUM", "junk", ""),
                                ("CREATOR", "someone else", "old"), ("DATE", "1999", "old"))),
            HduSpec("TAB", cols, units={"ra": "deg", "f": "arcsec", "flag": ""},
                    formats={"ref_id": "K"},
                    keys=(("STACKID", "s", "id"), ("DEC_STACK", 1.0, ""),
                          ("CHECKSUM", "stale", ""), ("DATASUM", "1", "")),
                    cards=(("HISTNUM", 4, "n"), ("EXTRA", 1.5, "copied"), ("TFORM1", "K", ""),
                           ("DTYPE7", "RA_LONGER", "x"), ("DVAL7", 2.0, "")),
                    column_info={"ra": ("Right ascension", "pos.eq.ra"), "f": ("flux", ""),
                                 "name": ("", "meta.id"), "small": ("it's quoted", "")}),
            HduSpec("EMPTY", {"a": np.zeros(0), "b": np.zeros(0, dtype=np.int32),
                              "s": np.array([], dtype="U4")},
                    drop_long_comments=False, keys=(("LONGCOMM", "v" * 40, "c" * 40),))]


def _file_cards(path):
    """Per HDU: its cards without CHECKSUM/DATASUM (short names in order; HIERARCH apart), its
    data bytes; the checksums are verified."""
    out = []
    with fits.open(path, checksum=True) as hdul:
        for hdu in hdul:
            cards = [(c.keyword, "nan" if isinstance(c.value, float) and c.value != c.value
                      else c.value, c.comment) for c in hdu.header.cards
                     if c.keyword not in ("CHECKSUM", "DATASUM")]
            assert "CHECKSUM" in hdu.header and "DATASUM" in hdu.header
            out.append(([c for c in cards if len(c[0]) <= 8], [c for c in cards if len(c[0]) > 8],
                        None if hdu.data is None else hdu.data.tobytes()))
    return out


def test_fast_writer_writes_what_astropys_writer_writes(tmp_path, monkeypatch):
    """write_fits_fast (fitsio) and its astropy fallback: the same cards, values, comments and
    data, HISTORY continuing a copied HISTNUM, stale stamps replaced, valid checksums."""
    from stk_astrometry import fitsutil
    from stk_astrometry.formats import _fits

    monkeypatch.setattr(fitsutil, "utc_now", lambda: "2026-01-02T03:04:05")
    hist = _Run("stk_test", {"infile": "x.fits", "outfile": "/a/" + "y" * 70, "clobber": True})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # astropy warns when it cuts a comment
        _fits.write_fits_fast(tmp_path / "fast.fits", _specs_of_every_kind(), hist, clobber=False)
        monkeypatch.setattr(_fits, "FITSIO_IO", False)
        _fits.write_fits_fast(tmp_path / "slow.fits", _specs_of_every_kind(), hist, clobber=False)
    fast, slow = _file_cards(tmp_path / "fast.fits"), _file_cards(tmp_path / "slow.fits")
    assert fast == slow
    prim, tab, empty = fast
    keys = dict((k, (v, c)) for k, v, c in prim[0] if k != "HISTORY")
    assert keys["CREATOR"] == (f"stk_test - stk_astrometry {__import__('stk_astrometry').__version__}",
                               "tool that created this output")
    assert keys["DATE"] == ("2026-01-02T03:04:05", "Date and time of file creation")
    assert keys["EXTEND"] == (True, "") and keys["BITPIX"] == (8, "array data type")
    assert keys["DTYPE1"] == ("DEC_STACK", "Long key name - value in DVALn")
    assert keys["DVAL1"] == (-12.5, "[deg] dec") and prim[1] == [("DEC_STACK", -12.5, "[deg] dec")]
    assert keys["UNDEF"][1] == "undefined" and keys["NOTE"] == ("x" * 80, "")   # CONTINUE
    assert keys["LONGCOMM"] == ("v" * 40, "")          # the comment would be cut: dropped
    history = [v for k, v, _ in prim[0] if k == "HISTORY"]
    assert keys["HISTNUM"][0] == len(history) == 5 and history[-1].endswith("ASC00005")
    tkeys = [k for k, _, _ in tab[0]]
    assert tkeys[:8] == ["XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
                         "TFIELDS"]
    assert tkeys.index("EXTNAME") == tkeys.index("TFORM9") + 1
    tdict = dict((k, (v, c)) for k, v, c in tab[0] if k != "HISTORY")
    assert tdict["TFORM1"] == ("J", "") and tdict["EXTRA"] == (1.5, "copied")
    assert tdict["DTYPE7"] == ("RA_LONGER", "x") and tdict["DTYPE8"][0] == "DEC_STACK"
    assert tdict["HISTNUM"][0] == 9 and tdict["TCOMM7"] == ("it's quoted", "")
    assert "TUNIT5" not in tdict and tdict["TUNIT3"] == ("deg", "")
    assert "TCOMM6" not in tdict and tdict["TUCD6"] == ("meta.id", "")
    assert [k for k in tkeys if k.startswith("TUCD")] == ["TUCD3", "TUCD6"]
    ekeys = dict((k, (v, c)) for k, v, c in empty[0] if k != "HISTORY")
    assert ekeys["NAXIS2"][0] == 0 and ekeys["LONGCOMM"][1].startswith("ccc")
    assert ekeys["TFORM3"][0] == "1A"


def test_fast_writer_writes_its_file_into_the_locked_temporary_file(tmp_path, monkeypatch):
    """write_fits_fast has cfitsio build the file in its memory driver and writes the bytes in
    one go (issue 11: no write() per keyword): whole FITS blocks, valid checksums, and the
    temporary file written is the one atomic_path made and locked (fitsio's clobber would
    unlink it and write an unlocked file of the same name).  Its content against astropy's
    writer: test_fast_writer_writes_what_astropys_writer_writes."""
    import os

    from astropy.io import fits

    from stk_astrometry import fitsutil
    from stk_astrometry.formats import _fits

    made = []
    real_temp_file = fitsutil._temp_file     # make_temp's, as write_atomically calls it

    def temp_file(dest):
        fd, tmp = real_temp_file(dest)
        made.append((os.fstat(fd).st_ino, tmp))
        return fd, tmp

    checked = []

    def written(tmp):
        for ino, path in made:
            if path == tmp:
                assert os.stat(tmp).st_ino == ino, "the locked temporary file was replaced"
                checked.append(path)

    monkeypatch.setattr(fitsutil, "_temp_file", temp_file)
    real_replace = fitsutil._replace      # write_atomically renames through it
    monkeypatch.setattr(fitsutil, "_replace",
                        lambda tmp, dest, **kw: (written(tmp), real_replace(tmp, dest, **kw)))
    _fits.write_fits_fast(tmp_path / "mem.fits", _specs_of_every_kind(), HIST, clobber=False)
    assert len(made) == 1 and len(checked) == 1
    assert (tmp_path / "mem.fits").stat().st_size % 2880 == 0
    with fits.open(tmp_path / "mem.fits", checksum=True) as hdul:
        assert len(hdul) == 3 and all("CHECKSUM" in hdu.header for hdu in hdul)


def test_fast_reader_reads_what_astropys_reader_reads(tmp_path):
    from stk_astrometry.formats import _fits

    _fits.write_fits_fast(tmp_path / "f.fits", _specs_of_every_kind(), HIST, clobber=False)
    fast = _fits.read_fits(tmp_path / "f.fits")
    slow = _fits._read_fits_astropy(tmp_path / "f.fits")
    assert [x[0] for x in fast] == [x[0] for x in slow] == ["", "TAB", "EMPTY"]
    for (_, hf, cf, uf), (_, hs, cs, us) in zip(fast, slow, strict=True):
        assert [(c.keyword, c.comment) for c in hf.cards] == [(c.keyword, c.comment) for c in hs.cards]
        assert uf == us
        if cf is None:
            assert cs is None
            continue
        assert list(cf) == list(cs)
        for name in cf:
            a, b = cf[name], cs[name]
            assert a.dtype == b.dtype and a.dtype.byteorder in "=|", name
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    cols, units = fast[1][2], fast[1][3]
    assert units == {"ra": "deg", "f": "arcsec"}
    assert cols["name"].dtype.kind == "U" and cols["name"].tolist() == ["a", "bcd", ""]
    assert cols["ref_id"].tolist() == [5, 2**40, 7] and cols["flag"].tolist() == [True, False, True]
    assert cols["f"].dtype == np.float32 and cols["small"].dtype == np.int16
    empty = fast[2][2]
    assert {k: v.dtype.kind for k, v in empty.items()} == {"a": "f", "b": "i", "s": "U"}
    assert all(len(v) == 0 for v in empty.values())
    assert fast[0][1]["CONTENT"] == "STKTEST" and fast[1][1]["EXTNAME"] == "TAB"
    (tmp_path / "t.fits").write_text("not FITS")
    with pytest.raises(OSError):
        _fits.read_fits(tmp_path / "t.fits")


@pytest.mark.parametrize("values, fmt", [
    (np.array(["a", "bcd"]), "3A"), (np.array([b"ab", b"c"]), "2A"), (np.array([], dtype="U5"), "1A"),
    (np.array(["", ""]), "1A"), (np.array([True]), "L"), (np.array([1], dtype=np.int8), "I"),
    (np.array([1], dtype=np.uint8), "I"), (np.array([1], dtype=np.int16), "I"),
    (np.array([1], dtype=np.int32), "J"), (np.array([1], dtype=np.uint32), "J"),
    (np.array([1], dtype=np.int64), "K"), (np.array([1.0], dtype=np.float32), "E"),
    (np.array([1.0]), "D"), (np.array([1.0], dtype=np.float16), "D"), ([1, 2], "K"),
])
def test_column_format_from_the_dtype(values, fmt):
    from stk_astrometry.formats._fits import column_format

    assert column_format(values) == fmt
    assert column_format(values, "16A") == "16A"


def test_header_value_of_numpy_scalars_and_nan():
    from stk_astrometry.formats._fits import header_value

    class Number(float):
        pass

    class Count(int):
        pass

    big = np.longdouble(10) ** 400 if np.finfo(np.longdouble).max > 1e400 else None
    for x, want in ((np.float32(1.5), 1.5), (np.nan, None), (float("inf"), None),
                    (np.int16(3), 3), (np.bool_(True), True), ("s", "s"), (None, None), (7, 7),
                    (-float("inf"), None), (float("nan"), None), (2.5, 2.5), (-0.0, -0.0),
                    (0.0, 0.0), (True, True), (False, False), (0, 0), ("", ""),
                    (np.float64(-np.inf), None), (np.float64(0.25), 0.25), (np.int64(-2), -2),
                    (np.uint8(200), 200), (np.bool_(False), False), (Number(1.5), 1.5),
                    (Number("nan"), None), (Count(4), Count(4)), (2**70, 2**70)):
        got = header_value(x)
        assert got == want and type(got) is type(want), x
        if type(x) in (int, float, str, bool) and want is not None:
            assert got is x            # the usual values as they are
    assert str(header_value(-0.0)) == "-0.0"
    if big is not None:         # finite for numpy, beyond a float: float's infinity, as before
        assert header_value(big) == float("inf")


def test_table_hdu_of_columns_units_formats_and_no_rows():
    from stk_astrometry.formats._fits import table_hdu

    hdu = table_hdu("T", {"a": np.array([1, 2], dtype=np.int64), "b": np.array([1.0, 2.0])},
                    units={"b": "deg", "a": ""}, formats={"a": "J"})
    assert hdu.name == "T" and hdu.columns["a"].format == "J" and hdu.columns["b"].format == "D"
    assert hdu.columns["b"].unit == "deg" and hdu.columns["a"].unit is None
    assert hdu.data["a"].tolist() == [1, 2] and hdu.data["b"].tolist() == [1.0, 2.0]
    empty = table_hdu("E", {"a": np.zeros(0)}, nrows=0)
    assert empty.name == "E" and len(empty.data) == 0
    assert table_hdu("N", {"x": np.arange(3)}, nrows=3).name == "N"


def test_copied_structural_and_column_cards_are_not_written_twice(tmp_path):
    from stk_astrometry.formats import _fits

    specs = [_fits.HduSpec(None, cards=(("SIMPLE", True, ""), ("BITPIX", 8, ""), ("NAXIS", 0, ""),
                                        ("EXTEND", True, ""), ("OBJECT", "x", ""))),
             _fits.HduSpec("T", {"a": np.array([1.0]), "b": np.array([2.0])}, units={"b": "deg"},
                           column_info={"b": ("desc", "pos.eq.ra")},
                           cards=(("TUNIT2", "deg", ""), ("TCOMM2", "desc", ""),
                                  ("TUCD2", "pos.eq.ra", ""), ("EXTNAME", "T", ""),
                                  ("KEEP", 1, "copied")))]
    _fits.write_fits_fast(tmp_path / "c.fits", specs, HIST, clobber=False)
    with fits.open(tmp_path / "c.fits") as hdul:
        for hdu in hdul:
            keys = [k for k in hdu.header.keys() if k not in ("HISTORY", "COMMENT")]
            assert len(keys) == len(set(keys)), keys
        assert hdul[0].header["OBJECT"] == "x" and hdul[1].header["KEEP"] == 1
        assert "COMMENT" not in hdul[0].header


@pytest.mark.parametrize("value, comment, kept", [
    ("x" * 40, "c" * 25, True), ("x" * 40, "c" * 26, False),
    ("ab", "c" * 47, True), ("ab", "c" * 48, False), ("x" * 18, "c" * 47, True),
    ("x" * 19, "c" * 47, False),
])
def test_long_string_drops_its_comment_only_when_it_would_be_cut(value, comment, kept):
    from stk_astrometry.formats._fits import set_keywords

    h = fits.Header()
    set_keywords(h, [("KEY", value, comment)])
    assert h["KEY"] == value and h.comments["KEY"] == (comment if kept else "")
    h2 = fits.Header()
    set_keywords(h2, [("KEY", value, comment)], drop_long_comments=False)
    assert h2.comments["KEY"].startswith(comment[:10])


@pytest.mark.parametrize("name, value, comment", [
    ("EIGHTCHR", 1.5, "c"), ("EIGHTCHR", 12, ""), ("NINECHARS", 2.5, "c" * 50),
    ("NINECHARS", 2.5, "c" * 53), ("NINECHARS", 2.5, "c" * 54), ("K", "x" * 68, ""),
    ("K", "x" * 69, ""), ("NINECHARS", True, ""),
])
def test_format_card_at_the_hierarch_and_continue_boundaries(name, value, comment):
    import warnings

    from astropy.io.fits import Card

    from stk_astrometry.formats._fits import _as_card, format_card

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _as_card(name, value, comment).image if len(name) > 8 else Card(name, value, comment).image
        assert format_card(name, value, comment) == want
        assert format_card(name, value) == format_card(name, value, "")


def test_fast_writer_expands_at_lists_and_says_what_it_wrote(tmp_path, caplog):
    from stk_astrometry.formats import _fits

    lis = tmp_path / "in.lis"
    lis.write_text("a.fits\nb.fits\n")
    hist = _Run("stk_test", {"infile": f"@{lis}"})
    specs = [_fits.HduSpec(None), _fits.HduSpec("T", {"a": np.array([1.0])})]
    with caplog.at_level("INFO", logger="stk_astrometry.fitsutil"):
        _fits.write_fits_fast(tmp_path / "s.fits", specs, hist, clobber=False)
    assert [r.getMessage() for r in caplog.records if r.name == "stk_astrometry.fitsutil"] == \
        [f"Wrote {tmp_path / 's.fits'}"]
    with fits.open(tmp_path / "s.fits") as hdul:
        for hdu in hdul:
            kinds = [str(v)[1:5] for v in hdu.header["HISTORY"]]
            assert kinds.count("STCK") == 2, kinds


def test_fast_writer_vector_columns_and_its_own_stamps(tmp_path):
    from stk_astrometry.formats import _fits

    vec = np.arange(6.0).reshape(3, 2)
    cells = np.arange(12.0).reshape(3, 2, 2)       # cells of two dimensions: fitsio's TDIMn
    specs = [_fits.HduSpec(None), _fits.HduSpec("T", {"v": vec, "n": np.array([1, 2, 3]),
                                                      "m": cells})]
    _fits.write_fits_fast(tmp_path / "v.fits", specs, HIST, clobber=False)
    with fits.open(tmp_path / "v.fits") as hdul:
        assert hdul["T"].columns["v"].format == "2D"
        assert hdul["T"].data["v"].tolist() == vec.tolist()
        assert hdul["T"].header["TDIM3"] == "(2,2)" and "TDIM1" not in hdul["T"].header
        assert hdul["T"].data["m"].tolist() == cells.tolist()
    raw = (tmp_path / "v.fits").read_bytes()
    cards = [raw[i:i + 8] for i in range(0, len(raw), 80)]
    assert cards.count(b"CREATOR ") == 2 and cards.count(b"DATE    ") == 2


def test_header_keywords_keep_a_hierarch_keyword_and_drop_blank_cards():
    from stk_astrometry.formats._fits import extra_cards, header_keywords

    h = fits.Header()
    h["SHORT"] = 1
    h.append(fits.Card("HIERARCH LONGER_NAME", 2.5, "c"))
    h.append(fits.Card("", "", ""), useblanks=False, bottom=True)
    h["DTYPE1"] = "DEC_STACK"
    h["DVAL1"] = -5.0
    h.append(fits.Card("HIERARCH DEC_STACK", -5.0))
    assert header_keywords(h) == (("SHORT", 1, ""), ("LONGER_NAME", 2.5, "c"),
                                  ("DEC_STACK", -5.0, ""))
    assert [c[0] for c in extra_cards(h)] == ["SHORT", "LONGER_NAME", "DTYPE1", "DVAL1",
                                              "DEC_STACK"]


# ---------------------------------------------------------------------------------------------
# The rest of the writer's and reader's contract


def test_extra_cards_are_the_user_cards_of_a_table_header():
    from stk_astrometry.formats._fits import extra_cards, table_hdu

    h = table_hdu("T", {"a": np.array([1.0]), "b": np.array([2], dtype=np.int32)},
                  units={"a": "deg"}).header
    h = fits.Header(list(h.cards) + [fits.Card("OBJECT", "x", "c"), fits.Card("", "", ""),
                                     fits.Card("HISTORY", "h"), fits.Card("N", 3)])
    assert extra_cards(h) == (("OBJECT", "x", "c"), ("N", 3, ""))


def test_a_product_cut_inside_its_table_data_is_one_clean_error(tmp_path):
    from stk_astrometry.errors import InputError
    from stk_astrometry.formats import _fits

    path = tmp_path / "p.fits"
    specs = [_fits.HduSpec(None, keys=(("CONTENT", "STKTEST", ""),)),
             _fits.HduSpec("T", {"a": np.arange(1000.0)})]
    _fits.write_fits_fast(path, specs, HIST, clobber=False)
    with _fits.open_product(path, "STKTEST", "test file") as hdul:
        assert hdul["T"].data["a"][-1] == 999.0
        data_at = hdul["T"].fileinfo()["datLoc"]
    path.write_bytes(path.read_bytes()[:data_at + 4000])       # headers whole, data cut
    with pytest.raises(InputError, match=r"p\.fits: cannot read as FITS"):
        _fits.open_product(path, "STKTEST", "test file")


def test_the_astropy_path_keeps_the_given_column_formats(tmp_path, monkeypatch):
    from stk_astrometry.formats import _fits

    cols = {"name": np.array(["a", "bc"]), "n": np.array([1, 2], dtype=np.int64),
            "x": np.array([1.5, 2.5])}
    spec = _fits.HduSpec("T", cols, formats={"name": "8A", "n": "J"})
    hdu = _fits.to_hdulist([_fits.HduSpec(None), spec])[1]
    assert [c.format for c in hdu.columns] == ["8A", "J", "D"]
    _fits.write_fits_fast(tmp_path / "fast.fits", [_fits.HduSpec(None), spec], HIST, clobber=False)
    monkeypatch.setattr(_fits, "FITSIO_IO", False)
    _fits.write_fits_fast(tmp_path / "slow.fits", [_fits.HduSpec(None), spec], HIST, clobber=False)
    for name in ("fast.fits", "slow.fits"):
        with fits.open(tmp_path / name) as hdul:
            assert [c.format for c in hdul["T"].columns] == ["8A", "J", "D"], name


def test_the_astropy_path_overwrites_when_clobber_is_set(tmp_path, monkeypatch):
    from stk_astrometry.errors import OutputError
    from stk_astrometry.formats import _fits

    monkeypatch.setattr(_fits, "FITSIO_IO", False)
    specs = [_fits.HduSpec(None), _fits.HduSpec("T", {"a": np.array([1.0])})]
    _fits.write_fits_fast(tmp_path / "s.fits", specs, HIST, clobber=False)
    specs[1] = _fits.HduSpec("T", {"a": np.array([2.0])})
    with pytest.raises(OutputError):
        _fits.write_fits_fast(tmp_path / "s.fits", specs, HIST, clobber=False)
    _fits.write_fits_fast(tmp_path / "s.fits", specs, HIST, clobber=True)
    assert fits.getdata(tmp_path / "s.fits", "T")["a"].tolist() == [2.0]


def test_an_eight_character_name_is_never_a_hierarch_card(tmp_path):
    import warnings

    from astropy.io.fits import Card

    from stk_astrometry.formats import _fits

    for value in ("x" * 69, "short"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert _fits.format_card("EIGHTCHR", value, "c") == Card("EIGHTCHR", value, "c").image
    # numbers: Python's by format_card's direct path, numpy's by _format_card
    for value in (1.5, 7, np.float64(1.5), np.int64(7), np.float32(0.25), np.int16(-3)):
        assert _fits.format_card("EIGHTCHR", value, "c") == Card("EIGHTCHR", value, "c").image
        assert _fits._format_card("EIGHTCHR", value, "c") == Card("EIGHTCHR", value, "c").image
    hdul = _fits.to_hdulist([_fits.HduSpec(None, cards=(("EIGHTCHR", 1.5, "copied"),))])
    assert hdul[0].header.cards["EIGHTCHR"].image.startswith("EIGHTCHR= ")


def test_a_non_ascii_text_column_is_not_written(tmp_path):
    # FITS A columns hold ASCII: a value beyond it is refused, not written as UTF-8 bytes
    from stk_astrometry.formats import _fits

    specs = [_fits.HduSpec(None), _fits.HduSpec("T", {"s": np.array(["caf\u00e9", "ok"])})]
    with pytest.raises(UnicodeEncodeError):
        _fits.write_fits_fast(tmp_path / "u.fits", specs, HIST, clobber=False)
    assert list(tmp_path.iterdir()) == []


def test_a_vector_logical_column_is_written_and_read_back(tmp_path):
    from stk_astrometry.formats import _fits

    flags = np.array([[True, False], [False, False], [True, True]])
    specs = [_fits.HduSpec(None), _fits.HduSpec("T", {"f": flags, "n": np.arange(3)})]
    _fits.write_fits_fast(tmp_path / "l.fits", specs, HIST, clobber=False)
    with fits.open(tmp_path / "l.fits") as hdul:
        assert hdul["T"].columns["f"].format == "2L"
        assert hdul["T"].data["f"].tolist() == flags.tolist()
    assert _fits.read_fits(tmp_path / "l.fits")[1][2]["f"].tolist() == flags.tolist()


@pytest.mark.parametrize("value, comment, kept", [
    ("x" * 40, "c" * 25, True), ("x" * 40, "c" * 26, False),
    ("ab", "c" * 47, True), ("ab", "c" * 48, False), ("x" * 18, "c" * 47, True),
    ("x" * 19, "c" * 47, False),
])
def test_the_fast_writer_drops_a_long_strings_comment_where_set_keywords_does(
        tmp_path, value, comment, kept):
    from stk_astrometry.formats import _fits

    specs = [_fits.HduSpec(None, keys=(("KEY", value, comment),)),
             _fits.HduSpec("T", {"a": np.array([1.0])}, keys=(("KEY", value, comment),),
                           drop_long_comments=False)]
    _fits.write_fits_fast(tmp_path / "k.fits", specs, HIST, clobber=False)
    with fits.open(tmp_path / "k.fits") as hdul:
        assert hdul[0].header["KEY"] == value
        assert hdul[0].header.comments["KEY"] == (comment if kept else "")
        kept_cut = hdul[1].header.comments["KEY"]
        assert kept_cut and comment.startswith(kept_cut)        # kept, cut if need be


def test_one_write_has_one_time_stamp(tmp_path, monkeypatch):
    # DATE and the TOOL record of every HDU carry the same time, however long the write takes
    import itertools

    from stk_astrometry import fitsutil
    from stk_astrometry.formats import _fits

    tick = itertools.count()
    monkeypatch.setattr(fitsutil, "utc_now", lambda: f"2026-01-02T03:04:{next(tick):02d}")
    specs = [_fits.HduSpec(None), _fits.HduSpec("A", {"a": np.array([1.0])}),
             _fits.HduSpec("B", {"b": np.array([2.0])})]
    _fits.write_fits_fast(tmp_path / "t.fits", specs, HIST, clobber=False)
    with fits.open(tmp_path / "t.fits") as hdul:
        dates = {hdu.header["DATE"] for hdu in hdul}
        tools = {str(hdu.header["HISTORY"][0]) for hdu in hdul}
    assert len(dates) == 1 and len(tools) == 1
    assert dates.pop() in tools.pop()


def test_the_astropy_reader_is_used_when_fitsio_is_off(tmp_path, monkeypatch):
    from stk_astrometry.formats import _fits

    specs = [_fits.HduSpec(None), _fits.HduSpec("T", {"a": np.array([1.5, 2.5])})]
    _fits.write_fits_fast(tmp_path / "r.fits", specs, HIST, clobber=False)
    monkeypatch.setattr(_fits, "FITSIO_IO", False)
    got = _fits.read_fits(tmp_path / "r.fits")
    assert [x[0] for x in got] == ["", "T"] and got[1][2]["a"].tolist() == [1.5, 2.5]
    assert type(got[1][1]) is fits.Header


def test_the_fast_writer_expands_at_lists_in_every_hdu(tmp_path):
    from stk_astrometry.formats import _fits

    lis = tmp_path / "in.lis"
    lis.write_text("a.fits\nb.fits\n")
    specs = [_fits.HduSpec(None), _fits.HduSpec("T", {"a": np.array([1.0])})]
    _fits.write_fits_fast(tmp_path / "s.fits", specs, _Run("stk_test", {"infile": f"@{lis}"}),
                          clobber=False)
    with fits.open(tmp_path / "s.fits") as hdul:
        for hdu in hdul:
            stck = [str(v)[8:].split()[0] for v in hdu.header["HISTORY"] if str(v)[1:5] == "STCK"]
            assert stck == ["a.fits", "b.fits"]


# ---------------------------------------------------------------------------------------------
# The byte writer (_fits_image) against cfitsio's (_cfitsio_image), issue 11


def _run(tool="stk_test"):
    """A write's run: HIST's parameters and a CIAO stack (``@in.lis``) of two files."""
    from stk_astrometry.fitsutil import history_records
    from stk_astrometry.formats._fits import _records_memo

    items = list(HIST.history_items()) + [("stack", "@in.lis")]
    return (tool, items, {"stack": ["a.fits", "b.fits"]}, "2026-01-02T03:04:05",
            "stk_test - stk_astrometry x", _records_memo(history_records))


def _images(specs, monkeypatch):
    """cfitsio's bytes of ``specs`` and the byte writer's, made with the time stamp cfitsio put
    in its CHECKSUM comments (None when the byte writer leaves the file to cfitsio)."""
    import re

    from stk_astrometry.formats import _fits

    for _ in range(5):
        ref = _fits._cfitsio_image(specs, _run())
        stamps = set(re.findall(rb"checksum updated (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) ", ref))
        if len(stamps) == 1:        # not across a second's end
            break
    assert len(stamps) == 1 and len(re.findall(rb"CHECKSUM= '", ref)) == len(specs)
    monkeypatch.setattr(_fits, "_checksum_time", lambda: stamps.pop().decode())
    return ref, _fits._fits_image(specs, _run())


def _file_kinds():
    """The specs of every file the package writes through write_fits_fast, with and without
    rows, NaN, long and empty strings, HIERARCH and CONTINUE keywords, copied cards."""
    import dataclasses

    from stk_astrometry.formats import _fits, detcorr, diag

    from formats_testlib import components, keywords

    rng = np.random.default_rng(11)
    comps = components()
    out = {"every kind": _specs_of_every_kind()}
    for n_gaia, n_wise in ((0, 0), (5, 3), (400, 1)):
        p = make_pairs(rng, n_gaia=n_gaia, n_wise=n_wise, n_wg=n_wise)
        out[f"pairs {n_gaia}"] = pairs.pairs_specs(p)
        used = {"GAIA_PAIRS": rng.random(n_gaia) < 0.5}
        p_true = {"GAIA_PAIRS": np.where(rng.random(n_gaia) < 0.2, np.nan, rng.random(n_gaia))}
        out[f"diag {n_gaia}"] = diag.diag_specs(p, used, p_true, (("SYSERR", 0.125, "floor"),))
    q = pairs.Pairs(**{**make_pairs(rng).__dict__,
                       "cards": {"GAIA_PAIRS": (("NOTE", "x" * 30, "copied"), ("HISTNUM", 3, "")),
                                 "DETECTIONS": (("DTYPE3", "OLD_LONG_KEY", ""), ("DVAL3", 1, ""))}})
    out["diag copied cards"] = diag.diag_specs(q, {}, {})
    out["transform"] = transform.transform_specs(comps, keywords(comps[0]), instrument="HRC",
                                                 ra_ref=10.0, dec_ref=-12.5)
    for n in (0, 4):
        cols = {c: rng.normal(size=n) for c in detcorr.COLUMNS}
        cols["region_id"] = np.arange(n)
        if n:
            cols["xi_corr"][1] = np.nan
        out[f"detcorr {n}"] = detcorr.detcorr_specs(cols, keywords(comps[0]))
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308])
    payload = np.frombuffer(np.array([0x7FF0000000000001, 0xFFF8000000000123], ">u8").tobytes(), ">f8")
    out["values"] = [_fits.HduSpec(None),
                     _fits.HduSpec("V", {"d": np.concatenate([special, payload]),
                                         "e": np.frombuffer(np.array(
                                             [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F800000,
                                              0xFF800000, 0x80000000, 0, 1, 0x7F7FFFFF,
                                              0xFFC00123], ">u4").tobytes(), ">f4"),
                                         "i": np.array([-2**31, 2**31 - 1] * 5, dtype=np.int32),
                                         "k": np.array([-2**63, 2**63 - 1] * 5),
                                         "s": np.array(["trail  ", " lead", "", "x" * 12, "a"] * 2),
                                         "l": np.array([True, False] * 5)},
                                   column_info={"d": ("it's a quote", ""), "e": ("'" * 32, ""),
                                                "i": ("x" * 64, "u" * 64)})]
    # header and data lengths across the ends of 2880-byte blocks
    for n_keys in (13, 14, 15, 16, 36, 49, 50, 51):
        keys = tuple((f"K{i}", i * 0.5, "c") for i in range(n_keys))
        out[f"{n_keys} keys"] = [_fits.HduSpec(None, keys=keys), _fits.HduSpec("B", {"a": np.zeros(1)},
                                                                                keys=keys)]
    for n_rows in (359, 360, 361, 720):
        out[f"{n_rows} rows"] = [_fits.HduSpec(None), _fits.HduSpec("R", {"a": np.arange(n_rows) * 1.5})]
    out["copied structure"] = [
        _fits.HduSpec(None, cards=(("SIMPLE", True, ""), ("BITPIX", 8, ""), ("NAXIS", 0, ""),
                                   ("EXTEND", True, ""), ("OBJECT", "x", ""))),
        _fits.HduSpec("T", {"a": np.array([1.0]), "b": np.array([2.0])}, units={"b": "deg"},
                      column_info={"b": ("desc", "pos.eq.ra")},
                      cards=(("TTYPE1", "a", ""), ("TFORM1", "D", ""), ("TUNIT2", "deg", ""),
                             ("TCOMM2", "desc", ""), ("TUCD2", "pos.eq.ra", ""),
                             ("EXTNAME", "T", ""), ("XTENSION", "BINTABLE", ""), ("KEEP", 1, ""),
                             ("HIERARCH NINE.CHAR", 2, "a dot: a HIERARCH name")))]
    out["extname of 51"] = [_fits.HduSpec(None), _fits.HduSpec("E" * 51, {"a": np.ones(2)})]
    out["columns given as lists"] = [_fits.HduSpec(None), _fits.HduSpec(
        "L", {"d": [1.0, 2.5], "k": [1, 2**40], "s": ["ab", "c"], "l": [True, False],
              "v": [[1.0, 2.0], [3.0, 4.0]]})]
    out["no rows, strings"] = [dataclasses.replace(_specs_of_every_kind()[0], keys=()),
                               _fits.HduSpec("E", {"s": np.array([], dtype="U3")})]
    return out


def test_the_byte_writer_writes_cfitsios_bytes(monkeypatch):
    """Every file kind, byte for byte what cfitsio writes through _write_one (headers, blank
    and zero fill, CHECKSUM/DATASUM), with checksums astropy and fitsio verify (issue 11)."""
    import io
    import warnings

    for kind, specs in _file_kinds().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # astropy warns when it cuts a comment
            ref, mine = _images(specs, monkeypatch)
        assert mine is not None, kind               # not left to cfitsio
        assert mine == ref, kind
        assert len(mine) % 2880 == 0
        with fits.open(io.BytesIO(mine), checksum=True) as hdul:
            with warnings.catch_warnings():
                warnings.simplefilter("error")   # a bad checksum is a warning in astropy
                assert len(hdul) == len(specs) and all(h.verify_checksum() == 1 for h in hdul)


def test_the_byte_writers_checksums_verify_in_fitsio(tmp_path):
    import fitsio

    from stk_astrometry.formats import _fits

    for kind, specs in _file_kinds().items():
        image = _fits._fits_image(specs, _run())
        (tmp_path / "f.fits").write_bytes(image)
        with fitsio.FITS(str(tmp_path / "f.fits")) as fh:
            for hdu in fh:
                assert hdu.verify_checksum() is None, kind      # raises when wrong


def _left_to_cfitsio():
    from stk_astrometry.formats._fits import HduSpec

    a = {"a": np.array([1.0, 2.0])}
    return {"description of 65": [HduSpec(None), HduSpec("T", a, column_info={"a": ("x" * 65, "")})],
            "quotes doubled to 65": [HduSpec(None),
                                     HduSpec("T", a, column_info={"a": ("", "'" * 32 + "x")})],
            "extname of 52": [HduSpec(None), HduSpec("E" * 52, a)],
            "empty extname": [HduSpec(None), HduSpec("", a)],
            "unit not ASCII": [HduSpec(None), HduSpec("T", a, units={"a": "\u00b5m"})],
            "copied name in lower case": [HduSpec(None, cards=(("lower", 1, ""),))],
            "long name in lower case": [HduSpec(None, cards=(("HIERARCH long_lower", "x", ""),))],
            "tab in a value": [HduSpec(None, keys=(("TABBED", "a\tb", ""),))],
            "value not ASCII": [HduSpec(None, keys=(("NOTE", "caf\u00e9", ""),))],
            "three-dimensional cells": [HduSpec(None), HduSpec("T", {"m": np.zeros((2, 2, 3))})],
            "no columns": [HduSpec(None), HduSpec("T", {})]}


def test_what_cfitsio_writes_otherwise_is_left_to_cfitsio(tmp_path, monkeypatch):
    """A card cfitsio would write differently from format_card (long strings as CONTINUE,
    blanked characters, names made upper case, TDIMn, an empty EXTNAME as blanks): the whole
    file is cfitsio's."""
    import warnings

    from stk_astrometry.formats import _fits

    made = []
    real = _fits._cfitsio_image

    def cfitsio_image(specs, run):
        made.append(real(specs, run))
        return made[-1]

    monkeypatch.setattr(_fits, "_cfitsio_image", cfitsio_image)
    for what, specs in _left_to_cfitsio().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert _fits._fits_image(specs, _run()) is None, what
            _fits.write_fits_fast(tmp_path / "c.fits", specs, HIST, clobber=True)
        assert (tmp_path / "c.fits").read_bytes() == made[-1], what
    assert len(made) == len(_left_to_cfitsio())
    # and what it refuses, it still refuses
    with pytest.raises(OutputError):
        _fits.write_fits_fast(tmp_path / "r.fits", [_fits.HduSpec(None, cards=(("A B", 1, ""),))],
                              HIST, clobber=True)
    assert not (tmp_path / "r.fits").exists()


@pytest.mark.parametrize("name, kept", [
    ("GOOD", True), ("DATE-OBS", True), ("X_1", True), ("EIGHTCHR", True), ("NINE_CHARS", True),
    ("lower", False), ("Mixed", False), ("nine_chars", False), ("A B", False), (" AB", False),
    ("A.B", False), ("A=B", False), ("A.BCDEFG", False), ("NINE.CHAR", True),
    ("HIERARCH NINE.CHAR", True),
])
def test_names_cfitsio_writes_as_given(name, kept):
    from stk_astrometry.formats._fits import _kept, _name_kept

    assert _kept(name) is kept and _name_kept(name) is kept


@pytest.mark.parametrize("text, comment, plain", [
    ("x" * 64, " ", True), ("x" * 65, " ", False), ("x" * 51, "extension name", True),
    ("x" * 52, "extension name", False), ("'" * 32, " ", True), ("'" * 32 + "x", " ", False),
    ("", " ", False), ("a\tb", " ", False), ("caf\u00e9", " ", False), ("a", " ", True),
])
def test_string_values_cfitsio_writes_on_one_card(text, comment, plain):
    from stk_astrometry.formats._fits import _plain

    assert _plain(text, comment) is plain


def test_the_checksum_time_is_cfitsios(monkeypatch):
    """UTC (cfitsio's fits_write_chksum stamps the comments in UTC, whatever the time zone)."""
    import re
    import time

    from stk_astrometry.formats import _fits

    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    try:
        for _ in range(5):
            ref = _fits._cfitsio_image([_fits.HduSpec(None)], _run())
            mine = _fits._checksum_time()
            if re.search(rb"HDU checksum updated (\S+)", ref).group(1).decode() == mine:
                break
        assert re.search(rb"HDU checksum updated (\S+)", ref).group(1).decode() == mine
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_files_of_the_formats_are_never_left_to_cfitsio(tmp_path, monkeypatch):
    """The pairs, transform, detections and diagnostics files take the byte writer (issue 11:
    cfitsio's keyword calls were a fifth of a stack's CPU)."""
    from stk_astrometry.formats import _fits, detcorr, diag

    from formats_testlib import components, keywords

    def cfitsio_image(specs, run):
        raise AssertionError("left to cfitsio")

    monkeypatch.setattr(_fits, "_cfitsio_image", cfitsio_image)
    p = make_pairs(np.random.default_rng(4), n_wise=2)
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    diag.write_diag(tmp_path / "g.fits", pairs.read_pairs(tmp_path / "p.fits"), {}, {}, HIST)
    comps = components()
    transform.write_transform(tmp_path / "x.fits", comps, keywords(comps[0]), HIST,
                              instrument="ACIS", ra_ref=1.0, dec_ref=2.0)
    detcorr.write_detcorr(tmp_path / "d.fits", {c: np.ones(2) for c in detcorr.COLUMNS},
                          keywords(comps[0]), HIST)
    for name in ("p", "g", "x", "d"):
        with fits.open(tmp_path / f"{name}.fits", checksum=True) as hdul:
            assert all(hdu.verify_checksum() == 1 for hdu in hdul)


def test_the_text_card_cache_keeps_only_what_repeats():
    # issue 12: format_card remembers text cards, most of which (ids, paths, dates) are new
    # with every stack; its bound (256: ~50 cards repeat) keeps a stk_batch worker's memory
    # from growing by ~1.5 MB over a campaign's first stacks, and the repeating cards stay
    from stk_astrometry.formats._fits import _text_card, format_card

    _text_card.cache_clear()
    for i in range(5_000):
        format_card("CREATOR", "stk_xfm - stk_astrometry", "tool that created this output")
        format_card("STACKID", f"acisfJ{i:08d}p000000_001", "stack identifier")
    info = _text_card.cache_info()
    assert info.currsize <= 256
    assert info.hits >= 4_999          # the repeating card was never evicted


def test_a_runs_history_text_is_its_records_on_cards_or_left_to_cfitsio():
    """_history_text: the records as HISTORY cards in order; None (the file goes to cfitsio,
    whose write_record would change the card) for a record that is not printable ASCII -- a
    tab, a letter beyond ASCII -- or not 72 characters."""
    from stk_astrometry.formats._fits import _history_text

    a, b = "a" * 71 + "1", "b" * 72
    assert _history_text((a, b)) == f"HISTORY {a}HISTORY {b}"
    assert _history_text(()) == ""
    for bad in ("\t" + "x" * 71, "\u00e9" + "x" * 71, "x" * 71, "x" * 73):
        assert _history_text((a, bad)) is None, repr(bad)


def test_text_columns_become_bytes_as_numpys_cast_makes_them():
    # _ascii_bytes (issue 11: numpy's str -> bytes cast encodes cell by cell): ASCII text by
    # its codes, cut or NUL-padded to the column's width; other text refused as numpy refuses it
    from stk_astrometry.formats._fits import _ascii_bytes

    rng = np.random.default_rng(5)
    codes = [chr(c) for c in range(128)]
    for width in (1, 3, 8):
        for shape in ((0,), (1,), (6,), (3, 2)):
            cells = ["".join(rng.choice(codes, rng.integers(0, width + 1)))
                     for _ in range(int(np.prod(shape)))]
            text = np.array(cells, dtype=f"U{width}").reshape(shape)
            for out in (1, width, width + 5):
                want = np.ascontiguousarray(text.astype(f"S{out}"))
                for arr in (text, text.astype(text.dtype.newbyteorder(">")), text.T):
                    got = _ascii_bytes(arr, np.dtype(f"S{out}"))
                    want = np.ascontiguousarray(arr.astype(f"S{out}"))
                    assert got.dtype == want.dtype and got.shape == want.shape
                    assert got.tobytes() == want.tobytes() and got.flags.c_contiguous
    assert _ascii_bytes(np.array(["\x7f", "~"]), np.dtype("S1")).tolist() == [b"\x7f", b"~"]
    assert _ascii_bytes(np.zeros(3, "U0"), np.dtype("S2")).tolist() == [b"", b"", b""]
    for bad in (["é"], ["ok", "\x80"], ["\u0100"]):
        with pytest.raises(UnicodeEncodeError):
            _ascii_bytes(np.array(bad), np.dtype("S4"))


def test_number_cards_remembered_are_astropys_cards_and_the_memo_stays_small():
    # format_card remembers int/float cards too (issue 11): by type (1 and 1.0, 0 and False are
    # different cards), never a float zero (0.0 and -0.0), bounded like the text cards
    from astropy.io.fits import Card

    from stk_astrometry.formats._fits import _number_card, format_card

    _number_card.cache_clear()
    values = [1, 1.0, 0, 0.0, -0.0, 0.0, 2**40, 2.0**40, -7, -7.0, 1e-300, 62.2, 12345678901234567]
    for _ in range(2):
        for value in values:
            for comment in ("", "a comment", "c" * 70):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    want = Card("KEY", value, comment).image
                assert format_card("KEY", value, comment) == want, (value, comment)
                assert format_card("KEY", value, comment) == want, (value, comment)
    for i in range(3_000):
        format_card("HISTNUM", 21, "Number of HISTORY records")
        format_card("DXI", 0.1 + i, "[arcsec] applied shift in xi")
    info = _number_card.cache_info()
    assert info.currsize <= 512 and info.hits >= 2_999


class _NoCast(np.ndarray):
    """An array whose astype fails: the writer's ASCII path must not need numpy's cast."""

    def astype(self, *args, **kwargs):
        raise AssertionError("numpy's cast used")


def test_ascii_text_columns_take_the_path_by_codes(monkeypatch):
    # issue 11: the str -> bytes cast by codes is the path of every ASCII text column (DEL and
    # NUL included); numbers and bytes keep numpy's cast (the same values either way)
    from stk_astrometry.formats import _fits

    text = np.array(["TRUE", "\x7fx", "", "a\x00b"], dtype="U4")
    got = _fits._ascii_bytes(text.view(_NoCast), np.dtype("S6"))
    assert got.tolist() == [b"TRUE", b"\x7fx", b"", b"a\x00b"] and type(got) is np.ndarray
    calls = []
    real = _fits._ascii_bytes
    monkeypatch.setattr(_fits, "_ascii_bytes", lambda arr, dt: calls.append(dt) or real(arr, dt))
    raw = np.array([b"\x05\x00\x00\x00\x06", b"\x01"], dtype="S8")   # bytes, codes <= 127
    spec = _fits.HduSpec("T", {"s": text, "b": raw, "x": np.array(["1.5", "-2"]),
                               "w": np.array(["ab", "cd"])},
                         formats={"x": "D", "w": "1A"})
    arrays, tforms, _ = _fits._table_columns(spec)
    assert calls == [np.dtype("S4"), np.dtype("S1")]       # the two str columns as text
    assert tforms == ["4A", "5A", "D", "1A"]
    assert arrays[0].tolist() == [b"TRUE", b"\x7fx", b"", b"a\x00b"]
    assert arrays[1].tolist() == [b"\x05\x00\x00\x00\x06", b"\x01"]
    assert arrays[2].dtype == np.float64 and arrays[2].tolist() == [1.5, -2.0]
    assert arrays[3].tolist() == [b"a", b"c"]


def test_float_cards_are_remembered_too():
    from stk_astrometry.formats._fits import _number_card, format_card

    _number_card.cache_clear()
    for _ in range(100):
        format_card("DXI", 0.125, "[arcsec] applied shift in xi")
        format_card("NMATCH", 105, "matched detections used")
        format_card("EPOCHOBS", 2006.0, "[yr] stack epoch (Julian) used")    # eight characters
    assert _number_card.cache_info().hits == 297


def test_an_empty_data_unit_is_not_summed(monkeypatch):
    from stk_astrometry import fitsedit
    from stk_astrometry.formats._fits import _with_checksums

    summed = []
    real = fitsedit.ones_complement_sum
    monkeypatch.setattr(fitsedit, "ones_complement_sum",
                        lambda data, *a: summed.append(len(data)) or real(data, *a))
    header, data = _with_checksums("SIMPLE  =                    T" + " " * 49, b"", "2026-01-01T00:00:00")
    assert summed == [2880] and data == b""
    assert b"DATASUM = '         0'" in header


def test_stamps_replace_their_cards_where_they_are():
    # CREATOR, DATE and HISTNUM among an HDU's keywords are stamped in place; CHECKSUM and
    # DATASUM are left out (the writer appends fresh ones)
    from stk_astrometry.fitsutil import history_records
    from stk_astrometry.formats._fits import HduSpec, _keyword_cards

    keys = (("A", 1, ""), ("DATE", "1999-01-01", "old"), ("B", 2, ""), ("CREATOR", "x", "y"),
            ("CHECKSUM", "ZZZ", ""), ("HISTNUM", 4, "n"), ("DATASUM", "1", ""), ("C", 3, ""))
    final, records = _keyword_cards(HduSpec(None, keys=keys), frozenset(), "stk_t",
                                    [("a", "b")], {}, "2026-01-02T03:04:05", "stk_t - x",
                                    history_records)
    assert final == [("A", 1, ""), ("DATE", "2026-01-02T03:04:05", "Date and time of file creation"),
                     ("B", 2, ""), ("CREATOR", "stk_t - x", "tool that created this output"),
                     ("HISTNUM", 6, "n"), ("C", 3, "")]
    assert [r[-8:] for r in records] == ["ASC00005", "ASC00006"]


def test_cards_text_is_the_cards_images_or_none_where_cfitsio_would_change_one(monkeypatch):
    """_cards_text: the images of format_card joined; None for a card cfitsio's write_record
    would change (a name not in upper case or not valid, text not printable ASCII); a card
    remembered with the type of its value -- equal cards of other types (1, 1.0, True), the
    float zeros and numpy's numbers have their own images -- and the memory bounded."""
    from stk_astrometry.formats import _fits
    from stk_astrometry.formats._fits import _cards_text, format_card

    cards = [("NAME", "text", "a comment"), ("N", 1, "one"), ("N", 1.0, "one"), ("N", True, "one"),
             ("Z", 0.0, ""), ("Z", -0.0, ""), ("Z", 0, ""), ("Z", False, ""),
             ("U", None, "undefined"), ("F", 2.5e-11, "x"), ("LONGNAME9", 3, "a HIERARCH card"),
             ("NZ", np.float64(0.0), ""), ("NZ", np.float64(-0.0), ""), ("NI", np.int32(7), ""),
             ("S", "x" * 70, "a CONTINUE card")]
    want = "".join(format_card(*card) for card in cards)
    for _ in range(3):      # the first time made, then remembered: the same text
        assert _cards_text(cards) == want
        assert _cards_text(cards[::-1]) == "".join(format_card(*c) for c in cards[::-1])
    assert _cards_text([]) == ""
    # what is remembered: the Python values but the float zeros; numpy's numbers never
    # (equal cards share an entry: 1, 1.0 and True, 0 and False; the last one made is there)
    assert len(_fits._CARD_IMAGES) == 7
    assert _fits._CARD_IMAGES[("N", 1, "one")] == (format_card("N", 1, "one"), int)
    assert _fits._CARD_IMAGES[("Z", 0, "")] == (format_card("Z", 0, ""), int)
    assert ("NZ", 0.0, "") not in _fits._CARD_IMAGES and ("NI", 7, "") not in _fits._CARD_IMAGES
    for card in cards[:1] + cards[8:11] + cards[14:]:
        assert _fits._CARD_IMAGES[card] == (format_card(*card), type(card[1]))
    # a remembered card is not formatted again (nor through format_card's own memos)
    distinct = cards[:1] + cards[8:11] + cards[14:]
    zeros = [("Z", -0.0, ""), ("NZ", np.float64(-0.0), "")]
    others = [("LONGNAME10", 2, ""), ("SHORT", 2, ""), ("B", False, ""), ("EIGHTCHR", 2.5, ""),
              ("NINECHARS", 2.5, ""), ("S", "2", "")]
    want_distinct, want_equal, want_zeros, want_others = (
        "".join(format_card(*c) for c in listed)
        for listed in (distinct, cards[1:4], zeros, others))
    made = []
    by = []         # which maker made each
    for maker in ("_format_card", "_short_number_card"):
        real = getattr(_fits, maker)
        monkeypatch.setattr(_fits, maker, lambda *c, real=real, maker=maker:
                            made.append(c) or by.append(maker) or real(*c))
    monkeypatch.setattr(_fits, "format_card", lambda *c: pytest.fail("format_card called"))
    assert _cards_text(distinct) == want_distinct
    assert made == []
    # (equal cards of other types share an entry: each made again when the other was last)
    assert _cards_text(cards[1:4]) == want_equal
    assert made == [cards[2], cards[3]]
    made.clear()
    assert _cards_text(zeros) == want_zeros and made == zeros
    made.clear()
    # a number card of a short name by _short_number_card, any other by _format_card
    by.clear()
    assert _cards_text(others) == want_others and made == others
    assert by == ["_format_card", "_short_number_card", "_format_card", "_short_number_card",
                  "_format_card", "_format_card"]
    monkeypatch.undo()
    # refused: the whole text is None, wherever the card is, and nothing of it is remembered
    for bad in (("lower", 1, ""), ("A B", 1, ""), ("TAB", "a\tb", ""), ("E", "caf\u00e9", ""),
                ("C", 1, "caf\u00e9"), ("C", 2, "\x7f")):
        _fits._CARD_IMAGES.clear()
        for at in (0, 1, 2):
            listed = [("A", 1, ""), ("B", "b", "")]
            listed.insert(at, bad)
            assert _cards_text(listed) is None, (bad, at)
        assert bad not in _fits._CARD_IMAGES
    # bounded: emptied when full, so never more than its maximum
    _fits._CARD_IMAGES.clear()
    sizes = []
    for i in range(3 * _fits._CARD_IMAGES_MAX):
        assert _cards_text([("RA", float(i) + 0.5, "")]) == format_card("RA", float(i) + 0.5, "")
        sizes.append(len(_fits._CARD_IMAGES))
    assert max(sizes) == _fits._CARD_IMAGES_MAX == 512
    assert sizes[_fits._CARD_IMAGES_MAX] == 1
