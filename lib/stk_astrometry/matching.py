"""The pure core of ``stk_match``: filters, cross-match, groups, counts, method.

Owns the science of preparing one stack's matched pairs (spec §5.1, §5.2,
§5.5.1, §5.5.2 and the first steps of §5.5.3/§5.5.4, as resolved in
``spec-notes.md`` items 7 and 10-13):

- the detection filters (likelihood class, saturation, convex hull, cone of
  radius ``r_stack``, unusable positions and error radii);
- the Gaia proper-motion filter (total proper motion, nulls kept);
- the ALLWISE filters (``cc_flags == '0000'``, best neighbour of a
  high-proper-motion Gaia source);
- source densities within ``r_stack`` before any filter;
- the cross-match of detections with a reference catalog (every pair within
  the match radius, ambiguous pairs included), with separation groups;
- ``n_match`` per catalog and per group (detections with at least one match);
- the direct/two-step decision of §5.5.2;
- the one-to-one Gaia-ALLWISE best-neighbour pairs within ``r_stack``.

Arrays and frozen dataclasses in, frozen dataclasses out.  numpy/scipy only:
no file I/O, no parameter reading and no logging here — every row removed is
counted in the result (:class:`FilterCount`) and the front end says so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from stk_astrometry.core.arrays import distinct_rows, n_distinct
from stk_astrometry.errors import ParameterError
from stk_astrometry.tangent import ARCSEC_PER_RAD, sky_to_tangent

__all__ = [
    "METHODS",
    "BestNeighbours",
    "Detections",
    "FilterCount",
    "GaiaSources",
    "MatchConfig",
    "MatchResult",
    "Pairs",
    "WiseGaiaPairs",
    "WiseSources",
    "angular_separation_arcsec",
    "assign_groups",
    "clean_cc_flags",
    "cone_density",
    "count_matches",
    "crossmatch",
    "decide_method",
    "high_proper_motion",
    "match_stack",
    "one_to_one",
    "unit_vectors",
    "valid_positions",
    "within_cone",
]

#: Values of the ``method`` parameter.
METHODS = ("auto", "direct", "twostep")

#: Likelihood classes kept (spec §5.1; spec-notes 12).
GOOD_CLASSES = ("TRUE", "MARGINAL")

ARCSEC_PER_DEG = 3600.0
ARCMIN_PER_DEG = 60.0


# --------------------------------------------------------------------------
# Inputs and configuration
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchConfig:
    """Settings of one matching run.

    Attributes
    ----------
    ra_stack_deg, dec_stack_deg : float
        Stack tangent point (``ra_stack``, ``dec_stack``), degrees.
    r_stack_arcmin : float
        Cone radius around the tangent point (spec ``r_stack``), arcmin.
    match_radius_arcsec : float
        Cross-match radius, arcsec (spec §5.1: 3").
    sep_bins_arcsec : tuple of float
        Upper edges of the separation groups, strictly increasing, arcsec.
        Group ``i`` (1-based) holds ``edge[i-2] < sep <= edge[i-1]``
        (``0 <= sep`` for group 1).  ``match_radius_arcsec`` must not exceed
        the last edge, so every pair has a group.
    max_pm_masyr : float
        Limit on the total Gaia proper motion, mas/yr (spec §5.2).
    method : str
        ``auto``, ``direct`` or ``twostep``.
    """

    ra_stack_deg: float
    dec_stack_deg: float
    r_stack_arcmin: float = 10.0
    match_radius_arcsec: float = 3.0
    sep_bins_arcsec: tuple = (1.0, 2.0, 3.0)
    max_pm_masyr: float = 50.0
    method: str = "auto"

    def __post_init__(self):
        # math.isfinite on the numbers: np.isfinite's answers without an array each (issue 11)
        if not (math.isfinite(self.ra_stack_deg) and 0.0 <= self.ra_stack_deg <= 360.0):
            raise ParameterError(f"ra_stack must be within [0, 360] deg, got {self.ra_stack_deg}")
        if not (math.isfinite(self.dec_stack_deg) and -90.0 <= self.dec_stack_deg <= 90.0):
            raise ParameterError(f"dec_stack must be within [-90, 90] deg, got {self.dec_stack_deg}")
        # pi r^2 must be > 0 too: the densities divide by it (r = 1e-300 underflows)
        if not (math.isfinite(self.r_stack_arcmin) and self.r_stack_arcmin > 0
                and math.pi * self.r_stack_arcmin**2 > 0):
            raise ParameterError(
                f"r_stack must be positive, with a non-zero cone area, got {self.r_stack_arcmin}"
            )
        if not (math.isfinite(self.match_radius_arcsec) and self.match_radius_arcsec > 0):
            raise ParameterError(
                f"match_radius must be positive, got {self.match_radius_arcsec}"
            )
        edges = tuple(float(e) for e in self.sep_bins_arcsec)
        if len(edges) == 0:
            raise ParameterError("sep_bins must list at least one group edge")
        # positive finite edges: b - a <= 0 (np.diff) exactly when b <= a
        if not all(math.isfinite(e) and e > 0 for e in edges) or any(
                b <= a for a, b in itertools.pairwise(edges)):
            raise ParameterError(
                "sep_bins must be positive and strictly increasing, got "
                + ",".join(f"{e:g}" for e in edges)
            )
        if self.match_radius_arcsec > edges[-1]:
            raise ParameterError(
                f"match_radius={self.match_radius_arcsec:g} exceeds the last sep_bins edge "
                f"{edges[-1]:g}: pairs beyond it would have no group; extend sep_bins"
            )
        object.__setattr__(self, "sep_bins_arcsec", edges)
        if not (math.isfinite(self.max_pm_masyr) and self.max_pm_masyr > 0):
            raise ParameterError(f"max_pm must be positive, got {self.max_pm_masyr}")
        if self.method not in METHODS:
            raise ParameterError(
                f"method must be one of {'|'.join(METHODS)}, got {self.method!r}"
            )

    @property
    def n_groups(self) -> int:
        """Number of separation groups."""
        return len(self.sep_bins_arcsec)


@dataclass(frozen=True, eq=False)
class Detections:
    """One stack's detections, one element per input row.

    Attributes
    ----------
    region_id : ndarray of int
        Detection id, unique within the stack.
    ra_deg, dec_deg : ndarray of float
        Positions, degrees.
    err_r0_arcsec, err_r1_arcsec : ndarray of float
        Error-ellipse semi-axes (CSC 95 % radii), arcsec.
    err_ang_deg : ndarray of float
        Error-ellipse position angle, degrees (carried, not used).
    theta_arcmin, src_cnts : ndarray of float
        Off-axis angle and counts (carried for the QA rules; NaN if unknown).
    likelihood_class : ndarray of str
        ``TRUE``/``MARGINAL``/``FALSE`` (compared upper-cased, stripped).
    sat_src_flag, conv_hull, man_inc : ndarray of bool, or None
        Saturated (in any contributing observation), convex-hull and manually
        included detections; None when the input has no such column
        (nothing flagged).
    """

    region_id: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    err_r0_arcsec: np.ndarray
    err_r1_arcsec: np.ndarray
    err_ang_deg: np.ndarray
    theta_arcmin: np.ndarray
    src_cnts: np.ndarray
    likelihood_class: np.ndarray
    sat_src_flag: np.ndarray | None = None
    conv_hull: np.ndarray | None = None
    man_inc: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ra_deg)


@dataclass(frozen=True, eq=False)
class GaiaSources:
    """Gaia sources of the stack cone (one element per input row).

    ``pmra_masyr``/``pmdec_masyr`` are NaN where null.  ``sigra_arcsec``/``sigdec_arcsec``
    are the 1-sigma position errors at the stack's epoch (None: 0, the specification's
    literal Gaia, see stk_match ``epoch``); they only travel to the pairs file.
    """

    source_id: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    pmra_masyr: np.ndarray
    pmdec_masyr: np.ndarray
    sigra_arcsec: np.ndarray | None = None
    sigdec_arcsec: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ra_deg)


@dataclass(frozen=True, eq=False)
class WiseSources:
    """ALLWISE sources of the stack cone (one element per input row).

    ``cc_flags`` holds the flags as strings (an integer 0 read from a CSV
    arrives as ``'0'`` and counts as clean, see :func:`clean_cc_flags`).
    """

    allwise_oid: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    sigra_arcsec: np.ndarray
    sigdec_arcsec: np.ndarray
    cc_flags: np.ndarray

    def __len__(self) -> int:
        return len(self.ra_deg)


@dataclass(frozen=True, eq=False)
class BestNeighbours:
    """The Gaia-ALLWISE best-neighbour table (``gaiadr2.allwise_best_neighbour``)."""

    source_id: np.ndarray
    allwise_oid: np.ndarray

    def __len__(self) -> int:
        return len(self.source_id)


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterCount:
    """How many rows one filter removed.

    Attributes
    ----------
    keyword : str
        FITS keyword (<= 8 characters) recording the count.
    count : int
        Rows removed (or, for ``removed=False`` entries, rows concerned).
    description : str
        One line for the log and the keyword comment.
    warn : bool
        True for rows dropped because they are unusable (bad positions or
        errors): the front end reports those as warnings.
    removed : bool
        False for informational counts (e.g. null proper motions kept).
    """

    keyword: str
    count: int
    description: str
    warn: bool = False
    removed: bool = True


@dataclass(frozen=True, eq=False)
class Pairs:
    """Detection-reference pairs within the match radius.

    Sorted by detection row, then separation.  Row indices refer to the
    input arrays (``Detections`` / ``GaiaSources`` or ``WiseSources``).

    Attributes
    ----------
    det_row, ref_row : ndarray of int
    sep_arcsec : ndarray of float
        Great-circle separation.
    d_xi_arcsec, d_eta_arcsec : ndarray of float
        Reference minus detection in the stack tangent plane.
    group : ndarray of int
        Separation group, 1..n_groups.
    n_cand : ndarray of int
        Candidates the pair's detection has in this catalog.
    n_match : int
        Detections with at least one match (spec-notes 7).
    n_match_group : tuple of int
        The same per group.
    """

    det_row: np.ndarray
    ref_row: np.ndarray
    sep_arcsec: np.ndarray
    d_xi_arcsec: np.ndarray
    d_eta_arcsec: np.ndarray
    group: np.ndarray
    n_cand: np.ndarray
    n_match: int
    n_match_group: tuple

    def __len__(self) -> int:
        return len(self.det_row)


@dataclass(frozen=True, eq=False)
class WiseGaiaPairs:
    """One-to-one ALLWISE-Gaia best-neighbour pairs (rows of the input tables).

    ``d_xi_arcsec``/``d_eta_arcsec`` are Gaia minus ALLWISE.
    """

    wise_row: np.ndarray
    gaia_row: np.ndarray
    sep_arcsec: np.ndarray
    d_xi_arcsec: np.ndarray
    d_eta_arcsec: np.ndarray

    def __len__(self) -> int:
        return len(self.wise_row)


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Everything ``stk_match`` writes for one stack.

    Attributes
    ----------
    config : MatchConfig
    det_rows : ndarray of int
        Input rows of the detections that passed the filters.
    det_xi_arcsec, det_eta_arcsec : ndarray
        Tangent-plane positions of every input detection (NaN if unusable).
    n_gaia_cand, n_wise_cand : ndarray of int
        Candidates of each kept detection (aligned with ``det_rows``).
    gaia_rows, wise_rows : ndarray of int
        Input rows of the reference sources that passed their filters.
    gaia_xi_arcsec, gaia_eta_arcsec, wise_xi_arcsec, wise_eta_arcsec : ndarray
        Tangent-plane positions of every input reference source.
    gaia_pairs : Pairs
    wise_pairs : Pairs or None
        None when no ALLWISE input was given.
    wise_gaia : WiseGaiaPairs
    density_gaia : float
        Gaia sources per arcmin^2 within ``r_stack``, before any filter.
    density_wise : float or None
        The same for ALLWISE (None without ALLWISE input).
    method : str
        ``direct``, ``twostep`` or ``none``.
    filters : tuple of FilterCount
    gaia_ra_deg, gaia_dec_deg : ndarray
        The Gaia positions the match used, one per input row: with ``motion`` (see
        :func:`match_stack`) at the stack's epoch for every row a result depends on and as
        given for the others; without it, the positions given.
    """

    config: MatchConfig
    det_rows: np.ndarray
    det_xi_arcsec: np.ndarray
    det_eta_arcsec: np.ndarray
    n_gaia_cand: np.ndarray
    n_wise_cand: np.ndarray
    gaia_rows: np.ndarray
    gaia_xi_arcsec: np.ndarray
    gaia_eta_arcsec: np.ndarray
    wise_rows: np.ndarray
    wise_xi_arcsec: np.ndarray
    wise_eta_arcsec: np.ndarray
    gaia_pairs: Pairs
    wise_pairs: Pairs | None
    wise_gaia: WiseGaiaPairs
    density_gaia: float
    density_wise: float | None
    method: str
    filters: tuple
    gaia_ra_deg: np.ndarray | None = None
    gaia_dec_deg: np.ndarray | None = None

    @property
    def n_match_gaia(self) -> int:
        return self.gaia_pairs.n_match

    @property
    def n_match_wise(self) -> int:
        return 0 if self.wise_pairs is None else self.wise_pairs.n_match


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------


def angular_separation_arcsec(ra1_deg, dec1_deg, ra2_deg, dec2_deg):
    """Great-circle separation, arcsec.

    Vincenty's formula (as in ``astropy.coordinates.angular_separation``),
    accurate at every separation, unlike the haversine near 180 deg or the
    cosine formula at small angles::

        sep = atan2(hypot(cos d2 sin da, cos d1 sin d2 - sin d1 cos d2 cos da),
                    sin d1 sin d2 + cos d1 cos d2 cos da)
    """
    ra1 = np.radians(np.asarray(ra1_deg, dtype=float))
    dec1 = np.radians(np.asarray(dec1_deg, dtype=float))
    ra2 = np.radians(np.asarray(ra2_deg, dtype=float))
    dec2 = np.radians(np.asarray(dec2_deg, dtype=float))
    dra = ra2 - ra1
    sin_d1, cos_d1 = np.sin(dec1), np.cos(dec1)
    sin_d2, cos_d2 = np.sin(dec2), np.cos(dec2)
    cos_dra = np.cos(dra)
    num1 = cos_d2 * np.sin(dra)
    num2 = cos_d1 * sin_d2 - sin_d1 * cos_d2 * cos_dra
    den = sin_d1 * sin_d2 + cos_d1 * cos_d2 * cos_dra
    return np.degrees(np.arctan2(np.hypot(num1, num2), den)) * ARCSEC_PER_DEG


def unit_vectors(ra_deg, dec_deg):
    """Cartesian unit vectors (n, 3) of sky positions."""
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    cos_dec = np.cos(dec)
    return np.column_stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)])


def _frame_vectors(ra_deg, dec_deg, ra0_deg):
    """Unit vectors (n, 3) of sky positions in the frame turned about the pole by ``ra0``
    (its x axis at RA ra0): :func:`unit_vectors` of (ra - ra0, dec), as :func:`_sky_terms`
    computes them.  A rotation keeps every distance: the chords between them are those of
    :func:`unit_vectors`, to rounding (~1e-16)."""
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    dra = ra - np.radians(np.asarray(ra0_deg, dtype=float))
    cos_dec = np.cos(dec)
    return np.column_stack([cos_dec * np.cos(dra), cos_dec * np.sin(dra), np.sin(dec)])


def _sky_terms(ra_deg, dec_deg, ra0_deg, dec0_deg):
    """``angular_separation_arcsec(ra, dec, ra0, dec0)``, ``sky_to_tangent(ra, dec, ra0,
    dec0)`` and ``_frame_vectors(ra, dec, ra0)`` from one set of sines and cosines (issue
    11: each computed its own, ~12 passes of libm's sin/cos over a 4,000-row catalog for 4:
    the unit vectors in the frame turned by ra0 need no sin/cos of ra itself).

    The same operations in the same order, so the same numbers: the separation's RA
    difference ``ra0 - ra`` is the tangent's ``ra - ra0`` negated (exactly), whose cosine is
    the same and sine the negated one (sin and cos are odd and even to the bit: checked on
    3e7 arguments, and test_matching compares this with the three functions), and the
    separation takes that sine's product only through ``hypot``, which ignores its sign.
    """
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    ra0 = np.radians(np.asarray(ra0_deg, dtype=float))
    dec0 = np.radians(np.asarray(dec0_deg, dtype=float))
    dra = ra - ra0
    sin_dec, cos_dec = np.sin(dec), np.cos(dec)
    sin_dec0, cos_dec0 = np.sin(dec0), np.cos(dec0)
    sin_dra, cos_dra = np.sin(dra), np.cos(dra)
    den = sin_dec * sin_dec0 + cos_dec * cos_dec0 * cos_dra
    num2 = cos_dec * sin_dec0 - sin_dec * cos_dec0 * cos_dra
    sep = np.degrees(np.arctan2(np.hypot(cos_dec0 * sin_dra, num2), den)) * ARCSEC_PER_DEG
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = cos_dec * sin_dra / den
        eta = (sin_dec * cos_dec0 - cos_dec * sin_dec0 * cos_dra) / den
    bad = ~(den > 0)
    if np.any(bad):
        xi = np.where(bad, np.nan, xi)
        eta = np.where(bad, np.nan, eta)
    xyz = np.column_stack([cos_dec * cos_dra, cos_dec * sin_dra, sin_dec])
    return sep, xi * ARCSEC_PER_RAD, eta * ARCSEC_PER_RAD, xyz


def valid_positions(ra_deg, dec_deg):
    """True where RA is finite in [0, 360] and Dec finite in [-90, 90] degrees."""
    ra = np.asarray(ra_deg, dtype=float)
    dec = np.asarray(dec_deg, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra <= 360) & (np.abs(dec) <= 90)


def within_cone(ra_deg, dec_deg, ra0_deg, dec0_deg, radius_arcmin):
    """True where a position lies within ``radius_arcmin`` of (ra0, dec0).

    Non-finite positions are outside.
    """
    sep = angular_separation_arcsec(ra_deg, dec_deg, ra0_deg, dec0_deg)
    with np.errstate(invalid="ignore"):
        return sep <= radius_arcmin * 60.0


def cone_density(ra_deg, dec_deg, ra0_deg, dec0_deg, radius_arcmin):
    """Sources per arcmin^2 within a cone (spec §5.1, §5.5.1; spec-notes 13).

    Counts every valid position (see :func:`valid_positions`) within
    ``radius_arcmin`` of the centre, whatever its flags, and divides
    by the geometric area ``pi r^2`` (the flat-sky area; the spherical cap
    differs by < 1e-5 for r = 10').  A cone partly outside the catalog's
    coverage is not corrected for.
    """
    inside = valid_positions(ra_deg, dec_deg) & within_cone(
        ra_deg, dec_deg, ra0_deg, dec0_deg, radius_arcmin
    )
    return _density(inside, radius_arcmin)


def _density(inside, radius_arcmin):
    """:func:`cone_density` from its mask of the valid positions within the cone."""
    return int(np.count_nonzero(inside)) / (np.pi * radius_arcmin**2)


# --------------------------------------------------------------------------
# Cross-match, groups, counts
# --------------------------------------------------------------------------


#: Above this many candidate pairs the sweep (:func:`_sweep_candidates`) gives way to a k-d
#: tree: large catalogs (3,000 x 100,000: the tree is ~2x faster) and fields where one axis
#: separates the sources badly.  A typical stack (100 x 5,000) tries ~3,000 candidates.
_SWEEP_MAX_CANDIDATES = 200_000
#: The sweep sorts the references by bins of this fraction of the chord along its axis when
#: fewer than _SWEEP_MAX_BINS of them span the references (int16 bin numbers: a radix sort;
#: a 10' cone at a 3" radius spans ~1,600), else by the coordinate itself.
_SWEEP_BINS_PER_CHORD = 4.0
_SWEEP_MAX_BINS = 32_000


def crossmatch(det_ra_deg, det_dec_deg, ref_ra_deg, ref_dec_deg, radius_arcsec, *,
               ref_reach=None, ref_move=None, ref_xyz=None, det_xyz=None):
    """Every (detection, reference) pair closer than ``radius_arcsec``.

    Candidates are the pairs of unit vectors within the chord length ``2 sin(r/2)``
    (a hair wider, so that rounding never loses a pair on the boundary): found by a
    sort-and-sweep along the axis on which the references spread most, or, when that
    would try too many pairs, by a k-d tree (``scipy.spatial.cKDTree``, imported only
    then).  The great-circle separation of each candidate then decides: pairs with
    ``sep <= radius`` are kept, so both searches give the same pairs.  Ambiguous pairs
    (a detection with several references or the reverse) are all kept (spec §5.5.3
    step 1).  Positions must be valid (see :func:`valid_positions`).

    With ``ref_reach`` (arcsec, one per reference) and ``ref_move``, the references are
    given where they were, each within its reach of where it is now: the candidates are
    searched within ``radius_arcsec`` + the largest reach, those within the radius + their
    own reach are asked for where they are now (``ref_move(indices)`` -> ra, dec, deg; once,
    sorted unique indices), and the separation there decides: the pairs, separations and
    order of a crossmatch on the present positions.  ``ref_xyz`` and ``det_xyz``: unit
    vectors of the references and of the detections in one frame (both or neither; e.g.
    :func:`_frame_vectors`, turned about the pole), when the caller has them: the chords
    only find the candidates (a hair wider than the radius's, and the great-circle
    separation decides), so the pairs are those of :func:`unit_vectors`.

    Returns
    -------
    det_index, ref_index : ndarray of int
        Indices into the given arrays, sorted by detection then separation.
    sep_arcsec : ndarray of float
    """
    empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0))
    if len(det_ra_deg) == 0 or len(ref_ra_deg) == 0:
        return empty
    widen = 0.0 if ref_reach is None else float(np.max(ref_reach))
    radius_rad = np.radians((radius_arcsec + widen) / ARCSEC_PER_DEG)
    # A hair wider than the chord so that rounding never loses a pair on
    # the boundary; the exact separation decides.
    chord = 2.0 * np.sin(radius_rad / 2.0) * (1.0 + 1e-9)
    if (ref_xyz is None) != (det_xyz is None):
        raise ValueError("crossmatch: ref_xyz and det_xyz go together (one frame)")
    if ref_xyz is None:
        det_xyz = unit_vectors(det_ra_deg, det_dec_deg)
        ref_xyz = unit_vectors(ref_ra_deg, ref_dec_deg)
    found = _sweep_candidates(det_xyz, ref_xyz, chord)
    if found is None:
        from scipy.spatial import cKDTree

        found = cKDTree(det_xyz).sparse_distance_matrix(cKDTree(ref_xyz), chord,
                                                        output_type="ndarray")
        found = (found["i"].astype(np.int64), found["j"].astype(np.int64))
    det_index, ref_index = found
    d_ra = np.asarray(det_ra_deg)[det_index]
    d_dec = np.asarray(det_dec_deg)[det_index]
    r_ra = np.asarray(ref_ra_deg)[ref_index]
    r_dec = np.asarray(ref_dec_deg)[ref_index]
    sep = angular_separation_arcsec(d_ra, d_dec, r_ra, r_dec)
    if ref_move is not None:
        # the candidates that can be within the radius now, at their present positions
        near = np.flatnonzero(sep <= radius_arcsec + np.asarray(ref_reach)[ref_index])
        if near.size:
            moved, at = _unique_inverse(ref_index[near])
            now_ra, now_dec = ref_move(moved)
            sep[near] = angular_separation_arcsec(d_ra[near], d_dec[near], now_ra[at],
                                                  now_dec[at])
    keep = sep <= radius_arcsec
    det_index, ref_index, sep = det_index[keep], ref_index[keep], sep[keep]
    order = np.lexsort((ref_index, sep, det_index))
    return det_index[order], ref_index[order], sep[order]


def _sweep_candidates(det_xyz, ref_xyz, chord):
    """The (det, ref) index pairs whose unit vectors lie within ``chord`` of each other (both
    sets non-empty).

    The references are sorted along the axis (x, y or z) on which they spread most; each
    detection's candidates are the references within ``chord`` of it along that axis (a
    necessary condition), then the 3-d distance decides.  None when the candidates
    along the axis would exceed :data:`_SWEEP_MAX_CANDIDATES`.
    """
    # each axis's range from its own column: np.ptp(ref_xyz, axis=0) reduces across the rows
    # of an (n, 3) array at ~15x the cost (issue 11: ~0.3 ms for 4,000 sources); max and min
    # are exact, so the ranges are the same numbers
    axis = int(np.argmax([np.ptp(ref_xyz[:, k]) for k in range(3)]))
    key = np.ascontiguousarray(ref_xyz[:, axis])
    near_lo = det_xyz[:, axis] - chord
    near_hi = det_xyz[:, axis] + chord
    start = key.min()                     # crossmatch calls with references, never without
    width = chord / _SWEEP_BINS_PER_CHORD
    if (key.max() - start) / width < _SWEEP_MAX_BINS:
        # the references sorted by bins of width chord / _SWEEP_BINS_PER_CHORD along the axis:
        # int16 bin numbers, which numpy's stable sort orders by a radix sort (issue 11: the
        # float sort took ~1.3 ms for 10,000 sources, the bins' ~40 us).  Each detection's
        # bins from that of key - chord to that of key + chord: floor((x - start) / width) is
        # monotone in x to the last bit (correctly rounded operations are), so they hold every
        # reference of the exact window and a few more; the 3-d distance decides as before, and
        # the order of the candidates is the caller's to set (crossmatch sorts its pairs).
        bins = ((key - start) / width).astype(np.int16)
        order = np.argsort(bins, kind="stable")
        ranked = bins[order].astype(np.float64)
        lo = np.searchsorted(ranked, np.floor((near_lo - start) / width), side="left")
        hi = np.searchsorted(ranked, np.floor((near_hi - start) / width), side="right")
    else:
        order = np.argsort(key, kind="stable")
        ranked = key[order]
        lo = np.searchsorted(ranked, near_lo, side="left")
        hi = np.searchsorted(ranked, near_hi, side="right")
    counts = hi - lo
    total = int(counts.sum())
    if total > _SWEEP_MAX_CANDIDATES:
        return None
    det_index = np.repeat(np.arange(len(det_xyz), dtype=np.int64), counts)
    # position k of the candidates of detection i: lo[i] + (k - first candidate of i)
    starts = np.cumsum(counts) - counts
    ref_sorted = np.arange(total, dtype=np.int64) - np.repeat(starts - lo, counts)
    ref_index = order[ref_sorted].astype(np.int64)
    diff = det_xyz[det_index] - ref_xyz[ref_index]
    close = np.einsum("ij,ij->i", diff, diff) <= chord * chord
    return det_index[close], ref_index[close]


def assign_groups(sep_arcsec, edges_arcsec):
    """Separation group (1-based) of each separation (spec §5.5.3 step 2).

    Group ``i`` holds ``edges[i-2] < sep <= edges[i-1]``; group 1 starts at 0
    (a separation of exactly 0 is in group 1).  Separations beyond the last
    edge get ``len(edges) + 1`` (:class:`MatchConfig` prevents those).
    """
    return np.searchsorted(np.asarray(edges_arcsec, dtype=float), sep_arcsec, side="left") + 1


def count_matches(det_index, group, n_groups):
    """``n_match`` overall and per group (spec §5.5.3 step 3; spec-notes 7).

    ``n_match`` counts *detections* with at least one match, not pairs: a
    detection with two candidates in group 1 counts once in group 1, and a
    detection with candidates in groups 1 and 3 counts once in each group
    and once overall.

    Returns
    -------
    n_match : int
    n_match_group : tuple of int, length n_groups
    """
    det_index = np.asarray(det_index)
    group = np.asarray(group)
    n_match = n_distinct(det_index)
    per_group = tuple(n_distinct(det_index[group == g]) for g in range(1, n_groups + 1))
    return n_match, per_group


def _unique_inverse(values):
    """``np.unique(values, return_inverse=True)`` of a 1-d array by its own algorithm: the
    sorted distinct values and, per value, the index of its own among them (whatever order
    the sort leaves equal values in, each maps to its run)."""
    order = np.argsort(values)
    ranked = values[order]
    first = np.ones(ranked.size, dtype=bool)
    first[1:] = ranked[1:] != ranked[:-1]
    inverse = np.empty(ranked.size, dtype=np.intp)
    inverse[order] = np.cumsum(first) - 1
    return ranked[first], inverse


def decide_method(n_match_gaia, n_match_wise, *, requested="auto", wise_available=True):
    """Direct or two-step (spec §5.5.2).

    ``auto``: ``none`` when no detection has a match in either catalog (spec
    §5.5.5), ``direct`` when ``n_match_gaia >= n_match_wise``, else
    ``twostep``.  A forced ``direct``/``twostep`` is honoured unless there is
    no match at all (``none``).  A forced ``twostep`` without ALLWISE input is
    a :class:`ParameterError`.
    """
    if requested not in METHODS:
        raise ParameterError(f"method must be one of {'|'.join(METHODS)}, got {requested!r}")
    if requested == "twostep" and not wise_available:
        raise ParameterError(
            "method=twostep needs the ALLWISE inputs: set wisefile and bestnbfile"
        )
    if n_match_gaia == 0 and n_match_wise == 0:
        return "none"
    if requested != "auto":
        return requested
    return "direct" if n_match_gaia >= n_match_wise else "twostep"


# --------------------------------------------------------------------------
# Catalog filters
# --------------------------------------------------------------------------


def high_proper_motion(pmra_masyr, pmdec_masyr, max_pm_masyr):
    """True where the total proper motion exceeds the limit (spec §5.2, §5.5.1).

    Total = sqrt(pmra^2 + pmdec^2) (the components added in quadrature,
    spec-notes 10).  A null (NaN) in either component gives False: such
    sources are kept (spec §5.2: mostly extragalactic).
    """
    total = np.hypot(np.asarray(pmra_masyr, dtype=float), np.asarray(pmdec_masyr, dtype=float))
    with np.errstate(invalid="ignore"):
        return np.isfinite(total) & (total > max_pm_masyr)


def clean_cc_flags(cc_flags):
    """True where the ALLWISE ``cc_flags`` say clean (spec §5.5.1: ``cc_flags=0``).

    Clean means the string is all zeros after stripping: ``'0000'``, or
    ``'0'`` from a reader that turned the flags into the integer 0.  Anything
    else (``'d000'``, ``'00h0'``, blank, null) is not clean.
    """
    flags = np.asarray(cc_flags, dtype=str)
    if flags.size == 0:  # np.char.replace cannot size its output for zero rows
        return np.zeros(flags.shape, dtype=bool)
    # the readers' flags are mostly '0000' already: those are clean, and only the others go
    # through numpy's string functions (issue 11: ~90 us for 1,600 rows)
    clean = flags == "0000"
    rest = ~clean
    if np.any(rest):
        other = np.char.strip(flags[rest])
        zeros = np.char.replace(other, "0", "")
        clean[rest] = (np.char.str_len(other) > 0) & (np.char.str_len(zeros) == 0)
    return clean


def one_to_one(wise_ids, gaia_ids):
    """Keep best-neighbour associations that are one-to-one (spec §5.5.4 step 17).

    An ALLWISE id associated with more than one distinct Gaia id, or a Gaia
    id associated with more than one distinct ALLWISE id, loses all its
    associations.  Repeated identical rows count as one association.

    Returns
    -------
    wise_ids, gaia_ids : ndarray of int64
        The surviving associations (unique, sorted by ALLWISE id).
    n_dropped : int
        Distinct associations dropped.
    """
    wise = np.asarray(wise_ids, dtype=np.int64).ravel()
    gaia = np.asarray(gaia_ids, dtype=np.int64).ravel()
    # the distinct (wise, gaia) rows in np.unique(axis=0)'s order, by a lexsort (issue 11:
    # 3x cheaper than unique's structured sort)
    order = np.lexsort((gaia, wise))
    wise, gaia = wise[order], gaia[order]
    first = np.ones(wise.size, dtype=bool)
    first[1:] = (wise[1:] != wise[:-1]) | (gaia[1:] != gaia[:-1])
    wise, gaia = wise[first], gaia[first]
    # an id is in one row when it is alone in its run of equal ids: the WISE ids are sorted
    # already, the Gaia ids once (issue 11: np.unique's counts and inverse, without them)
    g_order = np.argsort(gaia)
    keep = _alone(wise)
    keep[g_order] &= _alone(gaia[g_order])
    return wise[keep], gaia[keep], int(np.count_nonzero(~keep))


def _isin(values, wanted):
    """``np.isin(values, wanted)`` of 1-d integer arrays: each value looked up in ``wanted``
    sorted (issue 11: np.isin sorts both arrays together, ~0.1 ms for a cone's 1,600
    ALLWISE ids against a few hundred).  ``values`` may be empty, ``wanted`` too."""
    ranked = np.sort(wanted)
    if ranked.size == 0:
        return np.zeros(np.shape(values), dtype=bool)
    pos = np.minimum(np.searchsorted(ranked, values), ranked.size - 1)
    return ranked[pos] == values


def _alone(ranked):
    """True for each value of a sorted 1-d array that equals neither neighbour."""
    alone = np.ones(ranked.size, dtype=bool)
    differs = ranked[1:] != ranked[:-1]
    alone[1:] &= differs
    alone[:-1] &= differs
    return alone


def _first_occurrence(ids, order):
    """True for the first row of each distinct (integer) id; ``order``: the ids' stable sort
    order (``np.argsort(ids, kind="stable")``, which :func:`_row_lookup` shares: issue 11).

    ``np.unique(ids, return_index=True)``'s own algorithm (a stable sort, then the first of
    each run of equal ids), without its ~0.2 ms of wrapping for a 4,000-row catalog."""
    ids = np.asarray(ids)
    first = np.zeros(len(ids), dtype=bool)
    run = np.ones(len(ids), dtype=bool)
    ranked = ids[order]
    run[1:] = ranked[1:] != ranked[:-1]
    first[order[run]] = True
    return first


def _positive(values):
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values > 0)


def empty_pairs(n_groups):
    i = np.empty(0, dtype=np.int64)
    f = np.empty(0)
    return Pairs(i, i, f, f, f, i, i, 0, (0,) * n_groups)


def _make_pairs(det_rows, det_ra, det_dec, det_xi, det_eta,
                ref_rows, ref_ra, ref_dec, ref_xi, ref_eta, config, places=None):
    """Cross-match kept detections with kept references; rows are input rows.

    With ``places`` (a :class:`_Places` of the references' arrays), its unit vectors are
    used, and the references move to the stack's epoch where they can be within the match
    radius (``ref_xi``/``ref_eta`` are its arrays: read after the moves)."""
    reach = move = xyz = det_xyz = None
    if places is not None:
        xyz = places.xyz[ref_rows]
        det_xyz = _frame_vectors(det_ra[det_rows], det_dec[det_rows], places.ra0)
    if places is not None and places.motion is not None:
        reach = places.bound[ref_rows]

        def move(index):
            rows = ref_rows[index]
            places.move(rows)
            return places.ra[rows], places.dec[rows]

    di, ri, sep = crossmatch(
        det_ra[det_rows], det_dec[det_rows], ref_ra[ref_rows], ref_dec[ref_rows],
        config.match_radius_arcsec, ref_reach=reach, ref_move=move, ref_xyz=xyz,
        det_xyz=det_xyz,
    )
    if len(di) == 0:
        return empty_pairs(config.n_groups)
    det_row = det_rows[di]
    ref_row = ref_rows[ri]
    group = assign_groups(sep, config.sep_bins_arcsec)
    n_match, n_match_group = count_matches(det_row, group, config.n_groups)
    # each pair's detection's number of pairs (issue 11: np.unique's counts by its inverse,
    # without the sort: the rows are small non-negative integers)
    counts = np.bincount(det_row)
    return Pairs(
        det_row=det_row,
        ref_row=ref_row,
        sep_arcsec=sep,
        d_xi_arcsec=ref_xi[ref_row] - det_xi[det_row],
        d_eta_arcsec=ref_eta[ref_row] - det_eta[det_row],
        group=group.astype(np.int64),
        n_cand=counts[det_row].astype(np.int64),
        n_match=n_match,
        n_match_group=n_match_group,
    )


def _candidates(det_rows, pairs):
    """Candidates per kept detection (aligned with det_rows)."""
    if pairs is None or len(pairs) == 0:
        return np.zeros(len(det_rows), dtype=np.int64)
    # every pair's detection is one of det_rows (issue 11: counted by bincount, not np.unique)
    counts = np.bincount(pairs.det_row, minlength=int(det_rows[-1]) + 1)
    return counts[det_rows].astype(np.int64)


class _Places:
    """The Gaia positions of one match, moved to the stack's epoch row by row when a result
    can depend on it (issue 11).

    ``motion`` is None (the positions given are the ones to use) or has ``bound_arcsec``
    (per row: more than it moves; 0: it does not) and ``move(rows)`` -> (ra, dec) of those
    rows at the stack's epoch (:class:`stk_astrometry.core.epoch.Propagation`).  ``ra``,
    ``dec``, ``sep`` (from (ra0, dec0), arcsec), ``xi``, ``eta`` (tangent plane of (ra0,
    dec0), arcsec) and ``xyz`` (:func:`_frame_vectors`) are the present positions of every row
    (:func:`_sky_terms`): changed in place by :meth:`move`, so the arrays read after a move
    are the moved ones.
    """

    def __init__(self, ra, dec, ra0, dec0, motion):
        self.motion = motion
        self.ra0, self.dec0 = ra0, dec0
        if motion is None:
            self.ra, self.dec = ra, dec
        else:
            self.ra, self.dec = ra.copy(), dec.copy()
            self.bound = np.asarray(motion.bound_arcsec, dtype=float)
            self.todo = self.bound > 0
        self.sep, self.xi, self.eta, self.xyz = _sky_terms(self.ra, self.dec, ra0, dec0)

    def move(self, rows):
        """Move ``rows`` (not moved yet, with a bound > 0) to the stack's epoch."""
        if self.motion is None:
            return
        # the sorted distinct rows still to move (not a sort of the rows asked for, up to
        # ~1,000 with repeats)
        rows = distinct_rows(rows, self.todo.size, self.todo)
        if rows.size:
            self.todo[rows] = False
            ra, dec = self.motion.move(rows)
            self.ra[rows], self.dec[rows] = ra, dec
            self.sep[rows], self.xi[rows], self.eta[rows], self.xyz[rows] = _sky_terms(
                ra, dec, self.ra0, self.dec0)

    def within(self, radius_arcmin):
        """:func:`within_cone` of (ra0, dec0) of the present positions; the rows within
        their bound of the circle are moved first."""
        sep = self.sep
        with np.errstate(invalid="ignore"):
            inside = sep <= radius_arcmin * 60.0
            if self.motion is None:
                return inside
            edge = np.flatnonzero(self.todo & (np.abs(sep - radius_arcmin * 60.0) <= self.bound))
        self.move(edge)
        inside[edge] = within_cone(self.ra[edge], self.dec[edge], self.ra0, self.dec0,
                                   radius_arcmin)
        return inside


# --------------------------------------------------------------------------
# The whole stack
# --------------------------------------------------------------------------


def _good_class(likelihood_class):
    """True where the likelihood class, stripped and upper-cased, is one of GOOD_CLASSES.

    A class given as one exactly (the readers strip and upper-case it) is good without
    numpy's string functions, which only the others go through (issue 11: ~35 us for 200
    detections)."""
    klass = np.asarray(likelihood_class, dtype=str)
    good = np.zeros(klass.shape, dtype=bool)
    for name in GOOD_CLASSES:
        good |= klass == name
    rest = ~good
    if np.any(rest):
        good[rest] = np.isin(np.char.upper(np.char.strip(klass[rest])), GOOD_CLASSES)
    return good


def filter_detections(det, config):
    """Apply the detection filters (spec §5.1, §5.5.1; spec-notes 12).

    In order: unusable positions (NaN/out of range), unusable error radii
    (non-positive or NaN: they would get infinite weight), likelihood class
    not TRUE/MARGINAL, saturated, convex hull, outside ``r_stack``.  A row
    is counted under the first filter that removes it.

    Returns
    -------
    keep : ndarray of bool
    counts : list of FilterCount
    """
    keep = np.ones(len(det), dtype=bool)
    counts = []

    def apply(ok, keyword, description, *, warn=False):
        removed = keep & ~ok
        counts.append(FilterCount(keyword, int(np.count_nonzero(removed)), description, warn))
        keep[removed] = False

    apply(valid_positions(det.ra_deg, det.dec_deg), "NDBADPOS",
          "detections dropped: NaN or out-of-range ra/dec", warn=True)
    apply(_positive(det.err_r0_arcsec) & _positive(det.err_r1_arcsec), "NDBADERR",
          "detections dropped: error radius NaN or <= 0", warn=True)
    apply(_good_class(det.likelihood_class), "NDCLASS",
          "detections dropped: likelihood_class not TRUE/MARGINAL")
    if det.sat_src_flag is not None:
        apply(~np.asarray(det.sat_src_flag, dtype=bool), "NDSAT",
              "detections dropped: saturated (sat_src_flag)")
    else:
        counts.append(FilterCount("NDSAT", 0, "detections dropped: saturated (no column)"))
    if det.conv_hull is not None:
        apply(~np.asarray(det.conv_hull, dtype=bool), "NDHULL",
              "detections dropped: convex hull (conv_hull)")
    else:
        counts.append(FilterCount("NDHULL", 0, "detections dropped: convex hull (no column)"))
    apply(within_cone(det.ra_deg, det.dec_deg, config.ra_stack_deg, config.dec_stack_deg,
                      config.r_stack_arcmin),
          "NDOUTR", "detections dropped: beyond r_stack")
    if det.man_inc is not None:
        n_man = int(np.count_nonzero(keep & np.asarray(det.man_inc, dtype=bool)))
        counts.append(FilterCount("NDMANINC", n_man, "manually included detections kept",
                                  removed=False))
    return keep, counts


def match_stack(det, gaia, config, *, wise=None, best_neighbours=None, motion=None):
    """Filter, cross-match and count one stack (spec §5.1-§5.5.2).

    Parameters
    ----------
    det : Detections
        The stack's detections (one stack only).
    gaia : GaiaSources
        Gaia sources of the cone (unfiltered).
    config : MatchConfig
    wise : WiseSources, optional
        ALLWISE sources of the cone (unfiltered).
    best_neighbours : BestNeighbours, optional
        The Gaia-ALLWISE best-neighbour table; required with ``wise``.
    motion : optional
        How the Gaia sources move to the stack's epoch, when ``gaia`` holds them at their
        catalog's epoch (:class:`stk_astrometry.core.epoch.Propagation`: ``bound_arcsec``
        per row, ``move(rows)``): a row is moved where it can change a result -- within
        its bound of the ``r_stack`` circle or of the match radius around a kept
        detection, or an end of a kept best-neighbour pair -- and every result is that of a
        match of the moved positions (``MatchResult.gaia_ra_deg``/``gaia_dec_deg``: the
        positions used).

    Returns
    -------
    MatchResult

    Notes
    -----
    Filters, each counted (see :class:`FilterCount` keywords):

    - detections: :func:`filter_detections`;
    - Gaia: unusable positions (warned), repeated ``source_id`` (warned),
      total proper motion > ``max_pm`` (nulls kept);
    - ALLWISE: unusable positions, non-positive/NaN ``sigra``/``sigdec``,
      repeated ``allwise_oid`` (warned), ``cc_flags`` not clean, best
      neighbour (any best-neighbour row) a high-proper-motion source of the
      Gaia table (spec-notes 11);
    - best neighbours: not one-to-one, an end missing from its filtered
      table, an end beyond ``r_stack``.

    Reference sources are not cut at ``r_stack`` for the cross-match: a
    detection near the cone's edge keeps its counterpart just outside it.
    Densities count every input row within ``r_stack`` before any filter.
    """
    if (wise is None) != (best_neighbours is None):
        raise ParameterError("wisefile and bestnbfile must be given together")
    ra0, dec0 = config.ra_stack_deg, config.dec_stack_deg
    filters = [FilterCount("NDETIN", len(det), "detections of the stack read", removed=False)]

    det_ra = np.asarray(det.ra_deg, dtype=float)
    det_dec = np.asarray(det.dec_deg, dtype=float)
    det_keep, det_counts = filter_detections(det, config)
    filters.extend(det_counts)
    det_rows = np.flatnonzero(det_keep)
    filters.append(FilterCount("NDET", len(det_rows), "detections kept", removed=False))
    det_xi, det_eta = sky_to_tangent(det_ra, det_dec, ra0, dec0)

    # Gaia
    g_ra = np.asarray(gaia.ra_deg, dtype=float)
    g_dec = np.asarray(gaia.dec_deg, dtype=float)
    # cone_density's two masks, kept: the best neighbours' r_stack test and the position
    # filter are the same masks (issue 11: each is a pass over the whole catalog).  A moved
    # row was valid and stays so (RA in [0, 360), |Dec| <= 90): the mask is the moved one's
    g_valid = valid_positions(g_ra, g_dec)
    places = _Places(g_ra, g_dec, ra0, dec0, motion)
    g_ra, g_dec, g_xi, g_eta = places.ra, places.dec, places.xi, places.eta
    g_cone = places.within(config.r_stack_arcmin)
    density_gaia = _density(g_valid & g_cone, config.r_stack_arcmin)
    filters.append(FilterCount("NGAIAIN", len(gaia), "Gaia sources read", removed=False))
    g_keep = np.ones(len(gaia), dtype=bool)
    filters.append(FilterCount("NGBADPOS", int(np.count_nonzero(~g_valid)),
                               "Gaia sources dropped: NaN or out-of-range ra/dec", warn=True))
    g_keep &= g_valid
    g_ids = np.asarray(gaia.source_id, dtype=np.int64)
    g_order = np.argsort(g_ids, kind="stable")     # shared by the two id searches (issue 11)
    g_first = _first_occurrence(g_ids, g_order)
    filters.append(FilterCount("NGDUPID", int(np.count_nonzero(g_keep & ~g_first)),
                               "Gaia sources dropped: repeated source_id", warn=True))
    g_keep &= g_first
    g_high = high_proper_motion(gaia.pmra_masyr, gaia.pmdec_masyr, config.max_pm_masyr)
    filters.append(FilterCount("NGHIPM", int(np.count_nonzero(g_keep & g_high)),
                               "Gaia sources dropped: total proper motion > max_pm"))
    g_keep &= ~g_high
    g_null = ~np.isfinite(np.hypot(np.asarray(gaia.pmra_masyr, dtype=float),
                                   np.asarray(gaia.pmdec_masyr, dtype=float)))
    filters.append(FilterCount("NGNULLPM", int(np.count_nonzero(g_keep & g_null)),
                               "Gaia sources kept with null proper motion", removed=False))
    gaia_rows = np.flatnonzero(g_keep)
    filters.append(FilterCount("NGAIA", len(gaia_rows), "Gaia sources kept", removed=False))
    gaia_pairs = _make_pairs(det_rows, det_ra, det_dec, det_xi, det_eta,
                             gaia_rows, g_ra, g_dec, g_xi, g_eta, config, places)

    # ALLWISE
    empty_i = np.empty(0, dtype=np.int64)
    empty_f = np.empty(0)
    wise_pairs = None
    density_wise = None
    wise_rows = empty_i
    w_xi = w_eta = empty_f
    wise_gaia = WiseGaiaPairs(empty_i, empty_i, empty_f, empty_f, empty_f)
    if wise is not None:
        w_ra = np.asarray(wise.ra_deg, dtype=float)
        w_dec = np.asarray(wise.dec_deg, dtype=float)
        w_ids = np.asarray(wise.allwise_oid, dtype=np.int64)
        w_valid = valid_positions(w_ra, w_dec)
        w_places = _Places(w_ra, w_dec, ra0, dec0, None)
        w_cone = w_places.within(config.r_stack_arcmin)
        density_wise = _density(w_valid & w_cone, config.r_stack_arcmin)
        filters.append(FilterCount("NWISEIN", len(wise), "ALLWISE sources read", removed=False))
        w_keep = np.ones(len(wise), dtype=bool)

        def wise_filter(ok, keyword, description, *, warn=False):
            removed = w_keep & ~ok
            filters.append(FilterCount(keyword, int(np.count_nonzero(removed)), description, warn))
            w_keep[removed] = False

        wise_filter(w_valid, "NWBADPOS",
                    "ALLWISE sources dropped: NaN or out-of-range ra/dec", warn=True)
        wise_filter(_positive(wise.sigra_arcsec) & _positive(wise.sigdec_arcsec), "NWBADERR",
                    "ALLWISE sources dropped: sigra/sigdec NaN or <= 0", warn=True)
        w_order = np.argsort(w_ids, kind="stable")
        wise_filter(_first_occurrence(w_ids, w_order), "NWDUPID",
                    "ALLWISE sources dropped: repeated allwise_oid", warn=True)
        wise_filter(clean_cc_flags(wise.cc_flags), "NWCCFLAG",
                    "ALLWISE sources dropped: cc_flags not '0000'")
        bn_wise = np.asarray(best_neighbours.allwise_oid, dtype=np.int64)
        bn_gaia = np.asarray(best_neighbours.source_id, dtype=np.int64)
        high_ids = g_ids[g_high]
        hipm_wise_ids = bn_wise[_isin(bn_gaia, high_ids)]
        wise_filter(~_isin(w_ids, hipm_wise_ids), "NWHIPM",
                    "ALLWISE sources dropped: best neighbour has high proper motion")
        wise_rows = np.flatnonzero(w_keep)
        filters.append(FilterCount("NWISE", len(wise_rows), "ALLWISE sources kept",
                                   removed=False))
        w_xi, w_eta = w_places.xi, w_places.eta
        wise_pairs = _make_pairs(det_rows, det_ra, det_dec, det_xi, det_eta,
                                 wise_rows, w_ra, w_dec, w_xi, w_eta, config, w_places)

        # One-to-one best neighbours, both ends kept and within r_stack.
        filters.append(FilterCount("NBNIN", len(best_neighbours),
                                   "best-neighbour rows read", removed=False))
        o_wise, o_gaia, n_multi = one_to_one(bn_wise, bn_gaia)
        filters.append(FilterCount("NBNMULTI", n_multi,
                                   "best-neighbour associations dropped: not one-to-one"))
        w_in = w_keep & w_cone
        g_in = g_keep & g_cone
        w_row_of = _row_lookup(w_ids, w_keep, o_wise, w_order)
        g_row_of = _row_lookup(g_ids, g_keep, o_gaia, g_order)
        present = (w_row_of >= 0) & (g_row_of >= 0)
        filters.append(FilterCount("NBNMISS", int(np.count_nonzero(~present)),
                                   "best-neighbour pairs dropped: an end not in its "
                                   "filtered table"))
        inside = present.copy()
        inside[present] = w_in[w_row_of[present]] & g_in[g_row_of[present]]
        filters.append(FilterCount("NBNOUTR", int(np.count_nonzero(present & ~inside)),
                                   "best-neighbour pairs dropped: an end beyond r_stack"))
        wr = w_row_of[inside]
        gr = g_row_of[inside]
        order = np.argsort(wr, kind="stable")
        wr, gr = wr[order], gr[order]
        places.move(gr)
        wise_gaia = WiseGaiaPairs(
            wise_row=wr,
            gaia_row=gr,
            sep_arcsec=angular_separation_arcsec(w_ra[wr], w_dec[wr], g_ra[gr], g_dec[gr]),
            d_xi_arcsec=g_xi[gr] - w_xi[wr],
            d_eta_arcsec=g_eta[gr] - w_eta[wr],
        )
        filters.append(FilterCount("NWGPAIRS", len(wise_gaia),
                                   "one-to-one ALLWISE-Gaia pairs kept", removed=False))

    method = decide_method(
        gaia_pairs.n_match,
        0 if wise_pairs is None else wise_pairs.n_match,
        requested=config.method,
        wise_available=wise is not None,
    )
    return MatchResult(
        config=config,
        det_rows=det_rows,
        det_xi_arcsec=det_xi,
        det_eta_arcsec=det_eta,
        n_gaia_cand=_candidates(det_rows, gaia_pairs),
        n_wise_cand=_candidates(det_rows, wise_pairs),
        gaia_rows=gaia_rows,
        gaia_xi_arcsec=g_xi,
        gaia_eta_arcsec=g_eta,
        wise_rows=wise_rows,
        wise_xi_arcsec=w_xi,
        wise_eta_arcsec=w_eta,
        gaia_pairs=gaia_pairs,
        wise_pairs=wise_pairs,
        wise_gaia=wise_gaia,
        density_gaia=density_gaia,
        density_wise=density_wise,
        method=method,
        filters=tuple(filters),
        gaia_ra_deg=g_ra,
        gaia_dec_deg=g_dec,
    )


def _row_lookup(table_ids, table_keep, wanted_ids, order):
    """Row of each wanted id among the kept rows of a table (-1 if absent); ``order``: the
    table ids' stable sort order (:func:`_first_occurrence`'s).  Its kept rows, in that
    order, are the kept ids' own stable order (a stable sort keeps a subset's order)."""
    out = np.full(len(wanted_ids), -1, dtype=np.int64)
    rows = order[np.asarray(table_keep)[order]]
    if len(rows) == 0 or len(wanted_ids) == 0:
        return out
    sorted_ids = np.asarray(table_ids)[rows]
    # searchsorted's positions are >= 0: only the upper end is clipped (np.clip's wrapper
    # cost more than the search; issue 11)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted_ids), len(sorted_ids) - 1)
    found = sorted_ids[pos] == wanted_ids
    out[found] = rows[pos[found]]
    return out
