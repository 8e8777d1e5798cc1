"""The file-format modules (stk_astrometry.formats): write -> read -> equal.

NaN values, undefined keywords, empty tables and TNULL integers on input included.
"""

import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry.api import _Run
from stk_astrometry.errors import FormatError, InputError
from stk_astrometry.formats import catalogs, detcorr, diag, idlist, pairs, transform
from stk_astrometry.tableio import read_table

HIST = _Run("stk_test", {"infile": "x.fits", "clobber": True})


def _equal_tables(a, b):
    assert list(a) == list(b)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.shape == y.shape, name
        if x.dtype.kind in "fc":
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert np.array_equal(x.astype(str) if x.dtype.kind in "US" else x,
                                  y.astype(str) if y.dtype.kind in "US" else y), name


def _pair_columns(rng, n, *, layout):
    cols = {}
    for name, fmt, _ in layout:
        if fmt == "J":
            cols[name] = rng.integers(-5, 1000, n).astype(np.int32)
        elif fmt == "K":
            cols[name] = rng.integers(0, 2**62, n, dtype=np.int64)
        elif fmt is None:
            cols[name] = np.array(["TRUE", "MARGINAL", "X"][:n] + ["TRUE"] * max(0, n - 3))
        else:
            cols[name] = rng.normal(size=n)
            if n:
                cols[name][0] = np.nan
    return cols


def make_pairs(rng, *, n_det=3, n_gaia=4, n_wise=0, n_wg=2):
    tables = {"DETECTIONS": _pair_columns(rng, n_det, layout=pairs.DETECTIONS_LAYOUT),
              "GAIA_PAIRS": _pair_columns(rng, n_gaia, layout=pairs.PAIRS_LAYOUT),
              "WISE_PAIRS": _pair_columns(rng, n_wise, layout=pairs.PAIRS_LAYOUT),
              "WISE_GAIA": _pair_columns(rng, n_wg, layout=pairs.WISE_GAIA_LAYOUT)}
    units = {name: {c: u for c, _, u in pairs.LAYOUTS[name] if u} for name in pairs.TABLE_HDUS}
    keys = (("STACKID", "acisfJ0000000p000000_001", "detect_stack_id"),
            ("INSTRUME", "HRC", "ACIS or HRC"),
            ("RA_STACK", 359.9999, "[deg] stack tangent point RA"),
            ("DEC_STACK", -89.5, "[deg] stack tangent point Dec"),
            ("MATCHRAD", 3.0, "[arcsec] cross-match radius"),
            ("SEPBINS", "1,2,3", "[arcsec] upper edges of separation groups"),
            ("NGROUPS", 3, "number of separation groups"),
            ("DENSGAIA", 1.5, "[arcmin-2] Gaia within RSTACK, unfiltered"),
            ("DENSWISE", None, "undefined stays undefined"),
            ("HAVEWISE", False, "ALLWISE inputs given?"),
            ("METHOD", "direct", "direct, twostep or none"))
    return pairs.Pairs(stackid=keys[0][1], instrument="HRC", ra_stack=359.9999,
                       dec_stack=-89.5, method="direct", n_groups=3, match_radius=3.0,
                       dens_gaia=1.5, dens_wise=None, keywords=keys, tables=tables,
                       units=units, cards={})


@pytest.mark.parametrize("sizes", [dict(), dict(n_det=0, n_gaia=0, n_wise=0, n_wg=0),
                                   dict(n_det=5, n_gaia=1, n_wise=7, n_wg=0)])
def test_pairs_round_trip(tmp_path, sizes):
    rng = np.random.default_rng(3)
    p = make_pairs(rng, **sizes)
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    q = pairs.read_pairs(tmp_path / "p.fits")
    for name in pairs.TABLE_HDUS:
        _equal_tables(p.tables[name], q.tables[name])
        assert q.units[name] == p.units[name]
    assert q.keywords == p.keywords
    for attr in ("stackid", "instrument", "ra_stack", "dec_stack", "method", "n_groups",
                 "match_radius", "dens_gaia", "dens_wise"):
        assert getattr(q, attr) == getattr(p, attr), attr
    # written again from what was read: the same file content
    pairs.write_pairs(q, tmp_path / "q.fits", HIST)
    diff = fits.FITSDiff(str(tmp_path / "p.fits"), str(tmp_path / "q.fits"),
                         ignore_keywords=["DATE", "CHECKSUM", "DATASUM", "HISTORY"])
    assert diff.identical, diff.report()
    with fits.open(tmp_path / "p.fits") as hdul:
        assert hdul[0].header["CONTENT"] == "STKPAIRS"
        assert hdul[0].header["DTYPE1"] == "DEC_STACK"       # the CXC long-keyword convention
        assert all(h.header["STACKID"] == p.stackid for h in hdul)
        assert hdul["GAIA_PAIRS"].columns["ref_id"].format == "K"


def test_pairs_reader_names_what_is_missing(tmp_path):
    p = make_pairs(np.random.default_rng(1))
    hdul = pairs.build_pairs_hdul(p)
    del hdul["GAIA_PAIRS"].columns
    hdul.pop(2)
    hdul.writeto(tmp_path / "bad.fits")
    with pytest.raises(FormatError, match="GAIA_PAIRS"):
        pairs.read_pairs(tmp_path / "bad.fits")


def _components():
    return (transform.Component("TOTAL", 0.25, -0.5, np.array([[0.01, 0.002], [0.002, 0.04]]),
                                12, 2, 0.7, 0.4),
            transform.Component("DET_TO_WISE", 0.2, -0.4, np.full((2, 2), np.nan), 0, 0,
                                np.nan, np.nan),
            transform.Component("WISE_TO_GAIA", 0.05, -0.1, np.eye(2) * 1e-4, 40, 0, 0.3, 0.1))


def _keywords(total):
    return transform.transform_keywords(
        stackid="hrciJ1234567m123456_002", instrument="HRC", ra_stack=10.0, dec_stack=-12.5,
        method="twostep", estimator="spec", loss="cauchy", f_scale=1.0, total=total,
        n_match=9, qa_flags=24, qa_reason="FEWMATCH: x; DISAGREE: " + "y" * 80,
        n_eff=None, alternative=("mixture", total))


def test_transform_round_trip(tmp_path):
    comps = _components()
    keys = _keywords(comps[0])
    transform.write_transform(tmp_path / "x.fits", comps, keys, HIST, instrument="HRC",
                              ra_ref=10.0, dec_ref=-12.5)
    t = transform.read_transform_file(tmp_path / "x.fits")
    assert [c.name for c in t.components] == [c.name for c in comps]
    for a, b in zip(comps, t.components, strict=True):
        assert (a.d_xi, a.d_eta, a.n_used, a.group) == (b.d_xi, b.d_eta, b.n_used, b.group)
        # the file holds the 1-sigma errors, so the variances come back squared (last bit)
        assert np.allclose(a.cov, b.cov, rtol=1e-15, atol=0, equal_nan=True)
        assert np.array_equal([a.resstd0, a.resstd1], [b.resstd0, b.resstd1], equal_nan=True)
    assert [(k, v) for k, v, _ in t.keywords] == [(k, v) for k, v, _ in keys]
    assert t.instrument == "HRC"
    grid = transform.INSTRUMENT_GRIDS["HRC"]
    assert t.columns["t1"][0] == pytest.approx(0.25 / -grid[0])
    assert t.columns["component"].dtype.kind == "U"
    with fits.open(tmp_path / "x.fits") as hdul:
        assert hdul["STKXFM"].columns["component"].format == "16A"
    # what stk_update_wcs reads: the TOTAL row, its id and the HDU's bytes
    ti = transform.read_transform(str(tmp_path / "x.fits"))
    assert ti.xfm.xfm_id == t.xfm_id
    assert (ti.xfm.d_xi_arcsec, ti.xfm.d_eta_arcsec) == (0.25, -0.5)
    assert len(ti.hdu_bytes) % 2880 == 0 and f"'{t.xfm_id}'".encode() in ti.hdu_bytes


def test_transform_reader_refuses_a_non_transform(tmp_path):
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="D", array=[1.0])], name="OTHER")]).writeto(tmp_path / "o.fits")
    with pytest.raises(FormatError, match="no STKXFM HDU"):
        transform.read_transform(str(tmp_path / "o.fits"))
    with pytest.raises(FormatError, match="no STKXFM HDU"):
        transform.read_transform_file(tmp_path / "o.fits")


@pytest.mark.parametrize("n", [0, 4])
def test_detcorr_round_trip(tmp_path, n):
    rng = np.random.default_rng(5)
    cols = {c: rng.normal(size=n) for c in detcorr.COLUMNS}
    cols["region_id"] = np.arange(n)
    if n:
        cols["xi_corr"][1] = np.nan
    keys = _keywords(_components()[0])
    detcorr.write_detcorr(tmp_path / "d.fits", cols, keys, HIST)
    d = detcorr.read_detcorr(tmp_path / "d.fits")
    _equal_tables({k: (v.astype(np.int32) if k == "region_id" else v) for k, v in cols.items()},
                  d.columns)
    assert [(k, v) for k, v, _ in d.keywords] == [(k, v) for k, v, _ in keys]


def test_diag_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    p = make_pairs(rng, n_gaia=5, n_wise=0, n_wg=3)
    used = {"GAIA_PAIRS": np.array([True, False, True, True, False])}
    p_true = {"GAIA_PAIRS": np.array([0.9, 0.1, np.nan, 1.0, 0.0])}
    diag.write_diag(tmp_path / "g.fits", p, used, p_true, HIST)
    g = diag.read_diag(tmp_path / "g.fits")
    for name in diag.HDUS:
        n = p.n_rows(name)
        want = dict(p.tables[name], used_spec=used.get(name, np.zeros(n, bool)),
                    p_true=p_true.get(name, np.full(n, np.nan)))
        _equal_tables(want, g.tables[name])
    with fits.open(tmp_path / "g.fits") as hdul:
        assert hdul["GAIA_PAIRS"].header["STACKID"] == p.stackid
        assert hdul["WISE_PAIRS"].data is None or len(hdul["WISE_PAIRS"].data) == 0


def test_id_list_round_trip():
    ids = np.array([7, 3, 3, -2, 2**40])
    assert list(idlist.parse_id_list(idlist.format_id_list(ids))) == sorted(set(ids.tolist()))


def test_id_list_text_blanks_commas_comments_sorted_unique():
    # formats.md §2c: ids separated by blanks or commas, '#' comments, blank lines ignored
    got = idlist.parse_id_list("# header, 99\n 5, 3 7,,\n\n\t3\t9 # 11 not an id\n-4\n")
    assert got.dtype == np.int64 and got.tolist() == [-4, 3, 5, 7, 9]
    assert idlist.parse_id_list("").tolist() == [] and idlist.parse_id_list("").dtype == np.int64


def test_id_list_bad_token_names_the_source_line_and_token():
    with pytest.raises(InputError, match=r"^include=ids\.txt, line 3: '4\.5' is not a detection "
                                         r"region_id \(an integer\)$"):
        idlist.parse_id_list("1\n\n2 4.5\n", source="include=ids.txt")


@pytest.mark.parametrize("at", ["", "@"])
def test_id_list_file_and_its_at_spelling(tmp_path, at):
    path = tmp_path / "ids.txt"
    path.write_text("12, 4\n4\n")
    assert idlist.read_id_list(f"{at}{path}", param="exclude").tolist() == [4, 12]


def test_id_list_unreadable_file_names_the_parameter(tmp_path):
    with pytest.raises(InputError, match=r"^exclude=.*nope\.txt: cannot read the id list"):
        idlist.read_id_list(tmp_path / "nope.txt", param="exclude")


def test_id_list_written_one_id_per_line_sorted_unique():
    assert idlist.format_id_list([9, 2, 9, 5]) == "2\n5\n9\n"
    assert idlist.format_id_list([]) == ""


def test_catalog_reader_tnull_and_nan(tmp_path):
    """A TNULL integer count and a NaN float read as NaN; ids with TNULL are refused."""
    n = 4
    cols = [fits.Column(name="region_id", format="J", array=np.arange(1, n + 1)),
            fits.Column(name="RA", format="D", array=[10.0, 10.001, 10.002, 9.999]),
            fits.Column(name="dec", format="D", array=[-5.0, -5.001, -4.999, -5.0]),
            fits.Column(name="err_ellipse_r0", format="E", array=[1, 2, np.nan, 1]),
            fits.Column(name="err_ellipse_r1", format="E", array=[1, 1, 1, 1]),
            fits.Column(name="likelihood_class", format="8A",
                        array=["TRUE", "TRUE", "MARGINAL", "TRUE"]),
            fits.Column(name="src_cnts", format="J", null=-99, array=[10, -99, 5, 7])]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="SRCLIST")]) \
        .writeto(tmp_path / "det.fits")
    cat = catalogs.read_detections(read_table(str(tmp_path / "det.fits"), param="detfile"),
                                   ra_stack=10.0, dec_stack=-5.0)
    det = cat.detections
    assert np.isnan(det.src_cnts[1]) and det.src_cnts[0] == 10
    assert np.isnan(det.err_r0_arcsec[2])
    assert (cat.ra_stack, cat.dec_stack, cat.origin) == (10.0, -5.0, "parameters")
    cols[0] = fits.Column(name="region_id", format="J", null=-1, array=[1, -1, 3, 4])
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="SRCLIST")]) \
        .writeto(tmp_path / "det2.fits")
    from stk_astrometry.errors import CatalogError

    with pytest.raises(CatalogError, match="null value"):
        catalogs.read_detections(read_table(str(tmp_path / "det2.fits"), param="detfile"),
                                 ra_stack=10.0, dec_stack=-5.0)


def test_columns_carry_descriptions_and_ucds(tmp_path):
    """TCOMMn/TUCDn on every column the formats write (TOPCAT/STILTS show them)."""
    p = make_pairs(np.random.default_rng(2))
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    comps = _components()
    transform.write_transform(tmp_path / "x.fits", comps, _keywords(comps[0]), HIST,
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


def test_long_keyword_is_a_plain_keyword_and_a_cxc_pair(tmp_path):
    """DEC_STACK: astropy and fitsio read it by name; CIAO's DTYPEn/DVALn pair is kept."""
    import fitsio

    from stk_astrometry.fitsutil import get_keyword

    p = make_pairs(np.random.default_rng(4))
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    for ext in range(5):
        h = fits.getheader(tmp_path / "p.fits", ext)
        assert h["DEC_STACK"] == -89.5                    # astropy, no helper
        assert h["DTYPE1"] == "DEC_STACK" and h["DVAL1"] == -89.5
        assert get_keyword(h, "DEC_STACK") == -89.5
    assert fitsio.read_header(str(tmp_path / "p.fits"), ext=0)["DEC_STACK"] == -89.5
    # short keywords are plain, never DTYPEn pairs or CONTINUE cards when under 68 characters
    text = (tmp_path / "p.fits").read_bytes()[:2880 * 3].decode("ascii")
    assert "CONTINUE" not in text
    assert pairs.read_pairs(tmp_path / "p.fits").keywords == p.keywords


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
                    _append_text_card(hdu, hdu.get_extnum() + 1, f"TCOMM{i}", value)
        raw = path.read_bytes()
        cards = [raw[i:i + 80] for i in range(0, len(raw), 80)]
        images[how] = [c for c in cards if not c.startswith((b"CHECKSUM", b"DATASUM"))]
    assert images["fast"] == images["write_key"]


def _damaged_copies(good, tmp_path):
    """A file cut short inside its data, a file of text, and a FITS file of another kind."""
    raw = good.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[:len(raw) - 2880 - 100])
    text = tmp_path / "text.fits"
    text.write_text("not a FITS file\n")
    other = tmp_path / "other.fits"
    fits.HDUList([fits.PrimaryHDU()]).writeto(other)
    return cut, text, other


@pytest.mark.parametrize("kind", ["detcorr", "diag"])
def test_damaged_product_files_are_one_clean_error(tmp_path, kind, recwarn):
    """A truncated, non-FITS, foreign or missing file: InputError/FormatError, no raw warning."""
    from stk_astrometry.errors import FormatError, InputError

    good = tmp_path / "good.fits"
    if kind == "detcorr":
        cols = {c: np.arange(5, dtype=float) for c in detcorr.COLUMNS}
        detcorr.write_detcorr(good, cols, _keywords(_components()[0]), HIST)
        reader = detcorr.read_detcorr
    else:
        p = make_pairs(np.random.default_rng(3), n_gaia=40, n_wise=0, n_wg=3)
        diag.write_diag(good, p, {}, {}, HIST)
        reader = diag.read_diag
    reader(good)
    cut, text, other = _damaged_copies(good, tmp_path)
    for bad, err in ((cut, InputError), (text, InputError), (other, FormatError),
                     (tmp_path / "absent.fits", InputError)):
        with pytest.raises(err, match=str(bad.name)):
            reader(bad)
    assert not [w for w in recwarn if "astropy" in type(w.message).__module__], \
        [str(w.message) for w in recwarn]


# ---------------------------------------------------------------------------------------------
# §2c detection-id lists: the comment and separator rules, the @-spellings, selection files


def test_id_list_comment_starts_at_the_first_hash():
    # everything after the first '#' is comment, even a second '#' and ids after it
    assert idlist.parse_id_list("5 6 # note # 7\n8").tolist() == [5, 6, 8]


def test_id_list_leading_separator_does_not_end_the_line():
    assert idlist.parse_id_list(",5, 6\n, ,7").tolist() == [5, 6, 7]


def test_id_list_bad_token_without_a_source_names_the_string():
    with pytest.raises(InputError, match=r"^<string>, line 1: 'x' is not"):
        idlist.parse_id_list("x")


def test_id_list_bad_token_in_a_file_names_the_parameter_and_file(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("1\nnine\n")
    with pytest.raises(InputError, match=rf"^include={path}, line 2: 'nine' is not"):
        idlist.read_id_list(path, param="include")


def test_id_list_double_at_is_a_literal_file_name(tmp_path, monkeypatch):
    """'@file' is 'file'; '@@file' is not stripped (a file whose name starts with '@')."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "@@ids.txt").write_text("3\n")
    (tmp_path / "@ids.txt").write_text("99\n")
    assert idlist.read_id_list("@@ids.txt", param="include").tolist() == [3]


def _selection_text():
    from stk_astrometry.formats import selection

    rows = (selection.SelectionRow(12, 1001, 0.4, 1, "used", 0.98, True),
            selection.SelectionRow(12, 1002, 2.1, 3, "unused", 0.02, False),
            selection.SelectionRow(15, 1003, 0.7, 1, "used", float("nan"), False),
            selection.SelectionRow(20, 1004, 1.2, 2, "excluded", 0.5, True))
    return selection.format_selection(selection.Selection("acisfJ0000000p000000_001",
                                                          "GAIA_PAIRS", "0123456789abcdef",
                                                          rows))


@pytest.mark.parametrize("param, want", [("include", [12, 20]), ("exclude", [15])])
def test_id_list_reads_a_selection_file_by_its_use_column(tmp_path, param, want, caplog):
    """formats.md §2d: include= the detections with a pair marked yes, exclude= those whose
    pairs are all no; a detection whose pairs disagree is reported once, as a warning."""
    path = tmp_path / "sel.txt"
    path.write_text(_selection_text())
    with caplog.at_level("WARNING", logger="stk_astrometry.formats.idlist"):
        got = idlist.read_id_list(f"@{path}", param=param)
    assert got.dtype == np.int64 and got.tolist() == want
    notes = [r for r in caplog.records if r.name == "stk_astrometry.formats.idlist"]
    assert len(notes) == 1 and notes[0].levelname == "WARNING"
    assert notes[0].getMessage().startswith("selection: 1 detection(s) have pairs marked both "
                                            "yes and no (12)")


def test_id_list_bad_selection_line_names_the_parameter_and_file(tmp_path):
    path = tmp_path / "sel.txt"
    path.write_text(_selection_text() + "21 1005 0.3 1 used 0.9 maybe\n")
    with pytest.raises(InputError, match=rf"^exclude={path}, line \d+: use = 'maybe'"):
        idlist.read_id_list(path, param="exclude")


def test_id_list_written_from_text_ids_sorts_them_as_numbers():
    assert idlist.format_id_list(np.array(["10", "9", "10"])) == "9\n10\n"


# ---------------------------------------------------------------------------------------------
# §2a corrected detections: the layout formats.md promises


def _detcorr_columns(n, dtype=float):
    rng = np.random.default_rng(n)
    cols = {c: rng.normal(size=n).astype(dtype) for c in detcorr.COLUMNS}
    cols["region_id"] = np.arange(1, n + 1, dtype=np.int64)
    return cols


def test_detcorr_file_layout_as_documented(tmp_path):
    """CONTENT in the primary, HDU DETECTIONS with int32 region_id and float64 positions (even
    from float32 input), TUNITn deg/arcsec, TCOMMn on every column, the transform's keywords
    in both headers."""
    keys = _keywords(_components()[0])
    cols = _detcorr_columns(3, dtype=np.float32)
    detcorr.write_detcorr(tmp_path / "d.fits", cols, keys, HIST)
    with fits.open(tmp_path / "d.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "DETECTIONS"]
        h0, h1 = hdul[0].header, hdul["DETECTIONS"].header
        assert h0["CONTENT"] == "STKDETCORR"
        assert h0.comments["CONTENT"] == "stk_xfm corrected detections"
        assert "CONTENT" not in h1
        t = hdul["DETECTIONS"]
        assert t.columns.names == list(detcorr.COLUMNS)
        assert t.columns["region_id"].format == "J" and t.columns["region_id"].unit is None
        for c in detcorr.COLUMNS[1:]:
            assert t.columns[c].format == "D", c
            assert t.columns[c].unit == ("deg" if c.startswith(("ra", "dec")) else "arcsec"), c
        for i in range(1, h1["TFIELDS"] + 1):
            assert h1.get(f"TCOMM{i}"), h1[f"TTYPE{i}"]
        for h in (h0, h1):
            assert h["STACKID"] == "hrciJ1234567m123456_002" and h["QAFLAGS"] == 24
            assert h["DEC_STACK"] == -12.5
        assert len(t.data) == 3
    d = detcorr.read_detcorr(tmp_path / "d.fits")
    assert d.path == str(tmp_path / "d.fits")
    assert d.columns["region_id"].tolist() == [1, 2, 3]
    assert np.array_equal(d.columns["xi_corr"], cols["xi_corr"].astype(float))


def test_detcorr_as_hdulist_is_the_file_layout():
    keys = _keywords(_components()[0])
    hdul = detcorr.build_detcorr_hdul(_detcorr_columns(2), keys)
    assert hdul[0].header["CONTENT"] == "STKDETCORR"
    assert hdul["DETECTIONS"].columns.names == list(detcorr.COLUMNS)
    assert hdul["DETECTIONS"].columns["ra_corr"].unit == "deg"
    assert hdul["DETECTIONS"].header["STACKID"] == "hrciJ1234567m123456_002"


def test_detcorr_writer_refuses_an_existing_file_without_clobber(tmp_path):
    from stk_astrometry.errors import OutputError

    keys = _keywords(_components()[0])
    path = tmp_path / "d.fits"
    detcorr.write_detcorr(path, _detcorr_columns(2), keys, HIST)
    before = path.read_bytes()
    with pytest.raises(OutputError):
        detcorr.write_detcorr(path, _detcorr_columns(4), keys, HIST)
    assert path.read_bytes() == before
    detcorr.write_detcorr(path, _detcorr_columns(4), keys, HIST, clobber=True)
    assert len(detcorr.read_detcorr(path).columns["ra"]) == 4


def test_detcorr_reader_names_what_is_wrong(tmp_path):
    keys = _keywords(_components()[0])
    detcorr.write_detcorr(tmp_path / "d.fits", _detcorr_columns(2), keys, HIST)
    with fits.open(tmp_path / "d.fits") as hdul:
        hdul["DETECTIONS"].columns.del_col("xi_corr")
        hdul.writeto(tmp_path / "nocol.fits")
        hdul.pop(1)
        hdul.writeto(tmp_path / "nohdu.fits")
    with pytest.raises(FormatError, match=r"nocol\.fits\[DETECTIONS\]: missing column\(s\) xi_corr$"):
        detcorr.read_detcorr(tmp_path / "nocol.fits")
    with pytest.raises(FormatError, match=r"nohdu\.fits: no DETECTIONS HDU$"):
        detcorr.read_detcorr(tmp_path / "nohdu.fits")
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "other.fits")
    with pytest.raises(FormatError, match=r"not a corrected-detections file \(CONTENT != STKDETCORR\)"):
        detcorr.read_detcorr(tmp_path / "other.fits")


# ---------------------------------------------------------------------------------------------
# §2b diagnostics: the pair HDUs copied with their header cards, plus used_spec and p_true


def test_diag_copies_a_pairs_files_hdus_with_their_cards(tmp_path):
    """From a pairs file read back: every pair HDU keeps its header cards (long comments
    included), units, TCOMMn/TUCDn; used_spec is logical, p_true float64; the primary holds
    CONTENT and the mixture's keywords."""
    p = make_pairs(np.random.default_rng(8), n_gaia=3, n_wise=2, n_wg=2)
    long_note = ("x" * 30, "a comment kept with its card")
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    q = pairs.read_pairs(tmp_path / "p.fits")
    q.cards["GAIA_PAIRS"] = q.cards["GAIA_PAIRS"] + (("NOTE",) + long_note,)
    used = {"GAIA_PAIRS": [1, 0, 1]}
    p_true = {"GAIA_PAIRS": [0.5, 0.25, 1]}
    diag.write_diag(tmp_path / "g.fits", q, used, p_true, HIST,
                    keywords=(("SYSERR", 0.125, "[arcsec] fitted floor"),
                              ("ERRSCALE", 1.5, "fitted scale")))
    with fits.open(tmp_path / "g.fits") as hdul:
        h0 = hdul[0].header
        assert h0["CONTENT"] == "STKXFMDIAG"
        assert h0.comments["CONTENT"] == "stk_xfm diagnostics: pairs used"
        assert (h0["SYSERR"], h0["ERRSCALE"]) == (0.125, 1.5)
        assert [h.name for h in hdul[1:]] == list(diag.HDUS)
        for name in diag.HDUS:
            t = hdul[name]
            names = [c for c, _, _ in pairs.LAYOUTS[name]]
            assert t.columns.names == names + ["used_spec", "p_true"], name
            assert t.columns["used_spec"].format == "L" and t.columns["p_true"].format == "D"
            for c, fmt, unit in pairs.LAYOUTS[name]:
                if fmt:
                    assert t.columns[c].format == fmt, (name, c)
                assert (t.columns[c].unit or "") == unit, (name, c)
            h = t.header
            assert h["STACKID"] == p.stackid and h["DEC_STACK"] == -89.5
            desc = {h[f"TTYPE{i}"]: h.get(f"TCOMM{i}") for i in range(1, h["TFIELDS"] + 1)}
            ucd = {h[f"TTYPE{i}"]: h.get(f"TUCD{i}") for i in range(1, h["TFIELDS"] + 1)}
            assert all(desc[c] for c in names), name
            if name == "WISE_GAIA":
                assert desc["d_xi"] == "Offset in xi, Gaia minus ALLWISE"
            else:
                assert ucd["sep"] == "pos.angDistance"
        g = hdul["GAIA_PAIRS"]
        assert g.header["NOTE"] == long_note[0]
        assert g.header.comments["NOTE"] == long_note[1]
        assert g.data["used_spec"].tolist() == [True, False, True]
        assert g.data["p_true"].tolist() == [0.5, 0.25, 1.0]
        assert not hdul["WISE_PAIRS"].data["used_spec"].any()
        assert np.isnan(hdul["WISE_GAIA"].data["p_true"]).all()


def test_diag_of_in_memory_pairs_repeats_the_stack_keywords(tmp_path):
    """Pairs built in memory have no cards: each HDU gets the stack keywords, comments kept
    as far as the card holds them (a long STACKID keeps the start of its comment)."""
    p = make_pairs(np.random.default_rng(8), n_gaia=2, n_wise=0, n_wg=1)
    stackid = "acisfJ0000000p000000_001_" + "x" * 26      # 51 characters
    keys = tuple(("STACKID", stackid, "detect_stack_id") if k[0] == "STACKID" else k
                 for k in p.keywords)
    p = pairs.Pairs(**{**p.__dict__, "keywords": keys, "stackid": stackid})
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    with fits.open(tmp_path / "g.fits") as hdul:
        for name in diag.HDUS:
            h = hdul[name].header
            assert h["STACKID"] == stackid and h.comments["STACKID"].startswith("detect_stack")
            assert h["INSTRUME"] == "HRC" and h["RA_STACK"] == 359.9999
            assert "MATCHRAD" not in h and "METHOD" not in h    # primary-only keywords
        assert "SYSERR" not in hdul[0].header


def test_diag_as_hdulist_fills_what_was_not_given():
    p = make_pairs(np.random.default_rng(8), n_gaia=2, n_wise=0, n_wg=3)
    hdul = diag.build_diag_hdul(p, {"GAIA_PAIRS": [True, False]}, {"GAIA_PAIRS": [0.1, 0.9]},
                                (("SYSERR", 0.2, ""),))
    assert hdul[0].header["CONTENT"] == "STKXFMDIAG" and hdul[0].header["SYSERR"] == 0.2
    assert hdul["GAIA_PAIRS"].data["used_spec"].tolist() == [True, False]
    wg = hdul["WISE_GAIA"]
    assert wg.data["used_spec"].tolist() == [False] * 3
    assert np.isnan(wg.data["p_true"]).all() and len(wg.data["p_true"]) == 3
    assert wg.header["STACKID"] == p.stackid


def test_diag_writer_refuses_an_existing_file_without_clobber(tmp_path):
    from stk_astrometry.errors import OutputError

    p = make_pairs(np.random.default_rng(8))
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    with pytest.raises(OutputError):
        diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST, clobber=True)


def test_diag_reader_names_what_is_wrong(tmp_path):
    p = make_pairs(np.random.default_rng(8))
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    with fits.open(tmp_path / "g.fits") as hdul:
        hdul["WISE_GAIA"].columns.del_col("p_true")
        hdul.writeto(tmp_path / "nocol.fits")
        hdul.pop(2)
        hdul.writeto(tmp_path / "nohdu.fits")
    with pytest.raises(FormatError, match=r"nocol\.fits\[WISE_GAIA\]: no p_true column$"):
        diag.read_diag(tmp_path / "nocol.fits")
    with pytest.raises(FormatError, match=r"nohdu\.fits: no WISE_PAIRS HDU$"):
        diag.read_diag(tmp_path / "nohdu.fits")
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "other.fits")
    with pytest.raises(FormatError, match=r"not a diagnostics file \(CONTENT != STKXFMDIAG\)"):
        diag.read_diag(tmp_path / "other.fits")
    assert diag.read_diag(tmp_path / "g.fits").path == str(tmp_path / "g.fits")


# ---------------------------------------------------------------------------------------------
# §1 the pairs file's content from the matching core (what stk_match writes)

_T0 = (150.0, 2.0)      # the stack's tangent point


def _sky(xi, eta):
    from stk_astrometry.tangent import tangent_to_sky

    return tangent_to_sky(np.asarray(xi, float), np.asarray(eta, float), *_T0)


def _match_inputs(*, with_wise=True, gaia_errors=True):
    from stk_astrometry import matching

    dxi, deta = np.array([0.0, 60.0, -100.0, 120.0]), np.array([0.0, -30.0, 50.0, 120.0])
    ra, dec = _sky(dxi, deta)
    det = matching.Detections(
        region_id=np.array([11, 22, 33, 44]), ra_deg=ra, dec_deg=dec,
        err_r0_arcsec=np.array([1.1, 1.2, 1.3, 1.4]), err_r1_arcsec=np.array([0.6, 0.7, 0.8, 0.9]),
        err_ang_deg=np.array([10.0, 20.0, 30.0, 40.0]),
        theta_arcmin=np.array([2.5, 3.5, 4.5, 5.5]), src_cnts=np.array([50.0, 60.0, 70.0, 80.0]),
        likelihood_class=np.array(["TRUE", "MARGINAL", "FALSE", "TRUE"]))
    gxi = np.array([0.5, 61.2, -2.0, 300.0])
    geta = np.array([0.0, -29.0, 1.5, -300.0])
    gra, gdec = _sky(gxi, geta)
    gaia = matching.GaiaSources(
        source_id=np.array([5001, 5002, 5003, 5004], dtype=np.int64), ra_deg=gra, dec_deg=gdec,
        pmra_masyr=np.array([1.0, 2.0, 3.0, 4.0]), pmdec_masyr=np.array([-1.0, -2.0, 0.0, 1.0]),
        sigra_arcsec=np.array([0.01, 0.02, 0.03, 0.04]) if gaia_errors else None,
        sigdec_arcsec=np.array([0.05, 0.06, 0.07, 0.08]) if gaia_errors else None)
    if not with_wise:
        return det, gaia, None, None
    wxi, weta = np.array([60.3, 300.2]), np.array([-30.2, -300.1])
    wra, wdec = _sky(wxi, weta)
    wise = matching.WiseSources(
        allwise_oid=np.array([7001, 7002], dtype=np.int64), ra_deg=wra, dec_deg=wdec,
        sigra_arcsec=np.array([0.15, 0.25]), sigdec_arcsec=np.array([0.35, 0.45]),
        cc_flags=np.array(["0000", "0000"]))
    best = matching.BestNeighbours(source_id=np.array([5002, 5004], dtype=np.int64),
                                   allwise_oid=np.array([7001, 7002], dtype=np.int64))
    return det, gaia, wise, best


def _pairs_from_inputs(det, gaia, wise, best, **config):
    from stk_astrometry import matching

    cfg = matching.MatchConfig(*_T0, **{"r_stack_arcmin": 10.0, "sep_bins_arcsec": (1.0, 2.0, 3.0),
                                        "max_pm_masyr": 40.0, "match_radius_arcsec": 3.0, **config})
    result = matching.match_stack(det, gaia, cfg, wise=wise, best_neighbours=best)
    return result, pairs.pairs_from_match(result, det, gaia, wise,
                                          stackid="acisfJ1000000p020000_001", instrument="ACIS")


def _check_pair_rows(table, det, ref_id, ref_ra, ref_dec, sigra, sigdec, want):
    from stk_astrometry.tangent import sky_to_tangent

    got = sorted(zip(table["region_id"].tolist(), table["ref_id"].tolist(), strict=True))
    assert got == sorted(want)
    assert table["region_id"].dtype == np.int32 and table["ref_id"].dtype == np.int64
    assert table["group"].dtype == np.int32 and table["n_cand"].dtype == np.int32
    for k in range(len(table["region_id"])):
        d = list(det.region_id).index(table["region_id"][k])
        r = list(ref_id).index(table["ref_id"][k])
        assert table["det_ra"][k] == det.ra_deg[d] and table["det_dec"][k] == det.dec_deg[d]
        assert table["ref_ra"][k] == ref_ra[r] and table["ref_dec"][k] == ref_dec[r]
        dx, de = sky_to_tangent(det.ra_deg[d], det.dec_deg[d], *_T0)
        rx, re_ = sky_to_tangent(ref_ra[r], ref_dec[r], *_T0)
        assert table["det_xi"][k] == pytest.approx(dx, abs=1e-9)
        assert table["det_eta"][k] == pytest.approx(de, abs=1e-9)
        assert table["ref_xi"][k] == pytest.approx(rx, abs=1e-9)
        assert table["ref_eta"][k] == pytest.approx(re_, abs=1e-9)
        assert table["d_xi"][k] == pytest.approx(rx - dx, abs=1e-6)
        assert table["d_eta"][k] == pytest.approx(re_ - de, abs=1e-6)
        assert table["sep"][k] == pytest.approx(np.hypot(rx - dx, re_ - de), abs=1e-6)
        assert table["group"][k] == min(3, int(np.ceil(table["sep"][k])))
        assert (table["err_r0"][k], table["err_r1"][k], table["err_ang"][k]) == \
            (det.err_r0_arcsec[d], det.err_r1_arcsec[d], det.err_ang_deg[d])
        assert (table["theta"][k], table["src_cnts"][k]) == (det.theta_arcmin[d], det.src_cnts[d])
        assert (table["ref_sigra"][k], table["ref_sigdec"][k]) == (sigra[r], sigdec[r])
        assert table["n_cand"][k] == sum(1 for x in table["region_id"] if x == table["region_id"][k])


def test_pairs_from_match_columns_are_the_inputs_rows(tmp_path):
    """Each column of every HDU holds the value of the right input row (formats.md §1):
    the detection's, the reference's, their tangent-plane positions and offsets."""
    det, gaia, wise, best = _match_inputs()
    result, p = _pairs_from_inputs(det, gaia, wise, best)
    assert [list(p.tables[n]) for n in pairs.TABLE_HDUS] == \
        [[c for c, _, _ in pairs.LAYOUTS[n]] for n in pairs.TABLE_HDUS]
    d = p.detections
    assert d["region_id"].tolist() == [11, 22, 44] and d["region_id"].dtype == np.int32
    rows = [0, 1, 3]
    for col, src in (("ra", det.ra_deg), ("dec", det.dec_deg), ("err_r0", det.err_r0_arcsec),
                     ("err_r1", det.err_r1_arcsec), ("err_ang", det.err_ang_deg),
                     ("theta", det.theta_arcmin), ("src_cnts", det.src_cnts)):
        assert d[col].tolist() == src[rows].tolist(), col
    assert d["xi"] == pytest.approx([0.0, 60.0, 120.0], abs=1e-9)
    assert d["eta"] == pytest.approx([0.0, -30.0, 120.0], abs=1e-9)
    assert d["likelihood_class"].tolist() == ["TRUE", "MARGINAL", "TRUE"]
    assert d["n_gaia"].tolist() == [2, 1, 0] and d["n_gaia"].dtype == np.int32
    assert d["n_wise"].tolist() == [0, 1, 0] and d["n_wise"].dtype == np.int32
    _check_pair_rows(p.tables["GAIA_PAIRS"], det, gaia.source_id, gaia.ra_deg, gaia.dec_deg,
                     gaia.sigra_arcsec, gaia.sigdec_arcsec, [(11, 5001), (11, 5003), (22, 5002)])
    _check_pair_rows(p.tables["WISE_PAIRS"], det, wise.allwise_oid, wise.ra_deg, wise.dec_deg,
                     wise.sigra_arcsec, wise.sigdec_arcsec, [(22, 7001)])
    wg = p.tables["WISE_GAIA"]
    assert sorted(zip(wg["wise_id"].tolist(), wg["gaia_id"].tolist(), strict=True)) == [(7001, 5002), (7002, 5004)]
    assert wg["wise_id"].dtype == np.int64 and wg["gaia_id"].dtype == np.int64
    for k in range(2):
        w = list(wise.allwise_oid).index(wg["wise_id"][k])
        g = list(gaia.source_id).index(wg["gaia_id"][k])
        assert (wg["wise_ra"][k], wg["wise_dec"][k]) == (wise.ra_deg[w], wise.dec_deg[w])
        assert (wg["gaia_ra"][k], wg["gaia_dec"][k]) == (gaia.ra_deg[g], gaia.dec_deg[g])
        assert (wg["wise_sigra"][k], wg["wise_sigdec"][k]) == \
            (wise.sigra_arcsec[w], wise.sigdec_arcsec[w])
        wx, we = np.array([60.3, 300.2])[w], \
            np.array([-30.2, -300.1])[w]
        gx, ge = np.array([0.5, 61.2, -2.0, 300.0])[g], np.array([0.0, -29.0, 1.5, -300.0])[g]
        assert (wg["wise_xi"][k], wg["wise_eta"][k]) == pytest.approx((wx, we), abs=1e-8)
        assert (wg["gaia_xi"][k], wg["gaia_eta"][k]) == pytest.approx((gx, ge), abs=1e-8)
        assert (wg["d_xi"][k], wg["d_eta"][k]) == pytest.approx((gx - wx, ge - we), abs=1e-6)
        assert wg["sep"][k] == pytest.approx(np.hypot(gx - wx, ge - we), abs=1e-6)
    assert p.units == {n: {c: u for c, _, u in pairs.LAYOUTS[n] if u} for n in pairs.TABLE_HDUS}
    assert p.cards == {n: () for n in pairs.TABLE_HDUS} and p.path is None
    # written and read back: the same tables and stack attributes
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    q = pairs.read_pairs(tmp_path / "p.fits")
    for name in pairs.TABLE_HDUS:
        _equal_tables(p.tables[name], q.tables[name])
    for attr in ("stackid", "instrument", "ra_stack", "dec_stack", "method", "n_groups",
                 "match_radius", "dens_gaia", "dens_wise"):
        assert getattr(q, attr) == getattr(p, attr), attr
    assert q.dens_wise == pytest.approx(2 / (np.pi * 100)) and q.match_radius == 3.0


def test_pairs_from_match_stack_keywords_as_documented():
    """The primary's keywords, in the documented order, with the match's counts."""
    det, gaia, wise, best = _match_inputs()
    result, p = _pairs_from_inputs(det, gaia, wise, best, method="twostep")
    keys = {k: v for k, v, _ in p.keywords}
    comments = {k: c for k, _, c in p.keywords}
    names = [k for k, _, _ in p.keywords]
    assert names[:14] == ["STACKID", "INSTRUME", "RA_STACK", "DEC_STACK", "RSTACK", "MATCHRAD",
                          "SEPBINS", "NGROUPS", "MAXPM", "DENSGAIA", "DENSWISE", "HAVEWISE",
                          "NMGAIA", "NMWISE"]
    assert names[14:22] == ["NMGAIA1", "NMGAIA2", "NMGAIA3", "NMWISE1", "NMWISE2", "NMWISE3",
                            "METHOD", "METHREQ"]
    assert names[22:] == [f.keyword for f in result.filters]
    assert keys["STACKID"] == "acisfJ1000000p020000_001" and keys["INSTRUME"] == "ACIS"
    assert (keys["RA_STACK"], keys["DEC_STACK"]) == _T0
    assert (keys["RSTACK"], keys["MATCHRAD"], keys["MAXPM"]) == (10.0, 3.0, 40.0)
    assert keys["SEPBINS"] == "1,2,3" and keys["NGROUPS"] == 3
    assert keys["DENSGAIA"] == pytest.approx(4 / (np.pi * 100))
    assert keys["DENSWISE"] == pytest.approx(2 / (np.pi * 100))
    assert keys["HAVEWISE"] is True
    assert (keys["NMGAIA"], keys["NMWISE"]) == (2, 1)
    assert [keys[f"NMGAIA{i}"] for i in (1, 2, 3)] == [1, 1, 1]
    assert [keys[f"NMWISE{i}"] for i in (1, 2, 3)] == [1, 0, 0]
    assert (keys["METHOD"], keys["METHREQ"]) == ("twostep", "twostep")
    assert keys["NDCLASS"] == 1 and keys["NDETIN"] == 4 and keys["NDET"] == 3
    assert all(type(v) in (str, int, float, bool) for v in keys.values())
    assert comments["STACKID"] == "detect_stack_id"
    assert comments["RA_STACK"] == "[deg] stack tangent point RA"
    assert comments["DEC_STACK"] == "[deg] stack tangent point Dec"
    assert comments["INSTRUME"] == "ACIS or HRC"
    assert comments["NMGAIA2"] == "detections with a Gaia match in group 2"
    assert comments["NMWISE3"] == "detections with an ALLWISE match in group 3"
    for f in result.filters:
        assert comments[f.keyword] == f.description[:47]
    assert (p.stackid, p.instrument, p.method, p.n_groups) == \
        ("acisfJ1000000p020000_001", "ACIS", "twostep", 3)
    assert (p.ra_stack, p.dec_stack, p.match_radius) == (*_T0, 3.0)
    assert p.dens_gaia == keys["DENSGAIA"] and p.dens_wise == keys["DENSWISE"]
    assert all(type(v) is float for v in (p.ra_stack, p.dec_stack, p.match_radius, p.dens_gaia,
                                          p.dens_wise))


def test_pairs_from_match_without_allwise():
    """No ALLWISE: empty WISE_PAIRS/WISE_GAIA with their layouts, HAVEWISE F, DENSWISE 0 in
    the header but dens_wise None; Gaia without stated errors: ref_sigra/ref_sigdec 0."""
    det, gaia, _, _ = _match_inputs(with_wise=False, gaia_errors=False)
    result, p = _pairs_from_inputs(det, gaia, None, None, sep_bins_arcsec=(1.5, 3.0))
    keys = {k: v for k, v, _ in p.keywords}
    assert keys["HAVEWISE"] is False and keys["DENSWISE"] == 0.0 and p.dens_wise is None
    assert keys["SEPBINS"] == "1.5,3" and keys["NGROUPS"] == 2 and p.n_groups == 2
    assert [keys[f"NMWISE{i}"] for i in (1, 2)] == [0, 0] and "NMWISE3" not in keys
    assert keys["METHOD"] == "direct" and keys["METHREQ"] == "auto"
    for name in ("WISE_PAIRS", "WISE_GAIA"):
        assert p.n_rows(name) == 0
        assert list(p.tables[name]) == [c for c, _, _ in pairs.LAYOUTS[name]]
    g = p.tables["GAIA_PAIRS"]
    assert g["ref_sigra"].tolist() == [0.0] * 3 and g["ref_sigdec"].tolist() == [0.0] * 3
    assert p.detections["n_wise"].tolist() == [0, 0, 0]


def test_pairset_of_a_pair_hdu_and_of_wise_gaia():
    det, gaia, wise, best = _match_inputs()
    _, p = _pairs_from_inputs(det, gaia, wise, best)
    g, ps = p.tables["GAIA_PAIRS"], p.pairs("GAIA_PAIRS")
    for field, col in (("region_id", "region_id"), ("src_xi", "det_xi"), ("src_eta", "det_eta"),
                       ("d_xi", "d_xi"), ("d_eta", "d_eta"), ("sep", "sep"), ("group", "group"),
                       ("err_r0", "err_r0"), ("err_r1", "err_r1"), ("err_ang", "err_ang"),
                       ("ref_sigra", "ref_sigra"), ("ref_sigdec", "ref_sigdec")):
        assert np.array_equal(getattr(ps, field), g[col]), field
    assert ps.region_id.dtype == np.int64 and ps.d_xi.dtype == np.float64
    wg, ws = p.tables["WISE_GAIA"], p.pairs("WISE_GAIA")
    for field, col in (("region_id", "wise_id"), ("src_xi", "wise_xi"), ("src_eta", "wise_eta"),
                       ("d_xi", "d_xi"), ("d_eta", "d_eta"), ("sep", "sep"),
                       ("ref_sigra", "wise_sigra"), ("ref_sigdec", "wise_sigdec")):
        assert np.array_equal(getattr(ws, field), wg[col]), field
    assert ws.group.tolist() == [0, 0] and ws.group.dtype == np.int64
    assert ws.region_id.dtype == np.int64 and ps.group.dtype == np.int64
    # from a file's narrower columns (J, E): the same integer and float64 arrays
    narrow = {k: (v.astype(np.int32) if v.dtype.kind == "i" else v.astype(np.float32))
              for k, v in g.items()}
    pn = pairs.pairset_from_columns(narrow, kind="GAIA_PAIRS")
    assert pn.region_id.dtype == np.int64 and pn.group.dtype == np.int64
    assert all(getattr(pn, f).dtype == np.float64 for f in ("src_xi", "d_xi", "sep", "err_r0",
                                                             "ref_sigdec"))
    wn = pairs.pairset_from_columns({k: (v.astype(np.int32) if v.dtype.kind == "i"
                                         else v.astype(np.float32)) for k, v in wg.items()},
                                    kind="WISE_GAIA")
    assert wn.region_id.dtype == np.int64 and wn.d_eta.dtype == np.float64
    assert all(np.isnan(getattr(ws, f)).all() and len(getattr(ws, f)) == 2
               for f in ("err_r0", "err_r1", "err_ang"))


def test_diag_keeps_the_pairs_layout_whatever_the_in_memory_dtypes(tmp_path):
    """region_id stays int32 ('J') and ids int64 ('K') as formats.md §1 lays them out, even
    from in-memory pairs with other integer widths and without units."""
    p = make_pairs(np.random.default_rng(8), n_gaia=2, n_wise=0, n_wg=1)
    tables = {name: dict(cols) for name, cols in p.tables.items()}
    tables["GAIA_PAIRS"]["region_id"] = tables["GAIA_PAIRS"]["region_id"].astype(np.int64)
    tables["GAIA_PAIRS"]["group"] = tables["GAIA_PAIRS"]["group"].astype(np.int16)
    tables["WISE_GAIA"]["wise_id"] = tables["WISE_GAIA"]["wise_id"].astype(np.int32)
    p = pairs.Pairs(**{**p.__dict__, "tables": tables, "units": {}})
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    with fits.open(tmp_path / "g.fits") as hdul:
        g = hdul["GAIA_PAIRS"].columns
        assert (g["region_id"].format, g["group"].format, g["ref_id"].format) == ("J", "J", "K")
        assert hdul["WISE_GAIA"].columns["wise_id"].format == "K"
        assert g["det_ra"].unit is None


def test_diag_copy_of_a_pairs_file_has_each_keyword_once(tmp_path):
    p = make_pairs(np.random.default_rng(8))
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    diag.write_diag(tmp_path / "g.fits", pairs.read_pairs(tmp_path / "p.fits"), {}, {}, HIST)
    with fits.open(tmp_path / "g.fits") as hdul:
        for name in diag.HDUS:
            keys = [k for k in hdul[name].header.keys() if k not in ("HISTORY", "COMMENT")]
            assert len(keys) == len(set(keys)), name
            assert keys.count("STACKID") == 1 and keys.count("DTYPE1") == 1


def test_pairs_from_match_keyword_comments():
    """The primary's comments say each keyword's unit and meaning (what fv and TOPCAT show)."""
    det, gaia, wise, best = _match_inputs()
    _, p = _pairs_from_inputs(det, gaia, wise, best)
    comments = {k: c for k, _, c in p.keywords}
    assert {k: comments[k] for k in ("RSTACK", "MATCHRAD", "SEPBINS", "NGROUPS", "MAXPM",
                                     "DENSGAIA", "DENSWISE", "HAVEWISE", "NMGAIA", "NMWISE",
                                     "METHOD", "METHREQ")} == {
        "RSTACK": "[arcmin] cone radius r_stack",
        "MATCHRAD": "[arcsec] cross-match radius",
        "SEPBINS": "[arcsec] upper edges of separation groups",
        "NGROUPS": "number of separation groups",
        "MAXPM": "[mas/yr] total proper-motion limit",
        "DENSGAIA": "[arcmin-2] Gaia within RSTACK, unfiltered",
        "DENSWISE": "[arcmin-2] ALLWISE within RSTACK, unfiltered",
        "HAVEWISE": "ALLWISE inputs given?",
        "NMGAIA": "detections with >= 1 Gaia match",
        "NMWISE": "detections with >= 1 ALLWISE match",
        "METHOD": "direct, twostep or none",
        "METHREQ": "method parameter (auto: spec 5.5.2)"}


def test_pairs_file_header_layout(tmp_path):
    """The primary: CONTENT (with its comment), HDUNAME = 'PRIMARY', the stack keywords then the
    primary's own; a long string keeps the part of its comment that fits, in every HDU; the
    WISE_GAIA offsets are described as Gaia minus ALLWISE."""
    p = make_pairs(np.random.default_rng(6))
    stackid = "acisfJ0000000p000000_001_" + "x" * 26      # 51 characters
    keys = tuple(("STACKID", stackid, "detect_stack_id") if k[0] == "STACKID" else k
                 for k in p.keywords)
    p = pairs.Pairs(**{**p.__dict__, "keywords": keys, "stackid": stackid})
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    with fits.open(tmp_path / "p.fits") as hdul:
        h0 = hdul[0].header
        assert h0["CONTENT"] == "STKPAIRS"
        assert h0.comments["CONTENT"] == "stk_match matched-pairs file"
        assert h0["HDUNAME"] == "PRIMARY" and h0.comments["HDUNAME"] == ""
        user = [k for k in h0.keys() if k in {kk for kk, _, _ in keys}]
        assert user[:4] == ["STACKID", "INSTRUME", "RA_STACK", "DEC_STACK"]
        for h in (hdu.header for hdu in hdul):
            assert h["STACKID"] == stackid and h.comments["STACKID"].startswith("detect_stack")
        h = hdul["WISE_GAIA"].header
        desc = {h[f"TTYPE{i}"]: h.get(f"TCOMM{i}") for i in range(1, h["TFIELDS"] + 1)}
        assert desc["d_xi"] == "Offset in xi, Gaia minus ALLWISE"
        assert desc["sep"] == "Separation of the ALLWISE source and its Gaia best neighbour"


def test_pairs_file_keeps_its_layout_for_other_in_memory_dtypes(tmp_path):
    p = make_pairs(np.random.default_rng(6))
    tables = {name: dict(cols) for name, cols in p.tables.items()}
    tables["GAIA_PAIRS"]["region_id"] = tables["GAIA_PAIRS"]["region_id"].astype(np.int64)
    tables["DETECTIONS"]["n_gaia"] = tables["DETECTIONS"]["n_gaia"].astype(np.int64)
    tables["WISE_GAIA"]["wise_id"] = tables["WISE_GAIA"]["wise_id"].astype(np.int32)
    p = pairs.Pairs(**{**p.__dict__, "tables": tables, "units": {}})
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    with fits.open(tmp_path / "p.fits") as hdul:
        assert hdul["GAIA_PAIRS"].columns["region_id"].format == "J"
        assert hdul["DETECTIONS"].columns["n_gaia"].format == "J"
        assert hdul["WISE_GAIA"].columns["wise_id"].format == "K"
        assert hdul["GAIA_PAIRS"].columns["det_ra"].unit is None


def test_pairs_writer_refuses_an_existing_file_without_clobber(tmp_path):
    from stk_astrometry.errors import OutputError

    p = make_pairs(np.random.default_rng(6))
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    with pytest.raises(OutputError):
        pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    pairs.write_pairs(p, tmp_path / "p.fits", HIST, clobber=True)


def test_pairs_n_rows_of_a_table_without_columns():
    p = make_pairs(np.random.default_rng(6))
    p = pairs.Pairs(**{**p.__dict__, "tables": {**p.tables, "WISE_PAIRS": {}}})
    assert p.n_rows("WISE_PAIRS") == 0 and p.n_rows("GAIA_PAIRS") == 4


def _pairs_file_with(tmp_path, edit, name="e.fits"):
    """A pairs file with its primary header (or HDUs) edited by ``edit(hdul)``."""
    src = tmp_path / "src.fits"
    if not src.exists():
        pairs.write_pairs(make_pairs(np.random.default_rng(12)), src, HIST)
    with fits.open(src) as hdul:
        edit(hdul)
        hdul.writeto(tmp_path / name, output_verify="silentfix", overwrite=True)
    return tmp_path / name


@pytest.mark.parametrize("method", ["direct", "TwoStep", "NONE"])
def test_pairs_reader_accepts_each_method_in_any_case(tmp_path, method):
    path = _pairs_file_with(tmp_path, lambda h: h[0].header.update(METHOD=method))
    assert pairs.read_pairs(path).method == method.lower()


def test_pairs_reader_defaults_for_optional_keywords(tmp_path):
    """MATCHRAD, DENSGAIA, DENSWISE and STACKID may be absent; INSTRUME in any case; one group."""
    def edit(hdul):
        for key in ("MATCHRAD", "DENSGAIA", "DENSWISE", "STACKID"):
            for hdu in hdul:
                hdu.header.remove(key, ignore_missing=True)
        hdul[0].header["INSTRUME"] = "acis"
        hdul[0].header["NGROUPS"] = 1
    q = pairs.read_pairs(_pairs_file_with(tmp_path, edit))
    assert (q.match_radius, q.dens_gaia, q.dens_wise) == (None, None, None)
    assert q.stackid == "" and q.instrument == "ACIS" and q.n_groups == 1
    assert q.path == str(tmp_path / "e.fits")


@pytest.mark.parametrize("edit, message", [
    (lambda h: h[0].header.remove("CONTENT"),
     r"^infile=.*e\.fits: not a stk_match matched-pairs file: primary CONTENT = '\(missing\)', "
     r"expected 'STKPAIRS'"),
    (lambda h: h[0].header.remove("METHOD"),
     r"e\.fits\[PRIMARY\]: keyword METHOD = None, expected 'direct', 'twostep' or 'none'$"),
    (lambda h: h[0].header.remove("INSTRUME"),
     r"e\.fits\[PRIMARY\]: keyword INSTRUME = None, expected 'ACIS' or 'HRC'$"),
    (lambda h: h[0].header.update(NGROUPS=0),
     r"e\.fits\[PRIMARY\]: keyword NGROUPS = 0\.0 is not a positive integer$"),
    (lambda h: h[0].header.update(NGROUPS=2.5),
     r"e\.fits\[PRIMARY\]: keyword NGROUPS = 2\.5 is not a positive integer$"),
    (lambda h: h[0].header.update(RA_STACK="  "), r"e\.fits\[PRIMARY\]: keyword RA_STACK missing$"),
    (lambda h: h[0].header.update(RA_STACK="ten"),
     r"e\.fits\[PRIMARY\]: keyword RA_STACK = 'ten' is not a number$"),
    (lambda h: h[0].header.update(MATCHRAD="three"),
     r"e\.fits\[PRIMARY\]: keyword MATCHRAD = 'three' is not a number$"),
    (lambda h: h[0].header.update(DENSWISE="x"),
     r"e\.fits\[PRIMARY\]: keyword DENSWISE = 'x' is not a number$"),
    (lambda h: h[0].header.update(DENSGAIA="y"),
     r"e\.fits\[PRIMARY\]: keyword DENSGAIA = 'y' is not a number$"),
    (lambda h: h.__setitem__(2, fits.ImageHDU(np.zeros((2, 2)), name="GAIA_PAIRS")),
     r"HDU\(s\) GAIA_PAIRS missing"),
    (lambda h: h["WISE_PAIRS"].columns.del_col("sep"),
     r"e\.fits\[WISE_PAIRS\]: required column\(s\) sep missing"),
])
def test_pairs_reader_names_what_is_wrong(tmp_path, edit, message):
    with pytest.raises(FormatError, match=message):
        pairs.read_pairs(_pairs_file_with(tmp_path, edit))


def test_pairs_reader_names_the_parameter(tmp_path):
    with pytest.raises(InputError, match=r"^infile=.*nope\.fits: file .* does not exist$"):
        pairs.read_pairs(tmp_path / "nope.fits")
    with pytest.raises(InputError, match=r"^pairsfile=.*nope\.fits: file"):
        pairs.read_pairs(tmp_path / "nope.fits", param="pairsfile")


# ---------------------------------------------------------------------------------------------
# §2 the transform file


def test_transform_keywords_names_values_and_comments():
    total = transform.Component("TOTAL", 0.25, -0.5, np.eye(2), 12, 2, 0.7, float("nan"))
    alt = transform.Component("TOTAL", -0.125, 0.5, np.eye(2), 10, 2, 0.7, 0.5)
    keys = transform.transform_keywords(
        stackid="hrciJ1234567m123456_002", instrument="HRC", ra_stack=10.0, dec_stack=-12.5,
        method="twostep", estimator="mixture", loss="cauchy", f_scale=2, total=total,
        n_match=np.int64(9), qa_flags=np.int32(24), qa_reason="FEWMATCH: few",
        n_eff=np.float64(7.5), alternative=("spec", alt), error_model=(float("nan"), 1.25))
    assert keys == [
        ("STACKID", "hrciJ1234567m123456_002", "detect_stack_id"),
        ("INSTRUME", "HRC", "ACIS or HRC: sets the sky pixel grid"),
        ("RA_STACK", 10.0, "[deg] stack tangent point RA"),
        ("DEC_STACK", -12.5, "[deg] stack tangent point Dec"),
        ("METHOD", "twostep", "direct, twostep or none"),
        ("ESTIMATR", "mixture", "estimator applied: spec or mixture"),
        ("LOSS", "cauchy", "robust loss of the spec estimator"),
        ("FSCALE", 2.0, "f_scale of the robust loss"),
        ("GROUP", 2, "separation group used (0: all/none)"),
        ("NUSED", 12, "pairs used by the detection leg"),
        ("NMATCH", 9, "matched detections used"),
        ("DXI", 0.25, "[arcsec] applied shift in xi"),
        ("DETA", -0.5, "[arcsec] applied shift in eta"),
        ("RESSTD0", 0.7, "[arcsec] rms target - source, before"),
        ("RESSTD1", None, "[arcsec] rms target - source, after"),
        ("QAFLAGS", 24, "1NOMATCH 2DENSE 4BIGSHIFT 8FEWMATCH 16DISAGREE"),
        ("QAREASON", "FEWMATCH: few", "raised QA flags and why"),
        ("NEFF", 7.5, "mixture: effective number of true matches"),
        ("SYSERR", None, "[arcsec] mixture: fitted systematic floor"),
        ("ERRSCALE", 1.25, "mixture: fitted scale on stated errors"),
        ("ALTEST", "spec", "the other estimator (not applied)"),
        ("ALTDXI", -0.125, "[arcsec] its shift in xi"),
        ("ALTDETA", 0.5, "[arcsec] its shift in eta"),
    ]
    assert all(type(v) in (str, int, float, type(None)) for _, v, _ in keys)
    assert type(keys[7][1]) is float
    plain = transform.transform_keywords(
        stackid="s", instrument="ACIS", ra_stack=1.0, dec_stack=2.0, method="direct",
        estimator="spec", loss="linear", f_scale=1.0, total=total, n_match=3, qa_flags=0,
        qa_reason="")
    assert [k for k, _, _ in plain] == [k for k, _, _ in keys[:17]]


@pytest.mark.parametrize("instrument, pix, ref", [("ACIS", 0.492, 4096.5), ("HRC", 0.13175, 16384.5)])
def test_transform_columns_on_the_instruments_sky_grid(instrument, pix, ref):
    comps = (transform.Component("TOTAL", 1, -2, [[4, 1], [1, 9]], 5, 1, 3, 1),
             transform.Component("DET_TO_WISE", 0.5, 0.25, np.full((2, 2), np.nan), 0, 0,
                                 np.nan, np.nan))
    cols = transform.transform_columns(comps, instrument=instrument, ra_ref=10.0, dec_ref=-5.0)
    assert list(cols) == list(transform.COLUMNS)
    assert cols["a11"].tolist() == [1, 1] and cols["a22"].tolist() == [1, 1]
    assert cols["a12"].tolist() == [0, 0] and cols["a21"].tolist() == [0, 0]
    assert cols["x_scale"].tolist() == [-pix / 3600] * 2
    assert cols["y_scale"].tolist() == [pix / 3600] * 2
    assert cols["xpix_ref"].tolist() == [ref] * 2 and cols["ypix_ref"].tolist() == [ref] * 2
    assert cols["ra_ref"].tolist() == [10.0] * 2 and cols["dec_ref"].tolist() == [-5.0] * 2
    assert cols["roll_ref"].tolist() == [0.0] * 2
    # sky x grows westwards: a shift east (d_xi > 0) is a negative t1
    assert cols["t1"] == pytest.approx([-1 / pix, -0.5 / pix], rel=1e-15)
    assert cols["t2"] == pytest.approx([-2 / pix, 0.25 / pix], rel=1e-15)
    assert cols["component"].tolist() == ["TOTAL", "DET_TO_WISE"]
    assert cols["d_xi_err"][0] == 2.0 and cols["d_eta_err"][0] == 3.0
    assert cols["cov_xi_eta"][0] == 1.0 and np.isnan(cols["cov_xi_eta"][1])
    assert np.isnan(cols["d_xi_err"][1]) and np.isnan(cols["d_eta_err"][1])
    assert cols["n_used"].tolist() == [5, 0] and cols["group"].tolist() == [1, 0]
    for name in ("n_used", "group"):
        assert cols[name].dtype == np.int32, name
    for name in ("d_xi", "d_eta", "resstd0", "resstd1", "cov_xi_eta", "d_xi_err"):
        assert cols[name].dtype == np.float64, name
    ints = transform.transform_columns(comps[:1], instrument=instrument, ra_ref=10.0, dec_ref=-5.0)
    assert ints["cov_xi_eta"].dtype == np.float64 and ints["d_xi_err"].dtype == np.float64


def test_transform_file_layout_as_documented(tmp_path):
    """CONTENT in the primary; STKXFM with component 16A, n_used/group J, every other column
    D (integer shifts too), the units of formats.md §2; the keywords in both headers."""
    comps = (transform.Component("TOTAL", 1, 0, np.eye(2), 5, 1, 3, 1),)
    keys = _keywords(comps[0])
    transform.write_transform(tmp_path / "x.fits", comps, keys, HIST, instrument="ACIS",
                              ra_ref=10.0, dec_ref=-12.5)
    with fits.open(tmp_path / "x.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "STKXFM"]
        h0 = hdul[0].header
        assert h0["CONTENT"] == "STKXFM" and h0.comments["CONTENT"] == "stk_xfm transform file"
        t = hdul["STKXFM"]
        assert t.columns.names == list(transform.COLUMNS)
        for c in transform.COLUMNS:
            want = {"component": "16A", "n_used": "J", "group": "J"}.get(c, "D")
            assert t.columns[c].format == want, c
            assert (t.columns[c].unit or "") == transform.UNITS.get(c, ""), c
        for h in (h0, t.header):
            assert h["QAFLAGS"] == 24 and h["DEC_STACK"] == -12.5 and h["METHOD"] == "twostep"
        assert t.data["t1"][0] == pytest.approx(-1 / 0.492)
    with pytest.raises(__import__("stk_astrometry.errors").errors.OutputError):
        transform.write_transform(tmp_path / "x.fits", comps, keys, HIST, instrument="ACIS",
                                  ra_ref=10.0, dec_ref=-12.5)
    transform.write_transform(tmp_path / "x.fits", comps, keys, HIST, instrument="ACIS",
                              ra_ref=10.0, dec_ref=-12.5, clobber=True)


def test_transform_as_hdulist_is_the_file_layout():
    comps = _components()
    hdul = transform.build_transform_hdul(comps, _keywords(comps[0]), instrument="HRC",
                                          ra_ref=10.0, dec_ref=-12.5)
    assert hdul[0].header["CONTENT"] == "STKXFM" and hdul[0].header["QAFLAGS"] == 24
    t = hdul["STKXFM"]
    assert t.columns.names == list(transform.COLUMNS)
    assert t.data["component"].tolist() == ["TOTAL", "DET_TO_WISE", "WISE_TO_GAIA"]
    assert t.data["ra_ref"].tolist() == [10.0] * 3 and t.data["dec_ref"].tolist() == [-12.5] * 3
    assert t.data["xpix_ref"][0] == 16384.5 and t.header["STACKID"] == "hrciJ1234567m123456_002"


def _write_xfm(tmp_path, comps=None, name="x.fits", edit=None, instrument="HRC"):
    comps = comps or _components()
    path = tmp_path / name
    transform.write_transform(path, comps, _keywords(comps[0]), HIST, instrument=instrument,
                              ra_ref=10.0, dec_ref=-12.5, clobber=True)
    if edit is not None:
        with fits.open(path) as hdul:
            edit(hdul)
            hdul.writeto(path, overwrite=True, output_verify="silentfix")
    return path


def test_transform_readers_take_the_total_row_wherever_it_is(tmp_path):
    c = _components()
    path = _write_xfm(tmp_path, comps=(c[1], c[2], c[0]))
    t = transform.read_transform_file(path)
    assert [x.name for x in t.components] == ["DET_TO_WISE", "WISE_TO_GAIA", "TOTAL"]
    ti = transform.read_transform(str(path))
    assert (ti.xfm.d_xi_arcsec, ti.xfm.d_eta_arcsec) == (0.25, -0.5)
    assert t.xfm_id == ti.xfm.xfm_id
    from stk_astrometry.wcsupdate import transform_id
    assert t.xfm_id == transform_id(0.25, -0.5, 10.0, -12.5)
    assert t.path == str(path) and ti.path == str(path)
    assert t.columns["component"].dtype.kind == "U" and t.columns["component"][0] == "DET_TO_WISE"

    def lower(hdul):
        hdul["STKXFM"].data["component"] = ["det_to_wise", "wise_to_gaia", "total"]
    path = _write_xfm(tmp_path, comps=(c[1], c[2], c[0]), name="l.fits", edit=lower)
    assert transform.read_transform_file(path).xfm_id == t.xfm_id
    assert transform.read_transform(str(path)).xfm.d_xi_arcsec == 0.25


def test_transform_readers_without_a_component_column_take_row_one(tmp_path):
    def drop(hdul):
        hdul["STKXFM"].columns.del_col("component")
    path = _write_xfm(tmp_path, edit=drop)
    ti = transform.read_transform(str(path))
    assert (ti.xfm.d_xi_arcsec, ti.xfm.d_eta_arcsec) == (0.25, -0.5)


def test_transform_readers_select_a_block(tmp_path):
    def add_first(hdul):
        hdul.insert(1, fits.BinTableHDU.from_columns(
            [fits.Column(name="a", format="D", array=[1.0])], name="OTHER"))
    path = _write_xfm(tmp_path, edit=add_first)
    for spec in (f"{path}[STKXFM]", f"{path}[3]", f"{path}[stkxfm]"):
        assert transform.read_transform(spec).xfm.d_xi_arcsec == 0.25, spec
        assert transform.read_transform_file(spec).instrument == "HRC", spec
    with pytest.raises(FormatError, match=r"\[OTHER\]: missing column"):
        transform.read_transform(f"{path}[2]")
    with pytest.raises(FormatError, match=r"^transformfile=.*\[4\]: no block 4$"):
        transform.read_transform(f"{path}[4]")
    with pytest.raises(FormatError, match=r"^transformfile=.*\[NOPE\]: no HDU NOPE$"):
        transform.read_transform_file(f"{path}[NOPE]")
    with pytest.raises(FormatError, match=r"\[PRIMARY\]: not a table with rows$"):
        transform.read_transform(f"{path}[1]")


def test_transform_readers_name_what_is_wrong(tmp_path):
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="D", array=[1.0])], name="OTHER")]).writeto(tmp_path / "o.fits")
    with pytest.raises(FormatError, match=r"^transformfile=.*o\.fits: no STKXFM HDU "
                                          r"\(HDUs: PRIMARY, OTHER\)$"):
        transform.read_transform(str(tmp_path / "o.fits"))

    def empty(hdul):
        hdul["STKXFM"] = fits.BinTableHDU(hdul["STKXFM"].data[:0], header=hdul["STKXFM"].header)
    path = _write_xfm(tmp_path, name="e.fits", edit=empty)
    for reader in (transform.read_transform, transform.read_transform_file):
        with pytest.raises(FormatError, match=r"e\.fits\[STKXFM\]: not a table with rows$"):
            reader(str(path))

    def nocol(hdul):
        hdul["STKXFM"].columns.del_col("resstd1")
    with pytest.raises(FormatError, match=r"\[STKXFM\]: missing column\(s\) resstd1$"):
        transform.read_transform_file(_write_xfm(tmp_path, name="c.fits", edit=nocol))

    def nototal(hdul):
        hdul["STKXFM"].data["component"] = ["A", "B", "C"]
    with pytest.raises(FormatError, match=r"\[STKXFM\]: no row with component TOTAL$"):
        transform.read_transform(str(_write_xfm(tmp_path, name="t.fits", edit=nototal)))

    def nan(hdul):
        hdul["STKXFM"].data["d_eta"][0] = np.nan
        hdul["STKXFM"].data["a12"][0] = np.inf
    with pytest.raises(FormatError, match=r"\[STKXFM\]: non-finite a12, d_eta in the TOTAL row$"):
        transform.read_transform(str(_write_xfm(tmp_path, name="n.fits", edit=nan)))

    def rotated(hdul):
        hdul["STKXFM"].data["a12"][0] = 0.001
    with pytest.raises(FormatError, match=r"is not the identity"):
        transform.read_transform(str(_write_xfm(tmp_path, name="r.fits", edit=rotated)))

    def nowhere(hdul):
        hdul["STKXFM"].data["dec_ref"][0] = 95.0
    with pytest.raises(FormatError, match=r"ra_ref/dec_ref = \(10\.0, 95\.0\) is not a position"):
        transform.read_transform(str(_write_xfm(tmp_path, name="w.fits", edit=nowhere)))
    from stk_astrometry.errors import ParameterError
    for reader in (transform.read_transform, transform.read_transform_file):
        with pytest.raises(ParameterError, match="^transformfile is blank$"):
            reader("   ")
        with pytest.raises(InputError, match=r"^transformfile=.*none\.fits: no such file$"):
            reader(str(tmp_path / "none.fits"))
    (tmp_path / "text.fits").write_text("not FITS\n" * 400)
    with pytest.raises(FormatError, match=r"^transformfile=.*text\.fits: not a FITS file$"):
        transform.read_transform(str(tmp_path / "text.fits"))


@pytest.mark.parametrize("cards, flags, decision", [
    ({"QAFLAGS": 24, "QADECIS": " Accept "}, 24, "accept"),
    ({"QAFLAGS": 0}, 0, ""),
    ({"QAFLAGS": None, "QADECIS": "reject"}, 0, "reject"),
    ({"QAFLAGS": True}, 0, ""),
    ({"QAFLAGS": "24"}, 0, ""),
    ({"QAFLAGS": 5, "QADECIS": None}, 5, ""),
    ({}, 0, ""),
])
def test_transform_qa_record_as_stk_update_wcs_reads_it(tmp_path, cards, flags, decision):
    def edit(hdul):
        h = hdul["STKXFM"].header
        h.remove("QAFLAGS", ignore_missing=True)
        for k, v in cards.items():
            if v is not None:
                h[k] = v
            else:
                h[k] = (fits.card.UNDEFINED, "")
    ti = transform.read_transform(str(_write_xfm(tmp_path, edit=edit)))
    assert (ti.qa_flags, ti.qa_decision) == (flags, decision)


def test_transform_hdu_bytes_are_a_checksummed_copy_with_its_id(tmp_path):
    """What an ASPSOL3 product gets (formats.md §3b): the STKXFM HDU, its header and rows, with
    STKXFMID and valid CHECKSUM/DATASUM."""
    import io

    path = _write_xfm(tmp_path)
    ti = transform.read_transform(str(path))
    with fits.open(io.BytesIO(fits.PrimaryHDU().header.tostring().encode() + ti.hdu_bytes),
                   checksum=True) as copy, fits.open(path) as orig:
        h = copy[1].header
        assert copy[1].name == "STKXFM" and h["STKXFMID"] == ti.xfm.xfm_id
        assert h.comments["STKXFMID"] == "stk_update_wcs: id of this transform"
        assert "CHECKSUM" in h and "DATASUM" in h
        assert h["QAFLAGS"] == orig["STKXFM"].header["QAFLAGS"]
        assert copy[1].data.tobytes() == orig["STKXFM"].data.tobytes()


# ---------------------------------------------------------------------------------------------
# _fits: the fast (fitsio) writer and reader against astropy's


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


def test_transform_without_a_total_row_takes_row_one_and_no_instrument_is_blank(tmp_path):
    c = _components()

    def edit(hdul):
        hdul["STKXFM"].data["component"] = ["A", "B", "C"]
        del hdul["STKXFM"].header["INSTRUME"]
    path = _write_xfm(tmp_path, comps=(c[1], c[0], c[2]), edit=edit)
    t = transform.read_transform_file(path)
    from stk_astrometry.wcsupdate import transform_id
    assert t.xfm_id == transform_id(0.2, -0.4, 10.0, -12.5) and t.instrument == ""


def test_transform_copy_is_named_stkxfm_whatever_the_block_it_came_from(tmp_path):
    import io

    def rename(hdul):
        hdul["STKXFM"].name = "XFMCOPY"
        hdul.append(fits.ImageHDU(np.zeros((2, 2)), name="IMG"))
    path = _write_xfm(tmp_path, edit=rename)
    ti = transform.read_transform(f"{path}[2]")
    with fits.open(io.BytesIO(fits.PrimaryHDU().header.tostring().encode() + ti.hdu_bytes)) as h:
        assert h[1].name == "STKXFM"
    with pytest.raises(FormatError, match=r"\[IMG\]: not a table with rows$"):
        transform.read_transform(f"{path}[3]")


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

    for x, want in ((np.float32(1.5), 1.5), (np.nan, None), (float("inf"), None),
                    (np.int16(3), 3), (np.bool_(True), True), ("s", "s"), (None, None), (7, 7)):
        got = header_value(x)
        assert got == want and type(got) is type(want), x


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
    specs = [_fits.HduSpec(None), _fits.HduSpec("T", {"v": vec, "n": np.array([1, 2, 3])})]
    _fits.write_fits_fast(tmp_path / "v.fits", specs, HIST, clobber=False)
    with fits.open(tmp_path / "v.fits") as hdul:
        assert hdul["T"].columns["v"].format == "2D"
        assert hdul["T"].data["v"].tolist() == vec.tolist()
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


def _plain_specs_of_every_kind():
    """_specs_of_every_kind without the column texts cfitsio writes its own way."""
    import dataclasses

    specs = _specs_of_every_kind()
    info = dict(specs[1].column_info, small=("quoted", ""))
    return [specs[0], dataclasses.replace(specs[1], column_info=info), specs[2]]


def _cards_with_stamps_masked(path):
    raw = path.read_bytes()
    cards = [raw[i:i + 80] for i in range(0, len(raw), 80)]
    # cfitsio stamps its checksum cards with its own clock; the checksum follows the stamp
    return [c[:10] if c.startswith((b"CHECKSUM=", b"DATASUM =")) and b"updated" in c
            else c for c in cards], cards


def test_serialised_file_is_byte_for_byte_what_fitsio_writes(tmp_path, monkeypatch):
    """write_fits_fast serialises the file itself (issue 11): the same bytes as the cfitsio
    path, every card and the data, checksums that verify; the DATASUM cards as cfitsio writes
    them (its '         0' placeholder without data, else the number)."""
    import warnings

    from stk_astrometry import fitsutil
    from stk_astrometry.formats import _fits

    monkeypatch.setattr(fitsutil, "utc_now", lambda: "2026-01-02T03:04:05")
    hist = _Run("stk_test", {"infile": "x.fits", "outfile": "/a/" + "y" * 70, "clobber": True})
    specs = _plain_specs_of_every_kind()
    assert all(map(_fits._serializable, specs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fits.write_fits_fast(tmp_path / "own.fits", specs, hist, clobber=False)
        monkeypatch.setattr(_fits, "_serializable", lambda spec: False)
        _fits.write_fits_fast(tmp_path / "cfitsio.fits", specs, hist, clobber=False)
    own, own_raw = _cards_with_stamps_masked(tmp_path / "own.fits")
    ref, ref_raw = _cards_with_stamps_masked(tmp_path / "cfitsio.fits")
    assert own == ref
    sums = [c for c in own_raw if c.startswith(b"DATASUM =")]
    assert sums[0][10:22] == b"'         0'" and sums[2][10:22] == b"'         0'"
    assert sums[1][10:22] == [c for c in ref_raw if c.startswith(b"DATASUM =")][1][10:22]
    assert [c for c in own_raw if c.startswith(b"CHECKSUM=")][0].endswith(
        b"/ HDU checksum updated 2026-01-02T03:04:05       ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a checksum that does not verify warns
        with fits.open(tmp_path / "own.fits", checksum=True) as hdul:
            assert [len(h.data) for h in hdul[1:]] == [3, 0]


def test_column_texts_cfitsio_writes_its_own_way_go_through_fitsio(tmp_path, monkeypatch):
    from stk_astrometry.formats import _fits

    assert not _fits._serializable(_specs_of_every_kind()[1])      # "it's quoted"
    for text in ("", "x" * 65, "a\tb", "caf\u00e9"):
        assert not _fits._plain_text(text)
    assert _fits._plain_text("x" * 64) and _fits._plain_text("pos.eq.ra;meta.main")
    calls = []
    monkeypatch.setattr(_fits, "_write_one", lambda *a: calls.append(a[1].name))
    _fits.write_fits_fast(tmp_path / "f.fits", _specs_of_every_kind(), HIST, clobber=False)
    assert calls == [None, "TAB", "EMPTY"]


def test_checksum_encoding_of_known_sums():
    # the FITS checksum convention: an HDU whose sum is 0xFFFFFFFF (negative zero) encodes
    # as all '0'; the encoding of the sum's complement avoids the punctuation between digits
    # and letters, and decodes (ones' complement sum of the characters) to that complement
    from stk_astrometry.formats._fits import _CHECKSUM_AVOID, _encode_checksum, _ones_complement_sum

    assert _encode_checksum(0xFFFFFFFF) == b"0" * 16
    rng = np.random.default_rng(20261205)
    for total in [0, 1, 0x7FFFFFFF, 0xFFFFFFFE, *rng.integers(0, 2**32, 50).tolist()]:
        text = _encode_checksum(total)
        assert len(text) == 16 and not set(text) & _CHECKSUM_AVOID and text.isalnum()
        # 16 characters less 0x30 each, rotated back: their sum is the complement
        words = np.frombuffer(bytes(c - 0x30 for c in text[1:] + text[:1]), ">u4")
        assert _ones_complement_sum(words.tobytes()) == 0xFFFFFFFF - total
    assert _ones_complement_sum(b"\xff\xff\xff\xff" * 2) == 0xFFFFFFFF
    assert _ones_complement_sum(b"\x80\x00\x00\x00" * 2, 5) == 6
