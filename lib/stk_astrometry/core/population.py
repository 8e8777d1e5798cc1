"""A seeded population of CSC stacks over the sky, with overlaps and known truth.  Pure.

Owns the model behind ``stk_simpop`` (the campaign-scale simulation of issue 17): where the
stacks are, how deep they are, what the sky under them holds (X-ray sources shared by
overlapping stacks, Gaia and ALLWISE at their own epochs), each stack's true astrometric
shift and how its stated errors relate to the true ones.  No file I/O here: it yields one
:class:`Field` (one to three overlapping stacks and their sky) at a time, as arrays; the
writer is :mod:`stk_astrometry.tools.stk_simpop`.  The single-stack model of
:mod:`stk_astrometry.simulate` is the parent of this one (PSF, error ellipses, flags); what
differs is said below.

The model (also in ``share/doc/stk_simpop.txt``)
-------------------------------------------------
Fields and overlaps.  Stacks come in *fields*: a fraction ``overlap_frac`` of the stacks lie
in fields of two or three (``triple_frac`` of those fields are triples) whose pointings are
``overlap_sep_arcmin`` apart; the others are alone.  Field centres are uniform on the sphere.
A sky source of a field falls in every stack whose cone (``r_stack``) contains it and is
detected by each independently: each stack has its own epoch, exposure, error draw, shift.

Depth and detections.  Sky X-ray sources follow a Euclidean logN-logS,
``N(>S) = SIGMA0 S^-1.5`` per arcmin^2 (S in counts/ks on axis, ``SIGMA0 = 0.02``).  A stack
of exposure ``T`` (ks) sees ``C = S T`` counts and detects a source at off-axis angle theta
when ``C >= 4 + 0.3 theta^2`` (the limit of :mod:`simulate`) and theta <= r_stack.  Each
stack's exposure is set from a target detection count drawn log-normal (median
``ndet_median``, ln-sigma ``ndet_lnsigma``, capped at ``ndet_max``): with it ~3 % of stacks
have 1, 2 and 3 detections each, as CSC 2.0's stacks (spec Fig. 1).  A fraction
``false_class_frac`` of extra detections per stack are spurious (class FALSE, not on the sky).

Errors and regimes.  The *relative* (MLE-like) error per axis is
``sigma_rel = sqrt((r90(theta)/2.146)^2 / C + rel_floor^2)`` with the ellipse shape of
:mod:`simulate`.  Every detection also carries the *absolute* systematic term ``sys_abs``
(aspect, calibration: what spec §5.5.7 estimates), isotropic and independent per detection,
never included in the stated errors.  Per stack an error *regime* (issue 14) decides the
stated error (``err_ellipse_r0/r1``, 95 % radii) against the true one:

- ``csc``: stated = relative; true = relative (+) sys_abs;
- ``nofloor``: a per-stack floor U(0.05, 0.3)" is missing from the stated errors too;
- ``inflated``: stated = relative x U(1.5, 3) (CSC's conservative ellipses);
- ``wavdetect``: stated = PSF/sqrt(counts) only, without ``rel_floor``.

(A small local model: the ``cores`` lane's ``stk_simulate`` regime options were not on main
when this was written; the names follow issue 14.)

Shifts.  The true shift's length is Rayleigh with 90 % inside ``shift_r90`` (1.1", Chandra's
published absolute astrometry: then 99 % within 1.6"), plus a fraction ``shift_tail_frac``
uniform in 2.0-2.8"; its direction is uniform.  ``detected = true(epoch) - shift + noise`` in
the stack's tangent plane, so ``corrected = detected + shift`` (the STKXFM convention).

Sky densities.  With Galactic latitude b of the field,
``log10 rho_gaia = log10(gaia_pole) + gaia_plane_dex exp(-|b|/gaia_scale_deg) + N(0, 0.15)``
per arcmin^2 (about 1 at the poles, ~9 at |b| = 10 deg, ~150 in the plane: ~2 % of the sky
above 100) and likewise for ALLWISE (1.5 at the poles, ~15 in the plane).  A detection has a
Gaia counterpart with probability ``gaia_frac_pole`` at high latitude rising to
``gaia_frac_plane`` in the plane (stars), an ALLWISE one with probability ``wise_frac``.

Epochs and proper motions.  Stack epochs are uniform in 1999.6-2024.9; Gaia positions are at
``gaia_epoch`` (J2016.0, the ``ref_epoch`` column), ALLWISE at 2010.5.  Counterparts that are
stars (a fraction rising from 0.3 at the poles to 0.9 in the plane) have proper motions
N(0, 6 mas/yr) per component and 3 % of them 50-300 mas/yr; extragalactic ones have none
(a tenth of those null).  Field Gaia sources follow the stars' law with 10 % null.  A
detection sees its source at the stack's epoch: ``true(epoch) = gaia + pm (epoch - 2016)``.
"""

import math
from dataclasses import dataclass

import numpy as np

from ..tangent import sky_to_tangent, tangent_to_sky
from .radii import R90_PER_SIGMA, R95_PER_SIGMA

__all__ = [
    "REGIMES",
    "SIGMA_TO_R90",
    "SIGMA_TO_R95",
    "Field",
    "PopConfig",
    "StackSky",
    "galactic_latitude_deg",
    "population_fields",
    "propagate",
    "stack_id_for",
]

SIGMA_TO_R95 = R95_PER_SIGMA
SIGMA_TO_R90 = R90_PER_SIGMA
#: Error regimes, in the order of ``PopConfig.regime_weights``.
REGIMES = ("csc", "nofloor", "inflated", "wavdetect")
#: Sources per arcmin^2 brighter than 1 count/ks on axis.
SIGMA0 = 0.02
WISE_EPOCH = 2010.5
_NGP_RA, _NGP_DEC = 192.85948, 27.12825  # ICRS north Galactic pole


@dataclass(frozen=True)
class PopConfig:
    """The population's parameters (units in the names; see the module docstring)."""

    n_stacks: int = 200
    r_stack_arcmin: float = 10.0
    margin_arcmin: float = 0.1
    overlap_frac: float = 0.3
    triple_frac: float = 0.3
    overlap_sep_arcmin: tuple = (3.0, 12.0)
    hrc_frac: float = 0.12
    ndet_median: float = 22.0
    ndet_lnsigma: float = 1.25
    ndet_max: int = 1500
    shift_r90_arcsec: float = 1.1
    shift_tail_frac: float = 0.004
    sys_abs_arcsec: float = 0.12
    rel_floor_arcsec: float = 0.05
    regime_weights: tuple = (0.6, 0.15, 0.15, 0.10)
    epoch_range: tuple = (1999.6, 2024.9)
    gaia_epoch: float = 2016.0
    gaia_pole: float = 1.0
    gaia_plane_dex: float = 2.2
    gaia_scale_deg: float = 12.0
    wise_pole: float = 1.5
    wise_plane_dex: float = 1.0
    wise_scale_deg: float = 10.0
    density_scatter_dex: float = 0.15
    gaia_frac_pole: float = 0.35
    gaia_frac_plane: float = 0.6
    wise_frac: float = 0.4
    wise_gaia_frac: float = 0.7
    clean_frac: float = 0.85
    marginal_frac: float = 0.12
    false_class_frac: float = 0.03
    sat_frac: float = 0.02
    hull_frac: float = 0.03
    man_inc_frac: float = 0.02

    def __post_init__(self):
        if self.n_stacks < 1:
            raise ValueError(f"n_stacks={self.n_stacks}: must be >= 1")
        for name in ("overlap_frac", "triple_frac", "hrc_frac", "shift_tail_frac", "wise_frac",
                     "wise_gaia_frac", "clean_frac", "gaia_frac_pole", "gaia_frac_plane",
                     "marginal_frac", "false_class_frac", "sat_frac", "hull_frac",
                     "man_inc_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v}: must be within [0, 1]")
        for name in ("r_stack_arcmin", "ndet_median", "shift_r90_arcsec"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        for name in ("sys_abs_arcsec", "rel_floor_arcsec", "ndet_lnsigma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        w = np.asarray(self.regime_weights, dtype=float)
        if w.shape != (len(REGIMES),) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError(f"regime_weights={self.regime_weights}: {len(REGIMES)} weights >= 0")


@dataclass(frozen=True)
class StackSky:
    """One stack of a field: its header facts, truth and catalogs (arrays per row).

    Detections (``det_*``) in CSC names; ``det_key`` is the sky source (-1: spurious).
    Gaia/ALLWISE/best-neighbour rows are those of the field within ``r_stack + margin``.
    """

    stack_id: str
    field_id: int
    n_in_field: int
    instrument: str
    ra_stack_deg: float
    dec_stack_deg: float
    glat_deg: float
    epoch_yr: float
    exposure_ks: float
    regime: str
    regime_value: float          #: nofloor: missing floor (arcsec); inflated: factor; else 0
    d_xi_arcsec: float
    d_eta_arcsec: float
    gaia_density: float          #: per arcmin^2 within r_stack (what stk_match counts)
    wise_density: float
    crb_xi_arcsec: float         #: Cramer-Rao bound with the true errors (NaN: no pair)
    crb_eta_arcsec: float
    n_crb: int
    # detections
    det_region_id: np.ndarray
    det_key: np.ndarray
    det_ra_deg: np.ndarray
    det_dec_deg: np.ndarray
    det_true_ra_deg: np.ndarray  #: true position at the stack's epoch (Gaia frame)
    det_true_dec_deg: np.ndarray
    det_r0_arcsec: np.ndarray    #: stated 95 % radii
    det_r1_arcsec: np.ndarray
    det_ang_deg: np.ndarray
    det_sigma_true_major: np.ndarray  #: true 1-sigma axes (relative (+) extra)
    det_sigma_true_minor: np.ndarray
    det_theta_arcmin: np.ndarray
    det_src_cnts: np.ndarray
    det_class: np.ndarray
    det_sat: np.ndarray
    det_hull: np.ndarray
    det_man_inc: np.ndarray
    det_gaia_id: np.ndarray      #: true Gaia counterpart, -1 none
    det_wise_id: np.ndarray
    # reference catalogs
    gaia_source_id: np.ndarray
    gaia_ra_deg: np.ndarray
    gaia_dec_deg: np.ndarray
    gaia_pmra: np.ndarray
    gaia_pmdec: np.ndarray
    wise_oid: np.ndarray
    wise_ra_deg: np.ndarray
    wise_dec_deg: np.ndarray
    wise_sigra: np.ndarray
    wise_sigdec: np.ndarray
    wise_cc_flags: np.ndarray
    bn_source_id: np.ndarray
    bn_allwise_oid: np.ndarray


@dataclass(frozen=True)
class Field:
    """One to three overlapping stacks and the sky they share."""

    field_id: int
    ra_deg: float
    dec_deg: float
    stacks: tuple


def galactic_latitude_deg(ra_deg, dec_deg):
    """Galactic latitude from ICRS (the pole of Galactic coordinates; ~1e-4 deg from astropy)."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    rp, dp = math.radians(_NGP_RA), math.radians(_NGP_DEC)
    sinb = np.sin(dec) * math.sin(dp) + np.cos(dec) * math.cos(dp) * np.cos(ra - rp)
    return np.degrees(np.arcsin(np.clip(sinb, -1.0, 1.0)))


def stack_id_for(ra_deg, dec_deg, instrument, taken):
    """CSC stack name for a pointing, unique within ``taken`` (the version suffix counts up)."""
    from ..simulate import make_stack_id

    version = 1
    while True:
        sid = make_stack_id(ra_deg, dec_deg, instrument, version=version)
        if sid not in taken:
            taken.add(sid)
            return sid
        version += 1


def propagate(ra_deg, dec_deg, pmra_masyr, pmdec_masyr, dt_yr):
    """Linear proper-motion propagation over ``dt_yr`` in each source's own tangent plane.

    ``pmra`` is Gaia's mu_alpha* (cos dec included); null (NaN) proper motions do not move.
    Good to far below a milliarcsecond for the displacements here (< 10 arcsec).
    """
    dx = np.nan_to_num(np.asarray(pmra_masyr, dtype=float)) * 1e-3 * dt_yr
    dy = np.nan_to_num(np.asarray(pmdec_masyr, dtype=float)) * 1e-3 * dt_yr
    return tangent_to_sky(dx, dy, ra_deg, dec_deg)


def _detection_integral(r_arcmin):
    """I = integral_0^R 2 pi theta (4 + 0.3 theta^2)^-1.5 dtheta (expected detections / SIGMA0 T^1.5)."""
    return 2.0 * math.pi / 0.3 * (0.5 - 1.0 / math.sqrt(4.0 + 0.3 * r_arcmin**2))


def _uniform_disk(rng, n, radius):
    r = radius * np.sqrt(rng.random(n))
    phi = rng.random(n) * 2.0 * np.pi
    return r * np.sin(phi), r * np.cos(phi)


def _pm_stars(rng, n, null_frac):
    pmra = rng.normal(0.0, 6.0, n)
    pmdec = rng.normal(0.0, 6.0, n)
    high = rng.random(n) < 0.03
    nh = int(high.sum())
    tot = np.exp(rng.uniform(math.log(50.0), math.log(300.0), nh))
    ang = rng.random(nh) * 2.0 * np.pi
    pmra[high], pmdec[high] = tot * np.sin(ang), tot * np.cos(ang)
    null = rng.random(n) < null_frac
    pmra[null] = np.nan
    pmdec[null] = np.nan
    return pmra, pmdec


def _field_layout(rng, cfg):
    """Sizes of the fields (1, 2 or 3 stacks) adding up to n_stacks."""
    # A new field is shared with probability p such that the expected fraction of stacks in
    # shared fields is overlap_frac: p m / (p m + 1 - p) = o, m = 2 + triple_frac.
    o, m = cfg.overlap_frac, 2.0 + cfg.triple_frac
    p = o / (m * (1.0 - o) + o) if o < 1.0 else 1.0
    sizes = []
    left = cfg.n_stacks
    while left > 0:
        k = 1
        if left >= 2 and rng.random() < p:
            k = 3 if (left >= 3 and rng.random() < cfg.triple_frac) else 2
        sizes.append(k)
        left -= k
    return sizes


def population_fields(cfg, *, seed):
    """Yield the population's fields one at a time (memory stays flat in ``n_stacks``).

    Parameters
    ----------
    cfg : PopConfig
    seed : int
        Each field draws from its own ``SeedSequence(seed).spawn`` stream, so a field's
        content depends on the seed and its index only.

    Yields
    ------
    Field
    """
    root = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    sizes = _field_layout(root, cfg)
    children = np.random.SeedSequence([seed, 1]).spawn(len(sizes))
    taken = set()
    ids = _IdCounter(seed)
    for fid, (k, ss) in enumerate(zip(sizes, children, strict=True)):
        yield _simulate_field(fid, k, np.random.default_rng(ss), cfg, taken, ids)


class _IdCounter:
    """Population-unique Gaia source_id and ALLWISE oid (shared sources keep theirs)."""

    def __init__(self, seed):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        self.gaia = int(rng.integers(10**15, 10**16))
        self.wise = int(rng.integers(10**8, 2 * 10**8))

    def take_gaia(self, n):
        out = np.arange(self.gaia, self.gaia + n, dtype=np.int64)
        self.gaia += n
        return out

    def take_wise(self, n):
        out = np.arange(self.wise, self.wise + n, dtype=np.int64)
        self.wise += n
        return out


def _simulate_field(fid, k, rng, cfg, taken, ids):
    r_as = cfg.r_stack_arcmin * 60.0
    # --- field centre, uniform on the sphere; stack pointings around it (arcsec offsets)
    ra_c = float(rng.uniform(0.0, 360.0))
    dec_c = float(np.degrees(np.arcsin(rng.uniform(-1.0, 1.0))))
    if k == 1:
        offs = np.zeros((1, 2))
    else:
        sep = rng.uniform(*cfg.overlap_sep_arcmin, size=k - 1) * 60.0
        ang = rng.random(k - 1) * 2.0 * np.pi
        offs = np.zeros((k, 2))
        offs[1:, 0] = sep * np.sin(ang)
        offs[1:, 1] = sep * np.cos(ang)
        offs -= offs.mean(axis=0)
    field_r = float(np.max(np.hypot(offs[:, 0], offs[:, 1]))) + r_as + cfg.margin_arcmin * 60.0
    area_field = math.pi * (field_r / 60.0) ** 2
    glat = float(galactic_latitude_deg(ra_c, dec_c))
    plane = math.exp(-abs(glat) / cfg.gaia_scale_deg)
    rho_gaia = 10 ** (math.log10(cfg.gaia_pole) + cfg.gaia_plane_dex * plane
                      + rng.normal(0.0, cfg.density_scatter_dex))
    rho_wise = 10 ** (math.log10(cfg.wise_pole)
                      + cfg.wise_plane_dex * math.exp(-abs(glat) / cfg.wise_scale_deg)
                      + rng.normal(0.0, cfg.density_scatter_dex))
    gaia_frac = cfg.gaia_frac_pole + (cfg.gaia_frac_plane - cfg.gaia_frac_pole) * plane
    star_frac = 0.3 + 0.6 * plane

    # --- per stack: instrument, epoch, depth, shift, regime
    instr = np.where(rng.random(k) < cfg.hrc_frac, "HRC", "ACIS")
    epoch = rng.uniform(*cfg.epoch_range, size=k)
    n_target = np.minimum(np.exp(rng.normal(math.log(cfg.ndet_median), cfg.ndet_lnsigma, k)),
                          cfg.ndet_max)
    expo = (n_target / (SIGMA0 * _detection_integral(cfg.r_stack_arcmin))) ** (2.0 / 3.0)
    sigma_shift = cfg.shift_r90_arcsec / SIGMA_TO_R90
    shift_len = sigma_shift * np.sqrt(-2.0 * np.log1p(-rng.random(k)))
    tail = rng.random(k) < cfg.shift_tail_frac
    shift_len[tail] = rng.uniform(2.0, 2.8, int(tail.sum()))
    shift_ang = rng.random(k) * 2.0 * np.pi
    d_xi, d_eta = shift_len * np.sin(shift_ang), shift_len * np.cos(shift_ang)
    w = np.asarray(cfg.regime_weights, dtype=float)
    regime_idx = rng.choice(len(REGIMES), size=k, p=w / w.sum())

    # --- the sky: X-ray sources above the faintest stack's limit, in the field plane
    s_min = 4.0 / float(np.max(expo))
    n_src = int(rng.poisson(SIGMA0 * s_min**-1.5 * area_field))
    src_xi, src_eta = _uniform_disk(rng, n_src, field_r)
    flux = s_min * (1.0 - rng.random(n_src)) ** (-1.0 / 1.5)
    has_gaia = rng.random(n_src) < gaia_frac
    has_wise = rng.random(n_src) < cfg.wise_frac
    is_star = has_gaia & (rng.random(n_src) < star_frac)
    # Proper motions of the counterparts (stars move; extragalactic sources do not).
    cp_pmra = np.zeros(n_src)
    cp_pmdec = np.zeros(n_src)
    spra, spdec = _pm_stars(rng, n_src, 0.0)
    cp_pmra[is_star], cp_pmdec[is_star] = spra[is_star], spdec[is_star]
    egal_null = has_gaia & ~is_star & (rng.random(n_src) < 0.1)
    cp_pmra[egal_null] = np.nan
    cp_pmdec[egal_null] = np.nan

    # Gaia: counterparts (positions at gaia_epoch = the true positions) + field sources.
    n_gfield = max(int(rng.poisson(rho_gaia * area_field)) - int(has_gaia.sum()), 0)
    gf_xi, gf_eta = _uniform_disk(rng, n_gfield, field_r)
    gf_pmra, gf_pmdec = _pm_stars(rng, n_gfield, 0.1)
    icp = np.flatnonzero(has_gaia)
    g_xi = np.concatenate([src_xi[icp], gf_xi])
    g_eta = np.concatenate([src_eta[icp], gf_eta])
    g_pmra = np.concatenate([cp_pmra[icp], gf_pmra])
    g_pmdec = np.concatenate([cp_pmdec[icp], gf_pmdec])
    g_id = ids.take_gaia(g_xi.size)
    src_gaia_id = np.full(n_src, -1, np.int64)
    src_gaia_id[icp] = g_id[: icp.size]

    # ALLWISE: counterparts + field (some on field Gaia sources), at the WISE epoch.
    n_wfield = max(int(rng.poisson(rho_wise * area_field)) - int(has_wise.sum()), 0)
    iwc = np.flatnonzero(has_wise)
    on_field_gaia = rng.random(n_wfield) < cfg.wise_gaia_frac
    n_on = min(int(on_field_gaia.sum()), n_gfield)
    field_pick = icp.size + rng.permutation(n_gfield)[:n_on]
    wf_gaia_row = np.full(n_wfield, -1, np.int64)
    wf_gaia_row[np.flatnonzero(on_field_gaia)[:n_on]] = field_pick
    on_field_gaia[np.flatnonzero(on_field_gaia)[n_on:]] = False
    wc_gaia_row = np.where(has_gaia[iwc], np.searchsorted(icp, iwc), -1)
    w_gaia_row = np.concatenate([wc_gaia_row, wf_gaia_row])
    n_w = w_gaia_row.size
    # Base positions on the sky (ALLWISE epoch), then the ALLWISE measurement error.
    src_ra, src_dec = tangent_to_sky(src_xi, src_eta, ra_c, dec_c)
    g_ra, g_dec = tangent_to_sky(g_xi, g_eta, ra_c, dec_c)
    wb_ra = np.empty(n_w)
    wb_dec = np.empty(n_w)
    on = w_gaia_row >= 0
    gr = w_gaia_row[on]
    wb_ra[on], wb_dec[on] = propagate(g_ra[gr], g_dec[gr], g_pmra[gr], g_pmdec[gr],
                                      WISE_EPOCH - cfg.gaia_epoch)
    nc = iwc.size
    cpo = np.flatnonzero(~on[:nc])
    wb_ra[cpo], wb_dec[cpo] = src_ra[iwc[cpo]], src_dec[iwc[cpo]]
    ir = ~on
    ir[:nc] = False
    ir_xi, ir_eta = _uniform_disk(rng, int(ir.sum()), field_r)
    wb_ra[ir], wb_dec[ir] = tangent_to_sky(ir_xi, ir_eta, ra_c, dec_c)
    sigra = np.exp(rng.uniform(math.log(0.05), math.log(0.5), n_w))
    sigdec = np.clip(sigra * rng.uniform(0.8, 1.25, n_w), 0.05, 0.5)
    w_ra, w_dec = tangent_to_sky(sigra * rng.standard_normal(n_w),
                                 sigdec * rng.standard_normal(n_w), wb_ra, wb_dec)
    w_xi, w_eta = sky_to_tangent(w_ra, w_dec, ra_c, dec_c)
    cc = np.full(n_w, "0000", dtype="U4")
    dirty = rng.random(n_w) >= cfg.clean_frac
    codes = np.array(("D000", "h000", "H000", "P000", "0d00", "00h0"))
    cc[dirty] = codes[rng.integers(0, codes.size, int(dirty.sum()))]
    w_id = ids.take_wise(n_w)
    src_wise_id = np.full(n_src, -1, np.int64)
    src_wise_id[iwc] = w_id[:nc]


    stacks = []
    for s in range(k):
        ra_s, dec_s = tangent_to_sky(offs[s, 0], offs[s, 1], ra_c, dec_c)
        ra_s, dec_s = float(ra_s), float(dec_s)
        stacks.append(_stack(
            rng, cfg, fid, k, s, ra_s, dec_s, glat, str(instr[s]), float(epoch[s]),
            float(expo[s]), REGIMES[int(regime_idx[s])], float(d_xi[s]), float(d_eta[s]),
            ra_c, dec_c, offs[s], src_xi, src_eta, src_ra, src_dec, flux, cp_pmra, cp_pmdec, src_gaia_id,
            src_wise_id, g_xi, g_eta, g_ra, g_dec, g_pmra, g_pmdec, g_id,
            w_xi, w_eta, w_ra, w_dec, sigra, sigdec, cc, w_id, w_gaia_row, taken))
    return Field(field_id=fid, ra_deg=ra_c, dec_deg=dec_c, stacks=tuple(stacks))


def _stack(rng, cfg, fid, k, s, ra_s, dec_s, glat, instrument, epoch, expo, regime, d_xi,
           d_eta, ra_c, dec_c, off, src_xi, src_eta, src_ra, src_dec, flux, cp_pmra, cp_pmdec, src_gaia_id,
           src_wise_id, g_xi, g_eta, g_ra, g_dec, g_pmra, g_pmdec, g_id, w_xi, w_eta, w_ra,
           w_dec, sigra, sigdec, cc, w_id, w_gaia_row, taken):
    from ..simulate import crb_from_ellipses, psf_r90_arcsec

    r_as = cfg.r_stack_arcmin * 60.0
    cone_as = r_as + cfg.margin_arcmin * 60.0
    # --- detections of sky sources
    theta_all = np.hypot(src_xi - off[0], src_eta - off[1]) / 60.0
    counts_all = flux * expo
    det = (theta_all <= cfg.r_stack_arcmin) & (counts_all >= 4.0 + 0.3 * theta_all**2)
    isrc = np.flatnonzero(det)
    n_real = isrc.size
    # spurious detections (class FALSE), not on the sky
    n_fake = int(rng.binomial(max(n_real, 1), cfg.false_class_frac)) if n_real else 0
    fx, fy = _uniform_disk(rng, n_fake, r_as)
    n = n_real + n_fake
    dt = epoch - cfg.gaia_epoch
    # true positions at the stack epoch, field plane, then sky
    t_ra, t_dec = propagate(src_ra[isrc], src_dec[isrc], cp_pmra[isrc], cp_pmdec[isrc], dt)
    f_ra, f_dec = tangent_to_sky(fx, fy, ra_s, dec_s)
    true_ra = np.concatenate([t_ra, f_ra])
    true_dec = np.concatenate([t_dec, f_dec])
    # in the stack's own tangent plane
    x_true, y_true = sky_to_tangent(true_ra, true_dec, ra_s, dec_s)
    theta = np.hypot(x_true, y_true) / 60.0
    c_min = 4.0 + 0.3 * theta**2
    counts = np.concatenate([counts_all[isrc],
                             c_min[n_real:] * (1.0 - rng.random(n_fake)) ** (-1.0 / 1.5)])
    counts = np.round(np.minimum(counts, 1.0e5), 1)
    s_psf = psf_r90_arcsec(theta, instrument) / SIGMA_TO_R90
    sig_stat = s_psf / np.sqrt(counts)
    sig_rel = np.hypot(sig_stat, cfg.rel_floor_arcsec)
    ratio = rng.uniform(0.6, 1.0, n)
    pa = rng.uniform(0.0, 180.0, n)
    rel_a, rel_b = sig_rel / np.sqrt(ratio), sig_rel * np.sqrt(ratio)
    extra2 = np.full(n, cfg.sys_abs_arcsec**2)
    regime_value = 0.0
    stated_a, stated_b = rel_a, rel_b
    if regime == "nofloor":
        regime_value = float(rng.uniform(0.05, 0.3))
        extra2 = extra2 + regime_value**2
    elif regime == "inflated":
        regime_value = float(rng.uniform(1.5, 3.0))
        stated_a, stated_b = rel_a * regime_value, rel_b * regime_value
    elif regime == "wavdetect":
        stated_a, stated_b = sig_stat / np.sqrt(ratio), sig_stat * np.sqrt(ratio)
    true_a = np.sqrt(rel_a**2 + extra2)
    true_b = np.sqrt(rel_b**2 + extra2)
    par = np.radians(pa)
    g1, g2 = rng.standard_normal(n), rng.standard_normal(n)
    iso = np.sqrt(extra2)
    nx = rel_a * g1 * np.sin(par) + rel_b * g2 * np.cos(par) + iso * rng.standard_normal(n)
    ny = rel_a * g1 * np.cos(par) - rel_b * g2 * np.sin(par) + iso * rng.standard_normal(n)
    x_det = x_true - d_xi + nx
    y_det = y_true - d_eta + ny
    det_ra, det_dec = tangent_to_sky(x_det, y_det, ra_s, dec_s)

    # flags
    u = rng.random(n)
    lclass = np.full(n, "TRUE", dtype="U8")
    lclass[:n_real][u[:n_real] < cfg.marginal_frac] = "MARGINAL"
    lclass[n_real:] = "FALSE"
    bright = counts >= np.median(counts) if n else np.zeros(0, bool)
    sat = bright & (rng.random(n) < 2.0 * cfg.sat_frac)
    hull = rng.random(n) < cfg.hull_frac
    man_inc = rng.random(n) < cfg.man_inc_frac
    key = np.concatenate([isrc.astype(np.int64), np.full(n_fake, -1, np.int64)])
    gaia_cp = np.concatenate([src_gaia_id[isrc], np.full(n_fake, -1, np.int64)])
    wise_cp = np.concatenate([src_wise_id[isrc], np.full(n_fake, -1, np.int64)])
    # Shuffle so that row order tells nothing; region ids 1..n after the shuffle.
    perm = rng.permutation(n)

    # --- reference catalogs of the cone
    gsel = np.hypot(g_xi - off[0], g_eta - off[1]) <= cone_as
    wsel = np.hypot(w_xi - off[0], w_eta - off[1]) <= cone_as
    gin = np.hypot(g_xi - off[0], g_eta - off[1]) <= r_as
    win = np.hypot(w_xi - off[0], w_eta - off[1]) <= r_as
    area = math.pi * cfg.r_stack_arcmin**2
    wrows = np.flatnonzero(wsel & (w_gaia_row >= 0))
    bn_gaia_row = w_gaia_row[wrows]
    keep_bn = gsel[bn_gaia_row]
    bn_sid = g_id[bn_gaia_row[keep_bn]]
    bn_oid = w_id[wrows[keep_bn]]
    border = np.argsort(bn_sid, kind="stable")

    # Cramer-Rao bound with the true errors over the usable direct pairs.
    pm_tot = np.hypot(cp_pmra[isrc], cp_pmdec[isrc])
    usable = np.zeros(n, bool)
    g_row = np.searchsorted(g_id, gaia_cp[:n_real])
    has = gaia_cp[:n_real] >= 0
    sep = np.full(n_real, np.inf)
    if has.any():
        gxs, gys = sky_to_tangent(g_ra[g_row[has]], g_dec[g_row[has]], ra_s, dec_s)
        sep[has] = np.hypot(gxs - x_det[:n_real][has], gys - y_det[:n_real][has])
    usable[:n_real] = (has & ~(pm_tot > 50.0) & (sep <= 3.0) & (lclass[:n_real] != "FALSE")
                       & ~sat[:n_real] & ~hull[:n_real])
    crb_xi, crb_eta, _ = crb_from_ellipses(true_a[usable], true_b[usable], pa[usable])

    stack_id = stack_id_for(ra_s, dec_s, instrument, taken)
    return StackSky(
        stack_id=stack_id, field_id=fid, n_in_field=k, instrument=instrument,
        ra_stack_deg=ra_s, dec_stack_deg=dec_s, glat_deg=glat, epoch_yr=epoch,
        exposure_ks=expo, regime=regime, regime_value=regime_value,
        d_xi_arcsec=d_xi, d_eta_arcsec=d_eta,
        gaia_density=int(gin.sum()) / area, wise_density=int(win.sum()) / area,
        crb_xi_arcsec=float(crb_xi), crb_eta_arcsec=float(crb_eta), n_crb=int(usable.sum()),
        det_region_id=np.arange(1, n + 1, dtype=np.int32),
        det_key=np.where(key[perm] >= 0, key[perm] + fid * 10**7, -1),
        det_ra_deg=det_ra[perm], det_dec_deg=det_dec[perm],
        det_true_ra_deg=true_ra[perm], det_true_dec_deg=true_dec[perm],
        det_r0_arcsec=SIGMA_TO_R95 * stated_a[perm], det_r1_arcsec=SIGMA_TO_R95 * stated_b[perm],
        det_ang_deg=pa[perm], det_sigma_true_major=true_a[perm],
        det_sigma_true_minor=true_b[perm], det_theta_arcmin=theta[perm],
        det_src_cnts=counts[perm], det_class=lclass[perm], det_sat=sat[perm],
        det_hull=hull[perm], det_man_inc=man_inc[perm], det_gaia_id=gaia_cp[perm],
        det_wise_id=wise_cp[perm],
        gaia_source_id=g_id[gsel], gaia_ra_deg=g_ra[gsel], gaia_dec_deg=g_dec[gsel],
        gaia_pmra=g_pmra[gsel], gaia_pmdec=g_pmdec[gsel],
        wise_oid=w_id[wsel], wise_ra_deg=w_ra[wsel], wise_dec_deg=w_dec[wsel],
        wise_sigra=sigra[wsel], wise_sigdec=sigdec[wsel], wise_cc_flags=cc[wsel],
        bn_source_id=bn_sid[border], bn_allwise_oid=bn_oid[border],
    )
