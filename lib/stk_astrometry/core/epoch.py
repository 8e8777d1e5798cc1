"""Reference-catalog positions at the stack's epoch: proper-motion propagation.  Pure.

Gaia publishes positions at its reference epoch (DR3: J2016.0, DR2: J2015.5); a CSC stack was
observed between 1999 and 2024, up to 16 years away, and 10 mas/yr over 16 years is 0.16",
as large as a typical stack shift.  :func:`propagate` moves each source with its proper
motion to the stack's epoch through ERFA's ``pmsafe`` (the routine astropy's
``SkyCoord.apply_space_motion`` calls), vectorised; :func:`position_sigma` gives the
position error at the stack's epoch, where a source without a proper motion stays put and
its error grows by a proper-motion dispersion times the epoch difference.
:class:`Propagation` is :func:`propagate` on demand: the rows asked for, the same numbers, and
a bound on every row's displacement (the matching moves only the rows a result can read).

Epochs are Julian epochs (``J2016.0`` = 2016.0): TT/TDB Julian years of 365.25 days from
J2000.0.  No I/O here: formats/catalogs.py finds the epochs, api.py wires them.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["DEFAULT_PM_DISPERSION", "GAIA_EPOCHS", "Propagation", "propagate", "position_sigma",
           "julian_epoch_from_mjd", "julian_epoch_from_isot"]

#: Proper-motion dispersion (mas/yr, per coordinate) assumed for a reference source without a
#: proper motion.  Gaia's two-parameter solutions are faint (mostly G > 19.5) and so mostly
#: distant: halo and thick-disc stars several kpc away (a few mas/yr) and galaxies/QSOs (0).
#: 5 mas/yr per coordinate is a round estimate of the spread of faint field stars' proper
#: motions away from the Galactic plane (stk_simpop draws 6); it is a judgement, not a fit to
#: Gaia's two-parameter sources, and the ``pm_disp`` parameter changes it.
DEFAULT_PM_DISPERSION = 5.0

#: Reference epochs of the Gaia releases (Julian years).
GAIA_EPOCHS = {"DR1": 2015.0, "DR2": 2015.5, "EDR3": 2016.0, "DR3": 2016.0}

_MAS_TO_RAD = np.pi / (180.0 * 3600.0 * 1000.0)


def julian_epoch_from_mjd(mjd):
    """Julian epoch (years) of a Modified Julian Date (TT).  Pure."""
    import erfa

    return erfa.epj(2400000.5, np.asarray(mjd, dtype=float))


def julian_epoch_from_isot(text):
    """Julian epoch of an ISO date/time such as a FITS ``DATE-OBS`` (TT, as CXC writes it).

    Raises ValueError for text that is not an ISO date.
    """
    from astropy.time import Time

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # astropy's ErfaWarning for "dubious year" etc.
        return float(Time(str(text).strip(), format="isot", scale="tt").jyear)


def propagate(ra_deg, dec_deg, pmra_masyr, pmdec_masyr, ref_epoch, epoch, *, parallax_mas=None):
    """Positions at ``epoch`` from positions and proper motions at ``ref_epoch``.

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Positions at ``ref_epoch``, deg (ICRS).
    pmra_masyr, pmdec_masyr : array_like
        Proper motions, mas/yr; ``pmra`` is mu_alpha* = dRA/dt cos(Dec) (Gaia's ``pmra``).
        NaN (null) where unknown: such a source is not moved.
    ref_epoch : float or array_like
        The catalog's reference epoch (Julian year), one value or one per source.
    epoch : float
        The epoch wanted (Julian year).
    parallax_mas : array_like, optional
        Parallaxes, mas; only values > 0 are used (others: no distance, as astropy does for
        a coordinate without distance).  Space motion, not parallactic displacement.

    Returns
    -------
    ra, dec : ndarray
        Positions at ``epoch``, deg (RA in [0, 360)); rows with NaN or out-of-range
        positions are returned unchanged (the matching filters drop them).
    moved : ndarray of bool
        True where the source had a proper motion (and a position) and was propagated.

    Notes
    -----
    ``erfa.pmsafe`` with zero radial velocity; for a source without a usable parallax ERFA
    substitutes a minimum one and says so in its status ("distance overridden"), which is
    expected and not reported (ERFA's ufunc is called directly; an error status, which ERFA
    says should not occur, raises its ``ErfaError``).  Sources across a pole come out on the far side
    with RA changed by 180 deg, as they should.  :class:`Propagation` does the same row by
    row, on demand.
    """
    motion = Propagation(ra_deg, dec_deg, pmra_masyr, pmdec_masyr, ref_epoch, epoch,
                         parallax_mas=parallax_mas)
    out_ra = motion.ra.copy()
    out_dec = motion.dec.copy()
    rows = np.flatnonzero(motion.moved)
    if rows.size:
        out_ra[rows], out_dec[rows] = motion.move(rows)
    return out_ra, out_dec, motion.moved


def _per_row(values, shape):
    """``values`` as float, one per row of ``shape``: broadcast (a read-only view) only when it
    is not one value a row already (issue 11: ~3 us a call).  The callers only read it."""
    v = np.asarray(values, dtype=float)
    return v if v.shape == shape else np.broadcast_to(v, shape)


class Propagation:
    """:func:`propagate`, one row at a time when asked: the positions at ``epoch`` of the
    rows a result depends on, and for every row a bound on how far it moves (issue 11: a
    stack's match reads ~a quarter of its ~4,000 Gaia rows at the new epoch; ``pmsafe`` on
    every row was ~6 % of a stack's CPU).  The parameters are :func:`propagate`'s.

    Attributes
    ----------
    ra, dec : ndarray
        The positions given (at their reference epochs), deg.
    moved : ndarray of bool
        :func:`propagate`'s ``moved``: the rows :meth:`move` moves.
    bound_arcsec : ndarray
        Per row, more than the distance between its position given and its position at
        ``epoch`` (0 where not moved): ``2 mu |dt| + 1 mas`` with ``mu`` the total proper
        motion.  ``pmsafe`` with zero radial velocity moves a source along a straight line
        in space, which subtends at most ``mu |dt|`` (atan(mu t) <= mu t); its light-time
        and relativistic terms change that by parts in 1e5 (measured: at most 1.00003 mu |dt|
        on 2e6 random rows, |mu| up to 3e4 mas/yr, 1990-2060, at the poles, with and without
        parallaxes), and the 1 mas covers the rounding of the conversions (1e-10").  The
        factor 2 is margin, not physics.
    """

    def __init__(self, ra_deg, dec_deg, pmra_masyr, pmdec_masyr, ref_epoch, epoch, *,
                 parallax_mas=None):
        ra = np.atleast_1d(np.asarray(ra_deg, dtype=float))
        dec = np.atleast_1d(np.asarray(dec_deg, dtype=float))

        pmra, pmdec, ep1 = (_per_row(v, ra.shape) for v in (pmra_masyr, pmdec_masyr, ref_epoch))
        # no cos(dec) > 0 test: every |dec| <= 90 has one (radians(90) is pi/2 rounded down,
        # whose cosine is 6.1e-17; test_epoch checks the 2**22 doubles next to +-90), and
        # :meth:`move` takes the cosine of the rows it moves only (issue 11: ~40 us a stack)
        with np.errstate(invalid="ignore"):
            moved = ((ra >= 0) & (ra <= 360) & (np.abs(dec) <= 90) & np.isfinite(pmra)
                     & np.isfinite(pmdec) & np.isfinite(ep1))
        if not np.isfinite(epoch):
            raise ValueError(f"epoch must be finite, got {epoch}")
        self.ra, self.dec, self.moved = ra, dec, moved
        self._pm = (pmra, pmdec, ep1, float(epoch))
        self._parallax = None if parallax_mas is None else _per_row(parallax_mas, ra.shape)
        # 2 mu |dt| / 1000 + 1e-3, 0 where not moved: the same operations in the same order,
        # in place (x * y is y * x to the bit)
        with np.errstate(invalid="ignore"):
            reach = np.hypot(pmra, pmdec)
            reach *= 2.0
            reach *= np.abs(float(epoch) - ep1)
            reach /= 1000.0
            reach += 1e-3
        reach[~moved] = 0.0
        self.bound_arcsec = reach

    def move(self, rows):
        """Positions at ``epoch`` (deg: ra in [0, 360), dec) of ``rows`` (indices of
        rows with ``moved`` True), the numbers :func:`propagate` gives them."""
        import erfa

        rows = np.asarray(rows, dtype=np.int64)
        pmra, pmdec, ep1, epoch = self._pm
        ep1a, ep1b = erfa.epj2jd(ep1[rows])
        ep2a, ep2b = erfa.epj2jd(epoch)
        if self._parallax is None:
            px = 0.0                              # every row: no distance (broadcast by ERFA)
        else:
            plx = self._parallax[rows]
            with np.errstate(invalid="ignore"):
                px = np.where(np.isfinite(plx) & (plx > 0), plx / 1000.0, 0.0)
        dec = np.radians(self.dec[rows])
        args = (np.radians(self.ra[rows]), dec,
                pmra[rows] * _MAS_TO_RAD / np.cos(dec), pmdec[rows] * _MAS_TO_RAD,
                px, 0.0, ep1a, ep1b, ep2a, ep2b)
        # ERFA's ufunc itself, without the wrapper's status report (issue 11: ~0.1 ms a stack
        # to word a warning that is silenced here): the same routine, the same numbers
        ra2, dec2, *_, status = erfa.ufunc.pmsafe(*args)
        if np.any(status < 0):
            with warnings.catch_warnings():                 # ERFA's own error, as it words it
                warnings.simplefilter("ignore", erfa.ErfaWarning)
                erfa.pmsafe(*args)
        return np.degrees(ra2) % 360.0, np.degrees(dec2)


def position_sigma(dt_yr, moved, *, pos_err_mas=None, pm_err_masyr=None,
                   pm_disp_masyr=DEFAULT_PM_DISPERSION):
    """1-sigma position error per coordinate at the stack's epoch, arcsec.  Pure.

    ``sqrt(pos_err^2 + (s dt)^2)`` with ``s`` the proper motion's error for a propagated
    source and ``pm_disp_masyr`` for one without a proper motion.

    Parameters
    ----------
    dt_yr : float or array_like
        Stack epoch minus reference epoch, years.
    moved : array_like of bool
        True where the source was propagated with its own proper motion.
    pos_err_mas, pm_err_masyr : array_like, optional
        The catalog's position error at its epoch (mas) and proper-motion error (mas/yr) of
        this coordinate; missing/NaN counts as 0.
    pm_disp_masyr : float
        Proper-motion dispersion for sources without a proper motion.
    """
    moved = np.asarray(moved, dtype=bool)
    n = moved.shape

    def zero_nan(values):
        if values is None:
            return np.zeros(n)
        v = _per_row(values, n)
        return np.where(np.isfinite(v), v, 0.0)

    pos = zero_nan(pos_err_mas)
    pm_err = zero_nan(pm_err_masyr)
    rate = np.where(moved, pm_err, float(pm_disp_masyr))
    dt = _per_row(dt_yr, n)
    dt = np.where(np.isfinite(dt), dt, 0.0)
    return np.hypot(pos, rate * dt) / 1000.0
