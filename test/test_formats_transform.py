"""stk_astrometry.formats.transform: the STKXFM transform file (formats.md §2) -- keywords,
columns on each instrument's sky grid, the readers' row and block choice, their checks."""

import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry.errors import FormatError, InputError
from stk_astrometry.formats import transform

from formats_testlib import (
    HIST,
    components,
    keywords,
)


def test_transform_round_trip(tmp_path):
    comps = components()
    keys = keywords(comps[0])
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
    keys = keywords(comps[0])
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
    comps = components()
    hdul = transform.build_transform_hdul(comps, keywords(comps[0]), instrument="HRC",
                                          ra_ref=10.0, dec_ref=-12.5)
    assert hdul[0].header["CONTENT"] == "STKXFM" and hdul[0].header["QAFLAGS"] == 24
    t = hdul["STKXFM"]
    assert t.columns.names == list(transform.COLUMNS)
    assert t.data["component"].tolist() == ["TOTAL", "DET_TO_WISE", "WISE_TO_GAIA"]
    assert t.data["ra_ref"].tolist() == [10.0] * 3 and t.data["dec_ref"].tolist() == [-12.5] * 3
    assert t.data["xpix_ref"][0] == 16384.5 and t.header["STACKID"] == "hrciJ1234567m123456_002"


def _write_xfm(tmp_path, comps=None, name="x.fits", edit=None, instrument="HRC"):
    comps = comps or components()
    path = tmp_path / name
    transform.write_transform(path, comps, keywords(comps[0]), HIST, instrument=instrument,
                              ra_ref=10.0, dec_ref=-12.5, clobber=True)
    if edit is not None:
        with fits.open(path) as hdul:
            edit(hdul)
            hdul.writeto(path, overwrite=True, output_verify="silentfix")
    return path


def test_transform_readers_take_the_total_row_wherever_it_is(tmp_path):
    c = components()
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


def test_transform_without_a_total_row_takes_row_one_and_no_instrument_is_blank(tmp_path):
    c = components()

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


def test_transform_keywords_carry_finite_fit_figures_as_given():
    # (NaN ones are undefined, above): RESSTD1 and SYSERR with values
    total = transform.Component("TOTAL", 0.25, -0.5, np.eye(2), 12, 2, 0.7, 0.35)
    keys = dict((k, v) for k, v, _ in transform.transform_keywords(
        stackid="s", instrument="ACIS", ra_stack=1.0, dec_stack=2.0, method="direct",
        estimator="mixture", loss="cauchy", f_scale=1.0, total=total, n_match=3, qa_flags=0,
        qa_reason="", error_model=(np.float64(0.08), 1.1)))
    assert (keys["RESSTD0"], keys["RESSTD1"]) == (0.7, 0.35)
    assert (keys["SYSERR"], keys["ERRSCALE"]) == (0.08, 1.1) and type(keys["SYSERR"]) is float
