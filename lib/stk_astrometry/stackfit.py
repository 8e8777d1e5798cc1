"""The estimators of one stack, wired together: spec fit, mixture, their disagreement.

What stk_xfm computes between reading the pairs and writing the transform, as pure
functions on :class:`~stk_astrometry.xfmfit.PairSet` arrays: the operator's re-selection
(include/exclude, spec §5.7.1), the specification's estimator (:mod:`stk_astrometry.xfmfit`)
and the mixture (:mod:`stk_astrometry.mixture`) as :class:`Estimate` objects whose
components are STKXFM rows, the DISAGREE distance, and the corrected detections (§5.5.6).
No file I/O and no parameters here; it logs what a user should see.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from stk_astrometry import xfmfit
from stk_astrometry.formats.transform import Component

logger = logging.getLogger(__name__)

__all__ = ["DISAGREE_SIGMA", "Estimate", "apply_id_lists", "spec_estimate", "run_mixture",
           "mixture_or_none", "disagreement", "corrected_detections", "log_spec"]

#: Mahalanobis distance above which the two estimators disagree (QA bit DISAGREE).
DISAGREE_SIGMA = 3.0


def apply_id_lists(pairs: xfmfit.PairSet, det_ids, *, include=None, exclude=None, leg=""):
    """Apply the operator's re-selection (spec §5.7.1) to the detection leg's pairs.  Pure.

    Returns
    -------
    mask : ndarray of bool
        Pairs kept.
    use_groups : bool
        False when ``include`` is given (its pairs are used exactly, bypassing groups).
    notes : list of str
        Warnings to show: ids not among the stack's detections or without pairs in this leg.
    """
    mask = np.ones(len(pairs), dtype=bool)
    notes = []
    det_ids = np.asarray(det_ids, dtype=np.int64)
    for name, ids in (("include", include), ("exclude", exclude)):
        if ids is None:
            continue
        unknown = np.setdiff1d(ids, det_ids)
        if unknown.size:
            notes.append(f"{name}: {unknown.size} id(s) not among the stack's detections: "
                         + _id_text(unknown))
        no_pairs = np.setdiff1d(np.intersect1d(ids, det_ids), pairs.region_id)
        if no_pairs.size:
            notes.append(f"{name}: {no_pairs.size} detection(s) without {leg} pairs: "
                         + _id_text(no_pairs))
    use_groups = include is None
    if include is not None:
        mask &= np.isin(pairs.region_id, include)
    if exclude is not None:
        mask &= ~np.isin(pairs.region_id, exclude)
    return mask, use_groups, notes


def _id_text(ids, limit=20):
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


@dataclass(frozen=True, eq=False)
class Estimate:
    """The result of one estimator for the stack.

    ``components[0]`` is the TOTAL; ``det_used``/``ref_used`` are masks over the (selected)
    detection-leg and ALLWISE-Gaia pairs, ``det_p``/``ref_p`` mixture memberships.
    """

    estimator: str
    method: str
    components: tuple
    n_match: int
    ok: bool
    message: str
    det_used: np.ndarray | None = None
    ref_used: np.ndarray | None = None
    det_p: np.ndarray | None = None
    ref_p: np.ndarray | None = None
    extra_nomatch: str | None = None
    n_eff: float | None = None
    error_model: tuple | None = None     # mixture: (SYSERR arcsec, ERRSCALE) of the det leg
    # spec: the covariances DISAGREE compares (total, detection leg): within the separation
    # group, without the jackknife of the group choice (None: the components' own)
    compare_cov: tuple | None = None

    @property
    def total(self) -> Component:
        return self.components[0]


def spec_estimate(fit: xfmfit.StackFit) -> Estimate:
    """Wrap the spec estimator's StackFit as an Estimate.  Pure."""
    if fit.method == "none":
        total = Component("TOTAL", 0.0, 0.0, fit.cov, 0, 0, np.nan, np.nan)
        return Estimate("spec", "none", (total,), 0, False, "; ".join(fit.notes))
    leg = fit.det_leg
    total = Component("TOTAL", fit.d_xi, fit.d_eta, fit.cov, leg.n_used, leg.group,
                      fit.resstd0, fit.resstd1)
    comps = [total]
    ref_used = None
    if fit.method == "twostep":
        r = fit.ref_leg
        comps.append(Component("DET_TO_WISE", leg.d_xi, leg.d_eta, leg.cov, leg.n_used,
                               leg.group, leg.resstd0, leg.resstd1))
        comps.append(Component("WISE_TO_GAIA", r.d_xi, r.d_eta, r.cov, r.n_used, 0,
                               r.resstd0, r.resstd1))
        ref_used = r.used
    message = leg.message
    if fit.ref_leg is not None:
        message += f" | ALLWISE->Gaia leg: {fit.ref_leg.message}"
    compare = None
    if leg.fit is not None and leg.n_used:
        # DISAGREE is there to catch a wrong separation group: the spec's sigma raised for the
        # fragility of its group choice (xfmfit.fit_leg_spec) would hide exactly that, so the
        # comparison uses the covariance within the group
        compare = (np.asarray(fit.cov) - leg.cov + leg.fit.cov, leg.fit.cov)
    return Estimate("spec", fit.method, tuple(comps), leg.n_match, leg.n_used > 0, message,
                    det_used=leg.used, ref_used=ref_used,
                    extra_nomatch=fit.notes[0] if fit.notes and leg.n_used else None,
                    compare_cov=compare)


def run_mixture(pin, det_pairs: xfmfit.PairSet, wise_gaia: xfmfit.PairSet, *,
                 sys_floor, max_shift, calibrate=True) -> Estimate:
    """All of the wiring of the mixture estimator (issue 7).

    Direct path: one mixture fit of the detection-Gaia pairs at DENSGAIA.  Two-step path: the
    detection→ALLWISE leg at DENSWISE and the ALLWISE→Gaia leg on the one-to-one pairs at
    DENSGAIA; the total is their sum, their covariances add.  Pair covariances are the full
    ellipses (:func:`stk_astrometry.mixture.pair_covariance`).  ``calibrate`` (``syserr=fit``,
    the default): each leg fits a scale and a systematic floor (at least ``sys_floor``) on the
    stated errors (issue 14); otherwise ``sys_floor`` is added in quadrature as given.
    """
    from stk_astrometry import mixture

    radius = pin.match_radius if pin.match_radius and pin.match_radius > 0 else 3.0

    def leg_fit(pairs, density, *, one_to_one):
        if one_to_one:
            src = np.arange(len(pairs))
            zeros = np.zeros(len(pairs))
            cov = mixture.pair_covariance(zeros, zeros, zeros, pairs.ref_sigra,
                                          pairs.ref_sigdec)
        else:
            src = pairs.region_id
            cov = mixture.pair_covariance(pairs.err_r0, pairs.err_r1, pairs.err_ang,
                                          pairs.ref_sigra, pairs.ref_sigdec)
            n_circular = int(np.count_nonzero(mixture.angle_missing(pairs.err_r0,
                                                                    pairs.err_ang)))
            if n_circular:
                logger.info("mixture: %d pair(s) without an error-ellipse angle (err_ang NaN) "
                            "use the circular error of the major axis, (r0/2.4477)^2 I",
                            n_circular)
        return mixture.fit_mixture(src, pairs.d_xi, pairs.d_eta, cov,
                                   density_per_arcmin2=density or 0.0,
                                   match_radius_arcsec=radius, systematic_arcsec=sys_floor,
                                   max_shift_arcsec=max_shift, calibrate=calibrate)

    def component(name, fit, pairs):
        if fit.failure is not None:
            return Component(name, 0.0, 0.0, np.full((2, 2), np.nan), 0, 0, np.nan, np.nan)
        likely = fit.membership > 0.5
        dx, dy = pairs.d_xi[likely], pairs.d_eta[likely]
        return Component(name, fit.d_xi, fit.d_eta, np.asarray(fit.cov), fit.n_window, 0,
                         xfmfit.residual_rms(dx, dy),
                         xfmfit.residual_rms(dx, dy, shift=(fit.d_xi, fit.d_eta)))

    if pin.method == "none":
        total = Component("TOTAL", 0.0, 0.0, np.full((2, 2), np.nan), 0, 0, np.nan, np.nan)
        return Estimate("mixture", "none", (total,), 0, False, "no pairs")
    density = pin.dens_gaia if pin.method == "direct" else pin.dens_wise
    fit1 = leg_fit(det_pairs, density, one_to_one=False)
    # A fit that found no true match (n_eff < 1, q at its floor) or did not converge is not a
    # measurement: the estimate fails and the spec estimate is applied (review defect 2).
    ok1 = fit1.failure is None
    n_match = round(fit1.n_eff) if ok1 else 0
    message1 = fit1.message if ok1 else f"{fit1.failure}; {fit1.message}"
    model = (fit1.sys_floor, fit1.err_scale) if ok1 else None
    _check_error_model(pin, fit1, "detection leg")
    if ok1:
        _warn_rejected_bright(pin, det_pairs, fit1)
    if pin.method == "direct":
        c = component("TOTAL", fit1, det_pairs)
        return Estimate("mixture", "direct", (c,), n_match, ok1, message1,
                        det_p=fit1.membership, n_eff=fit1.n_eff, error_model=model)
    fit2 = leg_fit(wise_gaia, pin.dens_gaia, one_to_one=True)
    _check_error_model(pin, fit2, "ALLWISE->Gaia leg")
    c1 = component("DET_TO_WISE", fit1, det_pairs)
    c2 = component("WISE_TO_GAIA", fit2, wise_gaia)
    ok2 = fit2.failure is None
    message2 = fit2.message if ok2 else f"{fit2.failure}; {fit2.message}"
    extra = None
    if not ok1:
        # no detection leg: nothing ties the detections to any catalogue -> identity
        total = Component("TOTAL", 0.0, 0.0, np.full((2, 2), np.nan), 0, 0, np.nan, np.nan)
    else:
        # an ALLWISE->Gaia leg that failed is set to 0 with an unknown (NaN) covariance
        cov = c1.cov + c2.cov if ok2 else np.full((2, 2), np.nan)
        likely = fit1.membership > 0.5
        dx, dy = det_pairs.d_xi[likely] + c2.d_xi, det_pairs.d_eta[likely] + c2.d_eta
        t_xi, t_eta = c1.d_xi + c2.d_xi, c1.d_eta + c2.d_eta
        total = Component("TOTAL", t_xi, t_eta, cov, c1.n_used, 0, xfmfit.residual_rms(dx, dy),
                          xfmfit.residual_rms(dx, dy, shift=(t_xi, t_eta)))
        if not ok2:
            extra = ("no usable ALLWISE-Gaia fit: the ALLWISE->Gaia leg is set to 0 and the "
                     "total's errors are unknown")
    # With ALLWISE-Gaia pairs that the mixture could not fit, its total would lack a leg the
    # spec estimate has: the estimate fails rather than apply a leg of 0.
    ok = ok1 and (ok2 or len(wise_gaia) == 0)
    return Estimate("mixture", "twostep", (total, c1, c2), n_match, ok,
                    f"{message1} | ALLWISE->Gaia leg: {message2}",
                    det_p=fit1.membership, ref_p=fit2.membership, extra_nomatch=extra,
                    n_eff=fit1.n_eff, error_model=model)


#: Fitted error models outside these ranges are reported as implausible (issue 14).
PLAUSIBLE_ERR_SCALE = (1.0 / 3.0, 3.0)
PLAUSIBLE_SYSERR = 0.5      # arcsec


def _check_error_model(pin, fit, leg):
    """Log the mixture's fitted error model; warn, naming the stack, when it is implausible."""
    if fit.failure is not None or not fit.calibrated:
        return
    stack = pin.stackid or "(unnamed stack)"
    logger.info("mixture %s: errors calibrated: scale %.2f on the stated errors, systematic "
                "floor %.3f\"", leg, fit.err_scale, fit.sys_floor)
    why = []
    lo, hi = PLAUSIBLE_ERR_SCALE
    if fit.err_scale < lo:
        why.append(f"the stated errors look {1 / fit.err_scale:.1f}x larger than the scatter "
                   f"(scale {fit.err_scale:.2f})")
    elif fit.err_scale > hi:
        why.append(f"the stated errors look {fit.err_scale:.1f}x smaller than the scatter")
    if fit.sys_floor > PLAUSIBLE_SYSERR:
        why.append(f"a systematic floor of {fit.sys_floor:.2f}\" is needed")
    if why:
        logger.warning("stack %s, mixture %s: %s; check the detections' error columns and the "
                       "pairs (a wrong error convention, or many wrong counterparts)", stack, leg,
                       " and ".join(why))


#: A bright detection (among the quarter with the smallest stated errors) whose nearest
#: candidate lies within this distance of the mixture's shift (arcsec) but has membership
#: < 0.5 is reported as a rejected bright counterpart (issue 14).
BRIGHT_NEAR_ARCSEC = 1.0


def rejected_bright(pairs: xfmfit.PairSet, membership, shift, cov_sigma=None):
    """Bright detections whose likely counterpart the mixture rejected.  Pure.

    Bright: the quarter of the detections (at least one) with the smallest stated error
    (``sqrt(r0 r1)``).  Rejected: every candidate has membership < 0.5 although the nearest
    one lies within :data:`BRIGHT_NEAR_ARCSEC` of the fitted shift.  Returns a list of
    (region_id, offset from the shift in arcsec, stated 1-sigma in arcsec), nearest first.

    The pairs' per-detection minima and maxima are ``reduceat``s over runs of equal region_id
    where the pairs come grouped (the matcher's order), else ``ufunc.at`` over np.unique's
    groups: the same numbers (issue 11, ~0.2 ms per stack before).
    """
    rid = np.asarray(pairs.region_id)
    if rid.size == 0:
        return []
    size = np.sqrt(np.asarray(pairs.err_r0, float) * np.asarray(pairs.err_r1, float))
    size = np.where(np.isfinite(size), size, np.inf)
    dist = np.hypot(pairs.d_xi - shift[0], pairs.d_eta - shift[1])
    dist = np.where(np.isfinite(dist), dist, np.inf)
    membership = np.asarray(membership, float)
    if (rid[1:] >= rid[:-1]).all():
        # sorted: each detection's pairs are one run
        starts = np.flatnonzero(np.concatenate(([True], rid[1:] != rid[:-1])))
        ids = rid[starts]
        det_size = np.minimum.reduceat(size, starts)
        # (the largest membership, at least 0: the unsorted form's start)
        best_p = np.maximum(np.maximum.reduceat(membership, starts), 0.0)
        nearest = np.minimum.reduceat(dist, starts)
    else:
        ids, inverse = np.unique(rid, return_inverse=True)
        det_size = np.full(ids.size, np.inf)
        np.minimum.at(det_size, inverse, size)
        best_p = np.zeros(ids.size)
        np.maximum.at(best_p, inverse, membership)
        nearest = np.full(ids.size, np.inf)
        np.minimum.at(nearest, inverse, dist)
    finite = np.isfinite(det_size)
    if not finite.any():
        return []
    cut = _lower_quartile(det_size[finite])
    hit = finite & (det_size <= cut) & (best_p < 0.5) & (nearest <= BRIGHT_NEAR_ARCSEC)
    out = [(int(ids[j]), float(nearest[j]), float(det_size[j] / xfmfit.R95_PER_SIGMA))
           for j in np.flatnonzero(hit)]
    return sorted(out, key=lambda t: t[1])


def _lower_quartile(values):
    """``np.quantile(values, 0.25)`` of finite values, to the bit: numpy's default ("linear")
    method, the sorted values' virtual index (n - 1) / 4 and its neighbours' interpolation
    as numpy's ``_lerp`` computes it (from the upper neighbour at a fraction >= 1/2), without
    np.quantile's ~30 us of Python per call (issue 11)."""
    v = np.sort(values).tolist()
    at = (len(v) - 1) * 0.25
    lo = math.floor(at)
    if lo == len(v) - 1:
        return v[lo]
    a, b, t = v[lo], v[lo + 1], at - lo
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _warn_rejected_bright(pin, pairs, fit):
    """Warn, naming the stack, when the mixture rejected bright detections' near candidates."""
    lost = rejected_bright(pairs, fit.membership, (fit.d_xi, fit.d_eta))
    if not lost:
        return
    shown = ", ".join(f"region_id {r} ({d:.2f}\" from the shift, stated 1-sigma {e:.3f}\")"
                      for r, d, e in lost[:5])
    more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
    logger.warning("stack %s, mixture: %d bright detection(s) have a candidate within %g\" of "
                   "the shift but no accepted counterpart (membership < 0.5): %s%s; if they "
                   "are real counterparts the stated errors understate their offsets (error "
                   "model: scale %.2f, floor %.3f\"%s)", pin.stackid or "(unnamed stack)",
                   len(lost), BRIGHT_NEAR_ARCSEC, shown, more, fit.err_scale, fit.sys_floor,
                   "" if fit.calibrated else "; not calibrated: try syserr=fit or sys_floor=")


def disagreement(a: Component, b: Component, *, cov_a=None) -> float | None:
    """Mahalanobis distance of the two totals with the sum of their covariances.  Pure.

    ``cov_a``: the covariance to use for ``a`` instead of its own (the spec's within its
    separation group, :class:`Estimate` ``compare_cov``).  None when it cannot be computed
    (a covariance is missing or singular).
    """
    diff = np.array([a.d_xi - b.d_xi, a.d_eta - b.d_eta])
    cov = np.asarray(a.cov if cov_a is None else cov_a) + np.asarray(b.cov)
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(diff))):
        return None
    try:
        return float(np.sqrt(diff @ np.linalg.solve(cov, diff)))
    except np.linalg.LinAlgError:
        return None

def corrected_detections(pin, d_xi, d_eta) -> dict:
    """Every detection corrected by the shift (spec §5.5.6).  Pure.

    xi/eta are recomputed from ra/dec at the tangent point so that the stored transform applied
    with :func:`stk_astrometry.tangent.shift_sky` reproduces ra_corr/dec_corr exactly.
    """
    from stk_astrometry.tangent import sky_to_tangent, tangent_to_sky

    ra = np.asarray(pin.detections["ra"], dtype=float)
    dec = np.asarray(pin.detections["dec"], dtype=float)
    xi, eta = sky_to_tangent(ra, dec, pin.ra_stack, pin.dec_stack)
    xi_corr, eta_corr = xi + d_xi, eta + d_eta
    ra_corr, dec_corr = tangent_to_sky(xi_corr, eta_corr, pin.ra_stack, pin.dec_stack)
    return {"region_id": np.asarray(pin.detections["region_id"]).astype(np.int32),
            "ra": ra, "dec": dec, "xi": xi, "eta": eta, "ra_corr": ra_corr,
            "dec_corr": dec_corr, "xi_corr": xi_corr, "eta_corr": eta_corr}


def log_spec(fit: xfmfit.StackFit, stackid=None):
    leg = fit.det_leg
    if leg is None:
        logger.warning("METHOD = 'none': no matches (spec 5.5.5); identity transform")
        return
    if leg.choice is not None:
        logger.info("Separation groups: n_match %s, sigma %s\"; %s",
                    ",".join(str(n) for n in leg.choice.n_match),
                    ",".join("nan" if not np.isfinite(s) else f"{s:.3f}"
                             for s in leg.choice.sigma), leg.choice.reason)
    logger.log(15, "spec fit: %s", leg.message)
    if leg.n_dropped:
        logger.warning("%d pair(s) without usable position or errors were dropped", leg.n_dropped)
    if fit.ref_leg is not None:
        r = fit.ref_leg
        logger.info("ALLWISE->Gaia leg: d_xi = %+.4f\", d_eta = %+.4f\" from %d pairs",
                    r.d_xi, r.d_eta, r.n_used)
        if r.n_dropped:
            logger.warning("ALLWISE->Gaia leg: %d pair(s) without usable errors were dropped",
                           r.n_dropped)
    for note in fit.notes:
        logger.warning("%s", note)
    if leg.fit is not None and leg.fit.implausible:
        f = leg.fit
        ratio = f.scatter_ratio
        cause = ("the offsets are all but identical (duplicated rows?)" if not ratio > 0.01
                 else f"the scatter is {1.0 / ratio:.1f}x smaller than the stated errors: they "
                      "look conservative (as CSC's error ellipses can be)")
        logger.warning("stack %s: the residual scatter of the %d pairs (%d detections) is "
                       "implausibly small for their stated errors: %s; the reported errors "
                       "are the formal ones from the stated errors (conservative)",
                       stackid or "(unnamed stack)", leg.n_used, f.n_clusters, cause)
    if leg.fit is not None and leg.fit.at_bound:
        logger.warning("the fitted shift sits on the max_shift bound")


def mixture_or_none(pin, det_pairs, wise_gaia, *, sys_floor, max_shift, calibrate=True):
    """Run the mixture estimator; None (with a warning) if it cannot run."""
    from stk_astrometry.errors import FitError

    try:
        mix = run_mixture(pin, det_pairs, wise_gaia, sys_floor=float(sys_floor),
                          max_shift=float(max_shift), calibrate=calibrate)
    except ImportError as exc:
        logger.warning("the mixture estimator is not available (%s)", exc)
        return None
    except FitError as exc:
        logger.warning("mixture estimator: %s", exc)
        return None
    logger.log(15, "mixture fit: %s", mix.message)
    return mix
