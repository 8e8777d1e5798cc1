"""Fit-accuracy benchmark of the stk_xfm estimators against the Cramér-Rao bound (issues 4, 6, 7).

Simulates thousands of stacks at the level of matched pairs (no FITS files, no catalogs) with a
known shift, fits each with every estimator side by side, and prints one fixed-width table of
ratios (never seconds):

- ``spec``    -- the specification's estimator, ``stk_astrometry.xfmfit.fit_leg_spec`` (separation
                 groups, Cauchy WLS; the default of ``stk_xfm``);
- ``mixture`` -- ``stk_astrometry.mixture.fit_mixture`` (issue 7);
- ``cauchy``  -- the plain baseline: ``scipy.optimize.least_squares`` on every pair, residual
                 vector (d_xi - p_xi, d_eta - p_eta) unweighted, loss='cauchy', f_scale=1", start 0,
                 bounds +-5"; reported sigma from the M-estimator sandwich per axis;
- ``tweakwcs``-- ``tweakwcs.linearfit.iter_linear_fit(fitgeom='shift')`` on every pair with weights
                 1/var (circularised), its default 3 x rmse clipping; reported sigma
                 sqrt(chi2_red / sum w) over the pairs it kept.  Only when tweakwcs is installed.

Run: ``PYTHONPATH=lib .venv/bin/python test/benchmarks/bench_accuracy.py [--quick]`` or through
the harness (``test/benchmarks/run.py`` calls :func:`main`).

The simulation is fixed before looking at any result and is not tuned to flatter an estimator;
its assumptions are printed with the table (see ``LEGEND``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, minimize

try:  # run as a script from the repository
    import stk_astrometry  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))

from stk_astrometry import mixture
from stk_astrometry.mixture import R95_PER_SIGMA, fit_mixture, pair_covariance

SEED = 20261120
MATCH_RADIUS = 3.0          # arcsec, the specification's match radius
SEP_EDGES = (1.0, 2.0, 3.0)  # separation groups (0,1], (1,2], (2,3]
FIELD_RADIUS = 600.0        # arcsec: detections within 10' off-axis
CLEAN_DENSITY = 2.0         # per arcmin^2: a high-latitude Gaia density (chance matches real)
CATASTROPHIC = 5.0          # error > 5 x bound on either axis
N_BOOT = 1000               # bootstrap resamples for the rms interval

LEGEND = """\
Legend (per case, per estimator; errors and bounds per axis, both axes pooled):
  N         stacks simulated (fits that returned no finite shift, and mixture fits stk_xfm would
            not apply -- MixtureFit.failure -- count as catastrophic)
  rms/CRB   sqrt(mean((est-true)^2 / CRB^2)); CRB = sqrt([inv(sum_true inv(C_k))]_axis), the
            Fisher bound from the true 1-sigma covariances of the true pairs present (for two-step:
            CRB^2 of both legs added).  1.00 = as good as knowing which pairs are true.  Over the
            fits with a finite shift: a fit counted as "no fit" (see N) is only in cat
  68% CI    bootstrap interval of rms/CRB (stacks resampled, 16th-84th percentile): a few rare
            failures dominate the rms, and this says how well N stacks pin it down
  bias/CRB  max over axes of |mean((est-true)/CRB)|, with its standard error in brackets
  cat       catastrophic failures: |est-true| > 5 x CRB on an axis, count / N
  pull sd   rms of (est-true)/reported sigma (1 = calibrated); pull95 = 95th pct of |pull| (1.96)
  cov95     pull coverage: fraction of |pull| <= 1.96, both axes pooled (0.95 = calibrated)
  sig/sct   reported sigma / actual scatter = 1 / pull sd, over stacks with >= 10 true pairs
  wrong-grp spec only: fraction of stacks whose chosen separation group is not the one holding
            the most detections with their true counterpart
  targets   issue 7 (mixture): rms <= 1.03 clean, <= 1.08 at 30 %, <= 1.12 at 40 % false;
            no catastrophic failure in the clean 0-1" set; |bias| < 0.1; sig/sct within 10 %.
            issue 4 (spec): clean shifts < 0.3": rms <= 1.15 and sig/sct within 20 %.
            issue 14: mixture rms <= 1.05, sig/sct within 20 % and lost-bright = 0 in the
            "errors"/"wavdetect" cases; spec sig/sct within 20 % in the "|s|<.3" cases.
  mix-true  (--oracle) not an estimator: the mixture told the TRUE errors, no calibration --
            what a perfect error calibration could reach with this model
  mix-outl  (--oracle, outlier cases) not an estimator: told the true errors and the simulated
            outlier model (n of the bright quarter, 0.5-1.5" from the shift), not which ones
  mix-outlA (--oracle, outlier cases) the same, told the outliers' shape but not that they are
            among the bright: the most a generic heavy-tailed true-match component could reach
  mix-lab   (--oracle, outlier cases) not an estimator: told WHICH pairs are the outliers
            (dropped) and the true errors -- whether the bound is reachable there at all;
            mix-labC the same with the stated errors self-calibrated (what calibration costs)
  mix-fit1  (--oracle) not an estimator: the mixture with its fitted error model always kept
            (never averaged with the stated errors): mix-true -> mix-fit1 is what estimating the
            error model costs, mix-fit1 -> mixture what the choice of model costs
  mix-ml    (--oracle) not an estimator: the mixture as shipped until issue 14, session 11:
            its error model's polish and the choice of model (the gain over the stated
            errors) on the plain likelihood; the mixture has both on the restricted one (REML:
            -1/2 log det of the shift's information added), which removes the bias of a
            variance fitted about the fitted shift
  mix-reml  (--oracle) not an estimator: REML in the error model's polish only, the choice of
            model on the plain likelihood (session 9); mix-reml1 the same with the fitted
            model always kept (= mix-fit1 since session 11); mix-remlS / mix-remlS1 the
            restricted term of the scale alone (the floor held at its least value in it; the
            floor by maximum likelihood), the choice on the plain likelihood
  mix-tail  (--oracle, outlier cases) not an estimator: a heavy-tailed true-match component
            ((1 - eps) N(s, C) + eps N(s, C + tau^2 I)) fitted with the error model on the
            calibrated fit's window, averaged with the mixture by posterior weight (margin 4);
            mix-tailT the same told the true errors.  No sigma
  lost-br.  mixture: bright true counterparts (quarter of smallest stated errors) within 3 true
            sigma of the shift with membership < 0.5, unless another candidate of the same
            detection lies closer to the shift (in the true sigmas): then no estimator can
            tell them apart and the membership must be shared
Simulation: detections uniform in area within 10' off-axis; per-detection ellipse with 1-sigma
  major axis sigma = (0.1 + 0.9 (theta/10')^2) x lognormal(0, 0.5) clipped to [0.1, 1.5]",
  axis ratio U(0.4, 1), PA U(0, 180); 10-80 detections per stack; true counterpart offset =
  shift + N(0, C) (kept only within the 3" match radius); chance candidates Poisson at the
  case's density, uniform over the 3" circle; "false" cases replace the true counterpart of that
  fraction of detections by one candidate uniform over the circle, and the mixture is given the
  equivalent density (planted per detection / circle area + the sky density) unless the case
  says "dens misreported"; two-step: detection->ALLWISE leg (ALLWISE sigma U(0.05, 0.4)" per
  axis, ALLWISE density 10/arcmin^2) + ALLWISE->Gaia one-to-one leg (100-300 pairs, 5 % false,
  shift U(-0.2, 0.2)"), total = sum of legs.
"""


@dataclass(frozen=True)
class Case:
    """One simulated regime."""

    name: str
    n_full: int
    n_quick: int
    shift_lo: float = 0.0          # arcsec, |shift| uniform in [lo, hi]
    shift_hi: float = 1.0
    false_frac: float = 0.0        # planted false matches (fraction of detections)
    density: float = CLEAN_DENSITY  # true chance density, per arcmin^2
    misreport: bool = False        # give the mixture only the sky density
    twostep: bool = False
    clean: bool = False
    mixture_rms_target: float | None = None
    spec_target: bool = False      # issue-4 targets apply
    cat_target: bool = False       # issue-7 "no catastrophic failure" target applies
    errors: str = "true"           # stated errors: true | floor | inflated | wavdetect (issue 14)
    outliers: int = 0              # bright detections given a real-looking wrong offset
    errors_target: bool = False    # issue-14 mixture targets apply (sigma +-20 %, membership)
    spec_sigma_target: bool = False  # issue-14 spec target applies (sigma +-20 %)


CASES = (
    Case("clean |s|<0.3", 2000, 150, 0.0, 0.3, clean=True, mixture_rms_target=1.03,
         spec_target=True),
    Case("clean |s|<1.0", 2000, 150, 0.0, 1.0, clean=True, mixture_rms_target=1.03,
         cat_target=True),
    Case("clean 1.0-1.5", 2000, 150, 1.0, 1.5, clean=True, mixture_rms_target=1.03),
    Case("false 10%", 2000, 150, 0.0, 1.0, false_frac=0.10),
    Case("false 20%", 2000, 150, 0.0, 1.0, false_frac=0.20),
    # 10,000 stacks: at 30-40 % false matches the rms is set by a few ambiguous stacks in a
    # thousand (one stack can move it by 0.05 at N = 2,000), so 2,000 cannot judge a target
    Case("false 30%", 10000, 150, 0.0, 1.0, false_frac=0.30, mixture_rms_target=1.08),
    Case("false 40%", 10000, 150, 0.0, 1.0, false_frac=0.40, mixture_rms_target=1.12),
    Case("false 30% dens misrep.", 1000, 100, 0.0, 1.0, false_frac=0.30, misreport=True),
    Case("crowded 20/arcmin2", 2000, 150, 0.0, 1.0, density=20.0),
    Case("crowded 60/arcmin2", 2000, 150, 0.0, 1.0, density=60.0),
    Case("crowded 150/arcmin2", 2000, 150, 0.0, 1.0, density=150.0),
    Case("two-step", 2000, 150, 0.0, 1.0, twostep=True),
    # beyond the issue's range (appended last, so the cases above keep their stacks): large
    # true shifts, where the weak prior that ranks start modes (sigma 1") works against truth
    Case("clean 1.5-2.5", 2000, 150, 1.5, 2.5, clean=True),
    Case("false 20% 1.5-2.5", 2000, 150, 1.5, 2.5, false_frac=0.20),
    Case("false 40% 1.0-1.5", 2000, 150, 1.0, 1.5, false_frac=0.40),
    # issue 14: stated errors that are not the true ones (appended: earlier cases keep their
    # stacks); the mixture is given the stated errors, the CRB uses the true ones
    # 1,000 stacks each (issue 14); the spec's sigma is judged at CSC-like shifts (|s| < 0.3",
    # the cases below): at |s| up to 1" its 0-1" separation group truncates the true offsets,
    # and its error is then dominated by that bias and by wrong group choices (wrong-grp), which
    # no sigma of the spec shift (unchanged, as the issue asks) can follow
    # 5,000 stacks: the mixture is ~1.05 x here, and 1,000 stacks (68 % interval +-0.016) gave
    # 1.035 where 5,000 give 1.059 [1.051, 1.066] (issue 14, session 7)
    Case("errors: floor .05-.3", 5000, 150, errors="floor", mixture_rms_target=1.05,
         errors_target=True),
    Case("errors: inflated x1.5-3", 1000, 150, errors="inflated", mixture_rms_target=1.05,
         errors_target=True),
    Case("errors: wavdetect", 1000, 150, errors="wavdetect", mixture_rms_target=1.05,
         errors_target=True),
    Case("wavdetect + outliers", 1000, 150, errors="wavdetect", outliers=2,
         mixture_rms_target=1.05, errors_target=True),
    Case("errors right |s|<.3", 1000, 150, 0.0, 0.3, spec_sigma_target=True),
    Case("floor .05-.3 |s|<.3", 1000, 150, 0.0, 0.3, errors="floor", spec_sigma_target=True,
         errors_target=True),
    Case("inflated x1.5-3 |s|<.3", 1000, 150, 0.0, 0.3, errors="inflated",
         spec_sigma_target=True, errors_target=True),
    Case("wavdetect |s|<.3", 1000, 150, 0.0, 0.3, errors="wavdetect", spec_sigma_target=True,
         errors_target=True),
    Case("wavdet.+outl. |s|<.3", 1000, 150, 0.0, 0.3, errors="wavdetect", outliers=2,
         spec_sigma_target=True, errors_target=True),
)


@dataclass(frozen=True)
class Leg:
    """Pairs of one simulated leg."""

    det: np.ndarray          # detection (source) index per pair
    src_xi: np.ndarray
    src_eta: np.ndarray
    d_xi: np.ndarray
    d_eta: np.ndarray
    err_r0: np.ndarray       # 95 % radii of the source (NaN for the ALLWISE->Gaia leg)
    err_r1: np.ndarray
    err_ang: np.ndarray
    ref_sigra: np.ndarray    # 1-sigma of the other side
    ref_sigdec: np.ndarray
    cov: np.ndarray          # true total covariance per pair
    cov_stated: np.ndarray   # the covariance the estimators are given (= cov unless wrong)
    is_true: np.ndarray
    shift: np.ndarray        # true shift (2,)
    density: float           # density given to the mixture, per arcmin^2
    crb_var: np.ndarray      # (2,) CRB variances per axis
    bright: np.ndarray       # pair of a detection among the quarter with the smallest errors
    n_outliers: int = 0      # bright detections given a wrong offset (simulate_leg's outliers)
    outlier: np.ndarray | None = None   # the pairs of those wrong offsets (None: no outliers)

    @property
    def sep(self):
        return np.hypot(self.d_xi, self.d_eta)

    @property
    def group(self):
        return np.clip(np.searchsorted(SEP_EDGES, self.sep, side="left") + 1, 1, len(SEP_EDGES))


def _uniform_disk(rng, n, radius):
    r = radius * np.sqrt(rng.uniform(size=n))
    t = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return r * np.cos(t), r * np.sin(t)


def _random_shift(rng, lo, hi):
    mag = rng.uniform(lo, hi)
    ang = rng.uniform(0.0, 2.0 * np.pi)
    return np.array([mag * np.cos(ang), mag * np.sin(ang)])


def _crb_var(cov_true):
    if cov_true.shape[0] == 0:
        return np.array([np.inf, np.inf])
    info = np.linalg.inv(cov_true).sum(axis=0)
    return np.diag(np.linalg.inv(info)).copy()


def simulate_leg(rng, *, shift, n_det, false_frac, density, misreport=False,
                 ref_sigma=None, ellipses=True, errors="true", outliers=0):
    """Pairs of one leg: detections with CSC-like ellipses and their candidates within 3".

    ``errors`` says how the stated ellipses (what the estimators get) relate to the true ones
    (issue 14): ``true``; ``floor`` -- a systematic floor U(0.05, 0.3)" per stack missing from
    the stated errors; ``inflated`` -- stated = U(1.5, 3) x true per stack (conservative
    ellipses); ``wavdetect`` -- stated sigma = 0.5 r_psf(theta) / sqrt(counts), counts
    log-uniform 10-3000, no floor, true = stated (+) a floor U(0.1, 0.25)".  ``outliers``
    bright detections (smallest stated errors) get a wrong offset 0.5-1.5" from the shift
    instead of their counterpart (blends, wrong identifications).
    """
    theta = 10.0 * np.sqrt(rng.uniform(size=n_det))                       # arcmin
    src_xi, src_eta = _uniform_disk(rng, n_det, FIELD_RADIUS)
    if ellipses:
        sig = (0.1 + 0.9 * (theta / 10.0) ** 2) * rng.lognormal(0.0, 0.5, n_det)
        sig_maj = np.clip(sig, 0.1, 1.5)
        if errors == "wavdetect":
            counts = np.exp(rng.uniform(np.log(10.0), np.log(3000.0), n_det))
            r_psf = 0.5 + 4.0 * (theta / 10.0) ** 2               # ~r90, arcsec
            sig_maj = np.maximum(r_psf / np.sqrt(counts), 0.005)
        sig_min = sig_maj * rng.uniform(0.4, 1.0, n_det)
        pa = rng.uniform(0.0, 180.0, n_det)
        r0, r1 = sig_maj * R95_PER_SIGMA, sig_min * R95_PER_SIGMA
    else:
        r0 = r1 = np.full(n_det, np.nan)
        pa = np.zeros(n_det)
    if ref_sigma is None:
        sra = sdec = np.zeros(n_det)
    else:
        sra = rng.uniform(*ref_sigma, n_det)
        sdec = rng.uniform(*ref_sigma, n_det)
    if ellipses:
        cov_stated = pair_covariance(r0, r1, pa, sra, sdec)
    else:
        cov_stated = np.zeros((n_det, 2, 2))
        cov_stated[:, 0, 0], cov_stated[:, 1, 1] = sra**2, sdec**2
    cov_det = cov_stated.copy()
    if errors in ("floor", "wavdetect"):
        floor = rng.uniform(0.05, 0.3) if errors == "floor" else rng.uniform(0.1, 0.25)
        cov_det[:, 0, 0] += floor**2
        cov_det[:, 1, 1] += floor**2
    elif errors == "inflated":
        cov_det = cov_stated / rng.uniform(1.5, 3.0) ** 2
    chol = np.linalg.cholesky(cov_det)
    true_off = shift + np.einsum("nij,nj->ni", chol, rng.standard_normal((n_det, 2)))
    if outliers:
        bright = np.argsort(cov_stated[:, 0, 0] + cov_stated[:, 1, 1])[:outliers]
        mag = rng.uniform(0.5, 1.5, bright.size)
        ang = rng.uniform(0.0, 2.0 * np.pi, bright.size)
        true_off[bright] = shift + np.stack([mag * np.cos(ang), mag * np.sin(ang)], axis=1)
    planted = rng.uniform(size=n_det) < false_frac
    has_true = ~planted & (np.hypot(true_off[:, 0], true_off[:, 1]) <= MATCH_RADIUS)
    # the quarter of the detections with the smallest stated errors
    size = cov_stated[:, 0, 0] + cov_stated[:, 1, 1]
    bright_mask = size <= np.quantile(size, 0.25) if n_det else np.zeros(0, bool)
    wrong = np.zeros(n_det, bool)
    if outliers:
        wrong[bright] = True

    rows_det, rows_dx, rows_dy, rows_true = [], [], [], []
    idx = np.flatnonzero(has_true)
    rows_det.append(idx)
    rows_dx.append(true_off[idx, 0])
    rows_dy.append(true_off[idx, 1])
    rows_true.append(~wrong[idx])
    rows_outl = [wrong[idx]]
    idx = np.flatnonzero(planted)
    px, py = _uniform_disk(rng, idx.size, MATCH_RADIUS)
    rows_det.append(idx)
    rows_dx.append(px)
    rows_dy.append(py)
    rows_true.append(np.zeros(idx.size, bool))
    rows_outl.append(np.zeros(idx.size, bool))
    n_chance = rng.poisson(density / 3600.0 * np.pi * MATCH_RADIUS**2, n_det)
    idx = np.repeat(np.arange(n_det), n_chance)
    cx, cy = _uniform_disk(rng, idx.size, MATCH_RADIUS)
    rows_det.append(idx)
    rows_dx.append(cx)
    rows_dy.append(cy)
    rows_true.append(np.zeros(idx.size, bool))
    rows_outl.append(np.zeros(idx.size, bool))
    det = np.concatenate(rows_det)
    order = rng.permutation(det.size)
    det = det[order]
    is_true = np.concatenate(rows_true)[order]
    dens_given = density
    if false_frac > 0 and not misreport:
        dens_given += planted.sum() / max(n_det, 1) / (np.pi * MATCH_RADIUS**2) * 3600.0
    return Leg(det=det, src_xi=src_xi[det], src_eta=src_eta[det],
               d_xi=np.concatenate(rows_dx)[order], d_eta=np.concatenate(rows_dy)[order],
               err_r0=r0[det], err_r1=r1[det], err_ang=pa[det], ref_sigra=sra[det],
               ref_sigdec=sdec[det], cov=cov_det[det], cov_stated=cov_stated[det],
               is_true=is_true, shift=shift, density=dens_given,
               crb_var=_crb_var(cov_det[det][is_true]), bright=bright_mask[det],
               n_outliers=int(outliers),
               outlier=np.concatenate(rows_outl)[order] if outliers else None)


def simulate_stack(rng, case):
    """One stack: a list of legs (one for the direct path, two for the two-step path)."""
    shift = _random_shift(rng, case.shift_lo, case.shift_hi)
    n_det = int(rng.integers(10, 81))
    if not case.twostep:
        return [simulate_leg(rng, shift=shift, n_det=n_det, false_frac=case.false_frac,
                             density=case.density, misreport=case.misreport,
                             errors=case.errors, outliers=case.outliers)]
    shift2 = rng.uniform(-0.2, 0.2, 2)
    leg1 = simulate_leg(rng, shift=shift - shift2, n_det=n_det, false_frac=0.0, density=10.0,
                        ref_sigma=(0.05, 0.4))
    leg2 = simulate_leg(rng, shift=shift2, n_det=int(rng.integers(100, 301)), false_frac=0.05,
                        density=0.0, ref_sigma=(0.05, 0.4), ellipses=False)
    return [leg1, leg2]


# ---------------------------------------------------------------------------------------------
# Estimators: each returns (shift (2,), reported sigma (2,), extra) for one leg


def _mixture(leg, calibrate):
    fit = fit_mixture(leg.det, leg.d_xi, leg.d_eta, leg.cov_stated,
                      density_per_arcmin2=leg.density, match_radius_arcsec=MATCH_RADIUS,
                      calibrate=calibrate)
    if fit.failure is not None:
        # stk_xfm does not apply a failed mixture fit (it falls back on spec): count it as a
        # failure here, never as the shift it happened to stop at
        return np.full(2, np.nan), np.full(2, np.nan), None
    return np.array([fit.d_xi, fit.d_eta]), np.sqrt(np.diag(fit.cov)), fit.membership


def est_mixture(leg, leg_index):
    """The mixture as stk_xfm runs it: errors self-calibrated (issue 14)."""
    return _mixture(leg, True)


def est_mixture_stated(leg, leg_index):
    """The mixture trusting the stated errors (before issue 14), side by side."""
    return _mixture(leg, False)


def est_oracle_errors(leg, leg_index):
    """An oracle, not an estimator (``--oracle``): the mixture given the TRUE errors
    (``leg.cov``, no calibration).  What a perfect self-calibration of the errors could reach
    with this model; its distance from 1 is the model's own cost (e.g. outliers it cannot
    tell from true counterparts), which no error calibration can remove."""
    fit = fit_mixture(leg.det, leg.d_xi, leg.d_eta, leg.cov, density_per_arcmin2=leg.density,
                      match_radius_arcsec=MATCH_RADIUS)
    if fit.failure is not None:
        return np.full(2, np.nan), np.full(2, np.nan), None
    return np.array([fit.d_xi, fit.d_eta]), np.sqrt(np.diag(fit.cov)), fit.membership


OUTLIER_RANGE = (0.5, 1.5)   # arcsec from the shift: simulate_leg's outliers
# the --oracle rows run in the outlier cases only
OUTLIER_ROWS = ("mix-outl", "mix-outlA", "mix-tail", "mix-tailT", "mix-lab", "mix-labC")


def est_oracle_labels(leg, leg_index, calibrate=False):
    """An oracle, not an estimator (``--oracle``, outlier cases only; row ``mix-lab``): told
    which pairs are the simulated outliers (``leg.outlier``: dropped) and the TRUE errors, the
    mixture on the rest -- what this model reaches once the outliers are known, i.e. whether
    the Cramer-Rao bound (computed with the true pairs only) is reachable there at all.
    ``calibrate`` (row ``mix-labC``): the outliers dropped, the stated errors self-calibrated
    as stk_xfm does: what the error calibration alone costs in that regime."""
    keep = ~leg.outlier if leg.outlier is not None else np.ones(leg.det.size, bool)
    cov = leg.cov_stated if calibrate else leg.cov
    fit = fit_mixture(leg.det[keep], leg.d_xi[keep], leg.d_eta[keep], cov[keep],
                      density_per_arcmin2=leg.density, match_radius_arcsec=MATCH_RADIUS,
                      calibrate=calibrate)
    if fit.failure is not None:
        return np.full(2, np.nan), np.full(2, np.nan), None
    membership = np.zeros(leg.det.size)
    membership[keep] = fit.membership
    return np.array([fit.d_xi, fit.d_eta]), np.sqrt(np.diag(fit.cov)), membership


def est_oracle_outliers(leg, leg_index, bright_only=True):
    """An oracle, not an estimator (``--oracle``, outlier cases only): told the true errors AND
    the simulation's outlier model -- ``leg.n_outliers`` of the bright quarter's detections
    (stated errors) have, instead of their counterpart, one at a distance U(0.5, 1.5)" from the
    shift in a uniform direction -- but not which detections.  EM from the true-error mixture's
    shift: candidate k of detection j is true with ``(1 - eps_j) N_k / D_j``, ``D_j = rho +
    sum_k [(1 - eps_j) N_k + eps_j O_k]``, O the outliers' density ``1 / (2 pi r (1.5 - 0.5))``
    at r = |d_k - s| in the range (0 outside), eps_j = n_outliers / (bright detections) for a
    bright detection, 0 for the others; the shift the memberships' weighted mean.  It bounds
    from below what any estimator that must also find the errors and the outliers' shape can
    do in these cases.  ``bright_only=False`` (row ``mix-outlA``): eps_j = n_outliers / (all
    detections) on every detection -- the outliers' exact shape, but not that they are bright:
    the most a heavier-tailed true-match component, which cannot know that, could gain."""
    start, _, _ = est_oracle_errors(leg, leg_index)
    if not np.all(np.isfinite(start)) or leg.n_outliers == 0:
        return start, np.full(2, np.nan), None
    d = np.stack([leg.d_xi, leg.d_eta], axis=1)
    inv = np.linalg.inv(leg.cov)
    log_norm = -np.log(2.0 * np.pi) - 0.5 * np.log(np.linalg.det(leg.cov))
    n_det = int(leg.det.max()) + 1
    n_bright = max(np.unique(leg.det[leg.bright]).size, 1)
    if bright_only:
        eps = np.where(leg.bright, min(leg.n_outliers / n_bright, 1.0), 0.0)
    else:
        eps = np.full(leg.det.size, min(leg.n_outliers / n_det, 1.0))
    rho = leg.density / 3600.0
    lo, hi = OUTLIER_RANGE
    s = start
    for _ in range(500):
        e = d - s
        gauss = np.exp(log_norm - 0.5 * np.einsum("ni,nij,nj->n", e, inv, e))
        r = np.hypot(e[:, 0], e[:, 1])
        inside = (r >= lo) & (r <= hi)
        out = np.where(inside, 1.0 / (2.0 * np.pi * np.maximum(r, lo) * (hi - lo)), 0.0)
        true_part = (1.0 - eps) * gauss
        denom = rho + np.bincount(leg.det, true_part + eps * out, minlength=n_det)
        memb = true_part / denom[leg.det]
        w = np.einsum("n,nij->ij", memb, inv)
        s_new = np.linalg.solve(w, np.einsum("n,nij,nj->i", memb, inv, d))
        done = np.max(np.abs(s_new - s)) < 1e-10
        s = s_new
        if done:
            break
    return s, np.sqrt(np.diag(np.linalg.inv(w))), memb


@contextlib.contextmanager
def _fitted_model_always():
    """fit_mixture keeping the fitted error model whatever its gain over the stated errors:
    the margin (``_CAL_LR_MIN``, also the prior odds of the averaging) at -inf, so the fitted
    model wins and its posterior weight is 1 (no averaging)."""
    saved = mixture._CAL_LR_MIN
    mixture._CAL_LR_MIN = -np.inf
    try:
        yield
    finally:
        mixture._CAL_LR_MIN = saved


def est_oracle_fitted(leg, leg_index):
    """Not an estimator (``--oracle``, row ``mix-fit1``): the mixture with the fitted error model
    always kept (never averaged with, nor replaced by, the stated errors).  Between ``mix-true``
    and ``mixture`` it splits what the calibration costs into the estimate of the error model
    (``mix-true`` -> ``mix-fit1``) and the choice between it and the stated errors (``mix-fit1``
    -> ``mixture``), which protects the stacks whose stated errors are right."""
    with _fitted_model_always():
        return _mixture(leg, True)


#: The restricted likelihood's term of the error model in (A, B) = (k^2, sigma_sys^2), with its
#: exact gradient and Hessian (rows ``mix-reml``, ``mix-reml1``, ``mix-remlS``): the mixture's
#: own since issue 14, session 11 (:func:`stk_astrometry.mixture._restricted_ab`), bound here
#: so that :func:`_maximum_likelihood`, which patches the module's, leaves these rows theirs.
restricted_terms = mixture._restricted_ab


@contextlib.contextmanager
def _maximum_likelihood():
    """fit_mixture as shipped until issue 14, session 11 (row ``mix-ml``): the error model's
    M step, its polish and the choice of model on the plain likelihood -- the restricted
    likelihood's terms (``mixture._restricted_objective``'s ``-1/2 log det I``,
    ``_restricted_ab`` in ``_fit_error_model`` (since issue 11, session 12: nil, 0 added),
    ``_restricted_log_det`` in ``_gain_same_window``) left out, so the results are that
    code's bit for bit."""
    saved = mixture._restricted_objective, mixture._restricted_log_det, mixture._restricted_ab
    mixture._restricted_objective = (lambda prob, stated, st, min_floor:
                                     mixture._error_model_terms(prob, stated, st, min_floor))
    mixture._restricted_log_det = lambda r, inv, max_shift: 0.0
    mixture._restricted_ab = lambda *args: (0.0, np.zeros(2), np.zeros(3))
    try:
        yield
    finally:
        (mixture._restricted_objective, mixture._restricted_log_det,
         mixture._restricted_ab) = saved


@contextlib.contextmanager
def _restricted_likelihood(scale_only=False):
    """fit_mixture with its error model's polish on the restricted likelihood: the
    objective of ``mixture._error_model_terms`` (x = (log k, sigma_sys^2)) plus
    :func:`restricted_terms` at the state's memberships, chained to x as that function chains
    its own (A = exp(2 x0)).

    ``scale_only`` (rows ``mix-remlS``, ``mix-remlS1``): the restricted term of the scale
    alone -- :func:`restricted_terms` of the model with the floor held at its least value
    (``min_floor``), a function of k only (``log k^2`` plus a constant when that floor is 0 and
    no principal sigma is floored: the n / (n - 2) correction of a fitted variance scale).  The
    floor is fitted by maximum likelihood as shipped: REML's push on the floor is what cost
    the inflated-errors regime (session 9), where the true floor is 0, on its bound."""
    terms_ml = mixture._error_model_terms

    def terms_reml(prob, stated, st, min_floor):
        ml = terms_ml(prob, stated, st, min_floor)
        lam, vx, vy = mixture._principal_axes(stated[st.idx])
        proj = mixture._axis_projectors(vx, vy)
        floor2 = mixture.MIN_SIGMA_ARCSEC**2

        def terms(x, derivatives=True):
            # (``derivatives`` False: the value alone, as the module's objective gives it)
            value, grad, hess = ml(x, derivatives)
            big_a = float(np.exp(2.0 * x[0]))
            raw = big_a * lam + (min_floor**2 if scale_only else x[1])
            jb = (raw >= floor2).astype(float)
            r_value, r_grad, r_hess = mixture._restricted_in_x(big_a, restricted_terms(
                st.r, 1.0 / np.maximum(raw, floor2), jb * lam, 0.0 * jb if scale_only else jb,
                proj))
            if not derivatives:
                return value + r_value, None, None
            return value + r_value, grad + r_grad, hess + r_hess

        return terms

    mixture._error_model_terms = terms_reml
    try:
        with _maximum_likelihood():
            yield
    finally:
        mixture._error_model_terms = terms_ml


def est_oracle_ml(leg, leg_index):
    """Not an estimator (``--oracle``, row ``mix-ml``): the mixture as shipped until issue 14,
    session 11 -- its error model's polish and the choice of model on the plain likelihood
    (:func:`_maximum_likelihood`); ``mixture`` is that with both on the restricted one (the
    row ``mix-remlC`` of session 11's measurement)."""
    with _maximum_likelihood():
        return _mixture(leg, True)


def est_oracle_reml(leg, leg_index):
    """Not an estimator (``--oracle``, row ``mix-reml``): the mixture with its error model's
    polish on the restricted likelihood (:func:`_restricted_likelihood`), the choice of model
    as shipped."""
    with _restricted_likelihood():
        return _mixture(leg, True)


def est_oracle_reml_fitted(leg, leg_index):
    """Not an estimator (``--oracle``, row ``mix-reml1``): ``mix-reml`` with the fitted error
    model always kept (as ``mix-fit1``): what the error model's estimate costs once its
    REML-type bias is removed.  Since issue 14, session 11 the mixture's own polish is on the
    restricted likelihood, and this row gives ``mix-fit1``'s results."""
    with _restricted_likelihood(), _fitted_model_always():
        return _mixture(leg, True)


def est_oracle_reml_scale(leg, leg_index):
    """Not an estimator (``--oracle``, row ``mix-remlS``): the mixture with the restricted
    likelihood's term for the error model's scale alone (:func:`_restricted_likelihood`,
    ``scale_only``), the floor by maximum likelihood, the choice of model as shipped."""
    with _restricted_likelihood(scale_only=True):
        return _mixture(leg, True)


def est_oracle_reml_scale_fitted(leg, leg_index):
    """Not an estimator (``--oracle``, row ``mix-remlS1``): ``mix-remlS`` with the fitted
    error model always kept (as ``mix-fit1``)."""
    with _restricted_likelihood(scale_only=True), _fitted_model_always():
        return _mixture(leg, True)


TAIL_TAU_RANGE = (0.3, 3.0)     # arcsec: the tail component's extra sigma
TAIL_EPS_RANGE = (1e-3, 0.5)    # its fraction of the true counterparts
TAIL_STARTS = ((0.05, 1.0), (0.1, 0.5))   # (fraction, extra sigma) starts
TAIL_MARGIN = 4.0               # prior odds exp(-2) on the tail, as mixture._CAL_LR_MIN


class TailModel:
    """The mixture's observed likelihood (``stk_astrometry.mixture``'s module docstring) with a
    heavy-tailed true-match component: a true counterpart's offset is ``(1 - eps) N(s, C_k) +
    eps N(s, C_k + tau^2 I)``, ``C_k = k^2 Sigma_k + f^2 I`` (the calibrated errors; Sigma_k the
    errors given), the window's mass of each pair the same mixture of the two components'.

    A research oracle (``--oracle``, rows ``mix-tail``/``mix-tailT``), not an estimator: the
    window is held (radius R - |s0| about the start shift ``s0``), the parameters (s, logit q,
    log k, f, logit eps, log tau) are fitted jointly by L-BFGS-B (numerical gradients, ~0.3 s
    per stack), and with ``fixed_errors`` k = 1, f = 0 (the errors given are the true ones).
    The error model's prior is mixture's (``_error_prior``) unless the errors are fixed.
    """

    def __init__(self, leg, cov, s0, fixed_errors=False):
        d = np.stack([leg.d_xi, leg.d_eta], axis=1)
        self.r_w = MATCH_RADIUS - float(np.hypot(*s0))
        idx = np.flatnonzero(np.hypot(*(d - s0).T) <= self.r_w)
        idx = idx[np.argsort(leg.det[idx], kind="stable")]
        self.idx = idx
        self.d = d[idx]
        self.lam, self.vx, self.vy = mixture._principal_axes(cov[idx])
        theta = (np.arange(mixture._N_THETA) + 0.5) * (np.pi / mixture._N_THETA)
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        self.alpha = (self.vx[:, None] * cos_t + self.vy[:, None] * sin_t) ** 2
        self.beta = (self.vx[:, None] * sin_t - self.vy[:, None] * cos_t) ** 2
        self.starts = mixture._group_starts(leg.det[idx])
        self.counts = mixture._group_counts(self.starts, idx.size)
        self.rho = leg.density / 3600.0
        self.mu = self.rho * np.pi * self.r_w**2
        self.fixed_errors = fixed_errors

    def _disk(self, v1, v2):
        # mixture.disk_probability's quadrature, V_t = u_t^T C u_t in the principal axes
        return mixture._disk_mass(self.alpha * v1[:, None] + self.beta * v2[:, None], self.r_w)

    def loglike(self, p, tail=True, memberships=False):
        """log L (+ the error model's log prior) at p = (sx, sy, logit q, log k, f, logit eps,
        log tau); ``tail`` False: eps = 0 (the mixture's own model)."""
        sx, sy, lq, lk, f, le, lt = p
        q = 1.0 / (1.0 + np.exp(-lq))
        k2, f2 = np.exp(2.0 * lk), max(f, 0.0) ** 2
        e = self.d - [sx, sy]
        u1 = (e[:, 0] * self.vx + e[:, 1] * self.vy) ** 2
        u2 = (e[:, 1] * self.vx - e[:, 0] * self.vy) ** 2
        v1 = np.maximum(k2 * self.lam[:, 0] + f2, mixture.MIN_SIGMA_ARCSEC**2)
        v2 = np.maximum(k2 * self.lam[:, 1] + f2, mixture.MIN_SIGMA_ARCSEC**2)
        lg = -np.log(2.0 * np.pi) - 0.5 * (np.log(v1 * v2) + u1 / v1 + u2 / v2)
        pk = self._disk(v1, v2)
        if tail:
            eps, t2 = 1.0 / (1.0 + np.exp(-le)), np.exp(2.0 * lt)
            w1, w2 = v1 + t2, v2 + t2
            lg_w = -np.log(2.0 * np.pi) - 0.5 * (np.log(w1 * w2) + u1 / w1 + u2 / w2)
            lg = np.logaddexp(np.log1p(-eps) + lg, np.log(eps) + lg_w)
            pk = (1.0 - eps) * pk + eps * self._disk(w1, w2)
        log_s = mixture._group_logsumexp_counts(lg, self.starts, self.counts)
        p_j = np.add.reduceat(pk, self.starts) / self.counts
        with np.errstate(divide="ignore"):
            log_bg = (np.log(self.rho) if self.rho > 0 else -np.inf) + np.log1p(-q * p_j)
        log_d = np.logaddexp(log_bg, np.log(q) + log_s)
        value = float(np.sum(log_d - np.log(-np.expm1(-self.mu) + q * np.exp(-self.mu) * p_j)))
        if not self.fixed_errors:
            value += mixture._error_prior(k2, f2, 0.0)[0]
        if memberships:
            return value, np.exp(np.log(q) + lg - np.repeat(log_d, self.counts))
        return value

    def fit(self, p0, tail=True):
        """Maximise :meth:`loglike` from p0: (parameters, maximum)."""
        fixed = (0.0, 0.0) if self.fixed_errors else None
        bounds = [(None, None), (None, None), (-12.0, 12.0),
                  fixed or tuple(np.log(mixture._CAL_SCALE_RANGE)),
                  fixed or (0.0, mixture._CAL_MAX_FLOOR),
                  tuple(np.log(np.array(TAIL_EPS_RANGE) / (1.0 - np.array(TAIL_EPS_RANGE))))
                  if tail else (None, None),
                  tuple(np.log(TAIL_TAU_RANGE))]
        res = minimize(lambda p: -self.loglike(p, tail=tail), p0, method="L-BFGS-B",
                       bounds=bounds)
        return res.x, -float(res.fun)


def est_oracle_tail(leg, leg_index, true_errors=False):
    """Not an estimator (``--oracle``, outlier cases; rows ``mix-tail``, ``mix-tailT``): the
    mixture with a fitted heavy-tailed true-match component (:class:`TailModel`), started from
    the calibrated mixture's fit (``true_errors``: from the mixture told the true errors, k = 1
    and no floor held).  The mixture's own model is refitted the same way (eps = 0) and the
    gain 2 dlogL of the tail turned into a posterior weight with prior odds exp(-2)
    (``TAIL_MARGIN``, as the error calibration's); the shift is the tail model's and the
    mixture's averaged by that weight, the memberships (core + tail) the tail model's.  No
    sigma (NaN)."""
    cov = leg.cov if true_errors else leg.cov_stated
    fit = fit_mixture(leg.det, leg.d_xi, leg.d_eta, cov, density_per_arcmin2=leg.density,
                      match_radius_arcsec=MATCH_RADIUS, calibrate=not true_errors)
    if fit.failure is not None:
        return np.full(2, np.nan), np.full(2, np.nan), None
    s0 = np.array([fit.d_xi, fit.d_eta])
    model = TailModel(leg, cov, s0, fixed_errors=true_errors)
    q0 = min(max(fit.q, 1e-4), 1.0 - 1e-4)
    k0, f0 = (1.0, 0.0) if true_errors else (fit.err_scale, fit.sys_floor)
    p_base, ll_base = model.fit(np.array([*s0, np.log(q0 / (1.0 - q0)), np.log(k0), f0,
                                          0.0, 0.0]), tail=False)
    best = None
    for eps0, tau0 in TAIL_STARTS:
        p0 = p_base.copy()
        p0[5], p0[6] = np.log(eps0 / (1.0 - eps0)), np.log(tau0)
        p_tail, ll_tail = model.fit(p0)
        if best is None or ll_tail > best[1]:
            best = (p_tail, ll_tail)
    p_tail, ll_tail = best
    weight = 1.0 / (1.0 + np.exp(-0.5 * (2.0 * (ll_tail - ll_base) - TAIL_MARGIN)))
    membership = np.zeros(leg.det.size)
    membership[model.idx] = model.loglike(p_tail, memberships=True)[1]
    return weight * p_tail[:2] + (1.0 - weight) * s0, np.full(2, np.nan), membership


def _load_spec():
    try:
        from stk_astrometry.xfmfit import PairSet, fit_leg_spec
    except ImportError:
        return None
    return PairSet, fit_leg_spec


def load_baseline(rev):
    """The package as it is at git revision ``rev``, importable beside today's.

    ``lib/stk_astrometry`` of that revision is extracted (``git archive``) into a temporary
    folder as the package ``stk_astrometry_base`` (its imports are relative), so one run can
    fit the same stacks with both versions: old and new side by side (``--baseline``).
    Returns the folder and the imported module's ``xfmfit`` and ``mixture``.
    """
    import importlib

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:          # loaded by file name (test_bench_accuracy), not as a script
        sys.path.insert(0, here)
    from _common import extract_revision

    folder = extract_revision(rev, "lib/stk_astrometry")
    (folder / "lib" / "stk_astrometry").rename(folder / "stk_astrometry_base")
    sys.path.insert(0, str(folder))
    return (folder, importlib.import_module("stk_astrometry_base.xfmfit"),
            importlib.import_module("stk_astrometry_base.mixture"))


def make_est_mixture_base(mixture_module):
    """The mixture of the baseline revision, as stk_xfm ran it there (self-calibrated)."""
    def est_mixture_base(leg, leg_index):
        fit = mixture_module.fit_mixture(
            leg.det, leg.d_xi, leg.d_eta, leg.cov_stated, density_per_arcmin2=leg.density,
            match_radius_arcsec=MATCH_RADIUS, calibrate=True)
        if fit.failure is not None:
            return np.full(2, np.nan), np.full(2, np.nan), None
        return np.array([fit.d_xi, fit.d_eta]), np.sqrt(np.diag(fit.cov)), fit.membership

    return est_mixture_base


def make_est_spec(spec_api):
    PairSet, fit_leg_spec = spec_api

    def est_spec(leg, leg_index):
        pairs = PairSet(region_id=leg.det, src_xi=leg.src_xi, src_eta=leg.src_eta,
                        d_xi=leg.d_xi, d_eta=leg.d_eta, sep=leg.sep, group=leg.group,
                        err_r0=leg.err_r0, err_r1=leg.err_r1, err_ang=leg.err_ang,
                        ref_sigra=leg.ref_sigra, ref_sigdec=leg.ref_sigdec)
        if leg_index == 0:
            weighting = "det" if np.all(leg.ref_sigra == 0) else "combined"
            fit = fit_leg_spec(pairs, weighting=weighting, n_groups=3)
        else:   # ALLWISE->Gaia leg: every pair, ALLWISE errors (spec §5.5.4)
            fit = fit_leg_spec(pairs, weighting="ref", n_groups=3, use_groups=False)
        return (np.array([fit.d_xi, fit.d_eta]), np.array([fit.d_xi_err, fit.d_eta_err]),
                fit.group)

    return est_spec


def est_cauchy(leg, leg_index):
    dx, dy = leg.d_xi, leg.d_eta
    n = dx.size
    if n == 0:
        return np.full(2, np.nan), np.full(2, np.nan), None

    def fun(p):
        return np.concatenate([dx - p[0], dy - p[1]])

    res = least_squares(fun, np.zeros(2), loss="cauchy", f_scale=1.0, bounds=(-5.0, 5.0))
    sig = np.full(2, np.nan)
    for axis, d in enumerate((dx, dy)):
        r = d - res.x[axis]
        z = r**2
        psi = r / (1.0 + z)
        dpsi = (1.0 - z) / (1.0 + z) ** 2
        if n > 1 and dpsi.sum() > 0:
            sig[axis] = np.sqrt(np.sum(psi**2) * n / (n - 1)) / dpsi.sum()
    return res.x.copy(), sig, None


def _load_tweakwcs():
    try:
        from tweakwcs.linearfit import iter_linear_fit
    except ImportError:
        return None
    logging.getLogger("tweakwcs").setLevel(logging.ERROR)
    return iter_linear_fit


def make_est_tweakwcs(iter_linear_fit):
    def est_tweakwcs(leg, leg_index):
        n = leg.d_xi.size
        if n < 2:
            return np.full(2, np.nan), np.full(2, np.nan), None
        uv = np.stack([leg.src_xi, leg.src_eta], axis=-1)
        xy = uv + np.stack([leg.d_xi, leg.d_eta], axis=-1)
        w = 2.0 / (leg.cov_stated[:, 0, 0] + leg.cov_stated[:, 1, 1])
        try:
            fit = iter_linear_fit(xy, uv, wuv=w, fitgeom="shift", nclip=3, sigma=(3.0, "rmse"))
        except Exception:  # noqa: BLE001 -- a third-party failure is a failed fit here
            return np.full(2, np.nan), np.full(2, np.nan), None
        shift = np.asarray(fit["shift"], dtype=float)
        mask = np.asarray(fit["fitmask"], dtype=bool)
        sig = np.full(2, np.nan)
        m = int(mask.sum())
        if m > 1:
            res = np.stack([leg.d_xi, leg.d_eta], axis=-1)[mask] - shift
            ww = w[mask]
            for axis in range(2):
                chi2 = np.sum(ww * res[:, axis] ** 2) / (m - 1)
                sig[axis] = np.sqrt(chi2 / ww.sum())
        return shift, sig, None

    return est_tweakwcs


# ---------------------------------------------------------------------------------------------
# Metrics


@dataclass
class Tally:
    """Per (case, estimator) accumulators."""

    err: list
    crb: list
    rep: list
    n_true: list
    wrong_group: list
    lost_bright: list = None     # per stack: bright true pairs within 3 sigma with p < 0.5

    @classmethod
    def new(cls):
        return cls([], [], [], [], [], [])

    def summary(self):
        err = np.array(self.err, dtype=float)
        crb = np.array(self.crb, dtype=float)
        rep = np.array(self.rep, dtype=float)
        n_true = np.array(self.n_true)
        n = len(err)
        ok = np.all(np.isfinite(err), axis=1)
        z = err[ok] / crb[ok]
        bad = ~ok
        bad[ok] = np.any(np.abs(z) > CATASTROPHIC, axis=1)
        cat = int(bad.sum())
        out = {"n": n, "cat": cat, "cat_n_true": sorted(int(k) for k in n_true[bad]),
               "no_fit": int((~ok).sum())}
        if z.size == 0:
            return out
        out["rms"] = float(np.sqrt(np.mean(z**2)))
        zz = np.mean(z**2, axis=1)
        boot = np.random.default_rng(SEED).integers(0, zz.size, size=(N_BOOT, zz.size))
        out["rms_lo"], out["rms_hi"] = (float(v) for v in
                                        np.sqrt(np.percentile(zz[boot].mean(axis=1), [16, 84])))
        core = np.all(np.abs(z) <= CATASTROPHIC, axis=1)
        if np.any(core):
            out["rms_core"] = float(np.sqrt(np.mean(z[core] ** 2)))
        mean = np.mean(z, axis=0)
        se = np.std(z, axis=0, ddof=1) / np.sqrt(len(z)) if len(z) > 1 else np.full(2, np.nan)
        k = int(np.argmax(np.abs(mean)))
        out["bias"], out["bias_se"] = float(abs(mean[k])), float(se[k])
        pull_ok = ok & np.all(np.isfinite(rep) & (rep > 0), axis=1)
        pull = err[pull_ok] / rep[pull_ok]
        if pull.size:
            out["pull_sd"] = float(np.sqrt(np.mean(pull**2)))
            out["pull95"] = float(np.percentile(np.abs(pull), 95))
            out["cover"] = float(np.mean(np.abs(pull) <= 1.96))
        sel = pull_ok & (n_true >= 10)
        if np.any(sel):
            out["calib"] = float(1.0 / np.sqrt(np.mean((err[sel] / rep[sel]) ** 2)))
        wg = [x for x in self.wrong_group if x is not None]
        if wg:
            out["wrong_group"] = float(np.mean(wg))
        lost = [x for x in self.lost_bright if x is not None]
        if lost:
            out["lost_bright"] = int(np.sum(lost))
        return out


def _verdicts(case, est_name, s):
    """PASS/FAIL strings against the issue targets that apply to this row."""
    out = []
    if "rms" not in s:
        return ["FAIL no finite fit"] if est_name in ("mixture", "spec") else []
    if est_name == "mixture":
        if case.mixture_rms_target is not None:
            ok = s["rms"] <= case.mixture_rms_target
            out.append(f"{'PASS' if ok else 'FAIL'} rms<={case.mixture_rms_target:.2f}")
        if case.cat_target:
            out.append(f"{'PASS' if s['cat'] == 0 else 'FAIL'} cat=0")
        out.append(f"{'PASS' if s['bias'] < 0.1 else 'FAIL'} |bias|<0.1")
        if "calib" in s:
            tol = 0.20 if case.errors_target else 0.10
            out.append(f"{'PASS' if abs(s['calib'] - 1) <= tol else 'FAIL'} "
                       f"sig+-{tol:.0%}")
        if case.errors_target and "lost_bright" in s:
            out.append(f"{'PASS' if s['lost_bright'] == 0 else 'FAIL'} "
                       f"lost-bright={s['lost_bright']}")
    elif est_name == "spec" and case.spec_sigma_target:
        if "calib" in s:
            out.append(f"{'PASS' if abs(s['calib'] - 1) <= 0.20 else 'FAIL'} sig+-20%")
    elif est_name == "spec" and case.spec_target:
        out.append(f"{'PASS' if s['rms'] <= 1.15 else 'FAIL'} rms<=1.15")
        if "calib" in s:
            out.append(f"{'PASS' if abs(s['calib'] - 1) <= 0.20 else 'FAIL'} sig+-20%")
    return out


def _fmt(s, key, fmt, width):
    v = s.get(key)
    return f"{'-' if v is None else format(v, fmt):>{width}}"


def _lost_bright(leg, membership):
    """Bright true counterparts (smallest quarter of stated errors) whose offset is within 3
    true sigma of the shift but whose membership is below 0.5 (issue 14 target: none)."""
    e = np.stack([leg.d_xi, leg.d_eta], axis=1) - leg.shift
    m2 = np.einsum("ni,nij,nj->n", e, np.linalg.inv(leg.cov), e)
    # a detection whose other candidate lies closer to the shift is ambiguous by construction
    closest = np.full(int(leg.det.max()) + 1 if leg.det.size else 0, np.inf)
    np.minimum.at(closest, leg.det, np.where(leg.is_true, np.inf, m2))
    sel = leg.is_true & leg.bright & (m2 <= 9.0) & (m2 < closest[leg.det])
    return int(np.count_nonzero(membership[sel] < 0.5))


def run_case(rng, case, estimators, n_stacks):
    tallies = {name: Tally.new() for name in estimators}
    for _ in range(n_stacks):
        legs = simulate_stack(rng, case)
        truth = sum(leg.shift for leg in legs)
        crb = np.sqrt(sum(leg.crb_var for leg in legs))
        n_true = min(int(leg.is_true.sum()) for leg in legs)
        main_leg = legs[0]
        if not case.twostep:
            true_groups = np.bincount(main_leg.group[main_leg.is_true],
                                      minlength=len(SEP_EDGES) + 1)[1:]
            best_group = int(np.argmax(true_groups)) + 1
        for name, est in estimators.items():
            shift = np.zeros(2)
            var = np.zeros(2)
            extra0 = None
            for i, leg in enumerate(legs):
                s, sig, extra = est(leg, i)
                shift = shift + s
                var = var + sig**2
                if i == 0:
                    extra0 = extra
            t = tallies[name]
            t.err.append(shift - truth)
            t.crb.append(crb)
            t.rep.append(np.sqrt(var))
            t.n_true.append(n_true)
            if name.startswith("mix"):
                t.wrong_group.append(None)
                t.lost_bright.append(None if extra0 is None else _lost_bright(main_leg, extra0))
            else:
                t.wrong_group.append(None if (extra0 is None or case.twostep)
                                     else bool(extra0 != best_group))
                t.lost_bright.append(None)
    return {name: t.summary() for name, t in tallies.items()}


def main(quick: bool = False, cases: str = "", n_stacks: int | None = None,
         baseline: str | None = None, only: str = "", oracle: bool = False) -> int:
    """Run the benchmark and print the table.

    ``cases``: comma-separated substrings selecting cases (default all); ``n_stacks``
    overrides the number of stacks per case.  Each case draws from its own seeded stream, so
    a case gives the same stacks whether run alone or with the others.  ``baseline``: a git
    revision whose spec and mixture estimators run beside today's on the same stacks (rows
    ``spec@base``, ``mix@base``).  ``only``: comma-separated estimator names to run (default
    all).  ``oracle``: also the rows ``mix-true`` (the mixture told the true errors),
    ``mix-ml`` (the mixture until issue 14, session 11: error model and choice of model on the
    plain likelihood),
    ``mix-fit1`` (its fitted error model always kept), ``mix-reml``/``mix-reml1`` (its error
    model on the restricted likelihood; the choice as shipped / always kept),
    ``mix-remlS``/``mix-remlS1`` (the same with the restricted term of the scale alone) and, in the
    outlier cases, ``mix-outl``
    (told the outlier model too), ``mix-outlA`` (its shape, not that the outliers are bright),
    ``mix-tail``/``mix-tailT`` (a fitted heavy-tailed true-match component, on the calibrated /
    the true errors), ``mix-lab``/``mix-labC`` (told which pairs are the outliers: the true /
    the calibrated errors): what the model could reach, not estimators (no targets).  Returns 1
    when a target check fails in a full run (run.py then fails), else 0; a ``quick`` run (or
    one with ``n_stacks``) has too few stacks to judge the targets: it prints them, returns 0.
    """
    estimators = {}
    spec_api = _load_spec()
    estimators["spec"] = make_est_spec(spec_api) if spec_api else None
    estimators["mixture"] = est_mixture
    estimators["mix-stated"] = est_mixture_stated
    if oracle:
        estimators["mix-true"] = est_oracle_errors
        estimators["mix-ml"] = est_oracle_ml
        estimators["mix-fit1"] = est_oracle_fitted
        estimators["mix-reml"] = est_oracle_reml
        estimators["mix-reml1"] = est_oracle_reml_fitted
        estimators["mix-remlS"] = est_oracle_reml_scale
        estimators["mix-remlS1"] = est_oracle_reml_scale_fitted
        estimators["mix-outl"] = est_oracle_outliers
        estimators["mix-outlA"] = lambda leg, i: est_oracle_outliers(leg, i, bright_only=False)
        estimators["mix-lab"] = est_oracle_labels
        estimators["mix-labC"] = lambda leg, i: est_oracle_labels(leg, i, calibrate=True)
        estimators["mix-tail"] = est_oracle_tail
        estimators["mix-tailT"] = lambda leg, i: est_oracle_tail(leg, i, true_errors=True)
    estimators["cauchy"] = est_cauchy
    ilf = _load_tweakwcs()
    estimators["tweakwcs"] = make_est_tweakwcs(ilf) if ilf else None
    if baseline:
        folder, base_xfmfit, base_mixture = load_baseline(baseline)
        estimators["spec@base"] = make_est_spec((base_xfmfit.PairSet, base_xfmfit.fit_leg_spec))
        estimators["mix@base"] = make_est_mixture_base(base_mixture)
    if only:
        keep = {k.strip() for k in only.split(",")}
        estimators = {k: v for k, v in estimators.items() if k in keep}
    active = {k: v for k, v in estimators.items() if v is not None}

    print(f"bench_accuracy: stk_xfm estimators vs the Cramér-Rao bound "
          f"({'quick' if quick else 'full'} run, seed {SEED})")
    if baseline:
        print(f"  baseline: {baseline} (git rev-parse: "
              f"{_rev_parse(baseline)}), extracted to {folder}")
    for name, est in estimators.items():
        if est is None:
            print(f"  {name}: n/a (not importable)")
    header = (f"{'case':<24}{'estimator':<10}{'N':>6}{'rms/CRB':>9}{'68% CI':>14}{'core':>7}"
              f"{'bias/CRB':>15}"
              f"{'cat':>11}{'pull sd':>9}{'pull95':>8}{'cov95':>7}{'sig/sct':>9}{'wrong-grp':>10}"
              f"  targets")
    print(header)
    print("-" * len(header))
    t0 = time.perf_counter()
    n_fail = 0
    wanted = [c.strip() for c in cases.split(",") if c.strip()]
    for index, case in enumerate(CASES):
        if wanted and not any(w in case.name for w in wanted):
            continue
        n = n_stacks or (case.n_quick if quick else case.n_full)
        rng = np.random.default_rng([SEED, index])
        results = run_case(rng, case, {k: v for k, v in active.items()
                                       if k not in OUTLIER_ROWS or case.outliers}, n)
        for name in estimators:
            if name not in results:
                if name in OUTLIER_ROWS:
                    continue        # outlier cases only
                print(f"{case.name:<24}{name:<10}{'n/a':>6}")
                continue
            s = results[name]
            bias = "-" if "bias" not in s else f"{s['bias']:.3f}({s['bias_se']:.3f})"
            verdicts = _verdicts(case, name, s)
            n_fail += sum(v.startswith("FAIL") for v in verdicts)
            ci = f"{s['rms_lo']:.3f}-{s['rms_hi']:.3f}" if "rms_lo" in s else "-"
            print(f"{case.name:<24}{name:<10}{s['n']:>6}{_fmt(s, 'rms', '.3f', 9)}{ci:>14}"
                  f"{_fmt(s, 'rms_core', '.3f', 7)}{bias:>15}"
                  f"{str(s['cat']) + '/' + str(s['n']):>11}{_fmt(s, 'pull_sd', '.3f', 9)}"
                  f"{_fmt(s, 'pull95', '.2f', 8)}{_fmt(s, 'cover', '.3f', 7)}"
                  f"{_fmt(s, 'calib', '.3f', 9)}"
                  f"{_fmt(s, 'wrong_group', '.3f', 10)}  {' '.join(verdicts)}")
        s = results.get("mixture", {})
        if s.get("cat"):
            more = " ..." if s["cat"] > 20 else ""
            print(f"{'':<24}mixture catastrophic failures: true pairs in those stacks "
                  f"{s['cat_n_true'][:20]}{more}; {s['no_fit']} of them fits stk_xfm would "
                  f"not apply")
        sys.stdout.flush()
    print("-" * len(header))
    print(f"{n_fail} target check(s) FAILED" if n_fail else "all target checks PASSED")
    if quick:
        print("(quick run: too few stacks for the targets to be judged; use the full run)")
    print(LEGEND)
    logging.getLogger(__name__).debug("bench_accuracy took %.1f s", time.perf_counter() - t0)
    return 1 if n_fail and not quick and not n_stacks else 0


def _rev_parse(rev):
    import subprocess

    proc = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse",
                           "--short", rev], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "?"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~30 s version")
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names")
    parser.add_argument("-n", type=int, default=None, help="stacks per case")
    parser.add_argument("--baseline", default=None,
                        help="git revision whose spec and mixture run beside today's")
    parser.add_argument("--only", default="", help="comma-separated estimator names to run")
    parser.add_argument("--oracle", action="store_true",
                        help="also the oracle rows mix-true, mix-ml, mix-fit1, mix-reml, mix-reml1, "
                             "mix-remlS, mix-remlS1, "
                             "mix-outl, mix-outlA, mix-lab, mix-labC, "
                             "mix-tail, mix-tailT (not estimators)")
    args = parser.parse_args()
    sys.exit(main(quick=args.quick, cases=args.cases, n_stacks=args.n, baseline=args.baseline,
                  only=args.only, oracle=args.oracle))
