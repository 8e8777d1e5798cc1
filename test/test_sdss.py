"""SDSS great-circle coordinates and error model (core/sdss.py) against seed 003's formulas."""

import math

import numpy as np
import pytest
from astropy.coordinates.matrix_utilities import rotation_matrix

from stk_astrometry.core import sdss


def _seed(mu, nu, node, incl):
    """Seed 003 literally, one object at a time (deg):
    tan(a - a0) = [sin(mu - a0) cos nu cos i - sin nu sin i] / [cos(mu - a0) cos nu]
    sin d       =  sin(mu - a0) cos nu sin i + sin nu cos i
    """
    r = math.radians
    num = math.sin(r(mu - node)) * math.cos(r(nu)) * math.cos(r(incl)) \
        - math.sin(r(nu)) * math.sin(r(incl))
    den = math.cos(r(mu - node)) * math.cos(r(nu))
    a = math.degrees(math.atan(num / den))
    if den < 0:                      # tan's quadrant: the seed leaves it to the reader
        a += 180.0
    ra = (node + a) % 360.0
    dec = math.degrees(math.asin(math.sin(r(mu - node)) * math.cos(r(nu)) * math.sin(r(incl))
                                 + math.sin(r(nu)) * math.cos(r(incl))))
    return ra, dec


@pytest.mark.parametrize("mu, nu, node, incl, ra, dec", [
    # worked by hand
    (185.0, 0.0, 95.0, 30.0, 185.0, 30.0),     # 90 deg along the scan: on its highest point
    (95.0, 0.0, 95.0, 30.0, 95.0, 0.0),        # the node itself
    (5.0, 0.0, 95.0, 30.0, 5.0, -30.0),        # 90 deg before the node: lowest point
    (95.0, 10.0, 95.0, 30.0, 95.0 - math.degrees(math.atan(
        math.sin(math.radians(10)) * 0.5 / math.cos(math.radians(10)))),
     math.degrees(math.asin(math.sin(math.radians(10)) * math.cos(math.radians(30))))),
    (40.0, -1.25, 95.0, 0.0, 40.0, -1.25),     # Stripe 82: incl = 0, (mu, nu) = (ra, dec)
])
def test_worked_values(mu, nu, node, incl, ra, dec):
    got_ra, got_dec = sdss.great_circle_to_j2000(mu, nu, node, incl)
    assert float(got_ra) == pytest.approx(ra, abs=1e-10)
    assert float(got_dec) == pytest.approx(dec, abs=1e-10)
    s_ra, s_dec = _seed(mu, nu, node, incl)
    assert float(got_ra) == pytest.approx(s_ra, abs=1e-10)
    assert float(got_dec) == pytest.approx(s_dec, abs=1e-10)


def test_against_the_seed_and_a_rotation_matrix_everywhere():
    rng = np.random.default_rng(2)
    mu = rng.uniform(0, 360, 500)
    nu = rng.uniform(-2.5, 2.5, 500)          # scans are +-1.3 deg wide
    node = 95.0
    incl = rng.uniform(-60, 60, 500)
    ra, dec = sdss.great_circle_to_j2000(mu, nu, node, incl)
    for i in range(0, 500, 25):
        s_ra, s_dec = _seed(mu[i], nu[i], node, incl[i])
        assert ra[i] == pytest.approx(s_ra, abs=1e-9)
        assert dec[i] == pytest.approx(s_dec, abs=1e-9)
    # independent: rotate the great-circle unit vector about the node's axis with astropy
    for i in range(0, 500, 50):
        m, n_ = np.radians(mu[i] - node), np.radians(nu[i])
        v = np.array([np.cos(m) * np.cos(n_), np.sin(m) * np.cos(n_), np.sin(n_)])
        w = np.asarray(rotation_matrix(-incl[i], "x")) @ v
        assert (node + np.degrees(np.arctan2(w[1], w[0]))) % 360 == pytest.approx(ra[i],
                                                                                 abs=1e-9)
        assert np.degrees(np.arcsin(w[2])) == pytest.approx(dec[i], abs=1e-9)


def test_error_model_in_quadrature():
    s_mu, s_nu = sdss.great_circle_errors([0.045, np.nan], [0.030, np.nan], [0.1, 0.2],
                                          [0.25, 0.2])
    assert s_mu[0] == pytest.approx(math.hypot(0.045, 0.0396))
    assert s_nu[0] == pytest.approx(math.hypot(0.030, 0.099))
    assert s_mu[1] == pytest.approx(math.hypot(sdss.DEFAULT_CALIBRATION_ERROR, 0.0792))
    assert sdss.DEFAULT_CALIBRATION_ERROR == pytest.approx(math.hypot(0.075, 0.020))


def test_errors_rotate_with_the_scan():
    # incl 0: mu is RA, nu is Dec
    e, n, c = sdss.radec_errors([40.0], [0.5], 95.0, 0.0, [0.05], [0.08])
    assert e[0] == pytest.approx(0.05) and n[0] == pytest.approx(0.08) and abs(c[0]) < 1e-12
    # incl 90 at the node: the scan runs north, mu is Dec
    e, n, c = sdss.radec_errors([95.0], [0.0], 95.0, 90.0, [0.05], [0.08])
    assert e[0] == pytest.approx(0.08) and n[0] == pytest.approx(0.05)
    # in general the rotation keeps the total and gives a correlation
    e, n, c = sdss.radec_errors([120.0], [0.3], 95.0, 35.0, [0.05], [0.08])
    assert e[0] ** 2 + n[0] ** 2 == pytest.approx(0.05**2 + 0.08**2)
    assert 0 < abs(c[0]) < 1
    # ... and agrees with a numerical Jacobian of the conversion
    eps = 1e-6
    r0, d0 = sdss.great_circle_to_j2000(120.0, 0.3, 95.0, 35.0)
    r1, d1 = sdss.great_circle_to_j2000(120.0 + eps, 0.3, 95.0, 35.0)
    r2, d2 = sdss.great_circle_to_j2000(120.0, 0.3 + eps, 95.0, 35.0)
    cosd = math.cos(math.radians(float(d0)))
    j = np.array([[(r1 - r0) * cosd, (r2 - r0) * cosd], [d1 - d0, d2 - d0]]) / eps
    j = j / math.cos(math.radians(0.3)) ** np.array([[1, 0], [1, 0]])   # d(mu) on sky: cos nu
    cov = j @ np.diag([0.05**2, 0.08**2]) @ j.T
    assert math.sqrt(cov[0, 0]) == pytest.approx(e[0], rel=1e-5)
    assert math.sqrt(cov[1, 1]) == pytest.approx(n[0], rel=1e-5)
