r"""The ``mixture`` estimator of ``stk_xfm``: a likelihood with an explicit chance-match model.

Owns the pure computation of a translation from matched pairs that keeps
every pair (no separation groups), gives each pair its full 2x2 error
covariance, and models chance candidates at the stack's reference density.
numpy/scipy only; no file I/O and no parameter reading here (the front end
``stk_xfm`` reads the pairs file and writes the diagnostics).

Model
-----
Detection *j* has candidates *k* (pairs) with offsets
:math:`\mathbf d_k = (\Delta\xi_k, \Delta\eta_k)` (reference minus
detection, arcsec) and pair covariances :math:`\Sigma_k` (detection ellipse
+ reference error + systematic floor, :func:`pair_covariance`).  For a shift
:math:`\mathbf s` the true counterpart's offset is
:math:`\mathbf d \sim N(\mathbf s, \Sigma)`; chance candidates form a
Poisson process of uniform density :math:`\rho` (``density_per_arcmin2`` /
3600, per arcsec^2).  A detection has a true counterpart in the reference
catalogue with prior probability *q*.

Only candidates inside the **window** count: a disk of radius
:math:`R_w = R - |\mathbf s_c|` centred on the current shift
:math:`\mathbf s_c` (R = ``match_radius_arcsec``).  It is the largest disk
around the shift that lies inside the circle in which candidates were
searched (radius R around the detection), so everything it holds was
observable; being centred on the shift, it truncates the true-offset
distribution symmetrically and does not pull the estimate towards zero (the
specification's 0-1" group does).  The window is re-centred after each fit
until its content stops changing.  A pair lying on the window's edge can flip
in and out for ever, the shift moving a little each time (seen in ~0.3 % of
simulated stacks with chance matches); when a window repeats, the pairs the
cycle flipped are left out by shrinking the window until they lie just outside
it.  Any disk around the shift inside the match circle is a valid window, so
the fit stays unbiased and self-consistent.

With :math:`N_k(\mathbf s) = N(\mathbf d_k; \mathbf s, \Sigma_k)`,
:math:`S_j = \sum_{k \in j} N_k`, :math:`P_j` the probability that a true
counterpart falls inside the window (the mass of :math:`N(0, \Sigma)` in a
disk of radius :math:`R_w`, averaged over the detection's candidates; it does
not depend on s because the window moves with the shift) and
:math:`\mu = \rho \pi R_w^2`, the probability of the candidates seen in the
window, given that there is at least one (a detection without candidates is
never listed), is, up to factors free of (s, q)::

    L_j = [rho (1 - q P_j) + q S_j] / [1 - exp(-mu) (1 - q P_j)]

(the numerator: "no counterpart, or a counterpart outside the window, and
every candidate is chance" plus "candidate k is the counterpart, the others
are chance").  :math:`\log L = \sum_j \log L_j` is maximised by EM:

* E step: membership of pair k, :math:`r_k = q N_k / [\rho(1 - qP_j) + qS_j]`
  (the posterior probability that k is the detection's true counterpart);
* M step: :math:`\mathbf s = (\sum_k r_k \Sigma_k^{-1})^{-1} \sum_k r_k
  \Sigma_k^{-1} \mathbf d_k` (exact for fixed memberships), and *q* by a
  safeguarded Newton search of :math:`\partial \log L / \partial q = 0` on
  [0, 1].

With :math:`\rho = 0` and one candidate per detection every membership is 1
and the first M step is the inverse-covariance weighted mean, exactly.

The covariance of the shift is the inverse of the observed information
(minus the Hessian of log L, Louis 1982) in (s, q), restricted to s;
analytically::

    d2 logL/ds2  = sum_k r_k (g_k g_k^T - Sigma_k^-1) - sum_j G_j G_j^T
    d2 logL/dsdq = sum_j rho G_j / (q D_j)
    d2 logL/dq2  = sum_j [ -(S_j - rho P_j)^2 / D_j^2 + e_j^2 / E_j^2 ]

with :math:`g_k = \Sigma_k^{-1}(\mathbf d_k - \mathbf s)`,
:math:`G_j = \sum_{k\in j} r_k g_k`, :math:`D_j` and :math:`E_j` the
numerator and denominator of :math:`L_j`, :math:`e_j = e^{-\mu}P_j`.  When
*q* sits on a bound of [0, 1] or :math:`\rho = 0` (q then is not
identifiable) the s block alone is inverted.

That covariance is right when the pair errors are.  Two guards follow it (issue 17).  When the
error model was calibrated on the same pairs (below) it is scaled by N / (N - 2), N = 2 n_eff:
the model's variance was fitted about the fitted shift, which took two of the N dimensions (the
REML correction).  And it is never smaller than the offsets' own scatter says: the sandwich
(HC2) covariance ``A^-1 (sum_j G_j G_j^T / (1 - h_j)) A^-1`` (``A = sum_k r_k Sigma_k^-1``,
h_j the detection's leverage) scales it up by ``max(1, tr(cov^-1 sandwich) / 2)``.  With
fewer than ~30 true pairs a missing floor often cannot be calibrated, and then the bright pairs'
understated errors set a sigma the offsets contradict.  Measured on 1,000 stacks of the
stk_simpop population (stated errors without its 0.12" absolute term): pull MAD 1.36, 1.24,
1.15 with 3-6, 6-10, 10-30 matches without the floor at the scatter, 1.13, 1.03, 1.09 with it
(the degrees-of-freedom correction alone: calibrated fits' pull MAD 1.085 -> 1.032).  When a
calibration is not kept (2 dlogL below the margin) the stated errors' shift stays, but its
covariance is not smaller than the fitted model's either (the data did not show that model
wrong): on 75 such population stacks (10-29 matches) pull MAD 1.47 -> 1.43, within 1.96 sigma
84.7 -> 89.3 %.  Those stacks' own calibration finds too small a floor (forced, its sigma 0.047"
against 0.056" with the true errors): only ``sys_floor`` repairs them.  On the accuracy
benchmark's cases the sigma/scatter moves by the figures of ``share/doc/stk_xfm.txt``.  What
no guard can give with 1-5 matches is the missing term itself: ``sys_floor`` (e.g. the
section 5.5.7 term of a first campaign pass) gives it (2,000 population stacks: pull MAD
0.88-1.02 by n_match bin).

The likelihood can have several modes (chance alignments, a tight tail of
wrong pairs), so unless ``x0`` is given the fit starts globally: a smoothed
score ``sum_j log(rho' + S_j(s)/2)`` (every pair, covariances widened by the
grid step squared, ``rho'`` = rho floored) is evaluated on a 0.2" grid of
shifts within the match circle and the bounds; its best four local maxima are
followed by EM down to no smoothing, the four best maxima of the unsmoothed
score on the same grid are polished by EM, and the best of these eight
candidates by the unsmoothed score -- less ``|s|^2 / (2 sigma_p^2)``, a weak
Gaussian prior on the shift (``start_prior_arcsec``, sigma_p = 1" by default)
-- starts the windowed fit.  The prior only ranks competing modes (CSC 2.1
shifts are mostly under 0.4", the specification expects none beyond 3"): in a
stack with few true pairs among many chance ones, a chance alignment far from
zero no longer wins a near tie.  It never enters the fit itself, so it adds
no bias to the shift.  Measured on the benchmark's 2,000-stack 40 % false-match
set: 6 catastrophic fits (rms 1.20 x the bound) without it, 3 (1.13 x) with it;
no change on clean stacks, also for true shifts of 1.0-2.5".  A tighter prior
(sigma 0.54", from the CXC's published 99 % radius of Chandra's absolute
astrometry, 1.63") was measured and not adopted: no better on shifts drawn from
that distribution, and worse when the true shift is large (20 % false, 1.5-2.5":
4 catastrophic fits in 2,000 instead of 1).  Ranking the modes by the model's
own likelihood (with the truncation of the match circle at each shift) was also
measured and is worse for shifts above 1".

The start costs what the fit costs twice over (issue 11).  Its arithmetic was
made cheaper without changing what it computes: the two grids share one pass
over the offsets (the quadratic forms of every node and pair one matrix
product), a seed the two grids share is refined once, the seeds are refined
together (vectorised over the seeds, each taking the iterations it takes
alone), and the EM of the refinement does its 2x2 algebra in closed form; the
results agree with the one-at-a-time computation to rounding (on the accuracy
benchmark's 5,000 legs, calibrated and not: shifts within 2e-13").  A coarse-to-fine grid
(0.4" first, then the 0.2" grid around the best coarse maxima) was measured
and dropped: unless its patches cover most of the grid it misses the
narrow unsmoothed mode that wins in a few of a thousand 40 %-false stacks
(one such stack went from 0.2" to 1.4" off the truth), and with patches that
wide it saves little.  Session 7 cut it again, still computing the same thing: the
grid's sums over each detection's candidates are row gathers (numpy's ``reduceat``
along a (nodes, pairs) array cost ~4x the exponentials), its logarithms are taken of
products of a few dozen factors ``1 + S_j / (2 rho')`` (bounded so that no product
overflows), its matrix product is made in blocks OpenBLAS keeps on the calling
thread, the grid's geometry is computed once per radius and bound, and the
refinement's EM takes its responsibilities without a log-sum-exp (``rho' > 0``
keeps every denominator finite).  The start picks the same start as the
exhaustive elementwise search (test_mixture.py, on hard stacks too; the accuracy
benchmark's shifts agree to rounding).  Typical cost: ~1-1.5 ms for 10-80
detections (bench_speed, the cores table, gives the current figure).

Self-calibrated errors
----------------------
Real stated errors are often wrong: wavdetect's (and CSC's for bright
sources) carry no systematic floor, CSC's error ellipses can be 1.5-3x the
scatter (issue 14).  With ``calibrate=True`` (``stk_xfm syserr=fit``, the
default there) the pair covariances are ``k^2 Sigma_k + sigma_sys^2 I`` and the
scale k and floor sigma_sys (>= ``systematic_arcsec``) are fitted with the
shift by maximum likelihood: after the windowed fit with the stated errors,
an ECM loop alternates the M step for (k, sigma_sys) at fixed memberships
(Newton or Fisher scoring on (k^2, sigma_sys^2); the window's mass P_j is held;
restricted as the polish below is, since issue 11, session 12) with the
windowed fit, starting from generous errors (floor 0.5"): started from the
stated ones, a true counterpart whose error is understated gets a low
membership and cannot show it.  Holding P_j fits the error model of the
offsets inside the window, which the window truncates: too small for the
large-error pairs.  So the model is then polished on the observed likelihood
itself, restricted ("Restricted likelihood" below; P_j and mu recomputed for each
model; damped Newton on (log k,
sigma_sys^2) with its exact gradient and Hessian -- issue 11: the finite-difference
Newton it replaces cost 1.7x the rest of the fit and stopped ~1e-6 short of the maximum),
again alternating with the windowed fit.  The model maximises the likelihood plus a weak prior (issue 14): log k ~
N(0, 0.3^2) and sigma_sys half-normal with scale 0.15" above ``systematic_arcsec``
-- stated errors are usually wrong by less than a factor ~1.8 and miss a floor
of at most a few tenths of an arcsec; with tens of true pairs the data outweigh
it, with a few it keeps the fit from reading the chance pairs near the shift
as a floor.  The fitted model is kept when 2 (dlogL + dlog prior) >= 4 over the
stated errors (and the two are averaged, "Averaged" below), both likelihoods restricted,
on the pairs of the stated errors' window with each model's shift and q refitted there ("Same pairs" below), and
needs 6 effective true matches, counted
with the generous start errors or the stated ones, whichever finds more:
counted with the stated errors only, a stack of 10-14 true pairs whose bright
errors lacked a floor showed ~4 and was not calibrated, its bright true
counterparts left at membership 0 (issue 14).  The memberships and the
covariance of the shift then use the calibrated errors (the uncertainty of k,
sigma_sys itself is not propagated: second order for symmetric errors; the covariance's
degrees-of-freedom correction and its floor at the residuals' scatter, above, cover what
it costs with few pairs).

Why the prior and the truncation (issue 14, session 5): with right stated
errors the plain maximum-likelihood model beat them by 2 dlogL >= 2 in ~25 %
of the stacks, with k ~0.75-0.8 and a floor of 0.05-0.2" (the window's
truncation and a few chance pairs near the shift read as a narrower core plus
a floor), and those stacks' shifts were much worse than the stated errors'
(mean squared error / CRB^2 1.46 against 0.96 at 30 % false matches): rms/CRB
1.10 at 30 % and 1.20 at 40 % false matches against 1.04 and 1.11 with the
stated errors trusted.  A stricter margin alone (2 dlogL >= 4, 6, 10) traded
that for the missing-floor regime (1.05, 1.06, 1.07 and more rejected bright
counterparts); the one-parameter models chosen by AIC gained ~0.02 at 30 %.
Measured on the first 300 stacks of each case, side by side (prior and
truncation vs neither, each at its own margin): 30 % false 1.046 vs 1.108,
40 % false 1.113 vs 1.173, missing floor 1.051 vs 1.038, clean 1.0-1.5" 1.002
vs 1.015, wavdetect-like 0.998 vs 1.000, inflated 1.002 vs 1.024; the
benchmark's closing figures are in share/doc/stk_xfm.txt.  A calibration can
still land in a worse mode than the stated errors' (it is then not kept, and a
bright counterpart may stay rejected: stk_xfm warns, naming it).

Averaged (issue 14, session 6): the margin reads as prior odds exp(-2) on the fitted model, so
the posterior weight of the fitted model is ``w = 1 / (1 + exp(-(gain - 4) / 2))`` (gain = 2
(dlogL + dlog prior); w = 1/2 on the margin), and the reported shift is the models' average,
``w s_fit + (1 - w) s_stated``, with the mixture's covariance ``w C_fit + (1 - w) C_stated + w
(1 - w) d d^T`` (d = s_fit - s_stated; C_fit with its degrees-of-freedom correction, C_stated
not below it) instead of the winner's alone: a switch at the margin throws away what the loser
knew where the data hardly prefer either.  The memberships are the fitted model's -- its errors
and its q -- at that shift, in the window of the model the margin picks (whose q, window,
likelihood and error model are reported): with the stated errors' q, low exactly where they
call bright true counterparts whose errors lack a floor chance, the fitted model's memberships
still lost them.  Measured side by side on the same 1,000 stacks per case (``bench_accuracy
--baseline 851b3d2``, winner alone -> averaged): rms/CRB missing floor 1.049 -> 1.042 (1.074 ->
1.063 at shifts below 0.3"), bright outliers 1.138 -> 1.128 (1.129 -> 1.117), 30 % / 40 % false
1.054 / 1.133 -> 1.049 / 1.127, 20 % false 1.041 -> 1.036, clean 1.018 -> 1.016, inflated,
wavdetect-like and crowded unchanged to 0.001; sigma/scatter 0.88-1.12 either way; bright true
counterparts lost with a missing floor 5 -> 2, and 10 -> 0 at shifts below 0.3" (the averaging
alone took them to 7, the fitted model's q to 0), with outliers 1 -> 1.  Session 10: where the
window of the model the margin picks is not the fitted model's own (it was not kept), the
fitted model's q is refitted on that window (as the gain refits it, "Same pairs" below), not
carried from its own window, whose other pairs set it: shifts and covariances bit for bit the
same; memberships changed in 3 of 5,000 missing-floor stacks (one bright true counterpart at
2.2 true sigma kept, 0.31 -> 1.00; lost 6 -> 5; in the two others true counterparts lost
membership: summed squared membership error over the three +0.2), 4-6 % of the stacks at 30 /
40 % false matches (that error summed over them -4.6 % / -2.6 %; better in 91, worse in 99 of
190 stacks), one stack with bright outliers (3.0 -> 1.0), 3 of 1,000 at 60/arcmin^2 (+0.01),
none in 1,000 each of clean, inflated, wavdetect-like and |s| < 0.3" cases.

Same pairs (issue 14, session 6): each fit's likelihood is conditional on the pairs inside its
own window, a disk about its own shift, so the two models' windows can hold different pairs (a
pair near the edge, common with many chance candidates) and the difference of their likelihoods
then adds or drops a whole log density that says nothing about the errors. The gain is
therefore computed on the stated errors' window, both models' shift and q refitted there by EM
from their own fits (the window held). Measured side by side on the same 1,000 stacks per case
(``bench_accuracy --baseline 4f08268``, each fit's own window -> the same pairs): rms/CRB 40 %
false 1.127 -> 1.110 (1.107 -> 1.099 at shifts of 1.0-1.5"), 30 % false 1.049 -> 1.040, 20 %
false 1.036 -> 1.030 (1.063 -> 1.055 at 1.5-2.5"), missing floor 1.042 -> 1.035 (1.063 -> 1.059
at shifts below 0.3"), clean, inflated, wavdetect-like, with bright outliers, crowded and
two-step within 0.001; sigma/scatter 0.88-1.12; lost bright counterparts unchanged (2, 0, 1);
+6 % of a calibrated fit's cost (two EM runs on a held window, to 1e-5). On the benchmark's
full 10,000 stacks at 40 % false matches: 1.091 (syserr=fixed 1.088).

What the margin cannot settle (issue 14, session 6): with a few tens of true pairs or fewer, a
floor missing from the few brightest detections' errors and a few bright outliers (blends,
wrong identifications, chance pairs near the shift) leave the same data -- a few bright pairs
far off in units of their stated errors -- and q, poorly identified at low density (the
likelihood is conditional on the detections listed), lets the stated errors call them chance at
little cost.  Before the averaging (above), the lost bright counterparts of the missing-floor
regime (10 in 1,000 stacks with shifts below 0.3") were all in fits not kept, whose
stated-error shift had q 0.05-0.23 and was off by 1.4-3.4 of the bound on an axis, the fitted
model's (q = 1) by 0.2-1.8; the outliers' rms (1.14 x; 1.02 with them removed, on 300
stacks) comes from
stacks of 10-20 true pairs whose fitted floor absorbs them; the 40 %-false gap to syserr=fixed
(1.133 vs 1.107) from the 9 % of stacks whose kept model reads chance pairs near the shift as a
floor.  Measured and not adopted, before the averaging, side by side on the first 300 stacks of
each case (current -> variant): the likelihood made unconditional with the stack's number of
detections, which pins q -- missing floor 1.045 -> 1.022 and no lost counterpart, but outliers
1.141 -> 1.346, 30 % / 40 % false 1.046 / 1.113 -> 1.077 / 1.163, 30 % false with the density
misreported 1.015 -> 1.956; a broad component for true counterparts (5 % with 1" added in
quadrature) -- outliers 1.109, missing floor 1.089 (no lost counterpart), clean 1.014 (and on
top of the averaging and the same pairs: outliers 1.124 -> 1.116, missing floor below 0.3"
1.032 -> 1.140, sigma/scatter 0.77-0.81); a second
calibration start at a 0.15" floor, the better penalised likelihood kept -- outliers 1.127 at
1.8 x the cost; the floor prior's scale 0.25" -- missing floor 1.038 (none lost), 40 % false
1.138, outliers 1.162; the margin at 2 -- missing floor 1.039 (2 lost), 30 % / 40 % false 1.060
/ 1.138.

What no calibration can reach (issue 14, session 7; ``bench_accuracy --oracle``, rms / bound
on the same stacks): told the TRUE errors, this model gives 1.076 with two bright outliers per
stack (calibrated 1.128) and 1.011 with a missing floor (calibrated 1.059, 5,000 stacks); told
the outliers' distribution too, 1.046, and only their shape (all a heavier-tailed model of
true counterparts could learn), 1.067.  The three bright counterparts still lost (1,000 stacks
per case) are in stacks whose likelihood does not prefer the true errors (twice within 1 in log
L of the stated errors with q ~0.02, once 5 below a scale 1.26 without floor).  Measured and not
adopted, side by side on 1,000 stacks per case: a prior q^a on q (a = 0.25-3) -- missing floor
1.035 -> 1.023-1.028 and no counterpart lost, outliers 1.128 -> 1.16-1.25 with catastrophic
fits; the scale's prior at 0.15 -- no change (outliers 1.127); the shift averaged over a grid of
floors (scale 1, even prior odds on the stated errors) -- outliers 1.092, missing floor below
0.3" 1.046, but 30 % / 40 % false 1.040 / 1.110 -> 1.071 / 1.175.

A heavier tail, and where the missing floor's loss is (issue 14, session 8; ``bench_accuracy
--oracle``, rows ``mix-tail``, ``mix-tailT``, ``mix-fit1``): a true counterpart's offset ``(1 -
eps) N(s, C) + eps N(s, C + tau^2 I)``, eps and tau fitted with k and sigma_sys, the shift
averaged with this model's by the tail's posterior weight (prior odds exp(-2)) -- outliers 1.128
-> 1.102 (1,000 stacks), told the true errors 1.070 (the outliers' shape known: 1.067): not
1.05, and the fitted tail takes part of the floor (fitted 0.036" low on average, 0.011" high
without it).  Not adopted.  With a missing floor (5,000 stacks): true errors 1.011, the fitted
error model always kept 1.040 (its floor 0.044" +- 0.062" low, about half of it the floor's
prior), averaged with the stated errors 1.059; the averaging is what keeps 40 % false matches at
1.112 (the fitted model always kept 1.170, the stated errors 1.109; 3,000 stacks).  Without the
floor's prior the missing floor gains 0.011 and the outliers / 40 % false lose 0.024 / 0.006
(the first 2,000 stacks of each, 1,000 with outliers).  Told the true errors this model still
loses 3 bright true counterparts in those 5,000 stacks (a near tie with a chance candidate of
the same detection, a fit with q 0.04).

Restricted likelihood (issue 14, session 11): the error model is fitted about the fitted shift,
which took two dimensions of the offsets, so on the plain likelihood its variance comes out low
-- the n / (n - 2) of a variance about a sample's own mean, most for the floor, which the bright
pairs the shift leans on carry (a 0.2" floor's square ~20 % low with 12 pairs) -- and the stated
errors then win the comparison where a floor is missing.  The polish maximises the restricted
likelihood instead (REML; Patterson & Thompson 1971, Harville 1977): the observed likelihood
plus ``-1/2 log det I``, ``I = sum_k r_k C_k^-1`` the shift's information at the state's
memberships (:func:`_restricted_objective`, :func:`_restricted_ab`: exact derivatives); and the
two error models are compared on their restricted likelihoods too (:func:`_gain_same_window`:
each model's term at its refit's memberships, :func:`_restricted_log_det`).  Both models fit the
same shift, so their restricted likelihoods compare their variance models; the term is the
second-order form of the likelihood integrated over the shift, and is capped at log(A / 2 pi),
A = (2 ``max_shift``)^2 the shift's domain, where that integral cannot exceed the domain's area
times the likelihood's maximum -- a model that calls every pair chance (memberships ~0) has a
likelihood flat in the shift, and the uncapped term rewarded it without bound.  Measured side by
side on the benchmark's stacks (``bench_accuracy --oracle``: row ``mix-ml`` the plain likelihood,
as shipped before; paired difference of rms/CRB +- its standard error): missing floor 1.0587 ->
1.0485 (5,000 stacks, -0.0102 +- 0.0008; the 68 % interval of 1.0485 is [1.041, 1.057], so
within noise of 1.05), wavdetect-like -0.0018 +- 0.0013; costs elsewhere: 30 % / 40 % false
(10,000 stacks each) 1.0532 / 1.0908 -> 1.0558 / 1.0944 (+0.0026 +- 0.0005 / +0.0036 +- 0.0007),
inflated errors 1.0084 -> 1.0125 (+0.0041 +- 0.0014), clean +0.0011 to +0.0018 (0.990-1.002),
bright outliers 1.1280 -> 1.1334 (+0.0054 +- 0.0030); sigma/scatter +0.01 to +0.03 (the
covariance's degrees-of-freedom correction, itself a first-order REML correction, is kept, and
now partly counts the bias twice), within 0.94-1.08 in the error regimes; bright true
counterparts lost with a missing floor 5 -> 4 of 5,000 (the four are session 10's: a tie, two
whose likelihood prefers a low q, one outside a wrong mode's window).

The M step on the restricted likelihood too (issue 11, session 12): the ECM loop's M step
(:func:`_fit_error_model`) maximises its expected complete log likelihood plus the same ``-1/2
log det I`` at the held memberships, so the polish starts near its own maximum instead of where
the plain M step left the model: on the speed benchmark's stack mix 2.7 -> 1.0 polishes and
11.5 -> 2.5 objective evaluations per stack, the mixture's CPU 14.2 -> 10.5 ms per stack. The
maximum it ends at is the polish's as before, but the calibration has several local optima and
the path to them changed: paired with session 11's code on the benchmark's stacks (rms/CRB,
paired difference +- its standard error), missing floor 1.0485 -> 1.0486 (5,000 stacks, +0.0000
+- 0.0001), inflated, wavdetect-like and clean within +-0.0002, 30 % / 40 % false 1.0558 ->
1.0558 (+0.0000 +- 0.0001) / 1.0944 -> 1.0943 (10,000 stacks each; the 40 % branch alone,
against session 11's figure on the same stacks); with bright outliers 1.1334 -> 1.1394 (+0.0060
+- 0.0029; 26 of 1,000 stacks moved by more than 0.1 CRB, to other local optima -- a target
missed before and after); sigma/scatter within 0.002 (0.011 with bright outliers); bright true
counterparts lost with a missing floor 4 -> 3 of 5,000.

Work not done twice (issue 11, session 13), bit for bit the same results: a calibrated fit
returns to the same error models again and again (the stated errors', the fitted one's), so each
model's covariances, inverses, disk and window terms are kept for the fit
(:meth:`_Problem.use_model`); the fitted model's memberships at the stated errors' shift are
made only where no average replaces them; the stated errors' principal axes are computed once
per fit (:func:`_stated_axes`); the M step reuses each accepted point's pieces. On the speed
benchmark's stack mix a calibrated fit makes ~6.2 windowed fits (the stated errors', the
generous errors', ~4.2 in the M-step loop), ~42 EM iterations, ~5.2 M steps (~30 objective
evaluations in all) and ~1 polish.  Cutting the M-step loop short costs more in the polish than it
saves (1 or 2 steps: the fit 1.23x, 1.12x dearer); a 10x looser tolerance saves ~3 % and moves
shifts by up to 8e-6" (not bit for bit: not done).  Session 16: the M step's and the polish's
2 x 2 algebra (~13 scoring steps and ~2.5 polish trials per calibrated fit) on Python floats,
LAPACK's solve and eigenvalue test of a 2 x 2 emulated to the bit (:func:`_solve2`,
:func:`_negative_definite2`), the restricted term's gradient and Hessian as floats: the fit
~1.10x cheaper, every result the same to the bit.

The effective number of true matches is :math:`n_{eff} = \sum_k r_k`; the
chance fraction reported is :math:`1 - n_{eff} / n_{det}` over the
detections given (those whose candidates all fall outside the window count as
having no true counterpart).  Degenerate data never raise: the result says
what happened in ``message`` and ``converged``; only malformed arguments
raise :class:`~stk_astrometry.errors.FitError`.
"""

import functools
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .core.radii import R95_PER_SIGMA as _R95_PER_SIGMA
from .errors import FitError

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_SIGMA_ARCSEC",
    "R95_PER_SIGMA",
    "MixtureFit",
    "angle_missing",
    "disk_probability",
    "fit_mixture",
    "pair_covariance",
]

#: CSC error-ellipse radii are 95 % radii of a 2-D Gaussian: r95 = sqrt(-2 ln 0.05) sigma
#: (the one definition is in :mod:`stk_astrometry.core.radii`).
R95_PER_SIGMA = _R95_PER_SIGMA

#: Floor on each principal 1-sigma of a pair covariance (arcsec): keeps a
#: zero or singular covariance from taking infinite weight.
MIN_SIGMA_ARCSEC = 1.0e-3

_GRID_STEP_ARCSEC = 0.2
_N_STARTS = 4
_ANNEAL = ((_GRID_STEP_ARCSEC**2, 1e-3), ((_GRID_STEP_ARCSEC / 3) ** 2, 1e-3),
           ((_GRID_STEP_ARCSEC / 10) ** 2, 1e-4), (0.0, 1e-5))
_MAX_EM_ITER = 500
# error calibration: at least this many effective true matches; outer iterations; the range
# of the scale and the largest floor (arcsec) the fit may choose
_CAL_MIN_NEFF = 6.0
_CAL_MAX_ITER = 30
_CAL_SCALE_RANGE = (0.1, 10.0)
_CAL_MAX_FLOOR = 3.0
_CAL_START_FLOOR = 0.5
# keep the fitted error model when 2 (dlogL + dlog prior) >= this.  Measured without the prior
# on 200-stack benchmark runs: the chi2(2) 95 % point (5.99) kept the stated errors too often
# when a small floor was missing (9 lost bright counterparts, sigma/scatter 0.81), 0 (always
# fit) cost ~2 % rms/CRB on clean stacks; 2 gave 4 lost, 0.88.  With the prior (issue 14,
# session 5; 300 stacks per case): 2 gave 40 % false 1.138, 4 gave 1.113 and the same lost
# bright counterparts (1 in 300 missing-floor stacks).
_CAL_LR_MIN = 4.0
# the error model's weak prior (issue 14): log k ~ N(0, 0.3^2), sigma_sys half-normal 0.15"
# beyond the given floor (module docstring, "Self-calibrated errors"); None = plain ML
_CAL_PRIOR = (0.3, 0.15)
_CAL_POLISH_ITER = 20
# quadrature nodes of disk_probability over [0, pi) (its docstring gives its accuracy)
_N_THETA = 32
_MAX_WINDOW_ITER = 20
# EM tolerances (shift arcsec, q) of the refits that compare the error models on the same pairs:
# a likelihood at its maximum is flat: 1e-5 leaves it within ~1e-6 of the converged one
_GAIN_TOL = (1e-5, 1e-5)
_TOL_ARCSEC = 1.0e-10
# the start grid's matrix product in blocks of at most this many multiply-adds: OpenBLAS keeps
# a product this small on the calling thread (above it, its threads cost more CPU than the
# product on a loaded or pinned core: _score_nodes)
_BLAS_BLOCK = 262144
# the start grid's score where every detection has one pair: its (pairs x widenings, nodes)
# array made at most this many elements at a time (_score_streamed)
_SCORE_BLOCK = 262144
_Q_MIN = 1.0e-9


@dataclass(frozen=True, eq=False)
class MixtureFit:
    """Result of :func:`fit_mixture`.

    Attributes
    ----------
    d_xi, d_eta : float
        The shift, arcsec; corrected = source + shift.  NaN when no fit.
    cov : ndarray, shape (2, 2)
        Covariance of (d_xi, d_eta), arcsec^2, from the curvature of log L.
    n_eff : float
        Effective number of true matches (sum of memberships).
    chance_fraction : float
        Estimated fraction of the detections given with no true counterpart.
    membership : ndarray, shape (n,)
        Per input pair (input order): probability that it is its detection's
        true counterpart.  0 for pairs dropped (non-finite) or outside the
        final window.
    n_iter : int
        EM iterations, summed over window re-centrings.
    converged : bool
        True when EM and the window both settled and the shift is inside
        the bounds.
    message : str
        What happened, including what was dropped or floored.
    q : float
        Fitted prior probability that a detection has a counterpart.
    window_radius_arcsec : float
        Radius of the final window around the shift.
    n_window : int
        Pairs inside the final window.
    n_dropped : int
        Pairs dropped for non-finite offsets or covariances.
    n_floored : int
        Pairs whose covariance was floored (singular or near-singular).
    log_likelihood : float
        Maximised log L (up to an additive constant).
    err_scale : float
        Scale k on the stated pair covariances (1 when not calibrated).
    sys_floor : float
        Systematic floor sigma_sys, arcsec, added in quadrature to both axes: the pair
        covariances used are ``k^2 Sigma_stated + sigma_sys^2 I``.  The fixed
        ``systematic_arcsec`` when not calibrated, else fitted (never below it).
    calibrated : bool
        k and sigma_sys were fitted (``calibrate=True`` and enough true matches).
    """

    d_xi: float
    d_eta: float
    cov: np.ndarray
    n_eff: float
    chance_fraction: float
    membership: np.ndarray
    n_iter: int
    converged: bool
    message: str
    q: float = float("nan")
    window_radius_arcsec: float = float("nan")
    n_window: int = 0
    n_dropped: int = 0
    n_floored: int = 0
    log_likelihood: float = float("nan")
    err_scale: float = 1.0
    sys_floor: float = 0.0
    calibrated: bool = False

    @property
    def failure(self):
        """Why this fit is not a measurement of the shift, or None when it is.

        A fit fails when it has no finite shift or covariance, did not converge, or found no
        true match: fewer than one effective true match (``n_eff < 1``) or the prior *q* at its
        floor.  In the last case EM converges happily to "every candidate is chance", and the
        shift is then wherever the flat likelihood left it (errors of 1e4 arcsec and more).
        """
        if not (np.isfinite(self.d_xi) and np.isfinite(self.d_eta)):
            return f"no fit ({self.message})"
        if not self.converged:
            return f"not converged ({self.message})"
        if not self.n_eff >= 1.0:
            return f"no true match found (n_eff = {self.n_eff:.2g} < 1)"
        if self.q <= 2.0 * _Q_MIN:
            return f"no true match found (q at its floor {_Q_MIN:g})"
        if not np.all(np.isfinite(self.cov)):
            return "covariance not finite"
        return None

    @property
    def d_xi_err(self):
        """1-sigma error of d_xi, arcsec."""
        return float(np.sqrt(self.cov[0, 0]))

    @property
    def d_eta_err(self):
        """1-sigma error of d_eta, arcsec."""
        return float(np.sqrt(self.cov[1, 1]))


def _as_1d(name, value, n=None):
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0 and n is not None:
        arr = np.full(n, float(arr))
    if arr.ndim != 1:
        raise FitError(f"mixture fit: {name} must be a 1-D array, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise FitError(f"mixture fit: {name} has {arr.shape[0]} entries, expected {n}")
    return arr


def angle_missing(err_r0, err_ang_deg):
    """Pairs whose ellipse angle is unknown (non-finite) but whose major radius is known.

    :func:`pair_covariance` gives them the circle of the major axis; callers count them.
    """
    r0 = _as_1d("err_r0", err_r0)
    ang = _as_1d("err_ang", err_ang_deg, r0.shape[0])
    return np.isfinite(r0) & ~np.isfinite(ang)


def pair_covariance(err_r0, err_r1, err_ang_deg, ref_sigra=None, ref_sigdec=None, *,
                    systematic_arcsec=0.0):
    """Full 2x2 covariance of each pair's offset, in (xi, eta) axes.

    ``Sigma = R diag(a^2, b^2) R^T + diag(sigra^2, sigdec^2) + sys^2 I`` with
    a = r0 / 2.4477, b = r1 / 2.4477 the detection ellipse's 1-sigma
    semi-axes (CSC radii are 95 %, formats.md), the major axis at position
    angle ``err_ang`` from north (+eta) through east (+xi), i.e. along the
    unit vector (sin PA, cos PA) in (xi, eta).

    An unknown angle (NaN: stk_match writes it when ``err_ellipse_ang`` is absent) gives the
    circle of the major axis, ``a^2 I``: it contains the ellipse whatever its orientation, so
    the pair keeps a conservative weight instead of being dropped (:func:`angle_missing`
    finds these pairs).

    Parameters
    ----------
    err_r0, err_r1 : array_like
        95 % semi-major and semi-minor radii, arcsec.
    err_ang_deg : array_like
        Position angle of the major axis, degrees, north through east; NaN = unknown.
    ref_sigra, ref_sigdec : array_like or None, optional
        Reference 1-sigma errors along xi and eta, arcsec (ALLWISE
        sigra/sigdec; None or 0 for Gaia, whose errors are negligible).
    systematic_arcsec : float, optional
        Systematic floor added in quadrature to both axes, arcsec.  Pass it
        either here or to :func:`fit_mixture`, not both.

    Returns
    -------
    ndarray, shape (n, 2, 2)
        arcsec^2.  Non-finite inputs give non-finite entries (the fit drops
        and counts them).

    Raises
    ------
    FitError
        Arrays of different lengths or a negative/non-finite systematic.
    """
    r0 = _as_1d("err_r0", err_r0)
    n = r0.shape[0]
    r1 = _as_1d("err_r1", err_r1, n)
    ang = _as_1d("err_ang", err_ang_deg, n)
    sys_arcsec = float(systematic_arcsec)
    if not np.isfinite(sys_arcsec) or sys_arcsec < 0:
        raise FitError(f"mixture fit: systematic_arcsec must be finite and >= 0, got {systematic_arcsec!r}")
    a = r0 / R95_PER_SIGMA
    b = r1 / R95_PER_SIGMA
    no_angle = angle_missing(r0, ang)
    if np.any(no_angle):
        # circle of the major axis: both "axes" a, any orientation
        b = np.where(no_angle, a, b)
        ang = np.where(no_angle, 0.0, ang)
    pa = np.radians(ang)
    u = np.stack([np.sin(pa), np.cos(pa)], axis=-1)      # major axis (xi, eta)
    v = np.stack([np.cos(pa), -np.sin(pa)], axis=-1)     # minor axis
    cov = (a**2)[:, None, None] * u[:, :, None] * u[:, None, :] \
        + (b**2)[:, None, None] * v[:, :, None] * v[:, None, :]
    if ref_sigra is not None:
        cov[:, 0, 0] += _as_1d("ref_sigra", ref_sigra, n) ** 2
    if ref_sigdec is not None:
        cov[:, 1, 1] += _as_1d("ref_sigdec", ref_sigdec, n) ** 2
    cov[:, 0, 0] += sys_arcsec**2
    cov[:, 1, 1] += sys_arcsec**2
    return cov


def disk_probability(cov, radius_arcsec, *, n_theta=_N_THETA):
    """Mass of N(0, cov) inside a centred disk of the given radius.

    ``P = 1 - 1/pi * Integral_0^pi exp(-R^2 / (2 V(t))) dt`` with ``V(t) = u(t)^T cov u(t)``
    for the unit vector u(t).  In polar coordinates the radial integral is done in closed form,
    ``P = 1 - 1/(2 pi sqrt(det)) Integral exp(-R^2 Q(t)/2) / Q(t) dt`` with ``Q = u^T cov^-1 u``;
    in the principal axes (variances s1^2 >= s2^2) the substitution ``tan t = (s2/s1) tan p``
    gives ``dt / Q(t) = s1 s2 dp`` and ``Q(t) = 1 / V(p)``, hence the form above.  Both
    integrands are periodic and the trapezoid rule converges geometrically, but ``1/Q`` peaks
    sharply for a thin ellipse while ``exp(-R^2 / 2V)`` stays smooth.  With 32 nodes the
    largest error over radii from 0.01 s2 to 10 s1 is 1e-11 at an axis ratio of 3:1, 1e-7 at
    5:1, 6e-5 at 10:1 and 3.4e-3 at 30:1 (the ``1/Q`` form: 5e-10, 5e-6, 3.2e-3 and 0.21), the
    worst near R ~ s2.  For a circular Gaussian this is ``1 - exp(-R^2 / 2 sigma^2)``.

    Parameters
    ----------
    cov : ndarray, shape (n, 2, 2)
        Positive-definite covariances.
    radius_arcsec : float or ndarray
    n_theta : int, optional
        Quadrature nodes over [0, pi) (Q has period pi).

    Returns
    -------
    ndarray, shape (n,)
    """
    return _disk_mass(_disk_terms(cov, n_theta), radius_arcsec)


@functools.lru_cache(maxsize=4)
def _node_terms(n_theta):
    """(cos^2, cos sin, sin^2) of :func:`disk_probability`'s quadrature nodes as rows (1,
    n_theta), for :func:`_disk_terms`: the same for every call with ``n_theta`` nodes, so made
    once (read-only arrays; issue 11, a fit makes ~7 models' terms)."""
    t = (np.arange(n_theta) + 0.5) * (np.pi / n_theta)
    c, s = np.cos(t), np.sin(t)
    out = (c[None, :] ** 2, (c * s)[None, :], s[None, :] ** 2)
    for a in out:
        a.flags.writeable = False
    return out


def _disk_terms(cov, n_theta=_N_THETA):
    """The part of :func:`disk_probability` free of the radius, for covariances (n, 2, 2):
    ``V(t) = u(t)^T cov u(t)`` at the quadrature nodes, (n, n_theta).  A window fit asks for
    the same pairs' masses at many radii (:meth:`_Problem.disk_terms`)."""
    cov = np.asarray(cov, dtype=float)
    c2, cs, s2 = _node_terms(n_theta)
    return (c2 * cov[:, 0, 0, None]
            + cs * (cov[:, 0, 1] + cov[:, 1, 0])[:, None]
            + s2 * cov[:, 1, 1, None])


def _disk_mass(v, radius_arcsec):
    """:func:`disk_probability` from its terms ``V(t)`` (:func:`_disk_terms`): one minus the
    mean over the nodes of ``exp(-R^2 / 2V)``.  With V > 0 each term lies in (0, 1], so their
    mean does too (rounding is monotonic and 1 is exact): the mass is in [0, 1] with no clip,
    and exactly 0 at R = 0."""
    r2 = np.asarray(radius_arcsec, dtype=float) ** 2
    if r2.ndim:     # one radius per row (a single one, the windows', needs no broadcast)
        r2 = np.broadcast_to(r2, v.shape[:1])[:, None]
    # the mean over the nodes as .mean's own sum and division, without its wrapper (issue 11)
    return 1.0 - np.add.reduce(np.exp(-0.5 * r2 / v), axis=1) / v.shape[1]


def _floor_covariances(cov):
    """Symmetrise and floor each covariance's eigenvalues at MIN_SIGMA_ARCSEC^2.

    Returns the floored covariances and a mask of the rows changed.
    """
    cov = 0.5 * (cov + cov.swapaxes(1, 2))       # (the methods: np's wrappers cost more)
    a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    half_tr = 0.5 * (a + c)
    disc = np.sqrt((0.5 * (a - c)) ** 2 + b**2)
    lam_lo = half_tr - disc
    floor = MIN_SIGMA_ARCSEC**2
    bad = lam_lo < floor
    if bad.any():
        lam_hi = half_tr[bad] + disc[bad]
        # eigenvector of the larger eigenvalue
        vx = np.where(np.abs(b[bad]) > 0, b[bad], np.where(a[bad] >= c[bad], 1.0, 0.0))
        vy = np.where(np.abs(b[bad]) > 0, lam_hi - a[bad], np.where(a[bad] >= c[bad], 0.0, 1.0))
        norm = np.hypot(vx, vy)
        vx, vy = vx / norm, vy / norm
        hi = np.maximum(lam_hi, floor)
        lo = np.full_like(hi, floor)
        fixed = np.empty((int(bad.sum()), 2, 2))
        fixed[:, 0, 0] = hi * vx**2 + lo * vy**2
        fixed[:, 1, 1] = hi * vy**2 + lo * vx**2
        fixed[:, 0, 1] = fixed[:, 1, 0] = (hi - lo) * vx * vy
        cov[bad] = fixed
    return cov, bad


class _Problem:
    """Pairs of one fit, sorted canonically and grouped by detection."""

    def __init__(self, det, dx, dy, cov, rho, radius, max_shift):
        self.det = det
        self.d = np.stack([dx, dy], axis=-1)
        self.set_cov(cov)
        self.rho = rho
        self.radius = radius
        self.max_shift = max_shift
        self._window_groups = {}
        self._models = {}
        # (stated, lam, vx, vy, projectors) of :func:`_stated_axes`, made on first use
        self._axes = None

    def set_cov(self, cov):
        """Replace the pair covariances (error calibration)."""
        self.cov = cov
        det_c = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
        self.inv = np.empty_like(cov)
        self.inv[:, 0, 0] = cov[:, 1, 1] / det_c
        self.inv[:, 1, 1] = cov[:, 0, 0] / det_c
        self.inv[:, 0, 1] = self.inv[:, 1, 0] = -cov[:, 0, 1] / det_c
        self.log_norm = -np.log(2.0 * np.pi) - 0.5 * np.log(det_c)
        self._disk = None
        self._terms = {}
        self._model = None

    def use_model(self, stated, scale, floor):
        """``set_cov(_calibrated(stated, scale, floor)[0])`` for the error model (scale, floor)
        of the stated covariances ``stated`` (the same array for every call on one problem).
        A fit returns to the same few models again and again (the stated errors', the fitted
        one's: issue 11), so each model's covariances, their inverses, disk terms and window
        terms are kept and restored, the same arrays as computed the first time."""
        if (scale, floor) in self._models:
            self.use_kept(scale, floor)
        else:
            self.set_cov(_calibrated(stated, scale, floor)[0])
            self.keep_model(scale, floor)

    def use_kept(self, scale, floor):
        """The error model (scale, floor) kept before (:meth:`keep_model`) made current again
        (KeyError if it was not kept)."""
        model = self._models[(scale, floor)]
        self.cov, self.inv, self.log_norm, self._disk, self._terms = model
        self._model = model

    def keep_model(self, scale, floor):
        """Keep the current covariances as the error model (scale, floor) of
        :meth:`use_model` (the problem is made with the stated errors')."""
        self._model = self._models[(scale, floor)] = [self.cov, self.inv, self.log_norm,
                                                      self._disk, self._terms]

    def disk_terms(self):
        """:func:`_disk_terms` of every pair's covariance, computed once per ``set_cov``."""
        if self._disk is None:
            self._disk = _disk_terms(self.cov)
            if self._model is not None:
                self._model[3] = self._disk
        return self._disk

    def window_groups(self, idx):
        """``(starts, counts, single)`` of the detections of the pairs ``idx`` (sorted):
        :func:`_group_starts`, :func:`_group_counts`, and whether each detection has one
        pair there.  Computed once per window (a fit meets the same few windows again and
        again); read-only arrays."""
        key = idx.tobytes()
        got = self._window_groups.get(key)
        if got is None:
            starts = _group_starts(self.det[idx])
            counts = _group_counts(starts, idx.size)
            starts.flags.writeable = counts.flags.writeable = False
            got = self._window_groups[key] = (starts, counts, starts.size == idx.size)
        return got

    def groups(self, repeats=1):
        """Each detection's candidates as row gathers, for ``repeats`` copies of the pairs
        stacked one after the other: ``(first, [(sel, extra), ...])`` such that, for an
        array ``e`` of ``repeats * n`` rows, ``s = e[first]`` then ``s[sel] += e[extra]``
        for each step gives the sums over each detection's candidates (``repeats * n_det``
        rows, in the order of ``np.add.reduceat``)."""
        cache = self.__dict__.setdefault("_groups", {})
        if repeats not in cache:
            n = self.det.size
            starts = _group_starts(self.det)
            counts = _group_counts(starts, n)
            n_det = starts.size
            first = (starts[None, :] + n * np.arange(repeats)[:, None]).ravel()
            more = []
            for k in range(1, int(counts.max(initial=1))):
                sel = np.flatnonzero(counts > k)
                sel_all = (sel[None, :] + n_det * np.arange(repeats)[:, None]).ravel()
                more.append((sel_all, first[sel_all] + k))
            cache[repeats] = (first, more)
        return cache[repeats]

    def window_pieces(self, idx):
        """The pieces of the pairs ``idx``'s log Gaussian densities that do not depend on the
        shift, for the current covariances: ``(dx, dy, i00, 2 i01, i11, i01, log_norm, bx,
        by)``, C^-1 = [[i00, i01], [i01, i11]] and (bx, by) = C^-1 d, so that at the shift s,
        with (rx, ry) = d - s, ``log_norm - 0.5 (i00 rx^2 + 2 i01 rx ry + i11 ry^2)`` is each
        pair's log density (:func:`_log_density`).  Kept with the
        window terms of the covariances (:meth:`use_model`): the final memberships and the
        model choice ask again for the windows EM has just run on (issue 11).  Read-only."""
        key = (None, idx.tobytes())
        got = self._terms.get(key)
        if got is None:
            inv = self.inv[idx]
            d = self.d[idx]
            inv_d = np.einsum("nij,nj->ni", inv, d)
            got = (d[:, 0].copy(), d[:, 1].copy(), inv[:, 0, 0].copy(), 2 * inv[:, 0, 1],
                   inv[:, 1, 1].copy(), inv[:, 0, 1].copy(), self.log_norm[idx],
                   inv_d[:, 0], inv_d[:, 1])
            for a in got:
                a.flags.writeable = False
            self._terms[key] = got
        return got


def _log_density(dx, dy, i00, two_i01, i11, log_norm, s0, s1):
    """Each pair's log Gaussian density at the shift (s0, s1), from the pieces of
    :meth:`_Problem.window_pieces`: ``log_norm - 0.5 (i00 rx^2 + 2 i01 rx ry + i11 ry^2)``
    with (rx, ry) = d - s (:func:`_fit_window`, :func:`_fit_window_final`)."""
    rx = dx - s0
    ry = dy - s1
    return log_norm - 0.5 * (i00 * (rx * rx) + two_i01 * rx * ry + i11 * (ry * ry))


def _group_starts(det_sorted):
    """Start index of each run of equal detection ids (input sorted by id)."""
    if det_sorted.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.concatenate(([True], det_sorted[1:] != det_sorted[:-1])))


def _group_counts(starts, n):
    """Size of each group of :func:`_group_starts` (n elements in all)."""
    return np.diff(np.append(starts, n))


def _group_logsumexp_counts(logv, starts, counts):
    """log of the per-group sums of exp(logv) (groups given by starts and counts).  (The
    array's own ``repeat``: np.repeat's Python wrapper costs three times the copy, issue 11.)"""
    mx = np.maximum.reduceat(logv, starts)
    return mx + np.log(np.add.reduceat(np.exp(logv - mx.repeat(counts)), starts))


def _start_by_grid(prob, prior_sigma=None):
    """Global start: the best local mode of a smoothed likelihood on a grid of shifts.

    The score is ``sum_j log(rho_g + S_j(s) / 2)`` over every pair (no window,
    q = 1/2, ``rho_g`` = rho floored so that far nodes stay finite), with each
    covariance widened by the grid step squared so that no peak falls between
    nodes.  The four best local maxima of that smoothed grid are each followed
    down to no smoothing (:func:`_refine_starts`), the four best of the
    unsmoothed grid are polished by EM, and the candidate with the highest
    unsmoothed score wins: smoothing can merge or reorder close modes.

    Both grids share one pass over the offsets (:func:`_score_nodes` with two widenings), and a
    (seed, stages) pair met twice -- the two grids often peak on the same node -- is refined
    once.  The grid's geometry depends on the radius and the bound only (:func:`_grid`).
    """
    gx, gy, keep, nodes, feat = _grid(prob.radius, prob.max_shift)
    if nodes.shape[0] == 0:
        return np.zeros(2)
    rho_g = max(prob.rho, 0.05 / (np.pi * prob.radius**2))
    seeds = []
    h = _GRID_STEP_ARCSEC
    # every widening of _ANNEAL (h^2 first, 0 last) in one pass, for the EM, and by widening
    # for the grid and the ranking: the same numbers, element by element, as one at a time
    inv = _widened_inverse(prob, np.array([[widen] for widen, _ in _ANNEAL]))
    by_widen = {widen: tuple(x[k] for x in inv) for k, (widen, _) in enumerate(_ANNEAL)}
    scores = _score_nodes(prob, nodes, rho_g, (h**2, 0.0), feat=feat, inverses=by_widen)
    for sc_nodes, stages in zip(scores, (_ANNEAL, _ANNEAL[-1:]), strict=True):
        score = np.full(gx.shape, -np.inf)
        score[keep] = sc_nodes
        for c in _local_maxima(score, keep)[:_N_STARTS]:
            seeds.append(((float(gx.ravel()[c]), float(gy.ravel()[c])), stages))
    # a (seed, stages) pair met twice gives the same candidate: refine it once
    unique = list(dict.fromkeys(seeds))
    cands = _refine_starts(prob, np.array([seed for seed, _ in unique]), rho_g,
                           [stages for _, stages in unique], inv)
    # the unsmoothed start score compares candidates on the same data; the
    # model's own likelihood (q fitted, with the selection term) was tried
    # and favours spurious modes near the rim of the match circle
    scores = _score(prob, cands, rho_g, 0.0, by_widen)
    best, best_score = None, -np.inf
    for s, sc in zip(cands, scores, strict=True):
        if prior_sigma:
            sc -= 0.5 * float(s @ s) / prior_sigma**2  # ranks the modes only (docstring)
        if sc > best_score:
            best, best_score = s, sc
    return best


@functools.lru_cache(maxsize=8)
def _grid(radius, max_shift):
    """The start's grid of shifts for a match radius and a bound (arcsec): the square grid's
    node coordinates ``gx, gy`` (2-D), the mask ``keep`` of its usable nodes (within the
    match circle less a step, and the bound), those nodes (m, 2) and their quadratic
    features (6, m) (:func:`_score_nodes`).  The same for every fit with the same radius and
    bound, so computed once (read-only arrays)."""
    h = _GRID_STEP_ARCSEC
    lim = min(max_shift, radius)
    n = int(np.ceil(lim / h))
    g = np.arange(-n, n + 1) * h
    gx, gy = np.meshgrid(g, g, indexing="ij")
    keep = (np.hypot(gx, gy) <= radius - h) & (np.abs(gx) <= max_shift) \
        & (np.abs(gy) <= max_shift)
    nodes = np.stack([gx[keep], gy[keep]], axis=-1)
    feat = _node_features(nodes)
    for a in (gx, gy, keep, nodes, feat):
        a.flags.writeable = False
    return gx, gy, keep, nodes, feat


def _node_features(nodes):
    """(1, gx, gy, gx^2, gx gy, gy^2) of each node (m, 2), as rows: shape (6, m)."""
    gx, gy = nodes[:, 0], nodes[:, 1]
    return np.stack([np.ones_like(gx), gx, gy, gx * gx, gx * gy, gy * gy])


def _local_maxima(score, keep):
    """Flat indices of the grid's local maxima (8 neighbours), best first."""
    ni, nj = score.shape
    padded = np.full((ni + 2, nj + 2), -np.inf)
    padded[1:-1, 1:-1] = score
    is_max = keep.copy()
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_max &= score >= padded[1 + di:1 + di + ni, 1 + dj:1 + dj + nj]
    cand = np.flatnonzero(is_max.ravel())
    if cand.size == 0:
        cand = np.array([int(np.argmax(score))])
    return cand[np.argsort(-score.ravel()[cand], kind="stable")]


def _widened_inverse(prob, widen):
    """Each pair's covariance widened by ``widen`` (arcsec^2) on both axes, inverted in closed
    form: (i00, i01, i11, log_norm), ``log_norm = -log(2 pi) - log(det) / 2`` -- the pieces
    of the pair's Gaussian log density that the start's grid score and its EM share.  A column
    of widenings (k, 1) gives (k, n) arrays, a row per widening."""
    a = prob.cov[:, 0, 0] + widen
    c = prob.cov[:, 1, 1] + widen
    b = prob.cov[:, 0, 1]
    det_c = a * c - b * b
    return c / det_c, -b / det_c, a / det_c, -np.log(2.0 * np.pi) - 0.5 * np.log(det_c)


def _score_nodes(prob, nodes, rho_g, widths, feat=None, inverses=None):
    """:func:`_score` on the grid's nodes (m, 2), one row per widening in ``widths``.

    The quadratic forms of every (node, pair) are one matrix product: with r = d - g,
    r^T C^-1 r = d^T C^-1 d - 2 g^T C^-1 d + g^T C^-1 g, i.e. six numbers per pair times the
    node's (1, gx, gy, gx^2, gx gy, gy^2) (``feat``, (6, m), from :func:`_node_features`
    unless given), for all widenings at once.  (Elementwise, the grid's score was about 60 %
    of the start's cost; the two agree to ~1e-13 relative.)

    The rest is arranged for numpy's per-element costs (issue 11): the sums over each
    detection's candidates are row gathers in pair-major layout (:meth:`_Problem.groups`; a
    ``reduceat`` along the pairs of a (nodes, pairs) array took ~4x the exponentials), and
    ``sum_j log(rho_g + S_j / 2) = n_det log rho_g + sum_j log(1 + S_j / (2 rho_g))`` takes
    one logarithm per node for every ``k`` detections, of the product of their ``1 + S_j / (2
    rho_g)``: each factor is at most ``1 + sum_k max N_k / (2 rho_g)``, so ``k`` is chosen
    for the product to stay below e^700 (the logarithm was ~45 % of the score's cost; the
    product's rounding, k ulps relative, is far below the score's own).  The matrix product
    is made in blocks of at most ``_BLAS_BLOCK`` multiply-adds: above that OpenBLAS hands it
    to its threads, which on a loaded two-core machine cost more CPU than the product.
    The arrays of (pairs, nodes) are written in place (the product's blocks, the exponential),
    and where every detection has one pair the row gathers, which would only copy ``e``, are
    left out.  Where every detection has one pair and that array would hold more than
    ``_SCORE_BLOCK`` elements, it is made in pieces (:func:`_score_streamed`, the same bits;
    issue 12).  ``inverses``: :func:`_widened_inverse`'s results by widening, or None
    (computed here).
    """
    if feat is None:
        feat = _node_features(nodes)
    dx, dy = prob.d[:, 0], prob.d[:, 1]
    n = dx.size
    starts = _group_starts(prob.det)
    log_2rho = np.log(2.0 * rho_g)
    coef = np.empty((n * len(widths), 6))
    log_peak = 0.0
    for i, wd in enumerate(widths):
        i00, i01, i11, const = inverses[wd] if inverses else _widened_inverse(prob, wd)
        # log(N / (2 rho_g)) = const - log(2 rho_g) - Q / 2, Q the quadratic form above
        c0 = const - log_2rho
        np.stack([c0 - 0.5 * (i00 * dx * dx + 2.0 * i01 * dx * dy + i11 * dy * dy),
                  i00 * dx + i01 * dy, i01 * dx + i11 * dy, -0.5 * i00, -i01, -0.5 * i11],
                 axis=1, out=coef[i * n:(i + 1) * n])
        # the largest log(1 + S_j / (2 rho_g)) any node can have (N_k peaks at exp(const))
        peak = np.exp(c0) if starts.size == n else np.add.reduceat(np.exp(c0), starts)
        log_peak = max(log_peak, float(np.log1p(peak.max())))
    m = feat.shape[1]
    step = max(1, _BLAS_BLOCK // (6 * m))
    n_det = starts.size
    k = int(min(n_det, max(1, 700.0 // max(log_peak, 1e-300))))
    full = n_det - n_det % k
    if starts.size == n and coef.shape[0] * m > _SCORE_BLOCK:
        out = _score_streamed(coef, feat, len(widths), k, step)
        return list(out + n_det * np.log(rho_g))
    e = np.empty((coef.shape[0], m))                            # (n * len(widths), m)
    for i in range(0, coef.shape[0], step):
        np.matmul(coef[i:i + step], feat, out=e[i:i + step])
    np.exp(e, out=e)
    t = e                                                       # (n_det * len(widths), m)
    if starts.size < n:
        first, more = prob.groups(len(widths))
        t = e[first]
        for sel, extra in more:
            t[sel] += e[extra]
    t += 1.0
    t = t.reshape(len(widths), -1, m)
    out = np.log(t[:, :full].reshape(len(widths), -1, k, m).prod(axis=2)).sum(axis=1)
    if full < n_det:
        out += np.log(t[:, full:].prod(axis=1))
    return list(out + n_det * np.log(rho_g))


def _score_streamed(coef, feat, n_widths, k, step):
    """:func:`_score_nodes`' ``sum_j log(1 + S_j / (2 rho_g))`` (n_widths, m) where every
    detection has one pair, without its (pairs x widenings, nodes) array: that array's rows
    (one per widening and detection) are made ``_SCORE_BLOCK`` elements at a time, each
    ``k``-row product taken as soon as its rows are there (issue 12: the one array of a
    ~900-pair leg was 9 MB, the largest transient of a 10,000-stack campaign).  The matrix
    product is made in the very blocks of ``step`` rows of the one-piece path (the same calls:
    OpenBLAS's bits depend on a product's shape), a block that two pieces share made twice;
    the exponential, the products and the logarithm are element by element, and the sums
    over the products are made on the whole array: the same bits (test_mixture)."""
    rows, m = coef.shape[0], feat.shape[1]
    n_det = rows // n_widths
    full = n_det - n_det % k
    logs = np.empty((n_widths, full // k, m))
    rest = np.empty((n_widths, n_det - full, m))
    per = max(1, _SCORE_BLOCK // (k * m))           # k-row products per piece

    def t_rows(a, b):
        """Rows a..b of 1 + exp(coef feat), from the blocks of ``step`` rows that hold them."""
        lo = a - a % step
        e = np.empty((min(b + (-b) % step, rows) - lo, m))
        for i in range(lo, lo + e.shape[0], step):
            np.matmul(coef[i:i + step], feat, out=e[i - lo:i - lo + step])
        e = e[a - lo:b - lo]
        np.exp(e, out=e)
        e += 1.0
        return e

    for w in range(n_widths):
        base = w * n_det
        for g in range(0, full // k, per):
            h = min(g + per, full // k)
            t = t_rows(base + g * k, base + h * k)
            logs[w, g:h] = np.log(t.reshape(h - g, k, m).prod(axis=1))
        if full < n_det:
            rest[w] = t_rows(base + full, base + n_det)
    out = logs.sum(axis=1)
    if full < n_det:
        out += np.log(rest.prod(axis=1))
    return out


def _score(prob, nodes, rho_g, widen, inverses=None):
    """Start score ``sum_j log(rho_g + S_j / 2)`` at each node (m, 2).

    ``widen`` is one covariance widening (arcsec^2; returns shape (m,)) or a tuple of them
    (returns one row per widening, the offsets to the nodes computed once).  ``inverses``:
    :func:`_widened_inverse`'s results by widening, or None (computed here).
    """
    widths = widen if isinstance(widen, tuple) else (widen,)
    rx = prob.d[None, :, 0] - nodes[:, None, 0]
    ry = prob.d[None, :, 1] - nodes[:, None, 1]
    rxx, rxy, ryy = rx * rx, rx * ry, ry * ry
    starts = _group_starts(prob.det)
    out = []
    for wd in widths:
        i00, i01, i11, log_norm = inverses[wd] if inverses else _widened_inverse(prob, wd)
        lg = log_norm[None, :] - 0.5 * (i00 * rxx + (2.0 * i01) * rxy + i11 * ryy)
        s_j = np.add.reduceat(np.exp(lg), starts, axis=1)
        out.append(np.sum(np.log(rho_g + 0.5 * s_j), axis=1))
    return out if isinstance(widen, tuple) else out[0]


def _refine_starts(prob, seeds, rho_g, stage_lists, inverses=None):
    """Follow the mode of the smoothed likelihood down to no smoothing, from several seeds.

    EM on every pair with q = 1/2 and the covariances widened by a decreasing sequence of
    (widening, tolerance) stages: a pair much narrower than the grid step would otherwise have
    a vanishing likelihood at the grid node.  ``seeds`` (m, 2) each have their own stages
    (each list a tail of ``_ANNEAL``); the EM is vectorised over the seeds, and every seed
    takes the iterations it takes alone and stops where it stops alone (test_mixture.py
    checks it against a plain one-seed EM).  Returns the refined shifts (m, 2).
    ``inverses``: :func:`_widened_inverse` of a column of ``_ANNEAL``'s widenings, or None
    (computed here).

    (Refining the four to eight seeds one by one was about half of the start's cost: the EM's
    arithmetic on 10-200 pairs is small next to numpy's per-call overhead; issue 11.)  So an
    iteration makes as few numpy calls as it can: the active seeds' shifts ``sa`` are carried
    from one iteration to the next and written back to ``s`` only when a seed stops (or the
    stage ends); the division is made outside ``np.errstate`` when every 2x2 system is
    solvable (no floating-point warning can arise then); and where every detection has one
    pair, a detection's sum is that pair's density (``reduceat`` and ``repeat`` would copy it).
    The arithmetic is the same, operation for operation.
    """
    s = np.array(seeds, dtype=float).reshape(-1, 2)
    starts = _group_starts(prob.det)
    single = starts.size == prob.det.size
    counts = None if single else _group_counts(starts, prob.det.size)
    dx, dy = prob.d[:, 0], prob.d[:, 1]
    two_rho = 2.0 * rho_g
    # every stage's pieces at once, a row per stage: log_norm and a pair's log density at s,
    # log_norm + rx (a rx + b ry) + c ry^2 (r = d - s); the M step's five sums (of resp times
    # these) in one product per iteration
    i00, i01, i11, log_norm = (_widened_inverse(prob, np.array([[w] for w, _ in _ANNEAL]))
                               if inverses is None else inverses)
    a, b, c = -0.5 * i00, -i01, -0.5 * i11
    sums = np.empty(i00.shape + (5,))
    sums[..., 0], sums[..., 1], sums[..., 2] = i00, i01, i11
    sums[..., 3] = i00 * dx + i01 * dy
    sums[..., 4] = i01 * dx + i11 * dy
    # a seed takes the stages from its first (a tail of _ANNEAL)
    first = len(_ANNEAL) - np.array([len(st) for st in stage_lists])
    for k, (_, tol) in enumerate(_ANNEAL):
        active = np.flatnonzero(first <= k)
        if active.size == 0:
            continue
        sa = s[active]
        log_norm_k, a_k, b_k, c_k, sums_k = log_norm[k], a[k], b[k], c[k], sums[k]
        for _ in range(30):
            rx = dx - sa[:, :1]
            ry = dy - sa[:, 1:]
            g = np.exp(log_norm_k + rx * (a_k * rx + b_k * ry) + c_k * (ry * ry))
            # a pair's responsibility (g / 2) / (rho_g + S_j / 2), S_j the sum of g over its
            # detection's candidates (no log-sum-exp: rho_g > 0 keeps the denominator finite)
            if single:
                g /= g + two_rho
            else:
                g /= (two_rho + np.add.reduceat(g, starts, axis=1)).repeat(counts, axis=1)
            # (w00, w01, w11, bx, by) per seed; the new shift (w11 bx - w01 by, w00 by - w01 bx)
            # over det_w, its two columns from views of w
            w = g @ sums_k
            det_w = w[:, 0] * w[:, 2] - w[:, 1] * w[:, 1]
            s_new = w[:, 2::-2] * w[:, 3:]
            s_new -= w[:, 1:2] * w[:, :2:-1]
            # (on Python floats: numpy's reductions of 1-8 numbers cost ~10x; a NaN is not in
            # (0, inf), as it fails np.minimum's > 0)
            solvable = all([0.0 < x < math.inf for x in det_w.tolist()])
            if solvable:
                s_new /= det_w[:, None]
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    s_new /= det_w[:, None]
            # np.clip's bounds, without its Python-level dispatch (NaN stays NaN either way)
            np.minimum(s_new, prob.max_shift, out=s_new)
            np.maximum(s_new, -prob.max_shift, out=s_new)
            step = np.abs(s_new - sa)
            step = np.maximum(step[:, 0], step[:, 1])
            if solvable:
                # no seed stops (a NaN step is not below tol: that seed goes on, as below;
                # np.fmin.reduce's test, on Python floats)
                if not any([x < tol for x in step.tolist()]):
                    sa = s_new
                    continue
                s[active] = s_new
                keep = ~(step < tol)
            else:
                ok = np.isfinite(det_w) & (det_w > 0)
                s[active] = sa
                s[active[ok]] = s_new[ok]
                keep = ok & ~(step < tol)
            active = active[keep]
            sa = s_new[keep]
            if active.size == 0:
                break
        s[active] = sa
    return s


#: the ends of q's range as a column, for :func:`_update_q`'s slope at both in one pass
_Q_ENDS = np.array([[_Q_MIN], [1.0]])
_Q_ENDS.flags.writeable = False


def _q_ends(c, e):
    """The terms ``e / (c + q e)`` of :func:`_q_slope` at both ends of q's range (2, n)."""
    return e / (c + _Q_ENDS * e)


def _q_slope(x, a, b, c, e):
    """d/dq of sum log(a + q b) - log(c + q e) at q = x and its derivative, from the same
    terms (:func:`_update_q`; ``np.add.reduce`` is ``sum``'s arithmetic without its Python
    wrapper).  a + x b = rho (1 - x P) + x S >= 0 can underflow to 0 when S does."""
    t = b / np.maximum(a + x * b, 1e-150)
    u = e / (c + x * e)
    return np.add.reduce(t - u), np.add.reduce(u * u - t * t)


def _update_q(q, a, b, c, e, u_ends=None):
    """Maximise sum log(a + q b) - log(c + q e) over q in [Q_MIN, 1].

    ``u_ends``: :func:`_q_ends`'s terms of (c, e), which EM in one window passes for every
    iteration (c and e are the window's); computed here when not given.

    Safeguarded Newton on the slope (:func:`_q_slope`) inside a bracket [lo, hi] of its
    sign change: a Newton step that stays in the bracket, its ends included, is taken, else
    the bracket is halved.  A step onto an end is the root reached to rounding (that end is
    the last point, its slope ~1e-16) and ends the search; with the ends excluded such a step
    went to the middle of a wide bracket and took 10-50 halvings back to the same root (two
    thirds of the search's cost on bench_speed's stacks, issue 11).
    """
    # the bracket starts as q's range, whose ends' slopes come first (in one pass: row sums are
    # the same numbers as one at a time; as Python floats, which unpack and compare for less)
    lo, hi = float(_Q_ENDS[0, 0]), float(_Q_ENDS[1, 0])
    if u_ends is None:
        u_ends = _q_ends(c, e)
    g_lo, g_hi = np.add.reduce(b / np.maximum(a + _Q_ENDS * b, 1e-150) - u_ends, axis=1).tolist()
    if g_hi >= 0:
        return 1.0
    if g_lo <= 0:
        return lo
    x = min(max(q, lo), hi)
    for _ in range(60):
        gx, hx = _q_slope(x, a, b, c, e)
        if gx > 0:
            lo = x
        else:
            hi = x
        xn = float(x - gx / hx) if hx < 0 else None
        if xn is None or not lo < xn < hi:
            if xn is not None and abs(xn - x) < 1e-13:
                # a step below 1e-13 onto the end x: x is the root, if the slope changes sign
                # within 1e-13 inside the bracket (at a pole of log(a + q b), e.g. q = 1
                # with a + b = 0, the step is ~1e-148 and the root is elsewhere)
                y = x + 1e-13 if x == lo else x - 1e-13
                if lo < y < hi and (_q_slope(y, a, b, c, e)[0] > 0) != (gx > 0):
                    return x
            xn = 0.5 * (lo + hi)
        if abs(xn - x) < 1e-13 or hi - lo < 1e-13:
            return xn
        x = xn
    return x


def _e_step(lg, log_bg, log_q, starts, counts, single):
    """The E step on a window's pairs: ``(log_s, log_d, r)``.

    ``lg`` is each pair's log Gaussian density at the shift, ``log_bg`` and ``log_q`` the
    background's and q's logarithms (per detection, and a number); ``starts``, ``counts`` and
    ``single`` the window's detections (:meth:`_Problem.window_groups`).  ``log_s`` is the log
    of each detection's summed density, ``log_d`` the log of its mixture density
    ``bg + q S_j`` and ``r`` each pair's membership ``q g / (bg + q S_j)``.  Where every
    detection has one pair in the window the log-sum-exp and the repeat are the identity, and
    are skipped.  :func:`_fit_window`'s iterations and :func:`_fit_window_final` share it.
    (``log_d.repeat``: the array's own method, without np.repeat's wrapper.)
    """
    if single:
        q_lg = log_q + lg
        log_d = np.logaddexp(log_bg, q_lg)
        return lg, log_d, np.exp(q_lg - log_d)
    log_s = _group_logsumexp_counts(lg, starts, counts)
    log_d = np.logaddexp(log_bg, log_q + log_s)
    return log_s, log_d, np.exp(log_q + lg - log_d.repeat(counts))


def _fit_window(prob, idx, s, q, p_win, mu, tol=(_TOL_ARCSEC, 1e-9)):
    """EM on the pairs ``idx`` (a fixed window), until the shift and q move by less than
    ``tol`` (arcsec, 1).

    Returns (s, q, memberships, n_iter, ok, info, note): the memberships are those of the last
    E step and info is None -- the callers (:func:`_windowed_fit`, :func:`_gain_same_window`)
    recompute what they need at the final shift (:func:`_fit_window_final`).

    The arithmetic is that of the plain form (the docstring's E and M steps), arranged for
    numpy's per-call cost on 10-500 pairs (issue 11): the window's pieces are gathered once,
    the shift's 2x2 M step is done on Python floats (the same IEEE operations as on numpy
    scalars), and where every detection has one pair in the window the per-detection
    log-sum-exp and its repeat are the identity they then are.
    """
    starts, counts, single = prob.window_groups(idx)
    # the window's pieces of the pairs' log densities (the same arithmetic per iteration)
    dx, dy, i00, two_i01, i11, inv01, log_norm, bx_k, by_k = prob.window_pieces(idx)
    rho = prob.rho
    exp_mu = np.exp(-mu)
    c = -np.expm1(-mu)
    e = exp_mu * p_win
    # the q search's terms that are the window's (the same arithmetic in every iteration)
    u_ends = _q_ends(c, e)
    rho_p = rho * p_win
    ok = False
    n_iter = 0
    log_rho = np.log(rho) if rho > 0 else -np.inf
    bound = prob.max_shift
    s0, s1 = float(s[0]), float(s[1])
    with np.errstate(divide="ignore"):       # log1p(-q P_j) = -inf where q P_j = 1
        for n_iter in range(1, _MAX_EM_ITER + 1):
            lg = _log_density(dx, dy, i00, two_i01, i11, log_norm, s0, s1)
            log_bg = log_rho + np.log1p(-q * p_win)
            log_s, _, r = _e_step(lg, log_bg, np.log(q), starts, counts, single)
            # the 2x2 M step in closed form (np.linalg's det and solve cost more in call
            # overhead than the arithmetic: issue 11)
            w00, w01, w11 = float(r @ i00), float(r @ inv01), float(r @ i11)
            det_w = w00 * w11 - w01 * w01
            if not (math.isfinite(det_w) and det_w > 0 and math.isfinite(w01)):
                return (np.array([s0, s1]), q, r, n_iter, False, None,
                        "no pair supports a true match")
            bx, by = float(r @ bx_k), float(r @ by_k)
            # np.clip's bounds (no NaN reaches here: det_w > 0 and the sums are finite)
            n0 = min(max((w11 * bx - w01 * by) / det_w, -bound), bound)
            n1 = min(max((w00 * by - w01 * bx) / det_w, -bound), bound)
            if rho > 0:
                q_new = _update_q(q, rho, np.exp(log_s) - rho_p, c, e, u_ends)
            else:
                q_new = 1.0
            done = abs(n0 - s0) < tol[0] and abs(n1 - s1) < tol[0] and abs(q_new - q) < tol[1]
            s0, s1, q = n0, n1, q_new
            if done:
                ok = True
                break
    return (np.array([s0, s1]), q, r, n_iter, ok, None,
            "" if ok else f"EM did not converge in {_MAX_EM_ITER} iterations")


def _scores(prob, idx, s, r, starts):
    """The pieces of the shift's score that :func:`_covariance` and :func:`_sandwich` share,
    for the pairs ``idx`` at the shift ``s`` with memberships ``r`` (detections from
    ``starts``): each pair's ``C_k^-1`` as rows (i00, i01, i11), ``g_k = C_k^-1 (d_k - s)``
    (n, 2), ``r_k g_k`` and each detection's score ``G_j = sum_{k in j} r_k g_k`` (m, 2).
    Made once for both (issue 11)."""
    inv = prob.inv[idx]
    i00, i01, i11 = inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]
    e = prob.d[idx] - s
    g = np.empty_like(e)
    g[:, 0] = i00 * e[:, 0] + i01 * e[:, 1]
    g[:, 1] = i01 * e[:, 0] + i11 * e[:, 1]
    r_g = r[:, None] * g
    return (i00, i01, i11), g, r_g, np.add.reduceat(r_g, starts, axis=0)


def _inverse2(a, b, d):
    """The inverse of the symmetric 2 x 2 matrix [[a, b], [b, d]] (Python floats) as a
    (2, 2) array, or None where it is not positive definite (or not finite): a 2 x 2 in
    closed form (np.linalg's inv and eigvalsh cost ~20x the arithmetic, issue 11)."""
    det = a * d - b * b
    if not (a > 0 and 0 < det < math.inf):      # (then a, b and d are finite too)
        return None
    return np.array([[d / det, -b / det], [-b / det, a / det]])


#: the smallest positive normal double (LAPACK's safe minimum): :func:`_solve2` leaves pivots
#: below it to LAPACK, which divides by them instead of multiplying by their reciprocal
_SAFE_MIN = 2.2250738585072014e-308


def _fma(a, b, c):
    """``a * b + c`` rounded once (finite Python floats): the fused multiply-add of OpenBLAS's
    kernels, in exact integer arithmetic (``int / int`` is correctly rounded)."""
    na, da = a.as_integer_ratio()
    nb, db = b.as_integer_ratio()
    nc, dc = c.as_integer_ratio()
    return (na * nb * dc + nc * da * db) / (da * db * dc)


def _solve2(a, b, c, d, g0, g1):
    """``np.linalg.solve([[a, b], [c, d]], [g0, g1])`` on Python floats, to the bit: LAPACK's
    dgesv as OpenBLAS computes a 2 x 2 -- LU with partial pivoting (the row whose first entry
    is larger in magnitude first, the first on a tie), the multiplier ``m = c (1 / a)``, ``u =
    d - m b``, then ``y1 = g1 - m g0`` and ``x0 = (g0 - b x1) / a`` each as one fused
    multiply-add and ``x1 = y1 / u`` (equal to np.linalg.solve's on 300,000 random systems,
    ties and symmetric ones included).  Returns (x0, x1).  Anything else -- a non-finite
    entry, a pivot below the safe minimum or zero (LinAlgError), a result beyond the doubles
    -- is left to np.linalg.solve itself (issue 11: its call costs ~2-4x this on a 2 x 2)."""
    p, pb, pc, pd, h0, h1 = (c, d, a, b, g1, g0) if abs(c) > abs(a) else (a, b, c, d, g0, g1)
    if abs(p) >= _SAFE_MIN and math.isfinite(a + b + c + d + g0 + g1):
        m = pc * (1.0 / p)
        u = pd - m * pb
        if 0 < abs(u) < math.inf:
            try:
                x1 = _fma(-m, h0, h1) / u
                return _fma(-pb, x1, h0) / p, x1
            except OverflowError:
                pass
    return tuple(np.linalg.solve(np.array([[a, b], [c, d]]), np.array([g0, g1])).tolist())


def _negative_definite2(a, b, d):
    """Whether ``np.all(np.linalg.eigvalsh([[a, b], [b, d]]) < 0)`` (its lower triangle: a, b,
    d), on Python floats: the larger eigenvalue ``(a + d) / 2 + hypot((a - d) / 2, b)`` in
    closed form, LAPACK asked only where it lies within 1e-12 of the matrix's scale of zero
    (eigvalsh's error is a few ulps of that scale) or is not a number."""
    top = 0.5 * (a + d) + math.hypot(0.5 * (a - d), b)
    margin = 1e-12 * (abs(a) + abs(d) + 2.0 * abs(b))
    if top < -margin:
        return True
    if top > margin:
        return False
    return bool(np.all(np.linalg.eigvalsh(np.array([[a, b], [b, d]])) < 0))


def _covariance(prob, q, r, p_win, info, scores):
    """Inverse observed information of log L for s (q profiled when interior) at the pairs,
    shift and memberships ``r`` that :func:`_scores` made ``scores`` of.

    The 2 x 2 (and, with q, 3 x 3) algebra is done in closed form: s's block of the inverse
    of the (s, q) information ``I`` is the inverse of the Schur complement ``I_ss - I_sq
    I_sq^T / I_qq``, and ``I`` is positive definite exactly where ``I_qq`` and that
    complement are (the same numbers as np.linalg's to rounding)."""
    (i00, i01, i11), g, r_g, big_g = scores
    # the information of s, -H_ss = sum r C^-1 - sum r g g^T + sum G G^T, as (xx, xy, yy)
    a = float(r @ i00) - float(r_g[:, 0] @ g[:, 0]) + float(big_g[:, 0] @ big_g[:, 0])
    b = float(r @ i01) - float(r_g[:, 0] @ g[:, 1]) + float(big_g[:, 0] @ big_g[:, 1])
    d = float(r @ i11) - float(r_g[:, 1] @ g[:, 1]) + float(big_g[:, 1] @ big_g[:, 1])
    rho = prob.rho
    note = ""
    interior = rho > 0 and 1e-6 < q < 1.0 - 1e-6
    cov = None
    if interior:
        d_j = np.exp(info["log_d"])
        s_j = np.exp(info["log_s"])
        # -H_sq and -H_qq
        i_sq = -((rho / (q * d_j)) @ big_g)
        e = info["e"]
        den = info["c"] + q * e
        i_qq = float(np.add.reduce(((s_j - rho * p_win) / d_j) ** 2 - (e / den) ** 2))
        if i_qq > 0:
            x, y = float(i_sq[0]), float(i_sq[1])
            cov = _inverse2(a - x * x / i_qq, b - x * y / i_qq, d - y * y / i_qq)
    if cov is None:
        cov = _inverse2(a, b, d)
    if cov is None:
        # curvature not negative definite (e.g. a shallow multi-modal
        # likelihood): fall back on the complete-data information
        ca, cb, cd = float(r @ i00), float(r @ i01), float(r @ i11)
        det = ca * cd - cb * cb
        cov = (np.array([[cd, -cb], [-cb, ca]]) / det if det != 0 and math.isfinite(det)
               else np.full((2, 2), np.nan))
        note = "observed information not positive definite; covariance from memberships"
    return cov, note


def _sandwich(r, info, scores):
    """The residuals' own (sandwich, HC2) covariance of the shift: ``A^-1 M A^-1``.

    ``A = sum_k r_k Sigma_k^-1`` and ``M = sum_j G_j G_j^T / (1 - h_j)`` over detections, with
    ``G_j = sum_{k in j} r_k Sigma_k^-1 (d_k - s)`` (detection j's score) and ``h_j`` its
    leverage, ``tr(A_j A^-1) / 2`` (MacKinnon & White 1985's HC2 for a location).  It does not
    depend on the scale of the pair covariances, only on how the offsets actually scatter.
    None when A is singular.  ``scores``: :func:`_scores` of the pairs, shift and memberships
    ``r``; the 2 x 2 algebra in closed form.
    """
    (i00, i01, i11), _, _, big_g = scores
    starts = info["starts"]
    # A_j as rows (xx, xy, yy) per detection, and A
    a_j = np.add.reduceat(r[:, None] * np.stack([i00, i01, i11], axis=1), starts, axis=0)
    a00, a01, a11 = np.add.reduce(a_j, axis=0).tolist()
    det = a00 * a11 - a01 * a01
    if not (det != 0 and math.isfinite(det)):
        return None
    v00, v01, v11 = a11 / det, -a01 / det, a00 / det          # A^-1
    if not (math.isfinite(v00) and math.isfinite(v01) and math.isfinite(v11)):
        return None
    lev = ((a_j[:, 0] * v00 + 2.0 * a_j[:, 1] * v01 + a_j[:, 2] * v11) / 2.0).clip(0.0, 0.99)
    w_g = big_g / (1.0 - lev)[:, None]
    m00, m01, m11 = (float(w_g[:, 0] @ big_g[:, 0]), float(w_g[:, 0] @ big_g[:, 1]),
                     float(w_g[:, 1] @ big_g[:, 1]))
    # A^-1 M A^-1 (symmetric)
    t00, t01 = v00 * m00 + v01 * m01, v00 * m01 + v01 * m11
    t10, t11 = v01 * m00 + v11 * m01, v01 * m01 + v11 * m11
    o01 = t00 * v01 + t01 * v11
    return np.array([[t00 * v00 + t01 * v01, o01], [o01, t10 * v01 + t11 * v11]])


def _robust_floor(cov, robust):
    """``cov`` scaled up to the residuals' own scatter when that is larger (never down).

    The factor is ``max(1, tr(cov^-1 robust) / 2)``.  The likelihood's covariance is right
    when the pair errors are (the stated ones, or the calibrated model): with fewer than ~30
    true pairs a missing floor often cannot be calibrated (6 effective matches are needed, and
    the fitted model must beat the stated errors), and a calibrated floor fitted to a few
    pairs can be too small; then the bright pairs' understated errors set a sigma the offsets
    themselves contradict.  Measured on 1,000 stk_simpop stacks (issue 17, the population's
    stated errors lack its 0.12" absolute term): pull MAD 1.36 / 1.24 / 1.15 with 3-6 / 6-10
    / 10-30 matches before, 1.13 / 1.03 / 1.09 after; with right stated errors on 150
    synthetic stacks of 4-60 pairs the pull spread stays 0.92-1.04 (module docstring).
    Returns (covariance, factor).
    """
    if cov is None or robust is None or not (np.isfinite(cov).all()
                                             and np.isfinite(robust).all()):
        return cov, 1.0
    # tr(cov^-1 robust) of the 2 x 2s in closed form (np.linalg.solve cost ~10x the
    # arithmetic, issue 11); a singular cov is left alone
    (a, b), (c, d) = cov.tolist()
    det = a * d - b * c
    if det == 0:
        return cov, 1.0
    (r00, r01), (r10, r11) = robust.tolist()
    factor = (d * r00 - b * r10 - c * r01 + a * r11) / det / 2.0
    if not np.isfinite(factor) or factor <= 1.0:
        return cov, 1.0
    return cov * factor, factor


def _empty_fit(n, message, *, n_dropped=0, n_floored=0, membership=None):
    return MixtureFit(
        d_xi=float("nan"), d_eta=float("nan"), cov=np.full((2, 2), np.nan), n_eff=0.0,
        chance_fraction=float("nan"),
        membership=np.zeros(n) if membership is None else membership,
        n_iter=0, converged=False, message=message, n_dropped=n_dropped, n_floored=n_floored)


def fit_mixture(src_index, d_xi, d_eta, cov_pairs, *, density_per_arcmin2, match_radius_arcsec,
                systematic_arcsec=0.0, max_shift_arcsec=5.0, x0=None, start_prior_arcsec=1.0,
                calibrate=False):
    """Fit a translation by maximising the chance-match mixture likelihood.

    The model, the window and the covariance are described in the module
    docstring.

    Parameters
    ----------
    src_index : array_like of int, shape (n,)
        Detection each pair belongs to (pairs of one detection are its
        candidates).
    d_xi, d_eta : array_like, shape (n,)
        Offsets, reference minus detection, arcsec.
    cov_pairs : array_like, shape (n, 2, 2)
        Pair covariances, arcsec^2 (:func:`pair_covariance`).
    density_per_arcmin2 : float
        Reference-catalogue density (``DENSGAIA``/``DENSWISE``), >= 0.
    match_radius_arcsec : float
        Radius within which candidates were searched (``MATCHRAD``), > 0.
    systematic_arcsec : float, optional
        Floor added in quadrature to both axes of every pair covariance; with
        ``calibrate`` the smallest floor the fit may choose.
    max_shift_arcsec : float, optional
        Bound on each shift component, > 0.
    x0 : (float, float), optional
        Starting shift.  Default: the mode of a smoothed likelihood on a
        0.2" grid, which makes the fit global rather than local.
    start_prior_arcsec : float or None, optional
        Width of the weak Gaussian prior on the shift used only to rank the
        candidate start modes (module docstring); None ranks by likelihood
        alone.  Not used when ``x0`` is given.
    calibrate : bool, optional
        Fit, with the shift, a scale k and a systematic floor sigma_sys on the
        stated errors by maximum likelihood (module docstring, "Self-calibrated
        errors"): the memberships and the covariance then use
        ``k^2 Sigma + sigma_sys^2 I``.  Needs at least ``_CAL_MIN_NEFF``
        effective true matches; below that the stated errors are used and the
        message says so.

    Returns
    -------
    MixtureFit

    Raises
    ------
    FitError
        Malformed arguments only (shapes, non-integer ``src_index``,
        negative density, non-positive radius or bound).  Degenerate data
        (no pairs, NaN rows, singular covariances, no convergence) are
        reported in the result.
    """
    det_raw = np.asarray(src_index)
    if det_raw.ndim != 1:
        raise FitError(f"mixture fit: src_index must be a 1-D array, got shape {det_raw.shape}")
    n = det_raw.shape[0]
    if n and not np.issubdtype(det_raw.dtype, np.integer):
        as_float = np.asarray(det_raw, dtype=float)
        # whole, and within int64 (a larger whole float would be cast with a raw warning)
        if (not np.all(np.abs(as_float) < 2.0**63)
                or np.any(as_float != np.round(as_float))):
            raise FitError("mixture fit: src_index must hold integers (detection ids)")
    det_all = det_raw.astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    dx_all = _as_1d("d_xi", d_xi, n)
    dy_all = _as_1d("d_eta", d_eta, n)
    cov_all = np.asarray(cov_pairs, dtype=float)
    if cov_all.shape != (n, 2, 2):
        raise FitError(f"mixture fit: cov_pairs must have shape ({n}, 2, 2), got {cov_all.shape}")
    rho_arcmin = float(density_per_arcmin2)
    if not np.isfinite(rho_arcmin) or rho_arcmin < 0:
        raise FitError(f"mixture fit: density_per_arcmin2 must be finite and >= 0, got {density_per_arcmin2!r}")
    radius = float(match_radius_arcsec)
    if not np.isfinite(radius) or radius <= 0:
        raise FitError(f"mixture fit: match_radius_arcsec must be > 0, got {match_radius_arcsec!r}")
    max_shift = float(max_shift_arcsec)
    if not np.isfinite(max_shift) or max_shift <= 0:
        raise FitError(f"mixture fit: max_shift_arcsec must be > 0, got {max_shift_arcsec!r}")
    sys_arcsec = float(systematic_arcsec)
    if not np.isfinite(sys_arcsec) or sys_arcsec < 0:
        raise FitError(f"mixture fit: systematic_arcsec must be finite and >= 0, got {systematic_arcsec!r}")
    if x0 is not None:
        x0 = np.asarray(x0, dtype=float)
        if x0.shape != (2,) or not np.all(np.isfinite(x0)):
            raise FitError(f"mixture fit: x0 must be two finite numbers, got {x0!r}")
    if start_prior_arcsec is not None and not (np.isfinite(start_prior_arcsec) and start_prior_arcsec > 0):
        raise FitError(f"mixture fit: start_prior_arcsec must be None or > 0, got {start_prior_arcsec!r}")

    notes = []
    finite = np.isfinite(dx_all) & np.isfinite(dy_all) & np.isfinite(cov_all).all(axis=(1, 2))
    n_dropped = int(n - finite.sum())
    if n_dropped:
        notes.append(f"{n_dropped} pair(s) with non-finite offset or covariance dropped")
    keep = np.flatnonzero(finite)
    if keep.size == 0:
        return _empty_fit(n, "; ".join(notes + ["no usable pairs"]), n_dropped=n_dropped)
    stated = cov_all[keep]
    stated = 0.5 * (stated + stated.swapaxes(1, 2))
    cov, floored = _calibrated(stated, 1.0, sys_arcsec)
    n_floored = int(floored.sum())
    if n_floored:
        notes.append(f"{n_floored} covariance(s) floored at {MIN_SIGMA_ARCSEC} arcsec")

    # canonical order: the result does not depend on the order of the rows
    dx, dy, det = dx_all[keep], dy_all[keep], det_all[keep]
    order = np.lexsort((cov[:, 1, 1], cov[:, 0, 1], cov[:, 0, 0], dy, dx, det))
    dx, dy, det, cov, keep = dx[order], dy[order], det[order], cov[order], keep[order]
    stated = stated[order]
    # the detections numbered 0, 1, ... in order: det is sorted (lexsort's last key), so
    # np.unique's inverse is the running count of its changes (issue 11: np.unique sorts again)
    det = np.concatenate(([0], det[1:] != det[:-1])).cumsum()
    n_det = int(det[-1]) + 1

    prob = _Problem(det, dx, dy, cov, rho_arcmin / 3600.0, radius, max_shift)
    prob.keep_model(1.0, sys_arcsec)
    s = x0.copy() if x0 is not None else _start_by_grid(prob, start_prior_arcsec)
    q = 0.9 if prob.rho > 0 else 1.0
    st = _windowed_fit(prob, s, q)
    scale, floor = 1.0, sys_arcsec
    cal_note = cal_kept = cal_avg = ""
    if calibrate and st.window_prev is not None:
        # Start from generous errors: with the stated ones, a true counterpart whose error is
        # understated gets a low membership and cannot show that the errors are too small;
        # from wide errors EM narrows them as far as the data allow.  (Also starting from the
        # stated errors and keeping the higher likelihood was measured: no better, twice the
        # cost.)  The number of true matches is judged there too: judged with understated
        # errors it was too low exactly when calibration was needed (issue 14: bright true
        # counterparts of stacks with 10-14 true pairs lost with membership 0).
        start = (max(scale, 1.0), max(floor, _CAL_START_FLOOR))
        prob.use_model(stated, *start)
        wide = _windowed_fit(prob, st.s, st.q, covariance=False)
        n_eff_cal = max(st.n_eff, wide.n_eff if wide.window_prev is not None else 0.0)
        if n_eff_cal >= _CAL_MIN_NEFF:
            cand, cal, it = _calibrate(prob, stated, wide, start, sys_arcsec)
            total_iter = st.total_iter + it
            if cand.window_prev is None:
                # the calibration's own fit (from the wide errors) left every pair out of its
                # window: no error model was fitted, and the stated errors' fit stands
                prob.use_kept(scale, floor)
                cal_note = ("errors not calibrated: the calibration's fit has no pair in its "
                            "window; the stated errors kept")
            else:
                # keep the fitted model only when it is better than the stated errors by a
                # likelihood-ratio margin (_CAL_LR_MIN): with right stated errors two free
                # parameters would cost ~2 % of rms/CRB for nothing.  Both on the same pairs: the
                # stated errors' window (_gain_same_window)
                gain = _gain_same_window(prob, stated, st, cand, cal, sys_arcsec)
                st_stated = st
                if gain >= _CAL_LR_MIN:
                    st, (scale, floor) = cand, cal
                    st = st._replace(cov_s=_dof_corrected(st.cov_s, st.n_eff))
                else:
                    prob.use_kept(scale, floor)
                    cal_kept = (f"errors calibrated: the stated errors kept (fitted scale "
                                f"{cal[0]:.2f}, floor {cal[1]:.3f}\" not better enough: "
                                f"2 (dlogL + dlog prior) = {gain:.1f} < {_CAL_LR_MIN:g})")
                    # the shift is mostly the stated errors' (the margin protects its rms), but its
                    # covariance is not smaller than the fitted model's: the data did not show
                    # that model wrong either (issue 17); nor are its memberships those of the
                    # stated errors: with them a bright true counterpart whose error lacks a floor
                    # is lost (issue 14: 22 in 1,000 missing-floor stacks, all in fits not kept;
                    # averaged with the models' posterior odds, 12).  Its likelihood is often no
                    # better than the stated errors' (a different window), so the fitted model's
                    # memberships (its errors and q) at the reported shift are given (_averaged).
                    wider, factor = _robust_floor(st.cov_s, _dof_corrected(cand.cov_s, cand.n_eff))
                    if factor > 1.0:
                        st = st._replace(cov_s=wider)
                        cal_kept += f"; covariance x{factor:.2f} as the fitted model's"
                # neither model is certain: average the two (module docstring, "Averaged")
                base = st
                st, weight = _averaged(prob, stated, base, st_stated, cand, cal, gain)
                if st is base and gain < _CAL_LR_MIN:
                    # not averaged, not kept: the fitted model's memberships at the stated
                    # errors' shift (an average gives its own, at its shift: _averaged)
                    st = base = st._replace(r=_fitted_memberships(prob, stated, st, cal))
                prob.use_kept(scale, floor)
                # said only of an average made (not when a covariance was unusable)
                if st is not base and min(weight, 1.0 - weight) >= 0.005:
                    cal_avg = (f"shift and covariance averaged over the stated and the fitted "
                               f"error model (weight {weight:.2f} on the fitted model)")
            st = st._replace(total_iter=total_iter)
        else:
            prob.use_kept(scale, floor)
            cal_note = (f"errors not calibrated: {n_eff_cal:.1f} effective true matches < "
                        f"{_CAL_MIN_NEFF}")
    if st.window_prev is None:
        return _empty_fit(n, "; ".join(notes + [st.fit_note]), n_dropped=n_dropped,
                          n_floored=n_floored)
    s, q, r, idx, r_w, info, cov_s, cov_note = (st.s, st.q, st.r, st.idx, st.r_w, st.info,
                                                st.cov_s, st.cov_note)
    cov_s, raised = _robust_floor(cov_s, st.cov_robust)
    if raised > 1.0:
        notes.append(f"covariance raised x{raised:.2f} to the residuals' own scatter")
    edge, converged, fit_note, total_iter = st.edge, st.converged, st.fit_note, st.total_iter
    if cal_note or cal_kept:
        notes.append(cal_note or cal_kept)
    if cal_avg:
        notes.append(cal_avg)
    at_bound = (np.abs(s) >= max_shift * (1 - 1e-12)).any()
    if at_bound:
        converged = False
        notes.append(f"shift at the max_shift bound ({max_shift} arcsec)")
    if edge.any():
        notes.append(f"window cycled: shrunk to {r_w:.3f} arcsec to leave out {int(edge.sum())} "
                     f"pair(s) on its edge")
    if fit_note:
        notes.append(fit_note)
    if cov_note:
        notes.append(cov_note)
    n_out = int(n - n_dropped - idx.size)
    if n_out:
        notes.append(f"{n_out} pair(s) outside the {r_w:.3f} arcsec window around the shift")

    membership = np.zeros(n)
    membership[keep[idx]] = r
    # (np.sum's and np.clip's arithmetic without their Python wrappers, issue 11)
    n_eff = float(np.add.reduce(r))
    chance = min(max(1.0 - n_eff / n_det, 0.0), 1.0)
    status = "converged" if converged else "NOT converged"
    message = "; ".join([f"{status} after {total_iter} EM iterations"] + notes)
    if not converged:
        logger.debug("mixture fit: %s", message)
    return MixtureFit(
        d_xi=float(s[0]), d_eta=float(s[1]), cov=cov_s, n_eff=n_eff, chance_fraction=chance,
        membership=membership, n_iter=total_iter, converged=bool(converged), message=message,
        q=float(q), window_radius_arcsec=float(r_w), n_window=int(idx.size),
        n_dropped=n_dropped, n_floored=n_floored, log_likelihood=info["loglike"],
        err_scale=float(scale), sys_floor=float(floor), calibrated=bool(calibrate and not cal_note))


class _Windowed(NamedTuple):
    """State of one windowed fit (:func:`_windowed_fit`)."""

    s: np.ndarray
    q: float
    r: np.ndarray | None
    idx: np.ndarray | None
    r_w: float
    info: dict | None
    cov_s: np.ndarray | None
    cov_note: str
    edge: np.ndarray
    converged: bool
    fit_note: str
    total_iter: int
    window_prev: np.ndarray | None
    n_eff: float
    p_win: np.ndarray | None = None
    cov_robust: np.ndarray | None = None


def _windowed_fit(prob, s, q, covariance=True):
    """EM with the window re-centred on the shift until it settles (module docstring), from
    the shift ``s`` and prior ``q``; the covariance of the shift at the end (or later, by
    :func:`_with_covariance`, when ``covariance`` is False: the calibration's intermediate
    fits do not need it)."""
    total_iter = 0
    converged = False
    window_prev = None
    em_ok = False
    fit_note = ""
    history = []        # windows since the last cycle was resolved
    edge = np.zeros(prob.d.shape[0], dtype=bool)   # pairs a window cycle left out
    # The windows (boolean masks, made by a comparison) are compared by their bytes, and
    # ``nonzero()[0]`` is np.flatnonzero of a 1-D mask: np.array_equal's and np.flatnonzero's
    # Python wrappers cost more than the work on 10-500 pairs (issue 11).  ``at_s``: r_w is the
    # window's radius at the current shift and edge (the shift has not moved since _window).
    prev_key = None
    for _ in range(_MAX_WINDOW_ITER):
        r_w, in_win = _window(prob, s, edge)
        at_s = True
        if r_w <= 0:
            fit_note = f"shift ({s[0]:.3f}, {s[1]:.3f}) arcsec leaves no window inside the match radius"
            break
        key = in_win.tobytes()
        if key == prev_key:
            converged = em_ok
            break
        k = next((k for k, w in enumerate(history) if w.tobytes() == key), None)
        if k is not None:
            # A pair on the window's edge flips in and out as the shift moves (module
            # docstring): shrink the window to leave out every pair the cycle flipped.
            cycle = history[k:]
            edge |= np.logical_or.reduce(cycle) & ~np.logical_and.reduce(cycle)
            history = []
            r_w, in_win = _window(prob, s, edge)
            key = in_win.tobytes()
        idx = in_win.nonzero()[0]
        if idx.size == 0:
            fit_note = "no pair inside the window around the shift"
            break
        p_win, mu = _window_terms(prob, idx, r_w)
        s, q, r, it, em_ok, _, fit_note = _fit_window(prob, idx, s, q, p_win, mu)
        at_s = False
        total_iter += it
        window_prev, prev_key = in_win, key
        if fit_note and not em_ok and "support" in fit_note:
            break
        history.append(in_win)
    else:
        fit_note = f"window did not settle in {_MAX_WINDOW_ITER} re-centrings"

    if window_prev is None:
        return _Windowed(s, q, None, None, 0.0, None, None, "", edge, False, fit_note,
                         total_iter, None, 0.0)

    idx = window_prev.nonzero()[0]
    # the window quantities at the final shift for the covariance (the loop's last radius
    # where the shift has not moved since: the same call, issue 11)
    if not at_s:
        r_w, _ = _window(prob, s, edge)
    if r_w > 0:
        p_win, mu = _window_terms(prob, idx, r_w)
    else:
        mu = prob.rho * np.pi * prob.radius**2
    _, _, r, _, _, info = _fit_window_final(prob, idx, s, q, p_win, mu)
    st = _Windowed(s, q, r, idx, r_w, info, None, "", edge, converged, fit_note,
                   total_iter, window_prev, float(np.add.reduce(r)), p_win)
    return _with_covariance(prob, st) if covariance else st



def _with_covariance(prob, st):
    """The windowed fit ``st`` with its covariance and the residuals' own (sandwich)
    covariance (computed with ``prob``'s current pair covariances, those of the fit)."""
    if st.cov_s is not None or st.window_prev is None:
        return st
    scores = _scores(prob, st.idx, st.s, st.r, st.info["starts"])
    cov_s, cov_note = _covariance(prob, st.q, st.r, st.p_win, st.info, scores)
    return st._replace(cov_s=cov_s, cov_note=cov_note,
                       cov_robust=_sandwich(st.r, st.info, scores))


def _fitted_memberships(prob, stated, st, cal):
    """The memberships of the fitted error model ``cal`` at the shift, window and q of the
    stated errors' fit ``st``.  Leaves ``prob`` with the fitted model's covariances."""
    prob.use_model(stated, *cal)
    p_win, mu = _window_terms(prob, st.idx, st.r_w)
    return _fit_window_final(prob, st.idx, st.s, st.q, p_win, mu)[2]


def _gain_same_window(prob, stated, st, cand, cal, min_floor):
    """2 (dlogL + dlog prior) of the fitted error model ``cal`` over the stated errors (plus
    the given floor), both on the pairs of the stated errors' window ``st``, each model's shift
    and q refitted by EM there (from its own fit's: ``st``, ``cand``), the window held.  Each
    fit's likelihood is conditional on the pairs in its own window (module docstring), so
    likelihoods of two windows sum over different pairs -- a pair on the edge of one adds or
    drops a whole log density -- and their difference compared the models on different data.
    The likelihoods are the restricted ones (module docstring, "Restricted likelihood"): each
    plus :func:`_restricted_log_det` at its refit's memberships and its covariances.  Leaves
    ``prob`` with the fitted model's covariances."""
    loglike, restricted = [], []
    for model, start in (((1.0, min_floor), st), (cal, cand)):
        prob.use_model(stated, *model)
        p_win, mu = _window_terms(prob, st.idx, st.r_w)
        s_fit, q_fit, *_ = _fit_window(prob, st.idx, start.s.copy(), start.q, p_win, mu,
                                       _GAIN_TOL)
        _, _, r, _, _, info = _fit_window_final(prob, st.idx, s_fit, q_fit, p_win, mu)
        loglike.append(info["loglike"])
        restricted.append(_restricted_log_det(r, prob.inv[st.idx], prob.max_shift))
    # both on the restricted likelihood (module docstring, "Restricted likelihood")
    return 2.0 * ((loglike[1] + restricted[1]) - (loglike[0] + restricted[0])
                  + _error_prior(cal[0] ** 2, cal[1] ** 2, min_floor**2)[0])


def _model_weight(gain):
    """Posterior probability of the fitted error model against the stated errors, from
    ``gain`` = 2 (dlogL + dlog prior): the margin ``_CAL_LR_MIN`` is read as prior odds of
    exp(-_CAL_LR_MIN / 2) on the fitted model, so the weight is 1/2 where the margin is met."""
    if not np.isfinite(gain):
        return 0.0 if gain < 0 else 1.0
    return float(1.0 / (1.0 + np.exp(-0.5 * (gain - _CAL_LR_MIN))))


def _averaged(prob, stated, base, st_stated, cand, cal, gain):
    """The two error models' fits averaged by their posterior weight (:func:`_model_weight`):
    the shift ``w s_fit + (1 - w) s_stated``, its covariance the mixture's, ``w C_fit + (1 - w)
    C_stated + w (1 - w) d d^T`` (d the difference of the shifts; C_fit with its
    degrees-of-freedom correction, C_stated not below it), and the fitted model's memberships
    (its errors and its q) at that shift, in the window of ``base`` (the model that wins the
    margin, whose q, window and likelihood are reported).  Returns the state and w; leaves
    ``prob`` with the fitted model's covariances."""
    weight = _model_weight(gain)
    c_fit = _dof_corrected(cand.cov_s, cand.n_eff)
    c_stated = _robust_floor(st_stated.cov_s, c_fit)[0]
    prob.use_model(stated, *cal)
    if weight == 1.0 or c_fit is None or c_stated is None \
            or not (np.all(np.isfinite(c_fit)) and np.all(np.isfinite(c_stated))):
        return base, weight       # the fitted model alone (base), or nothing to average
    diff = cand.s - st_stated.s
    shift = weight * cand.s + (1.0 - weight) * st_stated.s
    cov = (weight * c_fit + (1.0 - weight) * c_stated
           + weight * (1.0 - weight) * np.outer(diff, diff))
    out = base._replace(s=shift, cov_s=0.5 * (cov + cov.T))
    # the memberships with the fitted model's q too: the stated errors' q is low exactly when
    # they call bright true counterparts whose errors lack a floor chance (issue 14).  Its q
    # on base's window: where that is not the fitted model's own (it was not kept), the pairs
    # only its own window held set cand.q, so q is refitted on base's, as the gain refits it
    # (_gain_same_window).  Issue 14, session 10: a bright true counterpart 2.2 true sigma
    # from the shift had membership 0.31 with cand.q = 0.03, two far pairs outside the
    # reported window having set it; q refitted on that window is 1.0.
    q = cand.q
    if not np.array_equal(base.window_prev, cand.window_prev):
        p_win, mu = _window_terms(prob, base.idx, base.r_w)
        q = _fit_window(prob, base.idx, cand.s.copy(), cand.q, p_win, mu, _GAIN_TOL)[1]
    return out._replace(r=_fitted_memberships(prob, stated, out._replace(q=q), cal)), weight


def _dof_corrected(cov, n_eff):
    """The shift's covariance when the error model (k, sigma_sys) was fitted to the same pairs.

    The error model is fitted by maximum likelihood about the fitted shift, so it sees the
    residuals' scatter less the two dimensions the shift took: like the ML variance of a
    sample about its own mean it is low by (N - 2) / N, N = 2 n_eff the dimensions of the
    true pairs' offsets.  The restricted (REML) estimate divides that out; to first order
    the shift's covariance, proportional to the calibrated errors, is scaled by N / (N - 2).
    Measured on 2,000 stk_simpop stacks with 3-30 matches (issue 17): pull MAD of calibrated
    fits 1.085 without it (see the module docstring, "Self-calibrated errors").
    """
    n_dim = 2.0 * float(n_eff)
    if cov is None or not n_dim > 2.0:
        return cov
    return cov * (n_dim / (n_dim - 2.0))


def _calibrated(stated, scale, floor):
    """``scale^2 stated + floor^2 I``, floored (:func:`_floor_covariances`)."""
    cov = scale * scale * stated
    cov[:, 0, 0] += floor * floor
    cov[:, 1, 1] += floor * floor
    return _floor_covariances(cov)


def _calibrate(prob, stated, st, start, min_floor):
    """Alternate the error-model M step (:func:`_fit_error_model`) and the windowed fit from
    ``start`` = (scale, floor) until the model settles.  Returns (state, (scale, floor),
    EM iterations)."""
    scale, floor = start
    n_iter = st.total_iter
    for _ in range(_CAL_MAX_ITER):
        if st.window_prev is None or st.n_eff < _CAL_MIN_NEFF:
            break
        new_scale, new_floor = _fit_error_model(prob, stated, st, scale, floor, min_floor)
        moved = abs(new_scale - scale) > 1e-4 * scale or abs(new_floor - floor) > 1e-5
        scale, floor = new_scale, new_floor
        if not moved:
            break
        prob.set_cov(_calibrated(stated, scale, floor)[0])
        st = _windowed_fit(prob, st.s, st.q, covariance=False)
        n_iter += st.total_iter
    # the M step above holds the window's mass P_j: the error model it settles on is
    # that of the truncated offsets, too small (module docstring).  Polish (k, sigma_sys)
    # on the observed likelihood itself, alternating with the windowed fit.
    for _ in range(_CAL_MAX_ITER):
        if st.window_prev is None or st.n_eff < _CAL_MIN_NEFF:
            break
        new_scale, new_floor = _polish_error_model(prob, stated, st, scale, floor,
                                                   min_floor)
        moved = abs(new_scale - scale) > 1e-4 * scale or abs(new_floor - floor) > 1e-5
        scale, floor = new_scale, new_floor
        prob.set_cov(_calibrated(stated, scale, floor)[0])
        if not moved:
            break
        st = _windowed_fit(prob, st.s, st.q, covariance=False)
        n_iter += st.total_iter
    # prob holds the covariances st was fitted with (refitted after every move of the model)
    return _with_covariance(prob, st), (scale, floor), n_iter


def _error_prior(aa, bb, min_floor2):
    """Log prior of the error model, k^2 = aa and sigma_sys^2 = bb: log k ~ N(0, tau_k^2),
    sigma_sys^2 - min_floor^2 ~ exponential (half-normal sigma_sys, tau_f): (value, gradient,
    curvature) in (aa, bb), the gradient and curvature as pairs.  Zero when off (``_CAL_PRIOR``
    None).  The arithmetic on Python floats (numpy's scalars cost ~4x as much per operation; the
    same IEEE operations, and np.log's own logarithm; issue 11: ~34 calls per fit)."""
    if _CAL_PRIOR is None:
        return 0.0, (0.0, 0.0), (0.0, 0.0)
    tau_k, tau_f = _CAL_PRIOR
    aa, bb = float(aa), float(bb)
    la = float(np.log(aa))
    value = -(0.5 * la) ** 2 / (2 * tau_k**2) - (bb - min_floor2) / (2 * tau_f**2)
    return (value, (-la / (4 * aa * tau_k**2), -1.0 / (2 * tau_f**2)),
            (1.0 / (4 * aa * aa * tau_k**2), 0.0))


def _polish_error_model(prob, stated, st, scale, floor, min_floor):
    """(k, sigma_sys) maximising the observed restricted log likelihood of the window's pairs
    plus the error model's log prior (:func:`_restricted_objective`), at fixed shift, q,
    memberships and window (P_j and mu recomputed for each model): damped Newton on x = (log
    k, sigma_sys^2) with the exact gradient and Hessian, gradient steps where the Hessian is
    not negative definite, a parameter on a bound that its gradient pushes against held there.
    Does not change ``prob``."""
    # on Python floats, (log k, sigma_sys^2) as pairs: the same IEEE operations as on numpy's
    # arrays element by element; np.linalg's eigvalsh and solve of the 2 x 2 as
    # :func:`_negative_definite2` and :func:`_solve2` (issue 11: numpy's per-call costs were
    # ~0.2 ms per polish, a third of it)
    lo0, lo1 = float(np.log(_CAL_SCALE_RANGE[0])), min_floor**2
    hi0, hi1 = float(np.log(_CAL_SCALE_RANGE[1])), max(_CAL_MAX_FLOOR**2, min_floor**2)
    terms = _restricted_objective(prob, stated, st, min_floor)
    x0 = min(max(float(np.log(scale)), lo0), hi0)
    x1 = min(max(floor * floor, lo1), hi1)
    f, grad, hess = terms((x0, x1))
    for _ in range(_CAL_POLISH_ITER):
        (g0, g1), ((h00, h01), (h10, h11)) = grad.tolist(), hess.tolist()
        free0 = not ((x0 <= lo0 and g0 < 0) or (x0 >= hi0 and g0 > 0))
        free1 = not ((x1 <= lo1 and g1 < 0) or (x1 >= hi1 and g1 > 0))
        if free0 and free1:
            if _negative_definite2(h00, h10, h11):
                s0, s1 = _solve2(h00, h01, h10, h11, g0, g1)
                s0, s1 = -s0, -s1
            else:
                s0, s1 = g0 / max(abs(h00), 1e-12), g1 / max(abs(h11), 1e-12)
        elif free0:
            s0, s1 = (-(g0 / h00) if h00 < 0 else g0 / max(abs(h00), 1e-12)), 0.0
        elif free1:
            s0, s1 = 0.0, (-(g1 / h11) if h11 < 0 else g1 / max(abs(h11), 1e-12))
        else:
            break
        for _halving in range(20):
            t0 = min(max(x0 + s0, lo0), hi0)
            t1 = min(max(x1 + s1, lo1), hi1)
            # a trial within the tolerance ends the search if it is taken: its value is all
            # that is asked of it (issue 11: the derivatives are ~60 % of an evaluation)
            done = abs(t0 - x0) <= 1e-5 and abs(t1 - x1) <= 1e-7
            new = terms((t0, t1), not done)
            if new[0] >= f:
                break
            s0, s1 = s0 / 2.0, s1 / 2.0
        else:
            break
        x0, x1, (f, grad, hess) = t0, t1, new
        if done:
            break
    return float(np.exp(x0)), float(np.sqrt(x1))


def _error_model_terms(prob, stated, st, min_floor, restricted=False):
    """The objective of :func:`_polish_error_model` as a function of x = (log k, sigma_sys^2):
    returns ``terms(x) -> (value, gradient (2,), Hessian (2, 2))``, all exact.

    The value is the observed log likelihood of the window's pairs (``loglike`` of
    :func:`_fit_window_final`, P_j recomputed) with the pair covariances ``k^2 Sigma_k +
    sigma_sys^2 I`` (floored, :func:`_calibrated`), plus :func:`_error_prior`.  In each pair's
    principal axes (stated ``Sigma_k = U diag(l1, l2) U^T``, which the model and its floor
    keep) the covariance is ``diag(v1, v2)``, ``v_i = max(k^2 l_i + sigma_sys^2,
    MIN_SIGMA_ARCSEC^2)``, linear in (k^2, sigma_sys^2) where not floored, so

    * ``log N_k = -log 2 pi - 1/2 sum_i (log v_i + u_i^2 / v_i)``, u the offset from the shift
      in those axes: derivatives in v_i separate;
    * the window mass of a pair, ``P_k = 1 - mean_t g(V_t)`` with ``g(V) = exp(-R_w^2 / 2V)``
      and ``V_t = alpha_t v1 + beta_t v2`` at the quadrature nodes of :func:`disk_probability`
      (alpha_t, beta_t the squared projections of the node's direction on the principal
      axes): the same quadrature, differentiated term by term (V is linear in v_i);
    * per detection, ``log D_j = log[rho (1 - q P_j) + q S_j]`` and ``-log(c + q e^-mu
      P_j)``, P_j the mean of its pairs' P_k: their derivatives from those of ``log N_k``
      (through the memberships r_k = q N_k / D_j) and of P_j.
    """
    idx = st.idx
    # the pairs' principal axes and their projectors (the restricted term's), computed once per
    # problem (:func:`_stated_axes`), and the window's detections (:meth:`_Problem.window_groups`)
    lam, vx, vy, proj = _stated_axes(prob, stated, idx)
    e = prob.d[idx] - st.s
    u2sq = np.stack([(e[:, 0] * vx + e[:, 1] * vy) ** 2,
                     (e[:, 1] * vx - e[:, 0] * vy) ** 2], axis=1)
    theta = (np.arange(_N_THETA) + 0.5) * (np.pi / _N_THETA)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    alpha = (vx[:, None] * cos_t + vy[:, None] * sin_t) ** 2          # (n, n_theta)
    beta = (vx[:, None] * sin_t - vy[:, None] * cos_t) ** 2
    starts, counts, _ = prob.window_groups(idx)
    rho, q = prob.rho, st.q
    log_rho = np.log(rho) if rho > 0 else -np.inf
    log_q = np.log(q)
    mu = rho * np.pi * st.r_w**2
    c = -np.expm1(-mu)
    q_e = q * np.exp(-mu)
    half_r2 = 0.5 * st.r_w**2
    floor2 = MIN_SIGMA_ARCSEC**2
    min_floor2 = min_floor**2
    # sums and means over the axes / nodes as np.add.reduce (and its division by the count):
    # .sum's and .mean's own arithmetic without their Python wrappers (issue 11)
    total = np.add.reduce
    n_nodes = alpha.shape[1]

    def terms(x, derivatives=True):
        big_a = float(np.exp(2.0 * x[0]))
        raw = big_a * lam + x[1]
        v = np.maximum(raw, floor2)
        inv_v = 1.0 / v
        det_v = v[:, 0] * v[:, 1]
        lg = -np.log(2.0 * np.pi) - 0.5 * (np.log(det_v) + total(u2sq * inv_v, axis=1))
        log_s = _group_logsumexp_counts(lg, starts, counts)
        big_v = alpha * v[:, :1] + beta * v[:, 1:]
        inv_big_v = 1.0 / big_v
        h = np.exp(-half_r2 * inv_big_v)
        p_pair = 1.0 - total(h, axis=1) / n_nodes      # in [0, 1] (:func:`_disk_mass`)
        p_j = np.add.reduceat(p_pair, starts) / counts
        with np.errstate(divide="ignore"):
            log_bg = log_rho + np.log1p(-q * p_j)
        log_d = np.logaddexp(log_bg, log_q + log_s)
        den = c + q_e * p_j
        value = float(total(log_d - np.log(den))) + _error_prior(big_a, x[1], min_floor2)[0]
        # to (A, B) = (k^2, sigma_sys^2): dv_i/dA = l_i, dv_i/dB = 1 where not floored
        jb = (raw >= floor2).astype(float)
        ja = jb * lam
        if not derivatives:         # the value alone (None for the gradient and Hessian)
            if restricted:
                value += _restricted_ab(st.r, inv_v, ja, jb, proj)[0]
            return value, None, None

        # log N_k and P_k differentiated in (v1, v2)
        dn = 0.5 * (u2sq * inv_v - 1.0) * inv_v
        d2n = (0.5 - u2sq * inv_v) * inv_v**2
        # dV/dv_i = alpha, beta; g' = g a / V^2 and g'' = g a (a - 2V) / V^4 with a = R_w^2/2
        a_v2 = half_r2 * inv_big_v * inv_big_v
        h1 = h * a_v2                                                    # dg/dV
        h2 = h1 * (a_v2 - 2.0 * inv_big_v)                               # d2g/dV2
        dp1 = -(total(h1 * alpha, axis=1) / n_nodes)
        dp2 = -(total(h1 * beta, axis=1) / n_nodes)
        h2_alpha = h2 * alpha                       # (h2 alpha) alpha and (h2 alpha) beta
        d2p11 = -(total(h2_alpha * alpha, axis=1) / n_nodes)
        d2p22 = -(total(h2 * beta * beta, axis=1) / n_nodes)
        d2p12 = -(total(h2_alpha * beta, axis=1) / n_nodes)
        ja1, ja2, jb1, jb2 = ja[:, 0], ja[:, 1], jb[:, 0], jb[:, 1]
        g = np.stack([total(dn * ja, axis=1), total(dn * jb, axis=1)], axis=1)
        hn = np.stack([total(d2n * ja * ja, axis=1), total(d2n * ja * jb, axis=1),
                       total(d2n * jb * jb, axis=1)], axis=1)
        dp = np.stack([dp1 * ja1 + dp2 * ja2, dp1 * jb1 + dp2 * jb2], axis=1)
        d2p = np.stack([d2p11 * ja1 * ja1 + 2.0 * d2p12 * ja1 * ja2 + d2p22 * ja2 * ja2,
                        d2p11 * ja1 * jb1 + d2p12 * (ja1 * jb2 + ja2 * jb1) + d2p22 * ja2 * jb2,
                        d2p11 * jb1 * jb1 + 2.0 * d2p12 * jb1 * jb2 + d2p22 * jb2 * jb2],
                       axis=1)
        # per detection: memberships r_k = q N_k / D_j, pi_j = rho q / D_j, kappa_j = q e^-mu / E_j
        r = np.exp(log_q + lg - log_d.repeat(counts))
        pi_j = np.exp(log_rho + log_q - log_d)
        kappa = q_e / den
        dp_j = np.add.reduceat(dp, starts, axis=0) / counts[:, None]
        d2p_j = np.add.reduceat(d2p, starts, axis=0) / counts[:, None]
        big_g = np.add.reduceat(r[:, None] * g, starts, axis=0) - pi_j[:, None] * dp_j
        grad_ab = total(big_g, axis=0) - kappa @ dp_j
        gg = np.stack([g[:, 0] * g[:, 0], g[:, 0] * g[:, 1], g[:, 1] * g[:, 1]], axis=1)
        big_gg = np.stack([big_g[:, 0] ** 2, big_g[:, 0] * big_g[:, 1], big_g[:, 1] ** 2],
                          axis=1)
        dpp = np.stack([dp_j[:, 0] ** 2, dp_j[:, 0] * dp_j[:, 1], dp_j[:, 1] ** 2], axis=1)
        h_ab = (r @ (gg + hn) - (pi_j + kappa) @ d2p_j - total(big_gg, axis=0)
                + (kappa * kappa) @ dpp)
        # to x = (log k, B): A = exp(2 x0)
        grad = np.array([2.0 * big_a * grad_ab[0], grad_ab[1]])
        hess = np.array([[4.0 * big_a * (big_a * h_ab[0] + grad_ab[0]), 2.0 * big_a * h_ab[1]],
                         [2.0 * big_a * h_ab[1], h_ab[2]]])
        if _CAL_PRIOR is not None:
            tau_k, tau_f = _CAL_PRIOR
            grad += [-x[0] / tau_k**2, -0.5 / tau_f**2]
            hess[0, 0] -= 1.0 / tau_k**2
        if restricted:      # (:func:`_restricted_objective`), on this model's v and axes
            r_value, r_grad, r_hess = _restricted_in_x(
                big_a, _restricted_ab(st.r, inv_v, ja, jb, proj))
            return value + r_value, grad + r_grad, hess + r_hess
        return value, grad, hess

    return terms


def _restricted_objective(prob, stated, st, min_floor):
    """The objective of :func:`_polish_error_model`: the error model's restricted likelihood,
    :func:`_error_model_terms` plus the term ``-1/2 log det I`` (:func:`_restricted_ab`) at the
    state's memberships, as ``terms(x) -> (value, gradient (2,), Hessian (2, 2))`` in x = (log
    k, sigma_sys^2), exact (A = k^2 = exp(2 x0) chained as :func:`_error_model_terms` chains
    its own, :func:`_restricted_in_x`).  The term is added inside :func:`_error_model_terms`
    (``restricted``), which has the pairs' principal axes and variances at hand."""
    return _error_model_terms(prob, stated, st, min_floor, restricted=True)


def _restricted_in_x(big_a, terms_ab):
    """The restricted term ``(value, gradient (2,), Hessian (AA, AB, BB))`` in (A, B) =
    (k^2, sigma_sys^2) (:func:`_restricted_ab`) as (value, gradient (2,), Hessian (2, 2)) in
    x = (log k, sigma_sys^2), at A = ``big_a`` = exp(2 x0): dA/dx0 = 2A, d2A/dx0^2 = 4A."""
    value, grad, hess = terms_ab
    return (value, np.array([2.0 * big_a * grad[0], grad[1]]),
            np.array([[4.0 * big_a * (big_a * hess[0] + grad[0]), 2.0 * big_a * hess[1]],
                      [2.0 * big_a * hess[1], hess[2]]]))


def _axis_projectors(vx, vy):
    """The projectors of pairs' principal axes (``vx``, ``vy`` the larger one's direction) as
    (xx, xy, yy), P1 on (vx, vy) and P2 on (-vy, vx), laid out (2n, 3) -- pair k's P1 in row
    2k, its P2 in row 2k + 1 -- for :func:`_restricted_ab`, which a fit calls many times on
    the same pairs."""
    return np.stack([np.stack([vx * vx, vx * vy, vy * vy], axis=1),
                     np.stack([vy * vy, -vx * vy, vx * vx], axis=1)], axis=1).reshape(-1, 3)


def _restricted_ab(r, inv_v, ja, jb, proj):
    """The restricted likelihood's term of the error model, ``-1/2 log det I`` with ``I =
    sum_k r_k C_k^-1`` the shift's information (memberships ``r`` held: (n,), or (n, 2) each
    pair's for both axes, as the M step makes them once), and its gradient (2,) and Hessian
    (AA, AB, BB) in (A, B) = (k^2, sigma_sys^2), as Python floats and tuples; (0, 0, 0) where
    I is not positive definite (no information: nothing to correct).

    In each pair's principal axes ``C_k^-1 = P1 / v1 + P2 / v2`` (P_i the projectors on the
    axes, ``proj`` = :func:`_axis_projectors` of the larger one's direction, ``inv_v`` = 1 /
    v_i, ``ja``/``jb`` = dv_i/dA, dv_i/dB: 0 where floored), so ``dI = -sum r J / v_i^2
    P_i``, ``d2I = sum 2 r J J' / v_i^3 P_i``, ``d(-1/2 log det I) = -1/2 tr(I^-1 dI)`` and
    ``d2 = -1/2 [tr(I^-1 d2I) - tr(I^-1 dI_a I^-1 dI_b)]``, with the 2 x 2 inverse in closed
    form.
    """
    # the six sums over the pairs -- I, dI/dA, dI/dB, d2I/dA2, d2I/dAdB, d2I/dB2 as (xx, xy,
    # yy) -- in one product: coefficients (6, n, 2) on the axes' projectors (2n, 3), with rv =
    # r / v, rv2 = rv / v, rv3 = 2 rv2 / v: (rv, -rv2 ja, -rv2 jb, rv3 ja ja, rv3 ja jb, rv3 jb
    # jb), each made in its row (issue 11: the stack's copies and temporaries cost more than
    # the products); ``jb`` None: 1 for every pair (none floored), the products by it left out
    coef = np.empty((6,) + inv_v.shape)
    rv, rv2, rv3 = coef[0], coef[2], coef[5]
    # (the outputs passed by position: ``out=`` costs a keyword parse per call)
    np.multiply(r if r.ndim == 2 else r[:, None], inv_v, rv)
    np.multiply(rv, inv_v, rv2)
    np.multiply(2.0, rv2, rv3)
    rv3 *= inv_v
    np.negative(rv2, rv2)                       # row 2: -rv2
    np.multiply(rv2, ja, coef[1])               # (-rv2) ja: the same number as -(rv2 ja)
    np.multiply(rv3, ja, coef[4])
    np.multiply(coef[4], ja, coef[3])
    if jb is not None:
        coef[2] *= jb
        coef[4] *= jb
        coef[5] *= jb
        coef[5] *= jb
    (xx, xy, yy), (a0, a1, a2), (b0, b1, b2), (c0, c1, c2), (d0, d1, d2), (e0, e1, e2) = (
        coef.reshape(6, -1) @ proj).tolist()
    det = xx * yy - xy * xy
    # I is a sum of positive semi-definite matrices (r >= 0, 1 / v_i > 0 and bounded by the
    # variances' floor): positive definite where its determinant is positive (not NaN)
    if not det > 0:
        return 0.0, (0.0, 0.0), (0.0, 0.0, 0.0)
    # I^-1 = [[yy, -xy], [-xy, xx]] / det: tr(I^-1 D) = (yy D00 - 2 xy D01 + xx D11) / det and
    # the products I^-1 D as (00, 01, 10, 11) of the first derivatives (t: dI/dA, u: dI/dB),
    # in closed form on Python floats (issue 11: no closures, no arrays)
    t00, t01 = (yy * a0 - xy * a1) / det, (yy * a1 - xy * a2) / det
    t10, t11 = (xx * a1 - xy * a0) / det, (xx * a2 - xy * a1) / det
    u00, u01 = (yy * b0 - xy * b1) / det, (yy * b1 - xy * b2) / det
    u10, u11 = (xx * b1 - xy * b0) / det, (xx * b2 - xy * b1) / det
    grad = (-0.5 * ((yy * a0 - 2.0 * xy * a1 + xx * a2) / det),
            -0.5 * ((yy * b0 - 2.0 * xy * b1 + xx * b2) / det))
    # tr(t t), tr(t u), tr(u u): tr(a b) = a00 b00 + a01 b10 + a10 b01 + a11 b11
    hess = (-0.5 * ((yy * c0 - 2.0 * xy * c1 + xx * c2) / det
                    - (t00 * t00 + t01 * t10 + t10 * t01 + t11 * t11)),
            -0.5 * ((yy * d0 - 2.0 * xy * d1 + xx * d2) / det
                    - (t00 * u00 + t01 * u10 + t10 * u01 + t11 * u11)),
            -0.5 * ((yy * e0 - 2.0 * xy * e1 + xx * e2) / det
                    - (u00 * u00 + u01 * u10 + u10 * u01 + u11 * u11)))
    return -0.5 * math.log(det), grad, hess


def _restricted_log_det(r, inv, max_shift):
    """The restricted likelihood's term of an error model in the choice of model
    (:func:`_gain_same_window`): ``-1/2 log det I``, ``I = sum_k r_k C_k^-1`` the shift's
    information (``inv`` the pairs' C_k^-1, memberships ``r``), at most ``log(A / 2 pi)``, A =
    (2 ``max_shift``)^2 the shift's domain.

    The restricted likelihood is the likelihood integrated over the shift: to second order
    ``L(s) 2 pi det(I)^-1/2``, the constant 2 pi the same for every model; never more than
    ``L(s) A``, which the cap keeps where I is (nearly) singular -- a model whose memberships
    are all ~0 has a likelihood flat in the shift, and the second-order form would reward it
    without bound (e.g. ``+715`` for stated errors of 0.001" against a 0.3" scatter)."""
    cap = math.log(4.0 * max_shift * max_shift / (2.0 * math.pi))
    # I is a sum of positive semi-definite matrices: singular, its log determinant is -inf and
    # the term the cap.  The 2 x 2's determinant in closed form (np.linalg.slogdet's log of its
    # absolute value; einsum and slogdet cost ~10x the arithmetic, issue 11)
    a, b, d = float(r @ inv[:, 0, 0]), float(r @ inv[:, 0, 1]), float(r @ inv[:, 1, 1])
    det = abs(a * d - b * b)
    return min(-0.5 * math.log(det), cap) if det > 0 else cap


def _stated_axes(prob, stated, idx):
    """:func:`_principal_axes` of the stated covariances ``stated`` and their
    :func:`_axis_projectors`, for the pairs ``idx``: (lam, vx, vy, proj).  Both are row by row,
    so they are computed once for all of a problem's pairs (kept on ``prob`` with ``stated``;
    each error-model step asks for them on its window, issue 11) and gathered."""
    got = prob._axes
    if got is None or got[0] is not stated:
        lam, vx, vy = _principal_axes(stated)
        got = prob._axes = (stated, lam, vx, vy, _axis_projectors(vx, vy).reshape(-1, 2, 3))
    _, lam, vx, vy, proj = got
    return lam[idx], vx[idx], vy[idx], proj[idx].reshape(-1, 3)


def _principal_axes(cov):
    """Eigenvalues (n, 2: larger first, the smaller clipped at 0) and the unit eigenvector
    (vx, vy) of the larger one of symmetric 2x2 covariances ``cov`` (n, 2, 2).

    The eigenvector comes from the row of (C - lambda_1 I) that does not cancel:
    (lambda_1 - c, b) when a >= c, else (b, lambda_1 - a) -- an ellipse along an axis has
    b ~ 1e-17 (cos 90 deg) and lambda_1 - a ~ 0 in the other form; a circle (both zero)
    takes any axis.
    """
    a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    half_tr = 0.5 * (a + c)
    disc = np.sqrt((0.5 * (a - c)) ** 2 + b * b)
    lam = np.stack([half_tr + disc, np.maximum(half_tr - disc, 0.0)], axis=1)
    wide_x = a >= c
    vx = np.where(wide_x, lam[:, 0] - c, b)
    vy = np.where(wide_x, b, lam[:, 0] - a)
    norm = np.hypot(vx, vy)
    circle = norm == 0
    vx = np.where(circle, 1.0, vx / np.where(circle, 1.0, norm))
    vy = np.where(circle, 0.0, vy / np.where(circle, 1.0, norm))
    return lam, vx, vy


def _fit_error_model(prob, stated, st, scale, floor, min_floor):
    """One M step for the error model: (k, sigma_sys) maximising, at fixed memberships r and
    shift s, the expected complete-data log likelihood of the window's pairs,

        sum_k r_k [ -1/2 log det C_k - 1/2 e_k^T C_k^-1 e_k ],  C_k = A Sigma_k + B I,

    A = k^2, B = sigma_sys^2, e_k = d_k - s, plus the error model's log prior
    (:func:`_error_prior`) and the restricted likelihood's term ``-1/2 log det sum_k r_k
    C_k^-1`` (:func:`_restricted_ab`; module docstring, "Restricted likelihood"), so that the
    polish (:func:`_polish_error_model`, the same term on the observed likelihood) starts near
    its own maximum (issue 11, session 12: from the plain M step's maximum the speed
    benchmark's stack mix took 2.7 polishes and 11.5 objective evaluations per stack, from
    this one 1.0 and 2.5).  In each pair's principal axes (Sigma_k = U diag(l1, l2) U^T, u = U^T e)
    the terms separate: -1/2 [log v + u^2 / v], v = A l + B.  Newton on (A, B) with the
    observed information, Fisher scoring (without the restricted term's curvature) where that
    is not positive definite, with step halving, within the bounds (B >= min_floor^2).
    """
    idx, r = st.idx, st.r
    e = prob.d[idx] - st.s
    lam, vx, vy, proj = _stated_axes(prob, stated, idx)
    u1 = e[:, 0] * vx + e[:, 1] * vy
    u2 = -e[:, 0] * vy + e[:, 1] * vx
    u2sq = np.stack([u1 * u1, u2 * u2], axis=1)
    w = r[:, None].repeat(2, axis=1)       # (the array's own method: np.repeat's wrapper)
    half_w = 0.5 * w
    lo_a, hi_a = _CAL_SCALE_RANGE[0] ** 2, _CAL_SCALE_RANGE[1] ** 2
    lo_b, hi_b = min_floor**2, max(_CAL_MAX_FLOOR**2, min_floor**2)
    floor2 = (MIN_SIGMA_ARCSEC**2)
    # (sums over the pairs' two axes: np.add.reduce is .sum()'s arithmetic without its wrapper)
    total = np.add.reduce

    def objective(aa, bb):
        # (value, pieces): v, 1 / v, u^2 / v, the prior's (value, gradient, curvature) and the
        # restricted term (value, gradient, Hessian), reused by the next scoring step when the
        # point is accepted
        raw = aa * lam + bb
        v = np.maximum(raw, floor2)
        unfloored = raw >= floor2                # dv/dB (0 where floored), as the polish's
        if unfloored.all():
            ja, jb = lam, None                  # (lam times 1: lam)
        else:
            jb = unfloored.astype(float)
            ja = jb * lam
        inv_v = 1.0 / v
        reml = _restricted_ab(w, inv_v, ja, jb, proj)
        u_v = u2sq / v
        prior = _error_prior(aa, bb, lo_b)
        return (float(total(w * (-0.5 * (np.log(v) + u_v)), axis=None)) + prior[0]
                + reml[0]), (v, inv_v, u_v, prior, reml)

    aa, bb = scale * scale, floor * floor
    f, (v, inv_v, u_v, prior, reml) = objective(aa, bb)
    # the 2 x 2 scoring system on Python floats (the same IEEE operations as on numpy's arrays
    # and scalars, element by element; np.linalg.solve as :func:`_solve2`: issue 11)
    for _ in range(50):
        v2 = v**2
        g = half_w * (u2sq / v2 - inv_v)
        (pg0, pg1), (pc0, pc1) = prior[1], prior[2]
        (rg0, rg1), (rh0, rh1, rh2) = reml[1], reml[2]
        g0 = float(total(g * lam, axis=None)) + pg0 + rg0
        g1 = float(total(g, axis=None)) + pg1 + rg1
        # Newton with the observed information where it is positive definite (near the
        # maximum: quadratic convergence, issue 11), else Fisher scoring (its expectation,
        # u^2 = v: always positive definite; the restricted term's curvature left out there)
        h = w * (u_v - 0.5) / v2
        h_l = h * lam
        f01 = float(total(h_l, axis=None)) - rh1
        f00 = float(total(h_l * lam, axis=None)) + pc0 * (1.0 - float(np.log(aa))) - rh0
        f11 = float(total(h, axis=None)) + pc1 - rh2
        if not (f00 > 0 and f00 * f11 > f01 * f01):
            h = 0.5 * w / v2
            f01 = float(total(h * lam, axis=None))
            f00 = float(total(h * lam * lam, axis=None)) + pc0
            f11 = float(total(h, axis=None)) + pc1
        # a parameter that is fixed, or on a bound that its gradient pushes against, stays;
        # the other takes its own scoring step (a joint step clipped at the bound is not
        # an ascent direction for the free one, and crawled to the iteration cap)
        hold_a = lo_a == hi_a or (aa <= lo_a and g0 < 0) or (aa >= hi_a and g0 > 0)
        hold_b = lo_b == hi_b or (bb <= lo_b and g1 < 0) or (bb >= hi_b and g1 > 0)
        if hold_a and hold_b:
            break
        if hold_a:
            step = (0.0, g1 / f11 if f11 > 0 else 0.0)
        elif hold_b:
            step = (g0 / f00 if f00 > 0 else 0.0, 0.0)
        else:
            try:
                step = _solve2(f00, f01, f01, f11, g0, g1)
            except np.linalg.LinAlgError:
                trace = max(f00 + f11, 1e-300)
                step = (g0 / trace, g1 / trace)
        improved = False
        for _halving in range(30):
            na = min(max(aa + step[0], lo_a), hi_a)
            nb = min(max(bb + step[1], lo_b), hi_b)
            nf, pieces = objective(na, nb)
            if nf >= f - 1e-12 * abs(f):
                improved = True
                break
            step = (step[0] / 2.0, step[1] / 2.0)
        if not improved:
            break
        done = abs(na - aa) <= 1e-10 * aa and abs(nb - bb) <= 1e-12
        aa, bb, f, (v, inv_v, u_v, prior, reml) = na, nb, nf, pieces
        if done:
            break
    return float(np.sqrt(aa)), float(np.sqrt(bb))


def _window(prob, s, edge):
    """The window around the shift ``s``: its radius and the mask of the pairs inside it.

    The largest disk around ``s`` inside the match circle (``R - |s|``), shrunk when a window
    cycle marked pairs as ``edge`` so that they lie just outside it.  (``edge.any()``: the
    array's own method, without np.any's wrapper, issue 11.)
    """
    dist = np.hypot(prob.d[:, 0] - s[0], prob.d[:, 1] - s[1])
    r_w = prob.radius - float(np.hypot(*s))
    if edge.any():
        r_w = min(r_w, float(np.min(dist[edge])) * (1.0 - 1e-9))
    return r_w, dist <= r_w


def _window_terms(prob, idx, r_w):
    """P_j (per detection with pairs ``idx`` in the window) and mu for a window of radius r_w.
    Kept with ``prob``'s current covariances (:meth:`_Problem.use_model`): the model choice asks
    again for windows a fit has just computed."""
    key = (r_w, idx.tobytes())
    got = prob._terms.get(key)
    if got is not None:
        return got
    p_pair = _disk_mass(prob.disk_terms()[idx], r_w)
    starts, counts, single = prob.window_groups(idx)
    # one pair per detection: reduceat and / 1 give p_pair itself
    p_win = p_pair if single else np.add.reduceat(p_pair, starts) / counts
    p_win.flags.writeable = False
    got = prob._terms[key] = (p_win, prob.rho * np.pi * r_w**2)
    return got


def _fit_window_final(prob, idx, s, q, p_win, mu):
    """Memberships and likelihood pieces at fixed (s, q) (no iteration)."""
    starts, counts, single = prob.window_groups(idx)
    rho = prob.rho
    log_rho = np.log(rho) if rho > 0 else -np.inf
    dx, dy, i00, two_i01, i11, _, log_norm, _, _ = prob.window_pieces(idx)
    lg = _log_density(dx, dy, i00, two_i01, i11, log_norm, s[0], s[1])
    with np.errstate(divide="ignore"):
        log_bg = log_rho + np.log1p(-q * p_win)
    log_s, log_d, r = _e_step(lg, log_bg, np.log(q), starts, counts, single)
    c = -np.expm1(-mu)
    e = np.exp(-mu) * p_win
    log_e = np.log(c + q * e)
    info = {"log_s": log_s, "log_d": log_d, "starts": starts,
            "loglike": float(np.add.reduce(log_d - log_e)), "c": c, "e": e}
    return s, q, r, 0, True, info
