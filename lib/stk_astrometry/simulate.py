"""Seeded simulation of one CSC detection stack, its reference catalogs and their truth.

Owns the physical model behind ``stk_simulate`` and the benchmarks: where
detections fall, how big their error ellipses are, which Gaia/ALLWISE sources
exist, which are true counterparts, and what the Cramer-Rao bound of the direct
fit is.  Pure numpy/scipy: frozen dataclasses in, frozen dataclasses of arrays
out (plus astropy Tables built from them by :func:`catalog_tables`); no file
I/O and no parameter reading here (the files are written by
:mod:`stk_astrometry.simfiles`, for :func:`stk_astrometry.api.simulate_stack` and its front
end ``stk_simulate``).

The model (also in ``share/doc/stk_simulate.txt``)
---------------------------------------------------
Frames.  Everything is built in the plane tangent at the stack point
(``ra_stack``, ``dec_stack``), arcsec, xi east, eta north.  The *reference*
frame is Gaia's.  Detections are measured in a frame translated by the true
shift: ``det_xi = true_xi - d_xi + noise`` so that ``corrected = det + d``
(the STKXFM convention, formats.md).  ALLWISE is measured in its own frame,
``wise_xi = true_xi - wise_d_xi + noise`` (default ``wise_d = 0``); the two
legs of the two-step path are then det->WISE ``d - wise_d`` and WISE->Gaia
``wise_d``.

Shift.  A component given as None is drawn from N(0, ``shift_sigma``); with
both drawn, ``|d|`` is Rayleigh-distributed with mode ``shift_sigma``
(CSC 2.1: shifts peak near 0.2 arcsec, ~90 % below 0.4 arcsec).

Detections.  Off-axis angle ``theta = r_stack * u**0.8`` (u uniform), i.e. a
surface density falling as ``theta**-0.75`` towards the field edge;
position angle uniform.  Counts follow a Euclidean logN-logS,
``N(>C) ~ C**-1.5`` above a limit ``c_min(theta) = 4 + 0.3 theta**2``
(the detection limit rises as the PSF grows), capped at 1e5.

Error model (CSC-like).  PSF 90 % encircled-energy radius
``r90(theta) = r90_0 + 0.06 theta**2`` arcsec (theta in arcmin; r90_0 = 0.5 for
ACIS, 0.4 for HRC: 6.5 arcsec at 10 arcmin), Gaussian PSF rms per axis
``s_psf = r90 / 2.1460`` (sqrt(-2 ln 0.1)).  One-sigma positional error per
axis ``sigma = sqrt(s_psf**2 / counts + floor**2)`` with ``floor = 0.1``
arcsec.  The ellipse keeps ``sqrt(a b) = sigma`` with axis ratio
``b/a ~ U(0.6, 1)`` and position angle (north through east) ~ U(0, 180).
Written as CSC 95 % radii: ``err_ellipse_r0 = 2.4477 a``,
``err_ellipse_r1 = 2.4477 b``.  The detected position is the true one minus
the shift plus a Gaussian draw from that ellipse.

Counterparts.  A fraction ``gaia_frac`` of the detections have a true Gaia
counterpart and, independently, ``wise_frac`` a true ALLWISE counterpart (a
detection with both has its ALLWISE source associated with its Gaia source).
Detections classed FALSE or planted with a false match have none.  Gaia
positions are at the Gaia epoch: ``gaia = true + pm * epoch_gap`` (the
detection sees the source ``epoch_gap`` years earlier; ALLWISE 5.5 years
earlier than Gaia).  The Gaia epoch is DR3's, J2016.0 (the catalog has no
``ref_epoch`` column: stk_match's default), and the detections' header says
when they were taken, ``DATE-OBS``/``MJD-OBS`` = J2016.0 - ``epoch_gap``
(:func:`stack_epoch_keywords`), so stk_match moves Gaia back to the detections'
epoch as it would on a real stack.

Gaia.  ``N ~ Poisson(gaia_density * pi * (r_stack + margin)**2)`` sources in
the cone; counterparts, planted false matches and blended companions are taken
out of that budget, the rest is uniform over the cone, so chance matches come
from the density alone.  Proper motions: a fraction ``null_pm_frac`` null
(NaN), ``high_pm_frac`` with total pm log-uniform in 50-500 mas/yr, the rest
N(0, 4 mas/yr) per component.

ALLWISE.  ``N ~ Poisson(wise_density * area)``; detection counterparts from
the budget; each remaining source is associated with a random unassociated
field Gaia source with probability ``wise_gaia_frac`` (else it is an IR-only
source at a random position).  1-sigma ``sigra``, ``sigdec`` log-uniform in
0.05-0.5 arcsec; ``cc_flags`` '0000' with probability ``clean_frac``, else one
of a few contaminated codes ('D000', 'h000', 'H000', 'P000', '0d00', '00h0').
A fraction ``multi_frac`` of associated ALLWISE sources get a second Gaia source
0.5-2 arcsec from the first with the same best neighbour (many-to-one,
``number_of_mates = 1``).

Planted false matches (``false_frac``, default 0: the realistic mode plants
none).  That fraction of the TRUE/MARGINAL detections loses its true
counterpart and gets a Gaia source uniform within ``match_radius`` of its
detected position as given (the circle stk_match searches) instead.

Flags.  likelihood_class TRUE/MARGINAL/FALSE with probabilities
0.80/0.15/0.05; ``sat_src_flag`` 2 % (drawn among the brightest half),
``conv_hull`` 3 %, ``man_inc`` 2 %.

Cramer-Rao bound.  The pairs the direct fit can use are the detections that
pass the stk_match filters (TRUE or MARGINAL, not saturated, not convex hull,
theta <= r_stack) whose true Gaia counterpart passes the proper-motion rule
(null, or total pm <= 50 mas/yr) and lies within ``match_radius`` of the
detected position.  With detection covariance ``C_i`` (the 1-sigma ellipse) and
exact Gaia positions, the Fisher matrix of (d_xi, d_eta) is ``F = sum C_i^-1``
and the bound is ``crb_xi = sqrt((F^-1)_xx)``, ``crb_eta = sqrt((F^-1)_yy)``.
``crb_iso = 1 / sqrt(sum 1/(a_i b_i))`` is the spec's isotropic version
(sigma^2 = a b, spec §4).  The proper-motion displacement ``pm * epoch_gap`` of
counterparts is extra scatter the bound does not include: set
``epoch_gap = 0`` for a clean comparison.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from .core.radii import R90_PER_SIGMA, R95_PER_SIGMA
from .errors import ParameterError
from .tangent import tangent_to_sky

__all__ = [
    "CC_FLAG_CODES",
    "SIGMA_TO_R95",
    "BestNeighbours",
    "Detections",
    "GaiaCatalog",
    "SimConfig",
    "SimulatedStack",
    "Truth",
    "WiseCatalog",
    "catalog_tables",
    "crb_from_ellipses",
    "make_stack_id",
    "position_sigma_arcsec",
    "psf_r90_arcsec",
    "simulate_stack",
    "wise_designation",
]

#: 95 % radius of a 2-D Gaussian in units of its per-axis sigma: sqrt(-2 ln 0.05).
SIGMA_TO_R95 = R95_PER_SIGMA
#: 90 % radius of a 2-D Gaussian in units of its per-axis sigma: sqrt(-2 ln 0.1).
SIGMA_TO_R90 = R90_PER_SIGMA
#: Contaminated ALLWISE cc_flags codes drawn for unclean sources.
CC_FLAG_CODES = ("D000", "h000", "H000", "P000", "0d00", "00h0")
#: ALLWISE mean epoch is ~5.5 yr before the Gaia DR2 epoch (2010.0 vs 2015.5).
WISE_EPOCH_GAP_YR = 5.5
#: Total proper motion above which Gaia sources are excluded (spec §5.2), mas/yr.
HIGH_PM_MASYR = 50.0
_ONE_SIGMA_NORMAL_PM_MASYR = 4.0


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated stack (all angles in the units their names say).

    See the module docstring for the model each field enters.
    """

    ra_stack_deg: float = 189.2
    dec_stack_deg: float = 62.2
    instrument: str = "ACIS"
    stack_id: str | None = None
    ndet: int = 50
    r_stack_arcmin: float = 10.0
    margin_arcmin: float = 0.1
    shift_xi_arcsec: float | None = None
    shift_eta_arcsec: float | None = None
    shift_sigma_arcsec: float = 0.25
    err_floor_arcsec: float = 0.1
    missing_floor_arcsec: float = 0.0
    stated_err_scale: float = 1.0
    bright_outliers: int = 0
    gaia_density: float = 2.0
    gaia_frac: float = 0.6
    null_pm_frac: float = 0.1
    high_pm_frac: float = 0.03
    epoch_gap_yr: float = 10.0
    wise_density: float = 1.5
    wise_frac: float = 0.3
    wise_gaia_frac: float = 0.7
    multi_frac: float = 0.05
    clean_frac: float = 0.85
    wise_shift_xi_arcsec: float = 0.0
    wise_shift_eta_arcsec: float = 0.0
    false_frac: float = 0.0
    match_radius_arcsec: float = 3.0
    marginal_frac: float = 0.15
    false_class_frac: float = 0.05
    sat_frac: float = 0.02
    hull_frac: float = 0.03
    man_inc_frac: float = 0.02

    def __post_init__(self):
        if self.instrument not in ("ACIS", "HRC"):
            raise ParameterError(f"instrument={self.instrument!r}: must be ACIS or HRC")
        if self.ndet < 0:
            raise ParameterError(f"ndet={self.ndet}: must be >= 0")
        if not self.r_stack_arcmin > 0:
            raise ParameterError(f"r_stack={self.r_stack_arcmin}: must be > 0 arcmin")
        if not -90.0 <= self.dec_stack_deg <= 90.0:
            raise ParameterError(f"dec_stack={self.dec_stack_deg}: must be within [-90, 90]")
        for name in ("gaia_density", "wise_density", "shift_sigma_arcsec", "match_radius_arcsec",
                     "margin_arcmin", "err_floor_arcsec", "missing_floor_arcsec",
                     "bright_outliers"):
            if not getattr(self, name) >= 0:
                raise ParameterError(f"{name}={getattr(self, name)}: must be >= 0")
        if not self.stated_err_scale > 0:
            raise ParameterError(f"stated_err_scale={self.stated_err_scale}: must be > 0")
        for name in ("gaia_frac", "null_pm_frac", "high_pm_frac", "wise_frac", "wise_gaia_frac",
                     "multi_frac", "clean_frac", "false_frac", "marginal_frac",
                     "false_class_frac", "sat_frac", "hull_frac", "man_inc_frac"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ParameterError(f"{name}={value}: must be within [0, 1]")
        if self.null_pm_frac + self.high_pm_frac > 1.0:
            raise ParameterError(
                f"null_pm_frac + high_pm_frac = {self.null_pm_frac + self.high_pm_frac}: must be <= 1")
        if self.marginal_frac + self.false_class_frac > 1.0:
            raise ParameterError("marginal_frac + false_class_frac must be <= 1")


@dataclass(frozen=True)
class Detections:
    """The simulated stack detection table (CSC 2.x names; one entry per detection)."""

    region_id: np.ndarray        #: int32, 1..n
    ra_deg: np.ndarray           #: detected position
    dec_deg: np.ndarray
    xi_arcsec: np.ndarray        #: detected position in the tangent plane (detection frame)
    eta_arcsec: np.ndarray
    err_r0_arcsec: np.ndarray    #: 95 % semi-major radius
    err_r1_arcsec: np.ndarray    #: 95 % semi-minor radius
    err_ang_deg: np.ndarray      #: position angle of the major axis, north through east
    theta_arcmin: np.ndarray
    src_cnts: np.ndarray
    likelihood_class: np.ndarray  #: 'TRUE' / 'MARGINAL' / 'FALSE'
    sat_src_flag: np.ndarray     #: bool
    conv_hull: np.ndarray        #: bool
    man_inc: np.ndarray          #: bool


@dataclass(frozen=True)
class GaiaCatalog:
    """Gaia sources in the cone (positions at the Gaia epoch)."""

    source_id: np.ndarray        #: int64
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    pmra_masyr: np.ndarray       #: NaN when null
    pmdec_masyr: np.ndarray


@dataclass(frozen=True)
class WiseCatalog:
    """ALLWISE sources in the cone."""

    allwise_oid: np.ndarray      #: int64
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    sigra_arcsec: np.ndarray     #: 1-sigma
    sigdec_arcsec: np.ndarray
    cc_flags: np.ndarray         #: 4-character strings


@dataclass(frozen=True)
class BestNeighbours:
    """Gaia DR2 ``allwise_best_neighbour``-like associations (one row per Gaia source)."""

    source_id: np.ndarray
    allwise_oid: np.ndarray
    angular_distance_arcsec: np.ndarray
    number_of_neighbours: np.ndarray  #: ALLWISE sources within 2 arcsec of the Gaia source (>= 1)
    number_of_mates: np.ndarray       #: other Gaia sources with the same best neighbour
    wise_index: np.ndarray            #: row in the WiseCatalog (to build the designation)


@dataclass(frozen=True)
class Truth:
    """What the simulation knows and a fit should recover."""

    d_xi_arcsec: float
    d_eta_arcsec: float
    wise_d_xi_arcsec: float
    wise_d_eta_arcsec: float
    crb_xi_arcsec: float          #: NaN when no usable pair
    crb_eta_arcsec: float
    crb_iso_arcsec: float
    n_crb: int                    #: pairs entering the bound
    true_xi_arcsec: np.ndarray    #: per detection, reference frame, X-ray epoch
    true_eta_arcsec: np.ndarray
    true_ra_deg: np.ndarray
    true_dec_deg: np.ndarray
    sigma_major_arcsec: np.ndarray  #: 1-sigma ellipse axes
    sigma_minor_arcsec: np.ndarray
    gaia_id: np.ndarray           #: true Gaia counterpart's source_id, -1 when none
    wise_id: np.ndarray           #: true ALLWISE counterpart's allwise_oid, -1 when none
    false_gaia_id: np.ndarray     #: planted false match's source_id, -1 when none
    passes_filters: np.ndarray    #: bool: survives the stk_match detection filters
    in_crb: np.ndarray            #: bool: enters the Cramer-Rao bound
    n_gaia_in_rstack: int
    n_wise_in_rstack: int
    gaia_density_in_rstack: float  #: sources per arcmin^2 within r_stack (what stk_match counts)
    wise_density_in_rstack: float


@dataclass(frozen=True)
class SimulatedStack:
    """One simulated stack: its configuration, catalogs and truth."""

    config: SimConfig
    seed: int | None
    stack_id: str
    detections: Detections
    gaia: GaiaCatalog
    wise: WiseCatalog
    best_neighbours: BestNeighbours
    truth: Truth
    extras: dict = field(default_factory=dict, compare=False, repr=False)


# --------------------------------------------------------------------------- small pure helpers


def make_stack_id(ra_deg, dec_deg, instrument, *, version=1):
    """CSC stack name ``{acis|hrc}fJhhmmsss{p|m}ddmmss_nnn`` for a position.

    ``hhmmsss`` is RA with tenths of a second without the dot; the sign of the
    declination is written ``p``/``m`` as in CSC file names (ciao-conventions §4.3).
    """
    ra_s = round((ra_deg % 360.0) / 15.0 * 3600.0, 1)
    ra_s = ra_s % 86400.0
    hh = int(ra_s // 3600)
    mm = int((ra_s - hh * 3600) // 60)
    ss = ra_s - hh * 3600 - mm * 60
    sign = "p" if dec_deg >= 0 else "m"
    dec_s = round(abs(dec_deg) * 3600.0)
    dd, rem = divmod(dec_s, 3600)
    dm, ds = divmod(rem, 60)
    prefix = "acisf" if instrument.upper() == "ACIS" else "hrcf"
    return f"{prefix}J{hh:02d}{mm:02d}{round(ss * 10):03d}{sign}{dd:02d}{dm:02d}{ds:02d}_{version:03d}"


def wise_designation(ra_deg, dec_deg):
    """ALLWISE-style designations ``JHHMMSS.ss+DDMMSS.s`` (truncated, as the survey does)."""
    ra = np.mod(np.asarray(ra_deg, dtype=float), 360.0) / 15.0
    dec = np.asarray(dec_deg, dtype=float)
    out = []
    for r, d in zip(ra.ravel(), dec.ravel(), strict=True):
        rs = math.floor(r * 360000.0) / 100.0  # RA seconds of time, truncated to 0.01 s
        hh, rem = divmod(rs, 3600.0)
        mm, ss = divmod(rem, 60.0)
        ds_total = math.floor(abs(d) * 36000.0) / 10.0
        dd, drem = divmod(ds_total, 3600.0)
        dm, dsec = divmod(drem, 60.0)
        sign = "+" if d >= 0 else "-"
        out.append(f"J{int(hh):02d}{int(mm):02d}{ss:05.2f}{sign}{int(dd):02d}{int(dm):02d}{dsec:04.1f}")
    return np.array(out, dtype="U19")


def psf_r90_arcsec(theta_arcmin, instrument="ACIS"):
    """PSF 90 % encircled-energy radius: ``r90_0 + 0.06 theta**2`` arcsec (theta in arcmin)."""
    r90_0 = 0.5 if instrument == "ACIS" else 0.4
    theta = np.asarray(theta_arcmin, dtype=float)
    return r90_0 + 0.06 * theta**2


def position_sigma_arcsec(theta_arcmin, counts, *, instrument="ACIS", floor_arcsec=0.1):
    """One-sigma positional error per axis: ``sqrt((r90/2.146)**2 / counts + floor**2)``."""
    s_psf = psf_r90_arcsec(theta_arcmin, instrument) / SIGMA_TO_R90
    return np.sqrt(s_psf**2 / np.asarray(counts, dtype=float) + floor_arcsec**2)


def crb_from_ellipses(sigma_major, sigma_minor, pa_deg):
    """Cramer-Rao bound on a common translation from independent elliptical Gaussian errors.

    Parameters
    ----------
    sigma_major, sigma_minor : array_like
        1-sigma semi-axes, arcsec.
    pa_deg : array_like
        Position angle of the major axis, degrees north (+eta) through east (+xi).

    Returns
    -------
    crb_xi, crb_eta, crb_iso : float
        ``sqrt(diag((sum C_i^-1)^-1))`` and the isotropic ``1/sqrt(sum 1/(a b))``;
        NaN when there is no pair.
    """
    a = np.asarray(sigma_major, dtype=float)
    b = np.asarray(sigma_minor, dtype=float)
    if a.size == 0:
        return math.nan, math.nan, math.nan
    pa = np.radians(np.asarray(pa_deg, dtype=float))
    ux, uy = np.sin(pa), np.cos(pa)  # major axis direction in (xi, eta)
    ia, ib = 1.0 / a**2, 1.0 / b**2
    # C^-1 = ia u u^T + ib v v^T with v the minor-axis direction (uy, -ux).
    fxx = np.sum(ia * ux * ux + ib * uy * uy)
    fyy = np.sum(ia * uy * uy + ib * ux * ux)
    fxy = np.sum((ia - ib) * ux * uy)
    det = fxx * fyy - fxy * fxy
    crb_xi = math.sqrt(fyy / det)
    crb_eta = math.sqrt(fxx / det)
    crb_iso = 1.0 / math.sqrt(np.sum(1.0 / (a * b)))
    return crb_xi, crb_eta, crb_iso


def _unique_ids(rng, n, low, high):
    """n distinct random int64 ids in [low, high), in random order."""
    ids = np.unique(rng.integers(low, high, size=n, dtype=np.int64))
    while ids.size < n:
        more = rng.integers(low, high, size=n - ids.size, dtype=np.int64)
        ids = np.unique(np.concatenate([ids, more]))
    return rng.permutation(ids[:n]) if ids.size > n else rng.permutation(ids)


def _uniform_disk(rng, n, radius):
    r = radius * np.sqrt(rng.random(n))
    phi = rng.random(n) * 2.0 * np.pi
    return r * np.sin(phi), r * np.cos(phi)


def _proper_motions(rng, n, cfg):
    """pmra, pmdec (mas/yr; NaN for nulls) drawn from the three-population model."""
    u = rng.random(n)
    null = u < cfg.null_pm_frac
    high = (u >= cfg.null_pm_frac) & (u < cfg.null_pm_frac + cfg.high_pm_frac)
    pmra = rng.normal(0.0, _ONE_SIGMA_NORMAL_PM_MASYR, n)
    pmdec = rng.normal(0.0, _ONE_SIGMA_NORMAL_PM_MASYR, n)
    nh = int(high.sum())
    if nh:
        tot = np.exp(rng.uniform(np.log(HIGH_PM_MASYR * 1.0001), np.log(500.0), nh))
        ang = rng.random(nh) * 2.0 * np.pi
        pmra[high] = tot * np.sin(ang)
        pmdec[high] = tot * np.cos(ang)
    pmra[null] = np.nan
    pmdec[null] = np.nan
    return pmra, pmdec


# --------------------------------------------------------------------------- the simulation


def simulate_stack(config=None, *, rng=None, seed=None):
    """Simulate one stack: detections, Gaia, ALLWISE, best neighbours and the truth.

    Parameters
    ----------
    config : SimConfig, optional
        The model's parameters (defaults: a 50-detection high-latitude ACIS stack).
    rng : numpy.random.Generator, optional
        Random generator; exclusive with ``seed``.
    seed : int, optional
        Seed for ``np.random.default_rng`` (reproducible output).

    Returns
    -------
    SimulatedStack
    """
    cfg = config or SimConfig()
    if rng is not None and seed is not None:
        raise ParameterError("give either rng or seed, not both")
    if rng is None:
        rng = np.random.default_rng(seed)
    ra0, dec0 = cfg.ra_stack_deg, cfg.dec_stack_deg
    n = int(cfg.ndet)
    r_stack_as = cfg.r_stack_arcmin * 60.0
    r_cone_as = (cfg.r_stack_arcmin + cfg.margin_arcmin) * 60.0
    stack_id = cfg.stack_id or make_stack_id(ra0, dec0, cfg.instrument)

    # True shift (detection frame -> Gaia frame).
    d_xi = cfg.shift_xi_arcsec if cfg.shift_xi_arcsec is not None else rng.normal(0.0, cfg.shift_sigma_arcsec)
    d_eta = cfg.shift_eta_arcsec if cfg.shift_eta_arcsec is not None else rng.normal(0.0, cfg.shift_sigma_arcsec)
    d_xi, d_eta = float(d_xi), float(d_eta)
    wd_xi, wd_eta = float(cfg.wise_shift_xi_arcsec), float(cfg.wise_shift_eta_arcsec)

    # --- detections: true positions, counts, errors
    theta = cfg.r_stack_arcmin * rng.random(n) ** 0.8
    phi = rng.random(n) * 2.0 * np.pi
    true_xi = theta * 60.0 * np.sin(phi)
    true_eta = theta * 60.0 * np.cos(phi)
    c_min = 4.0 + 0.3 * theta**2
    counts = np.minimum(c_min * (1.0 - rng.random(n)) ** (-1.0 / 1.5), 1.0e5)
    counts = np.round(counts, 1)
    sigma = position_sigma_arcsec(theta, counts, instrument=cfg.instrument,
                                  floor_arcsec=cfg.err_floor_arcsec)
    ratio = rng.uniform(0.6, 1.0, n)
    sig_a = sigma / np.sqrt(ratio)
    sig_b = sigma * np.sqrt(ratio)
    pa = rng.uniform(0.0, 180.0, n)
    pa_rad = np.radians(pa)
    g1, g2 = rng.standard_normal(n), rng.standard_normal(n)
    noise_xi = sig_a * g1 * np.sin(pa_rad) + sig_b * g2 * np.cos(pa_rad)
    noise_eta = sig_a * g1 * np.cos(pa_rad) - sig_b * g2 * np.sin(pa_rad)
    if cfg.missing_floor_arcsec > 0:
        # issue 14: a systematic error the stated errors do not carry
        noise_xi = noise_xi + cfg.missing_floor_arcsec * rng.standard_normal(n)
        noise_eta = noise_eta + cfg.missing_floor_arcsec * rng.standard_normal(n)
    det_xi = true_xi - d_xi + noise_xi
    det_eta = true_eta - d_eta + noise_eta

    # --- flags
    u = rng.random(n)
    lclass = np.full(n, "TRUE", dtype="U8")
    lclass[u < cfg.marginal_frac + cfg.false_class_frac] = "MARGINAL"
    lclass[u < cfg.false_class_frac] = "FALSE"
    # Saturation (pile-up) hits bright sources: draw among the brightest half.
    bright = counts >= np.median(counts) if n else np.zeros(0, bool)
    sat = bright & (rng.random(n) < 2.0 * cfg.sat_frac)
    hull = rng.random(n) < cfg.hull_frac
    man_inc = rng.random(n) < cfg.man_inc_frac
    good_class = lclass != "FALSE"
    passes = good_class & ~sat & ~hull & (theta <= cfg.r_stack_arcmin)

    # --- which detections have which counterparts
    has_gaia = (rng.random(n) < cfg.gaia_frac) & good_class
    has_wise = (rng.random(n) < cfg.wise_frac) & good_class
    planted = np.zeros(n, bool)
    if cfg.false_frac > 0:
        eligible = np.flatnonzero(good_class)
        k = round(cfg.false_frac * eligible.size)
        if k:
            planted[rng.choice(eligible, size=k, replace=False)] = True
    has_gaia &= ~planted
    has_wise &= ~planted

    # --- Gaia: counterparts, planted false matches, field
    area_cone = math.pi * (r_cone_as / 60.0) ** 2
    n_gaia_budget = int(rng.poisson(cfg.gaia_density * area_cone))
    icp = np.flatnonzero(has_gaia)
    ipl = np.flatnonzero(planted)
    n_cp, n_pl = icp.size, ipl.size
    n_field = max(n_gaia_budget - n_cp - n_pl, 0)
    pmra_all, pmdec_all = _proper_motions(rng, n_cp + n_pl + n_field, cfg)
    pm_xi_cp = np.nan_to_num(pmra_all[:n_cp]) * 1e-3 * cfg.epoch_gap_yr
    pm_eta_cp = np.nan_to_num(pmdec_all[:n_cp]) * 1e-3 * cfg.epoch_gap_yr
    g_xi_cp = true_xi[icp] + pm_xi_cp
    g_eta_cp = true_eta[icp] + pm_eta_cp
    outlier = np.zeros(n_cp, bool)
    if cfg.bright_outliers and n_cp:
        # issue 14: the brightest counterparts replaced by a real-looking wrong source
        # 0.5-1.5" away (a blend, a wrong identification)
        k = min(int(cfg.bright_outliers), n_cp)
        outlier[np.argsort(-counts[icp], kind="stable")[:k]] = True
        mag = rng.uniform(0.5, 1.5, k)
        ang = rng.uniform(0.0, 2.0 * np.pi, k)
        g_xi_cp[outlier] += mag * np.sin(ang)
        g_eta_cp[outlier] += mag * np.cos(ang)
    r_pl = cfg.match_radius_arcsec * np.sqrt(rng.random(n_pl))
    a_pl = rng.random(n_pl) * 2.0 * np.pi
    # A planted source is uniform within match_radius of the detected position as given
    # (the circle stk_match searches), so its offset is uniform over the match circle.
    g_xi_pl = det_xi[ipl] + r_pl * np.sin(a_pl)
    g_eta_pl = det_eta[ipl] + r_pl * np.cos(a_pl)
    f_xi, f_eta = _uniform_disk(rng, n_field, r_cone_as)
    g_xi = np.concatenate([g_xi_cp, g_xi_pl, f_xi])
    g_eta = np.concatenate([g_eta_cp, g_eta_pl, f_eta])
    pmra, pmdec = pmra_all, pmdec_all
    field_start = n_cp + n_pl

    # --- ALLWISE: detection counterparts, then field sources (some on field Gaia sources)
    n_wise_budget = int(rng.poisson(cfg.wise_density * area_cone))
    iwd = np.flatnonzero(has_wise)
    n_wd = iwd.size
    n_wf = max(n_wise_budget - n_wd, 0)
    # For a detection with a Gaia counterpart, its ALLWISE source is that Gaia source.
    gaia_row_of_det = np.full(n, -1, dtype=np.int64)
    gaia_row_of_det[icp] = np.arange(n_cp)
    wd_gaia = gaia_row_of_det[iwd]
    assoc_field = rng.random(n_wf) < cfg.wise_gaia_frac
    n_assoc_field = min(int(assoc_field.sum()), n_field)
    if n_assoc_field < int(assoc_field.sum()):
        assoc_field[np.flatnonzero(assoc_field)[n_assoc_field:]] = False
    field_perm = field_start + rng.permutation(n_field)
    wf_gaia = np.full(n_wf, -1, dtype=np.int64)
    wf_gaia[assoc_field] = field_perm[:n_assoc_field]
    wise_gaia_row = np.concatenate([wd_gaia, wf_gaia])
    # True ALLWISE-epoch positions in the Gaia frame.
    w_xi = np.empty(n_wd + n_wf)
    w_eta = np.empty(n_wd + n_wf)
    on_gaia = wise_gaia_row >= 0
    gr = wise_gaia_row[on_gaia]
    w_xi[on_gaia] = g_xi[gr] - np.nan_to_num(pmra[gr]) * 1e-3 * WISE_EPOCH_GAP_YR
    w_eta[on_gaia] = g_eta[gr] - np.nan_to_num(pmdec[gr]) * 1e-3 * WISE_EPOCH_GAP_YR
    det_only = np.zeros(n_wd + n_wf, bool)
    det_only[:n_wd] = wd_gaia < 0
    w_xi[det_only] = true_xi[iwd[wd_gaia < 0]]
    w_eta[det_only] = true_eta[iwd[wd_gaia < 0]]
    ir_only = ~on_gaia & ~det_only
    w_xi[ir_only], w_eta[ir_only] = _uniform_disk(rng, int(ir_only.sum()), r_cone_as)
    n_w = n_wd + n_wf
    sigra = np.exp(rng.uniform(np.log(0.05), np.log(0.5), n_w))
    sigdec = sigra * rng.uniform(0.8, 1.25, n_w)
    sigdec = np.clip(sigdec, 0.05, 0.5)
    w_xi = w_xi - wd_xi + sigra * rng.standard_normal(n_w)
    w_eta = w_eta - wd_eta + sigdec * rng.standard_normal(n_w)
    cc = np.full(n_w, "0000", dtype="U4")
    dirty = rng.random(n_w) >= cfg.clean_frac
    cc[dirty] = np.asarray(CC_FLAG_CODES)[rng.integers(0, len(CC_FLAG_CODES), int(dirty.sum()))]

    # --- many-to-one: blended Gaia companions sharing the ALLWISE best neighbour
    iw_assoc = np.flatnonzero(on_gaia)
    multi = iw_assoc[rng.random(iw_assoc.size) < cfg.multi_frac]
    n_comp = multi.size
    prim = wise_gaia_row[multi]
    r_c = rng.uniform(0.5, 2.0, n_comp)
    a_c = rng.random(n_comp) * 2.0 * np.pi
    c_xi = g_xi[prim] + r_c * np.sin(a_c)
    c_eta = g_eta[prim] + r_c * np.cos(a_c)
    c_pmra, c_pmdec = _proper_motions(rng, n_comp, cfg)
    # Companions come out of the field budget: drop as many unassociated field sources.
    used = np.zeros(g_xi.size, bool)
    used[:field_start] = True
    used[wise_gaia_row[on_gaia]] = True
    droppable = np.flatnonzero(~used)
    drop = droppable[: min(n_comp, droppable.size)]
    keep = np.ones(g_xi.size, bool)
    keep[drop] = False
    new_row = np.cumsum(keep) - 1  # old row -> new row (valid where kept)
    g_xi = np.concatenate([g_xi[keep], c_xi])
    g_eta = np.concatenate([g_eta[keep], c_eta])
    pmra = np.concatenate([pmra[keep], c_pmra])
    pmdec = np.concatenate([pmdec[keep], c_pmdec])
    n_g = g_xi.size
    comp_rows = np.arange(n_g - n_comp, n_g)
    wise_gaia_row = np.where(wise_gaia_row >= 0, new_row[np.maximum(wise_gaia_row, 0)], -1)

    # --- identifiers (Gaia DR2 source_id ~ 1e15..7e18; ALLWISE oid ~ 1e8..8e8)
    gaia_ids = _unique_ids(rng, n_g, 10**15, 7 * 10**18)
    wise_ids = _unique_ids(rng, n_w, 10**8, 8 * 10**8)

    # --- best neighbours: the associated Gaia source of each ALLWISE source, plus companions
    bn_gaia = np.concatenate([wise_gaia_row[on_gaia], comp_rows])
    bn_wise = np.concatenate([np.flatnonzero(on_gaia), multi])
    mates = np.zeros(bn_gaia.size, dtype=np.int16)
    if n_comp:
        counts_per_wise = np.bincount(bn_wise, minlength=n_w)
        mates = (counts_per_wise[bn_wise] - 1).astype(np.int16)
    sep_bn = np.hypot(g_xi[bn_gaia] - w_xi[bn_wise], g_eta[bn_gaia] - w_eta[bn_wise])
    n_neigh = np.ones(bn_gaia.size, dtype=np.int16)
    if bn_gaia.size and n_w:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.column_stack([w_xi, w_eta]))
        n_neigh = np.maximum(
            tree.query_ball_point(np.column_stack([g_xi[bn_gaia], g_eta[bn_gaia]]), 2.0,
                                  return_length=True), 1).astype(np.int16)

    # --- sky positions
    det_ra, det_dec = tangent_to_sky(det_xi, det_eta, ra0, dec0)
    true_ra, true_dec = tangent_to_sky(true_xi, true_eta, ra0, dec0)
    g_ra, g_dec = tangent_to_sky(g_xi, g_eta, ra0, dec0)
    w_ra, w_dec = tangent_to_sky(w_xi, w_eta, ra0, dec0)

    # --- truth per detection
    gaia_id = np.full(n, -1, dtype=np.int64)
    gaia_id[icp] = gaia_ids[new_row[np.arange(n_cp)]]
    false_id = np.full(n, -1, dtype=np.int64)
    false_id[ipl] = gaia_ids[new_row[n_cp + np.arange(n_pl)]]
    wise_id = np.full(n, -1, dtype=np.int64)
    wise_id[iwd] = wise_ids[:n_wd]
    # CRB pairs: filtered detections whose counterpart passes the pm rule and lies in the circle.
    in_crb = np.zeros(n, bool)
    if n_cp:
        pm_tot = np.hypot(pmra_all[:n_cp], pmdec_all[:n_cp])
        pm_ok = ~(pm_tot > HIGH_PM_MASYR)  # NaN (null) passes
        # Separation as stk_match sees it: detected position vs Gaia position, both as given.
        sep_obs = np.hypot(g_xi_cp - det_xi[icp], g_eta_cp - det_eta[icp])
        in_crb[icp] = passes[icp] & pm_ok & (sep_obs <= cfg.match_radius_arcsec) & ~outlier
    # the true errors (the stated ones are written below, scaled by stated_err_scale)
    true_a = np.hypot(sig_a, cfg.missing_floor_arcsec)
    true_b = np.hypot(sig_b, cfg.missing_floor_arcsec)
    crb_xi, crb_eta, crb_iso = crb_from_ellipses(true_a[in_crb], true_b[in_crb], pa[in_crb])

    # Densities as stk_match counts them: every source of the cone table within r_stack.
    n_gaia_in = int(np.count_nonzero(np.hypot(g_xi, g_eta) <= r_stack_as))
    n_wise_in = int(np.count_nonzero(np.hypot(w_xi, w_eta) <= r_stack_as))
    area_stack = math.pi * cfg.r_stack_arcmin**2

    detections = Detections(
        region_id=np.arange(1, n + 1, dtype=np.int32),
        ra_deg=det_ra, dec_deg=det_dec, xi_arcsec=det_xi, eta_arcsec=det_eta,
        err_r0_arcsec=SIGMA_TO_R95 * cfg.stated_err_scale * sig_a,
        err_r1_arcsec=SIGMA_TO_R95 * cfg.stated_err_scale * sig_b,
        err_ang_deg=pa, theta_arcmin=theta, src_cnts=counts,
        likelihood_class=lclass, sat_src_flag=sat, conv_hull=hull, man_inc=man_inc,
    )
    # Shuffle catalogs so that row order betrays nothing about the truth.
    gperm = rng.permutation(n_g)
    gaia = GaiaCatalog(source_id=gaia_ids[gperm], ra_deg=g_ra[gperm], dec_deg=g_dec[gperm],
                       pmra_masyr=pmra[gperm], pmdec_masyr=pmdec[gperm])
    wperm = rng.permutation(n_w)
    wise = WiseCatalog(allwise_oid=wise_ids[wperm], ra_deg=w_ra[wperm], dec_deg=w_dec[wperm],
                       sigra_arcsec=sigra[wperm], sigdec_arcsec=sigdec[wperm], cc_flags=cc[wperm])
    winv = np.empty(n_w, dtype=np.int64)
    winv[wperm] = np.arange(n_w)
    border = np.argsort(gaia_ids[bn_gaia], kind="stable")
    best = BestNeighbours(
        source_id=gaia_ids[bn_gaia][border], allwise_oid=wise_ids[bn_wise][border],
        angular_distance_arcsec=sep_bn[border], number_of_neighbours=n_neigh[border],
        number_of_mates=mates[border], wise_index=winv[bn_wise][border],
    )
    truth = Truth(
        d_xi_arcsec=d_xi, d_eta_arcsec=d_eta, wise_d_xi_arcsec=wd_xi, wise_d_eta_arcsec=wd_eta,
        crb_xi_arcsec=crb_xi, crb_eta_arcsec=crb_eta, crb_iso_arcsec=crb_iso,
        n_crb=int(in_crb.sum()),
        true_xi_arcsec=true_xi, true_eta_arcsec=true_eta, true_ra_deg=true_ra, true_dec_deg=true_dec,
        sigma_major_arcsec=true_a, sigma_minor_arcsec=true_b,
        gaia_id=gaia_id, wise_id=wise_id, false_gaia_id=false_id,
        passes_filters=passes, in_crb=in_crb,
        n_gaia_in_rstack=n_gaia_in, n_wise_in_rstack=n_wise_in,
        gaia_density_in_rstack=n_gaia_in / area_stack, wise_density_in_rstack=n_wise_in / area_stack,
    )
    return SimulatedStack(config=cfg, seed=seed, stack_id=stack_id, detections=detections,
                          gaia=gaia, wise=wise, best_neighbours=best, truth=truth)


# --------------------------------------------------------------------------- tables


def catalog_tables(sim):
    """The stack's tables in the column layout ``stk_match`` reads.  Pure (no file I/O).

    Returns
    -------
    dict of str -> astropy.table.Table
        Keys ``det``, ``gaia``, ``allwise``, ``bestnb``, ``truth``.  Table ``meta``
        holds the header keywords the front end writes (long names included; the
        writer turns them into DTYPEn/DVALn).
    """
    from astropy.table import Table

    cfg, d, t = sim.config, sim.detections, sim.truth
    n = d.region_id.size
    det = Table()
    det["detect_stack_id"] = np.full(n, sim.stack_id)
    det["region_id"] = d.region_id
    det["ra"] = d.ra_deg
    det["dec"] = d.dec_deg
    det["err_ellipse_r0"] = d.err_r0_arcsec
    det["err_ellipse_r1"] = d.err_r1_arcsec
    det["err_ellipse_ang"] = d.err_ang_deg
    det["likelihood_class"] = d.likelihood_class
    det["sat_src_flag"] = d.sat_src_flag
    det["conv_hull"] = d.conv_hull
    det["man_inc"] = d.man_inc
    det["theta"] = d.theta_arcmin
    det["src_cnts"] = d.src_cnts
    det["ra_stack"] = np.full(n, cfg.ra_stack_deg)
    det["dec_stack"] = np.full(n, cfg.dec_stack_deg)
    det["instrument"] = np.full(n, cfg.instrument)
    units = {"ra": "deg", "dec": "deg", "err_ellipse_r0": "arcsec", "err_ellipse_r1": "arcsec",
             "err_ellipse_ang": "deg", "theta": "arcmin", "src_cnts": "count",
             "ra_stack": "deg", "dec_stack": "deg"}
    for name, unit in units.items():
        det[name].unit = unit
    det.meta.update({"RA_STACK": cfg.ra_stack_deg, "DEC_STACK": cfg.dec_stack_deg,
                     "STACKID": sim.stack_id, "INSTRUME": cfg.instrument})
    det.meta.update(stack_epoch_keywords(cfg))

    g = sim.gaia
    gaia = Table()
    gaia["source_id"] = g.source_id
    gaia["ra"] = g.ra_deg
    gaia["dec"] = g.dec_deg
    gaia["pmra"] = g.pmra_masyr
    gaia["pmdec"] = g.pmdec_masyr
    for name, unit in (("ra", "deg"), ("dec", "deg"), ("pmra", "mas / yr"), ("pmdec", "mas / yr")):
        gaia[name].unit = unit

    w = sim.wise
    wise = Table()
    wise["allwise_oid"] = w.allwise_oid
    wise["ra"] = w.ra_deg
    wise["dec"] = w.dec_deg
    wise["sigra"] = w.sigra_arcsec
    wise["sigdec"] = w.sigdec_arcsec
    wise["cc_flags"] = w.cc_flags
    for name, unit in (("ra", "deg"), ("dec", "deg"), ("sigra", "arcsec"), ("sigdec", "arcsec")):
        wise[name].unit = unit

    b = sim.best_neighbours
    bn = Table()
    bn["source_id"] = b.source_id
    bn["allwise_oid"] = b.allwise_oid
    bn["original_ext_source_id"] = wise_designation(w.ra_deg[b.wise_index], w.dec_deg[b.wise_index])
    bn["angular_distance"] = b.angular_distance_arcsec
    bn["angular_distance"].unit = "arcsec"
    bn["number_of_neighbours"] = b.number_of_neighbours
    bn["number_of_mates"] = b.number_of_mates

    for tab in (gaia, wise, bn):
        tab.meta.update({"RA_STACK": cfg.ra_stack_deg, "DEC_STACK": cfg.dec_stack_deg,
                         "STACKID": sim.stack_id})
    gaia.meta["RSTACK"] = cfg.r_stack_arcmin
    wise.meta["RSTACK"] = cfg.r_stack_arcmin

    tr = Table()
    tr["region_id"] = d.region_id
    tr["ra_true"] = t.true_ra_deg
    tr["dec_true"] = t.true_dec_deg
    tr["xi_true"] = t.true_xi_arcsec
    tr["eta_true"] = t.true_eta_arcsec
    tr["sigma_major"] = t.sigma_major_arcsec
    tr["sigma_minor"] = t.sigma_minor_arcsec
    tr["err_ang"] = d.err_ang_deg
    tr["gaia_id"] = t.gaia_id
    tr["wise_id"] = t.wise_id
    tr["false_gaia_id"] = t.false_gaia_id
    tr["passes_filters"] = t.passes_filters
    tr["in_crb"] = t.in_crb
    for name, unit in (("ra_true", "deg"), ("dec_true", "deg"), ("xi_true", "arcsec"),
                       ("eta_true", "arcsec"), ("sigma_major", "arcsec"),
                       ("sigma_minor", "arcsec"), ("err_ang", "deg")):
        tr[name].unit = unit
    tr.meta.update(truth_keywords(sim))
    return {"det": det, "gaia": gaia, "allwise": wise, "bestnb": bn, "truth": tr}


#: The simulated Gaia catalog's epoch (Gaia DR3, Julian year; stk_match's default).
GAIA_EPOCH_YR = 2016.0


def stack_epoch_keywords(cfg):
    """``DATE-OBS`` and ``MJD-OBS`` of the simulated detections: the Gaia epoch minus
    ``epoch_gap_yr`` (TT, as the CXC writes its dates), name -> (value, comment).  Pure."""
    from astropy.time import Time

    t = Time(GAIA_EPOCH_YR - cfg.epoch_gap_yr, format="jyear", scale="tt")
    return {"DATE-OBS": (t.isot[:19], "stack epoch (simulated: J2016.0 - epoch_gap)"),
            "MJD-OBS": (round(float(t.mjd), 6), "[d] stack epoch (simulated)")}


def truth_keywords(sim):
    """The truth file's header keywords, name -> (value, comment).  Pure."""
    cfg, t = sim.config, sim.truth

    def num(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    return {
        "STACKID": (sim.stack_id, "simulated stack"),
        "INSTRUME": (cfg.instrument, ""),
        "RA_STACK": (cfg.ra_stack_deg, "[deg] tangent point"),
        "DEC_STACK": (cfg.dec_stack_deg, "[deg] tangent point"),
        "RSTACK": (cfg.r_stack_arcmin, "[arcmin] r_stack"),
        "SEED": (sim.seed if sim.seed is not None else -1, "random seed (-1: unseeded)"),
        "D_XI": (t.d_xi_arcsec, "[arcsec] true shift: xi + D_XI = Gaia frame"),
        "D_ETA": (t.d_eta_arcsec, "[arcsec] true shift: eta + D_ETA = Gaia frame"),
        "WD_XI": (t.wise_d_xi_arcsec, "[arcsec] ALLWISE->Gaia shift"),
        "WD_ETA": (t.wise_d_eta_arcsec, "[arcsec] ALLWISE->Gaia shift"),
        "CRB_XI": (num(t.crb_xi_arcsec), "[arcsec] Cramer-Rao bound on D_XI"),
        "CRB_ETA": (num(t.crb_eta_arcsec), "[arcsec] Cramer-Rao bound on D_ETA"),
        "CRB_ISO": (num(t.crb_iso_arcsec), "[arcsec] 1/sqrt(sum 1/(a b))"),
        "NCRB": (t.n_crb, "pairs entering the bound"),
        "NDET": (int(sim.detections.region_id.size), "detections"),
        "NGAIA": (int(sim.gaia.source_id.size), "Gaia sources in the cone"),
        "NWISE": (int(sim.wise.allwise_oid.size), "ALLWISE sources in the cone"),
        "NBESTNB": (int(sim.best_neighbours.source_id.size), "best-neighbour rows"),
        "NFALSE": (int(np.count_nonzero(t.false_gaia_id >= 0)), "planted false matches"),
        "DENSGAIA": (t.gaia_density_in_rstack, "[arcmin-2] Gaia density within RSTACK"),
        "DENSWISE": (t.wise_density_in_rstack, "[arcmin-2] ALLWISE density within RSTACK"),
        "GAIADENS": (cfg.gaia_density, "[arcmin-2] gaia_density parameter"),
        "WISEDENS": (cfg.wise_density, "[arcmin-2] wise_density parameter"),
        "EPOCHGAP": (cfg.epoch_gap_yr, "[yr] Gaia epoch minus X-ray epoch"),
        "FALSFRAC": (cfg.false_frac, "false_frac parameter"),
        "MATCHRAD": (cfg.match_radius_arcsec, "[arcsec] match radius"),
    }
