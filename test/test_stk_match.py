"""Tests of the stk_match front end: real files in tmp_path, main([...]) in-process."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from stk_astrometry.fitsutil import get_keyword
from stk_astrometry.tangent import tangent_to_sky
from stk_astrometry.tools.stk_match import main

SEED = 31415
REPO = Path(__file__).resolve().parents[1]
STACK = "acisfJ1000000p020000_001"


# ------------------------------------------------------------------ helpers


def sky(ra0, dec0, xi, eta):
    return tangent_to_sky(np.asarray(xi, float), np.asarray(eta, float), ra0, dec0)


def det_table(ra0=150.0, dec0=2.0, *, n=40, seed=SEED, stack=STACK, columns=True):
    """A detection table with known tangent-plane positions (returned too)."""
    rng = np.random.default_rng(seed)
    radius = 560.0 * np.sqrt(rng.uniform(0, 1, n))  # inside r_stack = 600"
    angle = rng.uniform(0, 2 * np.pi, n)
    xi = radius * np.sin(angle)
    eta = radius * np.cos(angle)
    ra, dec = sky(ra0, dec0, xi, eta)
    t = Table()
    t["detect_stack_id"] = [stack] * n
    t["region_id"] = np.arange(1, n + 1, dtype=np.int32)
    t["ra"] = ra
    t["dec"] = dec
    t["err_ellipse_r0"] = rng.uniform(0.4, 1.2, n)
    t["err_ellipse_r1"] = t["err_ellipse_r0"] * 0.7
    t["err_ellipse_ang"] = rng.uniform(0, 180, n)
    t["likelihood_class"] = np.array(["TRUE"] * n, dtype="U8")
    t["sat_src_flag"] = np.zeros(n, bool)
    t["conv_hull"] = np.zeros(n, bool)
    t["man_inc"] = np.zeros(n, bool)
    t["theta"] = np.hypot(xi, eta) / 60.0
    t["src_cnts"] = rng.uniform(5, 300, n)
    if columns:
        t["ra_stack"] = np.full(n, ra0)
        t["dec_stack"] = np.full(n, dec0)
    return t, xi, eta


def gaia_table(ra0, dec0, det_xi, det_eta, *, shift=(0.4, -0.3), n_match=25, n_field=500,
               seed=SEED, upper=True):
    """Gaia: counterparts of the first n_match detections at a known shift, plus a field."""
    rng = np.random.default_rng(seed + 1)
    gx = np.concatenate([det_xi[:n_match] + shift[0], rng.uniform(-700, 700, n_field)])
    ge = np.concatenate([det_eta[:n_match] + shift[1], rng.uniform(-700, 700, n_field)])
    ra, dec = sky(ra0, dec0, gx, ge)
    n = len(gx)
    t = Table()
    t["source_id"] = np.arange(n, dtype=np.int64) + 4_000_000_000_000_000_000
    t["ra"] = ra
    t["dec"] = dec
    t["pmra"] = rng.normal(0, 5, n)
    t["pmdec"] = rng.normal(0, 5, n)
    if upper:  # Gaia archive exports come upper-cased
        for name in list(t.colnames):
            t.rename_column(name, name.upper())
    return t


def wise_tables(ra0, dec0, det_xi, det_eta, gaia, *, n_match=35, shift=(0.2, 0.1)):
    """ALLWISE counterparts of the first n_match detections, and best neighbours to Gaia."""
    gx_col = "SOURCE_ID" if "SOURCE_ID" in gaia.colnames else "source_id"
    wx = det_xi[:n_match] + shift[0]
    we = det_eta[:n_match] + shift[1]
    ra, dec = sky(ra0, dec0, wx, we)
    w = Table()
    w["allwise_oid"] = np.arange(n_match, dtype=np.int64) + 7_000_000
    w["ra"] = ra
    w["dec"] = dec
    w["sigra"] = np.full(n_match, 0.1)
    w["sigdec"] = np.full(n_match, 0.12)
    w["cc_flags"] = ["0000"] * n_match
    # best neighbours: the first 20 ALLWISE sources to the first 20 Gaia sources
    bn = Table()
    bn["source_id"] = np.asarray(gaia[gx_col][:20], dtype=np.int64)
    bn["allwise_oid"] = w["allwise_oid"][:20]
    bn["original_ext_source_id"] = [f"J{i:06d}" for i in range(20)]
    bn["angular_distance"] = np.full(20, 0.3)
    bn["number_of_neighbours"] = np.ones(20, dtype=np.int16)
    bn["number_of_mates"] = np.zeros(20, dtype=np.int16)
    return w, bn


def write_fits_table(t, path, *, extname="CATALOG", header=None):
    hdu = fits.table_to_hdu(t)
    hdu.name = extname
    if header:
        for k, v in header.items():
            hdu.header[k] = v
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return str(path)


def standard_inputs(tmp_path, **kw):
    ra0, dec0 = kw.pop("ra0", 150.0), kw.pop("dec0", 2.0)
    det, xi, eta = det_table(ra0, dec0, **kw)
    gaia = gaia_table(ra0, dec0, xi, eta)
    det_path = write_fits_table(det, tmp_path / "det.fits", extname="DETECTIONS")
    gaia_path = write_fits_table(gaia, tmp_path / "gaia.fits", extname="GAIA")
    return det_path, gaia_path, xi, eta


def run(args, capsys):
    status = main([str(a) for a in args] + ["mode=h"])
    out = capsys.readouterr()
    return status, out.out, out.err


def assert_error(status, err, *fragments):
    assert status == 1
    assert "ERROR" in err and "# stk_match" in err
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in err, err


# ------------------------------------------------------------------ success


def test_direct_stack_end_to_end(tmp_path, capsys):
    det_path, gaia_path, xi, _ = standard_inputs(tmp_path)
    out = tmp_path / "pairs.fits"
    status, stdout, err = run([det_path, gaia_path, out, "verbose=1"], capsys)
    assert status == 0, err
    assert "Method: direct" in stdout
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "DETECTIONS", "GAIA_PAIRS", "WISE_PAIRS",
                                          "WISE_GAIA"]
        hdr = hdul[0].header
        assert hdr["CONTENT"] == "STKPAIRS"
        assert hdr["STACKID"] == STACK
        assert hdr["INSTRUME"] == "ACIS"
        assert hdr["RA_STACK"] == 150.0
        assert get_keyword(hdr, "DEC_STACK") == 2.0
        assert hdr["DTYPE1"] == "DEC_STACK"  # CXC convention, not HIERARCH
        assert hdr["METHOD"] == "direct"
        assert hdr["NGROUPS"] == 3 and hdr["SEPBINS"] == "1,2,3"
        for h in hdul[1:]:
            assert h.header["STACKID"] == STACK
            assert get_keyword(h.header, "DEC_STACK") == 2.0
        pairs = hdul["GAIA_PAIRS"].data
        # the 25 planted counterparts are all found at the planted offset
        planted = pairs[pairs["ref_id"] < 4_000_000_000_000_000_025]
        assert len(planted) == 25
        np.testing.assert_allclose(planted["d_xi"], 0.4, atol=2e-5)
        np.testing.assert_allclose(planted["d_eta"], -0.3, atol=2e-5)
        np.testing.assert_allclose(planted["sep"], 0.5, atol=2e-5)
        assert np.all(planted["group"] == 1)
        assert np.array_equal(planted["det_xi"], xi[planted["region_id"] - 1]) or np.allclose(
            planted["det_xi"], xi[planted["region_id"] - 1], atol=1e-6)
        assert hdr["NMGAIA"] == len(np.unique(pairs["region_id"]))
        assert hdr["NMGAIA1"] >= 25
        assert hdr["NDET"] == 40 and len(hdul["DETECTIONS"].data) == 40
        dets = hdul["DETECTIONS"].data
        assert np.sum(dets["n_gaia"]) == len(pairs)
        assert hdul["GAIA_PAIRS"].columns["sep"].unit == "arcsec"
        assert hdul["GAIA_PAIRS"].columns["ref_id"].format == "K"
        assert len(hdul["WISE_PAIRS"].data) == 0 and len(hdul["WISE_GAIA"].data) == 0
        assert hdr["DENSGAIA"] == pytest.approx(
            np.count_nonzero(np.hypot(*_gaia_xy(gaia_path)) <= 600) / (np.pi * 100), rel=1e-6)
        assert "CHECKSUM" in hdul["GAIA_PAIRS"].header
        assert any("stk_match" in str(c) for c in hdr["HISTORY"])


def _gaia_xy(path):
    from stk_astrometry.tangent import sky_to_tangent

    t = Table.read(path)
    return sky_to_tangent(t["RA"], t["DEC"], 150.0, 2.0)


@pytest.mark.parametrize("fmt,suffix", [("ascii.csv", ".csv"), ("ascii.ecsv", ".ecsv"),
                                        ("votable", ".xml")])
def test_non_fits_inputs(tmp_path, capsys, fmt, suffix):
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta)
    det.write(tmp_path / f"det{suffix}", format=fmt)
    gaia.write(tmp_path / f"gaia{suffix}", format=fmt)
    out = tmp_path / "out.fits"
    status, _, err = run([tmp_path / f"det{suffix}", tmp_path / f"gaia{suffix}", out], capsys)
    assert status == 0, err
    with fits.open(out) as hdul:
        assert hdul[0].header["NMGAIA1"] >= 25
        assert hdul[0].header["METHOD"] == "direct"


@pytest.mark.parametrize("block", ["[DETECTIONS]", "[detections]", "[2]"])
def test_block_selection(tmp_path, capsys, block):
    det, xi, eta = det_table()
    other = Table({"x": [1, 2]})
    path = tmp_path / "multi.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(det), fits.table_to_hdu(other)]).writeto(path)
    with fits.open(path, mode="update") as h:
        h[1].name = "DETECTIONS"
        h[2].name = "OTHER"
    gaia_path = write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "gaia.fits")
    status, _, err = run([f"{path}{block}", gaia_path, tmp_path / "o.fits"], capsys)
    assert status == 0, err


def test_twostep_with_wise(tmp_path, capsys):
    ra0, dec0 = 150.0, 2.0
    det, xi, eta = det_table(ra0, dec0)
    gaia = gaia_table(ra0, dec0, xi, eta, n_match=10, n_field=50)
    w, bn = wise_tables(ra0, dec0, xi, eta, gaia, n_match=35)
    paths = [write_fits_table(det, tmp_path / "det.fits"),
             write_fits_table(gaia, tmp_path / "gaia.fits")]
    w.write(tmp_path / "wise.ecsv")
    bn.write(tmp_path / "bn.csv")
    out = tmp_path / "out.fits"
    status, _, err = run(paths + [out, f"wisefile={tmp_path / 'wise.ecsv'}",
                                  f"bestnbfile={tmp_path / 'bn.csv'}"], capsys)
    assert status == 0, err
    with fits.open(out) as hdul:
        hdr = hdul[0].header
        assert hdr["METHOD"] == "twostep"
        assert hdr["NMWISE"] == 35 and hdr["NMWISE1"] == 35
        assert hdr["NMGAIA"] < hdr["NMWISE"]
        assert hdr["HAVEWISE"] is True
        wp = hdul["WISE_PAIRS"].data
        np.testing.assert_allclose(wp["d_xi"], 0.2, atol=2e-5)
        np.testing.assert_allclose(wp["ref_sigdec"], 0.12)
        wg = hdul["WISE_GAIA"].data
        # 20 associations: Gaia 0-9 are counterparts (inside r_stack), Gaia 10-19 field
        # sources, kept only when inside r_stack
        from stk_astrometry.tangent import sky_to_tangent

        gxi, geta = sky_to_tangent(gaia["RA"][10:20], gaia["DEC"][10:20], ra0, dec0)
        assert len(wg) == 10 + np.count_nonzero(np.hypot(gxi, geta) <= 600.0)
        assert hdr["NBNOUTR"] == 20 - len(wg)
        assert hdr["NWGPAIRS"] == len(wg)
        # Gaia minus ALLWISE for the planted first 10: (0.4-0.2, -0.3-0.1)
        first = wg[wg["gaia_id"] < 4_000_000_000_000_000_010]
        np.testing.assert_allclose(first["d_xi"], 0.2, atol=2e-5)
        np.testing.assert_allclose(first["d_eta"], -0.4, atol=2e-5)
        assert hdr["DENSWISE"] == pytest.approx(35 / (np.pi * 100))

    # method=direct forces the direct path
    status, _, err = run(paths + [out, f"wisefile={tmp_path / 'wise.ecsv'}",
                                  f"bestnbfile={tmp_path / 'bn.csv'}", "method=direct",
                                  "clobber=yes"], capsys)
    assert status == 0, err
    assert fits.getval(out, "METHOD") == "direct"
    assert fits.getval(out, "METHREQ") == "direct"


def test_empty_result_is_not_an_error(tmp_path, capsys):
    det, xi, eta = det_table()
    det["likelihood_class"] = ["FALSE"] * len(det)
    gaia = gaia_table(150.0, 2.0, xi, eta)
    paths = [write_fits_table(det, tmp_path / "d.fits"), write_fits_table(gaia, tmp_path / "g.fits")]
    out = tmp_path / "o.fits"
    status, _, err = run(paths + [out], capsys)
    assert status == 0, err
    assert "METHOD = 'none'" in err  # said, as a warning
    with fits.open(out) as hdul:
        assert hdul[0].header["METHOD"] == "none"
        assert hdul[0].header["NDCLASS"] == 40
        assert hdul[0].header["NMGAIA"] == 0
        assert all(len(h.data) == 0 for h in hdul[1:])


def test_no_match_at_all(tmp_path, capsys):
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta, n_match=0, n_field=0)
    paths = [write_fits_table(det, tmp_path / "d.fits"), write_fits_table(gaia, tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert status == 0, err
    assert fits.getval(tmp_path / "o.fits", "METHOD") == "none"
    assert fits.getval(tmp_path / "o.fits", "NDET") == 40


@pytest.mark.parametrize("ra0,dec0", [(0.02, -10.0), (215.0, 89.9)])
def test_wrap_and_pole(tmp_path, capsys, ra0, dec0):
    det_path, gaia_path, _, _ = standard_inputs(tmp_path, ra0=ra0, dec0=dec0)
    out = tmp_path / "o.fits"
    status, _, err = run([det_path, gaia_path, out], capsys)
    assert status == 0, err
    with fits.open(out) as hdul:
        planted = hdul["GAIA_PAIRS"].data
        planted = planted[planted["ref_id"] < 4_000_000_000_000_000_025]
        assert len(planted) == 25
        np.testing.assert_allclose(planted["d_xi"], 0.4, atol=2e-5)
        np.testing.assert_allclose(planted["d_eta"], -0.3, atol=2e-5)
        dets = hdul["DETECTIONS"].data
        if ra0 < 1:
            assert np.any(dets["ra"] > 359) and np.any(dets["ra"] < 1)
        assert hdul[0].header["NDOUTR"] == 0


def test_filters_recorded_and_warned(tmp_path, capsys):
    det, xi, eta = det_table()
    det["ra"][0] = np.nan
    det["dec"][1] = -91.0
    det["err_ellipse_r0"][2] = 0.0
    det["err_ellipse_r1"][3] = -0.5
    det["likelihood_class"][4] = "FALSE"
    det["likelihood_class"][5] = "marginal"
    det["sat_src_flag"][6] = True
    det["conv_hull"][7] = True
    det["man_inc"][5] = True
    gaia = gaia_table(150.0, 2.0, xi, eta)
    gaia["PMRA"][10:13] = [np.nan, 60.0, 40.0]
    gaia["PMDEC"][10:13] = [np.nan, 0.0, 40.0]
    paths = [write_fits_table(det, tmp_path / "d.fits"), write_fits_table(gaia, tmp_path / "g.fits")]
    out = tmp_path / "o.fits"
    status, _, err = run(paths + [out], capsys)
    assert status == 0, err
    assert "WARNING" in err
    assert "NaN or out-of-range ra/dec: 2" in err
    assert "error radius NaN or <= 0: 2" in err
    hdr = fits.getheader(out)
    assert (hdr["NDBADPOS"], hdr["NDBADERR"], hdr["NDCLASS"], hdr["NDSAT"], hdr["NDHULL"]) == (
        2, 2, 1, 1, 1)
    assert hdr["NDMANINC"] == 1
    assert hdr["NDET"] == 40 - 7
    assert hdr["NGHIPM"] == 2  # (60, 0) and (40, 40): quadrature, not a box
    assert hdr["NGNULLPM"] >= 1
    ids = fits.getdata(out, "GAIA_PAIRS")["ref_id"]
    base = 4_000_000_000_000_000_000
    # counterparts of detections 11-13: null pm kept, (60, 0) and (40, 40) dropped
    assert base + 10 in ids
    assert base + 11 not in ids and base + 12 not in ids
    # the counterparts of dropped detections do not appear either
    assert not any(base + i in ids for i in (0, 1, 2, 3, 4, 6, 7))
    assert base + 5 in ids  # MARGINAL and manually included: kept


def test_null_pm_counterpart_kept(tmp_path, capsys):
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta, upper=False)
    gaia["pmra"] = np.ma.masked_array(gaia["pmra"], mask=np.arange(len(gaia)) < 5)
    gaia["pmdec"] = np.ma.masked_array(gaia["pmdec"], mask=np.arange(len(gaia)) < 5)
    gaia.write(tmp_path / "g.xml", format="votable")
    paths = [write_fits_table(det, tmp_path / "d.fits"), tmp_path / "g.xml"]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert status == 0, err
    ids = fits.getdata(tmp_path / "o.fits", "GAIA_PAIRS")["ref_id"]
    base = 4_000_000_000_000_000_000
    assert all(base + i in ids for i in range(5))
    assert fits.getval(tmp_path / "o.fits", "NGNULLPM") == 5


def test_vector_and_text_flags(tmp_path, capsys):
    det, xi, eta = det_table()
    n = len(det)
    sat = np.zeros((n, 3), dtype=np.int16)
    sat[0, 2] = 1  # flagged in one contributing observation
    det.replace_column("sat_src_flag", sat)
    det.replace_column("conv_hull", ["F"] * n)
    det["conv_hull"][1] = "T"
    paths = [write_fits_table(det, tmp_path / "d.fits"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert status == 0, err
    hdr = fits.getheader(tmp_path / "o.fits")
    assert hdr["NDSAT"] == 1 and hdr["NDHULL"] == 1
    rid = fits.getdata(tmp_path / "o.fits", "DETECTIONS")["region_id"]
    assert 1 not in rid and 2 not in rid


def test_missing_optional_columns(tmp_path, capsys):
    det, xi, eta = det_table()
    det.remove_columns(["theta", "src_cnts", "sat_src_flag", "conv_hull", "man_inc",
                        "err_ellipse_ang"])
    det.rename_column("err_ellipse_r0", "ERR_R0")  # alias, any case
    paths = [write_fits_table(det, tmp_path / "d.fits"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert status == 0, err
    for name in ("theta", "src_cnts", "sat_src_flag", "conv_hull"):
        assert f"no {name} column" in err
    dets = fits.getdata(tmp_path / "o.fits", "DETECTIONS")
    assert np.all(np.isnan(dets["theta"])) and np.all(np.isnan(dets["src_cnts"]))


def test_aliases_theta_mean_and_counts(tmp_path, capsys):
    det, xi, eta = det_table()
    det.rename_column("theta", "THETA_MEAN")
    det.rename_column("src_cnts", "src_cnts_aper_b")
    paths = [write_fits_table(det, tmp_path / "d.fits"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert status == 0, err
    dets = fits.getdata(tmp_path / "o.fits", "DETECTIONS")
    np.testing.assert_allclose(dets["theta"], det["THETA_MEAN"])
    assert "no theta column" not in err


# ----------------------------------------------------------- tangent point


def test_tangent_point_from_header_dtype(tmp_path, capsys):
    det, xi, eta = det_table(columns=False)
    hdu = fits.table_to_hdu(det)
    hdu.header["RA_STACK"] = 150.0
    hdu.header["DTYPE7"] = "DEC_STACK"
    hdu.header["DVAL7"] = 2.0
    path = tmp_path / "d.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    gaia_path = write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")
    status, _, err = run([path, gaia_path, tmp_path / "o.fits"], capsys)
    assert status == 0, err
    assert get_keyword(fits.getheader(tmp_path / "o.fits"), "DEC_STACK") == 2.0


def test_tangent_point_from_hierarch(tmp_path, capsys):
    det, xi, eta = det_table(columns=False)
    hdu = fits.table_to_hdu(det)
    hdu.header["RA_STACK"] = 150.0
    hdu.header["HIERARCH DEC_STACK"] = 2.0
    path = tmp_path / "d.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    gaia_path = write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")
    status, _, err = run([path, gaia_path, tmp_path / "o.fits"], capsys)
    assert status == 0, err


def test_tangent_point_parameters_override(tmp_path, capsys):
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    status, _, err = run([det_path, gaia_path, tmp_path / "o.fits", "ra_stack=150.001",
                          "dec_stack=2.0"], capsys)
    assert status == 0, err
    assert fits.getval(tmp_path / "o.fits", "RA_STACK") == 150.001


# ------------------------------------------------------------------ errors


def test_error_no_tangent_point(tmp_path, capsys):
    det, xi, eta = det_table(columns=False)
    paths = [write_fits_table(det, tmp_path / "d.fits"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "no tangent point", "d.fits")
    assert not (tmp_path / "o.fits").exists()


def test_error_one_tangent_parameter(tmp_path, capsys):
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    status, _, err = run([det_path, gaia_path, tmp_path / "o.fits", "ra_stack=150"], capsys)
    assert_error(status, err, "set both ra_stack and dec_stack")


def test_error_tangent_varies(tmp_path, capsys):
    det, xi, eta = det_table()
    det["ra_stack"][3] += 0.01
    paths = [write_fits_table(det, tmp_path / "d.fits"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "'ra_stack' varies within the stack")


def test_several_stacks(tmp_path, capsys):
    a, xi, eta = det_table(stack="acisfJ1000000p020000_001")
    b, _, _ = det_table(stack="hrcfJ1000000p020000_002", seed=7, n=5)
    both = Table(np.concatenate([a.as_array(), b.as_array()]))
    det_path = write_fits_table(both, tmp_path / "d.fits")
    gaia_path = write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")
    out = tmp_path / "o.fits"
    status, _, err = run([det_path, gaia_path, out], capsys)
    assert_error(status, err, "holds 2 stacks", "acisfJ1000000p020000_001",
                 "hrcfJ1000000p020000_002", "stackid=")
    status, _, err = run([det_path, gaia_path, out, "stackid=hrcfJ1000000p020000_002"], capsys)
    assert status == 0, err
    hdr = fits.getheader(out)
    assert hdr["NDETIN"] == 5 and hdr["INSTRUME"] == "HRC"  # from the stack id prefix
    status, _, err = run([det_path, gaia_path, out, "stackid=nosuch", "clobber=yes"], capsys)
    assert_error(status, err, "stackid=nosuch is not in detfile")


def test_error_missing_column(tmp_path, capsys):
    det, xi, eta = det_table()
    det.remove_column("err_ellipse_r1")
    paths = [write_fits_table(det, tmp_path / "d.fits", extname="DETS"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "d.fits[DETS]", "err_ellipse_r1")


def test_error_missing_gaia_pm(tmp_path, capsys):
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta)
    gaia.remove_column("PMDEC")
    paths = [write_fits_table(det, tmp_path / "d.fits"),
             write_fits_table(gaia, tmp_path / "g.fits", extname="GAIA")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "g.fits[GAIA]", "pmdec")


def test_error_duplicate_region_id(tmp_path, capsys):
    det, xi, eta = det_table()
    det["region_id"][5] = 3
    paths = [write_fits_table(det, tmp_path / "d.fits"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "region_id must be unique", "repeated: 3")


def test_error_not_a_table(tmp_path, capsys):
    bad = tmp_path / "junk.fits"
    bad.write_bytes(b"\x00\x01\x02 this is not a table \xff" * 10)
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    status, _, err = run([bad, gaia_path, tmp_path / "o.fits"], capsys)
    assert_error(status, err, "detfile")
    status, _, err = run([det_path, tmp_path / "missing.fits", tmp_path / "o.fits"], capsys)
    assert_error(status, err, "gaiafile", "does not exist")


def test_error_clobber(tmp_path, capsys):
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    out = tmp_path / "o.fits"
    out.write_text("precious")
    status, _, err = run([det_path, gaia_path, out], capsys)
    assert_error(status, err, "Clobber set to no")
    assert out.read_text() == "precious"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["wisefile=w.fits"], "wisefile and bestnbfile go together"),
        (["method=twostep"], "method=twostep needs the ALLWISE inputs"),
        (["sep_bins=1,x,3"], "'x' is not a number"),
        (["sep_bins=1,2", "match_radius=3"], "exceeds the last sep_bins edge"),
        (["sep_bins=2,1,3"], "strictly increasing"),
    ],
)
def test_parameter_errors(tmp_path, capsys, extra, message):
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    status, _, err = run([det_path, gaia_path, tmp_path / "o.fits"] + extra, capsys)
    assert_error(status, err, message)


def test_error_bad_wise_column(tmp_path, capsys):
    ra0, dec0 = 150.0, 2.0
    det, xi, eta = det_table(ra0, dec0)
    gaia = gaia_table(ra0, dec0, xi, eta)
    w, bn = wise_tables(ra0, dec0, xi, eta, gaia)
    w.remove_column("cc_flags")
    paths = [write_fits_table(det, tmp_path / "d.fits"), write_fits_table(gaia, tmp_path / "g.fits")]
    wpath = write_fits_table(w, tmp_path / "w.fits", extname="ALLWISE")
    bpath = write_fits_table(bn, tmp_path / "b.fits")
    status, _, err = run(paths + [tmp_path / "o.fits", f"wisefile={wpath}", f"bestnbfile={bpath}"],
                         capsys)
    assert_error(status, err, "w.fits[ALLWISE]", "cc_flags")


def test_error_null_ids(tmp_path, capsys):
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta, upper=False)
    gaia["source_id"] = np.ma.masked_array(gaia["source_id"], mask=np.arange(len(gaia)) == 3)
    gaia.write(tmp_path / "g.ecsv")
    paths = [write_fits_table(det, tmp_path / "d.fits"), tmp_path / "g.ecsv"]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "source_id", "null")


# ------------------------------------------------------------------ pieces


def test_shell_chain(tmp_path):
    """bin/stk_match chains with bin/stk_xfm in a shell (the installed scripts' way)."""
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "lib") + os.pathsep + env.get("PYTHONPATH", "")
    py = sys.executable
    script = (
        f'"{py}" "{REPO / "bin" / "stk_match"}" "{det_path}" "{gaia_path}" '
        f'"{tmp_path / "pairs.fits"}" verbose=0 && '
        f'"{py}" "{REPO / "bin" / "stk_xfm"}" "{tmp_path / "pairs.fits"}" '
        f'"{tmp_path / "xfm.fits"}" verbose=0 && echo chained'
    )
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "chained"
    assert fits.getval(tmp_path / "pairs.fits", "METHOD") == "direct"
    with fits.open(tmp_path / "xfm.fits") as hdul:
        assert "STKXFM" in [h.name for h in hdul]


def test_help_lists_parameters(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("detfile", "gaiafile", "outfile", "wisefile", "bestnbfile", "sep_bins", "method"):
        assert name in out


# ------------------------------------------ outputs that would clobber an input; odd input values


def _md5(path):
    import hashlib

    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _all_inputs(tmp_path):
    """det, gaia, wise and best-neighbour FITS files of one two-step-capable stack."""
    ra0, dec0 = 150.0, 2.0
    det, xi, eta = det_table(ra0, dec0)
    gaia = gaia_table(ra0, dec0, xi, eta, n_match=10, n_field=50)
    w, bn = wise_tables(ra0, dec0, xi, eta, gaia, n_match=35)
    return {
        "detfile": write_fits_table(det, tmp_path / "det.fits", extname="DETECTIONS"),
        "gaiafile": write_fits_table(gaia, tmp_path / "gaia.fits", extname="GAIA"),
        "wisefile": write_fits_table(w, tmp_path / "wise.fits", extname="ALLWISE"),
        "bestnbfile": write_fits_table(bn, tmp_path / "bn.fits", extname="BESTNB"),
    }


def _args(files, outfile, *extra):
    return [files["detfile"], files["gaiafile"], outfile, f"wisefile={files['wisefile']}",
            f"bestnbfile={files['bestnbfile']}", *extra]


@pytest.mark.parametrize("clobber", ["yes", "no"])
@pytest.mark.parametrize("which", ["detfile", "gaiafile", "wisefile", "bestnbfile"])
def test_error_outfile_is_an_input(tmp_path, capsys, which, clobber):
    """outfile naming an input is refused before any work, clobber or not (it destroyed it)."""
    files = _all_inputs(tmp_path)
    before = {k: _md5(v) for k, v in files.items()}
    status, _, err = run(_args(files, files[which], f"clobber={clobber}"), capsys)
    assert_error(status, err, f"outfile={files[which]} is also {which}; choose another output name")
    assert {k: _md5(v) for k, v in files.items()} == before


@pytest.mark.parametrize("how", ["block", "relative", "symlink", "link_to_output", "hardlink"])
def test_error_outfile_is_an_input_other_spellings(tmp_path, capsys, monkeypatch, how):
    """The same file named through a [block], a relative path, a symlink or a hard link."""
    files = _all_inputs(tmp_path)
    gaia = files["gaiafile"]
    before = _md5(gaia)
    outfile = gaia
    if how == "block":
        files["gaiafile"] = f"{gaia}[GAIA]"
    elif how == "relative":
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path / "sub")
        outfile = "../gaia.fits"
    elif how == "symlink":
        outfile = tmp_path / "alias.fits"
        outfile.symlink_to(gaia)
    elif how == "link_to_output":  # the input is a symlink to the output's name
        files["gaiafile"] = str(tmp_path / "alias.fits")
        Path(files["gaiafile"]).symlink_to(gaia)
    elif how == "hardlink":
        outfile = tmp_path / "hard.fits"
        os.link(gaia, outfile)
    status, _, err = run(_args(files, outfile, "clobber=yes"), capsys)
    assert_error(status, err, f"outfile={outfile} is also gaiafile; choose another output name")
    assert _md5(gaia) == before


def test_outfile_beside_inputs_is_fine(tmp_path, capsys):
    """The check does not refuse an output that merely resembles an input's name."""
    files = _all_inputs(tmp_path)
    status, _, err = run(_args(files, tmp_path / "det.fits.out", "clobber=yes"), capsys)
    assert status == 0, err


@pytest.mark.parametrize("name", ["r_stack", "match_radius", "max_pm"])
def test_error_indef_numeric_parameter(tmp_path, capsys, name):
    """INDEF for a numeric setting that has no 'unset' meaning is a user error, not a crash."""
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    status, _, err = run([det_path, gaia_path, tmp_path / "o.fits", f"{name}=INDEF"], capsys)
    assert_error(status, err, f"{name} must be a number, not INDEF")
    assert not (tmp_path / "o.fits").exists()


def test_indef_tangent_point_still_means_from_detfile(tmp_path, capsys):
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    status, _, err = run([det_path, gaia_path, tmp_path / "o.fits", "ra_stack=INDEF",
                          "dec_stack=INDEF"], capsys)
    assert status == 0, err
    assert fits.getval(tmp_path / "o.fits", "RA_STACK") == 150.0


@pytest.mark.parametrize("fmt", ["fits", "csv", "ecsv", "vot"])
@pytest.mark.parametrize("empty", ["wisefile", "bestnbfile", "gaiafile", "wisefile+bestnbfile"])
def test_zero_row_reference_tables(tmp_path, capsys, empty, fmt):
    """A reference table with the right columns and no rows is zero sources: a normal run."""
    ra0, dec0 = 150.0, 2.0
    det, xi, eta = det_table(ra0, dec0)
    tables = {"gaiafile": gaia_table(ra0, dec0, xi, eta, n_match=10, n_field=50)}
    tables["wisefile"], tables["bestnbfile"] = wise_tables(ra0, dec0, xi, eta, tables["gaiafile"])
    paths = {"detfile": write_fits_table(det, tmp_path / "det.fits")}
    for name, table in tables.items():
        if name in empty.split("+"):
            table = table[:0]
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "fits":
            write_fits_table(table, path)
        else:
            table.write(path, format="votable" if fmt == "vot" else f"ascii.{fmt}")
        paths[name] = str(path)
    out = tmp_path / "o.fits"
    status, _, err = run(_args(paths, out), capsys)
    assert status == 0, err
    assert "Traceback" not in err
    hdr = fits.getheader(out)
    n = {"gaiafile": "NGAIAIN", "wisefile": "NWISEIN", "bestnbfile": "NBNIN"}
    for name, key in n.items():
        assert hdr[key] == (0 if name in empty.split("+") else len(tables[name])), key
    if "wisefile" in empty:
        assert hdr["NMWISE"] == 0 and hdr["DENSWISE"] == 0.0
        assert len(fits.getdata(out, "WISE_PAIRS")) == 0
    if "bestnbfile" in empty or "wisefile" in empty:
        assert hdr["NWGPAIRS"] == 0
    if empty == "gaiafile":
        assert hdr["NMGAIA"] == 0 and hdr["METHOD"] == "twostep"
    assert hdr["HAVEWISE"] is True


def test_zero_row_detfile_with_stack_column(tmp_path, capsys):
    """A detfile with a detect_stack_id column but no rows: zero detections, not a crash."""
    det, xi, eta = det_table()
    paths = [write_fits_table(det[:0], tmp_path / "d.fits"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    out = tmp_path / "o.fits"
    # no tangent point anywhere: the error says the file has no rows, not "no columns"
    status, _, err = run(paths + [out], capsys)
    assert_error(status, err, "no tangent point", "d.fits", "no rows")
    assert "has no ra_stack/dec_stack columns" not in err
    # given the tangent point and the stack, the stack has zero detections: METHOD none
    status, _, err = run(paths + [out, "ra_stack=150", "dec_stack=2", f"stackid={STACK}"], capsys)
    assert status == 0, err
    assert "no rows" in err
    hdr = fits.getheader(out)
    assert hdr["METHOD"] == "none" and hdr["NDETIN"] == 0 and hdr["STACKID"] == STACK


def test_error_gaia_id_too_large(tmp_path, capsys):
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta, upper=False)
    gaia["source_id"] = gaia["source_id"].astype("U25")
    gaia["source_id"][3] = "99999999999999999999999"
    paths = [write_fits_table(det, tmp_path / "d.fits"), write_fits_table(gaia, tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "source_id", "64-bit")


@pytest.mark.parametrize("dtype", ["float", "uint64"])
def test_error_ids_out_of_int64_range(tmp_path, capsys, dtype):
    """Ids that do not fit int64 are refused, not wrapped into wrong (or repeated) ids."""
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta, upper=False)
    if dtype == "float":
        gaia["source_id"] = np.arange(len(gaia), dtype=float) * 1e20
    else:
        gaia["source_id"] = np.arange(len(gaia), dtype=np.uint64) + np.uint64(2**63)
    paths = [write_fits_table(det, tmp_path / "d.fits"), write_fits_table(gaia, tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "source_id", "64-bit")


def test_error_region_id_beyond_int32(tmp_path, capsys):
    """region_id is int32 in the output (formats.md): larger ids were silently wrapped."""
    det, xi, eta = det_table()
    det["region_id"] = np.arange(len(det), dtype=np.int64) + 2**32 + 1
    paths = [write_fits_table(det, tmp_path / "d.fits"),
             write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "region_id", "32-bit")
    assert not (tmp_path / "o.fits").exists()


def test_error_tangent_keyword_logical(tmp_path, capsys):
    det, xi, eta = det_table(columns=False)
    hdu = fits.table_to_hdu(det)
    hdu.header["RA_STACK"] = True
    hdu.header["DTYPE7"] = "DEC_STACK"
    hdu.header["DVAL7"] = 2.0
    path = tmp_path / "d.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    gaia_path = write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")
    status, _, err = run([path, gaia_path, tmp_path / "o.fits"], capsys)
    assert_error(status, err, "RA_STACK/DEC_STACK keywords are not numbers")


def test_duplicate_best_neighbour_rows(tmp_path, capsys):
    """Repeated identical best-neighbour rows count as one association (no crash, same pairs)."""
    from astropy.table import vstack

    files = _all_inputs(tmp_path)
    status, _, err = run(_args(files, tmp_path / "a.fits"), capsys)
    assert status == 0, err
    bn = Table.read(files["bestnbfile"])
    files["bestnbfile"] = write_fits_table(vstack([bn, bn]), tmp_path / "bn2.fits")
    status, _, err = run(_args(files, tmp_path / "b.fits"), capsys)
    assert status == 0, err
    assert fits.getval(tmp_path / "b.fits", "NBNMULTI") == 0
    a, b = fits.getdata(tmp_path / "a.fits", "WISE_GAIA"), fits.getdata(tmp_path / "b.fits",
                                                                           "WISE_GAIA")
    assert len(a) == len(b) > 0
    assert np.array_equal(a["wise_id"], b["wise_id"])


# ------------------------------------------------ the help page's examples run


SAMPLE = REPO / "share" / "sample"
SAMPLE_STACK = "acisfJ1236480p621200_001"


def _help_examples():
    """{number: shell text} of the EXAMPLES section of share/doc/stk_match.txt."""
    import re
    import textwrap

    text = (REPO / "share" / "doc" / "stk_match.txt").read_text()
    section = text.split("\nEXAMPLES\n", 1)[1].split("\nCAVEATS", 1)[0]
    examples = {}
    for chunk in re.split(r"\n    (?=\d+\. )", "\n" + section)[1:]:
        number = int(chunk.split(".", 1)[0])
        lines = chunk.splitlines()[1:]
        body = [ln for ln in lines if ln.startswith("        ") or not ln.strip()]
        first = next(i for i, ln in enumerate(body) if ln.strip())
        examples[number] = textwrap.dedent("\n".join(body[first:])).strip() + "\n"
    return examples


def _tool_path(tmp_path):
    """A bin folder with the tools (this checkout) and python, for shell scripts."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("stk_match", "stk_xfm", "stk_update_wcs"):
        script = bindir / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "bin" / tool}" "$@"\n')
        script.chmod(0o755)
    (bindir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bindir / "python").chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "lib") + os.pathsep + env.get("PYTHONPATH", "")
    (tmp_path / "pfiles").mkdir()
    env["PFILES"] = f"{tmp_path / 'pfiles'};{REPO / 'param'}"
    return env


def _sh(script, cwd, env):
    proc = subprocess.run(["sh", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_help_examples_1_to_3_and_5_run(tmp_path):
    import shutil

    env = _tool_path(tmp_path)
    ex = _help_examples()
    assert sorted(ex) == [1, 2, 3, 4, 5, 6, 7]
    src = {k: SAMPLE / f"{SAMPLE_STACK}_{k}.fits" for k in ("det", "gaia", "allwise", "bestnb")}
    shutil.copy(src["det"], tmp_path / "det.fits")
    shutil.copy(src["gaia"], tmp_path / "gaia.fits")
    # example 2: several stacks in one block STACKDET, a Gaia VOTable, a CSV best-neighbour table
    want = "acisfJ1115042m611530_001"
    det = Table.read(src["det"])
    other = det.copy()
    det["detect_stack_id"] = want
    other["detect_stack_id"] = "acisfJ0000000p000000_001"
    from astropy.table import vstack

    write_fits_table(vstack([det, other]), tmp_path / "csc_dets.fits", extname="STACKDET")
    Table.read(src["gaia"]).write(tmp_path / "gaia_cone.vot", format="votable")
    shutil.copy(src["allwise"], tmp_path / "allwise.fits")
    Table.read(src["bestnb"]).write(tmp_path / "gaia_allwise_bn.csv")

    for number in (1, 2, 3):
        proc = _sh(ex[number], tmp_path, env)
        assert proc.returncode == 0, (number, ex[number], proc.stderr)
        assert fits.getval(tmp_path / "pairs.fits", "CONTENT") == "STKPAIRS"
        if number == 2:
            assert fits.getval(tmp_path / "pairs.fits", "STACKID") == want
            assert fits.getval(tmp_path / "pairs.fits", "HAVEWISE") is True
        (tmp_path / "pairs.fits").rename(tmp_path / f"pairs{number}.fits")
    (tmp_path / "pairs2.fits").rename(tmp_path / "pairs.fits")
    python_lines = "".join(ln for ln in ex[5].replace("\\\n", "").splitlines(True)
                           if ln.startswith("python"))
    proc = _sh(python_lines, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "region_id" in proc.stdout and "group" in proc.stdout


def test_help_example_4_batch_chain_runs(tmp_path):
    """The batch chain of the help page runs as written (it called stk_update_wcs without
    its required outdir, so the first stack stopped the script)."""
    import shutil

    env = _tool_path(tmp_path)
    script = _help_examples()[4]
    work = tmp_path / "work" / SAMPLE_STACK
    work.mkdir(parents=True)
    for name, kind in (("det", "det"), ("gaia", "gaia"), ("wise", "allwise"), ("bn", "bestnb")):
        shutil.copy(SAMPLE / f"{SAMPLE_STACK}_{kind}.fits", work / f"{name}.fits")
    shutil.copytree(SAMPLE / "products", tmp_path / "products" / SAMPLE_STACK)
    (tmp_path / "stacks.lis").write_text(SAMPLE_STACK + "\n")
    evt = next((tmp_path / "products" / SAMPLE_STACK).rglob("*evt3.fits"))
    proc = _sh(script, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    method = fits.getval(work / "pairs.fits", "METHOD")
    # stk_update_wcs verbose=0 prints its one summary line (issue 15), the script its own
    lines = proc.stdout.splitlines()
    assert [ln for ln in lines if " file(s): " not in ln] == [f"{SAMPLE_STACK} {method}"]
    assert len([ln for ln in lines if " file(s): " in ln and "updated" in ln]) == 1
    with fits.open(work / "xfm.fits") as hdul:
        assert "STKXFM" in [h.name for h in hdul]
    # the products were updated in place
    with fits.open(evt) as hdul:
        assert any("stk_update_wcs" in str(c) for h in hdul for c in h.header.get("HISTORY", []))


@pytest.mark.parametrize("where", ["outfile", "detfile"])
def test_symlink_loop_is_not_a_crash(tmp_path, capsys, where):
    """A symbolic-link loop as outfile or input: no traceback from the outfile-vs-input check."""
    det_path, gaia_path, _, _ = standard_inputs(tmp_path)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    args = [det_path, gaia_path, tmp_path / "o.fits", "clobber=yes"]
    args[0 if where == "detfile" else 2] = tmp_path / "loop1"
    status, _, err = run(args, capsys)
    assert "Traceback" not in err
    if where == "detfile":
        assert_error(status, err, "detfile")
    else:
        assert status == 0, err


@pytest.mark.parametrize("source", ["parameter", "column", "tab"])
def test_error_stack_id_not_printable_ascii(tmp_path, capsys, source):
    """A stack id FITS cannot hold (STACKID keyword) is refused before any work, not a
    traceback at the end."""
    det, xi, eta = det_table()
    gaia_path = write_fits_table(gaia_table(150.0, 2.0, xi, eta), tmp_path / "g.fits")
    out = tmp_path / "o.fits"
    if source == "column":
        det["detect_stack_id"] = ["acisf\u00e9_001"] * len(det)
        det.write(tmp_path / "d.ecsv")
        status, _, err = run([tmp_path / "d.ecsv", gaia_path, out], capsys)
        assert_error(status, err, "detect_stack_id", "printable ASCII")
    else:
        det.remove_column("detect_stack_id")
        det_path = write_fits_table(det, tmp_path / "d.fits")
        value = "acisf\u00e9_001" if source == "parameter" else "a\tb"
        status, _, err = run([det_path, gaia_path, out, f"stackid={value}"], capsys)
        assert_error(status, err, "stackid=", "printable ASCII")
    assert not out.exists()


@pytest.mark.parametrize("which", ["detfile", "gaiafile", "wisefile", "bestnbfile"])
def test_error_zero_column_table(tmp_path, capsys, which):
    """A table HDU without columns: the missing required column is named (no traceback)."""
    files = _all_inputs(tmp_path)
    empty = fits.BinTableHDU.from_columns(fits.ColDefs([]), name="EMPTY")
    fits.HDUList([fits.PrimaryHDU(), empty]).writeto(tmp_path / "nocol.fits")
    files[which] = str(tmp_path / "nocol.fits")
    status, _, err = run(_args(files, tmp_path / "o.fits"), capsys)
    assert_error(status, err, "nocol.fits[EMPTY]", "required column")


@pytest.mark.parametrize("fmt", ["fits", "csv"])
def test_error_non_numeric_ra(tmp_path, capsys, fmt):
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta, upper=False)
    gaia["ra"] = gaia["ra"].astype("U24")
    gaia["ra"][7] = "12h30m"
    gpath = tmp_path / f"g.{fmt}"
    if fmt == "fits":
        write_fits_table(gaia, gpath)
    else:
        gaia.write(gpath)
    status, _, err = run([write_fits_table(det, tmp_path / "d.fits"), gpath, tmp_path / "o.fits"],
                         capsys)
    assert_error(status, err, "column 'ra' is not numeric")


def test_error_float_ids_beyond_exact_range(tmp_path, capsys):
    """Gaia ids (~4e18) stored as floats are rounded (distinct sources merged): refused."""
    det, xi, eta = det_table()
    gaia = gaia_table(150.0, 2.0, xi, eta, upper=False)
    gaia["source_id"] = gaia["source_id"].astype(float)
    paths = [write_fits_table(det, tmp_path / "d.fits"), write_fits_table(gaia, tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert_error(status, err, "source_id", "floating point")
    # small ids as floats (e.g. region_id 1.0, 2.0 from a CSV) are still fine
    det["region_id"] = det["region_id"].astype(float)
    gaia = gaia_table(150.0, 2.0, xi, eta, upper=False)
    paths = [write_fits_table(det, tmp_path / "d.fits"), write_fits_table(gaia, tmp_path / "g.fits")]
    status, _, err = run(paths + [tmp_path / "o.fits"], capsys)
    assert status == 0, err


def test_help_examples_6_and_7_vizier_and_sdss_run(tmp_path):
    """Example 6: a VizieR-named Gaia VOTable with epoch=; example 7: refcat=sdss."""
    import shutil

    env = _tool_path(tmp_path)
    ex = _help_examples()
    shutil.copy(SAMPLE / f"{SAMPLE_STACK}_det.fits", tmp_path / "det.fits")
    g = Table.read(SAMPLE / f"{SAMPLE_STACK}_gaia.fits")
    viz = Table()
    viz["RA_ICRS"], viz["DE_ICRS"], viz["Source"] = g["ra"], g["dec"], g["source_id"]
    viz["pmRA"], viz["pmDE"] = g["pmra"], g["pmdec"]
    viz["b_Teff_gaia"] = np.full(len(g), 4000.0)
    viz["B_Teff_gaia"] = np.full(len(g), 4400.0)
    viz["Epoch"] = np.full(len(g), 2016.0)
    viz.write(tmp_path / "gaia_vizier.vot", format="votable")
    proc = _sh(ex[6], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert fits.getval(tmp_path / "pairs.fits", "EPOCHOBS") == 2003.4
    assert fits.getval(tmp_path / "pairs_spec.fits", "EPOCHMOD") == "none"
    sd = Table({"objID": g["source_id"], "ra": g["ra"], "dec": g["dec"],
                "mode": np.ones(len(g), dtype=int),
                "objc_rowcErr": np.full(len(g), 0.1), "objc_colcErr": np.full(len(g), 0.1)})
    sd.write(tmp_path / "sdss_photoobj.csv")
    proc = _sh(ex[7], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert fits.getval(tmp_path / "pairs_sdss.fits", "REFCAT") == "SDSS"
