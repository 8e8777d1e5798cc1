"""Gnomonic (tangent-plane) projection and its inverse.

Owns the conversion between sky coordinates (RA, Dec in degrees) and the
standard coordinates (xi, eta) of a tangent point, in arcseconds: spec Eq. (4)
and Eq. (5), which are the TAN projection of Calabretta & Greisen (2002),
A&A 395, 1077, §5.1.3, with xi towards increasing RA (east) and eta towards
north.  Pure numpy; no file I/O here.

The RA difference enters only through sin/cos of ``ra - ra0``, so a field
straddling RA = 0/360 needs no special handling (the spec's "+360 for
RA < 12h" trick, spec-notes item 9, is unnecessary).  The inverse uses atan2
for both angles, which stays accurate near the poles where arcsin loses
precision.
"""

import numpy as np

ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0

__all__ = ["sky_to_tangent", "tangent_to_sky", "shift_sky", "ARCSEC_PER_RAD"]


def sky_to_tangent(ra_deg, dec_deg, ra0_deg, dec0_deg):
    """Project sky positions onto the plane tangent at (ra0, dec0).

    Spec Eq. (4)::

        xi  = cos d sin(a - a0) / D
        eta = (sin d cos d0 - cos d sin d0 cos(a - a0)) / D
        D   = sin d sin d0 + cos d cos d0 cos(a - a0)

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Sky positions, degrees.
    ra0_deg, dec0_deg : float or array_like
        Tangent point, degrees.

    Returns
    -------
    xi_arcsec, eta_arcsec : ndarray
        Standard coordinates in arcseconds.  Positions 90 degrees or more from
        the tangent point (D <= 0) have no projection and come back as NaN.
    """
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    ra0 = np.radians(np.asarray(ra0_deg, dtype=float))
    dec0 = np.radians(np.asarray(dec0_deg, dtype=float))
    dra = ra - ra0
    cos_dec = np.cos(dec)
    sin_dec = np.sin(dec)
    cos_dec0 = np.cos(dec0)
    sin_dec0 = np.sin(dec0)
    cos_dra = np.cos(dra)
    denom = sin_dec * sin_dec0 + cos_dec * cos_dec0 * cos_dra
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = cos_dec * np.sin(dra) / denom
        eta = (sin_dec * cos_dec0 - cos_dec * sin_dec0 * cos_dra) / denom
    bad = ~(denom > 0)
    if np.any(bad):
        xi = np.where(bad, np.nan, xi)
        eta = np.where(bad, np.nan, eta)
    return xi * ARCSEC_PER_RAD, eta * ARCSEC_PER_RAD


def tangent_to_sky(xi_arcsec, eta_arcsec, ra0_deg, dec0_deg):
    """Map standard coordinates back to the sky: the inverse of spec Eq. (4).

    Spec Eq. (5), written with atan2 so that it is exact in every quadrant::

        a = a0 + atan2(xi, cos d0 - eta sin d0)
        d = atan2(sin d0 + eta cos d0, hypot(xi, cos d0 - eta sin d0))

    Parameters
    ----------
    xi_arcsec, eta_arcsec : array_like
        Standard coordinates in arcseconds.
    ra0_deg, dec0_deg : float or array_like
        Tangent point, degrees.

    Returns
    -------
    ra_deg, dec_deg : ndarray
        RA in [0, 360) and Dec in [-90, 90], degrees.
    """
    xi = np.asarray(xi_arcsec, dtype=float) / ARCSEC_PER_RAD
    eta = np.asarray(eta_arcsec, dtype=float) / ARCSEC_PER_RAD
    ra0 = np.radians(np.asarray(ra0_deg, dtype=float))
    dec0 = np.radians(np.asarray(dec0_deg, dtype=float))
    cos_dec0 = np.cos(dec0)
    sin_dec0 = np.sin(dec0)
    x = cos_dec0 - eta * sin_dec0
    ra = ra0 + np.arctan2(xi, x)
    dec = np.arctan2(sin_dec0 + eta * cos_dec0, np.hypot(xi, x))
    return np.mod(np.degrees(ra), 360.0), np.degrees(dec)


def shift_sky(ra_deg, dec_deg, d_xi_arcsec, d_eta_arcsec, ra0_deg, dec0_deg):
    """Apply a tangent-plane translation to sky positions.

    Projects onto the plane tangent at (ra0, dec0) (the stack's tangent point),
    adds (d_xi, d_eta) and projects back: the sign convention of the STKXFM
    transform (corrected xi = xi + d_xi).  Use negative shifts for the inverse.

    Returns
    -------
    ra_deg, dec_deg : ndarray
    """
    xi, eta = sky_to_tangent(ra_deg, dec_deg, ra0_deg, dec0_deg)
    return tangent_to_sky(xi + d_xi_arcsec, eta + d_eta_arcsec, ra0_deg, dec0_deg)
