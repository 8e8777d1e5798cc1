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
