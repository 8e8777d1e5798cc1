"""The absolute astrometric error of corrected detections (spec §5.5.7).  Pure: no file I/O.

§5.5.7 asks for "a single astrometric error value added in quadrature to the MLE-derived
errors" of every source, estimated over all sources from their offsets to the reference
after the correction, as CSC 2.0 did with SDSS (Rots & Budavári; the CSC 2.0 astrometric
error memo).  This module estimates that value.

Model
-----
A corrected detection *i* with stated 1-sigma error covariance ``C_i`` (arcsec^2, from the
CSC 95 % error ellipse, :func:`ellipse_covariance`) lies at offset ``d_i = (dxi, deta)``
from its reference counterpart.  With one systematic term ``s`` per axis, added in
quadrature, ``d_i ~ N2(0, C_i + s^2 I)``; the normalised offset

    x_i = sqrt(d_i^T (C_i + s^2 I)^-1 d_i)

then follows the Rayleigh distribution ``p(x) = x exp(-x^2 / 2)`` (for circular errors this
is ``|d_i| / sqrt(sigma_i^2 + s^2)``, the quantity the CSC memo histograms).

Chance matches (optional, ``background_radius_arcsec=R``): offsets are kept within ``R``
and a fraction ``1 - f`` of them is uniform over the disk of radius ``R``,

    L_i = f N2(d_i; 0, C_i + s^2 I) / P_i(R) + (1 - f) / (pi R^2),

``P_i(R) = 1 - exp(-R^2 / (2 sqrt(det V_i)))`` (the Gaussian's mass inside ``R``, exact for
circular ``V_i``, close for the mildly elliptical CSC ellipses).  When the reference density
differs from field to field, give each pair the expected number of chance pairs of its
detection, ``lambda_i = rho_i pi R^2``: with one fitted ``q`` (the fraction of detections with a
counterpart), a pair kept within ``R`` then has the density
``(q N_i + lambda_i / (pi R^2)) / (q P_i + lambda_i)`` (Poisson background plus at most one
counterpart), so that a pair in a crowded field is less likely true than one at high latitude.

Estimate
--------
``s`` (and ``f``) by maximum likelihood: a grid over ``s`` on a square-root scale, then
Brent's method around the best grid point; ``f`` is profiled out at each ``s`` (the score in
``f`` is monotonic: bisection).  The confidence interval is the profile-likelihood interval
``{s >= 0 : 2 (lnL_max - lnL_prof(s)) <= chi2_1(level)}``; at the boundary ``s = 0`` its
coverage is at least ``level`` (the statistic is then a 50:50 mixture of chi2_0 and
chi2_1).  The 95 % radius of the systematic term alone is ``SIGMA_TO_R95 * s`` (2.4477 s,
the convention of CSC's error ellipses and of the ~0.29 arcsec quoted for CSC 2.1).

Per-stack offsets (``stack_labels``).  Offsets measured after a fitted correction share
their stack's residual shift error ``e_k``, and that error is correlated with the offsets that
entered the fit: ``Var(d_i) = V_i - 2 Cov(d_i, e_k) + Var(e_k)``, which equals ``V_i - C_shift``
only when the fit weighted every pair by its true ``V_i^-1`` (not so for the spec's group rule
or a mixture fit with its own error scale).  Neither adding nor subtracting the reported shift
covariance is right then, and the bias does not shrink with the number of stacks.  With
``stack_labels`` each stack's mean offset ``delta_k`` is instead a free (nuisance) parameter:
the systematic term is estimated from the scatter of the offsets about their stack's own
mean, whatever shift was applied.  A free mean per stack would bias a plain maximum
likelihood low by about one pair per stack (Neyman-Scott), so the likelihood is the
restricted (REML) one, ``lnL(s) - 1/2 sum_k ln det(sum_{i in k} gamma_i V_i^-1)``
(Patterson & Thompson 1971; ``gamma_i`` the probability that pair i is true), exact for
Gaussian offsets.  ``delta_k`` and ``gamma_i`` are found by EM at the current ``s`` and the
fit is repeated until ``s`` settles.  The estimate is then the per-detection systematic term:
a source's absolute error is its stated error (+) ``s`` (+) its stack's shift error (the
transform's ``DXIERR``/``DETAERR``), each in quadrature.
"""

import math
from dataclasses import dataclass

import numpy as np

from .radii import R95_PER_SIGMA

__all__ = [
    "SIGMA_TO_R95",
    "AbsErrResult",
    "ellipse_covariance",
    "fit_absolute_error",
    "fit_absolute_error_by_group",
    "normalised_offsets",
    "implied_systematic",
    "rayleigh_cdf",
    "simulated_systematic",
    "rayleigh_pdf",
]

#: 95 % radius of a circular 2-D Gaussian in units of its per-axis sigma: sqrt(-2 ln 0.05).
SIGMA_TO_R95 = R95_PER_SIGMA

_GRID_POINTS = 40


@dataclass(frozen=True)
class AbsErrResult:
    """The §5.5.7 systematic term and its interval (all angles arcsec, per axis unless r95).

    Attributes
    ----------
    sigma_sys_arcsec : float
        Maximum-likelihood systematic 1-sigma per axis, added in quadrature; NaN when
        fewer than ``min_n`` offsets.
    sigma_lo_arcsec, sigma_hi_arcsec : float
        Profile-likelihood interval at ``level`` (``sigma_lo`` is 0 when the data allow 0).
    level : float
        Confidence level of the interval.
    r95_arcsec, r95_lo_arcsec, r95_hi_arcsec : float
        ``SIGMA_TO_R95`` times the three values above: the 95 % radius of the systematic term.
    f_true : float
        Fraction of true pairs (1.0 when no background was modelled); with ``chance_pairs``,
        the fraction ``q`` of detections with a counterpart.
    n : int
        Offsets used.
    n_dropped : int
        Offsets not used (non-finite, or beyond ``background_radius_arcsec``).
    loglike : float
        Maximum log-likelihood.
    at_upper_bound : bool
        The maximum lies at the upper end of the searched range (the estimate is a lower
        limit: the stated errors explain nothing).
    """

    sigma_sys_arcsec: float
    sigma_lo_arcsec: float
    sigma_hi_arcsec: float
    level: float
    r95_arcsec: float
    r95_lo_arcsec: float
    r95_hi_arcsec: float
    f_true: float
    n: int
    n_dropped: int
    loglike: float
    at_upper_bound: bool


def rayleigh_pdf(x):
    """Rayleigh density of unit scale, ``x exp(-x^2/2)`` (x >= 0)."""
    x = np.asarray(x, dtype=float)
    return np.where(x >= 0, x * np.exp(-0.5 * x * x), 0.0)


def rayleigh_cdf(x):
    """Rayleigh distribution function of unit scale, ``1 - exp(-x^2/2)`` (x >= 0)."""
    x = np.asarray(x, dtype=float)
    return np.where(x >= 0, -np.expm1(-0.5 * x * x), 0.0)


def ellipse_covariance(r0_arcsec, r1_arcsec, ang_deg, *, radius_to_sigma=1.0 / SIGMA_TO_R95):
    """Covariance (cxx, cyy, cxy) in (xi, eta), arcsec^2, of error ellipses.

    Parameters
    ----------
    r0_arcsec, r1_arcsec : array_like
        Semi-major and semi-minor radii (CSC's ``err_ellipse_r0/r1``: 95 % radii by default).
    ang_deg : array_like
        Position angle of the major axis, north (+eta) through east (+xi); NaN is read as
        0 (for a circle it does not matter).
    radius_to_sigma : float
        Factor from the given radii to 1-sigma (``1 / 2.4477`` for 95 % radii; 1 for sigmas).
    """
    a = np.asarray(r0_arcsec, dtype=float) * radius_to_sigma
    b = np.asarray(r1_arcsec, dtype=float) * radius_to_sigma
    pa = np.radians(np.nan_to_num(np.asarray(ang_deg, dtype=float)))
    ux, uy = np.sin(pa), np.cos(pa)
    a2, b2 = a * a, b * b
    cxx = a2 * ux * ux + b2 * uy * uy
    cyy = a2 * uy * uy + b2 * ux * ux
    cxy = (a2 - b2) * ux * uy
    return cxx, cyy, cxy


def normalised_offsets(dxi_arcsec, deta_arcsec, cxx, cyy, cxy=None, *, sigma_sys_arcsec=0.0):
    """Normalised offsets ``sqrt(d^T (C + s^2 I)^-1 d)``: Rayleigh(1) under the model.

    NaN where ``C + s^2 I`` is not positive definite.
    """
    dx = np.asarray(dxi_arcsec, dtype=float)
    dy = np.asarray(deta_arcsec, dtype=float)
    s2 = float(sigma_sys_arcsec) ** 2
    vxx = np.asarray(cxx, dtype=float) + s2
    vyy = np.asarray(cyy, dtype=float) + s2
    vxy = np.zeros_like(vxx) if cxy is None else np.asarray(cxy, dtype=float)
    det = vxx * vyy - vxy * vxy
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (vyy * dx * dx - 2.0 * vxy * dx * dy + vxx * dy * dy) / det
    # A covariance that is not positive definite (e.g. after subtracting a shift's covariance)
    # has no normalised offset: NaN, not a warning.
    bad = ~((det > 0) & (vxx > 0) & (q >= 0))
    q = np.where(bad, np.nan, q)
    return np.sqrt(q)


class _Likelihood:
    """Log-likelihood of s (f profiled out when a background is modelled)."""

    def __init__(self, dx, dy, cxx, cyy, cxy, radius, lam=None, reml=None):
        self.dx, self.dy = dx, dy
        self.lam = lam
        self.reml = reml  # (stack index per offset, gamma per offset, number of stacks) or None
        self.cxx, self.cyy, self.cxy = cxx, cyy, cxy
        self.radius = radius
        self.bg = None if radius is None else 1.0 / (math.pi * radius * radius)
        self._cache = {}
        self._f_start = 0.9

    def gaussian(self, s):
        s2 = s * s
        vxx, vyy, vxy = self.cxx + s2, self.cyy + s2, self.cxy
        det = vxx * vyy - vxy * vxy
        q = (vyy * self.dx**2 - 2.0 * vxy * self.dx * self.dy + vxx * self.dy**2) / det
        logn = -0.5 * q - 0.5 * np.log(det) - math.log(2.0 * math.pi)
        if self.radius is not None:
            # Mass of the Gaussian inside the kept disk (circular approximation).
            mass = -np.expm1(-0.5 * self.radius**2 / np.sqrt(det))
            self._mass = mass
            if self.lam is None:
                logn = logn - np.log(mass)
        return logn

    def profile(self, s):
        """(loglike, f) at s."""
        key = float(s)
        if key in self._cache:
            return self._cache[key]
        logn = self.gaussian(s)
        if self.bg is None:
            out = (float(np.sum(logn)), 1.0)
        elif self.lam is not None:
            out = self._profile_q(logn)
        else:
            out = self._profile_f(logn)
        if self.reml is not None:
            out = (out[0] - self.reml_penalty(s), out[1])
        self._cache[key] = out
        return out

    def reml_penalty(self, s):
        """1/2 sum_k ln det(sum_{i in k} gamma_i V_i^-1): the REML term of the stack means."""
        idx, gamma, n_stacks = self.reml
        axx, ayy, axy = _information(idx, gamma, n_stacks, self.cxx, self.cyy, self.cxy, s)
        det = axx * ayy - axy * axy
        use = det > 0
        return 0.5 * float(np.sum(np.log(det[use])))

    def _profile_q(self, logn):
        # Pair i is a true counterpart with probability f_i = q / (q + lam_i): q the fraction
        # of detections with a counterpart, lam_i the expected chance pairs of its detection.
        from scipy.optimize import minimize_scalar

        logb = math.log(self.bg)
        g = np.maximum(np.exp(np.minimum(logn - logb, 700.0)), 1e-300)
        lam = self.lam

        # A true counterpart falls inside R with probability P_i: among the pairs kept, the
        # density is (q N_i + lam_i / (pi R^2)) / (q P_i + lam_i), i.e. in units of B:
        # (q g_i + lam_i) / (q P_i + lam_i).
        mass = self._mass

        def negll(q):
            return -float(np.sum(np.log((q * g + lam) / (q * mass + lam))))

        res = minimize_scalar(negll, bounds=(1e-9, 1.0), method="bounded",
                              options={"xatol": 1e-7})
        q = float(res.x)
        if negll(1.0) <= res.fun:
            q = 1.0
        ll = -negll(q) + g.size * logb
        return ll, q

    def _profile_f(self, logn):
        # Work with ratio g_i = N_i / B (scaled to avoid overflow): L_i = B (f g_i + 1 - f).
        logb = math.log(self.bg)
        g = np.exp(np.minimum(logn - logb, 700.0))

        g = np.maximum(g, 1e-300)
        gm1 = g - 1.0

        def score(f):
            return float(np.sum(gm1 / (f * g + (1.0 - f))))

        if score(1.0) >= 0.0:
            f = 1.0
        elif score(0.0) <= 0.0:
            f = 0.0
        else:
            # The score falls monotonically in f: Newton steps kept inside a bisection bracket.
            lo, hi = 0.0, 1.0
            f = self._f_start if 0.0 < self._f_start < 1.0 else 0.5
            for _ in range(100):
                den = f * g + (1.0 - f)
                sc = float(np.sum(gm1 / den))
                if sc > 0.0:
                    lo = f
                else:
                    hi = f
                step = sc / float(np.sum((gm1 / den) ** 2))
                f_new = f + step
                if not lo < f_new < hi:
                    f_new = 0.5 * (lo + hi)
                if abs(f_new - f) < 1e-12 or hi - lo < 1e-12:
                    f = f_new
                    break
                f = f_new
            self._f_start = f
        ll = float(np.sum(np.log(f * g + (1.0 - f)))) + g.size * logb
        return ll, f


def _weights(cxx, cyy, cxy, s):
    s2 = s * s
    vxx, vyy = cxx + s2, cyy + s2
    det = vxx * vyy - cxy * cxy
    return vyy / det, vxx / det, -cxy / det


def _information(idx, gamma, n_stacks, cxx, cyy, cxy, s):
    """sum_{i in k} gamma_i V_i^-1 per stack k: (axx, ayy, axy) arrays of n_stacks."""
    wxx, wyy, wxy = _weights(cxx, cyy, cxy, s)
    return tuple(np.bincount(idx, weights=gamma * w, minlength=n_stacks)
                 for w in (wxx, wyy, wxy))


def _stack_means(dx, dy, cxx, cyy, cxy, s, idx, n_stacks, *, radius, lam, frac,
                 min_weight=2.0, iterations=50):
    """EM at fixed s and true-pair fraction: each stack's mean offset and each pair's gamma.

    Stacks whose expected number of true pairs is below ``min_weight`` keep a zero mean and
    drop out of the REML term (gamma set to 0 for them there).
    """
    wxx, wyy, wxy = _weights(cxx, cyy, cxy, s)
    s2 = s * s
    det = (cxx + s2) * (cyy + s2) - cxy * cxy
    mx = np.zeros(n_stacks)
    my = np.zeros(n_stacks)
    gamma = np.ones(dx.size)
    for _ in range(iterations):
        rx, ry = dx - mx[idx], dy - my[idx]
        if radius is not None:
            q = wxx * rx * rx + 2.0 * wxy * rx * ry + wyy * ry * ry
            dens = np.exp(-0.5 * q) / (2.0 * math.pi * np.sqrt(det)) * (math.pi * radius**2)
            if lam is None:
                mass = -np.expm1(-0.5 * radius**2 / np.sqrt(det))
                true = frac * dens / mass
                gamma = true / (true + (1.0 - frac))
            else:
                true = frac * dens
                gamma = true / np.maximum(true + lam, 1e-300)
        axx, ayy, axy = (np.bincount(idx, weights=gamma * w, minlength=n_stacks)
                         for w in (wxx, wyy, wxy))
        bx = np.bincount(idx, weights=gamma * (wxx * dx + wxy * dy), minlength=n_stacks)
        by = np.bincount(idx, weights=gamma * (wxy * dx + wyy * dy), minlength=n_stacks)
        weight = np.bincount(idx, weights=gamma, minlength=n_stacks)
        d = axx * ayy - axy * axy
        ok = (weight >= min_weight) & (d > 0)
        nx = np.where(ok, (ayy * bx - axy * by) / np.where(ok, d, 1.0), 0.0)
        ny = np.where(ok, (axx * by - axy * bx) / np.where(ok, d, 1.0), 0.0)
        moved = float(np.max(np.hypot(nx - mx, ny - my))) if n_stacks else 0.0
        mx, my = nx, ny
        if moved < 1e-7:
            break
    return mx, my, np.where(ok[idx], gamma, 0.0)


def _maximise(like, s_min, s_max, level):
    """ML s (grid then Brent) and its profile-likelihood interval: (s, lo, hi, ll, f, upper)."""
    from scipy.optimize import brentq, minimize_scalar
    from scipy.stats import chi2

    def negll(s):
        return -like.profile(s)[0]

    grid = s_min + (s_max - s_min) * np.linspace(0.0, 1.0, _GRID_POINTS) ** 2
    values = np.array([negll(s) for s in grid])
    k = int(np.argmin(values))
    lo_b, hi_b = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    if hi_b > lo_b:
        res = minimize_scalar(negll, bounds=(lo_b, hi_b), method="bounded",
                              options={"xatol": 1e-7 * max(s_max, 1e-3)})
        s_hat = float(res.x) if res.fun <= values[k] else float(grid[k])
    else:
        s_hat = float(grid[k])
    ll_max, f_hat = like.profile(s_hat)
    # Never let the refined maximum sit below a grid point (numerical safety).
    if -values[k] > ll_max:
        s_hat = float(grid[k])
        ll_max, f_hat = like.profile(s_hat)
    at_upper = s_hat >= s_max * (1.0 - 1e-6)

    thresh = 0.5 * float(chi2.ppf(level, 1))

    def excess(s):
        return ll_max - like.profile(s)[0] - thresh

    if s_hat <= s_min or excess(s_min) <= 0.0:
        s_lo = 0.0
    else:
        s_lo = float(brentq(excess, s_min, s_hat, xtol=1e-9))
    upper = s_max
    while excess(upper) <= 0.0 and upper < 64.0 * s_max:
        upper *= 2.0
    s_hi = float(brentq(excess, s_hat, upper, xtol=1e-9)) if excess(upper) > 0.0 else math.inf
    return s_hat, s_lo, s_hi, float(ll_max), float(f_hat), bool(at_upper)


def fit_absolute_error(dxi_arcsec, deta_arcsec, cxx, cyy, cxy=None, *, extra_cov=None,
                       background_radius_arcsec=None, chance_pairs=None, stack_labels=None,
                       level=0.95, min_n=5, sigma_max_arcsec=None):
    """Maximum-likelihood systematic error added in quadrature to the stated errors (§5.5.7).

    Parameters
    ----------
    dxi_arcsec, deta_arcsec : array_like
        Offsets of corrected detections from their reference counterparts (reference minus
        detection or the reverse: the model is symmetric), arcsec, in a local tangent plane.
    cxx, cyy, cxy : array_like
        Stated 1-sigma covariance of each offset, arcsec^2 (detection plus reference errors;
        :func:`ellipse_covariance` converts CSC ellipses).  ``cxy`` None: 0.
    extra_cov : tuple of array_like, optional
        (exx, eyy, exy) added to the stated covariance (e.g. each stack's fitted-shift
        covariance), arcsec^2.
    background_radius_arcsec : float, optional
        Model chance matches as uniform within this radius (offsets beyond it are dropped);
        None: every offset is a true counterpart.
    chance_pairs : array_like, optional
        With ``background_radius_arcsec``: the expected number of chance pairs of each
        offset's detection (reference density x pi R^2).  A pair is then true with
        probability ``q P_i / (q P_i + chance_pairs)``, one ``q`` fitted for all (the fraction
        of detections with a counterpart): right when the density differs from field to field.
        None: one fraction of true pairs for all offsets.
    stack_labels : array_like, optional
        The stack of each offset: each stack's mean offset becomes a nuisance parameter and
        the likelihood the restricted one (module docstring), so that the estimate does not
        depend on how well the applied shifts were fitted.  None: the offsets are taken
        about zero (the applied correction as exact, up to ``extra_cov``).
    level : float
        Confidence level of the profile-likelihood interval.
    min_n : int
        Fewer usable offsets give an all-NaN result.
    sigma_max_arcsec : float, optional
        Upper end of the search (default: three times the rms offset per axis, at least
        0.05 arcsec).

    Returns
    -------
    AbsErrResult
    """

    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}: must be within (0, 1)")
    dx = np.asarray(dxi_arcsec, dtype=float).ravel()
    dy = np.asarray(deta_arcsec, dtype=float).ravel()
    vxx = np.broadcast_to(np.asarray(cxx, dtype=float), dx.shape).astype(float)
    vyy = np.broadcast_to(np.asarray(cyy, dtype=float), dx.shape).astype(float)
    vxy = (np.zeros_like(dx) if cxy is None
           else np.broadcast_to(np.asarray(cxy, dtype=float), dx.shape).astype(float))
    if extra_cov is not None:
        exx, eyy, exy = (np.broadcast_to(np.asarray(e, dtype=float), dx.shape) for e in extra_cov)
        vxx, vyy, vxy = vxx + exx, vyy + eyy, vxy + exy
    lam = None
    if chance_pairs is not None:
        if background_radius_arcsec is None:
            raise ValueError("chance_pairs needs background_radius_arcsec")
        lam = np.broadcast_to(np.asarray(chance_pairs, dtype=float), dx.shape).astype(float)
    ok = (np.isfinite(dx) & np.isfinite(dy) & np.isfinite(vxx) & np.isfinite(vyy)
          & np.isfinite(vxy) & (vxx >= 0) & (vyy >= 0) & (vxx * vyy - vxy * vxy >= 0))
    if lam is not None:
        ok &= np.isfinite(lam) & (lam >= 0)
    radius = None
    if background_radius_arcsec is not None:
        radius = float(background_radius_arcsec)
        if not radius > 0:
            raise ValueError(f"background_radius_arcsec={radius}: must be > 0")
        ok &= np.hypot(dx, dy) <= radius
    n = int(ok.sum())
    n_dropped = int(dx.size - n)
    nan = math.nan
    if n < max(int(min_n), 1):
        return AbsErrResult(nan, nan, nan, level, nan, nan, nan, nan, n, n_dropped, nan, False)
    dx, dy, vxx, vyy, vxy = dx[ok], dy[ok], vxx[ok], vyy[ok], vxy[ok]
    if lam is not None:
        lam = lam[ok]

    rms = math.sqrt(float(np.mean(dx * dx + dy * dy)) / 2.0)
    s_max = float(sigma_max_arcsec) if sigma_max_arcsec is not None else max(3.0 * rms, 0.05)
    # An offset with zero stated error and s = 0 has infinite density: start just above 0.
    s_min = 0.0 if np.all(vxx * vyy - vxy * vxy > 0) else 1e-6 * s_max
    like = _Likelihood(dx, dy, vxx, vyy, vxy, radius, lam)
    s_hat, s_lo, s_hi, ll_max, f_hat, at_upper = _maximise(like, s_min, s_max, level)
    if stack_labels is not None:
        labels = np.asarray(stack_labels).ravel()
        if labels.size != ok.size:
            raise ValueError(f"stack_labels: {labels.size} labels for {ok.size} offsets")
        _, idx = np.unique(labels[ok], return_inverse=True)
        n_stacks = int(idx.max()) + 1
        # s_min > 0: the stack means make a zero-variance pair possible at s = 0.
        s_min = max(s_min, 1e-6 * s_max)
        for _ in range(6):
            mx, my, gamma = _stack_means(dx, dy, vxx, vyy, vxy, max(s_hat, s_min), idx,
                                         n_stacks, radius=radius, lam=lam, frac=f_hat)
            like = _Likelihood(dx - mx[idx], dy - my[idx], vxx, vyy, vxy, radius, lam,
                               reml=(idx, gamma, n_stacks))
            prev = s_hat
            s_hat, s_lo, s_hi, ll_max, f_hat, at_upper = _maximise(like, s_min, s_max, level)
            if abs(s_hat - prev) < 1e-5 * max(s_max, 1e-3):
                break
    return AbsErrResult(
        sigma_sys_arcsec=s_hat, sigma_lo_arcsec=s_lo, sigma_hi_arcsec=s_hi, level=level,
        r95_arcsec=SIGMA_TO_R95 * s_hat, r95_lo_arcsec=SIGMA_TO_R95 * s_lo,
        r95_hi_arcsec=SIGMA_TO_R95 * s_hi, f_true=float(f_hat), n=n, n_dropped=n_dropped,
        loglike=float(ll_max), at_upper_bound=bool(at_upper),
    )


def implied_systematic(cxx, cyy, cxy, txx, tyy, txy, *, s_max_arcsec=5.0):
    """The systematic term that true covariances imply over stated ones (the estimator's target).

    With stated covariances ``C_i`` and true ones ``T_i``, the model ``C_i + s^2 I`` is right
    only when every ``T_i - C_i`` is the same ``s^2 I``.  In general the maximum-likelihood
    estimate of :func:`fit_absolute_error` tends to the root of the expected score,

        sum_i tr(W_i (T_i - C_i - s^2 I) W_i) = 0,   W_i = (C_i + s^2 I)^-1

    (the pseudo-true value of a misspecified likelihood; White 1982), 0 when the score is
    negative at s = 0 (stated errors too large).  This is what a simulated campaign's report
    compares each group's estimate with: the injected term for stacks whose stated errors are
    exactly the relative ones, a larger one where a floor is missing too, 0 where the stated
    errors are inflated.  NaN rows are left out; NaN when none is left.
    """
    arrs = [np.asarray(a, dtype=float).ravel() for a in (cxx, cyy, cxy, txx, tyy, txy)]
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrs])
    cxx, cyy, cxy, txx, tyy, txy = (a[ok] for a in arrs)
    if cxx.size == 0:
        return math.nan

    def score(s):
        wxx, wyy, wxy = _weights(cxx, cyy, cxy, s)
        s2 = s * s
        dxx, dyy, dxy = txx - cxx - s2, tyy - cyy - s2, txy - cxy
        w2xx, w2yy, w2xy = wxx * wxx + wxy * wxy, wyy * wyy + wxy * wxy, wxy * (wxx + wyy)
        return float(np.sum(w2xx * dxx + w2yy * dyy + 2.0 * w2xy * dxy))

    from scipy.optimize import brentq

    if score(0.0) <= 0.0:
        return 0.0
    if score(s_max_arcsec) > 0.0:
        return math.inf
    return float(brentq(score, 0.0, s_max_arcsec, xtol=1e-9))


def simulated_systematic(cxx, cyy, cxy, txx, tyy, txy, chance_pairs, *, radius_arcsec,
                         replicas=2, seed=0):
    """What :func:`fit_absolute_error`, with its chance-pair model, finds when the offsets
    follow the true covariances: the estimator's own target on a simulation, by simulation.

    One row per detection: stated covariance ``C``, true covariance ``T`` (NaN: the detection
    has no counterpart) and its expected chance pairs.  Each replica draws a counterpart
    offset ``N(0, T)`` for each detection that has one and ``Poisson(chance_pairs)`` chance
    pairs uniform within ``radius_arcsec``; the replicas are fitted together, as the report
    fits the campaign's pairs (stack means are 0 here, so none are fitted).

    Why not :func:`implied_systematic`: that is the root of the Gaussian model's expected
    score.  Where ``T - C`` is one ``s^2 I`` for all (one error regime) the two agree (the
    injected 0.12" regime of ``stk_simpop``: 0.1199 vs 0.1200).  A group that mixes regimes
    (stated errors right, too large, missing floors of different sizes) is a scale mixture,
    heavier-tailed than any single ``C + s^2 I``; the chance-pair component, never empty,
    takes part of the widest pairs' tail and the maximum lies lower (issue 17: the 10,000-stack
    population's "all" group 0.1348 here and 0.1351 from its real offsets, against 0.1406).
    The report's interval is an interval for this value.  NaN when no row is usable.
    """
    rng = np.random.default_rng(seed)
    arrs = [np.asarray(a, dtype=float).ravel() for a in (cxx, cyy, cxy, txx, tyy, txy,
                                                          chance_pairs)]
    cxx, cyy, cxy, txx, tyy, txy, lam = arrs
    usable = (np.isfinite(cxx) & np.isfinite(cyy) & np.isfinite(cxy) & np.isfinite(lam)
              & (lam >= 0))
    has = usable & np.isfinite(txx) & np.isfinite(tyy) & np.isfinite(txy) & (txx > 0)
    if not has.any():
        return math.nan
    l11 = np.sqrt(txx[has])
    l21 = txy[has] / l11
    l22 = np.sqrt(np.maximum(tyy[has] - l21**2, 0.0))
    rows = np.flatnonzero(usable)
    parts = []
    radius = float(radius_arcsec)
    for _ in range(int(replicas)):
        z1, z2 = rng.standard_normal((2, l11.size))
        n_ch = rng.poisson(lam[rows])
        ch = np.repeat(rows, n_ch)
        r = radius * np.sqrt(rng.uniform(size=ch.size))
        a = rng.uniform(0.0, 2.0 * math.pi, ch.size)
        parts.append((np.r_[l11 * z1, r * np.cos(a)], np.r_[l21 * z1 + l22 * z2, r * np.sin(a)],
                      np.r_[np.flatnonzero(has), ch]))
    dx = np.concatenate([p[0] for p in parts])
    dy = np.concatenate([p[1] for p in parts])
    k = np.concatenate([p[2] for p in parts])
    res = fit_absolute_error(dx, dy, cxx[k], cyy[k], cxy[k], background_radius_arcsec=radius,
                             chance_pairs=lam[k])
    return float(res.sigma_sys_arcsec)


def fit_absolute_error_by_group(groups, dxi_arcsec, deta_arcsec, cxx, cyy, cxy=None, **kwargs):
    """:func:`fit_absolute_error` per group label (e.g. instrument, off-axis bin).

    Parameters
    ----------
    groups : array_like
        One label per offset; offsets labelled None or NaN are left out.
    other parameters
        As :func:`fit_absolute_error` (``extra_cov``, ``chance_pairs`` and ``stack_labels``
        are split by group too).

    Returns
    -------
    dict
        label -> AbsErrResult, labels in sorted order.
    """
    labels = np.asarray(groups, dtype=object)
    arrays = [np.asarray(a, dtype=float) for a in (dxi_arcsec, deta_arcsec, cxx, cyy)]
    cxy_arr = None if cxy is None else np.asarray(cxy, dtype=float)
    extra = kwargs.pop("extra_cov", None)
    extra = None if extra is None else [np.asarray(e, dtype=float) for e in extra]
    lam = kwargs.pop("chance_pairs", None)
    lam = None if lam is None else np.broadcast_to(np.asarray(lam, dtype=float),
                                                   arrays[0].shape)
    stacks = kwargs.pop("stack_labels", None)
    stacks = None if stacks is None else np.asarray(stacks)
    keep = np.array([g is not None and not (isinstance(g, float) and math.isnan(g)) for g in labels],
                    dtype=bool)
    out = {}
    for label in sorted(set(labels[keep].tolist()), key=str):
        m = keep & (labels == label)
        out[label] = fit_absolute_error(
            *(a[m] for a in arrays), None if cxy_arr is None else cxy_arr[m],
            extra_cov=None if extra is None else tuple(e[m] for e in extra),
            chance_pairs=None if lam is None else lam[m],
            stack_labels=None if stacks is None else stacks[m], **kwargs)
    return out
