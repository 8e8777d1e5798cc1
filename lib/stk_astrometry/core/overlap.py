"""Between-stack agreement of sources detected in overlapping stacks (spec §6.2, Fig. 4).  Pure.

A source that falls in two or three overlapping stacks is detected in each, with independent
errors and each stack's own astrometric shift.  Before the correction the positions of the
same source in two stacks differ by the two shifts' difference plus noise; after it, by the
fits' errors plus noise.  §6 asks that these between-stack differences shrink, "in particular
for the outlying cases".  This module pairs the detections of each source across stacks and
classifies every pair; it knows nothing of files.

Definitions (arcsec)
--------------------
- ``before``: great-circle separation of the two detections as catalogued;
  ``after``: the same for the corrected positions.
- ``combined_r95``: ``sqrt(r95_a^2 + r95_b^2)``, the two detections' 95 % error radii in
  quadrature (CSC's ``err_ellipse_r0``): a pair whose ``before`` exceeds it differs by
  more than its errors explain (the "outlying cases").
- A pair *improved* when ``after < before - tol``, *worsened* when ``after > before + tol``,
  else it *stayed*; ``tol`` is given per pair (e.g. the two fitted shifts' 1-sigma errors in
  quadrature: a change smaller than that is not a statistically significant one) and is 0
  by default.
"""

from dataclasses import dataclass

import numpy as np

__all__ = [
    "IMPROVED",
    "STAYED",
    "WORSENED",
    "OverlapPairs",
    "OverlapSummary",
    "angular_separation_arcsec",
    "overlap_pairs",
    "summarise_overlap",
]

IMPROVED, STAYED, WORSENED = 1, 0, -1


def angular_separation_arcsec(ra1_deg, dec1_deg, ra2_deg, dec2_deg):
    """Great-circle separation (Vincenty's formula, stable at all separations), arcsec."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float))
                            for v in (ra1_deg, dec1_deg, ra2_deg, dec2_deg))
    dra = ra2 - ra1
    s1, c1, s2, c2 = np.sin(dec1), np.cos(dec1), np.sin(dec2), np.cos(dec2)
    num = np.hypot(c2 * np.sin(dra), c1 * s2 - s1 * c2 * np.cos(dra))
    den = s1 * s2 + c1 * c2 * np.cos(dra)
    return np.degrees(np.arctan2(num, den)) * 3600.0


@dataclass(frozen=True)
class OverlapPairs:
    """One row per pair of detections of the same source in two different stacks.

    Arrays of equal length; ``index_a``/``index_b`` point into the arrays given to
    :func:`overlap_pairs` (``index_a < index_b``).
    """

    key: np.ndarray            #: the source key (master source id) the two detections share
    index_a: np.ndarray
    index_b: np.ndarray
    before_arcsec: np.ndarray
    after_arcsec: np.ndarray
    combined_r95_arcsec: np.ndarray
    tol_arcsec: np.ndarray
    status: np.ndarray         #: int8: IMPROVED (1), STAYED (0), WORSENED (-1)

    @property
    def outlying(self):
        """Pairs whose before-difference exceeds their combined 95 % error."""
        return self.before_arcsec > self.combined_r95_arcsec


@dataclass(frozen=True)
class OverlapSummary:
    """Counts and fractions of improved / stayed / worsened pairs (NaN fractions when none)."""

    n_pairs: int
    n_improved: int
    n_stayed: int
    n_worsened: int
    frac_improved: float
    frac_stayed: float
    frac_worsened: float
    median_before_arcsec: float
    median_after_arcsec: float


def overlap_pairs(key, stack, ra_before_deg, dec_before_deg, ra_after_deg, dec_after_deg,
                  r95_arcsec, *, tol_arcsec=0.0):
    """Pair the detections of each source across stacks and classify every pair.

    Parameters
    ----------
    key : array_like of int
        Source identity per detection (CSC master source id; the simulation's sky source);
        negative: unknown, never paired.
    stack : array_like
        Stack of each detection; two detections of one key in the same stack are not paired.
    ra_before_deg, dec_before_deg, ra_after_deg, dec_after_deg : array_like
        Catalogued and corrected positions.
    r95_arcsec : array_like
        Each detection's 95 % error radius (CSC ``err_ellipse_r0``).
    tol_arcsec : float or array_like
        Per-detection tolerance; a pair's tolerance is the two in quadrature (a scalar is used
        as the pair's tolerance directly).

    Returns
    -------
    OverlapPairs
    """
    key = np.asarray(key).astype(np.int64)
    stack = np.asarray(stack)
    n = key.size
    arrays = [np.asarray(v, dtype=float) for v in
              (ra_before_deg, dec_before_deg, ra_after_deg, dec_after_deg, r95_arcsec)]
    for a in arrays:
        if a.shape != (n,):
            raise ValueError("every per-detection array must have the length of key")
    scalar_tol = np.ndim(tol_arcsec) == 0
    tol = np.asarray(tol_arcsec, dtype=float)
    if not scalar_tol and tol.shape != (n,):
        raise ValueError("tol_arcsec must be a scalar or one value per detection")

    known = np.flatnonzero(key >= 0)
    order = known[np.argsort(key[known], kind="stable")]
    ks = key[order]
    ia_list, ib_list = [], []
    # Groups are small (2-3 stacks, rarely more): compare each row with the next j rows.
    j = 1
    while j < order.size:
        same = ks[j:] == ks[:-j]
        if not same.any():
            break
        a, b = order[:-j][same], order[j:][same]
        ia_list.append(a)
        ib_list.append(b)
        j += 1
    ia = np.concatenate(ia_list) if ia_list else np.zeros(0, np.int64)
    ib = np.concatenate(ib_list) if ib_list else np.zeros(0, np.int64)
    diff = stack[ia] != stack[ib]
    ia, ib = ia[diff], ib[diff]
    swap = ia > ib
    ia, ib = np.where(swap, ib, ia), np.where(swap, ia, ib)
    srt = np.lexsort((ib, ia))
    ia, ib = ia[srt], ib[srt]

    rab, dab, raa, daa, r95 = arrays
    before = angular_separation_arcsec(rab[ia], dab[ia], rab[ib], dab[ib])
    after = angular_separation_arcsec(raa[ia], daa[ia], raa[ib], daa[ib])
    comb = np.hypot(r95[ia], r95[ib])
    pair_tol = np.full(ia.size, float(tol)) if scalar_tol else np.hypot(tol[ia], tol[ib])
    status = np.zeros(ia.size, np.int8)
    status[after < before - pair_tol] = IMPROVED
    status[after > before + pair_tol] = WORSENED
    return OverlapPairs(key=key[ia], index_a=ia, index_b=ib, before_arcsec=before,
                        after_arcsec=after, combined_r95_arcsec=comb, tol_arcsec=pair_tol,
                        status=status)


def summarise_overlap(pairs, mask=None):
    """Counts and fractions of a set of pairs (all, or those where ``mask`` is true)."""
    status = pairs.status if mask is None else pairs.status[np.asarray(mask, bool)]
    before = pairs.before_arcsec if mask is None else pairs.before_arcsec[np.asarray(mask, bool)]
    after = pairs.after_arcsec if mask is None else pairs.after_arcsec[np.asarray(mask, bool)]
    n = int(status.size)
    ni = int(np.count_nonzero(status == IMPROVED))
    nw = int(np.count_nonzero(status == WORSENED))
    ns = n - ni - nw

    def frac(k):
        return k / n if n else float("nan")

    return OverlapSummary(
        n_pairs=n, n_improved=ni, n_stayed=ns, n_worsened=nw,
        frac_improved=frac(ni), frac_stayed=frac(ns), frac_worsened=frac(nw),
        median_before_arcsec=float(np.median(before)) if n else float("nan"),
        median_after_arcsec=float(np.median(after)) if n else float("nan"),
    )
