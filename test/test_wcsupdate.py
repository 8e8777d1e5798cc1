"""wcsupdate: attitude quaternions and the RA/Dec keyword families (pure, no files)."""

import numpy as np
import pytest
from astropy.io import fits
from scipy.spatial.transform import Rotation
from stk_astrometry import wcsupdate
from stk_astrometry.fitsutil import set_keyword


def _pointing_roll(q):
    """RA, Dec, roll (deg) of Chandra attitude quaternions, by scipy's own algebra."""
    m = Rotation.from_quat(q).as_matrix()
    ra = np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0])) % 360
    dec = np.degrees(np.arcsin(np.clip(m[:, 2, 0], -1, 1)))
    roll = np.degrees(np.arctan2(m[:, 2, 1], m[:, 2, 2])) % 360
    return ra, dec, roll


def test_attitude_quaternion_is_rz_ry_rx_as_scipy_builds_it():
    rng = np.random.default_rng(3)
    ra, dec, roll = rng.uniform(0, 360, 50), rng.uniform(-85, 85, 50), rng.uniform(0, 360, 50)
    q = wcsupdate.attitude_quaternion(ra, dec, roll)
    ref = Rotation.from_euler("ZYX", np.column_stack([ra, -dec, roll]), degrees=True)
    assert np.allclose(Rotation.from_quat(q).as_matrix(), ref.as_matrix(), atol=1e-14)


@pytest.mark.parametrize("dec0", [-70.0, 0.0, 26.6, 62.2, 88.0])
def test_rotated_attitude_points_at_the_new_position_with_the_same_roll(dec0):
    rng = np.random.default_rng(int(dec0 * 10) % 1000)
    n = 40
    ra = 201.2 + rng.normal(0, 1e-3, n)
    dec = dec0 + rng.normal(0, 1e-3, n)
    roll = rng.uniform(0, 360, n)
    q = wcsupdate.attitude_quaternion(ra, dec, roll)
    xfm = wcsupdate.Transform.from_shift(0.31, -0.22, 201.2, dec0)
    ra1, dec1 = wcsupdate.apply_sky(ra, dec, xfm)
    q1, n_rot = wcsupdate.rotate_attitude(q, ra, dec, ra1, dec1)
    assert n_rot == n
    r, d, rl = _pointing_roll(q1)
    assert np.allclose(r, ra1, atol=1e-11, rtol=0)
    assert np.allclose(d, dec1, atol=1e-11, rtol=0)
    # the roll is kept (to float precision; a minimal great-circle rotation would turn it
    # by ~shift * tan(dec), 1.6e-4 deg at dec 62 for 0.3")
    assert np.allclose((rl - roll + 180) % 360 - 180, 0, atol=1e-9)
    # the rotation is a small one: the attitude moved by about the shift
    angle = (Rotation.from_quat(q1) * Rotation.from_quat(q).inv()).magnitude()
    shift = np.hypot(0.31, 0.22) / 3600
    assert np.all(np.degrees(angle) < 2 * shift / max(np.cos(np.radians(dec0)), 0.02))
    # undo: back to the original quaternions
    ra2, dec2 = wcsupdate.apply_sky(ra1, dec1, xfm, inverse=True)
    q2, _ = wcsupdate.rotate_attitude(q1, ra1, dec1, ra2, dec2)
    assert np.max(np.abs(q2 - q)) < 1e-14


def test_rows_left_keep_their_quaternion_bit_for_bit():
    q = wcsupdate.attitude_quaternion([10.0, 11.0, 12.0], [5.0, 6.0, 7.0], [0.0, 0.0, 0.0])
    ra0 = np.array([10.0, np.nan, 12.0])
    dec0 = np.array([5.0, np.nan, 7.0])
    ra1 = np.array([10.0001, np.nan, 12.0])
    dec1 = np.array([5.0, np.nan, 7.0])
    q1, n = wcsupdate.rotate_attitude(q, ra0, dec0, ra1, dec1)
    assert n == 1
    assert np.array_equal(q1[1:], q[1:]) and not np.array_equal(q1[0], q[0])


def _header(**cards):
    h = fits.Header()
    for k, v in cards.items():
        set_keyword(h, k, v[0], v[1])
    return h


def test_suffix_family_pairs_long_keywords_and_sentinels():
    h = _header(WAV1B_RA=(189.2, "[deg] wavdetect source RA"),
                WAV1B_DEC=(62.2, "[deg] wavdetect source Dec"),
                WAV2B_RA=(-999.0, "[deg]"), WAV2B_DEC=(-999.0, "[deg]"),
                SRC_RA=(189.3, "[deg]"), SRC_DEC=(62.1, "[deg]"),
                RA_NOM=(189.2, "[deg]"), DEC_NOM=(62.2, "[deg]"),
                ERR_RA=(0.5, "[arcsec] error"), ERR_DEC=(0.5, "[arcsec] error"),
                LONE_RA=(10.0, "[deg]"))
    pairs, rejected = wcsupdate.position_keyword_pairs(h)
    names = {(a[1], b[1]) for _, a, b in pairs}
    # WAV1B_RA fits in 8 characters, its partner needs a DTYPEn/DVALn long keyword
    assert ("WAV1B_RA", "DVAL1 (WAV1B_DEC)") in names
    assert ("SRC_RA", "SRC_DEC") in names and ("RA_NOM", "DEC_NOM") in names
    assert any("ERR_RA" in r and "not a position" in r for r in rejected)
    assert any("LONE_RA" in r and "no LONE_DEC" in r for r in rejected)
    xfm = wcsupdate.Transform.from_shift(0.3, -0.2, 189.2, 62.2)
    res = wcsupdate.update_header(h, xfm, hdu_label="t")
    moved = {c.key for c in res.changes}
    assert {"WAV1B_RA", "DVAL1 (WAV1B_DEC)", "SRC_RA", "SRC_DEC"} <= moved
    assert h["WAV2B_RA"] == -999.0 and h["DVAL2"] == -999.0
    assert any("WAV2B_RA" in n.message and "sentinel" in n.message for n in res.notes)
