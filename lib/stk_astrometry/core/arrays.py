"""Small array helpers the cores share: numpy's own algorithms without its Python wrapping.

Pure functions on 1-d numpy arrays, no I/O (issue 11: on the per-stack path numpy's wrappers
of ``np.unique`` cost more than its sort).
"""

from __future__ import annotations

import numpy as np

__all__ = ["n_distinct", "distinct_rows"]


def n_distinct(values) -> int:
    """``np.unique(values).size`` of a 1-d array by unique's own algorithm (a sort, then the
    runs of equal values counted), without its wrapping; 0 for an empty array."""
    ranked = np.sort(values)
    if ranked.size == 0:
        return 0
    return int(np.count_nonzero(ranked[1:] != ranked[:-1])) + 1


def distinct_rows(rows, n, among=None):
    """``np.unique(rows)`` of row indices ``rows`` into ``n`` rows (0 <= row < n) by a mask
    over the rows instead of a sort (issue 11: ~10 us a call for up to ~1,000 rows with
    repeats); with ``among`` (booleans, n) only the rows it marks.  Sorted, int64 (intp)."""
    wanted = np.zeros(n, dtype=bool)
    wanted[rows] = True
    if among is not None:
        wanted &= among
    return np.flatnonzero(wanted)
