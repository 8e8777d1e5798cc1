"""Gaia epoch propagation (core/epoch.py) against astropy, and its wiring in stk_match."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from stk_astrometry import api
from stk_astrometry.core import epoch as ep
from stk_astrometry.errors import ParameterError
from stk_astrometry.formats import catalogs
from stk_astrometry.tangent import tangent_to_sky
from stk_astrometry.tools.stk_match import main as stk_match


def _astropy(ra, dec, pmra, pmdec, ep1, ep2, distance=None):
    kw = {} if distance is None else {"distance": distance}
    c = SkyCoord(ra * u.deg, dec * u.deg, pm_ra_cosdec=pmra * u.mas / u.yr,
                 pm_dec=pmdec * u.mas / u.yr, obstime=Time(ep1, format="jyear"), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # astropy's "distance overridden" ErfaWarning
        return c.apply_space_motion(new_obstime=Time(ep2, format="jyear"))


# Known stars (Gaia DR3 values at J2016.0, rounded): Barnard's star, 61 Cyg A, Proxima Cen.
KNOWN = [
    ("Barnard", 269.44850252543836, 4.739420051112412, -801.551, 10362.394, 546.976),
    ("61 Cyg A", 316.74754786, 38.75607440, 4164.209, 3249.614, 285.995),
    ("Proxima", 217.39232147200883, -62.67607511676666, -3781.741, 769.465, 768.067),
]


@pytest.mark.parametrize("name, ra, dec, pmra, pmdec, plx", KNOWN)
def test_known_stars_agree_with_astropy(name, ra, dec, pmra, pmdec, plx):
    for target in (2000.0, 2008.3, 2024.9):
        got_ra, got_dec, moved = ep.propagate([ra], [dec], [pmra], [pmdec], 2016.0, target)
        want = _astropy(ra, dec, pmra, pmdec, 2016.0, target)
        sep = want.separation(SkyCoord(got_ra * u.deg, got_dec * u.deg)).to(u.uas).value
        assert moved[0]
        assert sep[0] < 1.0, name          # < 1 micro-arcsec
        # with the parallax too, against astropy with the distance
        got_ra, got_dec, _ = ep.propagate([ra], [dec], [pmra], [pmdec], 2016.0, target,
                                          parallax_mas=[plx])
        want = _astropy(ra, dec, pmra, pmdec, 2016.0, target,
                        distance=(plx * u.mas).to(u.pc, u.parallax()))
        sep = want.separation(SkyCoord(got_ra * u.deg, got_dec * u.deg)).to(u.uas).value
        assert sep[0] < 1.0, name
    # Barnard's star moves ~10.4"/yr: 16 yr earlier it was ~166" away
    r, d, _ = ep.propagate([KNOWN[0][1]], [KNOWN[0][2]], [KNOWN[0][3]], [KNOWN[0][4]],
                           2016.0, 2000.0)
    moved_by = SkyCoord(KNOWN[0][1] * u.deg, KNOWN[0][2] * u.deg).separation(
        SkyCoord(r * u.deg, d * u.deg)).arcsec[0]
    assert moved_by == pytest.approx(16 * np.hypot(KNOWN[0][3], KNOWN[0][4]) / 1000, rel=1e-3)


def test_null_proper_motion_is_not_moved_and_its_error_grows():
    ra = np.array([10.0, 10.001, 10.002])
    dec = np.array([-5.0, -5.0, -5.0])
    pmra = np.array([np.nan, 3.0, 0.0])
    pmdec = np.array([2.0, np.nan, 0.0])
    r, d, moved = ep.propagate(ra, dec, pmra, pmdec, 2016.0, 2004.0)
    assert list(moved) == [False, False, True]
    np.testing.assert_array_equal(r, ra)    # null pm: unchanged; zero pm: unchanged too
    np.testing.assert_array_equal(d, dec)
    sig = ep.position_sigma(2004.0 - 2016.0, moved, pos_err_mas=[0.3, 0.4, 0.5],
                            pm_err_masyr=[np.nan, np.nan, 0.1], pm_disp_masyr=5.0)
    np.testing.assert_allclose(sig, np.hypot([0.3, 0.4, 0.5], [60.0, 60.0, 1.2]) / 1000)
    # a zero proper motion agrees with astropy too
    want = _astropy(10.002, -5.0, 0.0, 0.0, 2016.0, 2004.0)
    assert abs(want.ra.deg - r[2]) < 1e-12 and abs(want.dec.deg - d[2]) < 1e-12


def test_pole_crossing_agrees_with_astropy():
    # 0.36" from the north pole moving 100 mas/yr towards it: 14.7 yr later it is across
    ra, dec, pmra, pmdec = 45.0, 89.9999, 0.0, 100.0
    r, d, moved = ep.propagate([ra], [dec], [pmra], [pmdec], 2016.0, 2030.7)
    want = _astropy(ra, dec, pmra, pmdec, 2016.0, 2030.7)
    sep = want.separation(SkyCoord(r * u.deg, d * u.deg)).to(u.uas).value
    assert moved[0] and sep[0] < 1.0
    assert abs(((r[0] - ra + 180) % 360) - 180) > 170      # across the pole: RA flips
    # south pole, other direction, and a per-row reference epoch
    r, d, _ = ep.propagate([300.0, 300.0], [-89.99995, -89.99995], [50.0, 50.0],
                           [-80.0, -80.0], [2016.0, 2015.5], 2001.0)
    for i, e1 in enumerate((2016.0, 2015.5)):
        want = _astropy(300.0, -89.99995, 50.0, -80.0, e1, 2001.0)
        assert want.separation(SkyCoord(r[i] * u.deg, d[i] * u.deg)).to(u.uas).value < 1.0


def test_no_raw_warning_reaches_the_user():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ep.propagate(np.array([1.0, 2.0]), np.array([0.0, 89.0]), np.array([5.0, 1e4]),
                     np.array([5.0, -1e4]), 2016.0, 1999.5)


def _wrapper_propagation(ra, dec, pmra, pmdec, ref_epoch, epoch, plx):
    """ERFA's documented wrapper, as propagate called it before issue 11."""
    import erfa

    cosd = np.cos(np.radians(dec))
    ep1a, ep1b = erfa.epj2jd(np.broadcast_to(ref_epoch, ra.shape))
    ep2a, ep2b = erfa.epj2jd(epoch)
    px = np.where(np.isfinite(plx) & (plx > 0), plx / 1000.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", erfa.ErfaWarning)
        ra2, dec2, *_ = erfa.pmsafe(np.radians(ra), np.radians(dec), pmra * ep._MAS_TO_RAD / cosd,
                                    pmdec * ep._MAS_TO_RAD, px, 0.0, ep1a, ep1b, ep2a, ep2b)
    return np.degrees(ra2) % 360.0, np.degrees(dec2)


def test_propagation_is_erfas_wrapper_to_the_last_bit():
    # propagate calls ERFA's ufunc without the wrapper's status report (issue 11): the same
    # numbers, with parallaxes (some unusable) and without, one reference epoch or one a row
    rng = np.random.default_rng(11)
    n = 500
    ra, dec = rng.uniform(0.0, 360.0, n), np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    pmra, pmdec = rng.normal(0.0, 30.0, (2, n)) * rng.choice([1.0, 100.0], (2, n))
    plx = rng.choice([np.nan, -1.0, 0.0, 0.5, 20.0, 700.0], n)
    for ref in (2016.0, rng.uniform(2015.0, 2016.5, n)):
        for parallax in (None, plx):
            got_ra, got_dec, moved = ep.propagate(ra, dec, pmra, pmdec, ref, 2003.7,
                                                  parallax_mas=parallax)
            assert moved.all()
            want = _wrapper_propagation(ra, dec, pmra, pmdec, ref, 2003.7,
                                        np.zeros(n) if parallax is None else plx)
            np.testing.assert_array_equal(got_ra, want[0])
            np.testing.assert_array_equal(got_dec, want[1])


def test_an_erfa_error_status_is_raised_as_erfa_words_it(monkeypatch):
    # ERFA says its error status (-1) should not occur; if it does, its ErfaError is raised
    import erfa

    real = erfa.ufunc.pmsafe

    def failing(*args):
        *out, status = real(*args)
        status = status.copy()
        status[1] = -1
        return (*out, status)

    monkeypatch.setattr(erfa.ufunc, "pmsafe", failing)
    with pytest.raises(erfa.ErfaError, match='pmsafe" yielded 1 of "system error'):
        ep.propagate([1.0, 2.0, 3.0], [0.0, 10.0, 20.0], [5.0, 5.0, 5.0], [5.0, 5.0, 5.0],
                     2016.0, 2000.0)


def test_bad_positions_are_left_for_the_filters():
    r, d, moved = ep.propagate([np.nan, 400.0, 10.0], [0.0, 0.0, 95.0], [1.0, 1.0, 1.0],
                               [1.0, 1.0, 1.0], 2016.0, 2000.0)
    assert not moved.any()
    assert np.isnan(r[0]) and r[1] == 400.0 and d[2] == 95.0


def test_every_dec_within_90_has_a_positive_cosine_and_is_moved():
    # Propagation tests |dec| <= 90 and divides pmra by cos(dec) of the moved rows only
    # (issue 11): radians(+-90) is pi/2 rounded down, whose cosine is > 0, as are those of
    # the 2**22 doubles next to it
    k = np.arange(2**22, dtype=np.int64)
    near = (np.float64(90.0).view(np.int64) - k).view(np.float64)
    assert near[0] == 90.0
    for dec in (near, -near):
        assert np.all(np.cos(np.radians(dec)) > 0)
    dec = np.array([90.0, -90.0, near[1], -near[1], 89.0])
    ra = np.array([10.0, 200.0, 0.0, 360.0, 45.0])
    pm = np.full(5, 20.0)
    got_ra, got_dec, moved = ep.propagate(ra, dec, pm, pm, 2016.0, 2000.0)
    assert moved.all()
    want_ra, want_dec = _wrapper_propagation(ra, dec, pm, pm, 2016.0, 2000.0, np.zeros(5))
    np.testing.assert_array_equal(got_ra, want_ra)
    np.testing.assert_array_equal(got_dec, want_dec)


@pytest.mark.parametrize("text, year", [
    ("2012.5", 2012.5), ("J2012.5", 2012.5), ("51544.5", 2000.0),
    ("2000-01-01T12:00:00", 2000.0), ("auto", None), ("", None), ("none", "none"),
    (None, None)])
def test_epoch_parameter(text, year):
    got = catalogs.parse_epoch_parameter(text)
    if isinstance(year, float):
        assert got == pytest.approx(year, abs=1e-9)
    else:
        assert got == year


@pytest.mark.parametrize("text", ["yesterday", "2012-13-45", "1800", "nan"])
def test_bad_epoch_parameter(text):
    with pytest.raises(ParameterError):
        catalogs.parse_epoch_parameter(text)


# ------------------------------------------------------------------ through stk_match

RA0, DEC0 = 150.0, 2.0
STACK = "acisfJ1000000p020000_001"


def _field(tmp_path, *, epoch_kw=None, n=30, pm=(8.0, -6.0), null_every=0, seed=5,
           stack_epoch=2001.0, gaia_cols=None):
    """Detections at ``stack_epoch``; Gaia counterparts at J2016.0 moved by a common pm."""
    rng = np.random.default_rng(seed)
    r = 500 * np.sqrt(rng.uniform(0, 1, n))
    a = rng.uniform(0, 2 * np.pi, n)
    xi, eta = r * np.sin(a), r * np.cos(a)
    ra, dec = tangent_to_sky(xi, eta, RA0, DEC0)
    det = Table()
    det["region_id"] = np.arange(1, n + 1, dtype=np.int32)
    det["ra"], det["dec"] = ra, dec
    det["err_ellipse_r0"] = np.full(n, 0.3)
    det["err_ellipse_r1"] = np.full(n, 0.3)
    det["likelihood_class"] = ["TRUE"] * n
    det["theta"] = np.hypot(xi, eta) / 60
    det["src_cnts"] = np.full(n, 100.0)
    det["sat_src_flag"] = np.zeros(n, bool)
    det["conv_hull"] = np.zeros(n, bool)
    hdu = fits.table_to_hdu(det)
    hdu.name = "SRCLIST"
    hdu.header["STACKID"] = STACK
    hdu.header["RA_STACK"] = RA0
    hdu.header["HIERARCH DEC_STACK"] = DEC0
    hdu.header["INSTRUME"] = "ACIS"
    for k, v in (epoch_kw or {}).items():
        hdu.header[k] = v
    detfile = tmp_path / "det.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(detfile)
    pmra = np.full(n, pm[0])
    pmdec = np.full(n, pm[1])
    if null_every:
        pmra[::null_every] = np.nan
        pmdec[::null_every] = np.nan
    has = np.isfinite(pmra)
    g_ra, g_dec, _ = ep.propagate(ra, dec, np.where(has, pmra, np.nan),
                                  np.where(has, pmdec, np.nan), stack_epoch, 2016.0)
    gaia = Table()
    gaia["source_id"] = np.arange(10**18, 10**18 + n, dtype=np.int64)
    gaia["ra"], gaia["dec"] = g_ra, g_dec
    gaia["pmra"], gaia["pmdec"] = pmra, pmdec
    for name, values in (gaia_cols or {}).items():
        gaia[name] = values
    gaiafile = tmp_path / "gaia.fits"
    gaia.write(gaiafile)
    return detfile, gaiafile


def test_propagation_removes_a_common_proper_motion(tmp_path):
    det, gaia = _field(tmp_path, epoch_kw={"DATE-OBS": "2001-01-01T00:00:00"},
                       gaia_cols={"ref_epoch": np.full(30, 2016.0)}, stack_epoch=
                       Time("2001-01-01T00:00:00", scale="tt").jyear)
    auto = api.match_stack(str(det), str(gaia), str(tmp_path / "p.fits"))
    none = api.match_stack(str(det), str(gaia), epoch="none")
    dx = auto.pairs.tables["GAIA_PAIRS"]["d_xi"]
    assert np.max(np.abs(dx)) < 1e-6          # Gaia moved onto the detections
    assert np.median(none.pairs.tables["GAIA_PAIRS"]["d_xi"]) == pytest.approx(
        8e-3 * 15.0, abs=2e-3)                # 8 mas/yr over 15 yr left in, without
    assert auto.epoch == pytest.approx(2001.0, abs=0.01) and auto.ref_epoch == 2016.0
    assert auto.n_propagated == 30 and none.epoch is None
    h = fits.getheader(tmp_path / "p.fits", 0)
    assert h["EPOCHMOD"] == "propagate" and h["REFCAT"] == "GAIA"
    assert h["EPOCHOBS"] == pytest.approx(2001.0, abs=0.01) and h["EPOCHREF"] == 2016.0
    assert "DATE-OBS" in h["EPOCHSRC"] and h["EPOCHRSC"] == "ref_epoch column"
    assert h["NGPROP"] == 30 and h["PMDISP"] == 5.0
    f = api.fit_stack(auto, estimator="mixture")
    assert abs(f.d_xi) < 1e-3 and abs(f.d_eta) < 1e-3


def test_epoch_none_is_the_literal_specification(tmp_path):
    det, gaia = _field(tmp_path, epoch_kw={"MJD-OBS": 51910.0}, null_every=3)
    none = api.match_stack(str(det), str(gaia), epoch="none")
    g = none.pairs.tables["GAIA_PAIRS"]
    assert np.all(g["ref_sigra"] == 0) and np.all(g["ref_sigdec"] == 0)
    gaia_t = Table.read(gaia)
    ids = np.asarray(gaia_t["source_id"])
    rows = np.searchsorted(ids, g["ref_id"])
    np.testing.assert_array_equal(g["ref_ra"], np.asarray(gaia_t["ra"])[rows])
    assert dict((k, v) for k, v, _ in none.pairs.keywords)["EPOCHMOD"] == "none"


def test_sources_without_pm_keep_their_position_with_a_grown_error(tmp_path):
    det, gaia = _field(tmp_path, epoch_kw={"MJD-OBS": 51910.0}, null_every=3)
    m = api.match_stack(str(det), str(gaia), pm_disp=4.0)
    g = m.pairs.tables["GAIA_PAIRS"]
    null = np.isin(g["ref_id"], 10**18 + np.arange(0, 30, 3))
    dt = 2016.0 - ep.julian_epoch_from_mjd(51910.0)
    np.testing.assert_allclose(g["ref_sigra"][null], 4.0e-3 * dt)
    np.testing.assert_allclose(g["ref_sigra"][~null], 0.0)     # no errors in the table
    # the null-pm sources stay where the Gaia table has them; the others are moved
    gaia_t = Table.read(gaia)
    rows = np.searchsorted(np.asarray(gaia_t["source_id"]), g["ref_id"])
    np.testing.assert_array_equal(g["ref_ra"][null], np.asarray(gaia_t["ra"])[rows][null])
    assert np.all(np.abs(g["ref_ra"][~null] - np.asarray(gaia_t["ra"])[rows][~null]) * 3600
                  > 0.1)
    assert np.all(np.abs(g["d_xi"]) < 1e-4)         # MJD 51910 is J2000.9993, not 2001.0
    assert m.n_propagated == 20


def test_no_epoch_in_detfile_warns_and_uses_reference_positions(tmp_path, caplog):
    det, gaia = _field(tmp_path)
    m = api.match_stack(str(det), str(gaia))
    assert m.epoch is None
    assert any("no stack epoch" in w for w in m.warnings)
    # the parameter gives one
    m = api.match_stack(str(det), str(gaia), epoch="2001.0", ref_epoch=2016.0)
    assert m.epoch == 2001.0 and m.n_propagated == 30


def test_gaia_errors_propagate_into_ref_sigmas(tmp_path):
    n = 30
    det, gaia = _field(tmp_path, epoch_kw={"DATE-OBS": "2006-01-01T00:00:00"},
                       gaia_cols={"ra_error": np.full(n, 0.5), "dec_error": np.full(n, 0.4),
                                  "pmra_error": np.full(n, 1.0),
                                  "pmdec_error": np.full(n, 2.0)})
    m = api.match_stack(str(det), str(gaia))
    g = m.pairs.tables["GAIA_PAIRS"]
    dt = 2016.0 - m.epoch
    np.testing.assert_allclose(g["ref_sigra"], np.hypot(0.5, 1.0 * dt) / 1000)
    np.testing.assert_allclose(g["ref_sigdec"], np.hypot(0.4, 2.0 * dt) / 1000)


def test_tool_parameters_and_errors(tmp_path, capsys):
    det, gaia = _field(tmp_path, epoch_kw={"DATE-OBS": "2001-01-01T00:00:00"})
    out = tmp_path / "pairs.fits"
    assert stk_match([str(det), str(gaia), str(out), "epoch=2003.5", "ref_epoch=2015.5",
                      "pm_disp=3"]) == 0
    h = fits.getheader(out, 0)
    assert h["EPOCHOBS"] == 2003.5 and h["EPOCHREF"] == 2015.5 and h["PMDISP"] == 3.0
    assert h["EPOCHSRC"] == "epoch parameter" and h["EPOCHRSC"] == "ref_epoch parameter"
    capsys.readouterr()
    assert stk_match([str(det), str(gaia), str(tmp_path / "x.fits"), "epoch=soon"]) == 1
    err = capsys.readouterr().err
    assert "ERROR" in err and "epoch" in err and "Traceback" not in err
    assert not (tmp_path / "x.fits").exists()


# ------------------------------------------------------------------ on demand (issue 11)


def test_propagation_on_demand_gives_propagates_numbers_row_by_row():
    rng = np.random.default_rng(12)
    n = 400
    ra, dec = rng.uniform(0.0, 360.0, n), np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    pmra, pmdec = rng.normal(0.0, 30.0, (2, n))
    pmra[::7] = np.nan
    ra[3], dec[4] = np.nan, 95.0
    plx = rng.choice([np.nan, -1.0, 0.5, 20.0], n)
    ref = rng.uniform(2015.0, 2016.5, n)
    for parallax in (None, plx):
        want_ra, want_dec, moved = ep.propagate(ra, dec, pmra, pmdec, ref, 2003.7,
                                                parallax_mas=parallax)
        motion = ep.Propagation(ra, dec, pmra, pmdec, ref, 2003.7, parallax_mas=parallax)
        np.testing.assert_array_equal(motion.moved, moved)
        rows = np.flatnonzero(moved)
        for part in (rows[::3], rows[1::3][::-1], rows[2::3], rows[:1]):
            got_ra, got_dec = motion.move(part)
            np.testing.assert_array_equal(got_ra, want_ra[part])
            np.testing.assert_array_equal(got_dec, want_dec[part])
        np.testing.assert_array_equal(motion.ra, np.asarray(ra, float))
        np.testing.assert_array_equal(motion.dec, np.asarray(dec, float))
        assert np.all(motion.bound_arcsec[~moved] == 0.0)
    with pytest.raises(ValueError, match="epoch must be finite"):
        ep.Propagation(ra, dec, pmra, pmdec, ref, np.nan)


def test_propagation_bound_holds_for_every_row_and_is_not_loose():
    # the bound is 2 mu |dt| + 1 mas: above the displacement everywhere (fast stars, the poles,
    # parallaxes or none, far epochs) and within a factor ~2 of it where it matters
    from stk_astrometry.matching import angular_separation_arcsec

    rng = np.random.default_rng(13)
    n = 20000
    ra, dec = rng.uniform(0.0, 360.0, n), np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    dec[:500] = rng.uniform(89.99, 90.0, 500) * rng.choice([-1.0, 1.0], 500)
    mu, way = 10 ** rng.uniform(-3.0, 4.5, n), rng.uniform(0.0, 2 * np.pi, n)
    pmra, pmdec = mu * np.cos(way), mu * np.sin(way)
    plx = np.where(rng.uniform(size=n) < 0.5, 10 ** rng.uniform(-3.0, 3.0, n), np.nan)
    ref = rng.choice([2015.0, 2015.5, 2016.0], n)
    for epoch in (1990.0, 2001.3, 2016.0, 2060.0):
        for parallax in (None, plx):
            motion = ep.Propagation(ra, dec, pmra, pmdec, ref, epoch, parallax_mas=parallax)
            rows = np.flatnonzero(motion.moved)
            now = motion.move(rows)
            moved_by = angular_separation_arcsec(ra[rows], dec[rows], *now)
            assert np.all(moved_by < motion.bound_arcsec[rows])
            fast = mu[rows] * np.abs(epoch - ref[rows]) > 10.0     # 10 mas and more
            assert np.all(motion.bound_arcsec[rows][fast] < 2.1 * moved_by[fast] + 1e-3)
    # a row with the reference epoch as its epoch still moves (by rounding): bound 1 mas
    motion = ep.Propagation([10.0], [20.0], [5.0], [5.0], 2016.0, 2016.0)
    assert motion.bound_arcsec[0] == pytest.approx(1e-3)


def test_a_propagation_bound_too_small_changes_the_match(tmp_path, monkeypatch):
    # the match moves a row only within its bound of a line it could cross: a source 1.5"
    # beyond the r_stack circle moving 3" in (a high but kept proper motion), and one 4.5"
    # from its detection moving onto it; with the bound a tenth of the truth, neither is seen
    n = 30
    rng = np.random.default_rng(5)
    r = 500 * np.sqrt(rng.uniform(0, 1, n))
    a = rng.uniform(0, 2 * np.pi, n)
    xi, eta = np.r_[r * np.sin(a), 0.0], np.r_[r * np.cos(a), 598.5]
    ra_now, dec_now = tangent_to_sky(xi, eta, RA0, DEC0)
    # Gaia at J2016.0: row 0 of the detections 4.5" east, the last row 3" further out (601.5"
    # from the centre, at 598.5" in 2001); both
    # moving back over 15 yr (pm 200 mas/yr: max_pm raised so that they are kept)
    g_xi, g_eta = xi.copy(), eta.copy()
    g_xi[0] += 4.5
    g_eta[-1] += 3.0
    g_ra, g_dec = tangent_to_sky(g_xi, g_eta, RA0, DEC0)
    pmra = np.zeros(n + 1)
    pmdec = np.zeros(n + 1)
    pmra[0], pmdec[-1] = 300.0, 200.0
    det = Table()
    det["region_id"] = np.arange(1, n + 1, dtype=np.int32)
    det["ra"], det["dec"] = ra_now[:n], dec_now[:n]
    det["err_ellipse_r0"] = det["err_ellipse_r1"] = np.full(n, 0.3)
    det["likelihood_class"] = ["TRUE"] * n
    det["theta"], det["src_cnts"] = np.full(n, 3.0), np.full(n, 100.0)
    hdu = fits.table_to_hdu(det)
    hdu.name = "SRCLIST"
    hdu.header["STACKID"], hdu.header["RA_STACK"] = STACK, RA0
    hdu.header["HIERARCH DEC_STACK"], hdu.header["INSTRUME"] = DEC0, "ACIS"
    detfile = tmp_path / "det.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(detfile)
    gaia = Table()
    gaia["source_id"] = np.arange(10**18, 10**18 + n + 1, dtype=np.int64)
    gaia["ra"], gaia["dec"], gaia["pmra"], gaia["pmdec"] = g_ra, g_dec, pmra, pmdec
    gaiafile = tmp_path / "gaia.fits"
    gaia.write(gaiafile)
    kw = dict(epoch="2001.0", ref_epoch=2016.0, max_pm=400.0)

    def result():
        m = api.match_stack(str(detfile), str(gaiafile), **kw)
        g = m.pairs.tables["GAIA_PAIRS"]
        return m.density_gaia * np.pi * 10.0**2, set(zip(g["region_id"].tolist(),
                                                          g["ref_id"].tolist(), strict=True))

    count, pairs = result()
    assert count == pytest.approx(n + 1)                     # the last row came in
    assert (1, 10**18) in pairs                              # row 0 moved onto detection 1
    real = ep.Propagation.__init__

    def small(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.bound_arcsec = self.bound_arcsec / 20.0         # a tenth of the displacement

    monkeypatch.setattr(ep.Propagation, "__init__", small)
    count_small, pairs_small = result()
    assert count_small == pytest.approx(n) and (1, 10**18) not in pairs_small
