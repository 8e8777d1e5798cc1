"""wcsupdate: the transform and its id, the RA/Dec keyword families, WCS axes and columns,
the STK* records of applied transforms, attitude quaternions (pure, no files)."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial.transform import Rotation
from stk_astrometry import products, wcsupdate
from stk_astrometry.fitsutil import get_keyword, set_keyword
from stk_astrometry.tangent import shift_sky

RA0, DEC0 = 201.2, 26.6
XFM = wcsupdate.Transform.from_shift(0.3, -0.2, RA0, DEC0)


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


def test_transform_id_contract():
    import hashlib

    text = ",".join(repr(v) for v in (0.3, -0.2, RA0, DEC0))
    assert XFM.xfm_id == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert wcsupdate.transform_id(np.float64(0.3), -0.2, RA0, DEC0) == XFM.xfm_id


def _tan_offsets_arcsec(ra, dec, ra0, dec0):
    """xi, eta by astropy's TAN projection (an independent gnomonic projection)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [1 / 3600, 1 / 3600]
    x, y = w.wcs_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
    return x[0], y[0]


@pytest.mark.parametrize("where", [(RA0, DEC0), (RA0 + 0.3, DEC0 - 0.2), (359.99, -0.01),
                                   (10.0, 89.9)])
def test_apply_sky_is_a_tangent_plane_shift(where):
    ra_ref, dec_ref = where
    xfm = wcsupdate.Transform.from_shift(0.3, -0.2, ra_ref, dec_ref)
    ra, dec = ra_ref + 0.01, dec_ref + 0.01
    ra1, dec1 = wcsupdate.apply_sky(ra, dec, xfm)
    x0, y0 = _tan_offsets_arcsec(ra, dec, ra_ref, dec_ref)
    x1, y1 = _tan_offsets_arcsec(ra1, dec1, ra_ref, dec_ref)
    assert x1 - x0 == pytest.approx(0.3, abs=1e-6)
    assert y1 - y0 == pytest.approx(-0.2, abs=1e-6)
    back = wcsupdate.apply_sky(ra1, dec1, xfm, inverse=True)
    assert abs(((back[0] - ra + 180) % 360) - 180) < 1e-9 and abs(back[1] - dec) < 1e-9


def test_rotation_matrix_turns_roll_translation_does_not():
    h = fits.Header()
    h["RA_NOM"], h["DEC_NOM"], h["ROLL_NOM"] = RA0, DEC0, 45.0
    res = wcsupdate.update_header(h.copy(), XFM, hdu_label="t")
    assert not any(c.key == "ROLL_NOM" for c in res.changes)
    ang = np.radians(0.1)
    rot = wcsupdate.Transform.from_shift(
        0.0, 0.0, RA0, DEC0, matrix=(np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)))
    h2 = h.copy()
    res = wcsupdate.update_header(h2, rot, hdu_label="t")
    assert h2["ROLL_NOM"] == pytest.approx(45.1)
    assert h2["RA_NOM"] == pytest.approx(RA0, abs=1e-12)   # the tangent point does not move
    wcsupdate.update_header(h2, rot, hdu_label="t", inverse=True)
    assert h2["ROLL_NOM"] == pytest.approx(45.0)


def test_position_pairs_and_traps():
    h = fits.Header()
    h["RA_NOM"], h["DEC_NOM"] = RA0, DEC0
    h["RA_ERR"], h["DEC_ERR"] = (0.3, "[arcsec]"), (0.3, "[arcsec]")
    h["RA_OBJ"], h["DEC_OBJ"] = -999.0, -999.0
    h["RA_SRC"], h["DEC_SRC"] = "INDEF", "INDEF"
    h["RA_PNT"], h["DEC_PNT"] = 0.0, 0.0
    h["RA_X"], h["DEC_X"] = (RA0, "offset in arcsec"), (DEC0, "offset in arcsec")
    h["RA_TARG"], h["DEC_TARG"] = 400.0, DEC0
    h["RA_STACK"] = RA0
    set_keyword(h, "DEC_STACK", DEC0)
    set_keyword(h, "RA_SIGMA_SYS", 0.2)
    set_keyword(h, "DEC_SIGMA_SYS", 0.2)
    before = h.copy()
    res = wcsupdate.update_header(h, XFM, hdu_label="t")
    moved = {c.key for c in res.changes}
    assert moved == {"RA_NOM", "DEC_NOM", "RA_STACK", "DVAL1 (DEC_STACK)"}
    for key in ("RA_ERR", "DEC_ERR", "RA_OBJ", "DEC_OBJ", "RA_SRC", "RA_PNT", "DEC_PNT",
                "RA_X", "RA_TARG", "DEC_TARG"):
        assert h[key] == before[key]
    assert get_keyword(h, "RA_SIGMA_SYS") == 0.2
    exp = shift_sky(RA0, DEC0, 0.3, -0.2, RA0, DEC0)
    assert get_keyword(h, "DEC_STACK") == pytest.approx(float(exp[1]), abs=1e-12)
    assert h["RA_STACK"] == pytest.approx(float(exp[0]), abs=1e-12)
    text = " ".join(n.message for n in res.notes)
    for word in ("RA_ERR", "RA_OBJ", "RA_SRC", "RA_PNT", "RA_X", "RA_TARG", "RA_SIGMA_SYS"):
        assert word in text


def test_image_wcs_axes_alternates_and_detector_axes():
    h = fits.Header()
    h["NAXIS"] = 2
    for alt, (t1, t2) in {"": ("RA---TAN", "DEC--TAN"), "A": ("RA---SIN", "DEC--SIN"),
                          "D": ("DETX", "DETY"), "F": ("FPX--TAN", "FPY--TAN"),
                          "P": ("RA---TAN", "DEC--TAN")}.items():
        h[f"CTYPE1{alt}"], h[f"CTYPE2{alt}"] = t1, t2
        h[f"CRVAL1{alt}"], h[f"CRVAL2{alt}"] = RA0, DEC0
    axes = wcsupdate.celestial_image_axes(h)
    assert [a[0] for a in axes] == ["", "A"]
    res = wcsupdate.update_header(h, XFM, hdu_label="t", keywords=False)
    assert {c.key for c in res.changes} == {"CRVAL1", "CRVAL2", "CRVAL1A", "CRVAL2A"}
    for alt in "DFP":
        assert h[f"CRVAL1{alt}"] == RA0


def test_table_wcs_eqpos_eqsrc_and_alternates():
    h = fits.Header()
    h["TFIELDS"] = 6
    types = ["RA---TAN", "DEC--TAN", "XLON-TAN", "XLAT-TAN", "FPX--TAN", "FPY--TAN"]
    for n, t in enumerate(types, 1):
        h[f"TCTYP{n}"] = t
        h[f"TCRVL{n}"] = RA0 if n % 2 else DEC0
    h["TCTY1B"], h["TCTY2B"] = "RA---TAN", "DEC--TAN"
    h["TCRV1B"], h["TCRV2B"] = RA0, DEC0
    found = wcsupdate.celestial_table_columns(h)
    assert {(f[0], f[1]) for f in found} == {("EQPOS", "TCRVL1"), ("EQSRC", "TCRVL3"),
                                             ("EQPOS", "TCRV1B")}
    res = wcsupdate.update_header(h, XFM, hdu_label="t", keywords=False)
    assert {c.key for c in res.changes} == {"TCRVL1", "TCRVL2", "TCRVL3", "TCRVL4",
                                            "TCRV1B", "TCRV2B"}
    assert h["TCRVL5"] == RA0 and h["TCRVL6"] == DEC0


def test_shift_columns_nulls_and_sentinels():
    ra = np.array([RA0, np.nan, -999.0, 0.0, RA0 + 0.1])
    dec = np.array([DEC0, np.nan, -999.0, 0.0, DEC0])
    res = wcsupdate.shift_columns(ra, dec, XFM)
    assert (res.n_moved, res.n_null, res.n_sentinel) == (2, 1, 2)
    assert np.isnan(res.ra_deg[1]) and res.ra_deg[2] == -999.0 and res.ra_deg[3] == 0.0
    exp = shift_sky(ra[[0, 4]], dec[[0, 4]], 0.3, -0.2, RA0, DEC0)
    assert np.allclose(res.ra_deg[[0, 4]], exp[0], atol=1e-12, rtol=0)
    assert res.ra_deg.dtype == ra.dtype


def test_eqsrc_problem_and_populate():
    grid = products.instrument_grid("ACIS")
    h = fits.BinTableHDU.from_columns([fits.Column("X", "D"), fits.Column("Y", "D")]).header
    assert "missing" in wcsupdate.eqsrc_problem(h, pixel_deg=grid[0], crpix=grid[1])
    changes = wcsupdate.populate_eqsrc(h, ra_deg=RA0, dec_deg=DEC0, pixel_deg=grid[0],
                                       crpix=grid[1], hdu_label="t")
    assert changes and wcsupdate.eqsrc_problem(h, pixel_deg=grid[0], crpix=grid[1]) is None
    assert h["TCTYP1"] == "XLON-TAN" and h["TCRVL2"] == DEC0 and h["TCDLT1"] < 0
    h["TCDLT1"] = -1.0
    assert "pixel size" in wcsupdate.eqsrc_problem(h, pixel_deg=grid[0], crpix=grid[1])


def test_record_force_and_unrecord():
    h = fits.Header()
    other = wcsupdate.Transform.from_shift(0.1, 0.1, RA0, DEC0)
    wcsupdate.record_transform(h, other, hdu_label="t")
    wcsupdate.record_transform(h, XFM, hdu_label="t")
    assert h["STKXFMID"] == XFM.xfm_id and h["STKPV1ID"] == other.xfm_id
    wcsupdate.unrecord_transform(h, hdu_label="t")
    assert h["STKXFMID"] == other.xfm_id and "STKPV1ID" not in h
    wcsupdate.unrecord_transform(h, hdu_label="t")
    assert not any(k in h for k in wcsupdate.RECORD_KEYS)


def test_scrub_reports_or_removes():
    h = fits.Header()
    h["OBS_ID"], h["RA_NOM"], h["DEC_NOM"] = "1", RA0, DEC0
    changes, notes = wcsupdate.scrub_header(h, products.SCRUB_KEYWORDS, hdu_label="t",
                                            remove=False)
    assert not changes and "OBS_ID" in notes[0].message and "OBS_ID" in h
    changes, notes = wcsupdate.scrub_header(h, products.SCRUB_KEYWORDS, hdu_label="t",
                                            remove=True)
    assert {c.key for c in changes} == {"OBS_ID", "RA_NOM", "DEC_NOM"} and "RA_NOM" not in h


def test_record_stack_of_forced_transforms():
    h = fits.Header()
    xs = [wcsupdate.Transform.from_shift(0.1 * i, -0.1 * i, RA0, DEC0) for i in range(1, 5)]
    for x in xs:
        wcsupdate.record_transform(h, x, hdu_label="t")
    assert h["STKXFMID"] == xs[3].xfm_id
    assert [h[f"STKPV{i}ID"] for i in (1, 2, 3)] == [xs[2].xfm_id, xs[1].xfm_id, xs[0].xfm_id]
    assert h["STKPV3DX"] == pytest.approx(0.1)
    for x in reversed(xs):
        assert wcsupdate.applied_state(h) == x.xfm_id
        wcsupdate.unrecord_transform(h, hdu_label="t")
    assert not [k for k in h if k.startswith("STK")]


@pytest.mark.parametrize("suffix", ["MODEL", "RADIO", "CORR", "PRELIM", "OPT", "DELIVERED",
                                    "STACK", "OFFICIAL", "VARIABLE"])
def test_position_names_are_not_blocked_by_substrings(suffix):
    h = fits.Header()
    set_keyword(h, "RA_" + suffix, RA0, "[deg] position")
    set_keyword(h, "DEC_" + suffix, DEC0, "[deg] position")
    res = wcsupdate.update_header(h, XFM, hdu_label="t")
    assert len(res.changes) == 2, res.notes


@pytest.mark.parametrize("suffix", ["ERR", "SIGMA", "SIG", "UNC", "RMS", "DELTA", "OFF",
                                    "OFFSET", "SCALE", "STD", "VAR", "SIZE", "RAD", "RADIUS",
                                    "DIFF", "DIST", "RES", "LIM", "RATE", "PM", "ERR90",
                                    "SRC_ERR", "STAT_SIG"])
def test_error_like_names_are_not_positions(suffix):
    h = fits.Header()
    set_keyword(h, "RA_" + suffix, RA0)      # no telling comment: the name decides
    set_keyword(h, "DEC_" + suffix, DEC0)
    res = wcsupdate.update_header(h, XFM, hdu_label="t")
    assert not res.changes
    assert "not a position (name)" in " ".join(n.message for n in res.notes)


def test_record_of_an_earlier_version_is_read_as_level_one():
    h = fits.Header()
    first = wcsupdate.Transform.from_shift(0.1, 0.1, RA0, DEC0)
    h["STKXFMID"], h["STKDXI"], h["STKDETA"] = XFM.xfm_id, XFM.d_xi_arcsec, XFM.d_eta_arcsec
    h["STKPVID"], h["STKPVDXI"], h["STKPVDET"] = first.xfm_id, 0.1, 0.1
    third = wcsupdate.Transform.from_shift(0.2, 0.2, RA0, DEC0)
    wcsupdate.record_transform(h, third, hdu_label="t")
    assert (h["STKPV1ID"], h["STKPV2ID"]) == (XFM.xfm_id, first.xfm_id) and "STKPVID" not in h
    wcsupdate.unrecord_transform(h, hdu_label="t")
    wcsupdate.unrecord_transform(h, hdu_label="t")
    assert h["STKXFMID"] == first.xfm_id and h["STKDXI"] == 0.1
    assert not [k for k in h if k.startswith("STKPV")]


def test_far_positions_move_and_undo_exactly_both_ways():
    # the 10 deg rule no longer leaves positions (it broke exact undo): they move, counted
    # in n_far; only positions >= 89 deg away (projection fails) are left, in n_unprojectable
    x = wcsupdate.Transform.from_shift(0.0, 3.6, RA0, DEC0)      # 1e-3 deg outwards (north)
    lim = wcsupdate.MAX_DISTANCE_DEG
    ra = np.array([RA0, RA0, RA0])
    dec = np.array([DEC0 + lim - 0.0005, DEC0 + 11.5, DEC0 + lim + 2 / 3600])
    fwd = wcsupdate.shift_columns(ra, dec, x)
    assert fwd.n_moved == 3 and fwd.n_far == 2 and fwd.n_unprojectable == 0
    assert np.all(fwd.dec_deg > dec + 9e-4)
    back = wcsupdate.shift_columns(fwd.ra_deg, fwd.dec_deg, x, inverse=True)
    assert back.n_moved == 3
    assert np.allclose(back.dec_deg, dec, atol=1e-10, rtol=0)
    h = fits.Header()
    h["RA_A"], h["DEC_A"] = (RA0, "[deg]"), (float(dec[2]), "[deg]")
    res = wcsupdate.update_header(h, x, hdu_label="t")
    assert h["DEC_A"] > dec[2] + 9e-4
    assert "from the stack tangent point" in " ".join(n.message for n in res.notes)
    wcsupdate.update_header(h, x, hdu_label="t", inverse=True)
    assert h["DEC_A"] == pytest.approx(float(dec[2]), abs=1e-10)
    h["RA_B"], h["DEC_B"] = (100.0, "[deg]"), (-60.0, "[deg]")      # > 90 deg away
    res = wcsupdate.update_header(h, x, hdu_label="t")
    assert h["RA_B"] == 100.0 and "left" in " ".join(n.message for n in res.notes)
    far = wcsupdate.shift_columns(np.array([100.0]), np.array([-60.0]), x)
    assert far.n_moved == 0 and far.n_unprojectable == 1 and far.n_sentinel == 0


# ---------------------------------------------------------------------------------------------
# What a position is; what update_header reports, change by change


@pytest.mark.parametrize("ra, dec, ok", [
    (0.0, 10.0, True), (360.0, 10.0, True), (10.0, -90.0, True), (10.0, 90.0, True),
    (5.0, 0.0, True), (0.0, 5.0, True), (1.0, 0.0, True), (np.float32(10), np.int64(5), True),
    (0.0, 0.0, False), (-1e-9, 10.0, False), (360.000001, 10.0, False),
    (10.0, -90.000001, False), (10.0, 90.000001, False), (-999.0, -999.0, False),
    (float("nan"), 10.0, False), (10.0, float("inf"), False), (True, 10.0, False),
    (10.0, False, False), ("10", 10.0, False), (10.0, None, False),
])
def test_is_position_and_its_sentinels(ra, dec, ok):
    assert wcsupdate.is_position(ra, dec) is ok


def _rotated(deg, d_xi=0.3, d_eta=-0.2):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return wcsupdate.Transform.from_shift(d_xi, d_eta, RA0, DEC0, matrix=(c, -s, s, c))


def test_update_header_reports_each_change_with_its_old_and_new_value():
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = (RA0, "[deg] ref"), (DEC0, "[deg] ref")
    h["RA_A"], h["DEC_A"] = 0.0, 0.0                  # "no pointing": left, with a note
    h["RA_NOM"], h["DEC_NOM"] = (RA0 + 0.01, "[deg]"), (DEC0 - 0.01, "[deg]")
    h["ROLL_NOM"] = (359.5, "[deg] roll")
    h["RA_TARG"], h["DEC_TARG"] = (RA0, "[deg]"), (DEC0, "[deg]")
    set_keyword(h, "ROLL_TARG", -999.0)                # a null roll stays
    x = _rotated(1.0)
    new_c = wcsupdate.apply_sky(RA0, DEC0, x)
    new_n = wcsupdate.apply_sky(RA0 + 0.01, DEC0 - 0.01, x)
    res = wcsupdate.update_header(h, x, hdu_label="EVENTS")
    C = wcsupdate.Change
    assert list(res.changes) == [
        C("EVENTS", "CRVAL1", RA0, float(new_c[0]), "EQPOS"),
        C("EVENTS", "CRVAL2", DEC0, float(new_c[1]), "EQPOS"),
        C("EVENTS", "RA_NOM", RA0 + 0.01, float(new_n[0]), "position"),
        C("EVENTS", "DEC_NOM", DEC0 - 0.01, float(new_n[1]), "position"),
        C("EVENTS", "ROLL_NOM", 359.5, pytest.approx(0.5, abs=1e-9), "roll"),
        C("EVENTS", "RA_TARG", RA0, float(new_c[0]), "position"),
        C("EVENTS", "DEC_TARG", DEC0, float(new_c[1]), "position"),
    ]
    assert list(res.notes) == [wcsupdate.Note(
        "EVENTS", "RA_A/DEC_A = (0.0, 0.0): sentinel or not a position; left")]
    assert h["ROLL_NOM"] == pytest.approx(0.5) and get_keyword(h, "ROLL_TARG") == -999.0
    assert h.comments["CRVAL1"] == "[deg] ref" and h.comments["ROLL_NOM"] == "[deg] roll"
    back = wcsupdate.update_header(h, x, hdu_label="EVENTS", inverse=True)
    assert h["ROLL_NOM"] == pytest.approx(359.5, abs=1e-9)
    assert h["RA_NOM"] == pytest.approx(RA0 + 0.01, abs=1e-11)
    assert [c.what for c in back.changes].count("roll") == 1
    wcs_only = wcsupdate.update_header(h, x, hdu_label="E", keywords=False)
    assert {c.key for c in wcs_only.changes} == {"CRVAL1", "CRVAL2"} and not wcs_only.notes
    kw_only = wcsupdate.update_header(h, x, hdu_label="E", wcs=False)
    assert "CRVAL1" not in {c.key for c in kw_only.changes} and kw_only.changes


def test_update_header_notes_what_it_leaves_and_what_is_far():
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = -999.0, -999.0
    h["CTYPE1A"], h["CTYPE2A"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1A"], h["CRVAL2A"] = 21.2, -26.6           # antipodal: the projection fails
    h["CTYPE1B"], h["CTYPE2B"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1B"], h["CRVAL2B"] = RA0, DEC0 + 12.0      # > 10 deg: moved, with a note
    h["RA_FAR"], h["DEC_FAR"] = (21.2, "[deg]"), (-26.6, "[deg]")
    h["RA_X"], h["DEC_X"] = (RA0, "[deg]"), (DEC0 + 20.0, "[deg]")
    res = wcsupdate.update_header(h, XFM, hdu_label="h")
    assert [n.message for n in res.notes] == [
        "EQPOS CRVAL1/CRVAL2 = (-999.0, -999.0) is not a position; left",
        "EQPOS CRVAL1A/CRVAL2A = (21.2, -26.6) is 180.0 deg from the stack tangent point (the "
        "tangent projection fails 89 deg or more away): not of this stack; left",
        "EQPOS CRVAL1B/CRVAL2B = (201.2, 38.6) is 12.0 deg from the stack tangent point (more "
        "than 10): hardly of this stack; moved all the same (an undo moves it back exactly)",
        "RA_FAR/DEC_FAR = (21.2, -26.6) is 180.0 deg from the stack tangent point (the tangent "
        "projection fails 89 deg or more away): not of this stack; left",
        "RA_X/DEC_X = (201.2, 46.6) is 20.0 deg from the stack tangent point (more than 10): "
        "hardly of this stack; moved all the same (an undo moves it back exactly)",
    ]
    assert all(n.hdu == "h" for n in res.notes)
    assert [c.key for c in res.changes] == ["CRVAL1B", "CRVAL2B", "RA_X", "DEC_X"]
    assert h["CRVAL1"] == -999.0 and h["CRVAL1A"] == 21.2 and h["RA_FAR"] == 21.2
    # undone: the far note is made on the position the undo returns to
    res = wcsupdate.update_header(h, XFM, hdu_label="h", inverse=True)
    assert h["DEC_X"] == pytest.approx(DEC0 + 20.0, abs=1e-11)
    assert res.notes[-1].message.startswith("RA_X/DEC_X = (201.2001")
    assert "46.5999" in res.notes[-1].message and "is 20.0 deg" in res.notes[-1].message


def test_undo_leaves_what_the_update_could_not_have_made():
    # a position 89.5 deg away: the update leaves it (>= 89); an undo takes it back only if
    # the undone position is closer than 89 deg -- here it is not, so it stays
    h = fits.Header()
    h["RA_Y"], h["DEC_Y"] = (RA0, "[deg]"), (DEC0 - 89.5, "[deg]")
    res = wcsupdate.update_header(h, XFM, hdu_label="h", inverse=True)
    assert not res.changes and "not of this stack; left" in res.notes[0].message
    h["DEC_Y"] = DEC0 - 89.5 + 0.6                     # 88.9 deg: undone
    res = wcsupdate.update_header(h, XFM, hdu_label="h", inverse=True)
    assert [c.key for c in res.changes] == ["RA_Y", "DEC_Y"]


def test_shift_columns_counts_each_kind_of_element():
    x = wcsupdate.Transform.from_shift(0.3, -0.2, 0.5, 10.0)
    ra = np.array([360.0, 0.0, 0.0, 360.000001, 0.5, 0.5, np.nan, 0.5, 0.5, -0.1])
    dec = np.array([10.0, 10.0, 0.0, 10.0, 90.0, -90.0, 10.0, np.nan, 10.0, 10.0])
    res = wcsupdate.shift_columns(ra, dec, x)
    # moved: 0, 1, 4 (80 deg away: far), 8; null: 6, 7; sentinel: 2, 3, 9; unprojectable: 5
    assert (res.n_moved, res.n_null, res.n_sentinel, res.n_far, res.n_unprojectable) == \
        (4, 2, 3, 1, 1)
    moved = [0, 1, 4, 8]
    left = [2, 3, 5, 9]
    assert np.array_equal(res.ra_deg[left], ra[left]) and np.array_equal(res.dec_deg[left], dec[left])
    assert np.all(res.dec_deg[moved] != dec[moved])
    assert np.isnan(res.ra_deg[6]) and np.isnan(res.dec_deg[7])
    assert res.ra_deg.dtype == np.float64 and res.dec_deg.dtype == np.float64
    back = wcsupdate.shift_columns(res.ra_deg, res.dec_deg, x, inverse=True)
    assert back.n_moved == 4 and back.n_far == 1
    assert np.allclose(back.dec_deg[moved], dec[moved], atol=1e-10, rtol=0)
    f32 = wcsupdate.shift_columns(ra.astype(np.float32), dec.astype(np.float32), x)
    assert f32.ra_deg.dtype == np.float32 and f32.dec_deg.dtype == np.float32


def test_shift_columns_of_a_two_dimensional_column():
    ra = np.array([[RA0, np.nan], [RA0 + 0.01, -999.0]])
    dec = np.array([[DEC0, np.nan], [DEC0, -999.0]])
    res = wcsupdate.shift_columns(ra, dec, XFM)
    assert res.ra_deg.shape == (2, 2) and (res.n_moved, res.n_null, res.n_sentinel) == (2, 1, 1)
    exp = shift_sky(np.array([RA0, RA0 + 0.01]), np.array([DEC0, DEC0]), 0.3, -0.2, RA0, DEC0)
    assert np.allclose([res.ra_deg[0, 0], res.ra_deg[1, 0]], exp[0], atol=1e-12, rtol=0)
    assert res.ra_deg[1, 1] == -999.0


# ---------------------------------------------------------------------------------------------
# EQSRC of region tables


def _xy_header(*names, tfields=None):
    h = fits.Header()
    h["TFIELDS"] = len(names) if tfields is None else tfields
    for i, n in enumerate(names, start=1):
        h[f"TTYPE{i}"] = n
    return h


def test_eqsrc_populated_change_by_change():
    grid = products.instrument_grid("ACIS")
    h = _xy_header("COMPONENT", "x", "Y")
    h["MTYPE1"] = "POS"
    h["TCTYP2"] = ("XLON-TAN", "kept comment")
    changes = wcsupdate.populate_eqsrc(h, ra_deg=RA0, dec_deg=DEC0, pixel_deg=grid[0],
                                       crpix=grid[1], hdu_label="SRCREG")
    C = wcsupdate.Change
    want = [C("SRCREG", "TCRVL2", None, RA0, "EQSRC populated"),
            C("SRCREG", "TCRPX2", None, grid[1], "EQSRC populated"),
            C("SRCREG", "TCDLT2", None, -grid[0], "EQSRC populated"),
            C("SRCREG", "TCUNI2", None, "deg", "EQSRC populated"),
            C("SRCREG", "TCTYP3", None, "XLAT-TAN", "EQSRC populated"),
            C("SRCREG", "TCRVL3", None, DEC0, "EQSRC populated"),
            C("SRCREG", "TCRPX3", None, grid[1], "EQSRC populated"),
            C("SRCREG", "TCDLT3", None, grid[0], "EQSRC populated"),
            C("SRCREG", "TCUNI3", None, "deg", "EQSRC populated"),
            C("SRCREG", "MTYPE2", None, "EQSRC", "EQSRC populated"),
            C("SRCREG", "MFORM2", None, "RA,DEC", "EQSRC populated")]
    assert changes == want
    assert h["MTYPE2"] == "EQSRC" and h.comments["MTYPE2"] == "DM Keyword: Descriptor name."
    assert h["MFORM2"] == "RA,DEC" and h.comments["MFORM2"] == "[deg]"
    assert h.comments["TCTYP2"] == "kept comment"
    assert wcsupdate.eqsrc_problem(h, pixel_deg=grid[0], crpix=grid[1]) is None
    # a second time: nothing to change
    assert wcsupdate.populate_eqsrc(h, ra_deg=RA0, dec_deg=DEC0, pixel_deg=grid[0],
                                    crpix=grid[1], hdu_label="SRCREG") == []
    # a descriptor already named (any case) is not named again
    h2 = _xy_header("X", "Y")
    h2["MTYPE4"] = "eqsrc"
    ch = wcsupdate.populate_eqsrc(h2, ra_deg=RA0, dec_deg=DEC0, pixel_deg=grid[0],
                                  crpix=grid[1], hdu_label="t")
    assert "MTYPE5" not in h2 and not [c for c in ch if c.key.startswith("M")]
    h3 = _xy_header("X", "Y")
    wcsupdate.populate_eqsrc(h3, ra_deg=RA0, dec_deg=DEC0, pixel_deg=grid[0], crpix=grid[1],
                             hdu_label="t")
    assert h3["MTYPE1"] == "EQSRC"


@pytest.mark.parametrize("edit, problem", [
    ({}, None),
    ({"TCTYP1": "xlon-tan", "TCTYP2": "xlat-tan"}, None),
    ({"TCTYP1": None}, "EQSRC missing (no XLON-TAN/XLAT-TAN on X,Y)"),
    ({"TCTYP2": "DEC--TAN"}, "EQSRC missing (no XLON-TAN/XLAT-TAN on X,Y)"),
    ({"TCRVL1": 0.0, "TCRVL2": 0.0}, "EQSRC reference value (0.0, 0.0) is not a position"),
    ({"TCDLT1": -1.0099 * 0.492 / 3600}, None),
    ({"TCDLT1": -1.0101 * 0.492 / 3600}, "pixel size"),
    ({"TCDLT1": 0.492 / 3600}, "pixel size"),
    ({"TCDLT2": 0.9901 * 0.492 / 3600}, None),
    ({"TCDLT2": 0.9899 * 0.492 / 3600}, "pixel size"),
    ({"TCDLT2": None}, "EQSRC incomplete (TCDLT/TCRPX missing)"),
    ({"TCRPX1": None}, "EQSRC incomplete (TCDLT/TCRPX missing)"),
    ({"TCRPX1": 4097.5}, None), ({"TCRPX2": 4095.5}, None),
    ({"TCRPX1": 4097.51}, "EQSRC reference pixel (4097.51, 4096.5) is not the sky grid's 4096.5"),
    ({"TCRPX2": 4095.49}, "EQSRC reference pixel (4096.5, 4095.49) is not the sky grid's 4096.5"),
])
def test_eqsrc_problem_names_what_is_wrong(edit, problem):
    grid = products.instrument_grid("ACIS")
    h = _xy_header("X", "Y")
    wcsupdate.populate_eqsrc(h, ra_deg=RA0, dec_deg=DEC0, pixel_deg=grid[0], crpix=grid[1],
                             hdu_label="t")
    for k, v in edit.items():
        if v is None:
            del h[k]
        else:
            h[k] = v
    got = wcsupdate.eqsrc_problem(h, pixel_deg=grid[0], crpix=grid[1])
    if problem is None or problem == "pixel size":
        assert (got is None) if problem is None else got.startswith("EQSRC pixel size (")
    else:
        assert got == problem


@pytest.mark.parametrize("names, tfields", [(("X",), None), (("Y",), None), (("RA", "DEC"), None),
                                            (("X", "Y"), 1), ((), None)])
def test_eqsrc_is_no_problem_without_both_x_and_y_columns(names, tfields):
    h = _xy_header(*names, tfields=tfields)
    h["TTYPE0"] = "X"
    assert wcsupdate.eqsrc_problem(h, pixel_deg=1e-4, crpix=4096.5) is None
    h2 = fits.Header()
    h2["TTYPE1"], h2["TTYPE2"] = "X", "Y"          # no TFIELDS: no columns
    assert wcsupdate.eqsrc_problem(h2, pixel_deg=1e-4, crpix=4096.5) is None


# ---------------------------------------------------------------------------------------------
# The STK* records


def test_record_changes_and_comments_level_by_level():
    h = fits.Header()
    first = wcsupdate.Transform.from_shift(0.1, 0.2, RA0, DEC0)
    C = wcsupdate.Change
    assert wcsupdate.record_transform(h, first, hdu_label="E") == [
        C("E", "STKXFMID", None, first.xfm_id, "record"), C("E", "STKDXI", None, 0.1, "record"),
        C("E", "STKDETA", None, 0.2, "record")]
    assert h.comments["STKXFMID"] == "id of the applied STKXFM transform"
    assert h.comments["STKDXI"] == "[arcsec] applied shift in xi"
    assert h.comments["STKDETA"] == "[arcsec] applied shift in eta"
    assert wcsupdate.record_transform(h, first, hdu_label="E") == []     # the same: no change
    changes = wcsupdate.record_transform(h, XFM, hdu_label="E")
    assert changes == [
        C("E", "STKXFMID", first.xfm_id, XFM.xfm_id, "record"), C("E", "STKDXI", 0.1, 0.3, "record"),
        C("E", "STKDETA", 0.2, -0.2, "record"), C("E", "STKPV1ID", None, first.xfm_id, "record"),
        C("E", "STKPV1DX", None, 0.1, "record"), C("E", "STKPV1DE", None, 0.2, "record")]
    assert h.comments["STKPV1ID"] == "forced over: id of the earlier STKXFM transform"
    assert h.comments["STKPV1DX"] == "forced over: [arcsec] earlier shift in xi"
    assert wcsupdate.unrecord_transform(h, hdu_label="E") == [
        C("E", "STKXFMID", XFM.xfm_id, first.xfm_id, "record"), C("E", "STKDXI", 0.3, 0.1, "record"),
        C("E", "STKDETA", -0.2, 0.2, "record"), C("E", "STKPV1ID", first.xfm_id, None, "record"),
        C("E", "STKPV1DX", 0.1, None, "record"), C("E", "STKPV1DE", 0.2, None, "record")]
    assert h.comments["STKXFMID"] == "id of the applied STKXFM transform"


def test_record_of_a_value_left_undefined_is_rewritten():
    h = fits.Header()
    h["STKXFMID"] = XFM.xfm_id
    h["STKDXI"] = 0.3
    changes = wcsupdate.record_transform(h, XFM, hdu_label="E")
    assert [c.key for c in changes] == ["STKDETA"] and h["STKDETA"] == -0.2


def test_record_stack_is_limited():
    from stk_astrometry.errors import ProductError

    h = fits.Header()
    xs = [wcsupdate.Transform.from_shift(0.01 * i, 0.0, RA0, DEC0)
          for i in range(1, wcsupdate.MAX_FORCED + 3)]
    for x in xs[:wcsupdate.MAX_FORCED + 1]:
        wcsupdate.record_transform(h, x, hdu_label="E")
    assert h[f"STKPV{wcsupdate.MAX_FORCED}ID"] == xs[0].xfm_id
    with pytest.raises(ProductError, match=r"^E: 10 transforms already stacked by force=yes"):
        wcsupdate.record_transform(h, xs[-1], hdu_label="E")


def test_set_value_keeps_the_comment_as_far_as_it_fits():
    from stk_astrometry.wcsupdate import _set_value

    h = fits.Header()
    h["KEY"] = (1.0, "a comment of some length that fills the card up to its end......")
    _set_value(h, "KEY", 123.456789012345)
    assert h["KEY"] == 123.456789012345
    assert len(fits.Card("KEY", h["KEY"], h.comments["KEY"]).image.rstrip()) == 80
    assert "a comment of some length".startswith(h.comments["KEY"][:20])
    _set_value(h, "NEW", 2.0)
    assert h["NEW"] == 2.0 and h.comments["NEW"] == ""
    h["S"] = (1.0, "short")
    _set_value(h, "S", 5.0)
    assert h.comments["S"] == "short"


def test_change_and_note_describe_themselves_for_the_report():
    C = wcsupdate.Change
    assert C("EVENTS", "CRVAL1", 201.2, 201.20001, "EQPOS").describe() == \
        "[EVENTS] CRVAL1 201.2 -> 201.20001 (EQPOS)"
    assert C("E", "STKPV1ID", None, "abc", "record").describe() == "[E] STKPV1ID (none) -> abc (record)"
    assert C("E", "N", 3, None, "scrub").describe() == "[E] N 3 -> (none) (scrub)"
    assert wcsupdate.Note("E", "left").describe() == "[E] left"


def test_table_wcs_moves_and_undoes_with_its_kind_and_label():
    h = fits.Header()
    h["TFIELDS"] = 4
    h["TCTYP1"], h["TCTYP2"] = "RA---TAN", "DEC--TAN"
    h["TCRVL1"], h["TCRVL2"] = RA0, DEC0 + 15.0
    h["TCTYP3"], h["TCTYP4"] = "XLON-TAN", "XLAT-TAN"
    h["TCRVL3"], h["TCRVL4"] = -999.0, -999.0
    set_keyword(h, "RA_ERR", RA0)
    set_keyword(h, "DEC_ERR", DEC0)
    res = wcsupdate.update_header(h, XFM, hdu_label="SRC")
    assert [(c.hdu, c.key, c.what) for c in res.changes] == [("SRC", "TCRVL1", "EQPOS"),
                                                             ("SRC", "TCRVL2", "EQPOS")]
    assert [(n.hdu, n.message.split(" = ")[0]) for n in res.notes] == [
        ("SRC", "EQPOS TCRVL1/TCRVL2"), ("SRC", "EQSRC TCRVL3/TCRVL4"),
        ("SRC", "RA_ERR: not a position (name); left")]
    assert "is 15.0 deg from the stack tangent point (more than 10)" in res.notes[0].message
    moved = h["TCRVL2"]
    back = wcsupdate.update_header(h, XFM, hdu_label="SRC", inverse=True)
    assert h["TCRVL2"] == pytest.approx(DEC0 + 15.0, abs=1e-11) and moved != h["TCRVL2"]
    assert back.changes[1].old == moved


def test_scrub_reports_and_removes_long_keywords_with_their_pairs():
    h = fits.Header()
    h["OBS_ID"] = ("1234", "obs")
    set_keyword(h, "RA_NOMINAL", RA0, "[deg]")
    h["DUNIT1"] = "deg"
    h["KEEP"] = 1
    changes, notes = wcsupdate.scrub_header(h, ("OBS_ID", "RA_NOMINAL", "ABSENT"), hdu_label="P",
                                            remove=False)
    assert changes == [] and notes == [wcsupdate.Note(
        "P", "header scrub (scrub=yes) would remove OBS_ID, RA_NOMINAL")]
    assert wcsupdate.scrub_header(h, ("ABSENT",), hdu_label="P", remove=False) == ([], [])
    changes, notes = wcsupdate.scrub_header(h, ("OBS_ID", "RA_NOMINAL"), hdu_label="P",
                                            remove=True)
    C = wcsupdate.Change
    label = [c.key for c in changes][1]
    assert changes == [C("P", "OBS_ID", "1234", None, "scrub"), C("P", label, RA0, None, "scrub")]
    assert "RA_NOMINAL" in label and notes == []
    assert [c.keyword for c in h.cards] == ["KEEP"]


def test_shift_columns_of_nothing_usable_moves_nothing():
    res = wcsupdate.shift_columns(np.array([np.nan, -999.0, 0.5, 0.5]),
                                  np.array([np.nan, -999.0, -90.5, 90.5]), XFM)
    assert (res.n_moved, res.n_null, res.n_sentinel, res.n_far, res.n_unprojectable) == \
        (0, 1, 3, 0, 0)


# ---------------------------------------------------------------------------------------------
# The projection limit and the far note, at their edges and both ways


def _south(dist_deg, ref=(RA0, DEC0)):
    """A position ``dist_deg`` due south of ``ref``."""
    return ref[0], ref[1] - dist_deg


def test_a_position_beyond_the_projection_limit_is_left_by_the_update():
    # 89.5 deg away: the tangent projection still gives numbers, but the update leaves it
    ra, dec = _south(89.5)
    h = fits.Header()
    h["RA_A"], h["DEC_A"] = (ra, "[deg]"), (dec, "[deg]")
    res = wcsupdate.update_header(h, XFM, hdu_label="h")
    assert not res.changes and h["DEC_A"] == dec
    assert res.notes[0].message.endswith("not of this stack; left")
    col = wcsupdate.shift_columns(np.array([ra, RA0]), np.array([dec, DEC0]), XFM)
    assert (col.n_moved, col.n_unprojectable) == (1, 1) and col.dec_deg[0] == dec


def test_an_undo_leaves_a_position_it_would_put_beyond_the_limit():
    # 89.5 deg away, undone: the undone position is still >= 89 deg away, so it stays
    ra, dec = _south(89.5)
    col = wcsupdate.shift_columns(np.array([ra, RA0]), np.array([dec, DEC0]), XFM, inverse=True)
    assert (col.n_moved, col.n_unprojectable) == (1, 1) and col.dec_deg[0] == dec
    assert col.dec_deg[1] != DEC0


def test_an_undo_brings_back_a_position_the_update_moved_across_the_limit():
    # just inside 89 deg: the update moves it (outwards, to 89 deg or more); the undo must
    # move it back although it now starts beyond the limit
    x = wcsupdate.Transform.from_shift(0.0, -36.0, RA0, DEC0)      # south: outwards
    ra, dec = _south(89.0 - 1e-6)
    fwd = wcsupdate.shift_columns(np.array([ra]), np.array([dec]), x)
    assert fwd.n_moved == 1
    assert wcsupdate.distance_deg(fwd.ra_deg[0], fwd.dec_deg[0], RA0, DEC0) >= 89.0
    back = wcsupdate.shift_columns(fwd.ra_deg, fwd.dec_deg, x, inverse=True)
    assert back.n_moved == 1 and back.dec_deg[0] == pytest.approx(dec, abs=1e-10)
    h = fits.Header()
    h["RA_A"], h["DEC_A"] = (float(fwd.ra_deg[0]), "[deg]"), (float(fwd.dec_deg[0]), "[deg]")
    res = wcsupdate.update_header(h, x, hdu_label="h", inverse=True)
    assert [c.key for c in res.changes] == ["RA_A", "DEC_A"]
    assert h["DEC_A"] == pytest.approx(dec, abs=1e-10)


def _far_header(ra, dec):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["RA_A"], h["DEC_A"] = (ra, "[deg]"), (dec, "[deg]")
    return h


def test_the_far_note_is_decided_on_the_untransformed_position_both_ways():
    # the transform moves north by 1e-3 deg; positions due north of the tangent point,
    # 5e-4 deg either side of 10 deg
    x = wcsupdate.Transform.from_shift(0.0, 3.6, RA0, DEC0)
    lim = wcsupdate.MAX_DISTANCE_DEG
    inside, outside = DEC0 + lim - 5e-4, DEC0 + lim + 5e-4
    # update: decided on the position before the move
    res = wcsupdate.update_header(_far_header(RA0, inside), x, hdu_label="h")
    assert len(res.changes) == 4 and not res.notes            # moved out to 10.0005: no note
    # undo: decided on the position it returns to (the one the update started from)
    res = wcsupdate.update_header(_far_header(RA0, outside), x, hdu_label="h", inverse=True)
    assert len(res.changes) == 4 and not res.notes            # back to 9.9995: no note
    south = DEC0 - lim + 5e-4                                  # undone: out to 10.0005
    res = wcsupdate.update_header(_far_header(RA0, south), x, hdu_label="h", inverse=True)
    assert [n.message.split(" = ")[0] for n in res.notes] == ["EQPOS CRVAL1/CRVAL2", "RA_A/DEC_A"]
    assert all("is 10.0 deg" in n.message and "moved all the same" in n.message
               for n in res.notes)
    for dec, n_far in ((outside, 0), (south, 1)):
        back = wcsupdate.shift_columns(np.array([RA0]), np.array([dec]), x, inverse=True)
        assert back.n_moved == 1 and back.n_far == n_far
    fwd = wcsupdate.shift_columns(np.array([RA0, RA0]), np.array([inside, outside]), x)
    assert fwd.n_moved == 2 and fwd.n_far == 1


def test_a_position_exactly_at_the_far_distance_is_not_far():
    # (RA, -13) is exactly 10.0 deg (as distance_deg measures it) from (RA, -23)
    x = wcsupdate.Transform.from_shift(0.3, -0.2, 150.0, -23.0)
    assert wcsupdate.distance_deg(150.0, -13.0, 150.0, -23.0) == wcsupdate.MAX_DISTANCE_DEG
    res = wcsupdate.update_header(_far_header(150.0, -13.0), x, hdu_label="h")
    assert len(res.changes) == 4 and not res.notes
    col = wcsupdate.shift_columns(np.array([150.0]), np.array([-13.0]), x)
    assert col.n_moved == 1 and col.n_far == 0


def test_an_undone_image_wcs_is_restored():
    h = _far_header(RA0 + 0.01, DEC0 - 0.01)
    wcsupdate.update_header(h, XFM, hdu_label="h")
    assert h["CRVAL1"] != RA0 + 0.01
    res = wcsupdate.update_header(h, XFM, hdu_label="h", inverse=True)
    assert [c.key for c in res.changes] == ["CRVAL1", "CRVAL2", "RA_A", "DEC_A"]
    assert h["CRVAL1"] == pytest.approx(RA0 + 0.01, abs=1e-11)
    assert h["CRVAL2"] == pytest.approx(DEC0 - 0.01, abs=1e-11)


# ---------------------------------------------------------------------------------------------
# Geometry: general matrices, distances, single-precision input, attitude rows


def test_a_general_matrix_is_undone_exactly():
    # a matrix with a scale (determinant 0.9995, not 1): the undo divides by it
    x = wcsupdate.Transform.from_shift(0.3, -0.2, RA0, DEC0, matrix=(1.02, 0.01, -0.02, 0.98))
    ra, dec = np.array([RA0 + 0.05, RA0 - 0.03]), np.array([DEC0 - 0.04, DEC0 + 0.02])
    ra1, dec1 = wcsupdate.apply_sky(ra, dec, x)
    assert np.all(np.abs(ra1 - ra) > 1e-4)
    ra2, dec2 = wcsupdate.apply_sky(ra1, dec1, x, inverse=True)
    assert np.allclose(ra2, ra, atol=1e-11, rtol=0) and np.allclose(dec2, dec, atol=1e-11, rtol=0)


def test_distance_is_the_great_circle_separation():
    from astropy.coordinates import SkyCoord

    ra = np.array([RA0 + 1.0, RA0 - 30.0, RA0, 20.0, RA0 + 179.0])
    dec = np.array([62.0, 70.0, -40.0, -62.0, 0.0])
    got = wcsupdate.distance_deg(ra, dec, RA0, 61.0)
    want = SkyCoord(ra, dec, unit="deg").separation(SkyCoord(RA0, 61.0, unit="deg")).deg
    assert np.allclose(got, want, atol=1e-10, rtol=0)


def test_single_precision_input_is_computed_in_double():
    # float32 columns (FITS E) are used with their exact values, not rounded again to float32
    rng = np.random.default_rng(5)
    ra = (RA0 + rng.normal(0, 0.1, 20)).astype(np.float32)
    dec = (DEC0 + rng.normal(0, 0.1, 20)).astype(np.float32)
    roll = rng.uniform(0, 360, 20).astype(np.float32)
    ra64, dec64 = ra.astype(float), dec.astype(float)
    assert np.array_equal(wcsupdate.distance_deg(ra, dec, RA0, DEC0),
                          wcsupdate.distance_deg(ra64, dec64, RA0, DEC0))
    q = wcsupdate.attitude_quaternion(ra, dec, roll)
    assert q.dtype == np.float64
    assert np.array_equal(q, wcsupdate.attitude_quaternion(ra64, dec64, roll.astype(float)))
    new_ra, new_dec = (v.astype(np.float32) for v in wcsupdate.apply_sky(ra64, dec64, XFM))
    q1, n = wcsupdate.rotate_attitude(q, ra, dec, new_ra, new_dec)
    q2, _ = wcsupdate.rotate_attitude(q, ra64, dec64, new_ra.astype(float), new_dec.astype(float))
    assert n == 20 and np.array_equal(q1, q2)


def test_the_attitude_of_one_pointing_is_one_quaternion():
    q = wcsupdate.attitude_quaternion(RA0, DEC0, 45.0)
    assert q.shape == (4,)
    assert np.array_equal(q, wcsupdate.attitude_quaternion([RA0], [DEC0], [45.0])[0])


def test_a_row_with_a_bad_quaternion_is_left_and_the_others_turn():
    q = wcsupdate.attitude_quaternion([10.0, 11.0, 12.0], [5.0, 6.0, 7.0], [0.0, 0.0, 0.0])
    q[1, 2] = np.nan
    ra0, dec0 = np.array([10.0, 11.0, 12.0]), np.array([5.0, 6.0, 7.0])
    q1, n = wcsupdate.rotate_attitude(q, ra0, dec0, ra0 + 1e-4, dec0)
    assert n == 2
    assert np.isnan(q1[1, 2]) and np.array_equal(q1[1, :2], q[1, :2])
    assert not np.array_equal(q1[0], q[0]) and not np.array_equal(q1[2], q[2])


def test_no_row_moved_turns_no_quaternion():
    q = wcsupdate.attitude_quaternion([10.0, 11.0], [5.0, 6.0], [0.0, 30.0])
    q1, n = wcsupdate.rotate_attitude(q, [10.0, np.nan], [5.0, np.nan], [10.0, np.nan],
                                      [5.0, np.nan])
    assert n == 0 and np.array_equal(q1, q) and q1 is not q


# ---------------------------------------------------------------------------------------------
# Which cards are celestial WCS, which keywords are positions


@pytest.mark.parametrize("t1, t2, celestial", [
    ("RA---TAN", "DEC--TAN", True), ("RA", "DEC", True), ("RA--", "DEC-", True),
    ("RAX", "DEC", False), ("RAXX-TAN", "DECX-TAN", False), ("RA---TAN", "DECX", False),
])
def test_a_coordinate_type_is_matched_whole(t1, t2, celestial):
    h = fits.Header()
    h["NAXIS"] = 2
    h["CTYPE1"], h["CTYPE2"] = t1, t2
    assert wcsupdate.celestial_image_axes(h) == ([("", 1, 2)] if celestial else [])
    t = fits.Header()
    t["TFIELDS"] = 2
    t["TCTYP1"], t["TCTYP2"] = t1, t2
    assert bool(wcsupdate.celestial_table_columns(t)) is celestial


def test_wcs_keywords_of_axes_or_columns_that_do_not_exist_are_not_read():
    # FITS numbers axes and columns from 1; a stale TCTYP of a column beyond TFIELDS (a
    # column removed by a tool that left its keywords) is not a column
    h = fits.Header()
    h["NAXIS"] = 2
    h["CTYPE0"], h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN", "LINEAR"
    assert wcsupdate.celestial_image_axes(h) == []
    t = fits.Header()
    t["TFIELDS"] = 2
    t["TCTYP0"], t["TCTYP1"] = "RA---TAN", "DEC--TAN"
    t["TCTYP3"] = "RA---TAN"
    assert wcsupdate.celestial_table_columns(t) == []
    t["TCTYP1"], t["TCTYP2"], t["TCTYP3"] = "LINEAR", "RA---TAN", "DEC--TAN"
    assert wcsupdate.celestial_table_columns(t) == []


def test_more_ra_columns_than_dec_columns_pair_in_column_order():
    t = fits.Header()
    t["TFIELDS"] = 3
    t["TCTYP1"], t["TCTYP2"], t["TCTYP3"] = "RA---TAN", "DEC--TAN", "RA---TAN"
    assert wcsupdate.celestial_table_columns(t) == [("EQPOS", "TCRVL1", "TCRVL2", 1, 2)]


def test_commentary_cards_are_not_keywords_and_do_not_stop_the_index():
    h = fits.Header([fits.Card("HISTORY", "RA_NOM moved"), fits.Card("COMMENT", "a comment"),
                     fits.Card("", "a blank-keyword card"), fits.Card("RA_NOM", RA0, "[deg]"),
                     fits.Card("DEC_NOM", DEC0, "[deg]")])
    assert [c.keyword for c in h.cards][-2:] == ["RA_NOM", "DEC_NOM"]
    index = wcsupdate.keyword_index(h)
    assert set(index) == {"RA_NOM", "DEC_NOM"}
    assert [c.key for c in wcsupdate.update_header(h, XFM, hdu_label="h").changes] == [
        "RA_NOM", "DEC_NOM"]


@pytest.mark.parametrize("dval_comment, dunit, position", [
    ("[deg] position", None, True), ("position", "deg", True),
    ("position", "arcsec", False), ("1-sigma error", "deg", False), ("position", "errors", False),
])
def test_the_unit_of_a_long_keyword_decides_with_its_comment(dval_comment, dunit, position):
    h = fits.Header()
    set_keyword(h, "RA_OPTICAL", RA0, dval_comment)
    set_keyword(h, "DEC_OPTICAL", DEC0, dval_comment)
    if dunit is not None:
        h["DUNIT1"], h["DUNIT2"] = dunit, dunit
    pairs, rejected = wcsupdate.position_keyword_pairs(h)
    assert bool(pairs) is position
    assert rejected == ([] if position else
                        ["RA_OPTICAL/DEC_OPTICAL: not a position (comment/unit)"])


def test_the_comment_judged_is_that_of_the_card_whose_value_moves():
    # two RA_NOM cards: astropy reads (and the update moves) the first; its comment decides
    h = fits.Header()
    h.append(fits.Card("RA_NOM", RA0, "[deg] nominal"))
    h.append(fits.Card("RA_NOM", 0.5, "[arcsec] error"))
    h["DEC_NOM"] = (DEC0, "[deg] nominal")
    assert wcsupdate.keyword_index(h)["RA_NOM"] == ("RA_NOM", "RA_NOM", "[deg] nominal")
    assert len(wcsupdate.position_keyword_pairs(h)[0]) == 1


def test_plain_ra_dec_and_roll_keywords_are_a_position():
    h = fits.Header()
    h["RA"], h["DEC"], h["ROLL"] = (RA0, "[deg]"), (DEC0, "[deg]"), (30.0, "[deg]")
    res = wcsupdate.update_header(h, _rotated(1.0), hdu_label="h")
    assert [(c.key, c.what) for c in res.changes] == [("RA", "position"), ("DEC", "position"),
                                                      ("ROLL", "roll")]
    assert h["ROLL"] == pytest.approx(31.0) and not res.notes
    lone = fits.Header()
    lone["RA"] = (RA0, "[deg]")                 # a plain RA alone is not worth a note
    assert wcsupdate.position_keyword_pairs(lone) == ([], [])


def test_short_and_rejected_names_do_not_hide_the_next_pair():
    h = fits.Header()
    h["A_RA"], h["A_DEC"] = (RA0, "[deg]"), (DEC0, "[deg]")       # the shortest x_RA name
    h["RA_A"], h["DEC_A"] = (RA0, "[deg]"), (DEC0, "[arcsec] offset")   # one side says no
    h["RA_NOM"], h["DEC_NOM"] = (RA0, "[deg]"), (DEC0, "[deg]")
    pairs, rejected = wcsupdate.position_keyword_pairs(h)
    assert [(a[0], b[0]) for _, a, b in pairs] == [("A_RA", "A_DEC"), ("RA_NOM", "DEC_NOM")]
    assert rejected == ["RA_A/DEC_A: not a position (comment/unit)"]


# ---------------------------------------------------------------------------------------------
# Records, EQSRC and card values: the rest


def test_a_header_without_a_record_has_no_applied_state():
    assert wcsupdate.applied_state(fits.Header()) is None
    h = fits.Header()
    h["STKXFMID"] = " abc "
    assert wcsupdate.applied_state(h) == "abc"


def test_a_level_of_the_record_stack_is_there_when_its_id_is():
    # an earlier level with a value left undefined (no DX): still a level, undone to
    for pv_id, pv_dx in (("STKPV1ID", "STKPV1DX"), ("STKPVID", "STKPVDXI")):
        h = fits.Header()
        wcsupdate.record_transform(h, XFM, hdu_label="E")
        h[pv_id] = "0123456789abcdef"
        h[pv_dx.replace("DX", "DE").replace("DEI", "DET")] = 0.5
        wcsupdate.unrecord_transform(h, hdu_label="E")
        assert h["STKXFMID"] == "0123456789abcdef" and "STKDXI" not in h and h["STKDETA"] == 0.5


def test_populating_eqsrc_reports_the_value_it_replaced():
    grid = products.instrument_grid("ACIS")
    h = _xy_header("X", "Y")
    wcsupdate.populate_eqsrc(h, ra_deg=RA0, dec_deg=DEC0, pixel_deg=grid[0], crpix=grid[1],
                             hdu_label="t")
    h["TCDLT1"] = -1.0
    changes = wcsupdate.populate_eqsrc(h, ra_deg=RA0, dec_deg=DEC0, pixel_deg=grid[0],
                                       crpix=grid[1], hdu_label="t")
    assert changes == [wcsupdate.Change("t", "TCDLT1", -1.0, -grid[0], "EQSRC populated")]


def test_set_value_keeps_the_longest_comment_that_fits_in_80_characters():
    from stk_astrometry.wcsupdate import _set_value

    comment = "the tangent point of the stack, read from RA_STACK/DEC_STACK of the detections"
    h = fits.Header()
    h["KEY"] = (1.0, comment[:47])
    h["KEY2"] = (1.0, comment[:40])
    _set_value(h, "KEY", 123.456789012345)      # 'KEY     = 123.456789012345' + ' / ': 33
    assert h.comments["KEY"] == comment[:47]
    h["KEY"] = (1.0, comment[:50])
    _set_value(h, "KEY", 123.456789012345)
    assert h.comments["KEY"] == comment[:47]
    h["KEY"] = (1.0, comment)
    _set_value(h, "KEY", 123.456789012345)
    assert h.comments["KEY"] == comment[:80 - 33]
    _set_value(h, "KEY2", "x" * 66)             # a value that leaves no room: no comment
    assert h["KEY2"] == "x" * 66 and h.comments["KEY2"] == ""


def test_image_axes_are_those_of_naxis_or_wcsaxes():
    # a cube with its celestial axes second and third (axis 1 without a CTYPE)
    cube = fits.Header()
    cube["NAXIS"] = 3
    cube["CTYPE2"], cube["CTYPE3"] = "RA---TAN", "DEC--TAN"
    assert wcsupdate.celestial_image_axes(cube) == [("", 2, 3)]
    # WCSAXES beyond NAXIS (a third WCS axis on a 2-D image)
    h = fits.Header()
    h["NAXIS"], h["WCSAXES"] = 2, 3
    h["CTYPE1"], h["CTYPE2"], h["CTYPE3"] = "RA---TAN", "LINEAR", "DEC--TAN"
    assert wcsupdate.celestial_image_axes(h) == [("", 1, 3)]
    # a CTYPE beyond both (left over) is no axis
    del h["WCSAXES"]
    assert wcsupdate.celestial_image_axes(h) == []
    one = fits.Header()
    one["NAXIS"] = 1
    one["CTYPE1"], one["CTYPE2"] = "RA---TAN", "DEC--TAN"
    assert wcsupdate.celestial_image_axes(one) == [("", 1, 2)]     # two axes at least


def test_a_name_that_is_only_the_ra_suffix_is_no_position():
    h = fits.Header()
    h["_RA"], h["_DEC"] = (RA0, "[deg]"), (DEC0, "[deg]")
    assert wcsupdate.position_keyword_pairs(h) == ([], [])
