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


def _dense_field(rng, ra0, dec0):
    """300 detections and 3,000 references within 300" of (ra0, dec0): a dense field in
    which 5" match circles overlap."""
    det_ra, det_dec = offsets_to_sky(ra0, dec0, rng.uniform(-300, 300, 300),
                                     rng.uniform(-300, 300, 300))
    ref_ra, ref_dec = offsets_to_sky(ra0, dec0, rng.uniform(-300, 300, 3000),
                                     rng.uniform(-300, 300, 3000))
    return det_ra, det_dec, ref_ra, ref_dec


@pytest.mark.parametrize("max_bins", [None, 0])
@pytest.mark.parametrize("ra0,dec0", [(10.0, 20.0), (0.0, 0.0), (120.0, 89.99), (300.0, -89.999)])
def test_crossmatch_sweep_equals_the_kd_tree(ra0, dec0, max_bins, monkeypatch):
    """The sort-and-sweep and the k-d tree (its fallback) give the same pairs, in the same
    order, with the same separations: dense ambiguous fields, near the poles and RA 0 --
    with the references sorted by bins along the axis and by the coordinate itself."""
    import stk_astrometry.matching as m

    if max_bins is not None:
        monkeypatch.setattr(m, "_SWEEP_MAX_BINS", max_bins)

    rng = np.random.default_rng(SEED + 2)
    det_ra, det_dec, ref_ra, ref_dec = _dense_field(rng, ra0, dec0)
    sweep = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 5.0)
    monkeypatch.setattr(m, "_SWEEP_MAX_CANDIDATES", -1)     # every search goes to the tree
    tree = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 5.0)
    assert len(sweep[0]) > 100
    for a, b in zip(sweep, tree, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("max_bins", [None, 0])
@pytest.mark.parametrize("n_det,n_ref", [(3000, 300), (300, 3000), (400, 400)])
def test_the_sweep_sorts_either_set_and_finds_the_same_pairs(n_det, n_ref, max_bins,
                                                              monkeypatch):
    """The sweep's candidates hold every pair within the chord, and crossmatch's pairs,
    separations and order are the k-d tree's -- the references sorted by bins along the axis
    (issue 11: int16 bin numbers, a radix sort) or by the coordinate (wide fields)."""
    import stk_astrometry.matching as m
    from stk_astrometry.matching import _sweep_candidates, unit_vectors

    if max_bins is not None:
        monkeypatch.setattr(m, "_SWEEP_MAX_BINS", max_bins)

    rng = np.random.default_rng(SEED + 7)
    det_ra, det_dec = offsets_to_sky(10.0, 20.0, rng.uniform(-300, 300, n_det),
                                     rng.uniform(-300, 300, n_det))
    ref_ra, ref_dec = offsets_to_sky(10.0, 20.0, rng.uniform(-300, 300, n_ref),
                                     rng.uniform(-300, 300, n_ref))
    det_xyz, ref_xyz = unit_vectors(det_ra, det_dec), unit_vectors(ref_ra, ref_dec)
    chord = 2.0 * np.sin(np.radians(8.0 / 3600.0) / 2.0)
    di, ri = _sweep_candidates(det_xyz, ref_xyz, chord)
    dist2 = ((det_xyz[:, None, :] - ref_xyz[None, :, :]) ** 2).sum(axis=2)
    want = set(zip(*np.nonzero(dist2 <= chord * chord), strict=True))
    assert len(want) > 50
    assert di.dtype == ri.dtype == np.int64
    got = list(zip(di.tolist(), ri.tolist(), strict=True))
    assert len(got) == len(set(got))
    assert set(got) == {(int(i), int(j)) for i, j in want}
    sweep = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 8.0)
    monkeypatch.setattr(m, "_SWEEP_MAX_CANDIDATES", -1)     # every search goes to the tree
    tree = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 8.0)
    for a, b in zip(sweep, tree, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("max_bins", [None, 0])
def test_the_sweep_keeps_references_at_the_ends_of_the_window(max_bins, monkeypatch):
    # references exactly chord away from a detection along the axis (and level with it on the
    # other two) are at the window's ends, where the bins' edges fall wherever the rounding
    # puts them: every one is a candidate, and the 3-d distance alone decides
    import stk_astrometry.matching as m
    from stk_astrometry.matching import _sweep_candidates

    if max_bins is not None:
        monkeypatch.setattr(m, "_SWEEP_MAX_BINS", max_bins)
    rng = np.random.default_rng(SEED + 8)
    chord = 1.5e-5
    det = np.column_stack([rng.uniform(0.2, 0.21, 40), np.full(40, 0.5), np.full(40, 0.1)])
    ends = np.concatenate([det[:, 0] - chord, det[:, 0] + chord,
                           np.nextafter(det[:, 0] - chord, -1.0),
                           np.nextafter(det[:, 0] + chord, 2.0)])
    ref = np.column_stack([ends, np.full(ends.size, 0.5), np.full(ends.size, 0.1)])
    ref = np.concatenate([ref, det + [[0.0, 3e-3, 0.0]]])      # y spreads less than x
    # (x spans ~2,600 bins: below the limit, so max_bins=None sorts by bins)
    assert bool(np.ptp(ref[:, 0]) / (chord / m._SWEEP_BINS_PER_CHORD) < m._SWEEP_MAX_BINS) is (
        max_bins is None)
    di, ri = _sweep_candidates(det, ref, chord)
    i, j = (a.ravel() for a in np.meshgrid(np.arange(len(det)), np.arange(len(ref)),
                                           indexing="ij"))
    diff = det[i] - ref[j]
    close = np.einsum("ij,ij->i", diff, diff) <= chord * chord
    assert set(zip(di.tolist(), ri.tolist(), strict=True)) == set(
        zip(i[close].tolist(), j[close].tolist(), strict=True))
    assert close.sum() >= 40


@pytest.mark.parametrize("ra0,dec0", [(0.01, 20.0), (359.99, -3.0), (120.0, 89.99),
                                      (300.0, -89.999)])
def test_crossmatch_on_vectors_of_a_turned_frame_finds_the_same_pairs(ra0, dec0):
    # _make_pairs hands crossmatch the unit vectors of _sky_terms' frame (turned about the pole
    # by the tangent point's RA: issue 11): the pairs, separations and order of unit_vectors'
    from stk_astrometry.matching import _frame_vectors

    rng = np.random.default_rng(SEED + 9)
    det_ra, det_dec, ref_ra, ref_dec = _dense_field(rng, ra0, dec0)
    want = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 5.0)
    got = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 5.0,
                     ref_xyz=_frame_vectors(ref_ra, ref_dec, ra0),
                     det_xyz=_frame_vectors(det_ra, det_dec, ra0))
    assert len(want[0]) > 100
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="together"):
        crossmatch(det_ra, det_dec, ref_ra, ref_dec, 5.0,
                   ref_xyz=_frame_vectors(ref_ra, ref_dec, ra0))
    with pytest.raises(ValueError, match="together"):
        crossmatch(det_ra, det_dec, ref_ra, ref_dec, 5.0,
                   det_xyz=_frame_vectors(det_ra, det_dec, ra0))


def test_a_wide_field_is_swept_along_the_coordinate_itself(monkeypatch):
    # references spread over ~3 deg at a 1" radius: ~44,000 bins of chord / 4, more than int16
    # numbers hold, so the sweep sorts the coordinate itself -- the pairs are the k-d tree's
    import stk_astrometry.matching as m

    rng = np.random.default_rng(SEED + 10)
    det_ra, det_dec = offsets_to_sky(40.0, -30.0, rng.uniform(-5400, 5400, 300),
                                     rng.uniform(-5400, 5400, 300))
    ref_ra, ref_dec = offsets_to_sky(40.0, -30.0, rng.uniform(-5400, 5400, 20000),
                                     rng.uniform(-5400, 5400, 20000))
    # each detection gets a reference within the radius
    ref_ra[:300], ref_dec[:300] = offsets_to_sky(det_ra, det_dec, rng.uniform(-0.6, 0.6, 300),
                                                 rng.uniform(-0.6, 0.6, 300))
    binned = []
    argsort = np.argsort

    def spy(a, *args, **kwargs):
        binned.append(a.dtype == np.int16)
        return argsort(a, *args, **kwargs)

    monkeypatch.setattr(m.np, "argsort", spy)
    swept = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 1.0)
    assert binned == [False]
    monkeypatch.setattr(m, "_SWEEP_MAX_CANDIDATES", -1)     # every search goes to the tree
    tree = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 1.0)
    assert len(swept[0]) >= 300
    for a, b in zip(swept, tree, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("values", [[3, 1, 3, 2, 2, 2, 9, 1], [5], [], [7, 7, 7],
                                    list(range(40, 0, -3)) * 3])
def test_uniques_are_numpys(values):
    # np.unique's own algorithm without its wrapping (issue 11): the same values, inverse and
    # counts, for repeats of the smallest value and of others
    from stk_astrometry.matching import _alone, _unique_inverse

    a = np.array(values, dtype=np.int64)
    want, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    got, got_inverse = _unique_inverse(a)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_inverse, inverse)
    ranked = np.sort(a)
    np.testing.assert_array_equal(_alone(ranked),
                                  counts[np.searchsorted(want, ranked)] == 1)


@pytest.mark.parametrize("wanted", [[], [5], [9, 2, 2, 7], list(range(-3, 60, 4)),
                                    [2**62, -(2**62), 0]])
def test_isin_is_numpys(wanted):
    # the high-proper-motion lookups: np.isin's answer by a search in the sorted ids (issue 11)
    from stk_astrometry.matching import _isin

    rng = np.random.default_rng(SEED + 11)
    wanted = np.array(wanted, dtype=np.int64)
    for values in (rng.integers(-5, 70, 300), np.array([], dtype=np.int64),
                   np.array([2**62, 0, -(2**62), 9, 9, -4, 100]), wanted[::-1]):
        got = _isin(values, wanted)
        assert got.dtype == bool and got.shape == values.shape
        np.testing.assert_array_equal(got, np.isin(values, wanted))


def test_the_readers_flags_and_classes_take_no_string_function(monkeypatch):
    # '0000' flags and TRUE/MARGINAL classes as the readers give them are decided without
    # numpy's string functions (issue 11); the other rows go through them, and only those
    from stk_astrometry.matching import _good_class

    stripped = []
    strip = np.char.strip
    monkeypatch.setattr(np.char, "strip", lambda a, *x: stripped.append(np.size(a)) or strip(a, *x))
    assert clean_cc_flags(np.array(["0000"] * 5)).tolist() == [True] * 5
    assert _good_class(np.array(["TRUE", "MARGINAL", "TRUE"])).tolist() == [True] * 3
    assert stripped == []
    assert clean_cc_flags(np.array(["0000", " 0 ", "d000", "0000"])).tolist() == [
        True, True, False, True]
    assert _good_class(np.array(["TRUE", " marginal", "FALSE", "MARGINAL"])).tolist() == [
        True, True, False, True]
    assert stripped == [2, 2]
    assert clean_cc_flags(np.array(["0000"])).tolist() == [True]
    assert clean_cc_flags(np.array(["0"])).tolist() == [True]


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


def test_match_stack_densities_are_cone_density_of_the_unfiltered_catalogs():
    # match_stack keeps cone_density's two masks for its later tests (issue 11): its densities
    # are still cone_density's, every input row within r_stack counted before any filter
    from stk_astrometry.matching import _density

    ra0, dec0 = 10.0, -30.0
    rng = np.random.default_rng(SEED + 5)
    xi, eta = rng.uniform(-700, 700, (2, 400))
    ra, dec = offsets_to_sky(ra0, dec0, xi, eta)
    ra[:3] = np.nan                                   # dropped as unusable, never counted
    inside = np.hypot(xi, eta) <= 600.0
    inside[:3] = False
    assert _density(inside, 10.0) == np.count_nonzero(inside) / (np.pi * 100.0)
    assert cone_density(ra, dec, ra0, dec0, 10.0) == _density(inside, 10.0)
    assert _density(inside, 5.0) == np.count_nonzero(inside) / (np.pi * 25.0)


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
    # and in match_stack's density (its cone test of the Gaia rows is its own)
    assert sep_arcmin * 60.0 == float(angular_separation_arcsec(ra, dec, ra0, dec0)[0])
    det = make_detections([150.0], [2.0])
    for radius, want in ((sep_arcmin, 1 / (np.pi * sep_arcmin**2)),
                         (float(np.nextafter(sep_arcmin, 0)), 0.0)):
        res = match_stack(det, make_gaia(ra, dec), MatchConfig(ra0, dec0, r_stack_arcmin=radius))
        assert res.density_gaia == pytest.approx(want)


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


# ------------------------------------------------------------------ the filter record (issue 16)
# Every count match_stack makes is a keyword of the pairs file's primary header, with its
# description as the keyword comment (formats.md; the keywords and which ones are warnings or
# information only are listed in the stk_match help page, "Filters").  A stack in which every
# filter removes something, and the two ends of a best-neighbour pair leave the cone alone.

FILTER_RECORD = [
    # (keyword, comment, warned, removes rows)
    ("NDETIN", "detections of the stack read", False, False),
    ("NDBADPOS", "detections dropped: NaN or out-of-range ra/dec", True, True),
    ("NDBADERR", "detections dropped: error radius NaN or <= 0", True, True),
    ("NDCLASS", "detections dropped: likelihood_class not TRUE/MARGINAL", False, True),
    ("NDSAT", "detections dropped: saturated (sat_src_flag)", False, True),
    ("NDHULL", "detections dropped: convex hull (conv_hull)", False, True),
    ("NDOUTR", "detections dropped: beyond r_stack", False, True),
    ("NDMANINC", "manually included detections kept", False, False),
    ("NDET", "detections kept", False, False),
    ("NGAIAIN", "Gaia sources read", False, False),
    ("NGBADPOS", "Gaia sources dropped: NaN or out-of-range ra/dec", True, True),
    ("NGDUPID", "Gaia sources dropped: repeated source_id", True, True),
    ("NGHIPM", "Gaia sources dropped: total proper motion > max_pm", False, True),
    ("NGNULLPM", "Gaia sources kept with null proper motion", False, False),
    ("NGAIA", "Gaia sources kept", False, False),
    ("NWISEIN", "ALLWISE sources read", False, False),
    ("NWBADPOS", "ALLWISE sources dropped: NaN or out-of-range ra/dec", True, True),
    ("NWBADERR", "ALLWISE sources dropped: sigra/sigdec NaN or <= 0", True, True),
    ("NWDUPID", "ALLWISE sources dropped: repeated allwise_oid", True, True),
    ("NWCCFLAG", "ALLWISE sources dropped: cc_flags not '0000'", False, True),
    ("NWHIPM", "ALLWISE sources dropped: best neighbour has high proper motion", False, True),
    ("NWISE", "ALLWISE sources kept", False, False),
    ("NBNIN", "best-neighbour rows read", False, False),
    ("NBNMULTI", "best-neighbour associations dropped: not one-to-one", False, True),
    ("NBNMISS", "best-neighbour pairs dropped: an end not in its filtered table", False, True),
    ("NBNOUTR", "best-neighbour pairs dropped: an end beyond r_stack", False, True),
    ("NWGPAIRS", "one-to-one ALLWISE-Gaia pairs kept", False, False),
]


def _full_stack():
    """11 detections, 11 Gaia and 14 ALLWISE sources, 10 best-neighbour rows: every filter
    has one row to remove (r_stack 12' = 720"), detections off the eta = 0 line."""
    ra0, dec0 = 0.01, 5.0
    d_xi = np.array([-300.0, -100.0, 100.0, 300.0, 500.0, 0.0, 50.0, 150.0, 250.0, 350.0, 800.0])
    d_eta = np.array([40.0, -60.0, 80.0, -20.0, 10.0, 0.0, 20.0, 30.0, 40.0, 50.0, 0.0])
    det_ra, det_dec = offsets_to_sky(ra0, dec0, d_xi, d_eta)
    det_ra[5] = np.nan                                              # NDBADPOS
    r0 = np.full(11, 0.8)
    r0[6] = 0.0                                                     # NDBADERR
    klass = np.array(["TRUE"] * 11)
    klass[7] = "FALSE"                                              # NDCLASS
    sat = np.zeros(11, bool)
    sat[8] = True                                                   # NDSAT
    hull = np.zeros(11, bool)
    hull[9] = True                                                  # NDHULL (10 is NDOUTR)
    man = np.zeros(11, bool)
    man[3] = True                                                   # NDMANINC
    det = make_detections(det_ra, det_dec, klass=klass, sat=sat, hull=hull, man=man, r0=r0)
    # Gaia: 11 -> det 0, 12 -> det 2, 13 high pm, 18 (null pm) -> det 4 at 1.8", 17 no position,
    # a second 11 near det 1 (repeated id), 16 and 20 beyond r_stack, 19 inside
    g_xi = np.array([-299.6, 100.4, 400.0, 420.0, 440.0, 900.0, 0.0, -99.8, 501.5, 700.0, 725.0])
    g_eta = np.array([40.3, 79.7, 0.0, 0.0, 0.0, 0.0, 0.0, -59.9, 11.0, 0.0, 0.0])
    g_ra, g_dec = offsets_to_sky(ra0, dec0, g_xi, g_eta)
    g_dec[6] = np.nan
    gaia = make_gaia(g_ra, g_dec, ids=[11, 12, 13, 14, 15, 16, 17, 11, 18, 19, 20],
                     pmra=[0, 0, 60, 0, 0, 0, 0, 0, np.nan, 0, 0],
                     pmdec=[0, 0, 0, 0, 0, 0, 0, 0, 5.0, 0, 0])
    # ALLWISE 101-105 at det 0-4 + (0.7, 0.2) (104 cc-flagged), 106-109 near Gaia 13-16,
    # 110 no position, 111 no error, a second 101, 112 beyond r_stack, 113 inside
    w_xi = np.r_[d_xi[:5] + 0.7, 400.2, 420.2, 440.2, 900.2, 0.0, 10.0, 0.0, 730.0, 719.0]
    w_eta = np.r_[d_eta[:5] + 0.2, 0.0, 0.1, 0.0, 0.0, 0.0, 10.0, 500.0, 0.0, 0.0]
    w_ra, w_dec = offsets_to_sky(ra0, dec0, w_xi, w_eta)
    w_ra[9] = np.nan
    sig = np.full(14, 0.1)
    sig[10] = 0.0
    cc = np.array(["0000"] * 14)
    cc[3] = "d000"
    wise = make_wise(w_ra, w_dec, cc=cc, sig=sig,
                     ids=[101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 101, 112, 113])
    # 101-11, 103-12, 107-14 good; 106-13 high pm; 108-15 and 105-15 not one-to-one; 109-16 both
    # ends out; 102-99 no Gaia 99; 112-19 the ALLWISE end out; 113-20 the Gaia end out
    bn = BestNeighbours(source_id=np.array([11, 12, 13, 14, 15, 15, 16, 99, 19, 20]),
                        allwise_oid=np.array([101, 103, 106, 107, 108, 105, 109, 102, 112, 113]))
    return ra0, dec0, det, gaia, wise, bn


def test_every_filter_count_is_recorded_with_its_keyword_comment_and_kind():
    ra0, dec0, det, gaia, wise, bn = _full_stack()
    res = match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.0), wise=wise,
                      best_neighbours=bn)
    recorded = [(f.keyword, f.description, f.warn, f.removed) for f in res.filters]
    assert recorded == FILTER_RECORD
    assert all(type(f.count) is int for f in res.filters)
    assert counts(res) == {
        "NDETIN": 11, "NDBADPOS": 1, "NDBADERR": 1, "NDCLASS": 1, "NDSAT": 1, "NDHULL": 1,
        "NDOUTR": 1, "NDMANINC": 1, "NDET": 5,
        "NGAIAIN": 11, "NGBADPOS": 1, "NGDUPID": 1, "NGHIPM": 1, "NGNULLPM": 1, "NGAIA": 8,
        "NWISEIN": 14, "NWBADPOS": 1, "NWBADERR": 1, "NWDUPID": 1, "NWCCFLAG": 1, "NWHIPM": 1,
        "NWISE": 9,
        "NBNIN": 10, "NBNMULTI": 2, "NBNMISS": 2, "NBNOUTR": 3, "NWGPAIRS": 3,
    }
    # densities: every valid position within r_stack, before any filter (8 Gaia, 11 ALLWISE)
    assert res.density_gaia == pytest.approx(8 / (np.pi * 144))
    assert res.density_wise == pytest.approx(11 / (np.pi * 144))


def test_missing_flag_columns_are_recorded_as_such():
    det = make_detections([10.0, 10.001], [0.0, 0.0])
    res = match_stack(det, make_gaia([], []), MatchConfig(10.0, 0.0))
    recorded = {f.keyword: (f.description, f.warn, f.removed) for f in res.filters}
    assert recorded["NDSAT"] == ("detections dropped: saturated (no column)", False, True)
    assert recorded["NDHULL"] == ("detections dropped: convex hull (no column)", False, True)
    # without ALLWISE input no ALLWISE or best-neighbour count is recorded
    assert [k for k in recorded if k.startswith(("NW", "NB"))] == []


def test_a_best_neighbour_pair_is_dropped_when_either_end_leaves_the_cone():
    ra0, dec0, det, gaia, wise, bn = _full_stack()
    res = match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.0), wise=wise,
                      best_neighbours=bn)
    wg = res.wise_gaia
    pairs = list(zip(np.asarray(wise.allwise_oid)[wg.wise_row].tolist(),
                     np.asarray(gaia.source_id)[wg.gaia_row].tolist(), strict=True))
    assert pairs == [(101, 11), (103, 12), (107, 14)]       # not 112-19 nor 113-20
    # Gaia minus ALLWISE in the tangent plane, both axes
    np.testing.assert_allclose(wg.d_xi_arcsec, [0.4 - 0.7, 0.4 - 0.7, -0.2], atol=1e-6)
    np.testing.assert_allclose(wg.d_eta_arcsec, [0.3 - 0.2, -0.3 - 0.2, -0.1], atol=1e-6)
    np.testing.assert_allclose(wg.sep_arcsec, np.hypot(wg.d_xi_arcsec, wg.d_eta_arcsec),
                               rtol=1e-5)
    # with the cone wide enough for 112 and 20, those pairs are kept too
    wide = match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.5), wise=wise,
                       best_neighbours=bn)
    assert counts(wide)["NBNOUTR"] == 1                       # 109-16 only
    assert len(wide.wise_gaia) == 5


def test_the_stack_result_carries_every_row_in_the_tangent_plane():
    from stk_astrometry.tangent import sky_to_tangent

    ra0, dec0, det, gaia, wise, bn = _full_stack()
    cfg = MatchConfig(ra0, dec0, r_stack_arcmin=12.0)
    res = match_stack(det, gaia, cfg, wise=wise, best_neighbours=bn)
    assert res.config is cfg
    for (xi, eta), cat in (((res.det_xi_arcsec, res.det_eta_arcsec), det),
                           ((res.gaia_xi_arcsec, res.gaia_eta_arcsec), gaia),
                           ((res.wise_xi_arcsec, res.wise_eta_arcsec), wise)):
        want_xi, want_eta = sky_to_tangent(np.asarray(cat.ra_deg), np.asarray(cat.dec_deg),
                                           ra0, dec0)
        assert len(xi) == len(eta) == len(cat)
        np.testing.assert_array_equal(xi, want_xi)
        np.testing.assert_array_equal(eta, want_eta)
    assert res.det_rows.tolist() == [0, 1, 2, 3, 4]
    assert res.gaia_rows.tolist() == [0, 1, 3, 4, 5, 8, 9, 10]
    assert res.wise_rows.tolist() == [0, 1, 2, 4, 6, 7, 8, 12, 13]
    # Gaia: det 0 (0.5", group 1), det 2 (0.5", group 1), det 4 (1.8", group 2); det 1's
    # counterpart had a repeated id.  ALLWISE: det 0, 1, 2, 4 (det 3's is cc-flagged)
    p = res.gaia_pairs
    assert p.det_row.tolist() == [0, 2, 4]
    assert res.gaia_rows[np.searchsorted(res.gaia_rows, p.ref_row)].tolist() == p.ref_row.tolist()
    assert np.asarray(gaia.source_id)[p.ref_row].tolist() == [11, 12, 18]
    np.testing.assert_allclose(p.d_xi_arcsec, [0.4, 0.4, 1.5], atol=1e-6)
    np.testing.assert_allclose(p.d_eta_arcsec, [0.3, -0.3, 1.0], atol=1e-6)
    np.testing.assert_allclose(p.sep_arcsec, [0.5, 0.5, np.hypot(1.5, 1.0)], rtol=1e-5)
    assert p.n_match_group == (2, 1, 0)
    assert res.n_gaia_cand.tolist() == [1, 0, 1, 0, 1]
    assert res.n_wise_cand.tolist() == [1, 1, 1, 0, 1]
    for arr in (p.det_row, p.ref_row, p.group, p.n_cand, res.n_gaia_cand, res.n_wise_cand):
        assert arr.dtype == np.int64
    assert (res.n_match_gaia, res.n_match_wise, res.method) == (3, 4, "twostep")


def test_forced_twostep_with_allwise_input_is_honoured():
    ra0, dec0, det, gaia, wise, bn = _full_stack()
    res = match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.0, method="twostep"),
                      wise=wise, best_neighbours=bn)
    assert res.method == "twostep"


def test_a_single_pair_is_a_match():
    ra0, dec0 = 150.0, 2.0
    det_ra, det_dec = offsets_to_sky(ra0, dec0, [0.0, 100.0], [30.0, 0.0])
    g_ra, g_dec = offsets_to_sky(ra0, dec0, [0.6], [30.8])
    res = match_stack(make_detections(det_ra, det_dec), make_gaia(g_ra, g_dec),
                      MatchConfig(ra0, dec0))
    p = res.gaia_pairs
    assert (len(p), p.n_match, p.n_match_group) == (1, 1, (1, 0, 0))
    assert p.det_row.tolist() == [0] and p.ref_row.tolist() == [0]
    np.testing.assert_allclose([p.d_xi_arcsec[0], p.d_eta_arcsec[0], p.sep_arcsec[0]],
                               [0.6, 0.8, 1.0], atol=1e-6)
    assert res.n_gaia_cand.tolist() == [1, 0]
    assert res.method == "direct"


def test_no_pair_gives_empty_columns_of_the_documented_types():
    ra0, dec0 = 150.0, 2.0
    det_ra, det_dec = offsets_to_sky(ra0, dec0, [0.0], [0.0])
    g_ra, g_dec = offsets_to_sky(ra0, dec0, [10.0], [0.0])
    res = match_stack(make_detections(det_ra, det_dec), make_gaia(g_ra, g_dec),
                      MatchConfig(ra0, dec0))
    p = res.gaia_pairs
    assert (p.n_match, p.n_match_group) == (0, (0, 0, 0))
    for name in ("det_row", "ref_row", "group", "n_cand"):
        col = getattr(p, name)
        assert col.shape == (0,) and col.dtype == np.int64, name
    for name in ("sep_arcsec", "d_xi_arcsec", "d_eta_arcsec"):
        col = getattr(p, name)
        assert col.shape == (0,) and col.dtype == np.float64, name
    assert res.n_gaia_cand.tolist() == [0] and res.n_gaia_cand.dtype == np.int64
    assert res.n_wise_cand.tolist() == [0] and res.n_wise_cand.dtype == np.int64
    # and without ALLWISE input the ALLWISE side is empty, not missing
    assert res.wise_pairs is None and res.density_wise is None
    assert res.wise_rows.shape == res.wise_xi_arcsec.shape == res.wise_eta_arcsec.shape == (0,)
    wg = res.wise_gaia
    for col in (wg.wise_row, wg.gaia_row, wg.sep_arcsec, wg.d_xi_arcsec, wg.d_eta_arcsec):
        assert col.shape == (0,)
    assert wg.wise_row.dtype == wg.gaia_row.dtype == np.int64


def test_crossmatch_without_pairs_returns_integer_indices():
    ref_ra = np.array([1.0, 2.0])
    for args in ((np.array([]), np.array([]), ref_ra, ref_ra),
                 (np.array([5.0]), np.array([5.0]), np.array([]), np.array([]))):
        di, ri, sep = crossmatch(*args, 3.0)
        assert di.dtype == ri.dtype == np.int64 and sep.dtype == np.float64
        assert ref_ra[ri].shape == (0,)      # usable as indices


def test_decide_method_defaults_to_auto_with_allwise_available():
    assert decide_method(5, 2) == "direct"
    assert decide_method(1, 2) == "twostep"
    assert decide_method(3, 0, requested="twostep") == "twostep"


def test_a_total_proper_motion_of_exactly_max_pm_is_kept():
    # the limit is "exceeds": (30, 40) mas/yr is 50 exactly
    assert high_proper_motion([30.0, 30.0], [40.0, 40.0001], 50.0).tolist() == [False, True]


def _forbid_the_tree(monkeypatch):
    import scipy.spatial

    def refuse(*args, **kwargs):
        raise AssertionError("the k-d tree was used")

    monkeypatch.setattr(scipy.spatial, "cKDTree", refuse)


def test_the_sweep_runs_along_the_axis_of_widest_spread(monkeypatch):
    # at (ra, dec) = (0, 0) every source of a 10' field has x ~ 1 (to 1e-6), so along x all
    # 300,000 (detection, reference) pairs would be candidates and the k-d tree would take over;
    # along y or z the sweep tries a few hundred
    rng = np.random.default_rng(SEED + 3)
    det_ra, det_dec = offsets_to_sky(0.0, 0.0, rng.uniform(-300, 300, 100), rng.uniform(-300, 300, 100))
    ref_ra, ref_dec = offsets_to_sky(0.0, 0.0, rng.uniform(-300, 300, 3000),
                                     rng.uniform(-300, 300, 3000))
    expected = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 3.0)
    _forbid_the_tree(monkeypatch)
    swept = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 3.0)
    assert len(swept[0]) > 0
    for a, b in zip(swept, expected, strict=True):
        assert np.array_equal(a, b)


def test_the_sweep_takes_up_to_its_candidate_limit_and_the_tree_beyond(monkeypatch):
    import scipy.spatial
    import stk_astrometry.matching as m
    from stk_astrometry.matching import unit_vectors

    rng = np.random.default_rng(SEED + 4)
    det_ra, det_dec = offsets_to_sky(10.0, 20.0, rng.uniform(-60, 60, 50), rng.uniform(-60, 60, 50))
    ref_ra, ref_dec = offsets_to_sky(10.0, 20.0, rng.uniform(-60, 60, 400),
                                     rng.uniform(-60, 60, 400))
    # the candidates: references within the (widened) chord of a detection along the axis on
    # which the references spread most
    det_xyz, ref_xyz = unit_vectors(det_ra, det_dec), unit_vectors(ref_ra, ref_dec)
    axis = int(np.argmax(ref_xyz.max(axis=0) - ref_xyz.min(axis=0)))
    chord = 2.0 * np.sin(np.radians(4.0 / 3600.0) / 2.0) * (1.0 + 1e-9)
    # (the references sorted by bins of chord / _SWEEP_BINS_PER_CHORD: a detection's bins from
    # that of its coordinate - chord to that of + chord)
    key = ref_xyz[:, axis]
    width = chord / m._SWEEP_BINS_PER_CHORD
    ref_bin = np.floor((key - key.min()) / width)
    lo = np.floor((det_xyz[:, axis] - chord - key.min()) / width)
    hi = np.floor((det_xyz[:, axis] + chord - key.min()) / width)
    n_cand = int(np.count_nonzero((ref_bin[None, :] >= lo[:, None])
                                  & (ref_bin[None, :] <= hi[:, None])))
    assert n_cand > int(np.count_nonzero(np.abs(key[None, :] - det_xyz[:, None, axis]) <= chord))
    expected = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 4.0)
    tree = scipy.spatial.cKDTree
    used = []

    def spy(*args, **kwargs):
        used.append(1)
        return tree(*args, **kwargs)

    monkeypatch.setattr(scipy.spatial, "cKDTree", spy)
    for limit, by_tree in ((n_cand, False), (n_cand - 1, True)):
        used.clear()
        monkeypatch.setattr(m, "_SWEEP_MAX_CANDIDATES", limit)
        got = crossmatch(det_ra, det_dec, ref_ra, ref_dec, 4.0)
        assert bool(used) is by_tree, limit
        for a, b in zip(got, expected, strict=True):
            assert np.array_equal(a, b)


def test_an_allwise_source_with_either_error_unusable_is_dropped():
    ra0, dec0 = 150.0, 2.0
    w_ra, w_dec = offsets_to_sky(ra0, dec0, [0.0, 50.0, 100.0], [0.0, 0.0, 0.0])
    wise = WiseSources(allwise_oid=np.array([1, 2, 3]), ra_deg=w_ra, dec_deg=w_dec,
                       sigra_arcsec=np.array([0.1, 0.0, 0.1]),
                       sigdec_arcsec=np.array([0.1, 0.1, np.nan]), cc_flags=np.array(["0000"] * 3))
    bn = BestNeighbours(source_id=np.array([], dtype=np.int64),
                        allwise_oid=np.array([], dtype=np.int64))
    res = match_stack(make_detections([ra0], [dec0]), make_gaia([], []), MatchConfig(ra0, dec0),
                      wise=wise, best_neighbours=bn)
    assert counts(res)["NWBADERR"] == 2 and res.wise_rows.tolist() == [0]


def test_a_forced_method_is_honoured_and_twostep_needs_allwise():
    ra0, dec0, det, gaia, wise, bn = _full_stack()      # auto would choose twostep (3 < 4)
    res = match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.0, method="direct"),
                      wise=wise, best_neighbours=bn)
    assert res.method == "direct"
    with pytest.raises(ParameterError, match="twostep needs the ALLWISE"):
        match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.0, method="twostep"))


def test_a_single_best_neighbour_association_gives_its_pair():
    ra0, dec0, det, gaia, wise, _ = _full_stack()
    bn = BestNeighbours(source_id=np.array([14]), allwise_oid=np.array([107]))
    res = match_stack(det, gaia, MatchConfig(ra0, dec0, r_stack_arcmin=12.0), wise=wise,
                      best_neighbours=bn)
    assert np.asarray(wise.allwise_oid)[res.wise_gaia.wise_row].tolist() == [107]
    assert np.asarray(gaia.source_id)[res.wise_gaia.gaia_row].tolist() == [14]


def test_one_to_one_as_uniques_structured_sort():
    """one_to_one's lexsort gives np.unique(axis=0)'s distinct rows, in its order."""
    rng = np.random.default_rng(20261206)
    for n in (0, 1, 2, 7, 50, 400):
        wise = rng.integers(-3, 40, n, dtype=np.int64) * 10**12
        gaia = rng.integers(-3, 60, n, dtype=np.int64) * 10**15 + rng.integers(0, 2, n)
        pairs = np.unique(np.column_stack([wise, gaia]).reshape(-1, 2), axis=0)
        _, w_inv, w_cnt = np.unique(pairs[:, 0], return_inverse=True, return_counts=True)
        _, g_inv, g_cnt = np.unique(pairs[:, 1], return_inverse=True, return_counts=True)
        keep = (w_cnt[w_inv] == 1) & (g_cnt[g_inv] == 1)
        w, g, dropped = one_to_one(wise, gaia)
        assert np.array_equal(w, pairs[keep, 0]) and np.array_equal(g, pairs[keep, 1])
        assert dropped == int(np.count_nonzero(~keep))
        assert w.dtype == g.dtype == np.int64
        # ids of another integer type come back as int64, as the docstring says
        w32, g32, _ = one_to_one((wise // 10**12).astype(np.int32), (gaia % 1000).astype(np.int32))
        assert w32.dtype == g32.dtype == np.int64


# ---------------------------------------------------------------- motion (issue 11)


class _Shift:
    """A ``motion`` for match_stack: the rows with a shift move by it in the tangent plane of
    (ra0, dec0), each within ``factor`` x its shift (+ 1e-6") of where it was (the sky
    distance of a gnomonic shift is at most the shift); rows without one do not move."""

    def __init__(self, ra, dec, ra0, dec0, dxi, deta, factor=2.0):
        from stk_astrometry.tangent import sky_to_tangent

        xi, eta = sky_to_tangent(ra, dec, ra0, dec0)
        to_ra, to_dec = tangent_to_sky(xi + dxi, eta + deta, ra0, dec0)
        moving = np.hypot(dxi, deta) > 0
        self.now_ra = np.where(moving, to_ra, ra)
        self.now_dec = np.where(moving, to_dec, dec)
        self.bound_arcsec = np.where(moving, factor * np.hypot(dxi, deta) + 1e-6, 0.0)
        self.asked = []

    def move(self, rows):
        self.asked.extend(np.asarray(rows).tolist())
        return self.now_ra[rows], self.now_dec[rows]


def _moving_field(seed=3):
    """61 detections; Gaia near them (0-6"), on the r_stack circle (600 +- 4"), and around
    (with bad positions, a repeated id, high and null proper motions), 70 % of it moving by up
    to 4"; ALLWISE beside half the Gaia rows, their best neighbours (some not one-to-one).
    Two rows are placed to cross a line: Gaia row 0 from 601" to 599" of the centre (into
    the cone, 0.5" from detection 60), row 1 from 4.5" to 2" of detection 0 (into its match
    radius)."""
    rng = np.random.default_rng(seed)
    ra0, dec0 = 0.01, 5.0
    r = 550 * np.sqrt(rng.uniform(0, 1, 60))
    a = rng.uniform(0, 2 * np.pi, 60)
    d_xi, d_eta = r * np.sin(a), r * np.cos(a)
    # detection 60 by row 0's new place, inside the cone
    det = make_detections(*offsets_to_sky(ra0, dec0, np.r_[d_xi, 0.5], np.r_[d_eta, 599.0]))
    near = rng.integers(0, 60, 90)
    rn, an = rng.uniform(0, 6, 90), rng.uniform(0, 2 * np.pi, 90)
    ring_r, ring_a = rng.uniform(596, 604, 100), rng.uniform(0, 2 * np.pi, 100)
    back_r, back_a = 700 * np.sqrt(rng.uniform(0, 1, 200)), rng.uniform(0, 2 * np.pi, 200)
    g_xi = np.r_[0.0, d_xi[0] + 4.5, d_xi[near] + rn * np.sin(an), ring_r * np.sin(ring_a),
                 back_r * np.sin(back_a)]
    g_eta = np.r_[601.0, d_eta[0], d_eta[near] + rn * np.cos(an), ring_r * np.cos(ring_a),
                  back_r * np.cos(back_a)]
    n = g_xi.size
    g_ra, g_dec = offsets_to_sky(ra0, dec0, g_xi, g_eta)
    g_ra[5] = np.nan
    ids = np.arange(10**9, 10**9 + n)
    ids[7] = ids[8]
    pmra = rng.uniform(-20, 20, n)
    pmra[rng.uniform(0, 1, n) < 0.05] = 80.0                    # high proper motion
    pmra[9::11] = np.nan                                        # null
    pmra[:2] = 5.0
    gaia = make_gaia(g_ra, g_dec, pmra=pmra, pmdec=np.zeros(n), ids=ids)
    step, way = rng.uniform(0, 4, n), rng.uniform(0, 2 * np.pi, n)
    dxi, deta = step * np.sin(way), step * np.cos(way)
    still = rng.uniform(0, 1, n) < 0.3
    dxi[still], deta[still] = 0.0, 0.0
    dxi[0], deta[0] = 0.0, -2.0
    dxi[1], deta[1] = -2.5, 0.0
    half = np.flatnonzero(rng.uniform(0, 1, n) < 0.5)
    w_ra, w_dec = offsets_to_sky(ra0, dec0, g_xi[half] + 0.5, g_eta[half])
    wise = make_wise(w_ra, w_dec, ids=np.arange(7000, 7000 + half.size))
    bn = BestNeighbours(source_id=np.r_[ids[half], ids[half[:3]]],
                        allwise_oid=np.r_[wise.allwise_oid, [1, 2, 3]])
    return ra0, dec0, det, gaia, wise, bn, dxi, deta


def _same_match(a, b):
    """Every result of two match_stack runs equal, bit for bit, but the positions of the
    Gaia rows no result reads (the pairs' and the best-neighbour pairs' are read)."""
    for name in ("det_rows", "det_xi_arcsec", "det_eta_arcsec", "n_gaia_cand", "n_wise_cand",
                 "gaia_rows", "wise_rows", "wise_xi_arcsec", "wise_eta_arcsec"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for pa, pb in ((a.gaia_pairs, b.gaia_pairs), (a.wise_pairs, b.wise_pairs),
                   (a.wise_gaia, b.wise_gaia)):
        for name, value in vars(pa).items():
            np.testing.assert_array_equal(value, getattr(pb, name), err_msg=name)
    read = np.r_[a.gaia_pairs.ref_row, a.wise_gaia.gaia_row]
    for name in ("gaia_xi_arcsec", "gaia_eta_arcsec", "gaia_ra_deg", "gaia_dec_deg"):
        np.testing.assert_array_equal(getattr(a, name)[read], getattr(b, name)[read],
                                      err_msg=name)
    assert (a.density_gaia, a.density_wise, a.method) == (b.density_gaia, b.density_wise,
                                                          b.method)
    assert a.filters == b.filters


def test_a_motion_gives_the_match_of_the_moved_positions_moving_only_what_it_reads():
    ra0, dec0, det, gaia, wise, bn, dxi, deta = _moving_field()
    cfg = MatchConfig(ra0, dec0)
    motion = _Shift(gaia.ra_deg, gaia.dec_deg, ra0, dec0, dxi, deta)
    moved = GaiaSources(gaia.source_id, motion.now_ra, motion.now_dec, gaia.pmra_masyr,
                        gaia.pmdec_masyr)
    want = match_stack(det, moved, cfg, wise=wise, best_neighbours=bn)
    got = match_stack(det, gaia, cfg, wise=wise, best_neighbours=bn, motion=motion)
    _same_match(want, got)
    # the rows read are at their new places, each moved once, and most rows never
    read = np.r_[got.gaia_pairs.ref_row, got.wise_gaia.gaia_row]
    assert set(read[motion.bound_arcsec[read] > 0]) <= set(motion.asked)
    assert len(motion.asked) == len(set(motion.asked))
    assert 0 < len(motion.asked) < 0.6 * np.count_nonzero(motion.bound_arcsec)
    asked = np.array(motion.asked)
    assert np.all(motion.bound_arcsec[asked] > 0)
    np.testing.assert_array_equal(got.gaia_ra_deg[asked], motion.now_ra[asked])
    never = np.setdiff1d(np.arange(len(gaia)), asked)
    np.testing.assert_array_equal(got.gaia_ra_deg[never], np.asarray(gaia.ra_deg)[never])
    # rows 0 and 1 crossed into the cone and into detection 0's match radius
    assert 0 in got.gaia_pairs.ref_row[got.gaia_pairs.det_row == 60]
    assert 1 in got.gaia_pairs.ref_row[got.gaia_pairs.det_row == 0]
    # and without a motion, the positions given are the ones used
    plain = match_stack(det, moved, cfg, wise=wise, best_neighbours=bn)
    assert plain.gaia_ra_deg is not None
    np.testing.assert_array_equal(plain.gaia_ra_deg, motion.now_ra)
    np.testing.assert_array_equal(plain.gaia_dec_deg, motion.now_dec)


def test_places_move_asks_once_for_each_sorted_row_still_to_move():
    # _Places.move: the rows asked for, repeated and in any order, minus those without a bound
    # or already moved, go to the motion once each, sorted (issue 11: by a mask over the rows);
    # their positions and sky terms change, no other row's do
    from stk_astrometry.matching import _Places, _sky_terms

    ra0, dec0 = 10.0, -30.0
    xi = np.linspace(-300.0, 300.0, 12)
    ra, dec = tangent_to_sky(xi, 0.5 * xi, ra0, dec0)
    dxi = np.where(np.arange(12) % 4 == 3, 0.0, 1.5)           # rows 3, 7, 11 never move
    motion = _Shift(ra, dec, ra0, dec0, dxi, np.zeros(12))
    places = _Places(np.array(ra), np.array(dec), ra0, dec0, motion)
    before = [a.copy() for a in (places.ra, places.dec, places.sep, places.xi, places.eta,
                                 places.xyz)]
    places.move(np.array([9, 3, 1, 9, 5, 1], dtype=np.int64))
    assert motion.asked == [1, 5, 9]
    places.move(np.array([5, 2, 7, 0, 2]))
    assert motion.asked == [1, 5, 9, 0, 2]
    places.move(np.array([], dtype=np.int64))
    places.move(np.array([1, 11]))
    assert motion.asked == [1, 5, 9, 0, 2]
    moved = np.isin(np.arange(12), [0, 1, 2, 5, 9])
    now = _sky_terms(motion.now_ra, motion.now_dec, ra0, dec0)
    for got, old, new in zip((places.ra, places.dec, places.sep, places.xi, places.eta,
                              places.xyz), before, (motion.now_ra, motion.now_dec, *now),
                             strict=True):
        np.testing.assert_array_equal(got[moved], new[moved])
        np.testing.assert_array_equal(got[~moved], old[~moved])
    assert not np.array_equal(places.ra[moved], before[0][moved])
    np.testing.assert_array_equal(places.todo, (dxi > 0) & ~moved)


def test_a_motion_bound_too_small_changes_the_results():
    """The bound is what makes the lazy match exact: with one under the true displacement
    (0.3 x), row 0 stays outside the cone and row 1 outside detection 0's match radius (only
    those two move here)."""
    ra0, dec0, det, gaia, wise, bn, dxi, deta = _moving_field()
    only = np.zeros_like(dxi)
    dxi, deta = np.r_[dxi[:2], only[2:]], np.r_[deta[:2], only[2:]]
    cfg = MatchConfig(ra0, dec0)
    right = match_stack(det, gaia, cfg, wise=wise, best_neighbours=bn,
                        motion=_Shift(gaia.ra_deg, gaia.dec_deg, ra0, dec0, dxi, deta))
    wrong = match_stack(det, gaia, cfg, wise=wise, best_neighbours=bn,
                        motion=_Shift(gaia.ra_deg, gaia.dec_deg, ra0, dec0, dxi, deta, 0.3))
    assert (right.density_gaia - wrong.density_gaia) * np.pi * 10.0**2 == pytest.approx(1.0)
    assert 1 in right.gaia_pairs.ref_row and 1 not in wrong.gaia_pairs.ref_row


def test_crossmatch_with_reach_asks_once_for_the_candidates_within_it():
    ra0, dec0 = 30.0, -20.0
    d_ra, d_dec = offsets_to_sky(ra0, dec0, [0.0, 100.0], [0.0, 0.0])
    # refs at 2.9" (stays), 4" moving to 1" (reach 3.5"), 9" moving to 2" (reach 7.5": its
    # candidate search needs the widened radius), 20" (reach 1": never asked)
    r_ra, r_dec = offsets_to_sky(ra0, dec0, [2.9, 104.0, 109.0, 20.0], [0.0, 0.0, 0.0, 0.0])
    now_ra, now_dec = offsets_to_sky(ra0, dec0, [2.9, 101.0, 102.0, 20.0], [0.0] * 4)
    asked = []

    def move(index):
        asked.append(np.asarray(index).tolist())
        return now_ra[index], now_dec[index]

    reach = np.array([0.0, 3.5, 7.5, 1.0])
    di, ri, sep = crossmatch(d_ra, d_dec, r_ra, r_dec, 3.0, ref_reach=reach, ref_move=move)
    assert asked == [[0, 1, 2]]
    assert di.tolist() == [0, 1, 1] and ri.tolist() == [0, 1, 2]
    np.testing.assert_allclose(sep, [2.9, 1.0, 2.0], atol=1e-6)
    want = crossmatch(d_ra, d_dec, now_ra, now_dec, 3.0)
    for x, y in zip((di, ri, sep), want, strict=True):
        np.testing.assert_array_equal(x, y)
    # nothing within reach: never asked; no reach: the plain crossmatch
    asked.clear()
    far = crossmatch(d_ra, d_dec, r_ra + 1.0, r_dec, 3.0, ref_reach=reach, ref_move=move)
    assert asked == [] and far[0].size == 0
    plain = crossmatch(d_ra, d_dec, r_ra, r_dec, 3.0)
    assert plain[1].tolist() == [0]


def test_sky_terms_are_the_three_functions_to_the_bit():
    # _sky_terms shares one set of sines and cosines between the separation from the tangent
    # point, the tangent-plane position and the unit vector (issue 11): the same numbers; the
    # unit vectors in the frame turned about the pole by ra0, whose chords are unit_vectors'
    from stk_astrometry.matching import _frame_vectors, _sky_terms, unit_vectors
    from stk_astrometry.tangent import sky_to_tangent

    rng = np.random.default_rng(21)
    n = 20000
    for ra0, dec0 in ((0.01, 5.0), (359.99, -89.9), (150.0, 2.0), (200.0, 89.999)):
        near_ra = ra0 + rng.normal(0.0, 0.2, n)
        near_dec = np.clip(dec0 + rng.normal(0.0, 0.2, n), -90.0, 90.0)
        ra = np.r_[near_ra % 360.0, rng.uniform(0.0, 360.0, 500), np.nan, 10.0]
        dec = np.r_[near_dec, np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, 500))), 0.0, np.nan]
        # float32 inputs (E columns) are computed in double precision, as the three do
        for args in ((ra, dec, ra0, dec0),
                     (ra.astype(np.float32), dec.astype(np.float32), np.float32(ra0),
                      np.float32(dec0))):
            sep, xi, eta, xyz = _sky_terms(*args)
            np.testing.assert_array_equal(sep, angular_separation_arcsec(*args))
            want_xi, want_eta = sky_to_tangent(*args)
            np.testing.assert_array_equal(xi, want_xi)
            np.testing.assert_array_equal(eta, want_eta)
            np.testing.assert_array_equal(xyz, _frame_vectors(*args[:3]))
            std = unit_vectors(*args[:2])
            ok = np.all(np.isfinite(std), axis=1)
            turned = np.radians(float(args[2]))
            np.testing.assert_allclose(
                xyz[ok], std[ok] @ np.array([[np.cos(turned), -np.sin(turned), 0.0],
                                             [np.sin(turned), np.cos(turned), 0.0],
                                             [0.0, 0.0, 1.0]]), rtol=0, atol=1e-15)
            i, j = rng.integers(0, n, (2, 3000))
            np.testing.assert_allclose(np.linalg.norm(xyz[i] - xyz[j], axis=1),
                                       np.linalg.norm(std[i] - std[j], axis=1), rtol=0,
                                       atol=1e-15)
            assert np.isnan(xi[n:]).any() and np.isnan(xi[-2:]).all()   # far side and NaNs
    # exactly 90 degrees away (D == 0.0 in floating point, test_tangent): NaN, no warning
    sep, xi, eta, _ = _sky_terms([10.0, 10.0], [-75.0, 14.0], 10.0, 15.0)
    assert np.isnan(xi[0]) and np.isnan(eta[0]) and np.isfinite(xi[1]) and np.isfinite(eta[1])
    assert sep[0] == pytest.approx(90 * 3600.0)


def test_the_first_row_of_each_repeated_id_is_kept_in_a_large_catalog():
    # 2,100 Gaia and ALLWISE rows, each id three times in random order: the row kept is the
    # first of its id (the ids' stable sort, which an unstable one does not give here)
    rng = np.random.default_rng(4)
    n = 2100
    ids = rng.permutation(np.repeat(np.arange(10**12, 10**12 + n // 3), 3))
    ra0, dec0 = 30.0, 10.0
    ra, dec = offsets_to_sky(ra0, dec0, rng.uniform(-500, 500, n), rng.uniform(-500, 500, n))
    first = np.sort(np.unique(ids, return_index=True)[1])
    det = make_detections(ra[:5], dec[:5])
    wise = make_wise(ra, dec, ids=ids + 7)
    bn = BestNeighbours(source_id=ids[first[:50]], allwise_oid=ids[first[:50]] + 7)
    res = match_stack(det, make_gaia(ra, dec, ids=ids), MatchConfig(ra0, dec0), wise=wise,
                      best_neighbours=bn)
    np.testing.assert_array_equal(res.gaia_rows, first)
    np.testing.assert_array_equal(res.wise_rows, first)
    assert counts(res)["NGDUPID"] == counts(res)["NWDUPID"] == n - n // 3
    # each best-neighbour pair joins the first rows of its ids
    np.testing.assert_array_equal(np.sort(res.wise_gaia.gaia_row), np.sort(first[:50])[
        np.isin(np.sort(first[:50]), res.wise_gaia.gaia_row)])
    assert set(res.wise_gaia.wise_row) <= set(first) and len(res.wise_gaia) > 40
