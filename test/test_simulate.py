"""Tests of the stack simulator's pure core (stk_astrometry.simulate).

Statistical checks use fixed seeds and tolerances of 4-5 standard errors
derived from the model (binomial / Poisson / chi-square), so they are
deterministic and would fail on a model error of a few sigma.
"""

import math
import re

import numpy as np
import pytest
from stk_astrometry.errors import ParameterError
from stk_astrometry.simulate import (
    CC_FLAG_CODES,
    HIGH_PM_MASYR,
    SIGMA_TO_R95,
    SimConfig,
    catalog_tables,
    crb_from_ellipses,
    make_stack_id,
    position_sigma_arcsec,
    psf_r90_arcsec,
    simulate_stack,
    wise_designation,
)
from stk_astrometry.tangent import sky_to_tangent

SEED = 20261120

# Exactly the columns stk_match reads (issue text), no more, no fewer.
DET_COLUMNS = {
    "detect_stack_id", "region_id", "ra", "dec", "err_ellipse_r0", "err_ellipse_r1",
    "err_ellipse_ang", "likelihood_class", "sat_src_flag", "conv_hull", "man_inc", "theta",
    "src_cnts", "ra_stack", "dec_stack", "instrument",
}
GAIA_COLUMNS = {"source_id", "ra", "dec", "pmra", "pmdec"}
WISE_COLUMNS = {"allwise_oid", "ra", "dec", "sigra", "sigdec", "cc_flags"}
BESTNB_COLUMNS = {"source_id", "allwise_oid", "original_ext_source_id", "angular_distance",
                  "number_of_neighbours", "number_of_mates"}


def _arrays(sim):
    """Every array of the simulated stack, flattened into a dict, for equality tests."""
    out = {}
    for part in ("detections", "gaia", "wise", "best_neighbours", "truth"):
        obj = getattr(sim, part)
        for name, value in vars(obj).items():
            out[f"{part}.{name}"] = value
    return out


def test_same_seed_same_stack_and_different_seed_differs():
    cfg = SimConfig(ndet=80, false_frac=0.1)
    a, b, c = (simulate_stack(cfg, seed=s) for s in (SEED, SEED, SEED + 1))
    arr_a, arr_b, arr_c = _arrays(a), _arrays(b), _arrays(c)
    for key, value in arr_a.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(arr_b[key]), err_msg=key)
    assert not np.array_equal(arr_a["detections.ra_deg"], arr_c["detections.ra_deg"])


def test_rng_and_seed_are_exclusive():
    with pytest.raises(ParameterError, match="either rng or seed"):
        simulate_stack(rng=np.random.default_rng(1), seed=1)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"instrument": "XMM"}, "instrument='XMM'"),
        ({"ndet": -1}, "ndet=-1"),
        ({"r_stack_arcmin": 0.0}, "r_stack=0.0"),
        ({"dec_stack_deg": 91.0}, "dec_stack=91.0"),
        ({"gaia_density": -1.0}, "gaia_density=-1.0"),
        ({"false_frac": 1.5}, "false_frac=1.5"),
        ({"null_pm_frac": 0.6, "high_pm_frac": 0.6}, "null_pm_frac \\+ high_pm_frac"),
        ({"marginal_frac": 0.9, "false_class_frac": 0.2}, "marginal_frac"),
    ],
)
def test_config_rejects_bad_values(kwargs, pattern):
    with pytest.raises(ParameterError, match=pattern):
        SimConfig(**kwargs)


def test_fixed_shift_is_used_and_random_shift_is_rayleigh():
    sim = simulate_stack(SimConfig(ndet=5, shift_xi_arcsec=0.7, shift_eta_arcsec=-0.3), seed=SEED)
    assert sim.truth.d_xi_arcsec == 0.7 and sim.truth.d_eta_arcsec == -0.3
    rng = np.random.default_rng(SEED)
    cfg = SimConfig(ndet=0, gaia_density=0.0, wise_density=0.0, shift_sigma_arcsec=0.25)
    comps = np.array([[s.truth.d_xi_arcsec, s.truth.d_eta_arcsec]
                      for s in (simulate_stack(cfg, rng=rng) for _ in range(2000))])
    # Each component N(0, 0.25): the sample std is within 4 standard errors.
    std = comps.std(axis=0)
    se = 0.25 / math.sqrt(2 * comps.shape[0])
    assert np.all(np.abs(std - 0.25) < 4 * se), std
    # |shift| Rayleigh with mode 0.25: median = 0.25 sqrt(2 ln 2).
    med = np.median(np.hypot(comps[:, 0], comps[:, 1]))
    assert abs(med - 0.25 * math.sqrt(2 * math.log(2))) < 0.02


def test_error_model_grows_with_theta_and_shrinks_with_counts():
    theta = np.array([0.0, 2.0, 5.0, 10.0])
    r90 = psf_r90_arcsec(theta)
    assert r90[0] == pytest.approx(0.5) and r90[-1] == pytest.approx(6.5)
    assert np.all(np.diff(position_sigma_arcsec(theta, 50.0)) > 0)
    counts = np.array([5.0, 20.0, 100.0, 1000.0])
    assert np.all(np.diff(position_sigma_arcsec(8.0, counts)) < 0)
    # Floor reached at huge counts, formula exact elsewhere.
    assert position_sigma_arcsec(0.0, 1e12) == pytest.approx(0.1)
    s_psf = 6.5 / math.sqrt(-2 * math.log(0.1))
    assert position_sigma_arcsec(10.0, 25.0) == pytest.approx(math.sqrt(s_psf**2 / 25 + 0.01))
    assert psf_r90_arcsec(0.0, "HRC") < psf_r90_arcsec(0.0, "ACIS")


def test_simulated_errors_follow_the_model_and_trends():
    sim = simulate_stack(SimConfig(ndet=2000), seed=SEED)
    d, t = sim.detections, sim.truth
    # 95 % radii are 2.4477 x the 1-sigma axes; the geometric mean is the model sigma.
    np.testing.assert_allclose(d.err_r0_arcsec, SIGMA_TO_R95 * t.sigma_major_arcsec)
    np.testing.assert_allclose(d.err_r1_arcsec, SIGMA_TO_R95 * t.sigma_minor_arcsec)
    assert SIGMA_TO_R95 == pytest.approx(2.4477, abs=1e-4)
    np.testing.assert_allclose(np.sqrt(t.sigma_major_arcsec * t.sigma_minor_arcsec),
                               position_sigma_arcsec(d.theta_arcmin, d.src_cnts))
    assert np.all(d.err_r0_arcsec >= d.err_r1_arcsec)
    assert np.all((d.err_ang_deg >= 0) & (d.err_ang_deg < 180))
    # Trends in the simulated table: rank correlations of radius with theta (+) and counts (-).
    r = np.sqrt(d.err_r0_arcsec * d.err_r1_arcsec)

    def rank_corr(x, y):
        rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
        return np.corrcoef(rx, ry)[0, 1]

    assert rank_corr(d.theta_arcmin, r) > 0.3
    at_fixed_theta = (d.theta_arcmin > 6) & (d.theta_arcmin < 8)
    assert rank_corr(d.src_cnts[at_fixed_theta], r[at_fixed_theta]) < -0.5
    # Detections concentrate towards the aimpoint: more than uniform-in-area inside r/2.
    assert np.mean(d.theta_arcmin < 5.0) > 0.25 + 5 * math.sqrt(0.25 * 0.75 / 2000)
    assert np.all(d.src_cnts >= 4.0) and np.all(d.theta_arcmin <= 10.0)


def test_detection_noise_is_drawn_from_the_ellipse():
    """det + d - true, whitened by each detection's ellipse, is standard normal in 2-D."""
    sim = simulate_stack(SimConfig(ndet=3000, shift_xi_arcsec=0.4, shift_eta_arcsec=-0.2),
                         seed=SEED)
    d, t = sim.detections, sim.truth
    rx = d.xi_arcsec + t.d_xi_arcsec - t.true_xi_arcsec
    ry = d.eta_arcsec + t.d_eta_arcsec - t.true_eta_arcsec
    pa = np.radians(d.err_ang_deg)
    along = (rx * np.sin(pa) + ry * np.cos(pa)) / t.sigma_major_arcsec
    across = (rx * np.cos(pa) - ry * np.sin(pa)) / t.sigma_minor_arcsec
    n = rx.size
    for comp in (along, across):
        assert abs(comp.mean()) < 4 / math.sqrt(n)
        assert abs(comp.std() - 1) < 4 / math.sqrt(2 * n)
    assert abs(np.corrcoef(along, across)[0, 1]) < 4 / math.sqrt(n)
    # The detected RA/Dec are the tangent-plane positions mapped to the sky.
    xi, eta = sky_to_tangent(d.ra_deg, d.dec_deg, sim.config.ra_stack_deg, sim.config.dec_stack_deg)
    np.testing.assert_allclose(xi, d.xi_arcsec, atol=1e-6)
    np.testing.assert_allclose(eta, d.eta_arcsec, atol=1e-6)


@pytest.mark.parametrize("density", [0.5, 20.0, 150.0])
def test_densities_match_the_parameter_within_poisson_error(density):
    cfg = SimConfig(ndet=30, gaia_density=density, wise_density=density / 3, r_stack_arcmin=6.0)
    sim = simulate_stack(cfg, seed=SEED)
    area = math.pi * 6.0**2
    for n_obs, dens in ((sim.truth.n_gaia_in_rstack, density),
                        (sim.truth.n_wise_in_rstack, density / 3)):
        expected = dens * area
        assert abs(n_obs - expected) < 4.5 * math.sqrt(expected) + 1, (n_obs, expected)
    assert sim.truth.gaia_density_in_rstack == pytest.approx(sim.truth.n_gaia_in_rstack / area)
    # Every catalog source lies within the cone (r_stack + margin, plus planted/companions).
    gx, gy = sky_to_tangent(sim.gaia.ra_deg, sim.gaia.dec_deg, cfg.ra_stack_deg, cfg.dec_stack_deg)
    assert np.all(np.hypot(gx, gy) <= (6.0 + cfg.margin_arcmin) * 60 + 5)


def test_densities_averaged_over_many_stacks_are_unbiased():
    rng = np.random.default_rng(SEED)
    cfg = SimConfig(ndet=50, gaia_density=2.0, wise_density=1.5)
    n = np.array([[s.truth.n_gaia_in_rstack, s.truth.n_wise_in_rstack]
                  for s in (simulate_stack(cfg, rng=rng) for _ in range(200))])
    area = math.pi * 100.0
    for col, dens in ((0, 2.0), (1, 1.5)):
        mean = n[:, col].mean()
        assert abs(mean - dens * area) < 4 * math.sqrt(dens * area / 200), (mean, dens * area)


def test_proper_motion_populations():
    cfg = SimConfig(ndet=10, gaia_density=60.0, null_pm_frac=0.1, high_pm_frac=0.03)
    g = simulate_stack(cfg, seed=SEED).gaia
    n = g.source_id.size
    null = np.isnan(g.pmra_masyr)
    assert np.array_equal(null, np.isnan(g.pmdec_masyr))
    tot = np.hypot(g.pmra_masyr, g.pmdec_masyr)
    high = tot > HIGH_PM_MASYR
    for frac, p in ((null.mean(), 0.1), (high.mean(), 0.03)):
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n), (frac, p)
    assert np.nanmax(tot) < 500.0
    assert np.unique(g.source_id).size == n and g.source_id.dtype == np.int64


def test_allwise_errors_and_cc_flags():
    cfg = SimConfig(ndet=10, gaia_density=10.0, wise_density=20.0, clean_frac=0.85)
    w = simulate_stack(cfg, seed=SEED).wise
    n = w.allwise_oid.size
    assert np.all((w.sigra_arcsec >= 0.05) & (w.sigra_arcsec <= 0.5))
    assert np.all((w.sigdec_arcsec >= 0.05) & (w.sigdec_arcsec <= 0.5))
    clean = w.cc_flags == "0000"
    assert abs(clean.mean() - 0.85) < 4 * math.sqrt(0.85 * 0.15 / n)
    assert set(w.cc_flags[~clean]) <= set(CC_FLAG_CODES)
    assert len(set(w.cc_flags[~clean])) >= 4
    assert np.unique(w.allwise_oid).size == n


def test_best_neighbours_have_many_to_one_and_consistent_columns():
    cfg = SimConfig(ndet=50, gaia_density=10.0, wise_density=5.0, multi_frac=0.05)
    sim = simulate_stack(cfg, seed=SEED)
    b, g, w = sim.best_neighbours, sim.gaia, sim.wise
    # One row per Gaia source; some ALLWISE sources have two Gaia sources (many-to-one).
    assert np.unique(b.source_id).size == b.source_id.size
    oid, counts = np.unique(b.allwise_oid, return_counts=True)
    assert counts.max() == 2 and np.count_nonzero(counts == 2) >= 3
    expected_mates = counts[np.searchsorted(oid, b.allwise_oid)] - 1
    np.testing.assert_array_equal(b.number_of_mates, expected_mates)
    assert np.all(b.number_of_neighbours >= 1)
    assert set(b.source_id) <= set(g.source_id) and set(b.allwise_oid) <= set(w.allwise_oid)
    # angular_distance is the Gaia-ALLWISE separation; wise_index points at the right row.
    np.testing.assert_array_equal(w.allwise_oid[b.wise_index], b.allwise_oid)
    gi = {sid: i for i, sid in enumerate(g.source_id)}
    rows = np.array([gi[s] for s in b.source_id])
    ra0, dec0 = cfg.ra_stack_deg, cfg.dec_stack_deg
    gx, gy = sky_to_tangent(g.ra_deg[rows], g.dec_deg[rows], ra0, dec0)
    wx, wy = sky_to_tangent(w.ra_deg[b.wise_index], w.dec_deg[b.wise_index], ra0, dec0)
    np.testing.assert_allclose(np.hypot(gx - wx, gy - wy), b.angular_distance_arcsec, atol=1e-6)
    single = b.number_of_mates == 0
    # One-to-one pairs are the same source: separated by ALLWISE noise (+ pm over 5.5 yr).
    assert np.median(b.angular_distance_arcsec[single]) < 0.5
    # A fair share of field ALLWISE sources have a Gaia best neighbour.
    assert 0.5 < b.allwise_oid.size / w.allwise_oid.size < 0.95


def test_flags_are_present_in_sensible_proportions():
    d = simulate_stack(SimConfig(ndet=3000), seed=SEED).detections
    n = d.region_id.size
    for value, p in (("FALSE", 0.05), ("MARGINAL", 0.15), ("TRUE", 0.80)):
        frac = np.mean(d.likelihood_class == value)
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n), (value, frac)
    for flag, p in ((d.sat_src_flag, 0.02), (d.conv_hull, 0.03), (d.man_inc, 0.02)):
        assert abs(flag.mean() - p) < 4 * math.sqrt(p * (1 - p) / n) + 0.002
    # Saturation is a bright-source effect.
    assert np.all(d.src_cnts[d.sat_src_flag] >= np.median(d.src_cnts))
    np.testing.assert_array_equal(d.region_id, np.arange(1, n + 1))


def test_crb_formula_matches_brute_force_fisher_matrix():
    rng = np.random.default_rng(SEED)
    a = rng.uniform(0.2, 1.0, 40)
    b = a * rng.uniform(0.5, 1.0, 40)
    pa = rng.uniform(0, 180, 40)
    fisher = np.zeros((2, 2))
    for ai, bi, p in zip(a, b, np.radians(pa), strict=True):
        u = np.array([np.sin(p), np.cos(p)])
        v = np.array([np.cos(p), -np.sin(p)])
        cov = ai**2 * np.outer(u, u) + bi**2 * np.outer(v, v)
        fisher += np.linalg.inv(cov)
    bound = np.sqrt(np.diag(np.linalg.inv(fisher)))
    crb_xi, crb_eta, crb_iso = crb_from_ellipses(a, b, pa)
    assert crb_xi == pytest.approx(bound[0], rel=1e-10)
    assert crb_eta == pytest.approx(bound[1], rel=1e-10)
    assert crb_iso == pytest.approx(1 / math.sqrt(np.sum(1 / (a * b))), rel=1e-12)
    # Circular errors: the three agree with the textbook 1/sqrt(sum 1/sigma^2).
    c = crb_from_ellipses([0.3, 0.4], [0.3, 0.4], [10.0, 70.0])
    assert c == pytest.approx((1 / math.sqrt(1 / 0.09 + 1 / 0.16),) * 3)
    assert all(math.isnan(x) for x in crb_from_ellipses([], [], []))


def test_truth_crb_uses_exactly_the_documented_pairs():
    cfg = SimConfig(ndet=300, high_pm_frac=0.1, gaia_frac=0.8)
    sim = simulate_stack(cfg, seed=SEED)
    d, t, g = sim.detections, sim.truth, sim.gaia
    # passes_filters is the stk_match detection filter.
    filt = ((d.likelihood_class != "FALSE") & ~d.sat_src_flag & ~d.conv_hull
            & (d.theta_arcmin <= cfg.r_stack_arcmin))
    np.testing.assert_array_equal(t.passes_filters, filt)
    # in_crb = filtered, true counterpart, pm rule, within the match radius.
    gi = {sid: i for i, sid in enumerate(g.source_id)}
    expected = np.zeros(d.region_id.size, bool)
    for k in np.flatnonzero(t.gaia_id >= 0):
        row = gi[t.gaia_id[k]]
        pm = math.hypot(g.pmra_masyr[row], g.pmdec_masyr[row])
        gx, gy = sky_to_tangent(g.ra_deg[row], g.dec_deg[row], cfg.ra_stack_deg, cfg.dec_stack_deg)
        sep = math.hypot(gx - d.xi_arcsec[k], gy - d.eta_arcsec[k])
        expected[k] = filt[k] and not pm > HIGH_PM_MASYR and sep <= cfg.match_radius_arcsec
    np.testing.assert_array_equal(t.in_crb, expected)
    assert t.n_crb == expected.sum() > 100
    # Some counterparts are excluded by the pm rule (so the rule is exercised).
    assert np.count_nonzero((t.gaia_id >= 0) & filt & ~expected) > 0
    crb = crb_from_ellipses(t.sigma_major_arcsec[expected], t.sigma_minor_arcsec[expected],
                            d.err_ang_deg[expected])
    assert (t.crb_xi_arcsec, t.crb_eta_arcsec, t.crb_iso_arcsec) == pytest.approx(crb)


def test_truth_recovery_with_the_optimal_estimator_attains_the_crb():
    """The inverse-covariance-weighted mean offset of the true pairs recovers the shift."""
    rng = np.random.default_rng(SEED)
    cfg = SimConfig(ndet=100, gaia_frac=0.7, epoch_gap_yr=0.0, shift_xi_arcsec=0.35,
                    shift_eta_arcsec=-0.15)
    pulls = []
    for _ in range(60):
        sim = simulate_stack(cfg, rng=rng)
        d, t, g = sim.detections, sim.truth, sim.gaia
        gi = {sid: i for i, sid in enumerate(g.source_id)}
        k = np.flatnonzero(t.in_crb)
        rows = np.array([gi[s] for s in t.gaia_id[k]])
        gx, gy = sky_to_tangent(g.ra_deg[rows], g.dec_deg[rows], cfg.ra_stack_deg, cfg.dec_stack_deg)
        off = np.column_stack([gx - d.xi_arcsec[k], gy - d.eta_arcsec[k]])
        fisher = np.zeros((2, 2))
        rhs = np.zeros(2)
        for i, j in enumerate(k):
            p = np.radians(d.err_ang_deg[j])
            u = np.array([np.sin(p), np.cos(p)])
            v = np.array([np.cos(p), -np.sin(p)])
            winv = (np.outer(u, u) / t.sigma_major_arcsec[j] ** 2
                    + np.outer(v, v) / t.sigma_minor_arcsec[j] ** 2)
            fisher += winv
            rhs += winv @ off[i]
        est = np.linalg.solve(fisher, rhs)
        pulls.append([(est[0] - 0.35) / t.crb_xi_arcsec, (est[1] + 0.15) / t.crb_eta_arcsec])
    pulls = np.array(pulls)
    # Unbiased, and the scatter equals the bound (pull std 1 within sampling error).
    assert np.all(np.abs(pulls.mean(axis=0)) < 4 / math.sqrt(len(pulls)))
    assert np.all(np.abs(pulls.std(axis=0) - 1) < 4 / math.sqrt(2 * len(pulls)))


def test_planted_false_matches():
    cfg = SimConfig(ndet=200, false_frac=0.3, match_radius_arcsec=3.0)
    sim = simulate_stack(cfg, seed=SEED)
    d, t, g = sim.detections, sim.truth, sim.gaia
    planted = t.false_gaia_id >= 0
    good = d.likelihood_class != "FALSE"
    assert planted.sum() == round(0.3 * good.sum())
    assert not np.any(planted & ~good)
    assert not np.any(planted & (t.gaia_id >= 0)) and not np.any(planted & (t.wise_id >= 0))
    gi = {sid: i for i, sid in enumerate(g.source_id)}
    rows = np.array([gi[s] for s in t.false_gaia_id[planted]])
    gx, gy = sky_to_tangent(g.ra_deg[rows], g.dec_deg[rows], cfg.ra_stack_deg, cfg.dec_stack_deg)
    sep = np.hypot(gx - d.xi_arcsec[planted], gy - d.eta_arcsec[planted])
    assert np.all(sep <= 3.0 + 1e-9)
    # Uniform over the circle: half of them beyond r/sqrt(2).
    frac_out = np.mean(sep > 3.0 / math.sqrt(2))
    assert abs(frac_out - 0.5) < 4 * math.sqrt(0.25 / planted.sum())
    # The default realistic mode plants none.
    assert np.all(simulate_stack(SimConfig(ndet=200), seed=SEED).truth.false_gaia_id < 0)


def test_two_step_scenario_has_more_allwise_than_gaia_counterparts():
    cfg = SimConfig(ndet=60, gaia_frac=0.1, wise_frac=0.7, gaia_density=0.5, wise_density=3.0,
                    wise_shift_xi_arcsec=0.4, wise_shift_eta_arcsec=-0.3)
    sim = simulate_stack(cfg, seed=SEED)
    t, w = sim.truth, sim.wise
    assert np.count_nonzero(t.wise_id >= 0) > 3 * np.count_nonzero(t.gaia_id >= 0)
    # ALLWISE counterparts sit at true - wise_shift (+ their 1-sigma noise).
    wi = {oid: i for i, oid in enumerate(w.allwise_oid)}
    only_wise = np.flatnonzero((t.wise_id >= 0) & (t.gaia_id < 0))
    rows = np.array([wi[o] for o in t.wise_id[only_wise]])
    wx, wy = sky_to_tangent(w.ra_deg[rows], w.dec_deg[rows], cfg.ra_stack_deg, cfg.dec_stack_deg)
    zx = (wx - (t.true_xi_arcsec[only_wise] - 0.4)) / w.sigra_arcsec[rows]
    zy = (wy - (t.true_eta_arcsec[only_wise] + 0.3)) / w.sigdec_arcsec[rows]
    assert abs(zx.mean()) < 4 / math.sqrt(zx.size) and abs(zy.mean()) < 4 / math.sqrt(zy.size)
    assert abs(np.sqrt(np.mean(zx**2 + zy**2) / 2) - 1) < 4 / math.sqrt(2 * zx.size)


def test_chance_matches_arise_from_the_density():
    """Detections without counterparts find field Gaia sources at the rate the density predicts."""
    cfg = SimConfig(ndet=400, gaia_frac=0.0, gaia_density=40.0, r_stack_arcmin=8.0)
    sim = simulate_stack(cfg, seed=SEED)
    d, g = sim.detections, sim.gaia
    from scipy.spatial import cKDTree

    gx, gy = sky_to_tangent(g.ra_deg, g.dec_deg, cfg.ra_stack_deg, cfg.dec_stack_deg)
    tree = cKDTree(np.column_stack([gx, gy]))
    inner = np.hypot(d.xi_arcsec, d.eta_arcsec) < 7.5 * 60
    n_found = tree.query_ball_point(np.column_stack([d.xi_arcsec[inner], d.eta_arcsec[inner]]),
                                    3.0, return_length=True)
    expected = 40.0 * math.pi * (3.0 / 60) ** 2  # 0.314 per detection
    assert abs(n_found.mean() - expected) < 4 * math.sqrt(expected / inner.sum())


def test_tables_have_exactly_the_columns_stk_match_reads():
    sim = simulate_stack(SimConfig(ndet=40), seed=SEED)
    tabs = catalog_tables(sim)
    assert set(tabs["det"].colnames) == DET_COLUMNS
    assert set(tabs["gaia"].colnames) == GAIA_COLUMNS
    assert set(tabs["allwise"].colnames) == WISE_COLUMNS
    assert set(tabs["bestnb"].colnames) == BESTNB_COLUMNS
    det = tabs["det"]
    assert det["region_id"].dtype == np.int32
    assert set(det["likelihood_class"]) <= {"TRUE", "MARGINAL", "FALSE"}
    assert det["sat_src_flag"].dtype == bool and det["conv_hull"].dtype == bool
    assert np.all(det["detect_stack_id"] == sim.stack_id) and np.all(det["instrument"] == "ACIS")
    assert det.meta["DEC_STACK"] == sim.config.dec_stack_deg
    assert tabs["gaia"]["source_id"].dtype == np.int64
    assert tabs["allwise"]["allwise_oid"].dtype == np.int64
    assert tabs["allwise"]["cc_flags"].dtype.kind == "U" and tabs["allwise"]["cc_flags"].dtype.itemsize // 4 == 4
    assert str(tabs["allwise"]["sigra"].unit) == "arcsec"
    assert all(re.fullmatch(r"J\d{6}\.\d{2}[+-]\d{6}\.\d", s)
               for s in tabs["bestnb"]["original_ext_source_id"])
    truth = tabs["truth"]
    assert truth.meta["D_XI"][0] == sim.truth.d_xi_arcsec
    assert truth.meta["CRB_XI"][0] == sim.truth.crb_xi_arcsec


def test_stack_id_and_designation_formats():
    assert make_stack_id(206.99708, 26.59306, "ACIS") == "acisfJ1347593p263535_001"
    assert make_stack_id(168.7675, -61.258333, "HRC", version=2) == "hrcfJ1115042m611530_002"
    assert wise_designation([10.0], [-5.5])[0] == "J004000.00-053000.0"
    assert wise_designation([359.99999], [0.00001])[0].startswith("J235959.99+000000.0")
    sim = simulate_stack(SimConfig(ndet=3, instrument="HRC", stack_id="hrcfJ0000000p000000_001"),
                         seed=1)
    assert sim.stack_id == "hrcfJ0000000p000000_001"


def test_stack_across_ra_zero_and_near_pole():
    for ra0, dec0 in ((0.01, 10.0), (120.0, 89.5)):
        cfg = SimConfig(ra_stack_deg=ra0, dec_stack_deg=dec0, ndet=100, epoch_gap_yr=0.0)
        sim = simulate_stack(cfg, seed=SEED)
        d, t = sim.detections, sim.truth
        assert np.all((d.ra_deg >= 0) & (d.ra_deg < 360))
        xi, eta = sky_to_tangent(t.true_ra_deg, t.true_dec_deg, ra0, dec0)
        np.testing.assert_allclose(xi, t.true_xi_arcsec, atol=1e-6)
        np.testing.assert_allclose(eta, t.true_eta_arcsec, atol=1e-6)


def test_empty_and_tiny_stacks():
    sim = simulate_stack(SimConfig(ndet=0, gaia_density=0.0, wise_density=0.0), seed=SEED)
    assert sim.detections.region_id.size == 0 and sim.gaia.source_id.size == 0
    assert sim.truth.n_crb == 0 and math.isnan(sim.truth.crb_xi_arcsec)
    tabs = catalog_tables(sim)
    assert len(tabs["det"]) == 0 and set(tabs["det"].colnames) == DET_COLUMNS
    # A stack with more counterparts than its Gaia budget still has them all.
    sim = simulate_stack(SimConfig(ndet=30, gaia_frac=1.0, gaia_density=0.01), seed=SEED)
    assert np.all(np.isin(sim.truth.gaia_id[sim.truth.gaia_id >= 0], sim.gaia.source_id))


# ------------------------------------------------------------------ wrong stated errors (issue 14)


def test_default_error_options_change_nothing():
    a = simulate_stack(SimConfig(ndet=60), seed=4)
    b = simulate_stack(SimConfig(ndet=60, missing_floor_arcsec=0.0, stated_err_scale=1.0,
                                 bright_outliers=0), seed=4)
    assert np.array_equal(a.detections.xi_arcsec, b.detections.xi_arcsec)
    assert np.array_equal(a.detections.err_r0_arcsec, b.detections.err_r0_arcsec)


def test_missing_floor_and_scale_separate_stated_from_true_errors():
    base = simulate_stack(SimConfig(ndet=200), seed=5)
    sim = simulate_stack(SimConfig(ndet=200, missing_floor_arcsec=0.2, stated_err_scale=2.0),
                         seed=5)
    stated_sigma = sim.detections.err_r0_arcsec / SIGMA_TO_R95
    # stated = 2 x the ellipse the noise was drawn from (without the missing floor)
    assert np.allclose(stated_sigma, 2.0 * base.truth.sigma_major_arcsec)
    assert np.allclose(sim.truth.sigma_major_arcsec, np.hypot(base.truth.sigma_major_arcsec, 0.2))
    # the positions scatter by the true errors: the missing floor shows in the residuals
    t = sim.truth
    res = np.hypot(sim.detections.xi_arcsec - (t.true_xi_arcsec - t.d_xi_arcsec),
                   sim.detections.eta_arcsec - (t.true_eta_arcsec - t.d_eta_arcsec))
    bright = base.truth.sigma_major_arcsec < 0.15
    assert np.sqrt(np.mean(res[bright] ** 2) / 2) > 0.17


def test_bright_outliers_leave_the_crb():
    base = simulate_stack(SimConfig(ndet=80), seed=6)
    sim = simulate_stack(SimConfig(ndet=80, bright_outliers=3), seed=6)
    assert sim.truth.n_crb == base.truth.n_crb - 3
