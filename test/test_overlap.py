"""Tests of the between-stack bookkeeping (stk_astrometry.core.overlap) on a hand-made field.

Three overlapping stacks A, B, C near (150, +2) deg.  Offsets from each source's true
position are written in arcsec (xi, eta) and put on the sky with the tangent plane, so the
expected separations are simple hypotenuses.
"""

import math

import numpy as np
import pytest
from stk_astrometry.core.overlap import (
    IMPROVED,
    STAYED,
    WORSENED,
    angular_separation_arcsec,
    overlap_pairs,
    summarise_overlap,
)
from stk_astrometry.tangent import tangent_to_sky

RA0, DEC0 = 150.0, 2.0

# (key, stack, true xi, true eta, before offset, after offset) - offsets (dxi, deta) arcsec.
FIELD = [
    # s1 in A, B, C: A and B corrected exactly, C's correction is faulty (0.9" east).
    (1, "A", 0.0, 0.0, (1.0, 0.0), (0.0, 0.0)),
    (1, "B", 0.0, 0.0, (-0.5, 0.6), (0.0, 0.0)),
    (1, "C", 0.0, 0.0, (0.0, 0.0), (0.9, 0.0)),
    # s2 in A, B: well corrected.
    (2, "A", 60.0, 0.0, (1.0, 0.0), (0.03, 0.0)),
    (2, "B", 60.0, 0.0, (-0.5, 0.6), (0.0, 0.0)),
    # s3 in B, C: agreed before by chance, still agree within the tolerance.
    (3, "B", 0.0, 60.0, (-0.5, 0.5), (0.0, 0.0)),
    (3, "C", 0.0, 60.0, (-0.49, 0.52), (0.02, 0.0)),
    # s4 only in A; s5 twice in A (a split source: not a between-stack pair); unknown keys.
    (4, "A", -60.0, 0.0, (1.0, 0.0), (0.0, 0.0)),
    (5, "A", 0.0, -60.0, (1.0, 0.0), (0.0, 0.0)),
    (5, "A", 0.0, -60.5, (1.0, 0.0), (0.0, 0.0)),
    (-1, "B", 30.0, 30.0, (0.0, 0.0), (0.0, 0.0)),
    (-1, "C", 30.0, 30.0, (0.0, 0.0), (0.0, 0.0)),
]


def _field():
    key = np.array([r[0] for r in FIELD])
    stack = np.array([r[1] for r in FIELD])
    xi = np.array([r[2] for r in FIELD])
    eta = np.array([r[3] for r in FIELD])
    before = np.array([r[4] for r in FIELD])
    after = np.array([r[5] for r in FIELD])
    rab, dab = tangent_to_sky(xi + before[:, 0], eta + before[:, 1], RA0, DEC0)
    raa, daa = tangent_to_sky(xi + after[:, 0], eta + after[:, 1], RA0, DEC0)
    return key, stack, rab, dab, raa, daa


def test_separation_against_astropy():
    from astropy.coordinates import SkyCoord

    ra1, dec1 = np.array([10.0, 359.9999, 45.0]), np.array([89.9999, -30.0, 0.0])
    ra2, dec2 = np.array([190.0, 0.0001, 45.0003]), np.array([89.9999, -30.0002, 0.0001])
    ours = angular_separation_arcsec(ra1, dec1, ra2, dec2)
    ref = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).arcsec
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def test_three_stack_field_pairs_and_classes():
    key, stack, rab, dab, raa, daa = _field()
    pairs = overlap_pairs(key, stack, rab, dab, raa, daa, np.full(key.size, 0.5), tol_arcsec=0.05)
    got = {(int(k), stack[a], stack[b]): (bf, af, int(st)) for k, a, b, bf, af, st in zip(
        pairs.key, pairs.index_a, pairs.index_b, pairs.before_arcsec, pairs.after_arcsec,
        pairs.status, strict=True)}
    expected = {
        (1, "A", "B"): (math.hypot(1.5, -0.6), 0.0, IMPROVED),
        (1, "A", "C"): (1.0, 0.9, IMPROVED),
        (1, "B", "C"): (math.hypot(0.5, 0.6), 0.9, WORSENED),
        (2, "A", "B"): (math.hypot(1.5, -0.6), 0.03, IMPROVED),
        (3, "B", "C"): (math.hypot(0.01, 0.02), 0.02, STAYED),
    }
    assert set(got) == set(expected)
    for k, (bf, af, st) in expected.items():
        assert got[k][0] == pytest.approx(bf, abs=1e-6), k
        assert got[k][1] == pytest.approx(af, abs=1e-6), k
        assert got[k][2] == st, k
    np.testing.assert_allclose(pairs.combined_r95_arcsec, math.sqrt(0.5))
    # Outlying: before-difference beyond the combined 95 % error (0.707").
    outlying = {(int(k), stack[a], stack[b]) for k, a, b, o in zip(
        pairs.key, pairs.index_a, pairs.index_b, pairs.outlying, strict=True) if o}
    assert outlying == {(1, "A", "B"), (1, "A", "C"), (1, "B", "C"), (2, "A", "B")}

    s = summarise_overlap(pairs)
    assert (s.n_pairs, s.n_improved, s.n_stayed, s.n_worsened) == (5, 3, 1, 1)
    assert s.frac_improved == pytest.approx(0.6) and s.frac_worsened == pytest.approx(0.2)
    so = summarise_overlap(pairs, pairs.outlying)
    assert (so.n_pairs, so.n_improved, so.n_stayed, so.n_worsened) == (4, 3, 0, 1)


def test_tolerance_decides_stayed_and_per_detection_tolerance_adds_in_quadrature():
    key, stack, rab, dab, raa, daa = _field()
    strict = overlap_pairs(key, stack, rab, dab, raa, daa, np.full(key.size, 0.5))
    assert summarise_overlap(strict).n_stayed == 0  # tol 0: s3's 0.0024" change is a change
    loose = overlap_pairs(key, stack, rab, dab, raa, daa, np.full(key.size, 0.5),
                          tol_arcsec=np.full(key.size, 0.1))
    np.testing.assert_allclose(loose.tol_arcsec, math.hypot(0.1, 0.1))
    # 1-AC (0.1 change) and 1-BC (0.119) now stay within 0.141.
    assert summarise_overlap(loose).n_stayed == 3


def test_order_of_rows_does_not_matter():
    key, stack, rab, dab, raa, daa = _field()
    rng = np.random.default_rng(7)
    p = rng.permutation(key.size)
    a = overlap_pairs(key, stack, rab, dab, raa, daa, np.full(key.size, 0.5), tol_arcsec=0.05)
    b = overlap_pairs(key[p], stack[p], rab[p], dab[p], raa[p], daa[p], np.full(key.size, 0.5),
                      tol_arcsec=0.05)
    # A pair's orientation follows row order; compare unordered stack pairs.
    sa = sorted((int(k), tuple(sorted((stack[i], stack[j]))), int(st))
                for k, i, j, st in zip(a.key, a.index_a, a.index_b, a.status, strict=True))
    sp = stack[p]
    sb = sorted((int(k), tuple(sorted((sp[i], sp[j]))), int(st))
                for k, i, j, st in zip(b.key, b.index_a, b.index_b, b.status, strict=True))
    assert sa == sb


def test_no_pairs_and_length_checks():
    pairs = overlap_pairs([1, 2], ["A", "B"], [0, 1], [0, 1], [0, 1], [0, 1], [0.5, 0.5])
    s = summarise_overlap(pairs)
    assert s.n_pairs == 0 and math.isnan(s.frac_improved)
    with pytest.raises(ValueError, match="length"):
        overlap_pairs([1, 1], ["A", "B"], [0], [0, 1], [0, 1], [0, 1], [0.5, 0.5])
