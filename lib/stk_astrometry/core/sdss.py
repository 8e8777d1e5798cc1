"""SDSS as a reference catalog: great-circle coordinates and the per-object error model.  Pure.

From the SDSS "Astrometry quality overview" (seed 003; Pier et al. 2003, AJ 125, 1559):

- SDSS calibrates each frame in the great-circle coordinates (mu, nu) of its scan; a scan
  great circle has its ascending node at RA ``node`` and inclination ``incl`` on the J2000
  equator (``NODE``/``INCL`` of the tsField file), and

      tan(a - node) = [sin(mu - node) cos(nu) cos(i) - sin(nu) sin(i)] / [cos(mu - node) cos(nu)]
      sin(d)        =  sin(mu - node) cos(nu) sin(i) + sin(nu) cos(i)

  (:func:`great_circle_to_j2000`; the quadrant of ``a`` from atan2);
- the error of one object's position in mu (nu) is the frame's calibration error ``muErr``
  (``nuErr``), arcsec, added in quadrature to the centroid error ``objc_rowcErr``
  (``objc_colcErr``) times the focal-plane scale 0.396"/pixel (:func:`great_circle_errors`);
- calibrations against UCAC are good to ~45 mas rms per coordinate plus up to 30 mas
  systematic, against Tycho-2 ~75 mas plus ~20 mas: :data:`DEFAULT_CALIBRATION_ERROR` takes
  the worse, in quadrature, for tables that do not carry muErr/nuErr.

The mu/nu error ellipse is turned into the per-axis (RA cos Dec, Dec) errors the pairs file
holds by the local rotation between the two frames (:func:`radec_errors`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PIXEL_SCALE", "DEFAULT_CALIBRATION_ERROR", "great_circle_to_j2000",
           "great_circle_errors", "radec_errors"]

#: SDSS focal-plane scale, arcsec per pixel.
PIXEL_SCALE = 0.396
#: Calibration error per coordinate when the table has no muErr/nuErr, arcsec:
#: sqrt(0.075^2 + 0.020^2), the Tycho-2 calibrations' rms and systematic (the larger budget).
DEFAULT_CALIBRATION_ERROR = float(np.hypot(0.075, 0.020))


def great_circle_to_j2000(mu_deg, nu_deg, node_deg, incl_deg):
    """J2000 (RA, Dec), deg, of SDSS great-circle coordinates (seed 003's formulas)."""
    mu = np.radians(np.asarray(mu_deg, dtype=float))
    nu = np.radians(np.asarray(nu_deg, dtype=float))
    node = np.radians(np.asarray(node_deg, dtype=float))
    incl = np.radians(np.asarray(incl_deg, dtype=float))
    dmu = mu - node
    y = np.sin(dmu) * np.cos(nu) * np.cos(incl) - np.sin(nu) * np.sin(incl)
    x = np.cos(dmu) * np.cos(nu)
    sin_dec = np.sin(dmu) * np.cos(nu) * np.sin(incl) + np.sin(nu) * np.cos(incl)
    ra = np.degrees(node + np.arctan2(y, x)) % 360.0
    dec = np.degrees(np.arcsin(np.clip(sin_dec, -1.0, 1.0)))
    return ra, dec


def great_circle_errors(mu_err_arcsec, nu_err_arcsec, rowc_err_pix, colc_err_pix):
    """1-sigma errors along mu and nu, arcsec: calibration (+) centroid x 0.396"/pixel.

    NaN calibration errors count as :data:`DEFAULT_CALIBRATION_ERROR`; NaN centroid errors
    stay NaN (the object is unusable).
    """
    mu_cal = np.asarray(mu_err_arcsec, dtype=float)
    nu_cal = np.asarray(nu_err_arcsec, dtype=float)
    mu_cal = np.where(np.isfinite(mu_cal), mu_cal, DEFAULT_CALIBRATION_ERROR)
    nu_cal = np.where(np.isfinite(nu_cal), nu_cal, DEFAULT_CALIBRATION_ERROR)
    s_mu = np.hypot(mu_cal, PIXEL_SCALE * np.asarray(rowc_err_pix, dtype=float))
    s_nu = np.hypot(nu_cal, PIXEL_SCALE * np.asarray(colc_err_pix, dtype=float))
    return s_mu, s_nu


def radec_errors(mu_deg, nu_deg, node_deg, incl_deg, sigma_mu, sigma_nu):
    """Per-axis errors (RA cos Dec, Dec) and their correlation from (mu, nu) errors.

    The directions of increasing mu and nu at the object are rotated into the equatorial
    frame (the same rotation as :func:`great_circle_to_j2000`) and projected on east and
    north: ``C = J diag(s_mu^2, s_nu^2) J^T``.

    Returns
    -------
    sigma_ra, sigma_dec : ndarray
        arcsec (``sigma_ra`` along RA cos Dec).
    corr : ndarray
        Correlation coefficient of the two.
    """
    mu = np.radians(np.asarray(mu_deg, dtype=float))
    nu = np.radians(np.asarray(nu_deg, dtype=float))
    node = np.radians(np.asarray(node_deg, dtype=float))
    incl = np.radians(np.asarray(incl_deg, dtype=float))
    m = mu - node
    ci, si = np.cos(incl), np.sin(incl)

    def to_eq(vx, vy, vz):        # great-circle frame -> equatorial frame (node on x)
        return vx, vy * ci - vz * si, vy * si + vz * ci

    e_mu = to_eq(-np.sin(m), np.cos(m), np.zeros_like(m))
    e_nu = to_eq(-np.cos(m) * np.sin(nu), -np.sin(m) * np.sin(nu), np.cos(nu))
    ra, dec = great_circle_to_j2000(mu_deg, nu_deg, node_deg, incl_deg)
    a = np.radians(ra) - node
    d = np.radians(dec)
    east = (-np.sin(a), np.cos(a), np.zeros_like(a))
    north = (-np.cos(a) * np.sin(d), -np.sin(a) * np.sin(d), np.cos(d))

    def dot(u, v):
        return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]

    j = np.array([[dot(e_mu, east), dot(e_nu, east)], [dot(e_mu, north), dot(e_nu, north)]])
    s2 = np.array([np.asarray(sigma_mu, dtype=float) ** 2,
                   np.asarray(sigma_nu, dtype=float) ** 2])
    c_ee = j[0, 0] ** 2 * s2[0] + j[0, 1] ** 2 * s2[1]
    c_nn = j[1, 0] ** 2 * s2[0] + j[1, 1] ** 2 * s2[1]
    c_en = j[0, 0] * j[1, 0] * s2[0] + j[0, 1] * j[1, 1] * s2[1]
    s_e, s_n = np.sqrt(c_ee), np.sqrt(c_nn)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(s_e * s_n > 0, c_en / (s_e * s_n), 0.0)
    return s_e, s_n, corr
