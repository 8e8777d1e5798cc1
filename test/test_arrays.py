"""core.arrays: numpy's own algorithms without its wrapping, equal to numpy's answers."""

from __future__ import annotations

import numpy as np
import pytest

from stk_astrometry.core.arrays import distinct_rows, n_distinct

SEED = 20261206


@pytest.mark.parametrize("values", [[3, 1, 3, 2, 2, 2, 9, 1], [5], [], [7, 7, 7],
                                    list(range(40, 0, -3)) * 3, [3, 1, 3, 2, 1]])
def test_n_distinct_is_numpys_unique_size(values):
    a = np.array(values, dtype=np.int64)
    assert n_distinct(a) == np.unique(a).size
    assert type(n_distinct(a)) is int


def test_n_distinct_on_random_ids():
    # negative ids, repeats of the smallest and of others (the matcher's detection indexes,
    # the spec fit's region ids)
    rng = np.random.default_rng(SEED)
    for _ in range(3000):
        n = int(rng.integers(0, 60))
        ids = rng.integers(-3, int(rng.integers(1, 40)), n)
        assert n_distinct(ids) == len(np.unique(ids))
    assert n_distinct(np.array([], dtype=np.int64)) == 0
    assert n_distinct(np.array([7])) == 1


def test_distinct_rows_is_numpys_unique():
    # row indices with repeats, in any order, into n rows; with a mask, only the marked rows
    # (api's Gaia rows the pairs read; the matcher's rows still to move)
    rng = np.random.default_rng(SEED + 1)
    for _ in range(2000):
        n = int(rng.integers(1, 80))
        rows = rng.integers(0, n, int(rng.integers(0, 3 * n)))
        got = distinct_rows(rows, n)
        np.testing.assert_array_equal(got, np.unique(rows))
        assert got.dtype == np.intp
        among = rng.random(n) < 0.5
        np.testing.assert_array_equal(distinct_rows(rows, n, among),
                                      np.unique(rows[among[rows]]))
    assert distinct_rows(np.array([], dtype=np.intp), 5).size == 0
    np.testing.assert_array_equal(distinct_rows([4, 0, 4], 5, np.ones(5, bool)), [0, 4])
    np.testing.assert_array_equal(distinct_rows([4, 0, 4], 5, np.zeros(5, bool)), [])
