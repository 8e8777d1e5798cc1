"""core.arrays: numpy's own algorithms without its wrapping, equal to numpy's answers."""

from __future__ import annotations

import numpy as np
import pytest

from stk_astrometry.core.arrays import n_distinct

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
