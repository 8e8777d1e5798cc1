"""The specification's translation estimator: group selection, robust WLS, uncertainties, QA.

Owns the pure computation of ``stk_xfm`` for the "spec" estimator (CSC 2.1 stack fine
astrometry, spec §4, §5.3, §5.5.3-§5.5.5, §5.7, read through ``spec-notes.md`` items 1-7 and
14-16).  Arrays and frozen dataclasses in, frozen dataclasses out; numpy and scipy only.  No file
I/O and no parameter reading here: the front end is :mod:`stk_astrometry.tools.stk_xfm`.

Conventions (``share/doc/formats.md``): tangent-plane coordinates ``xi``/``eta`` in arcsec;
offsets are *target minus source* (``d_xi = ref_xi - src_xi``), and the fitted shift is added to
the source: corrected xi = xi + d_xi.

The fit
-------
Spec Eq. (3) with the robust loss applied per pair (spec-notes 1): minimise

    F(p) = 1/2 sum_i C^2 rho(z_i),   z_i = w_i |d_i - p|^2 / C^2

over the shift ``p = (d_xi, d_eta)``, where ``rho`` is scipy's loss (``cauchy``: ln(1+z)),
``C = f_scale`` and ``d_i`` the pair's offset.  This is exactly ``scipy.optimize.least_squares``
with residual vector ``f_i = sqrt(w_i) r_i`` (r_i of Eq. 1), start (0, 0) and bounds
±``max_shift`` (spec-notes 2, 3), which the code calls as the specification does.  Because the
residual is a Euclidean norm, Gauss-Newton converges only linearly on it (about 1e-5 arcsec at
scipy's default tolerances), so the solution is then polished by safeguarded Newton steps on the
same F(p) (exact gradient and Hessian below): same minimum, reached to ~1e-12 arcsec, so the
result no longer depends on solver tolerances.

The Cauchy loss is not convex, so F can have several minima, and the specification's answer is
the one ``least_squares`` reaches from (0, 0).  By default (``solver='auto'``, issue 11) the
polish runs alone from (0, 0) -- 3-4x cheaper than ``least_squares`` + polish -- and its
minimum is kept only when it is *proven* to be the one every descent from (0, 0) reaches: the
only stationary point of F in the sublevel set {F <= F(0)} (:func:`_cauchy_single_basin`, a
subdivision of the bounds box with rigorous bounds).  Where the proof fails (about 1 stack in
400 on the benchmarks) ``least_squares`` runs as before.  Same minimum to 1e-12 arcsec on
1,000 seeded stacks (test_xfmfit.py) and on every benchmark stack (bench_speed.py).

Uncertainty
-----------
The reported covariance must follow the actual scatter of the fitted shift also when the stated
errors are wrong (issue 14): wavdetect's errors, and CSC's for bright sources, carry no
systematic floor; CSC's ellipses can be 1.5-3x the scatter.  By default (``sigma='calibrated'``)
it comes from a **parametric bootstrap with calibrated errors**:

1. one measurement per detection j (its candidates are one measurement: a Gaia duplicate or a
   blend next to the true counterpart must not count twice): its offset ``d_j`` is the mean of
   its pairs' offsets weighted by their effective weights ``w_i rho'(z_i)``, its stated
   variance ``var_j`` that of its best-weighted pair;
2. the error model ``V_j = k^2 var_j + sigma_sys^2`` (per axis) is fitted by maximum likelihood
   to the residuals ``|d_j - p|^2 / (1 - h_j)`` (``h_j`` the detection's leverage, HC2, so that
   a dominating detection does not hide its own error); k >= 0.1, sigma_sys >= 0;
3. 200 sets of offsets are drawn around the fitted shift p, ``d*_j = p + N(0, V_j I)`` (each
   pair keeps its offset from its detection's mean), each set is refitted with the same
   objective from (0, 0) (Newton steps where they lower F, IRLS steps otherwise), and the
   covariance is that of the 200 refitted shifts.  The draws are seeded: the same input gives
   the same sigma (golden files), to a Monte-Carlo precision of ~5 % in sigma.

Pooling the scatter of all detections into two numbers (k, sigma_sys) is what makes this work
where the sandwich does not: with wavdetect-like errors (0.01-1.4") the Cauchy loss leaves a
few detections with most of the weight, their residuals say little about their own errors,
and the sandwich ``H^-1 B H^-1`` (still computed: the implausibility test, ``scatter_ratio``)
reported 0.5x the actual scatter; with conservative ellipses its formal-error floor reported
2x.  Measured on bench_accuracy's stacks (1,000 per regime, |shift| < 0.3"), reported sigma /
actual scatter, calibrated vs sandwich on the same stacks: errors right 1.02 vs 0.99, missing
floor 0.05-0.3" 0.80 vs 0.74 (0.98 vs 0.86 without the 1.3 % of stacks where the group rule
failed), inflated x1.5-3 1.06 vs 1.91, wavdetect-like 0.91 vs 0.51.

Two jackknife guards follow it (``sigma='calibrated'`` only), because the bootstrap holds the
separation group fixed and trusts its Gaussian model, and the spec's large errors come from
where neither holds:

- the **group choice** (:func:`fit_leg_spec`): for every detection left out in turn, the
  group :func:`select_group` would then choose; where it changes, the fit is redone on that
  group without the detection (elsewhere the shift is kept as it is: the bootstrap covers the
  scatter within the group), and the covariance is raised to the delete-one jackknife
  covariance of these shifts, ``(M-1)/M sum_j (t_j - t_mean)(t_j - t_mean)^T`` over the M
  detections, when that is larger (the factor ``max(1, tr(cov^-1 J) / 2)``);
- **below ten detections** in the group (:func:`_covariance`), the jackknife of the fit
  itself (each detection's pairs left out, the rest refitted from (0, 0)): one bright pair
  can carry a Cauchy fit, and so few cannot check the parametric model.

On bench_accuracy's stacks with wavdetect-like errors and two bright wrong counterparts the
bootstrap's sigma was 0.16-0.21x the actual scatter: the error came from the 1-2" group won
by three or four tight pairs (a wrong counterpart among them), and from groups of fewer than
ten detections that one wrong pair captured -- not from a scatter within the group.  The
guards cost ~10 % of conservatism where the errors are right (sigma/scatter ~1.09).  What
the sigma still cannot follow: for shifts near 1" the 0-1" group truncates the true offsets
(a bias of the spec shift, not a scatter).

Small-sample safeguard, against the *formal* covariance ``V0 = I / sum_j (1/var_j)`` from the
stated 1-sigma per-axis variances (one per detection, that of its best-weighted pair); m = the
number of detections:

- m <= 2: the scatter has at most one degree of freedom per axis; V0 is reported;
- 3 <= m < 10: the covariance is never smaller (eigenvalue by eigenvalue) than V0 -- a scatter
  estimated from so few detections is too often small by chance (at m = 5 without this floor:
  pull std 1.2, |pull| > 3 in 2.4 % of seeded stacks; with it 0.85 and < 0.3 %);
- offsets all but identical (scatter below 1 % of the stated errors: duplicated rows), V0.

``TranslationFit.implausible`` (the tool's warning, which names the likely cause) is set from
m >= 5 when the scatter is implausibly small for the stated errors: the smallest eigenvalue of
the sandwich below the 0.1 % quantile of chi2(nu)/nu times V0, nu = 2(m-1).  The sigma reported
then follows the scatter (conservative ellipses are reported as such, not hidden in the sigma).

``sigma='sandwich'`` keeps issue 4's estimate: the M-estimator sandwich with the exact Hessian
of F, clustered by detection,

    psi_i = rho'(z_i) w_i (p - d_i),        Psi_j = sum_{i in j} psi_i
    H     = sum_i w_i [rho'(z_i) I + 2 rho''(z_i) w_i (p-d_i)(p-d_i)^T / C^2]
    B     = sum_j Psi_j Psi_j^T / (1 - h_j),   h_j = sum_{i in j} w_i rho'_i / sum_i w_i rho'_i
    V     = H^-1 B H^-1

(``least_squares``' Jacobian of the norm residual carries only the radial direction of each
pair, so ``(J^T J)^-1`` underestimates the curvature by a factor ~2 and cannot be used as is),
with the floor at V0 below ten detections and, from ten on, V0 when the scatter is implausibly
small.  It is right when the stated errors are (within ~10 % for m >= 10) and is what the
bootstrap replaced.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field

import numpy as np

try:
    # np.einsum without its Python layer: with optimize=False (its default) np.einsum only
    # calls this function with the same arguments (issue 11: ~2 us a call)
    from numpy._core.multiarray import c_einsum as _c_einsum
except ImportError:                                   # pragma: no cover - numpy < 2
    from numpy.core.multiarray import c_einsum as _c_einsum

from .core.arrays import n_distinct
from .core.radii import R95_PER_SIGMA as _R95_PER_SIGMA

logger = logging.getLogger(__name__)

__all__ = [
    "LOSSES",
    "QA_BITS",
    "R95_PER_SIGMA",
    "WEIGHTINGS",
    "GroupChoice",
    "LegFit",
    "PairSet",
    "QAResult",
    "QAThresholds",
    "StackFit",
    "TranslationFit",
    "combine_legs",
    "chi2_quantile_even",
    "decide_qa",
    "fit_leg_spec",
    "fit_stack_spec",
    "fit_translation",
    "pair_variances",
    "residual_rms",
    "select_group",
]

#: CSC error-ellipse radii are 95 % radii; 1-sigma = radius / sqrt(-2 ln 0.05) = radius / 2.4477
#: (the one definition is in :mod:`stk_astrometry.core.radii`).
R95_PER_SIGMA = _R95_PER_SIGMA

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")
WEIGHTINGS = ("det", "combined", "ref")

#: QA bit values (formats.md §2).
QA_BITS = {"NOMATCH": 1, "DENSE": 2, "BIGSHIFT": 4, "FEWMATCH": 8, "DISAGREE": 16}

# Polishing stops when a Newton step is below this (arcsec).
_POLISH_TOL_ARCSEC = 1e-12
_POLISH_MAX_ITER = 100
# Below this many detections the scatter estimate is never allowed under the formal error
# (at 5-9 it alone gave heavy-tailed pulls: std 1.2, |pull| > 3 in 2.4 % at 5).
_SMALL_SAMPLE = 10
# From _IMPLAUSIBLE_MIN detections on, a scatter variance below this quantile of chi2(nu)/nu
# times the formal variance is implausible for the stated errors (degenerate input: identical or
# duplicated offsets); formal is used, and from _SMALL_SAMPLE on this is the only floor.
_IMPLAUSIBLE_QUANTILE = 0.001
_IMPLAUSIBLE_MIN = 5
# Leverages are clipped here so that one dominating pair cannot blow up the HC2 factor.
_MAX_LEVERAGE = 0.95
# The calibrated bootstrap of the spec's sigma (issue 14): replicates, their fixed seed (the
# same input gives the same sigma), the refit's step tolerance (arcsec) and iteration cap, the
# smallest error scale k it may fit, and the scatter ratio below which the offsets count as
# identical (then the formal error is reported, as the warning says).
_BOOT_N = 200
_BOOT_SEED = 20261205
_BOOT_TOL_ARCSEC = 1e-9
_BOOT_MAX_ITER = 100
# (replicates x pairs) elements per refit call: the refit keeps ~15 temporaries of that shape,
# so a stack of thousands of pairs is refitted a block of replicates at a time (issue 12: a
# 6,759-pair leg took ~100 MB at once and set a campaign worker's peak memory).  2^15: at most
# ~4.5 MB at once; 2^16 let the rare leg of 330+ pairs hold 9 MB, the largest transient of a
# 10,000-stack campaign; the CPU is the same within the noise (2^14: 2.3 MB, +6 %)
_BOOT_BLOCK = 1 << 15
# every bootstrap draws the same seeded stream: its first _BOOT_N x _BOOT_CACHED x 2 normals
# are drawn once per process and reused (0.8 MB; issue 11: drawing them cost a leg with 50
# detections ~0.15 ms); legs with more detections draw their own, as before
_BOOT_CACHED = 256
_boot_stream = []
_MIN_SCALE = 0.1
_DEGENERATE_RATIO = 0.01
SIGMAS = ("calibrated", "sandwich")


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True, eq=False)
class PairSet:
    """Matched pairs of one catalog leg (a ``*_PAIRS`` or ``WISE_GAIA`` HDU).

    All arrays have the same length n.

    Attributes
    ----------
    region_id : ndarray of int
        Source id: the detection ``region_id``; the ``wise_id`` for ``WISE_GAIA``.
    src_xi, src_eta : ndarray
        Source (detection / ALLWISE) position, arcsec.
    d_xi, d_eta : ndarray
        Target minus source, arcsec.
    sep : ndarray
        Separation, arcsec.
    group : ndarray of int
        1-based separation group (0 = none).
    err_r0, err_r1 : ndarray
        95 % error-ellipse radii of the source, arcsec (NaN for ``WISE_GAIA``).
    err_ang : ndarray
        Position angle of the ellipse, deg.
    ref_sigra, ref_sigdec : ndarray
        1-sigma errors of the target side (ALLWISE), arcsec; 0 for Gaia.  For ``WISE_GAIA``
        these hold the ALLWISE source's ``wise_sigra``/``wise_sigdec``.
    """

    region_id: np.ndarray
    src_xi: np.ndarray
    src_eta: np.ndarray
    d_xi: np.ndarray
    d_eta: np.ndarray
    sep: np.ndarray
    group: np.ndarray
    err_r0: np.ndarray
    err_r1: np.ndarray
    err_ang: np.ndarray
    ref_sigra: np.ndarray
    ref_sigdec: np.ndarray

    def __post_init__(self):
        n = len(np.atleast_1d(self.region_id))
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            # an ndarray of 1 or more axes is its own np.atleast_1d(np.asarray(.)): kept as it
            # is without the two calls (issue 11: ~0.5 us each, 24 a PairSet, ~6 a stack)
            if type(value) is not np.ndarray or value.ndim == 0:
                value = np.atleast_1d(np.asarray(value))
                object.__setattr__(self, name, value)
            if value.ndim != 1 or len(value) != n:
                raise ValueError(f"PairSet.{name} has shape {value.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.region_id)

    @classmethod
    def empty(cls) -> PairSet:
        """A PairSet with no pairs."""
        z = np.zeros(0)
        return cls(np.zeros(0, dtype=np.int64), z, z, z, z, z, np.zeros(0, dtype=int), z, z, z,
                   z, z)

    def subset(self, mask) -> PairSet:
        """The pairs selected by a boolean mask or an index array."""
        return PairSet(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})


def pair_variances(pairs: PairSet, weighting: str) -> np.ndarray:
    """1-sigma per-axis positional variance of each pair's offset, arcsec².

    Circular approximations of the error ellipses (spec §5.5.3 step 8, §5.5.4 steps 8-11,
    spec-notes 4-5), all on the 1-sigma convention:

    - ``det``: CSC detection only, ``r0 r1 / 2.4477²`` (Gaia errors neglected, as in the spec);
    - ``combined``: ``r0 r1 / 2.4477² + sigra sigdec`` (detection → ALLWISE leg);
    - ``ref``: ``sigra sigdec`` (ALLWISE → Gaia leg, ALLWISE errors only).

    Non-finite or non-positive values mean "unusable" and are returned as NaN.
    """
    if weighting == "det":
        var = pairs.err_r0 * pairs.err_r1 / R95_PER_SIGMA**2
    elif weighting == "combined":
        var = (pairs.err_r0 * pairs.err_r1 / R95_PER_SIGMA**2
               + pairs.ref_sigra * pairs.ref_sigdec)
    elif weighting == "ref":
        var = pairs.ref_sigra * pairs.ref_sigdec
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {weighting!r}")
    var = np.asarray(var, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(var) & (var > 0), var, np.nan)


def _weights(pairs: PairSet, weighting: str) -> tuple[np.ndarray, np.ndarray]:
    """(weights, 1-sigma variances).  ``det`` keeps the spec's exact w = 1/(r0 r1) (95 % scale);
    the two-step legs use w = 1/var (1-sigma scale, spec-notes 5)."""
    var = pair_variances(pairs, weighting)
    if weighting == "det":
        with np.errstate(divide="ignore", invalid="ignore"):
            w = 1.0 / (pairs.err_r0 * pairs.err_r1)
        w = np.where(np.isfinite(var), w, np.nan)
    else:
        w = 1.0 / var
    return w, var


# ---------------------------------------------------------------------------------------------
# The WLS fit


@dataclass(frozen=True, eq=False)
class TranslationFit:
    """Result of :func:`fit_translation`.

    Attributes
    ----------
    d_xi, d_eta : float
        Fitted shift, arcsec (corrected = source + shift).  0 when there is nothing to fit.
    d_xi_err, d_eta_err : float
        1-sigma uncertainties, arcsec (NaN when there is nothing to fit).
    cov_xi_eta : float
        Covariance of the two components, arcsec².
    n_used : int
        Pairs that entered the fit.
    success : bool
        The solver converged and there was at least one pair.
    message : str
        Readable summary (solver status, what was dropped, which safeguard set the errors).
    cov : ndarray
        The full 2x2 covariance, arcsec².
    n_dropped : int
        Pairs dropped for non-finite positions or unusable weights.
    at_bound : bool
        A component sits on ±max_shift.
    error_source : str
        ``scatter`` (the bootstrap or sandwich estimate), ``formal`` (the safeguard raised it
        to the error from the stated position errors), ``jackknife`` (fewer than 10
        detections: raised to the delete-one-detection jackknife, ``sigma='calibrated'``) or
        ``none``.
    nfev : int
        least_squares' function evaluations.
    n_clusters : int
        Independent measurements the uncertainty counted: distinct ``cluster`` ids (detections)
        among the pairs used; ``n_used`` when no clusters were given.
    implausible : bool
        With >= 5 detections, the residual scatter is implausibly small for the stated errors
        (below the 0.1 % quantile of chi2(nu)/nu times the formal variance): the stated errors
        are conservative (CSC's error ellipses can be), or, when the scatter is below 1 % of
        them, the offsets are all but identical (then the errors are the formal ones).
    scatter_ratio : float
        sqrt(smallest eigenvalue of the scatter covariance / formal variance): the scatter
        in units of the stated errors (NaN when not computed).
    """

    d_xi: float
    d_eta: float
    d_xi_err: float
    d_eta_err: float
    cov_xi_eta: float
    n_used: int
    success: bool
    message: str
    cov: np.ndarray = field(default_factory=lambda: np.full((2, 2), np.nan))
    n_dropped: int = 0
    at_bound: bool = False
    error_source: str = "none"
    nfev: int = 0
    n_clusters: int = 0
    implausible: bool = False
    scatter_ratio: float = float("nan")


def _rho(z: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scipy's loss rho(z) and its first two derivatives (scipy.optimize.least_squares docs)."""
    if loss == "linear":
        return z, np.ones_like(z), np.zeros_like(z)
    if loss == "soft_l1":
        t = 1.0 + z
        return 2.0 * (np.sqrt(t) - 1.0), t**-0.5, -0.5 * t**-1.5
    if loss == "huber":
        big = z > 1.0
        zs = np.where(big, z, 1.0)
        rho = np.where(big, 2.0 * np.sqrt(zs) - 1.0, z)
        return rho, np.where(big, zs**-0.5, 1.0), np.where(big, -0.5 * zs**-1.5, 0.0)
    if loss == "cauchy":
        t = 1.0 + z
        return np.log1p(z), 1.0 / t, -1.0 / t**2
    if loss == "arctan":
        return np.arctan(z), 1.0 / (1.0 + z**2), -2.0 * z / (1.0 + z**2) ** 2
    raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")


def _rho_value(z: np.ndarray, loss: str, out=None) -> np.ndarray:
    """rho(z) alone, :func:`_rho`'s first value by the same arithmetic: the refits' trial
    values need no derivatives (for the Cauchy loss, one ufunc instead of four; issue 11).
    ``out``: an array of z's shape the Cauchy loss's values may be written into (no new
    array)."""
    if loss == "cauchy":
        return np.log1p(z, out=out)
    return _rho(z, loss)[0]


def _rho_slopes(z: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """rho'(z) and rho''(z) alone, :func:`_rho`'s last two values by the same arithmetic: a
    refit at a point whose rho is known needs only these (for the Cauchy loss, no log1p)."""
    if loss == "cauchy":
        t = 1.0 + z
        return 1.0 / t, -1.0 / t**2
    return _rho(z, loss)[1:]


def _objective(p, d_xi, d_eta, w, loss, f_scale):
    """F(p), its gradient, its Hessian and the per-pair pieces (module docstring).

    (Issue 11: the divisions by C^2 are skipped at the default C = 1 -- x / 1.0 is x to the
    bit -- and the sums are ``np.add.reduce``, the call ``x.sum()`` makes.)"""
    ex = p[0] - d_xi
    ey = p[1] - d_eta
    c2 = f_scale * f_scale
    scaled = c2 != 1.0
    z = _weighted_norm2(ex, ey, w, c2, scaled)
    rho, rho1, rho2 = _rho(z, loss)
    total = np.add.reduce
    value = 0.5 * c2 * float(total(rho))
    v = rho1 * w
    grad = np.array([v @ ex, v @ ey])
    k = 2.0 * rho2 * w * w
    if scaled:
        k = k / c2
    kx = k * ex
    vsum = float(total(v))
    hxy = float(kx @ ey)
    hess = np.array([[vsum + float(kx @ ex), hxy], [hxy, vsum + float((k * ey) @ ey)]])
    return value, grad, hess, (ex, ey, rho1)


def _newton_step(grad, hess):
    """-H^-1 g for a positive-definite 2x2 H, else None (closed form: cheaper than linalg)."""
    a, b, c = hess[0, 0], hess[0, 1], hess[1, 1]
    det = a * c - b * b
    if not (a > 0 and det > 0 and np.isfinite(det)):
        return None
    return np.array([-(c * grad[0] - b * grad[1]) / det, -(a * grad[1] - b * grad[0]) / det])


def _polish(p, d_xi, d_eta, w, loss, f_scale, max_shift, *, with_objective=False):
    """Safeguarded Newton (IRLS fallback) on F from ``p`` (the least_squares solution, or the
    start (0, 0) for the direct solver).  With ``with_objective``: (p, :func:`_objective` at
    p), which the polish has computed anyway."""
    p = np.array(p, dtype=float)
    at_p = _objective(p, d_xi, d_eta, w, loss, f_scale)
    value, grad, hess, (_, _, rho1) = at_p
    for _ in range(_POLISH_MAX_ITER):
        step = _newton_step(grad, hess)
        if step is None:
            # IRLS: the weighted mean with the current effective weights w rho'(z).
            v = w * rho1
            step = np.array([v @ d_xi, v @ d_eta]) / np.sum(v) - p
        accepted = False
        for _halving in range(40):
            # np.clip's arithmetic without its Python layers (NaN kept, as np.clip)
            trial = np.minimum(np.maximum(p + step, -max_shift), max_shift)
            t_value, t_grad, t_hess, t_pieces = _objective(trial, d_xi, d_eta, w, loss, f_scale)
            if t_value <= value * (1.0 + 1e-15) + 1e-300:
                accepted = True
                break
            step = step / 2.0
        if not accepted:
            break
        moved = float(np.hypot(*(trial - p)))
        p, value, grad, hess, rho1 = trial, t_value, t_grad, t_hess, t_pieces[2]
        at_p = (t_value, t_grad, t_hess, t_pieces)
        if moved < _POLISH_TOL_ARCSEC:
            break
    return (p, at_p) if with_objective else p


# ---------------------------------------------------------------------------------------------
# Direct solver and its single-basin certificate (issue 11)

# The certificate's search: cells narrower than this (arcsec) or more cells than this in all
# make it give up (least_squares then decides the basin, as before).
_CERT_MIN_HALF_CELL = 1e-4
_CERT_MAX_CELLS = 20_000
_CERT_FIRST_SPLIT = 8
# the four children of a square, in units of their half-width
_CORNERS_X = np.array([-1.0, -1.0, 1.0, 1.0])
_CORNERS_Y = np.array([-1.0, 1.0, -1.0, 1.0])
# Half-widths tried for the convex square around the minimum, in units of the median 1-sigma
# scale C / sqrt(w) of the pairs.
# (Down to 1/256: where a few pairs with tiny stated errors sit far from the minimum -- as
# with wavdetect's errors -- the region around it provably holding no other stationary point
# is small; with 1/32 the smallest, 15 of bench_speed's 625 core fits went to least_squares
# for want of it, 3 with 1/256, at no measurable cost to the others.)
_CERT_CONVEX_HALF = (2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125,
                     0.00390625)
# Third derivative of the Cauchy term: for the radial function f(r) = ln(1 + r^2) / 2 its
# norm is at most T(r) = |f3| + 3 |f2 / r - f1 / r^2| = 2r|r^2 - 3|/(1+r^2)^3 + 6r/(1+r^2)^2,
# which increases up to r = 0.485868 (T = 3.3302) and decreases beyond (checked on a fine grid
# to r = 100; T ~ 8 / r^3 further out).
_T_PEAK_R = 0.485868
_CERT_CONVEX_HALF_ARR = np.asarray(_CERT_CONVEX_HALF)


def _median(x):
    """``float(np.median(x))`` of a 1-D array without np.median's generic machinery (the
    same partition and the same mean of the two middle values)."""
    n = x.size
    k = n // 2
    if n % 2:
        return float(np.partition(x, k)[k])
    part = np.partition(x, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2.0)


@functools.lru_cache(maxsize=8)
def _first_squares(half):
    """Centres (x, y) of the certificate's first 8 x 8 squares of half-width ``half``."""
    ticks = (2.0 * np.arange(_CERT_FIRST_SPLIT) + 1.0 - _CERT_FIRST_SPLIT) * half
    cx, cy = (t.ravel() for t in np.meshgrid(ticks, ticks, indexing="ij"))
    cx.flags.writeable = cy.flags.writeable = False
    return cx, cy


def _cauchy_min_curvature(z_lo, z_hi):
    """Lower bound, over z in [z_lo, z_hi], of (1-z)/(1+z)², the radial curvature factor of
    the Cauchy term (its smaller eigenvalue factor; decreasing on [0, 3], minimum -1/8 at 3)."""
    def h(z):
        return (1.0 - z) / (1.0 + z) ** 2
    return np.where(z_hi <= 3.0, h(z_hi), np.where(z_lo >= 3.0, h(z_lo), -0.125))


def _z_range_on_squares(ex, ey, a, halves):
    """(z_lo, z_hi): the least and the greatest of ``a (x^2 + y^2)`` over each square
    ``|x - ex| <= h, |y - ey| <= h`` for h in ``halves`` (rows) and each pair (columns; ``ex``,
    ``ey`` >= 0: the distances of the squares' centre from the pairs' offsets per axis)."""
    h = halves[:, None]
    z_lo = a * (np.maximum(ex - h, 0.0) ** 2 + np.maximum(ey - h, 0.0) ** 2)
    z_hi = a * ((ex + h) ** 2 + (ey + h) ** 2)
    return z_lo, z_hi


def _cauchy_third_sup(z_lo, z_hi):
    """Per pair, the supremum over z in [z_lo, z_hi] of T(sqrt z), the norm bound of the Cauchy
    term's third derivative (module constants: T is unimodal, its peak at _T_PEAK_R)."""
    r = np.clip(_T_PEAK_R, np.sqrt(z_lo), np.sqrt(z_hi))
    r2 = r * r
    return 2.0 * r * np.abs(r2 - 3.0) / (1.0 + r2) ** 3 + 6.0 * r / (1.0 + r2) ** 2


def _smallest_eigenvalue(hess):
    """The smaller eigenvalue of a symmetric 2x2 matrix (closed form)."""
    return 0.5 * (hess[0, 0] + hess[1, 1]) - math.hypot(0.5 * (hess[0, 0] - hess[1, 1]),
                                                        hess[0, 1])


def _cauchy_single_basin(p, d_xi, d_eta, w, f_scale, max_shift, hess=None) -> bool:
    """Prove that every descent from (0, 0) on the Cauchy objective ends at ``p``.

    ``least_squares`` (trust-region reflective: a step is taken only if it lowers F) and the
    Newton/IRLS polish are descent methods, so all their iterates lie in the sublevel set
    L0 = {s in the bounds box: F(s) <= F(0)}, and the polish stops at a stationary point of F.
    If ``p`` is the only stationary point in L0 (and no bound is active), both reach ``p``.
    This is shown by subdividing the bounds box into squares until each square Q is

    - outside L0: the lower bound sum_i ln(1 + z_lo,i(Q)) of 2F/C² exceeds that at (0, 0);
    - inside a square around ``p`` in which ``p`` is the only stationary point, shown by
      either of two bounds: F strictly convex there (sum_i w_i min (1-z)/(1+z)^2 > 0 bounds
      the smallest Hessian eigenvalue from below, Weyl), or, with lambda the smallest
      eigenvalue of H(p) and M a bound of |grad^3 F| on the square,
      g(s).(s-p) >= |s-p|^2 (lambda - |s-p| M / 2) > 0;
    - or free of stationary points: |grad F(c)| > sqrt(2) h sum_i w_i / (1 + z_lo,i(Q)), the
      right side bounding the change of the gradient over Q (each pair's Hessian has norm
      <= w_i / (1 + z_i)).  Squares touching the bounds must be outside L0 (a bound-constrained
      stationary point need not have a zero gradient).

    Returns False when a square stays undecided at the resolution limit: the caller then lets
    ``least_squares`` pick the basin.  ``hess``: the Cauchy objective's Hessian at ``p`` when
    the caller has it.
    """
    if np.any(np.abs(p) >= max_shift * (1.0 - 1e-9)):
        return False
    a = w / (f_scale * f_scale)
    f0 = float(np.sum(np.log1p(a * (d_xi * d_xi + d_eta * d_eta))))
    f0_margin = f0 + 1e-9 * (1.0 + abs(f0))
    # the convex square around p: the widest candidate that passes either bound
    halves = _median(1.0 / np.sqrt(a)) * _CERT_CONVEX_HALF_ARR
    z_lo, z_hi = _z_range_on_squares(np.abs(p[0] - d_xi), np.abs(p[1] - d_eta), a, halves)
    weyl = _cauchy_min_curvature(z_lo, z_hi) @ w
    # H(s) >= H(p) - |s - p| sup |grad^3 F| on the square: each pair's third derivative is
    # at most w sqrt(a) T(sqrt(z)), T unimodal (module constants): its sup over [r_lo, r_hi]
    # is T at the peak clipped into the interval
    third = (_cauchy_third_sup(z_lo, z_hi) * (1.0 + 1e-9)) @ (w * np.sqrt(a))
    if hess is None:
        _, _, hess, _ = _objective(p, d_xi, d_eta, w, "cauchy", f_scale)
    lam_p = _smallest_eigenvalue(hess)
    # g(s).(s - p) = int_0^1 (s-p)^T H(p + t(s-p)) (s-p) dt >= |s-p|^2 (lam_p - |s-p| M / 2)
    # > 0: no stationary point but p in the square (convexity is not needed for that)
    taylor = lam_p - np.sqrt(0.5) * halves * third
    passed = np.flatnonzero((weyl > 0) | (taylor > 0))
    if passed.size == 0:
        return False
    convex_half = float(halves[passed[0]])
    # start from 8 x 8 squares: the first levels of a quadtree from the whole box would
    # rarely exclude anything and cost a pass each
    half = float(max_shift) / _CERT_FIRST_SPLIT
    cx, cy = _first_squares(half)      # cached; never changed in place
    n_cells = 0
    while cx.size:
        n_cells += cx.size
        if n_cells > _CERT_MAX_CELLS or half < _CERT_MIN_HALF_CELL:
            return False
        keep = (np.abs(cx - p[0]) + half > convex_half) | (np.abs(cy - p[1]) + half > convex_half)
        cx, cy = cx[keep], cy[keep]
        if not cx.size:
            break
        ex = cx[:, None] - d_xi
        ey = cy[:, None] - d_eta
        z_lo = a * (np.maximum(np.abs(ex) - half, 0.0) ** 2
                    + np.maximum(np.abs(ey) - half, 0.0) ** 2)
        maybe_in_l0 = np.log1p(z_lo).sum(axis=1) <= f0_margin
        cx, cy, ex, ey, z_lo = cx[maybe_in_l0], cy[maybe_in_l0], ex[maybe_in_l0], \
            ey[maybe_in_l0], z_lo[maybe_in_l0]
        if not cx.size:
            break
        v = w / (1.0 + a * (ex * ex + ey * ey))
        gnorm = np.hypot((v * ex).sum(axis=1), (v * ey).sum(axis=1))
        lip = (1.0 / (1.0 + z_lo)) @ w
        at_bound = (np.maximum(np.abs(cx), np.abs(cy)) + half
                    >= max_shift * (1.0 - 1e-12))
        undecided = (gnorm <= np.sqrt(2.0) * half * lip) | at_bound
        half *= 0.5
        cx = (cx[undecided, None] + half * _CORNERS_X).ravel()
        cy = (cy[undecided, None] + half * _CORNERS_Y).ravel()
    return True


_SOLVERS = ("auto", "least_squares")
# losses whose per-pair term is convex in the shift: F has one minimum (unique when the Hessian
# there is positive definite), which any descent method reaches
_CONVEX_LOSSES = ("linear", "soft_l1", "huber")


def _minimise(d_xi, d_eta, w, loss, f_scale, max_shift, solver):
    """Minimise F from the start (0, 0): (p, description, nfev, success, F's pieces at p as
    :func:`_objective` returns them).

    ``solver='least_squares'`` is the specification's call, ``scipy.optimize.least_squares``
    from (0, 0) within the bounds, polished by :func:`_polish`.  ``'auto'`` (default) first
    runs the polish alone from (0, 0) (Newton, IRLS steps where the Hessian is not positive
    definite: 5-10x cheaper) and keeps its result only when it is provably the minimum that
    ``least_squares`` reaches -- F convex with a positive-definite Hessian at the minimum, or
    for the Cauchy loss :func:`_cauchy_single_basin` -- and otherwise falls back on the
    specification's call.  Both give the same minimum to ~1e-12 arcsec
    (test_xfmfit.py: 1,000 seeded stacks).
    """
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, not {solver!r}")
    if solver == "auto" and loss != "arctan":
        p, at_p = _polish(np.zeros(2), d_xi, d_eta, w, loss, f_scale, max_shift,
                          with_objective=True)
        _, grad, hess, _ = at_p
        step = _newton_step(grad, hess)
        # a strict interior minimum: Hessian positive definite, Newton step negligible
        proven = (step is not None and float(np.hypot(*step)) < 1e-10
                  and not np.any(np.abs(p) >= max_shift * (1.0 - 1e-9)))
        if proven and loss not in _CONVEX_LOSSES:
            proven = _cauchy_single_basin(p, d_xi, d_eta, w, f_scale, max_shift, hess)
        if proven:
            return p, "direct Newton/IRLS from (0, 0) (single basin proven)", 0, True, at_p
    sqrt_w = np.sqrt(w)

    def residuals(p):
        return sqrt_w * np.hypot(p[0] - d_xi, p[1] - d_eta)

    def jacobian(p):
        ex = p[0] - d_xi
        ey = p[1] - d_eta
        # a pair at p (r = 0, ex = ey = 0) gets the row (0, 0): 1/r is only kept finite there
        inv_r = 1.0 / np.maximum(np.hypot(ex, ey), np.finfo(float).tiny)
        return np.column_stack([sqrt_w * ex * inv_r, sqrt_w * ey * inv_r])

    from scipy.optimize import least_squares  # imported here: keeps tool start-up light

    res = least_squares(residuals, (0.0, 0.0), jac=jacobian, loss=loss, f_scale=f_scale,
                        bounds=(-max_shift, max_shift))
    p, at_p = _polish(res.x, d_xi, d_eta, w, loss, f_scale, max_shift, with_objective=True)
    return p, f"least_squares: {res.message}", int(res.nfev), bool(res.success), at_p


@functools.lru_cache(maxsize=256)
def chi2_quantile_even(prob: float, dof: int) -> float:
    """Quantile of the chi-square distribution with an even number of degrees of freedom.

    For dof = 2k the CDF is closed-form: P(X <= x) = 1 - exp(-t) sum_{i<k} t^i / i!,
    t = x/2 (the Poisson tail, Abramowitz & Stegun 26.4.21); it is inverted by bisection to
    double precision.  Replaces ``scipy.stats.chi2.ppf`` for the one quantile the
    small-scatter test needs: importing ``scipy.stats`` costs a tool ~0.5 s of start-up.
    """
    k = int(dof) // 2
    if dof != 2 * k or k < 1 or not 0.0 < prob < 1.0:
        raise ValueError(f"chi2_quantile_even needs an even dof >= 2 and 0 < prob < 1, "
                         f"not dof={dof!r}, prob={prob!r}")
    log_fact = np.cumsum(np.log(np.arange(1, k, dtype=float)))
    log_fact = np.concatenate([[0.0], log_fact])          # log i!, i = 0..k-1
    i = np.arange(k, dtype=float)

    def cdf(t):
        terms = i * math.log(t) - t - log_fact
        top = terms.max()
        return 1.0 - math.exp(top) * float(np.sum(np.exp(terms - top)))

    lo, hi = 0.0, float(k) + 20.0 * math.sqrt(k) + 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if cdf(mid) < prob:
            lo = mid
        else:
            hi = mid
    return lo + hi


def _raise_eigenvalues(cov: np.ndarray, threshold_var: float, floor_var: float) -> np.ndarray:
    """The covariance with every eigenvalue below ``threshold_var`` replaced by ``floor_var``."""
    vals, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
    vals = np.where(vals < threshold_var, np.maximum(vals, floor_var), vals)
    return (vecs * vals) @ vecs.T


def _covariance(p, d_xi, d_eta, w, var1, loss, f_scale, cluster=None, *, max_shift=5.0,
                sigma="calibrated", at_p=None):
    """Cluster-robust sandwich covariance, HC2 correction, small-sample safeguard (module
    docstring).

    ``cluster`` (one id per pair; default: every pair its own) groups the pairs of one
    detection: its candidates are one measurement, not several.  Their score contributions are
    summed before the outer product, the leverage is the cluster's, the small-sample rules
    count clusters and the formal variance takes one pair per cluster.  With one pair per
    cluster this is exactly the per-pair computation.

    Returns (cov, source, n_clusters, implausible): source ``scatter`` or ``formal``;
    implausible when the scatter is implausibly small for the stated errors (>= 5 detections).
    """
    n = len(d_xi)
    if cluster is None:
        inverse, m = None, n
    else:
        _, inverse = np.unique(np.asarray(cluster), return_inverse=True)
        m = int(inverse.max()) + 1 if n else 0
        if m == n:
            inverse = None              # one pair per detection: the per-pair sums, unchanged

    def per_cluster(x):
        return x if inverse is None else np.bincount(inverse, weights=x, minlength=m)

    info = 1.0 / var1
    if inverse is not None:
        # a detection has at most one true counterpart: it brings the information of one pair,
        # its best-weighted one (on the direct path all its pairs share the detection's ellipse)
        order = np.argsort(inverse, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
        info = np.maximum.reduceat(info[order], starts)
    formal_var = 1.0 / np.sum(info)
    if m <= 2:
        return formal_var * np.eye(2), "formal", m, False, float("nan")
    # at_p: _objective at p, when the caller has it (the minimiser's last evaluation)
    _, _, hess, (ex, ey, rho1) = (at_p if at_p is not None
                                  else _objective(p, d_xi, d_eta, w, loss, f_scale))
    v = w * rho1
    vsum = np.sum(v)
    if not vsum > 0:
        return formal_var * np.eye(2), "formal", m, False, float("nan")
    if _newton_step(np.zeros(2), hess) is None:          # not positive definite
        hess = vsum * np.eye(2)
    lev = np.minimum(per_cluster(v) / vsum, _MAX_LEVERAGE)
    psi = np.column_stack([per_cluster(v * ex), per_cluster(v * ey)])
    meat = (psi.T * (1.0 / (1.0 - lev))) @ psi
    det = hess[0, 0] * hess[1, 1] - hess[0, 1] * hess[1, 0]
    hinv = np.array([[hess[1, 1], -hess[0, 1]], [-hess[1, 0], hess[0, 0]]]) / det
    sandwich = hinv @ meat @ hinv
    smallest = 0.5 * (sandwich[0, 0] + sandwich[1, 1]) - math.hypot(
        0.5 * (sandwich[0, 0] - sandwich[1, 1]), 0.5 * (sandwich[0, 1] + sandwich[1, 0]))
    implausible = False
    if m >= _IMPLAUSIBLE_MIN:
        dof = 2 * (m - 1)
        implausible_var = formal_var * chi2_quantile_even(_IMPLAUSIBLE_QUANTILE, dof) / dof
        implausible = bool(smallest < implausible_var)
    ratio = float(np.sqrt(max(smallest, 0.0) / formal_var))
    if sigma == "sandwich":
        # issue-4 rule: few detections never below the formal error; then implausibly small
        # scatter only
        threshold = formal_var if m < _SMALL_SAMPLE else implausible_var
        cov = _raise_eigenvalues(sandwich, threshold, formal_var)
        raised = smallest < threshold
        return cov, ("formal" if raised else "scatter"), m, implausible, ratio
    if not ratio > _DEGENERATE_RATIO:
        # offsets all but identical (duplicated rows): no scatter to calibrate on.  (Also what
        # the sandwich sees when one bright pair carries a Cauchy fit and the others are
        # down-weighted: below ten detections the jackknife follows.)
        cov, source = formal_var * np.eye(2), "formal"
    else:
        cov = _calibrated_bootstrap(p, d_xi, d_eta, w, var1, loss, f_scale, max_shift, inverse,
                                    m, lev, pieces=(ex, ey, rho1))
        if cov is None:                     # refits failed: the sandwich, with its safeguards
            return _covariance(p, d_xi, d_eta, w, var1, loss, f_scale, cluster,
                               max_shift=max_shift, sigma="sandwich", at_p=at_p)
        source = "scatter"
        if m < _SMALL_SAMPLE and np.linalg.eigvalsh(cov)[0] < formal_var:
            # few detections: never below the formal error (a scatter from < 10 detections is
            # too often small by chance) ...
            cov, source = _raise_eigenvalues(cov, formal_var, formal_var), "formal"
    if m < _SMALL_SAMPLE:
        # ... nor below what leaving out one detection does to the shift: the parametric model
        # cannot be checked on so few, and one wrong pair can carry the fit (issue 14)
        jack = _cluster_jackknife(d_xi, d_eta, w, loss, f_scale, max_shift, inverse, m)
        cov, factor = _raise_to(cov, jack)
        if factor > 1.0:
            source = "jackknife"
    return cov, source, m, implausible, ratio


def _jackknife_cov(thetas):
    """Delete-one jackknife covariance of the rows of ``thetas`` (m, 2): ``(m - 1)/m sum_j
    (t_j - t_mean)(t_j - t_mean)^T`` (Efron & Stein 1981; Efron 1982, ch. 3); None when a
    refit failed (non-finite row)."""
    m = thetas.shape[0]
    if m < 2 or not np.all(np.isfinite(thetas)):
        return None
    dev = thetas - thetas.mean(axis=0)
    return (m - 1) / m * (dev.T @ dev)


def _cluster_jackknife(d_xi, d_eta, w, loss, f_scale, max_shift, inverse, m):
    """Delete-one-detection jackknife covariance of the shift: each detection's pairs left
    out in turn (weight 0), the rest refitted from (0, 0) with the same objective."""
    if inverse is None:
        inverse = np.arange(d_xi.size)
    keep = inverse[None, :] != np.arange(m)[:, None]
    rows = np.where(keep, w[None, :], 0.0)
    shape = rows.shape
    thetas = _refit_batch(np.broadcast_to(d_xi, shape), np.broadcast_to(d_eta, shape), rows,
                          loss, f_scale, max_shift)
    return _jackknife_cov(thetas)


def _raise_to(cov, other):
    """``cov`` scaled up to ``other`` when that is larger (never down): by
    ``max(1, tr(cov^-1 other) / 2)``.  Returns (covariance, factor)."""
    if other is None or not (np.all(np.isfinite(cov)) and np.all(np.isfinite(other))):
        return cov, 1.0
    try:
        factor = float(np.trace(np.linalg.solve(cov, other))) / 2.0
    except np.linalg.LinAlgError:
        return cov, 1.0
    if not (np.isfinite(factor) and factor > 1.0):
        return cov, 1.0
    return cov * factor, factor


def _calibrated_bootstrap(p, d_xi, d_eta, w, var1, loss, f_scale, max_shift, inverse, m, lev,
                          pieces=None):
    """Covariance of the shift by a parametric bootstrap with calibrated errors (module
    docstring, "Uncertainty").

    One measurement per detection (cluster c): its offset is the effective-weight mean of its
    pairs, its stated variance that of its best-weighted pair.  The error model ``V_c = k^2
    var_c + sigma_sys^2`` is fitted by maximum likelihood to the leverage-corrected residuals;
    ``_BOOT_N`` sets of offsets are drawn from it around the fitted shift (each pair keeps its
    offset from its detection's mean, so a detection's candidates move together), and each set
    is refitted with the same objective from (0, 0).  The draws are seeded (``_BOOT_SEED``):
    the same input gives the same sigma.
    """
    n = d_xi.size
    # one pair per detection (no inverse given): the gathers by the identity are left out
    each = slice(None) if inverse is None else inverse
    if inverse is None:
        inverse = np.arange(n)
    # pieces: (ex, ey, rho1) of _objective at p, when the caller has them
    ex, ey, rho1 = pieces if pieces is not None else _objective(p, d_xi, d_eta, w, loss,
                                                                f_scale)[3]
    v = w * rho1
    vc = np.bincount(inverse, weights=v, minlength=m)
    safe = np.where(vc > 0, vc, 1.0)
    cnt = np.bincount(inverse, minlength=m)
    # the detection's mean offset: effective weights, or a plain mean when they all vanish
    mean_x = np.where(vc > 0, np.bincount(inverse, weights=v * d_xi, minlength=m) / safe,
                      np.bincount(inverse, weights=d_xi, minlength=m) / cnt)
    mean_y = np.where(vc > 0, np.bincount(inverse, weights=v * d_eta, minlength=m) / safe,
                      np.bincount(inverse, weights=d_eta, minlength=m) / cnt)
    var_c = np.full(m, np.inf)
    np.minimum.at(var_c, inverse, var1)
    e2 = ((mean_x - p[0]) ** 2 + (mean_y - p[1]) ** 2) / (1.0 - lev)
    a, b = _fit_scale_floor(e2, var_c)
    sd = np.sqrt(a * var_c + b)
    stream = _boot_normals(m)
    rng = np.random.default_rng(_BOOT_SEED) if stream is None else None
    base_x = p[0] + (d_xi - mean_x[each])
    base_y = p[1] + (d_eta - mean_y[each])
    # a block of replicates at a time (_BOOT_BLOCK): the generator's stream is drawn in the
    # same order and each replicate's refit is its own (row-wise arithmetic), so the blocks
    # give the same bits as one batch
    block = max(1, _BOOT_BLOCK // n)
    reps = []
    for i in range(0, _BOOT_N, block):
        k = min(block, _BOOT_N - i)
        # the stream's next k m 2 normals: drawn, or the same numbers kept from the first draw
        z = (rng.standard_normal((k, m, 2)) if stream is None
             else stream[2 * m * i:2 * m * (i + k)].reshape(k, m, 2))
        eps = z * sd[None, :, None]
        reps.append(_refit_batch(base_x[None, :] + eps[:, each, 0],
                                 base_y[None, :] + eps[:, each, 1], w, loss, f_scale,
                                 max_shift))
    reps = np.concatenate(reps)
    reps = reps[np.all(np.isfinite(reps), axis=1)]
    if reps.shape[0] < _BOOT_N // 2:
        return None
    dev = reps - reps.mean(axis=0)
    return dev.T @ dev / (reps.shape[0] - 1)


def _boot_normals(m):
    """The bootstrap's seeded stream of standard normals, the first ``_BOOT_N * m * 2`` of
    them as one flat read-only array (``Generator.standard_normal`` fills its shapes in C
    order from one stream: blocks of it are its consecutive pieces), or None for ``m`` above
    ``_BOOT_CACHED``.  Drawn once per process, at the first call."""
    if m > _BOOT_CACHED:
        return None
    if not _boot_stream:
        z = np.random.default_rng(_BOOT_SEED).standard_normal(_BOOT_N * _BOOT_CACHED * 2)
        z.flags.writeable = False
        _boot_stream.append(z)
    return _boot_stream[0][:_BOOT_N * m * 2]


def _fit_scale_floor(e2, var):
    """ML (A, B) of ``V = A var + B`` (A = k^2 >= _MIN_SCALE^2, B = sigma_sys^2 >= 0) from
    squared 2-D residual norms ``e2`` (two axes each): maximises
    ``l(A, B) = sum -log V - e2 / (2 V)``.

    Fisher scoring with step halving.  On the bound B = 0 the maximum over A is closed-form
    (``A = mean(e2 / (2 var))``); the search climbs from there when dl/dB > 0.  l is not
    concave (with a few very unequal errors it has a mode inside and one with the scale at its
    bound and the floor carrying the scatter), so the search also climbs from an inside start
    (that A halved, B the median stated variance times it) and from the scale's bound (B from
    the mean residual), and the highest of these is returned.
    """
    lo_a = _MIN_SCALE**2
    total = np.add.reduce          # x.sum(): the same sum without its Python layers (issue 11)

    def objective(aa, bb):
        vv = aa * var + bb
        return float(total(-np.log(vv) - e2 / (2.0 * vv)))

    def d_floor(aa):
        """dl/dB on the bound B = 0."""
        vv = aa * var
        return float(total(e2 / (2.0 * vv * vv) - 1.0 / vv))

    # a climb's five sums per step: the rows of one array, summed in one call (issue 11); a
    # row sum of a C-ordered array is the 1-D sum of that row, to the bit
    rows = np.empty((5, var.size))
    g, g_var, h, h_var, h_var2 = rows
    tmp = np.empty(var.size)
    mul, div = np.multiply, np.divide
    # e2 / (2 x) as (e2 / 2) / x: the same real number (halving is exact), so the same double
    # (issue 11: two passes fewer a step and one a trial)
    e2_half = e2 / 2.0

    def climb(a, b):
        """Fisher scoring with step halving from the start (a, b): (l, A, B) at its end.

        One start at a time, its 2x2 algebra on Python floats and only the sums over the
        detections on arrays (issue 11: the three starts stacked in (3, m) arrays cost ~90
        numpy calls per step, most on a handful of numbers).  The same operations in the
        same order as the stacked version: the same ends, bit for bit (test_xfmfit)."""
        f = objective(a, b)
        vv = a * var + b
        for _ in range(60):
            # g = e2 / (2 vv vv) - 1 / vv and h = 1 / (vv vv) into the rows: vv vv once (2 vv vv
            # is its exact double)
            mul(vv, vv, out=h)
            div(e2_half, h, out=g)
            div(1.0, h, out=h)
            div(1.0, vv, out=tmp)
            np.subtract(g, tmp, out=g)
            mul(g, var, out=g_var)
            mul(h, var, out=h_var)
            mul(h_var, var, out=h_var2)
            g_b, g_a, f_bb, f_ab, f_aa = total(rows, axis=1).tolist()
            det = f_aa * f_bb - f_ab * f_ab
            if not det > 0:
                break                                # a singular Fisher matrix: stop there
            s_a = (f_bb * g_a - f_ab * g_b) / det
            s_b = (f_aa * g_b - f_ab * g_a) / det
            if a <= lo_a and s_a < 0:                # on the scale's bound: move the floor only
                s_a, s_b = 0.0, g_b / f_bb
            for _halving in range(20):
                na = max(a + s_a, lo_a)
                nb = max(b + s_b, 0.0)
                nv = na * var + nb
                # l = sum -log V - e2 / (2 V) as minus the sum of log V + e2 / (2 V): the
                # same number (rounding is symmetric in sign), one pass fewer
                div(e2_half, nv, out=tmp)
                terms = np.log(nv)
                terms += tmp
                nf = -float(total(terms))
                if nf >= f - 1e-12 * abs(f):
                    break
                s_a, s_b = s_a / 2.0, s_b / 2.0
            else:
                break                                # no step halving raised l: stop there
            done = abs(na - a) <= 1e-9 * a and abs(nb - b) <= 1e-9 * max(b, 1e-8)
            a, b, f, vv = na, nb, nf, nv
            if done:
                break
        return f, a, b

    def mean(x):
        """``float(np.mean(x))``: its sum and its division by the count, without its Python
        layers (issue 11)."""
        return float(total(x)) / x.size

    aa = max(mean(e2 / (2.0 * var)), lo_a)
    starts = [(aa, 0.0)] if d_floor(aa) > 0.0 else []
    starts += [(max(0.5 * aa, lo_a), 0.5 * aa * _median(var)),
               (lo_a, max(0.5 * mean(e2) - lo_a * mean(var), 1e-12))]
    f, a_end, b_end = np.array([climb(x, y) for x, y in starts]).T
    i = int(np.argmax(f))
    if f[i] > objective(aa, 0.0):
        return float(a_end[i]), float(b_end[i])
    return aa, 0.0                        # the best model has no floor


def _weighted_norm2(ex, ey, w, c2, scaled):
    """``w (ex ex + ey ey)``, divided by ``c2`` when ``scaled``, in one new array (the
    refits' z: the same operations in the same order as written, without the temporaries)."""
    z = np.multiply(ex, ex)
    z += ey * ey
    np.multiply(w, z, out=z)
    if scaled:
        z /= c2
    return z


def _refit_batch(dx, dy, w, loss, f_scale, max_shift):
    """The minimum of F reached from (0, 0) for every row of offsets (dx, dy: (B, n)):
    Newton steps where they lower F, else IRLS steps (which always do for these losses),
    vectorised over the rows.  ``w``: the weights, (n,) shared by the rows or (B, n) one row
    each (a zero weight leaves the pair out of that row's fit: the jackknife).

    The rows still moving are gathered once per iteration that retires some (issue 11: not
    three times an iteration), as C-ordered copies (the input itself when it is C-ordered: it
    is only read).  The row sums are einsum's (a sum of products in one pass, no temporary;
    issue 11: 1.2x the refit's speed): each row's sum is computed alone, whatever its
    neighbours and its memory alignment, so a row's refit does not depend on the other rows,
    to the last bit.  They are not numpy's pairwise sums: the
    minima differ from those by rounding (<= 3e-16" on the bench_speed stacks)."""
    nb = dx.shape[0]
    p = np.zeros((nb, 2))
    c2 = f_scale * f_scale
    # z / 1.0 is z to the last bit: the division is skipped at the default scale (issue 11)
    scaled = c2 != 1.0
    per_row = np.ndim(w) == 2
    rows = np.arange(nb)
    order = np.ascontiguousarray
    dxr, dyr, wr = order(dx), order(dy), (order(w) if per_row else w)
    ein = _c_einsum                 # ein("ij->i", a): a's row sums; ein("ij,ij->i", a, b): a b's
    lo, hi = np.maximum, np.minimum   # np.clip(x, -b, b) is minimum(maximum(x, -b), b), NaN kept
    at_trial = None
    cauchy = loss == "cauchy"

    # the Newton step's and the IRLS mean's divisions may meet a zero: their NaN/inf rows are
    # caught by newton_ok or the step's test (one errstate for the loop: issue 11)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(_BOOT_MAX_ITER):
            if rows.size == 0:
                break
            px, py = p[rows, 0], p[rows, 1]
            if at_trial is None:
                ex = px[:, None] - dxr
                ey = py[:, None] - dyr
                zs = _weighted_norm2(ex, ey, wr, c2, scaled)
                f0 = ein("ij->i", _rho_value(zs, loss))
            else:
                # every row is at its Newton trial point to the last bit: the trial's residuals,
                # z and F are this point's (issue 11: a third of an iteration's arithmetic)
                ex, ey, zs, f0 = at_trial
            if cauchy:
                # rho' = 1 / (1 + z), rho'' = -rho'^2: v = w rho' and k = 2 rho'' w^2 = -2 v^2
                # (issue 11: 4 passes instead of 7; the same numbers within rounding).  In place,
                # one new array each: -2 v v = -2 (v v) to the bit (a power of two scales exactly)
                v = np.add(zs, 1.0)
                np.divide(wr, v, out=v)
                k = np.multiply(v, v)
                k *= -2.0
            else:
                rho1, rho2 = _rho_slopes(zs, loss)
                v = wr * rho1
                k = 2.0 * rho2 * wr * wr
            if scaled:
                k = k / c2
            vsum = ein("ij->i", v)
            gx, gy = ein("ij,ij->i", v, ex), ein("ij,ij->i", v, ey)
            kx = k * ex
            hxx = vsum + ein("ij,ij->i", kx, ex)
            hxy = ein("ij,ij->i", kx, ey)
            hyy = vsum + ein("ij,ij->i", np.multiply(k, ey, out=k), ey)
            det = hxx * hyy - hxy * hxy
            nx = -(hyy * gx - hxy * gy) / det
            ny = -(hxx * gy - hxy * gx) / det
            newton_ok = (hxx > 0) & (det > 0) & np.isfinite(nx) & np.isfinite(ny)
            tx = hi(lo(px + np.where(newton_ok, nx, 0.0), -max_shift), max_shift)
            ty = hi(lo(py + np.where(newton_ok, ny, 0.0), -max_shift), max_shift)
            ex = tx[:, None] - dxr
            ey = ty[:, None] - dyr
            zs = _weighted_norm2(ex, ey, wr, c2, scaled)
            # rho(z) into kx's array (not needed any more)
            f1 = ein("ij->i", _rho_value(zs, loss, out=kx))
            use_newton = newton_ok & (f1 <= f0 * (1.0 + 1e-15) + 1e-300)
            if use_newton.all():
                # no row takes the IRLS step: it is not computed (issue 11)
                sx, sy = tx - px, ty - py
            else:
                irx = ein("ij,ij->i", v, dxr) / vsum - px
                iry = ein("ij,ij->i", v, dyr) / vsum - py
                sx = np.where(use_newton, tx - px, hi(lo(px + irx, -max_shift), max_shift) - px)
                sy = np.where(use_newton, ty - py, hi(lo(py + iry, -max_shift), max_shift) - py)
            new_x, new_y = px + sx, py + sy
            p[rows, 0] = new_x
            p[rows, 1] = new_y
            moving = np.hypot(sx, sy) >= _BOOT_TOL_ARCSEC
            # the next iteration starts at the trial point when every row still moving landed on
            # it exactly: each took its Newton step, and p + (t - p) rounded back to t (it can
            # round away, e.g. p = 1, t = 2**-60 gives 0)
            # (moving <= landed: every moving row landed; != is == negated, NaN included)
            landed = (new_x == tx) & (new_y == ty)
            at_trial = (ex, ey, zs, f1) if (moving <= landed).all() else None
            if not moving.all():
                rows = rows[moving]
                dxr, dyr = dxr[moving], dyr[moving]
                if per_row:
                    wr = wr[moving]
                if at_trial is not None:
                    at_trial = tuple(a[moving] for a in at_trial)
    return p


def fit_translation(src_xi, src_eta, ref_xi, ref_eta, weights, *, loss="cauchy", f_scale=1.0,
                    max_shift=5.0, var_1sigma=None, cluster=None, solver="auto",
                    sigma="calibrated") -> TranslationFit:
    """Weighted least-squares translation with a robust loss per pair (spec §4, §5.3).

    Minimises ``sum_i C² rho(w_i r_i² / C²)`` (module docstring) with
    ``scipy.optimize.least_squares`` on the residual vector ``sqrt(w_i) r_i``, start (0, 0),
    bounds ±``max_shift``, then polishes the same objective.

    Parameters
    ----------
    src_xi, src_eta, ref_xi, ref_eta : array_like
        Source and target tangent-plane positions, arcsec.
    weights : array_like
        Per-pair weights w_i (1/arcsec²).
    loss : {'linear', 'soft_l1', 'huber', 'cauchy', 'arctan'}
        scipy's robust loss.
    f_scale : float
        Soft margin C, in the units of ``sqrt(w) r``.
    max_shift : float
        Bound on each component, arcsec.
    var_1sigma : array_like, optional
        Stated 1-sigma per-axis variance of each pair (arcsec²), for the formal-error floor;
        default ``1/weights``.
    cluster : array_like, optional
        One id per pair: the detection (``region_id``) it belongs to.  The candidates of one
        detection count as one measurement in the uncertainty (cluster-robust sandwich; the
        small-sample rules and the formal error count detections).  Default: every pair is its
        own detection.
    solver : {'auto', 'least_squares'}
        How the minimum is found (module docstring, "The fit").
    sigma : {'calibrated', 'sandwich'}
        How the uncertainty is computed (module docstring, "Uncertainty"): ``calibrated``
        (default, issue 14) -- a seeded parametric bootstrap with the error model fitted to
        the residuals, honest when the stated errors are wrong; ``sandwich`` -- issue 4's
        cluster-robust sandwich with its safeguards.

    Returns
    -------
    TranslationFit
        Pairs with a non-finite position, weight or variance, or a weight <= 0, are dropped and
        counted in ``n_dropped``.  With no pair left the shift is (0, 0) with NaN errors and
        ``success`` False.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    if not (np.isfinite(f_scale) and f_scale > 0):
        raise ValueError(f"f_scale must be > 0, not {f_scale!r}")
    if not (np.isfinite(max_shift) and max_shift > 0):
        raise ValueError(f"max_shift must be > 0, not {max_shift!r}")
    if sigma not in SIGMAS:
        raise ValueError(f"sigma must be one of {SIGMAS}, not {sigma!r}")
    d_xi = np.asarray(ref_xi, dtype=float) - np.asarray(src_xi, dtype=float)
    d_eta = np.asarray(ref_eta, dtype=float) - np.asarray(src_eta, dtype=float)
    w = np.broadcast_to(np.asarray(weights, dtype=float), d_xi.shape)
    with np.errstate(divide="ignore"):
        var1 = 1.0 / w if var_1sigma is None else np.broadcast_to(
            np.asarray(var_1sigma, dtype=float), d_xi.shape)
    with np.errstate(invalid="ignore"):
        good = (np.isfinite(d_xi) & np.isfinite(d_eta) & np.isfinite(w) & (w > 0)
                & np.isfinite(var1) & (var1 > 0))
    n_dropped = int(np.count_nonzero(~good))
    d_xi, d_eta, w, var1 = d_xi[good], d_eta[good], w[good], var1[good]
    if cluster is not None:
        cluster = np.broadcast_to(np.asarray(cluster), good.shape)[good]
    n = len(d_xi)
    dropped = f"; {n_dropped} pair(s) dropped (NaN position or unusable error)" if n_dropped else ""
    if n == 0:
        return TranslationFit(0.0, 0.0, np.nan, np.nan, np.nan, 0, False,
                              "no usable pairs" + dropped, n_dropped=n_dropped)

    p, how, nfev, ls_ok, at_p = _minimise(d_xi, d_eta, w, loss, f_scale, max_shift, solver)
    at_bound = bool(np.any(np.abs(p) >= max_shift * (1.0 - 1e-9)))
    cov, source, n_clusters, implausible, ratio = _covariance(
        p, d_xi, d_eta, w, var1, loss, f_scale, cluster, max_shift=max_shift, sigma=sigma,
        at_p=at_p)
    message = how
    if at_bound:
        message += f"; shift at the bound ±{max_shift:g}\""
    if source == "formal":
        message += "; errors raised to the formal ones from the stated position errors"
    elif source == "jackknife":
        message += ("; errors raised to the delete-one-detection jackknife (fewer than "
                    f"{_SMALL_SAMPLE} detections)")
    return TranslationFit(
        d_xi=float(p[0]), d_eta=float(p[1]),
        d_xi_err=float(np.sqrt(cov[0, 0])), d_eta_err=float(np.sqrt(cov[1, 1])),
        cov_xi_eta=float(cov[0, 1]), cov=cov, n_used=n, n_dropped=n_dropped,
        success=ls_ok, at_bound=at_bound, message=message + dropped,
        error_source=source, nfev=nfev, n_clusters=n_clusters,
        implausible=implausible, scatter_ratio=ratio)


# ---------------------------------------------------------------------------------------------
# Group selection


@dataclass(frozen=True, eq=False)
class GroupChoice:
    """Result of :func:`select_group` (spec §5.5.3 steps 2-4, spec-notes 7).

    Attributes
    ----------
    group : int
        The chosen 1-based separation group; 0 when no group has a pair.
    n_match : ndarray of int
        Per group: detections (distinct ``region_id``) with at least one pair in the group.
    sigma : ndarray
        Per group: sqrt(std(d_xi) std(d_eta)) over the group's pairs (population std, ddof=0),
        arcsec; NaN for an empty group.
    reason : str
        Why this group won.
    """

    group: int
    n_match: np.ndarray
    sigma: np.ndarray
    reason: str


def _population_std(x):
    """``float(np.std(x))`` of a non-empty 1-D float array, by np.std's own operations (the
    sum over n, the deviations, their squares' sum over n, the square root) without its
    Python layers (issue 11: ~8 us a call, 6 calls a group choice)."""
    dev = x - np.add.reduce(x) / x.size
    return math.sqrt(np.add.reduce(dev * dev) / x.size)


def select_group(pairs: PairSet, *, n_groups, min_group_matches=3) -> GroupChoice:
    """Choose the separation group whose pairs enter the fit (spec §5.5.3 steps 2-4).

    Groups with ``n_match >= min_group_matches`` compete on the smallest sigma; if none
    qualifies, the largest ``n_match`` wins, ties going to the smaller sigma.  Remaining ties go
    to the lower group number (smaller separations).  Pairs whose group is outside
    1..``n_groups`` or whose offset is not finite take no part.

    Parameters
    ----------
    pairs : PairSet
    n_groups : int
        Number of separation groups (``NGROUPS``).
    min_group_matches : int
        The "at least three matches" floor (spec-notes 7).

    Returns
    -------
    GroupChoice
    """
    n_groups = int(n_groups)
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, not {n_groups}")
    n_match = np.zeros(n_groups, dtype=int)
    sigma = np.full(n_groups, np.nan)
    finite = np.isfinite(pairs.d_xi) & np.isfinite(pairs.d_eta)
    for i in range(n_groups):
        sel = np.flatnonzero(finite & (pairs.group == i + 1))
        if not sel.size:
            continue
        n_match[i] = n_distinct(pairs.region_id[sel])
        sigma[i] = math.sqrt(_population_std(pairs.d_xi[sel]) * _population_std(pairs.d_eta[sel]))
    sigma_key = np.where(np.isfinite(sigma), sigma, np.inf)
    qualified = n_match >= min_group_matches
    if np.any(qualified):
        candidates = np.flatnonzero(qualified)
        best = candidates[np.argmin(sigma_key[candidates])]
        reason = (f"group {best + 1}: smallest sigma {sigma[best]:.3f}\" among groups with "
                  f">= {min_group_matches} matched detections")
    elif np.any(n_match > 0):
        # lexsort: last key is primary -> largest n_match, then smallest sigma, then lowest group
        order = np.lexsort((np.arange(n_groups), sigma_key, -n_match))
        best = order[0]
        reason = (f"group {best + 1}: no group has >= {min_group_matches} matched detections; "
                  f"largest n_match ({n_match[best]})")
        if np.count_nonzero(n_match == n_match[best]) > 1:
            reason += f", tie broken by smaller sigma ({sigma[best]:.3f}\")"
    else:
        return GroupChoice(0, n_match, sigma, "no pairs in any separation group")
    return GroupChoice(int(best) + 1, n_match, sigma, reason)


# ---------------------------------------------------------------------------------------------
# One leg


@dataclass(frozen=True, eq=False)
class LegFit:
    """One fitted translation leg (direct; or one of the two-step legs).

    Attributes
    ----------
    d_xi, d_eta, d_xi_err, d_eta_err, cov_xi_eta : float
        As :class:`TranslationFit` (arcsec, arcsec²).
    group : int
        Separation group used (0 = all pairs, groups bypassed, or none).
    n_used : int
        Pairs used in the fit.
    resstd0, resstd1 : float
        Per-axis rms of target - source over the pairs used, before and after the shift:
        sqrt(mean_i (dxi_i² + deta_i²) / 2), arcsec (NaN with no pair).
    used : ndarray of bool
        Mask over the input pairs: which ones entered the fit.
    success : bool
    message : str
    choice : GroupChoice or None
        The group selection, when groups were used.
    n_match : int
        Distinct sources (``region_id``) among the pairs used.
    n_dropped : int
        Candidate pairs dropped for NaN positions or unusable errors.
    fit : TranslationFit or None
    """

    d_xi: float
    d_eta: float
    d_xi_err: float
    d_eta_err: float
    cov_xi_eta: float
    group: int
    n_used: int
    resstd0: float
    resstd1: float
    used: np.ndarray
    success: bool
    message: str
    choice: GroupChoice | None = None
    n_match: int = 0
    n_dropped: int = 0
    fit: TranslationFit | None = None

    @property
    def cov(self) -> np.ndarray:
        """The 2x2 covariance, arcsec²."""
        return np.array([[self.d_xi_err**2, self.cov_xi_eta],
                         [self.cov_xi_eta, self.d_eta_err**2]])


def residual_rms(d_xi, d_eta, *, shift=(0.0, 0.0)) -> float:
    """Per-axis rms of the offsets after subtracting ``shift``: sqrt(mean((dx²+dy²)/2)), arcsec.

    This is the "standard deviation of target - (transformed) source" of spec §3 and §5.5.7,
    taken about zero (not about the mean) so that "before" measures the misalignment itself.
    NaN for no pairs.
    """
    dx = np.asarray(d_xi, dtype=float) - shift[0]
    dy = np.asarray(d_eta, dtype=float) - shift[1]
    if dx.size == 0:
        return float("nan")
    # np.mean's own sum over every element and division by the count, without its Python
    # layers (issue 11); math.sqrt and np.sqrt both round correctly
    return math.sqrt(np.add.reduce(0.5 * (dx * dx + dy * dy), axis=None) / dx.size)


def fit_leg_spec(pairs: PairSet, *, weighting, n_groups, loss="cauchy", f_scale=1.0,
                 max_shift=5.0, min_group_matches=3, use_groups=True, solver="auto",
                 sigma="calibrated") -> LegFit:
    """Fit one leg the specification's way.

    Parameters
    ----------
    pairs : PairSet
    weighting : {'det', 'combined', 'ref'}
        ``det``: w = 1/(r0 r1) from the 95 % radii (spec §5.5.3 step 8, exact);
        ``combined``: w = 1/(r0 r1/2.4477² + sigra sigdec) (§5.5.4 steps 8-11, spec-notes 5);
        ``ref``: w = 1/(sigra sigdec) (§5.5.4 step 19).
    n_groups : int
        Number of separation groups.
    loss, f_scale, max_shift
        As :func:`fit_translation`.
    min_group_matches : int
        Group-selection floor.
    use_groups : bool
        Select one separation group (spec); False uses every pair (the ALLWISE→Gaia leg, and the
        operator's ``include`` list).
    solver, sigma
        As :func:`fit_translation`.

    Returns
    -------
    LegFit
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {weighting!r}")
    n = len(pairs)
    w, var1 = _weights(pairs, weighting)
    usable = (np.isfinite(w) & np.isfinite(pairs.d_xi) & np.isfinite(pairs.d_eta)
              & np.isfinite(pairs.src_xi) & np.isfinite(pairs.src_eta))
    choice = None
    if use_groups:
        choice = select_group(pairs.subset(usable), n_groups=n_groups,
                              min_group_matches=min_group_matches)
        candidate = pairs.group == choice.group if choice.group > 0 else np.zeros(n, bool)
        group = choice.group
    else:
        candidate = np.ones(n, dtype=bool)
        group = 0
    used = candidate & usable
    n_dropped = int(np.count_nonzero(candidate & ~usable))
    fit = fit_translation(pairs.src_xi[used], pairs.src_eta[used],
                          pairs.src_xi[used] + pairs.d_xi[used],
                          pairs.src_eta[used] + pairs.d_eta[used], w[used],
                          loss=loss, f_scale=f_scale, max_shift=max_shift,
                          var_1sigma=var1[used], cluster=pairs.region_id[used], solver=solver,
                          sigma=sigma)
    dx, dy = pairs.d_xi[used], pairs.d_eta[used]
    message = fit.message
    if choice is not None:
        message = f"{choice.reason}; {message}"
    cov = fit.cov
    if choice is not None and choice.group > 0 and sigma == "calibrated" and fit.n_used:
        jack, n_flips = _group_flip_jackknife(
            pairs.subset(usable), w[usable], choice.group, (fit.d_xi, fit.d_eta),
            n_groups=n_groups, min_group_matches=min_group_matches, loss=loss,
            f_scale=f_scale, max_shift=max_shift)
        cov, factor = _raise_to(cov, jack)
        if factor > 1.0:
            message += (f"; errors x{np.sqrt(factor):.2f}: leaving out one detection changes "
                        f"the separation group ({n_flips} of them)")
    if n_dropped:
        message += f"; {n_dropped} pair(s) without usable position/errors dropped"
    return LegFit(
        d_xi=fit.d_xi, d_eta=fit.d_eta, d_xi_err=float(np.sqrt(cov[0, 0])),
        d_eta_err=float(np.sqrt(cov[1, 1])), cov_xi_eta=float(cov[0, 1]), group=group,
        n_used=fit.n_used,
        n_match=len(np.unique(pairs.region_id[used])),
        resstd0=residual_rms(dx, dy), resstd1=residual_rms(dx, dy, shift=(fit.d_xi, fit.d_eta)),
        used=used, success=fit.success, message=message, choice=choice, n_dropped=n_dropped,
        fit=fit)


def _group_choice_without_each(pairs: PairSet, *, n_groups, min_group_matches):
    """The screen of :func:`_group_flip_jackknife`: for each detection, the group
    :func:`select_group` would choose without that detection's pairs, from per-detection sums.

    Returns (``dinv``, the detection index of every pair; ``choice``, one 1-based group per
    detection, in ``np.unique(region_id)`` order; ``certain``, per detection: False where a
    rounding error could change the choice).  The sums-based variances carry rounding errors
    that :func:`select_group`'s two-pass ``np.std`` does not (a one-pair group's variance is
    exactly 0 there and ~1e-17 here), so each sigma is bounded by an interval, and a
    detection whose chosen group's interval meets another competing group's is not certain;
    the caller confirms those with :func:`select_group` itself (``test_xfmfit`` compares the
    two on every deletion, ties included).
    """
    det = np.asarray(pairs.region_id)
    ids, dinv = np.unique(det, return_inverse=True)
    m_det = ids.size
    grp = np.asarray(pairs.group)
    in_range = (grp >= 1) & (grp <= n_groups)
    g0 = np.where(in_range, grp - 1, 0)
    dx, dy = np.asarray(pairs.d_xi, dtype=float), np.asarray(pairs.d_eta, dtype=float)
    # per (detection, group) sums of 1, x, y, x^2, y^2 over the pairs
    flat = dinv * n_groups + g0
    size = m_det * n_groups
    inr = in_range.astype(float)

    def sums(v):
        return np.bincount(flat, weights=v * inr, minlength=size).reshape(m_det, n_groups)

    cnt, sx, sy = sums(np.ones_like(dx)), sums(dx), sums(dy)
    sxx, syy = sums(dx * dx), sums(dy * dy)
    has = cnt > 0
    n_left = cnt.sum(axis=0)[None, :] - cnt
    match_left = has.sum(axis=0)[None, :] - has
    # rounding bound of a variance from sums: a few ulps of the mean square, per term summed
    ulp = 8.0 * (dx.size + 4) * np.finfo(float).eps
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (sx.sum(axis=0) - sx) / n_left
        my = (sy.sum(axis=0) - sy) / n_left
        vx = (sxx.sum(axis=0) - sxx) / n_left - mx * mx
        vy = (syy.sum(axis=0) - syy) / n_left - my * my
        bx = ulp * sxx.sum(axis=0) / n_left
        by = ulp * syy.sum(axis=0) / n_left
        sig = np.sqrt(np.sqrt(np.maximum(vx, 0.0)) * np.sqrt(np.maximum(vy, 0.0)))
        sig_lo = np.sqrt(np.sqrt(np.maximum(vx - bx, 0.0) * np.maximum(vy - by, 0.0)))
        sig_hi = np.sqrt(np.sqrt((np.maximum(vx, 0.0) + bx) * (np.maximum(vy, 0.0) + by)))
    # one pair left: np.std is exactly 0 there, and so is the sigma here (no rounding)
    exact = n_left == 1
    sig, sig_lo, sig_hi = (np.where(exact, 0.0, v) for v in (sig, sig_lo, sig_hi))
    empty = ~(n_left > 0)
    sig = np.where(empty, np.inf, sig)
    sig_lo = np.where(empty, np.inf, sig_lo)
    sig_hi = np.where(empty, np.inf, sig_hi)
    qualified = match_left >= min_group_matches
    any_q = qualified.any(axis=1)
    best_q = np.argmin(np.where(qualified, sig, np.inf), axis=1)
    # no qualified group: the largest n_match, then the smaller sigma, then the lower group
    best_f = np.lexsort((np.broadcast_to(np.arange(n_groups), sig.shape).T, sig.T,
                         -match_left.T), axis=0)[0]
    best = np.where(any_q, best_q, best_f)
    # the groups that compete with the chosen one on sigma alone
    competing = np.where(any_q[:, None], qualified,
                         match_left == match_left.max(axis=1, keepdims=True))
    rows = np.arange(m_det)
    competing[rows, best] = False
    chosen_hi = sig_hi[rows, best]
    # two exact sigmas tie the same way here as in select_group (the lower group wins)
    close = competing & (sig_lo <= chosen_hi[:, None]) & ~(exact & exact[rows, best][:, None])
    certain = ~close.any(axis=1) & (match_left.max(axis=1) > 0)
    return dinv, best + 1, certain


def _group_flip_jackknife(pairs: PairSet, w, group, shift, *, n_groups, min_group_matches,
                          loss, f_scale, max_shift):
    """The delete-one-detection jackknife of the group choice (issue 14).

    For every detection j of ``pairs`` (the usable pairs the group selection saw), the
    separation group :func:`select_group` would choose without j's pairs; where that differs
    from ``group`` the fit is redone on the new group's pairs without j (from (0, 0), the same
    objective), elsewhere the shift is ``shift`` as it is (the parametric bootstrap already
    covers the scatter within the group).  Returns (the jackknife covariance of those M
    shifts, :func:`_jackknife_cov`, or None when no deletion changes the group; the number of
    deletions that do).

    The group statistics without j come from per-detection sums (one pass,
    :func:`_group_choice_without_each`); a deletion found to change the group, or too close to
    a tie to tell, is confirmed with :func:`select_group` itself, so the rule is exactly the
    specification's.
    """
    dinv, choice, certain = _group_choice_without_each(pairs, n_groups=n_groups,
                                                       min_group_matches=min_group_matches)
    m_det = choice.size
    if m_det < 2:
        return None, 0
    grp = np.asarray(pairs.group)
    dx, dy = np.asarray(pairs.d_xi, dtype=float), np.asarray(pairs.d_eta, dtype=float)
    candidates = np.flatnonzero((choice != group) | ~certain)
    thetas = np.tile(np.asarray(shift, dtype=float), (m_det, 1))
    rows, new_groups = [], []
    for j in candidates:
        keep = dinv != j
        new = select_group(pairs.subset(keep), n_groups=n_groups,
                           min_group_matches=min_group_matches).group
        if new not in (0, group):
            rows.append(j)
            new_groups.append(new)
    if not rows:
        return None, 0
    rows = np.asarray(rows)
    weights = np.where((dinv[None, :] != rows[:, None])
                       & (grp[None, :] == np.asarray(new_groups)[:, None]), w[None, :], 0.0)
    shape = weights.shape
    thetas[rows] = _refit_batch(np.broadcast_to(dx, shape), np.broadcast_to(dy, shape),
                                weights, loss, f_scale, max_shift)
    return _jackknife_cov(thetas), int(rows.size)


def combine_legs(det_to_wise: LegFit, wise_to_gaia: LegFit) -> tuple[float, float, np.ndarray]:
    """Total of the two-step path: T = T2 T1 is the sum of the legs (spec Eq. 7, spec-notes 6).

    The legs use disjoint measurements (detection-ALLWISE and ALLWISE-Gaia offsets), so their
    covariances add.  A leg without pairs measured nothing: its covariance is unknown (NaN),
    never 0, so the total's is NaN too.

    Returns
    -------
    d_xi, d_eta : float
        arcsec.  Without detection->ALLWISE pairs nothing ties the detections to any catalogue:
        the total is the identity (0, 0), whatever the ALLWISE->Gaia leg found.  Without
        ALLWISE-Gaia pairs that leg counts as 0 and the total is the detection leg's shift.
    cov : ndarray
        2x2, arcsec²; all NaN when either leg has no pairs.
    """
    if det_to_wise.n_used == 0:
        return 0.0, 0.0, np.full((2, 2), np.nan)
    if wise_to_gaia.n_used == 0:
        return det_to_wise.d_xi, det_to_wise.d_eta, np.full((2, 2), np.nan)
    return (det_to_wise.d_xi + wise_to_gaia.d_xi, det_to_wise.d_eta + wise_to_gaia.d_eta,
            det_to_wise.cov + wise_to_gaia.cov)


@dataclass(frozen=True, eq=False)
class StackFit:
    """The applied translation of a stack and its components.

    Attributes
    ----------
    method : str
        ``direct``, ``twostep`` or ``none``.
    d_xi, d_eta : float
        Total shift, arcsec.
    cov : ndarray
        2x2 covariance of the total, arcsec².
    resstd0, resstd1 : float
        Per-axis rms of (Gaia-frame target - detection) over the detection leg's pairs, before
        and after the total shift, arcsec.  On the two-step path the ALLWISE target is carried
        into the Gaia frame by the ALLWISE→Gaia leg, so after = the detection leg's resstd1.
    det_leg : LegFit or None
        The leg that matches detections (direct: detection→Gaia; two-step: detection→ALLWISE).
    ref_leg : LegFit or None
        Two-step only: the ALLWISE→Gaia leg.
    """

    method: str
    d_xi: float
    d_eta: float
    cov: np.ndarray
    resstd0: float
    resstd1: float
    det_leg: LegFit | None
    ref_leg: LegFit | None = None
    notes: tuple = field(default_factory=tuple)

    @property
    def d_xi_err(self) -> float:
        return float(np.sqrt(self.cov[0, 0]))

    @property
    def d_eta_err(self) -> float:
        return float(np.sqrt(self.cov[1, 1]))

    @property
    def cov_xi_eta(self) -> float:
        return float(self.cov[0, 1])

    @property
    def n_used(self) -> int:
        return 0 if self.det_leg is None else self.det_leg.n_used

    @property
    def group(self) -> int:
        return 0 if self.det_leg is None else self.det_leg.group


def fit_stack_spec(method, det_pairs: PairSet, *, wise_gaia: PairSet | None = None, n_groups,
                   loss="cauchy", f_scale=1.0, max_shift=5.0, min_group_matches=3,
                   use_groups=True) -> StackFit:
    """The applied translation of one stack, spec §5.5.3 (direct) or §5.5.4 (two-step).

    Parameters
    ----------
    method : {'direct', 'twostep', 'none'}
    det_pairs : PairSet
        Detection pairs: ``GAIA_PAIRS`` (direct) or ``WISE_PAIRS`` (two-step), already reduced
        by the operator's ``include``/``exclude`` lists.
    wise_gaia : PairSet, optional
        The one-to-one ALLWISE-Gaia pairs (two-step only).
    use_groups : bool
        False when the operator's ``include`` list bypasses group selection.
    Other parameters as :func:`fit_leg_spec`.

    Returns
    -------
    StackFit
        ``none`` (or no pairs) gives the identity with NaN errors.
    """
    common = {"n_groups": n_groups, "loss": loss, "f_scale": f_scale, "max_shift": max_shift,
                  "min_group_matches": min_group_matches}
    if method == "none":
        nan = np.full((2, 2), np.nan)
        return StackFit("none", 0.0, 0.0, nan, np.nan, np.nan, None, None,
                        ("no matches: identity transform",))
    if method == "direct":
        leg = fit_leg_spec(det_pairs, weighting="det", use_groups=use_groups, **common)
        cov = leg.cov if leg.n_used else np.full((2, 2), np.nan)
        return StackFit("direct", leg.d_xi, leg.d_eta, cov, leg.resstd0, leg.resstd1, leg)
    if method != "twostep":
        raise ValueError(f"method must be direct, twostep or none, not {method!r}")
    leg1 = fit_leg_spec(det_pairs, weighting="combined", use_groups=use_groups, **common)
    if wise_gaia is None:
        wise_gaia = PairSet.empty()
    leg2 = fit_leg_spec(wise_gaia, weighting="ref", use_groups=False, **common)
    d_xi, d_eta, cov = combine_legs(leg1, leg2)
    dx, dy = det_pairs.d_xi[leg1.used], det_pairs.d_eta[leg1.used]
    # Target carried into the Gaia frame: ALLWISE + leg2; residual = d + leg2 - total.
    resstd0 = residual_rms(dx + leg2.d_xi, dy + leg2.d_eta)
    resstd1 = residual_rms(dx + leg2.d_xi, dy + leg2.d_eta, shift=(d_xi, d_eta))
    notes = ()
    if leg1.n_used == 0:
        notes = ("no usable detection-ALLWISE pairs: identity transform (the ALLWISE->Gaia "
                 "leg alone says nothing about the detections)",)
    elif leg2.n_used == 0:
        notes = ("no usable ALLWISE-Gaia pairs: the ALLWISE->Gaia leg is set to 0 and the "
                 "total's errors are unknown",)
    return StackFit("twostep", d_xi, d_eta, cov, resstd0, resstd1, leg1, leg2, notes)


# ---------------------------------------------------------------------------------------------
# QA


@dataclass(frozen=True)
class QAThresholds:
    """The QA thresholds (spec §5.5.3 step 11, §5.5.4 step 14, §5.7; the ``qa_*`` parameters)."""

    density: float = 100.0        # sources per arcmin²
    dense_nmatch: int = 10
    max_shift: float = 1.0        # arcsec
    few_matches: int = 3
    theta: float = 5.0            # arcmin
    counts: float = 15.0
    few_shift: float = 0.5        # arcsec


@dataclass(frozen=True)
class QAResult:
    """QA flags of a stack.

    Attributes
    ----------
    flags : int
        Bitmask (:data:`QA_BITS`).
    names : tuple of str
        Names of the raised flags, in bit order.
    reason : str
        ``NAME: why; NAME: why`` ('' when clean).
    """

    flags: int
    names: tuple
    reason: str


def decide_qa(*, method, n_match, total_shift_arcsec, density, det_theta_arcmin,
              det_src_cnts, thresholds=None, disagree_reason=None, extra_nomatch=None
              ) -> QAResult:
    """Apply the QA rules (spec §5.5.3 step 11, §5.5.4 step 14, §5.5.5, §5.7; spec-notes 14-16).

    Parameters
    ----------
    method : str
        ``none`` raises NOMATCH.
    n_match : int
        Matched detections used by the fit (the chosen group's detections with a pair).
        0 raises NOMATCH (and then FEWMATCH, whose sub-conditions need a fit, is not raised).
    total_shift_arcsec : float
        Magnitude of the applied shift.
    density : float or None
        Density of the reference catalog of the detection leg (DENSGAIA direct, DENSWISE
        two-step), per arcmin²; None = unknown (DENSE not evaluated).
    det_theta_arcmin, det_src_cnts : array_like
        Off-axis angle and counts of *all* the stack's filtered detections (spec-notes 15).
    thresholds : QAThresholds, optional
    disagree_reason : str, optional
        Set when the two estimators disagree: raises DISAGREE with this text.
    extra_nomatch : str, optional
        Raises NOMATCH with this text (e.g. a two-step stack without ALLWISE-Gaia pairs).

    Returns
    -------
    QAResult
    """
    t = thresholds or QAThresholds()
    raised: list[tuple[str, str]] = []
    nomatch_why = []
    shift = float(total_shift_arcsec)
    if method == "none" or n_match == 0:
        # "identity" only when it is what is written (a caller's inconsistency must not be
        # hidden behind it)
        nomatch_why.append("no matched detections; identity transform" if shift == 0
                           else "no matched detections")
    if extra_nomatch:
        nomatch_why.append(extra_nomatch)
    if nomatch_why:
        raised.append(("NOMATCH", "; ".join(nomatch_why)))
    if (method != "none" and density is not None and np.isfinite(density)
            and n_match < t.dense_nmatch and density > t.density):
        raised.append(("DENSE", (f"{n_match} matches < {t.dense_nmatch} with reference density "
                                f"{density:.1f}/arcmin^2 > {t.density:g}")))
    if shift > t.max_shift:
        raised.append(("BIGSHIFT", f"total shift {shift:.2f}\" > {t.max_shift:g}\""))
    if 0 < n_match < t.few_matches:
        theta = np.asarray(det_theta_arcmin, dtype=float)
        cnts = np.asarray(det_src_cnts, dtype=float)
        why = []
        if not np.any(theta < t.theta):
            why.append(f"no detection within {t.theta:g}'")
        if not np.any(cnts > t.counts):
            why.append(f"no detection above {t.counts:g} counts")
        if shift > t.few_shift:
            why.append(f"total shift {shift:.2f}\" > {t.few_shift:g}\"")
        if why:
            raised.append(("FEWMATCH", f"{n_match} matches < {t.few_matches} and "
                                       + " and ".join(why)))
    if disagree_reason:
        raised.append(("DISAGREE", disagree_reason))
    raised.sort(key=lambda item: QA_BITS[item[0]])
    flags = 0
    for name, _ in raised:
        flags |= QA_BITS[name]
    return QAResult(flags, tuple(name for name, _ in raised),
                    "; ".join(f"{name}: {why}" for name, why in raised))
