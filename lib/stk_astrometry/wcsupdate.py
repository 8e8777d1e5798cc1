"""What a transform changes in a header or a pair of RA/Dec columns.

Owns the astrometric rules of ``stk_update_wcs``: which header cards hold a
celestial reference point (image CTYPE/CRVAL axes with any alternate letter
except the physical 'P', table TCTYPn/TCRVLn and TCTYna/TCRVna on event x,y
columns (EQPOS, RA---/DEC--) and source position columns (EQSRC,
XLON-/XLAT-)), which keywords are RA/Dec position pairs (plain or split over
the CXC ``DTYPEn``/``DVALn`` long-name convention), which are not (errors,
sentinels), how a populated EQSRC looks, and how the transform's id is kept
in every changed HDU for idempotency and undo.

Everything operates on an in-memory ``astropy.io.fits.Header`` (edited in
place, on a copy the caller owns) or on numpy arrays, and returns frozen
dataclasses listing every change and everything skipped.  No file I/O here.

The mapping (formats.md §3): a position moves as
``tangent_to_sky(A @ sky_to_tangent(ra, dec; ref) + d; ref)``, with ``ref``
the stack tangent point of the transform and ``A`` its 2x2 matrix (identity
for the translations of this release).  It is exact whatever the product's
own tangent point is.  The inverse is ``A^-1 (xi - d)``; for a translation
``xi - d`` exactly, so an undo restores positions to ~1e-12 deg.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np

from stk_astrometry.tangent import sky_to_tangent, tangent_to_sky

__all__ = [
    "MAX_DISTANCE_DEG",
    "PROJECTION_LIMIT_DEG",
    "MAX_FORCED",
    "NOT_POSITION",
    "RECORD_KEYS",
    "Change",
    "ColumnResult",
    "HeaderResult",
    "Note",
    "Transform",
    "applied_state",
    "apply_sky",
    "attitude_quaternion",
    "rotate_attitude",
    "distance_deg",
    "celestial_image_axes",
    "celestial_table_columns",
    "eqsrc_problem",
    "is_position",
    "keyword_index",
    "populate_eqsrc",
    "position_keyword_pairs",
    "record_transform",
    "scrub_header",
    "shift_columns",
    "transform_id",
    "unrecord_transform",
    "update_header",
]

#: How many earlier records a forced transform can stack (STKPV1ID ... STKPV9ID).
MAX_FORCED = 9
#: Keywords recording the applied transform in every HDU that was changed: the current
#: record (STKXFMID, STKDXI, STKDETA), a stack of the records force=yes put under it
#: (STKPV<n>ID, STKPV<n>DX, STKPV<n>DE, n = 1 the most recent), and the one-level
#: STKPVID/STKPVDXI/STKPVDET of earlier releases (read as level 1).
RECORD_KEYS = (("STKXFMID", "STKDXI", "STKDETA")
               + tuple(f"STKPV{n}{s}" for n in range(1, MAX_FORCED + 1) for s in ("ID", "DX", "DE"))
               + ("STKPVID", "STKPVDXI", "STKPVDET"))
#: Positions farther than this from the transform's tangent point are moved with a note
#: (they hardly belong to a product of the stack); leaving them broke exact undo.
MAX_DISTANCE_DEG = 10.0
#: Positions this far (deg) from the tangent point, or farther, are left: the tangent
#: projection fails at 90 degrees.  Decided on the untransformed position both ways.
PROJECTION_LIMIT_DEG = 89.0


# --------------------------------------------------------------------------- transform

def transform_id(d_xi_arcsec, d_eta_arcsec, ra_ref_deg, dec_ref_deg) -> str:
    """The transform's identity (formats.md §2): 16 hex digits of a SHA-256.

    Of ``repr()`` of the TOTAL row's d_xi, d_eta, ra_ref, dec_ref (as Python
    floats) joined by commas.
    """
    text = ",".join(repr(float(v)) for v in (d_xi_arcsec, d_eta_arcsec, ra_ref_deg, dec_ref_deg))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


@dataclass(frozen=True)
class Transform:
    """A stk_xfm transform (the TOTAL row of an STKXFM table).

    Attributes
    ----------
    d_xi_arcsec, d_eta_arcsec : float
        Translation in the stack tangent plane; corrected xi = xi + d_xi.
    ra_ref_deg, dec_ref_deg : float
        Stack tangent point.
    matrix : tuple of 4 float
        a11, a12, a21, a22 (identity for a translation).
    xfm_id : str
        :func:`transform_id` of the above.
    """

    d_xi_arcsec: float
    d_eta_arcsec: float
    ra_ref_deg: float
    dec_ref_deg: float
    matrix: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 1.0)
    xfm_id: str = ""

    @classmethod
    def from_shift(cls, d_xi_arcsec, d_eta_arcsec, ra_ref_deg, dec_ref_deg, *, matrix=None):
        """Build a transform and its id."""
        m = (1.0, 0.0, 0.0, 1.0) if matrix is None else tuple(float(v) for v in matrix)
        return cls(float(d_xi_arcsec), float(d_eta_arcsec), float(ra_ref_deg),
                   float(dec_ref_deg), m,
                   transform_id(d_xi_arcsec, d_eta_arcsec, ra_ref_deg, dec_ref_deg))

    @property
    def is_translation(self) -> bool:
        """True when the matrix is the identity."""
        return self.matrix == (1.0, 0.0, 0.0, 1.0)

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of the matrix, degrees, counter-clockwise from +xi towards +eta."""
        a11, a12, a21, a22 = self.matrix
        return math.degrees(math.atan2(a21 - a12, a11 + a22))


def apply_sky(ra_deg, dec_deg, xfm: Transform, *, inverse: bool = False):
    """Move sky positions by ``xfm`` (or undo it).

    Returns
    -------
    ra_deg, dec_deg : ndarray
    """
    xi, eta = sky_to_tangent(ra_deg, dec_deg, xfm.ra_ref_deg, xfm.dec_ref_deg)
    a11, a12, a21, a22 = xfm.matrix
    if inverse:
        xi = xi - xfm.d_xi_arcsec
        eta = eta - xfm.d_eta_arcsec
        if not xfm.is_translation:
            det = a11 * a22 - a12 * a21
            xi, eta = (a22 * xi - a12 * eta) / det, (-a21 * xi + a11 * eta) / det
    else:
        if not xfm.is_translation:
            xi, eta = a11 * xi + a12 * eta, a21 * xi + a22 * eta
        xi = xi + xfm.d_xi_arcsec
        eta = eta + xfm.d_eta_arcsec
    return tangent_to_sky(xi, eta, xfm.ra_ref_deg, xfm.dec_ref_deg)


def distance_deg(ra_deg, dec_deg, ra0_deg, dec0_deg):
    """Angular distance (deg) of positions from (ra0, dec0) (haversine; NaN for NaN input)."""
    ra, dec = np.radians(np.asarray(ra_deg, dtype=float)), np.radians(np.asarray(dec_deg,
                                                                                 dtype=float))
    ra0, dec0 = math.radians(float(ra0_deg)), math.radians(float(dec0_deg))
    hav = (np.sin((dec - dec0) / 2) ** 2
           + np.cos(dec) * np.cos(dec0) * np.sin((ra - ra0) / 2) ** 2)
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0))))


def _apply_one(ra, dec, xfm, inverse):
    """The moved position, or None when the tangent projection cannot take it.

    Left: positions :data:`PROJECTION_LIMIT_DEG` or more from the tangent point,
    the distance being that of the untransformed position (the result of an
    undo), so that an undo leaves exactly the positions the update left and
    moves back exactly those it moved.
    """
    if float(distance_deg(ra, dec, xfm.ra_ref_deg, xfm.dec_ref_deg)) >= (
            90.0 if inverse else PROJECTION_LIMIT_DEG):
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        r, d = apply_sky(ra, dec, xfm, inverse=inverse)
    r, d = float(r), float(d)
    if not (math.isfinite(r) and math.isfinite(d)):
        return None
    if inverse and float(distance_deg(r, d, xfm.ra_ref_deg,
                                      xfm.dec_ref_deg)) >= PROJECTION_LIMIT_DEG:
        return None
    return r, d


def _far_note(hdu_label, what, old, xfm):
    """Why ``old`` was left: the tangent projection cannot take it."""
    dist = float(distance_deg(old[0], old[1], xfm.ra_ref_deg, xfm.dec_ref_deg))
    return Note(hdu_label, f"{what} = {old} is {dist:.1f} deg from the stack tangent point "
                           f"(the tangent projection fails {PROJECTION_LIMIT_DEG:g} deg or more "
                           "away): not of this stack; left")


def _moved_far_note(hdu_label, what, old, new, xfm, inverse):
    """A note for a moved position more than MAX_DISTANCE_DEG from the tangent point, or None."""
    base = new if inverse else old
    dist = float(distance_deg(base[0], base[1], xfm.ra_ref_deg, xfm.dec_ref_deg))
    if dist <= MAX_DISTANCE_DEG:
        return None
    return Note(hdu_label, f"{what} = {old} is {dist:.1f} deg from the stack tangent point "
                           f"(more than {MAX_DISTANCE_DEG:g}): hardly of this stack; moved "
                           "all the same (an undo moves it back exactly)")


def is_position(ra, dec) -> bool:
    """True for a usable position; False for nulls and sentinels.

    Sentinels: non-numbers, NaN/inf, anything outside RA [0, 360] / Dec
    [-90, 90] (-999 and friends), and the pair (0, 0) that CXC writes for
    "no pointing" (e.g. RA_PNT/DEC_PNT of aspect solutions, which wcs_update is
    known to throw 180 degrees away).
    """
    if isinstance(ra, bool) or isinstance(dec, bool):
        return False
    if not isinstance(ra, (int, float, np.integer, np.floating)):
        return False
    if not isinstance(dec, (int, float, np.integer, np.floating)):
        return False
    ra = float(ra)
    dec = float(dec)
    if not (math.isfinite(ra) and math.isfinite(dec)):
        return False
    if not (0.0 <= ra <= 360.0 and -90.0 <= dec <= 90.0):
        return False
    return not (ra == 0.0 and dec == 0.0)


# --------------------------------------------------------------------------- attitude

def _quat_mul(p, q):
    """Hamilton product p*q of scalar-last quaternions (rows); R(p*q) = R(p) R(q)."""
    pv, pw = p[..., :3], p[..., 3:]
    qv, qw = q[..., :3], q[..., 3:]
    w = pw * qw - np.sum(pv * qv, axis=-1, keepdims=True)
    v = pw * qv + qw * pv + np.cross(pv, qv)
    return np.concatenate([v, w], axis=-1)


def _axis_quat(axis: int, angle_rad):
    """Quaternions (scalar last) of rotations by ``angle_rad`` about x (0), y (1) or z (2)."""
    angle = np.asarray(angle_rad, dtype=float)
    q = np.zeros(angle.shape + (4,))
    q[..., axis] = np.sin(angle / 2)
    q[..., 3] = np.cos(angle / 2)
    return q


def attitude_quaternion(ra_deg, dec_deg, roll_deg):
    """Chandra attitude quaternions (q1 q2 q3 vector, q4 scalar) of pointings and rolls.

    The attitude matrix is Rz(ra) Ry(-dec) Rx(roll): its first column is the
    pointing, as in the Chandra aspect solution's ``q_att`` (the convention of
    the Chandra ``Quaternion`` package).  Vectorised over rows.
    """
    ra, dec, roll = (np.radians(np.asarray(v, dtype=float)) for v in (ra_deg, dec_deg, roll_deg))
    return _quat_mul(_quat_mul(_axis_quat(2, ra), _axis_quat(1, -dec)), _axis_quat(0, roll))


def rotate_attitude(q_att, ra_old_deg, dec_old_deg, ra_new_deg, dec_new_deg):
    """Turn attitude quaternions with their pointings moved from old to new RA/Dec.

    Each row is rotated by D = Rz(ra_new) Ry(dec_old - dec_new) Rz(-ra_old): the
    small rotation that takes the old pointing exactly onto the new one and keeps
    the roll angle of the attitude (its Rz Ry Rx decomposition) exactly, since
    D Rz(ra) Ry(-dec) Rx(roll) = Rz(ra_new) Ry(-dec_new) Rx(roll).  Undo (new back
    to old) is the inverse rotation.  Rows whose position did not change (nulls,
    sentinels, positions left) keep their quaternion bit for bit.

    Returns
    -------
    q_new : ndarray
        Same shape and dtype as ``q_att`` (N, 4).
    n_rotated : int
    """
    q = np.asarray(q_att)
    ra0, dec0, ra1, dec1 = (np.asarray(v, dtype=float).ravel()
                            for v in (ra_old_deg, dec_old_deg, ra_new_deg, dec_new_deg))
    with np.errstate(invalid="ignore"):
        moved = (np.isfinite(ra0) & np.isfinite(dec0) & np.isfinite(ra1) & np.isfinite(dec1)
                 & ((ra0 != ra1) | (dec0 != dec1)) & np.all(np.isfinite(q), axis=-1))
    out = q.copy()
    if not np.any(moved):
        return out, 0
    d = _quat_mul(_quat_mul(_axis_quat(2, np.radians(ra1[moved])),
                            _axis_quat(1, np.radians(dec0[moved] - dec1[moved]))),
                  _axis_quat(2, -np.radians(ra0[moved])))
    out[moved] = _quat_mul(d, q[moved].astype(float))
    return out, int(np.count_nonzero(moved))


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Change:
    """One changed header card or column pair.

    Attributes
    ----------
    hdu : str
        HDU label.
    key : str
        Keyword (or ``DVALn (NAME)``, or ``columns ra,dec``).
    old, new : object
        Values before and after (None for added/removed keywords).
    what : str
        ``EQPOS``, ``EQSRC``, ``position``, ``roll``, ``EQSRC populated``,
        ``scrub``, ``record``, ``columns``.
    """

    hdu: str
    key: str
    old: object
    new: object
    what: str

    def describe(self) -> str:
        """``[HDU] KEY old -> new (what)``."""
        return f"[{self.hdu}] {self.key} {_fmt(self.old)} -> {_fmt(self.new)} ({self.what})"


@dataclass(frozen=True)
class Note:
    """Something looked at and deliberately left alone (or worth saying)."""

    hdu: str
    message: str

    def describe(self) -> str:
        """``[HDU] message``."""
        return f"[{self.hdu}] {self.message}"


@dataclass(frozen=True)
class HeaderResult:
    """Changes made to one header and notes about what was left."""

    changes: tuple[Change, ...]
    notes: tuple[Note, ...]


def _fmt(value):
    if value is None:
        return "(none)"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --------------------------------------------------------------------------- WCS detection

_ALTS = ("",) + tuple(c for c in "ABCDEFGHIJKLMNOQRSTUVWXYZ")   # never 'P' (physical)


def _coord_type(ctype) -> str:
    """Coordinate type of a CTYPE value: 'RA' of 'RA---TAN', 'DETX' of 'DETX'."""
    text = str(ctype).strip().upper()
    if len(text) == 8 and text[4] == "-":
        return text[:4].rstrip("-")
    return text.rstrip("-")


_EQPOS_TYPES = ("RA", "DEC")
_EQSRC_TYPES = ("XLON", "XLAT")


def celestial_image_axes(header):
    """Celestial axis pairs of an image header.

    Returns
    -------
    list of (alt, ra_axis, dec_axis)
        ``alt`` '' or a letter; axes are 1-based.  A CTYPE with a TAN
        projection on a non-celestial type (DETX, FPX--TAN) is not celestial.
    """
    naxis = int(header.get("WCSAXES", header.get("NAXIS", 0)) or 0)
    found = []
    for alt in _ALTS:
        ra_axis = dec_axis = None
        for i in range(1, max(naxis, 2) + 1):
            key = f"CTYPE{i}{alt}"
            if key not in header:
                continue
            ctype = _coord_type(header[key])
            if ctype == "RA":
                ra_axis = i
            elif ctype == "DEC":
                dec_axis = i
        if ra_axis and dec_axis:
            found.append((alt, ra_axis, dec_axis))
    return found


def celestial_table_columns(header):
    """Celestial column pairs of a table header (pixel-list WCS, FITS WCS paper I table 2).

    Returns
    -------
    list of (kind, crval_key_ra, crval_key_dec, col_ra, col_dec)
        kind ``EQPOS`` (RA/DEC types) or ``EQSRC`` (XLON/XLAT); keys of the
        reference values (``TCRVLn`` for the primary description, ``TCRVna``
        for alternates).
    """
    nfields = int(header.get("TFIELDS", 0) or 0)
    found = []
    for alt in _ALTS:
        types = {}
        for n in range(1, nfields + 1):
            key = f"TCTYP{n}" if alt == "" else f"TCTY{n}{alt}"
            if key in header:
                types[n] = _coord_type(header[key])
        for kind, (lon, lat) in (("EQPOS", _EQPOS_TYPES), ("EQSRC", _EQSRC_TYPES)):
            lons = [n for n, t in types.items() if t == lon]
            lats = [n for n, t in types.items() if t == lat]
            for n_lon, n_lat in zip(lons, lats, strict=False):
                rv = (lambda n: f"TCRVL{n}") if alt == "" else (lambda n, a=alt: f"TCRV{n}{a}")
                found.append((kind, rv(n_lon), rv(n_lat), n_lon, n_lat))
    return found


# --------------------------------------------------------------------------- keywords

_DTYPE_RE = re.compile(r"^DTYPE(\d+)$")
# Words that make an RA_/DEC_ name (or an ra/dec column name) not a position, matched as
# whole tokens (separated by '_' or digits): RA_ERR, RA_SIGMA, RA_ERR90, RA_SRC_ERR are not
# positions; RA_MODEL, RA_RADIO, RA_CORR (corrected), RA_PRELIM, RA_OFFICIAL are.
NOT_POSITION = re.compile(
    r"(?:^|(?<=[_\d]))(ERR|ERROR|ERRS|SIG|SIGMA|UNC|UNCERT|RMS|DELTA|DEL|OFF|OFFSET|SCALE|"
    r"SCL|STD|STDDEV|VAR|VARIANCE|SIZE|WID|WIDTH|RAD|RADIUS|DIFF|DIST|RES|RESID|LIM|LIMIT|"
    r"RATE|VEL|PM|DOT)(?=$|[_\d])", re.IGNORECASE)
_NOT_POSITION_COMMENT = re.compile(r"arcsec|arcmin|\berr|uncert|sigma|mas\b", re.IGNORECASE)


def keyword_index(header):
    """Map every keyword name to the card holding its value.

    Returns
    -------
    dict
        NAME -> (value_key, label, comment): plain keywords map to themselves;
        a CXC long name ``DTYPEn = 'NAME'`` maps to ``DVALn`` (label
        ``DVALn (NAME)``, comment from DVALn and DUNITn).
    """
    index = {}
    for card in header.cards:
        key = card.keyword
        if not key or key in ("HISTORY", "COMMENT"):
            continue
        m = _DTYPE_RE.match(key)
        if m:
            n = m.group(1)
            name = str(card.value).strip().upper()
            if f"DVAL{n}" in header:
                comment = str(header.comments[f"DVAL{n}"])
                if f"DUNIT{n}" in header:
                    comment += " " + str(header[f"DUNIT{n}"])
                index[name] = (f"DVAL{n}", f"DVAL{n} ({name})", comment)
            continue
        if key.upper() not in index:
            index[key.upper()] = (key, key, str(card.comment))
    return index


def position_keyword_pairs(header):
    """RA/Dec keyword pairs of a header and the RA/Dec-like names that are not positions.

    Two families: ``RA``/``DEC`` and ``RA_x``/``DEC_x`` (RA_NOM, RA_PNT, RA_TARG,
    RA_STACK ...), and ``x_RA``/``x_DEC`` (the WAVnX_RA/WAVnX_DEC source positions
    of CSC region files, SRC_RA ...).  Either may be a plain keyword or a CXC long
    name (``DTYPEn``/``DVALn``).

    Returns
    -------
    pairs : list of (roll_name, ra_entry, dec_entry)
        Entries as in :func:`keyword_index`; ``roll_name`` the keyword of the roll
        angle that belongs to the pair (``ROLL``, ``ROLL_x``, ``x_ROLL``).
    rejected : list of str
        Names that look like RA/Dec but are not positions, with the reason.
    """
    index = keyword_index(header)
    pairs = []
    rejected = []
    for name in sorted(index):
        if name == "RA":
            qualifier, dec_name, roll_name = "", "DEC", "ROLL"
        elif name.startswith("RA_"):
            qualifier = name[3:]
            dec_name, roll_name = f"DEC_{qualifier}", f"ROLL_{qualifier}"
        elif name.endswith("_RA") and len(name) > 3:
            qualifier = name[:-3]
            dec_name, roll_name = f"{qualifier}_DEC", f"{qualifier}_ROLL"
        else:
            continue
        if NOT_POSITION.search(qualifier):
            rejected.append(f"{name}: not a position (name)")
            continue
        if dec_name not in index:
            if qualifier:
                rejected.append(f"{name}: no {dec_name} to pair with")
            continue
        ra_e, dec_e = index[name], index[dec_name]
        if _NOT_POSITION_COMMENT.search(ra_e[2]) or _NOT_POSITION_COMMENT.search(dec_e[2]):
            rejected.append(f"{name}/{dec_name}: not a position (comment/unit)")
            continue
        pairs.append((roll_name, ra_e, dec_e))
    return pairs, rejected


# --------------------------------------------------------------------------- record keys

def applied_state(header):
    """The transform id recorded in a header (STKXFMID) or None."""
    value = header.get("STKXFMID")
    return str(value).strip() if value is not None else None


_CURRENT = ("STKXFMID", "STKDXI", "STKDETA")
_LEGACY = ("STKPVID", "STKPVDXI", "STKPVDET")


def _level_keys(n):
    return (f"STKPV{n}ID", f"STKPV{n}DX", f"STKPV{n}DE")


def _records(header):
    """The record stack, current first: a list of (id, d_xi, d_eta) (None for a missing value)."""
    out = []
    if "STKXFMID" not in header:
        return out
    out.append(tuple(header.get(k) for k in _CURRENT))
    for n in range(1, MAX_FORCED + 1):
        keys = _level_keys(n)
        if keys[0] not in header:
            if n == 1 and _LEGACY[0] in header:
                out.append(tuple(header.get(k) for k in _LEGACY))
                continue
            break
        out.append(tuple(header.get(k) for k in keys))
    return out


_COMMENTS = ("id of the applied STKXFM transform", "[arcsec] applied shift in xi",
             "[arcsec] applied shift in eta")


def _write_records(header, records, hdu_label):
    """Make the header's record keywords say ``records`` (current first); return the changes."""
    wanted = {}
    for level, rec in enumerate(records):
        keys = _CURRENT if level == 0 else _level_keys(level)
        for key, value, comment in zip(keys, rec, _COMMENTS, strict=True):
            if value is not None:
                wanted[key] = (value, comment if level == 0
                               else f"forced over: {comment.replace('applied', 'earlier')}")
    changes = []
    for key in RECORD_KEYS:
        old = header.get(key)
        if key in wanted:
            value, comment = wanted[key]
            if old != value or key not in header:
                header[key] = (value, comment)
                changes.append(Change(hdu_label, key, old, value, "record"))
        elif key in header:
            del header[key]
            changes.append(Change(hdu_label, key, old, None, "record"))
    return changes


def record_transform(header, xfm: Transform, *, hdu_label: str):
    """Record ``xfm`` as applied (STKXFMID, STKDXI, STKDETA).

    A different transform already recorded (force=yes) is pushed onto the stack of
    earlier records, STKPV1ID/STKPV1DX/STKPV1DE (most recent) ... STKPV9*, so that
    inverse=yes can undo every level exactly.

    Raises
    ------
    ProductError
        The stack is full (:data:`MAX_FORCED` earlier records).
    """
    from stk_astrometry.errors import ProductError

    records = _records(header)
    new = (xfm.xfm_id, xfm.d_xi_arcsec, xfm.d_eta_arcsec)
    if records and str(records[0][0]).strip() == xfm.xfm_id:
        records[0] = new
    else:
        if len(records) > MAX_FORCED:
            raise ProductError(f"{hdu_label}: {len(records)} transforms already stacked by "
                               "force=yes; undo some (inverse=yes) first")
        records.insert(0, new)
    return _write_records(header, records, hdu_label)


def unrecord_transform(header, *, hdu_label: str):
    """Remove the record of the last applied transform (the previous one, if any, is current)."""
    records = _records(header)
    return _write_records(header, records[1:], hdu_label)


# --------------------------------------------------------------------------- EQSRC

def _column_number(header, name):
    nfields = int(header.get("TFIELDS", 0) or 0)
    for n in range(1, nfields + 1):
        if str(header.get(f"TTYPE{n}", "")).strip().lower() == name.lower():
            return n
    return None


def eqsrc_problem(header, *, pixel_deg: float, crpix: float) -> str | None:
    """Why a region table's EQSRC descriptor is missing or wrong, or None if it is good.

    Checked: X and Y columns exist (else there is nothing to describe: not a
    problem), TCTYP XLON-TAN/XLAT-TAN on them, finite reference values forming
    a position, pixel size (|TCDLT| within 1 %, X negative) and reference
    pixel (within 1 pixel) of the instrument's sky grid.
    """
    nx, ny = _column_number(header, "x"), _column_number(header, "y")
    if nx is None or ny is None:
        return None
    if (str(header.get(f"TCTYP{nx}", "")).strip().upper() != "XLON-TAN"
            or str(header.get(f"TCTYP{ny}", "")).strip().upper() != "XLAT-TAN"):
        return "EQSRC missing (no XLON-TAN/XLAT-TAN on X,Y)"
    crval = (header.get(f"TCRVL{nx}"), header.get(f"TCRVL{ny}"))
    if not is_position(*crval):
        return f"EQSRC reference value {crval} is not a position"
    dx, dy = header.get(f"TCDLT{nx}"), header.get(f"TCDLT{ny}")
    try:
        if not (abs(float(dx) / -pixel_deg - 1) < 0.01 and abs(float(dy) / pixel_deg - 1) < 0.01):
            return f"EQSRC pixel size ({dx}, {dy}) is not the sky grid's (-{pixel_deg}, {pixel_deg})"
        px, py = float(header.get(f"TCRPX{nx}")), float(header.get(f"TCRPX{ny}"))
    except (TypeError, ValueError):
        return "EQSRC incomplete (TCDLT/TCRPX missing)"
    if abs(px - crpix) > 1 or abs(py - crpix) > 1:
        return f"EQSRC reference pixel ({px}, {py}) is not the sky grid's {crpix}"
    return None


def populate_eqsrc(header, *, ra_deg, dec_deg, pixel_deg, crpix, hdu_label):
    """Write a complete EQSRC descriptor on the X, Y columns (spec-notes 18).

    The sky pixel grid is tangent at the pointing (RA_NOM, DEC_NOM) with the
    instrument's pixel size and reference pixel, so that is the EQSRC.
    """
    nx, ny = _column_number(header, "x"), _column_number(header, "y")
    changes = []
    values = {
        nx: ("XLON-TAN", float(ra_deg), -float(pixel_deg)),
        ny: ("XLAT-TAN", float(dec_deg), float(pixel_deg)),
    }
    for n, (ctype, crval, cdelt) in values.items():
        for key, value in ((f"TCTYP{n}", ctype), (f"TCRVL{n}", crval), (f"TCRPX{n}", float(crpix)),
                           (f"TCDLT{n}", cdelt), (f"TCUNI{n}", "deg")):
            old = header.get(key)
            if old != value:
                _set_value(header, key, value)
                changes.append(Change(hdu_label, key, old, value, "EQSRC populated"))
    # the DM descriptor naming it
    mtypes = {int(k[5:]): str(header[k]).strip().upper() for k in header
              if re.fullmatch(r"MTYPE\d+", k)}
    if "EQSRC" not in mtypes.values():
        m = max(mtypes, default=0) + 1
        header[f"MTYPE{m}"] = ("EQSRC", "DM Keyword: Descriptor name.")
        header[f"MFORM{m}"] = ("RA,DEC", "[deg]")
        changes.append(Change(hdu_label, f"MTYPE{m}", None, "EQSRC", "EQSRC populated"))
        changes.append(Change(hdu_label, f"MFORM{m}", None, "RA,DEC", "EQSRC populated"))
    return changes


# --------------------------------------------------------------------------- header update

def _set_value(header, key, value):
    """Set a card's value, keeping its comment, shortened if the new value leaves less room."""
    from astropy.io import fits

    comment = str(header.comments[key]) if key in header else ""
    room = fits.CARD_LENGTH if hasattr(fits, "CARD_LENGTH") else 80
    used = len(fits.Card(key, value).image.rstrip())
    if comment and used + 3 + len(comment) > room:
        comment = comment[:max(0, room - used - 3)]
    header[key] = (value, comment)


def _shift_reference_pair(header, ka, kb, kind, hdu_label, xfm, inverse, changes, notes):
    """Move one celestial WCS reference value pair (CRVALn/TCRVLn) by the transform.

    Non-positions and unprojectable positions are left with a note; far ones are
    moved with a note.  Appends to ``changes``/``notes``.
    """
    old = (header.get(ka), header.get(kb))
    if not is_position(*old):
        notes.append(Note(hdu_label, f"{kind} {ka}/{kb} = {old} is not a position; left"))
        return
    new = _apply_one(old[0], old[1], xfm, inverse)
    if new is None:
        notes.append(_far_note(hdu_label, f"{kind} {ka}/{kb}", old, xfm))
        return
    far = _moved_far_note(hdu_label, f"{kind} {ka}/{kb}", old, new, xfm, inverse)
    if far is not None:
        notes.append(far)
    for key, o, n in ((ka, old[0], new[0]), (kb, old[1], new[1])):
        _set_value(header, key, n)
        changes.append(Change(hdu_label, key, o, n, kind))


def update_header(header, xfm: Transform, *, hdu_label: str, inverse: bool = False,
                  wcs: bool = True, keywords: bool = True) -> HeaderResult:
    """Move every celestial reference value and RA/Dec keyword pair of ``header``.

    Edits ``header`` in place.  Only reference values (CRVAL, TCRVL/TCRV)
    change for a translation; CRPIX, CDELT, the physical 'P' WCS, LTV/LTM and
    detector axes are left alone.  ROLL_x of a moved RA_x/DEC_x pair turns by
    the transform's rotation (none for a translation).

    Parameters
    ----------
    header : astropy.io.fits.Header
    xfm : Transform
    hdu_label : str
    inverse : bool
        Undo ``xfm``.
    wcs, keywords : bool
        Which kinds of update to make.

    Returns
    -------
    HeaderResult
    """
    changes = []
    notes = []
    if wcs:
        for alt, ia, ib in celestial_image_axes(header):
            _shift_reference_pair(header, f"CRVAL{ia}{alt}", f"CRVAL{ib}{alt}", "EQPOS",
                                  hdu_label, xfm, inverse, changes, notes)
        for kind, ka, kb, _na, _nb in celestial_table_columns(header):
            _shift_reference_pair(header, ka, kb, kind, hdu_label, xfm, inverse, changes, notes)
    if keywords:
        pairs, rejected = position_keyword_pairs(header)
        for text in rejected:
            notes.append(Note(hdu_label, f"{text}; left"))
        index = keyword_index(header)
        rot = -xfm.rotation_deg if inverse else xfm.rotation_deg
        for roll_name, (ka, la, _), (kb, lb, _) in pairs:
            old = (header[ka], header[kb])
            if not is_position(*old):
                notes.append(Note(hdu_label, f"{la}/{lb} = {old}: sentinel or not a position; left"))
                continue
            new = _apply_one(old[0], old[1], xfm, inverse)
            if new is None:
                notes.append(_far_note(hdu_label, f"{la}/{lb}", old, xfm))
                continue
            far = _moved_far_note(hdu_label, f"{la}/{lb}", old, new, xfm, inverse)
            if far is not None:
                notes.append(far)
            for key, label, o, n in ((ka, la, old[0], new[0]), (kb, lb, old[1], new[1])):
                _set_value(header, key, n)
                changes.append(Change(hdu_label, label, o, n, "position"))
            if rot != 0.0 and roll_name in index:
                kr, lr, _ = index[roll_name]
                old_roll = header[kr]
                if isinstance(old_roll, (int, float)) and not isinstance(old_roll, bool) \
                        and math.isfinite(old_roll) and old_roll > -999:
                    new_roll = float(np.mod(old_roll + rot, 360.0))
                    _set_value(header, kr, new_roll)
                    changes.append(Change(hdu_label, lr, old_roll, new_roll, "roll"))
    return HeaderResult(tuple(changes), tuple(notes))


def scrub_header(header, names, *, hdu_label: str, remove: bool):
    """Observation-specific keywords of a master product (spec-notes 20).

    Returns the changes (``remove``) or notes listing what a scrub would remove.
    """
    index = keyword_index(header)
    present = [n for n in names if n in index]
    if not remove:
        if not present:
            return [], []
        return [], [Note(hdu_label, "header scrub (scrub=yes) would remove "
                                    + ", ".join(present))]
    changes = []
    for name in present:
        key, label, _ = index[name]
        old = header[key]
        if key.startswith("DVAL"):
            n = key[4:]
            for extra in (f"DTYPE{n}", f"DUNIT{n}"):
                if extra in header:
                    del header[extra]
        del header[key]
        changes.append(Change(hdu_label, label, old, None, "scrub"))
    return changes, []


# --------------------------------------------------------------------------- columns

@dataclass(frozen=True)
class ColumnResult:
    """Moved RA/Dec columns.

    Attributes
    ----------
    ra_deg, dec_deg : ndarray
        New values (same shape and dtype as the input); nulls, sentinels and
        positions the projection cannot take unchanged.
    n_moved, n_null, n_sentinel : int
        Counts of elements moved, NaN (null) and otherwise unusable (left).
    n_far : int
        Moved positions more than :data:`MAX_DISTANCE_DEG` from the tangent point
        (moved all the same; reported).
    n_unprojectable : int
        Positions :data:`PROJECTION_LIMIT_DEG` or more from the tangent point (left).
    """

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    n_moved: int
    n_null: int
    n_sentinel: int
    n_far: int = 0
    n_unprojectable: int = 0


def shift_columns(ra_deg, dec_deg, xfm: Transform, *, inverse: bool = False) -> ColumnResult:
    """Move every usable element of a pair of RA/Dec arrays (any shape)."""
    ra = np.asarray(ra_deg)
    dec = np.asarray(dec_deg)
    raf = ra.astype(float)
    decf = dec.astype(float)
    null = np.isnan(raf) | np.isnan(decf)
    with np.errstate(invalid="ignore"):
        usable = (~null & np.isfinite(raf) & np.isfinite(decf) & (raf >= 0) & (raf <= 360)
                  & (decf >= -90) & (decf <= 90) & ~((raf == 0) & (decf == 0)))
    good = usable.copy()
    if np.any(usable):
        # the projection fails 90 deg away: positions PROJECTION_LIMIT_DEG or more away
        # are left, decided on the untransformed position (the result of an undo), so
        # that an undo is exact
        good[usable] = distance_deg(raf[usable], decf[usable], xfm.ra_ref_deg,
                                    xfm.dec_ref_deg) < (90.0 if inverse
                                                        else PROJECTION_LIMIT_DEG)
    new_ra = ra.copy()
    new_dec = dec.copy()
    n_far = 0
    if np.any(good):
        with np.errstate(invalid="ignore", divide="ignore"):
            r, d = apply_sky(raf[good], decf[good], xfm, inverse=inverse)
        r, d = np.asarray(r, dtype=float), np.asarray(d, dtype=float)
        ok = np.isfinite(r) & np.isfinite(d)
        base_ra, base_dec = (r, d) if inverse else (raf[good], decf[good])
        with np.errstate(invalid="ignore"):
            dist = distance_deg(base_ra, base_dec, xfm.ra_ref_deg, xfm.dec_ref_deg)
            ok &= dist < PROJECTION_LIMIT_DEG
            n_far = int(np.count_nonzero(ok & (dist > MAX_DISTANCE_DEG)))
        idx = np.flatnonzero(good.ravel())
        good.ravel()[idx[~ok]] = False
        new_ra[good] = np.asarray(r)[ok]
        new_dec[good] = np.asarray(d)[ok]
    n_good = int(np.count_nonzero(good))
    n_null = int(np.count_nonzero(null))
    n_unproj = int(np.count_nonzero(usable)) - n_good
    return ColumnResult(new_ra, new_dec, n_good, n_null,
                        int(raf.size) - n_good - n_null - n_unproj, n_far, n_unproj)
