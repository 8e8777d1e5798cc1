"""Tests of the campaign population model (stk_astrometry.core.population).

One seeded 400-stack population is drawn once per module; tolerances are several binomial
standard errors, so the checks are deterministic and fail on a model error.
"""

import math

import numpy as np
import pytest
from stk_astrometry.core.population import (
    REGIMES,
    SIGMA_TO_R95,
    PopConfig,
    galactic_latitude_deg,
    population_fields,
    propagate,
)
from stk_astrometry.core.overlap import angular_separation_arcsec
from stk_astrometry.tangent import sky_to_tangent

SEED = 1712


@pytest.fixture(scope="module")
def stacks():
    out = []
    for f in population_fields(PopConfig(n_stacks=400), seed=SEED):
        out.extend(f.stacks)
    return out


def test_count_ids_and_reproducibility(stacks):
    assert len(stacks) == 400
    assert len({s.stack_id for s in stacks}) == 400
    again = [s for f in population_fields(PopConfig(n_stacks=400), seed=SEED) for s in f.stacks]
    for a, b in zip(stacks[:20], again[:20], strict=True):
        assert a.stack_id == b.stack_id
        np.testing.assert_array_equal(a.det_ra_deg, b.det_ra_deg)
        np.testing.assert_array_equal(a.gaia_source_id, b.gaia_source_id)
    other = next(iter(population_fields(PopConfig(n_stacks=400), seed=SEED + 1))).stacks[0]
    assert other.ra_stack_deg != stacks[0].ra_stack_deg


def test_galactic_latitude_against_astropy():
    from astropy.coordinates import SkyCoord

    ra = np.array([0.0, 100.0, 266.4, 192.86, 300.0])
    dec = np.array([0.0, -40.0, -28.9, 27.13, 60.0])
    ref = SkyCoord(ra, dec, unit="deg").galactic.b.deg
    np.testing.assert_allclose(galactic_latitude_deg(ra, dec), ref, atol=2e-3)


def test_true_shifts_follow_chandra_absolute_astrometry(stacks):
    r = np.array([math.hypot(s.d_xi_arcsec, s.d_eta_arcsec) for s in stacks])
    # 90 % within 1.1", 99 % within 1.6" (binomial se 1.5 % and 0.5 % at n = 400).
    assert abs(np.mean(r <= 1.1) - 0.90) < 0.05
    assert np.mean(r <= 1.6) > 0.97


def test_detections_per_stack_and_overlap_fraction(stacks):
    n = np.array([s.det_region_id.size for s in stacks])
    assert 15 <= np.median(n) <= 32
    # Spec Fig. 1: ~3 % of stacks with 1, 2 and 3 detections each.
    assert 0.02 < np.mean((n >= 1) & (n <= 3)) < 0.20
    shared = np.mean([s.n_in_field > 1 for s in stacks])
    assert abs(shared - 0.3) < 0.08


def test_density_rises_towards_the_plane(stacks):
    b = np.abs([s.glat_deg for s in stacks])
    dens = np.array([s.gaia_density for s in stacks])
    assert np.median(dens[b > 40]) < 3.0
    if np.any(b < 3):
        assert np.median(dens[b < 3]) > 40.0
    wise = np.array([s.wise_density for s in stacks])
    assert np.median(wise[b > 40]) < 3.0


def test_stated_versus_true_errors_per_regime(stacks):
    seen = set()
    for s in stacks:
        if s.det_region_id.size == 0:
            continue
        seen.add(s.regime)
        stated = s.det_r0_arcsec / SIGMA_TO_R95
        true = s.det_sigma_true_major
        if s.regime == "csc":
            np.testing.assert_allclose(true**2, stated**2 + 0.12**2, rtol=1e-12)
        elif s.regime == "nofloor":
            np.testing.assert_allclose(true**2, stated**2 + 0.12**2 + s.regime_value**2,
                                       rtol=1e-12)
        elif s.regime == "inflated":
            assert 1.5 <= s.regime_value <= 3.0
            np.testing.assert_allclose(true**2, (stated / s.regime_value)**2 + 0.12**2,
                                       rtol=1e-12)
        else:
            assert np.all(true > stated)
    assert seen == set(REGIMES)


def test_detections_scatter_as_their_true_errors_around_truth_minus_shift(stacks):
    z = []
    for s in stacks:
        if s.det_region_id.size == 0:
            continue
        xd, yd = sky_to_tangent(s.det_ra_deg, s.det_dec_deg, s.ra_stack_deg, s.dec_stack_deg)
        xt, yt = sky_to_tangent(s.det_true_ra_deg, s.det_true_dec_deg, s.ra_stack_deg,
                                s.dec_stack_deg)
        # circularised true sigma per axis is enough for a pull check
        sig = np.sqrt(s.det_sigma_true_major * s.det_sigma_true_minor)
        z.append((xd + s.d_xi_arcsec - xt) / sig)
        z.append((yd + s.d_eta_arcsec - yt) / sig)
    z = np.concatenate(z)
    assert abs(np.mean(z)) < 5 / math.sqrt(z.size)
    assert 0.9 < np.std(z) < 1.1


def test_overlapping_stacks_share_sources_and_gaia(stacks):
    by_field = {}
    for s in stacks:
        by_field.setdefault(s.field_id, []).append(s)
    n_shared = 0
    for group in by_field.values():
        if len(group) < 2:
            continue
        a, b = group[0], group[1]
        common, ia, ib = np.intersect1d(a.det_key, b.det_key, return_indices=True)
        ok = common >= 0
        ia, ib = ia[ok], ib[ok]
        n_shared += ia.size
        # Same sky source, same Gaia counterpart, same Gaia source_id in both cones.
        np.testing.assert_array_equal(a.det_gaia_id[ia], b.det_gaia_id[ib])
        assert set(a.gaia_source_id) & set(b.gaia_source_id)
        # True positions differ only by proper motion over the epoch difference (< 0.3"/yr).
        sep = angular_separation_arcsec(a.det_true_ra_deg[ia], a.det_true_dec_deg[ia],
                                        b.det_true_ra_deg[ib], b.det_true_dec_deg[ib])
        assert np.all(sep <= 0.31 * abs(a.epoch_yr - b.epoch_yr) + 1e-6)
    assert n_shared > 50


def test_gaia_counterparts_at_2016_move_to_the_stack_epoch(stacks):
    for s in stacks[:60]:
        has = s.det_gaia_id >= 0
        if not has.any():
            continue
        row = {sid: i for i, sid in enumerate(s.gaia_source_id)}
        idx = np.array([row[g] for g in s.det_gaia_id[has]])
        ra, dec = propagate(s.gaia_ra_deg[idx], s.gaia_dec_deg[idx], s.gaia_pmra[idx],
                            s.gaia_pmdec[idx], s.epoch_yr - 2016.0)
        sep = angular_separation_arcsec(ra, dec, s.det_true_ra_deg[has], s.det_true_dec_deg[has])
        assert np.all(sep < 1e-6)


def test_propagation_against_astropy():
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time

    ra, dec = np.array([10.0, 200.0, 45.0]), np.array([20.0, -89.99, 85.0])
    pmra, pmdec = np.array([300.0, -150.0, 80.0]), np.array([-200.0, 120.0, 60.0])
    ours = propagate(ra, dec, pmra, pmdec, -15.0)
    c = SkyCoord(ra * u.deg, dec * u.deg, pm_ra_cosdec=pmra * u.mas / u.yr,
                 pm_dec=pmdec * u.mas / u.yr, obstime=Time("J2016.0"),
                 distance=np.full(3, 1000.0) * u.pc)  # radial velocity 0
    ref = c.apply_space_motion(new_obstime=Time("J2001.0"))
    sep = angular_separation_arcsec(ours[0], ours[1], ref.ra.deg, ref.dec.deg)
    assert np.all(sep < 1e-4)


def test_config_validation():
    with pytest.raises(ValueError, match="overlap_frac"):
        PopConfig(overlap_frac=1.5)
    with pytest.raises(ValueError, match="regime_weights"):
        PopConfig(regime_weights=(1.0, 0.0))
