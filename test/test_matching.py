"""Tests of the pure matching core (stk_astrometry.matching): no files."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import angular_separation
from stk_astrometry.errors import ParameterError
from stk_astrometry.matching import (
    BestNeighbours,
    Detections,
    GaiaSources,
    MatchConfig,
    WiseSources,
    angular_separation_arcsec,
    assign_groups,
    clean_cc_flags,
    cone_density,
    count_matches,
    crossmatch,
    decide_method,
    high_proper_motion,
    match_stack,
    one_to_one,
    valid_positions,
)
from stk_astrometry.tangent import tangent_to_sky

SEED = 20261120


def offsets_to_sky(ra0, dec0, xi_arcsec, eta_arcsec):
    return tangent_to_sky(np.asarray(xi_arcsec, float), np.asarray(eta_arcsec, float), ra0, dec0)


def make_detections(ra, dec, *, klass=None, sat=None, hull=None, man=None, r0=None, r1=None):
    n = len(ra)
    return Detections(
        region_id=np.arange(1, n + 1),
        ra_deg=np.asarray(ra, float),
        dec_deg=np.asarray(dec, float),
        err_r0_arcsec=np.full(n, 0.8) if r0 is None else np.asarray(r0, float),
        err_r1_arcsec=np.full(n, 0.5) if r1 is None else np.asarray(r1, float),
        err_ang_deg=np.zeros(n),
        theta_arcmin=np.full(n, 2.0),
        src_cnts=np.full(n, 50.0),
        likelihood_class=np.array(["TRUE"] * n) if klass is None else np.asarray(klass),
        sat_src_flag=None if sat is None else np.asarray(sat, bool),
        conv_hull=None if hull is None else np.asarray(hull, bool),
        man_inc=None if man is None else np.asarray(man, bool),
    )


def make_gaia(ra, dec, *, pmra=None, pmdec=None, ids=None):
    n = len(ra)
    return GaiaSources(
        source_id=np.arange(1000, 1000 + n, dtype=np.int64) if ids is None else np.asarray(ids),
        ra_deg=np.asarray(ra, float),
        dec_deg=np.asarray(dec, float),
        pmra_masyr=np.zeros(n) if pmra is None else np.asarray(pmra, float),
        pmdec_masyr=np.zeros(n) if pmdec is None else np.asarray(pmdec, float),
    )


def make_wise(ra, dec, *, cc=None, ids=None, sig=None):
    n = len(ra)
    return WiseSources(
        allwise_oid=np.arange(5000, 5000 + n, dtype=np.int64) if ids is None else np.asarray(ids),
        ra_deg=np.asarray(ra, float),
        dec_deg=np.asarray(dec, float),
        sigra_arcsec=np.full(n, 0.1) if sig is None else np.asarray(sig, float),
        sigdec_arcsec=np.full(n, 0.1) if sig is None else np.asarray(sig, float),
        cc_flags=np.array(["0000"] * n) if cc is None else np.asarray(cc),
    )


def counts(result):
    return {f.keyword: f.count for f in result.filters}


# ---------------------------------------------------------------- geometry


def test_separation_matches_astropy():
    rng = np.random.default_rng(SEED)
    ra1, ra2 = rng.uniform(0, 360, 200), rng.uniform(0, 360, 200)
    dec1, dec2 = rng.uniform(-90, 90, 200), rng.uniform(-90, 90, 200)
    ours = angular_separation_arcsec(ra1, dec1, ra2, dec2)
    ref = angular_separation(ra1 * u.deg, dec1 * u.deg, ra2 * u.deg, dec2 * u.deg).to_value(u.arcsec)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("ra0,dec0", [(0.0, 10.0), (359.99, -30.0), (120.0, 89.95), (45.0, -89.99)])
def test_crossmatch_truth_across_wrap_and_poles(ra0, dec0):
    """Known offsets near RA=0/360 and the poles are found with the right separation."""
    rng = np.random.default_rng(SEED)
    n = 300
    xi = rng.uniform(-500, 500, n)
    eta = rng.uniform(-500, 500, n)
    det_ra, det_dec = offsets_to_sky(ra0, dec0, xi, eta)
    dxi = rng.uniform(-1.5, 1.5, n)
    deta = rng.uniform(-1.5, 1.5, n)
    ref_ra, ref_dec = offsets_to_sky(ra0, dec0, xi + dxi, eta + deta)
    di, ri, sep = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 3.0)
    # each detection finds its own counterpart (others are tens of arcsec away)
    assert np.array_equal(di, np.arange(n))
    assert np.array_equal(ri, np.arange(n))
    # the tangent plane distorts by < (500"/206265")^2 ~ 6e-6 relative
    np.testing.assert_allclose(sep, np.hypot(dxi, deta), rtol=2e-5, atol=1e-9)
    if ra0 == 0.0:
        assert np.any(det_ra > 359) and np.any(det_ra < 1)


def test_crossmatch_brute_force_agreement():
    rng = np.random.default_rng(SEED + 1)
    det_ra, det_dec = offsets_to_sky(10.0, 20.0, rng.uniform(-60, 60, 80), rng.uniform(-60, 60, 80))
    ref_ra, ref_dec = offsets_to_sky(10.0, 20.0, rng.uniform(-60, 60, 400), rng.uniform(-60, 60, 400))
    di, ri, sep = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 4.0)
    full = angular_separation_arcsec(det_ra[:, None], det_dec[:, None], ref_ra[None, :], ref_dec[None, :])
    bi, bj = np.nonzero(full <= 4.0)
    assert len(bi) > 20  # ambiguous pairs are present
    assert set(zip(di.tolist(), ri.tolist(), strict=True)) == set(zip(bi.tolist(), bj.tolist(), strict=True))
    # sorted by detection, then separation
    key = di * 1e6 + sep
    assert np.all(np.diff(key) >= 0)


@pytest.mark.parametrize("ra0,dec0", [(10.0, 20.0), (0.0, 0.0), (120.0, 89.99), (300.0, -89.999)])
def test_crossmatch_sweep_equals_the_kd_tree(ra0, dec0, monkeypatch):
    """The sort-and-sweep and the k-d tree (its fallback) give the same pairs, in the same
    order, with the same separations: dense ambiguous fields, near the poles and RA 0."""
    import stk_astrometry.matching as m

    rng = np.random.default_rng(SEED + 2)
    det_ra, det_dec = offsets_to_sky(ra0, dec0, rng.uniform(-300, 300, 300),
                                     rng.uniform(-300, 300, 300))
    ref_ra, ref_dec = offsets_to_sky(ra0, dec0, rng.uniform(-300, 300, 3000),
                                     rng.uniform(-300, 300, 3000))
    sweep = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 5.0)
    monkeypatch.setattr(m, "_SWEEP_MAX_CANDIDATES", -1)     # every search goes to the tree
    tree = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 5.0)
    assert len(sweep[0]) > 100
    for a, b in zip(sweep, tree, strict=True):
        assert np.array_equal(a, b)


def test_crossmatch_empty_inputs():
    di, ri, sep = crossmatch(np.array([]), np.array([]), np.array([1.0]), np.array([1.0]), 3.0)
    assert len(di) == len(ri) == len(sep) == 0


def test_cone_density_counts_all_inside():
    ra0, dec0 = 359.995, 0.0
    rng = np.random.default_rng(SEED)
    xi = rng.uniform(-900, 900, 2000)
    eta = rng.uniform(-900, 900, 2000)
    ra, dec = offsets_to_sky(ra0, dec0, xi, eta)
    inside = np.hypot(xi, eta) <= 600.0
    dens = cone_density(np.append(ra, np.nan), np.append(dec, 0.0), ra0, dec0, 10.0)
    assert dens == pytest.approx(np.count_nonzero(inside) / (np.pi * 100.0), rel=1e-3)


# ---------------------------------------------------------- groups, counts


def test_groups_edges_inclusive_upper():
    g = assign_groups(np.array([0.0, 0.5, 1.0, 1.0000001, 2.0, 2.5, 3.0]), (1.0, 2.0, 3.0))
    assert g.tolist() == [1, 1, 1, 2, 2, 3, 3]


def test_count_matches_counts_detections_not_pairs():
    # detection 0: two pairs in group 1; detection 1: groups 1 and 3; detection 2: group 2
    det = np.array([0, 0, 1, 1, 2])
    grp = np.array([1, 1, 1, 3, 2])
    n, per = count_matches(det, grp, 3)
    assert n == 3
    assert per == (2, 1, 1)


def test_ambiguous_matches_in_match_stack():
    ra0, dec0 = 150.0, 2.0
    # detection 1 has two Gaia within 1"; detection 2 has one at 1.5" and one at 2.5"
    det_ra, det_dec = offsets_to_sky(ra0, dec0, [0.0, 100.0, 200.0], [0.0, 0.0, 0.0])
    g_ra, g_dec = offsets_to_sky(ra0, dec0, [0.3, -0.4, 101.5, 100.0, 500.0],
                                 [0.0, 0.2, 0.0, 2.5, 0.0])
    res = match_stack(make_detections(det_ra, det_dec), make_gaia(g_ra, g_dec),
                      MatchConfig(ra0, dec0))
    p = res.gaia_pairs
    assert len(p) == 4
    assert p.det_row.tolist() == [0, 0, 1, 1]
    assert p.group.tolist() == [1, 1, 2, 3]
    assert p.n_cand.tolist() == [2, 2, 2, 2]
    assert p.n_match == 2
    assert p.n_match_group == (1, 1, 1)
    assert res.n_gaia_cand.tolist() == [2, 2, 0]
    np.testing.assert_allclose(p.d_xi_arcsec, [0.3, -0.4, 1.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(p.d_eta_arcsec, [0.0, 0.2, 0.0, 2.5], atol=1e-6)
    assert res.method == "direct"


# ------------------------------------------------------------------ method


@pytest.mark.parametrize(
    "ng,nw,req,expected",
    [
        (0, 0, "auto", "none"),
        (5, 5, "auto", "direct"),
        (4, 5, "auto", "twostep"),
        (0, 1, "auto", "twostep"),
        (9, 2, "twostep", "twostep"),
        (1, 9, "direct", "direct"),
        (0, 0, "direct", "none"),
    ],
)
def test_decide_method(ng, nw, req, expected):
    assert decide_method(ng, nw, requested=req, wise_available=True) == expected


def test_forced_twostep_without_wise_is_error():
    with pytest.raises(ParameterError, match="twostep needs the ALLWISE"):
        decide_method(3, 0, requested="twostep", wise_available=False)


# ----------------------------------------------------------------- filters


def test_detection_filters_each_counted():
    ra0, dec0 = 30.0, -40.0
    xi = np.array([0, 10, 20, 30, 40, 50, 700, 60, 70, 80, 90], float)
    ra, dec = offsets_to_sky(ra0, dec0, xi, np.zeros_like(xi))
    ra[7] = np.nan
    dec[8] = 95.0
    klass = np.array(["TRUE", " marginal ", "FALSE", "TRUE", "TRUE", "TRUE", "TRUE",
                      "TRUE", "TRUE", "TRUE", ""])
    sat = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    hull = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    man = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], bool)
    r0 = np.full(11, 0.7)
    r0[5] = 0.0
    r0[9] = np.nan
    det = make_detections(ra, dec, klass=klass, sat=sat, hull=hull, man=man, r0=r0)
    res = match_stack(det, make_gaia([], []), MatchConfig(ra0, dec0))
    c = counts(res)
    assert c["NDBADPOS"] == 2
    assert c["NDBADERR"] == 2
    assert c["NDCLASS"] == 2
    assert c["NDSAT"] == 1
    assert c["NDHULL"] == 1
    assert c["NDOUTR"] == 1
    assert c["NDMANINC"] == 1
    assert c["NDET"] == 2
    assert res.det_rows.tolist() == [0, 1]
    warned = {f.keyword for f in res.filters if f.warn}
    assert {"NDBADPOS", "NDBADERR"} <= warned
    assert res.method == "none"
    assert len(res.gaia_pairs) == 0


def test_missing_flag_columns_filter_nothing():
    det = make_detections([10.0, 10.001], [0.0, 0.0])
    res = match_stack(det, make_gaia([], []), MatchConfig(10.0, 0.0))
    c = counts(res)
    assert c["NDSAT"] == 0 and c["NDHULL"] == 0
    assert "NDMANINC" not in c
    assert c["NDET"] == 2


def test_high_proper_motion_quadrature_not_box():
    # (40, 40): inside the spec §7 box but 56.6 mas/yr total -> dropped
    # (49, 0): kept; (0, -51): dropped; nulls in either component: kept
    pmra = np.array([40.0, 49.0, 0.0, np.nan, np.nan, 80.0])
    pmdec = np.array([40.0, 0.0, -51.0, np.nan, 10.0, np.nan])
    assert high_proper_motion(pmra, pmdec, 50.0).tolist() == [True, False, True, False, False, False]


def test_gaia_filters_in_match_stack():
    ra0, dec0 = 200.0, 50.0
    det_ra, det_dec = offsets_to_sky(ra0, dec0, [0, 100, 200, 300], [0, 0, 0, 0])
    g_ra, g_dec = offsets_to_sky(ra0, dec0, [0.5, 100.5, 200.5, 300.5], [0, 0, 0, 0])
    gaia = make_gaia(g_ra, g_dec, pmra=[40, np.nan, 10, 0], pmdec=[40, np.nan, np.nan, 0])
    res = match_stack(make_detections(det_ra, det_dec), gaia, MatchConfig(ra0, dec0))
    c = counts(res)
    assert c["NGHIPM"] == 1
    assert c["NGNULLPM"] == 2
    assert c["NGAIA"] == 3
    assert res.gaia_pairs.det_row.tolist() == [1, 2, 3]
    assert res.n_match_gaia == 3


def test_gaia_bad_positions_and_duplicate_ids():
    gaia = make_gaia([10.0, np.nan, 10.0, 370.0], [0.0, 0.0, 0.0001, 0.0], ids=[1, 2, 1, 3])
    res = match_stack(make_detections([10.0], [0.0]), gaia, MatchConfig(10.0, 0.0))
    c = counts(res)
    assert c["NGBADPOS"] == 2
    assert c["NGDUPID"] == 1
    assert res.gaia_rows.tolist() == [0]
    # densities are from every row before any filter: 2 rows with valid positions
    assert res.density_gaia == pytest.approx(2 / (np.pi * 100))


def test_cc_flags():
    flags = np.array(["0000", " 0000", "d000", "00h0", "", "0", "000P"])
    assert clean_cc_flags(flags).tolist() == [True, True, False, False, False, True, False]


def test_one_to_one():
    wise = [1, 2, 2, 3, 4, 5, 5]
    gaia = [10, 20, 21, 30, 30, 50, 50]
    w, g, dropped = one_to_one(wise, gaia)
    # 2 -> two Gaia: dropped; 30 <- two WISE: dropped; (5, 50) repeated: one pair
    assert w.tolist() == [1, 5]
    assert g.tolist() == [10, 50]
    assert dropped == 4


def test_one_to_one_empty():
    w, g, dropped = one_to_one(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert len(w) == len(g) == 0 and dropped == 0


def _wise_stack():
    """A stack with more ALLWISE than Gaia matches and a best-neighbour table."""
    ra0, dec0 = 0.01, 5.0  # straddles RA = 0
    det_xi = np.array([-300.0, -100.0, 100.0, 300.0, 500.0])
    det_ra, det_dec = offsets_to_sky(ra0, dec0, det_xi, np.zeros(5))
    g_ra, g_dec = offsets_to_sky(ra0, dec0, [-299.6, 100.4, 400.0, 420.0, 440.0, 900.0],
                                 [0, 0, 0, 0, 0, 0])
    gaia = make_gaia(g_ra, g_dec, pmra=[0, 0, 60, 0, 0, 0], pmdec=[0, 0, 0, 0, 0, 0],
                     ids=[11, 12, 13, 14, 15, 16])
    # ALLWISE near each detection (+0.7"), plus sources near Gaia 13/14/15/16
    w_xi = np.concatenate([det_xi + 0.7, [400.2, 420.2, 440.2, 900.2]])
    w_ra, w_dec = offsets_to_sky(ra0, dec0, w_xi, np.zeros(9))
    cc = np.array(["0000", "0000", "0000", "d000", "0000", "0000", "0000", "0000", "0000"])
    wise = make_wise(w_ra, w_dec, cc=cc, ids=np.arange(101, 110))
    # best neighbours: 101-11 ok, 103-12 ok, 106-13 high-pm Gaia, 107-14 ok,
    # 108-15 and 105-15 (Gaia 15 twice: not one-to-one), 109-16 (beyond r_stack), 102-99 (not in Gaia)
    bn = BestNeighbours(source_id=np.array([11, 12, 13, 14, 15, 15, 16, 99]),
                        allwise_oid=np.array([101, 103, 106, 107, 108, 105, 109, 102]))
    return ra0, dec0, make_detections(det_ra, det_dec), gaia, wise, bn


def test_wise_filters_and_one_to_one_pairs():
    ra0, dec0, det, gaia, wise, bn = _wise_stack()
    res = match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.0),
                      wise=wise, best_neighbours=bn)
    c = counts(res)
    assert c["NWCCFLAG"] == 1  # 104
    assert c["NWHIPM"] == 1  # 106 (best neighbour of high-pm Gaia 13)
    assert c["NBNMULTI"] == 2  # 108-15 and 105-15
    assert c["NBNMISS"] == 2  # 106-13 (both filtered), 102-99 (Gaia 99 absent)
    assert c["NBNOUTR"] == 1  # 109-16 at 900" > 720"
    wg = res.wise_gaia
    assert np.asarray(wise.allwise_oid)[wg.wise_row].tolist() == [101, 103, 107]
    assert np.asarray(gaia.source_id)[wg.gaia_row].tolist() == [11, 12, 14]
    np.testing.assert_allclose(wg.d_xi_arcsec, [0.4 - 0.7, 0.4 - 0.7, -0.2], atol=1e-6)
    np.testing.assert_allclose(wg.sep_arcsec, [0.3, 0.3, 0.2], atol=1e-6)
    # Gaia matches: det 0 and det 2; ALLWISE: det 0,1,2,4 (det 3's counterpart is cc-flagged)
    assert res.n_match_gaia == 2
    assert res.n_match_wise == 4
    assert res.method == "twostep"
    assert res.density_wise == pytest.approx(8 / (np.pi * 144))  # 109 is outside


def test_wise_without_best_neighbours_is_error():
    ra0, dec0, det, gaia, wise, _ = _wise_stack()
    with pytest.raises(ParameterError, match="together"):
        match_stack(det, gaia, MatchConfig(ra0, dec0), wise=wise)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"match_radius_arcsec": 4.0}, "exceeds the last sep_bins edge"),
        ({"sep_bins_arcsec": (1.0, 1.0, 3.0)}, "strictly increasing"),
        ({"sep_bins_arcsec": ()}, "at least one"),
        ({"r_stack_arcmin": 0.0}, "r_stack must be positive"),
        ({"method": "fancy"}, "method must be one of"),
        ({"max_pm_masyr": -1.0}, "max_pm must be positive"),
        ({"match_radius_arcsec": float("nan")}, "match_radius must be positive"),
        # pi r^2 underflowed to 0 and the density divided by it (ZeroDivisionError)
        ({"r_stack_arcmin": 1e-300}, "r_stack must be positive"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        MatchConfig(10.0, 10.0, **kwargs)


@pytest.mark.parametrize("ra0,dec0", [(400.0, 0.0), (10.0, -91.0)])
def test_config_tangent_point_errors(ra0, dec0):
    with pytest.raises(ParameterError, match="_stack must be within"):
        MatchConfig(ra0, dec0)


def test_empty_everything():
    res = match_stack(make_detections([], []), make_gaia([], []), MatchConfig(1.0, 1.0))
    assert res.method == "none"
    assert len(res.det_rows) == 0
    assert res.gaia_pairs.n_match_group == (0, 0, 0)
    assert res.density_gaia == 0.0


def test_speed_is_not_all_pairs():
    """3000 x 100000 completes quickly (sanity, not a timing test)."""
    rng = np.random.default_rng(SEED)
    ra0, dec0 = 83.8, -5.4
    g_ra, g_dec = offsets_to_sky(ra0, dec0, rng.uniform(-600, 600, 100_000), rng.uniform(-600, 600, 100_000))
    d_ra, d_dec = offsets_to_sky(ra0, dec0, rng.uniform(-600, 600, 3000), rng.uniform(-600, 600, 3000))
    di, _, sep = crossmatch(d_ra, d_dec, g_ra, g_dec, 3.0)
    # expected pairs: 3000 * 100000 / 1200^2 * pi * 9 ~ 5890
    assert 5000 < len(di) < 6800
    assert np.all(sep <= 3.0)


def test_cc_flags_empty():
    """Zero ALLWISE rows: np.char.replace on a zero-length array crashed."""
    for empty in (np.array([], dtype=str), np.array([], dtype="S4"), np.array([], dtype=object)):
        out = clean_cc_flags(empty)
        assert out.dtype == bool and out.shape == (0,)


def test_zero_row_wise_and_best_neighbours():
    ra0, dec0, det, gaia, wise, bn = _wise_stack()
    empty_wise = make_wise([], [])
    empty_bn = BestNeighbours(source_id=np.array([], dtype=np.int64),
                              allwise_oid=np.array([], dtype=np.int64))
    for w, b in ((empty_wise, bn), (wise, empty_bn), (empty_wise, empty_bn)):
        res = match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.0),
                          wise=w, best_neighbours=b)
        assert len(res.wise_gaia) == 0
        assert res.n_match_gaia == 2
        if len(w) == 0:
            assert res.n_match_wise == 0 and res.density_wise == 0.0
            assert res.method == "direct"


# ------------------------------------------------------------------------------ radius boundaries


def test_a_pair_exactly_at_the_match_radius_is_a_match():
    # "within 3 arcsec" includes 3 arcsec: the radius is the pair's own separation, computed by
    # the same function, so the comparison alone decides
    det_ra, det_dec = np.array([150.0]), np.array([2.0])
    ref_ra, ref_dec = np.array([150.0 + 2.1 / 3600]), np.array([2.0 + 2.2 / 3600])
    sep = float(angular_separation_arcsec(det_ra, det_dec, ref_ra, ref_dec)[0])
    _, _, at = crossmatch(det_ra, det_dec, ref_ra, ref_dec, sep)
    assert list(at) == [sep]
    _, _, inside = crossmatch(det_ra, det_dec, ref_ra, ref_dec, float(np.nextafter(sep, 0)))
    assert len(inside) == 0


def test_a_source_exactly_at_the_cone_radius_is_in_the_cone():
    ra0, dec0 = 150.0, 2.0
    ra, dec = np.array([150.1]), np.array([2.05])
    sep_arcmin = float(angular_separation_arcsec(ra, dec, ra0, dec0)[0]) / 60.0
    assert cone_density(ra, dec, ra0, dec0, sep_arcmin) == pytest.approx(1 / (np.pi * sep_arcmin**2))
    assert cone_density(ra, dec, ra0, dec0, float(np.nextafter(sep_arcmin, 0))) == 0.0


# ------------------------------------------------------------ parameter and position boundaries
# (issue 16: both sides of every documented limit)


@pytest.mark.parametrize("field, inside, outside", [
    ("ra_stack_deg", (0.0, 360.0), (-1e-9, 360.0 + 1e-9)),
    ("dec_stack_deg", (-90.0, 90.0), (-90.0 - 1e-9, 90.0 + 1e-9)),
    ("r_stack_arcmin", (1e-3, 0.5), (0.0, -1.0)),
    ("match_radius_arcsec", (1e-3, 0.5), (0.0, -1.0)),
    ("max_pm_masyr", (1e-3, 0.5), (0.0, -1.0)),
])
def test_match_settings_accept_their_limits_and_refuse_beyond(field, inside, outside):
    base = {"ra_stack_deg": 10.0, "dec_stack_deg": 0.0}
    for value in inside:
        cfg = MatchConfig(**{**base, field: value})
        assert getattr(cfg, field) == value
    for value in outside:
        with pytest.raises(ParameterError, match=field.rsplit("_", 1)[0]):
            MatchConfig(**{**base, field: value})


def test_match_settings_cone_area_must_not_underflow():
    # pi r^2 divides the densities: a radius whose square underflows to 0 is refused
    with pytest.raises(ParameterError, match="non-zero cone area"):
        MatchConfig(10.0, 0.0, r_stack_arcmin=1e-200)
    assert MatchConfig(10.0, 0.0, r_stack_arcmin=1e-150).r_stack_arcmin == 1e-150


@pytest.mark.parametrize("bins", [(0.0, 3.0), (-1.0, 3.0), (1.0, 1.0, 3.0), (2.0, 1.0, 3.0),
                                  (1.0, float("nan"), 3.0)])
def test_separation_groups_must_be_positive_and_increasing(bins):
    with pytest.raises(ParameterError, match="sep_bins must be positive and strictly increasing"):
        MatchConfig(10.0, 0.0, sep_bins_arcsec=bins)


def test_separation_group_edges_are_kept_as_floats():
    cfg = MatchConfig(10.0, 0.0, sep_bins_arcsec=[1, 2, 3])
    assert cfg.sep_bins_arcsec == (1.0, 2.0, 3.0)
    assert all(type(e) is float for e in cfg.sep_bins_arcsec)


def test_valid_positions_include_their_limits():
    ra = np.array([0.0, 360.0, 10.0, 10.0, -1e-9, 360.0 + 1e-9, 10.0, 10.0, np.nan])
    dec = np.array([0.0, 0.0, 90.0, -90.0, 0.0, 0.0, 90.0 + 1e-9, -90.0 - 1e-9, 0.0])
    np.testing.assert_array_equal(valid_positions(ra, dec),
                                  [True] * 4 + [False] * 5)
