"""The campaign's science report: spec §6's criteria measured and §5.5.7's absolute error.

Computed from the campaign results (one row per stack: the fitted shift, its covariance, QA
bits; the record array of ``campaign.fits``), the stacks' input catalogs (detections and Gaia,
read with fitsio) and, for a simulated campaign, its truth (``stk_simpop``'s ``truth.fits``):

- the distribution of fitted shifts (mean, width, skewness, tails) beside the truth's, and
  the fitted-minus-true errors with their pulls;
- offsets of detections to Gaia before and after the correction, per stack and overall;
- between-stack agreement: every source detected in overlapping stacks, its separation before
  and after (:mod:`stk_astrometry.core.overlap`);
- the QA count and fraction per reason against the specification's limit (~600 of ~10,000);
- the §5.5.7 absolute error (:mod:`stk_astrometry.core.abserr`) with its interval and 95 %
  radius, overall, per instrument, per off-axis bin (and per error regime with a truth).

Corrected positions are computed as stk_xfm's corrected detections are (formats.md §3:
``tangent_to_sky(sky_to_tangent(det) + (d_xi, d_eta))`` at the stack's tangent point), so no
per-stack corrected-detections file is needed.  Gaia is propagated to the stack's epoch
(``DATE-OBS``/``MJD-OBS`` of the detections; null proper motions stay) and sources above
``max_pm`` are left out, so that the offsets measure the X-ray positions, not the stars'
motion.

Outputs (in the campaign folder): ``science.fits`` (one table HDU per section, TUNIT/TCOMM
cards), a CSV per section, PNG plots, and ``science.html`` (also returned as a fragment for the
campaign's ``index.html``).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.abserr import (
    ellipse_covariance,
    fit_absolute_error,
    implied_systematic,
    simulated_systematic,
    normalised_offsets,
    rayleigh_pdf,
)
from ..core.overlap import overlap_pairs, summarise_overlap
from ..core.population import propagate
from ..tangent import sky_to_tangent, tangent_to_sky

__all__ = ["QA_LIMIT_FRACTION", "ScienceOptions", "ScienceReport", "StackCatalogs",
           "analyse", "load_stack", "stack_offsets", "write_science_report"]

#: The specification's limit: no more than ~600 of ~10,000 stacks need manual QA (§6).
QA_LIMIT_FRACTION = 600.0 / 10000.0
_QA_BITS = ((1, "NOMATCH"), (2, "DENSE"), (4, "BIGSHIFT"), (8, "FEWMATCH"), (16, "DISAGREE"))
_GOOD_CLASSES = ("TRUE", "MARGINAL")


@dataclass(frozen=True)
class ScienceOptions:
    """Choices of the report (arcsec unless the name says otherwise)."""

    match_radius: float = 3.0        #: Gaia pairs within this of a corrected detection
    r_stack_arcmin: float = 10.0
    max_pm: float = 50.0             #: mas/yr; Gaia sources above are not used (spec §5.2)
    abs_min_match: int = 10          #: stacks with fewer matches stay out of §5.5.7
    abs_max_r95: float = 2.0         #: detections with a larger stated 95 % radius stay out
    abs_level: float = 0.95
    #: simulated replicas of a truth-given campaign's detections behind each group's
    #: ``expected_fit`` (core.abserr.simulated_systematic): its noise is 1/sqrt(replicas)
    #: of the estimate's
    abs_target_replicas: int = 2
    theta_bins: tuple = (0.0, 3.0, 6.0, 10.0)
    propagate_gaia: bool = True
    #: How §5.5.7 treats the applied shift's error: ``free`` (each stack's mean offset is a
    #: nuisance parameter, restricted likelihood: the estimate does not depend on how well
    #: the shifts were fitted; see core.abserr), ``subtract`` (C - C_shift: right only when
    #: the fit weighted every pair by its true inverse covariance), ``add`` (C + C_shift: the
    #: shift came from elsewhere) or ``ignore``.
    shift_covariance: str = "free"

    def __post_init__(self):
        if self.shift_covariance not in ("free", "subtract", "add", "ignore"):
            raise ValueError(f"shift_covariance={self.shift_covariance!r}: free, subtract, "
                             "add or ignore")


@dataclass(frozen=True)
class StackCatalogs:
    """What the report reads of one stack: filtered detections and Gaia (arrays)."""

    stackid: str
    epoch_yr: float                  #: NaN when the detections carry no date
    region_id: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    r0_arcsec: np.ndarray
    r1_arcsec: np.ndarray
    ang_deg: np.ndarray
    theta_arcmin: np.ndarray
    gaia_ra_deg: np.ndarray
    gaia_dec_deg: np.ndarray
    gaia_pmra: np.ndarray
    gaia_pmdec: np.ndarray


@dataclass(frozen=True)
class StackOffsets:
    """Offsets of one stack's filtered detections to Gaia, before and after the correction."""

    sep_before: np.ndarray           #: nearest Gaia within match_radius (inf: none)
    sep_after: np.ndarray
    ra_after_deg: np.ndarray
    dec_after_deg: np.ndarray
    pair_det: np.ndarray             #: every Gaia within match_radius of a corrected detection
    pair_dxi: np.ndarray
    pair_deta: np.ndarray
    gaia_density_arcsec2: float      #: usable Gaia sources per arcsec^2 within r_stack


# --------------------------------------------------------------------------- reading


def _column(data, names, wanted, path, aliases=()):
    lower = {n.lower(): n for n in names}
    for name in (wanted, *aliases):
        if name in lower:
            return data[lower[name]]
    raise KeyError(f"{path}: no column {wanted!r} (tried {', '.join((wanted, *aliases))})")


def _epoch_from_header(header):
    for key in ("MJD-OBS", "MJD_OBS"):
        if key in header:
            try:
                return 2000.0 + (float(header[key]) - 51544.5) / 365.25
            except (TypeError, ValueError):
                pass
    if "DATE-OBS" in header:
        from astropy.time import Time

        try:
            return float(Time(str(header["DATE-OBS"]).strip(), scale="utc").decimalyear)
        except ValueError:
            pass
    return math.nan


def load_stack(stackid, detfile, gaiafile, *, r_stack_arcmin=10.0, ra_stack=None,
               dec_stack=None):
    """Read one stack's detections (filtered as stk_match filters them) and Gaia cone."""
    import fitsio

    with fitsio.FITS(str(detfile)) as f:
        hdu = next(h for h in f if h.get_exttype() in ("BINARY_TBL", "ASCII_TBL"))
        header = hdu.read_header()
        det = hdu.read()
    names = det.dtype.names or ()
    n = det.size

    def col(name, *aliases, default=None):
        try:
            return _column(det, names, name, detfile, aliases)
        except KeyError:
            if default is None:
                raise
            return np.full(n, default)

    cls = np.char.upper(np.char.strip(np.asarray(col("likelihood_class")).astype(str)))
    keep = np.isin(cls, _GOOD_CLASSES)
    for flag in ("sat_src_flag", "conv_hull"):
        vals = np.asarray(col(flag, default=False))
        keep &= ~(vals.astype(bool) if vals.dtype.kind in "biu" else
                  np.isin(np.char.upper(vals.astype(str)), ("T", "TRUE", "1")))
    ra = np.asarray(col("ra", "ra_deg", "raj2000"), dtype=float)
    dec = np.asarray(col("dec", "dec_deg", "dej2000"), dtype=float)
    theta = np.asarray(col("theta", "theta_mean", default=np.nan), dtype=float)
    if ra_stack is not None and dec_stack is not None and np.any(~np.isfinite(theta)):
        x, y = sky_to_tangent(ra, dec, ra_stack, dec_stack)
        theta = np.where(np.isfinite(theta), theta, np.hypot(x, y) / 60.0)
    keep &= ~(theta > r_stack_arcmin)
    gaia = fitsio.read(str(gaiafile), ext=1)
    gnames = gaia.dtype.names or ()
    return StackCatalogs(
        stackid=str(stackid), epoch_yr=_epoch_from_header(header),
        region_id=np.asarray(col("region_id"))[keep].astype(np.int64),
        ra_deg=ra[keep], dec_deg=dec[keep],
        r0_arcsec=np.asarray(col("err_ellipse_r0", "err_r0", "r0"), dtype=float)[keep],
        r1_arcsec=np.asarray(col("err_ellipse_r1", "err_r1", "r1"), dtype=float)[keep],
        ang_deg=np.asarray(col("err_ellipse_ang", "err_ang", default=0.0), dtype=float)[keep],
        theta_arcmin=theta[keep],
        gaia_ra_deg=np.asarray(_column(gaia, gnames, "ra", gaiafile, ("ra_deg", "raj2000")),
                               dtype=float),
        gaia_dec_deg=np.asarray(_column(gaia, gnames, "dec", gaiafile, ("dec_deg", "dej2000")),
                                dtype=float),
        gaia_pmra=np.asarray(_column(gaia, gnames, "pmra", gaiafile), dtype=float),
        gaia_pmdec=np.asarray(_column(gaia, gnames, "pmdec", gaiafile), dtype=float),
    )


# --------------------------------------------------------------------------- pure per stack


def stack_offsets(cat, *, ra_stack, dec_stack, d_xi, d_eta, options=None):
    """Offsets of a stack's detections to Gaia before and after the shift.  Pure.

    Parameters
    ----------
    cat : StackCatalogs
    ra_stack, dec_stack : float
        The tangent point of the shift.
    d_xi, d_eta : float
        The applied shift (arcsec; 0 for an identity transform).
    """
    from scipy.spatial import cKDTree

    opt = options or ScienceOptions()
    xb, yb = sky_to_tangent(cat.ra_deg, cat.dec_deg, ra_stack, dec_stack)
    xa, ya = xb + d_xi, yb + d_eta
    ra_a, dec_a = tangent_to_sky(xa, ya, ra_stack, dec_stack)
    pm_tot = np.hypot(cat.gaia_pmra, cat.gaia_pmdec)
    ok = ~(pm_tot > opt.max_pm) & np.isfinite(cat.gaia_ra_deg) & np.isfinite(cat.gaia_dec_deg)
    gra, gdec = cat.gaia_ra_deg[ok], cat.gaia_dec_deg[ok]
    if opt.propagate_gaia and math.isfinite(cat.epoch_yr):
        gra, gdec = propagate(gra, gdec, cat.gaia_pmra[ok], cat.gaia_pmdec[ok],
                              cat.epoch_yr - 2016.0)
    n = xb.size
    empty = np.zeros(0)
    if gra.size == 0 or n == 0:
        inf = np.full(n, np.inf)
        return StackOffsets(inf, inf.copy(), ra_a, dec_a, np.zeros(0, np.int64), empty, empty,
                            0.0)
    gx, gy = sky_to_tangent(gra, gdec, ra_stack, dec_stack)
    r_as = opt.r_stack_arcmin * 60.0
    density = np.count_nonzero(np.hypot(gx, gy) <= r_as) / (math.pi * r_as**2)
    tree = cKDTree(np.column_stack([gx, gy]))
    sep_b, _ = tree.query(np.column_stack([xb, yb]), distance_upper_bound=opt.match_radius)
    sep_a, _ = tree.query(np.column_stack([xa, ya]), distance_upper_bound=opt.match_radius)
    lists = tree.query_ball_point(np.column_stack([xa, ya]), opt.match_radius)
    counts = np.array([len(v) for v in lists], dtype=np.int64)
    pair_det = np.repeat(np.arange(n), counts)
    idx = np.concatenate([np.asarray(v, dtype=np.int64) for v in lists]) if counts.sum() else \
        np.zeros(0, np.int64)
    return StackOffsets(sep_b, sep_a, ra_a, dec_a, pair_det, gx[idx] - xa[pair_det],
                        gy[idx] - ya[pair_det], float(density))


# --------------------------------------------------------------------------- the analysis


@dataclass
class ScienceReport:
    """Everything the report shows, as tables (name -> list of row dicts) and plot data."""

    tables: dict = field(default_factory=dict)
    plot_data: dict = field(default_factory=dict)
    headline: dict = field(default_factory=dict)


def _stats(v):
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "skew": math.nan}
    sd = float(np.std(v))
    skew = float(np.mean((v - v.mean()) ** 3) / sd**3) if sd > 0 else math.nan
    return {"n": int(v.size), "mean": float(np.mean(v)), "std": sd, "median": float(np.median(v)),
            "skew": skew}


def _field(records, name, default=math.nan):
    names = records.dtype.names or ()
    if name in names:
        return np.asarray(records[name])
    return np.full(len(records), default)


def _strings(a):
    a = np.asarray(a)
    if a.dtype.kind == "S":
        a = np.char.decode(a, "ascii")
    return np.char.strip(a.astype(str))


def analyse(records, catalogs, *, truth=None, options=None):
    """Compute every section of the science report.  Pure (catalogs already read).

    Parameters
    ----------
    records : numpy record array
        The campaign table (``stackid``, ``status``, ``instrument``, ``ra_stack``,
        ``dec_stack``, ``d_xi``, ``d_eta``, ``d_xi_err``, ``d_eta_err``, ``cov_xi_eta``,
        ``qa_flags``, ``n_match``; as ``stk_batch`` writes them).
    catalogs : mapping stackid -> StackCatalogs
        The stacks' filtered detections and Gaia (stacks missing here are left out of the
        offset sections).
    truth : dict, optional
        ``{"stacks": record array, "detections": record array, "sys_abs": float}`` from
        ``stk_simpop``'s truth file.
    options : ScienceOptions, optional

    Returns
    -------
    ScienceReport
    """
    opt = options or ScienceOptions()
    rep = ScienceReport()
    sid = _strings(_field(records, "stackid", ""))
    status = _strings(_field(records, "status", "done"))
    done = status == "done"
    flags = _field(records, "qa_flags", 0).astype(np.int64)
    instrument = _strings(_field(records, "instrument", ""))
    d_xi, d_eta = _field(records, "d_xi").astype(float), _field(records, "d_eta").astype(float)
    ex, ey = _field(records, "d_xi_err").astype(float), _field(records, "d_eta_err").astype(float)
    cxy = np.nan_to_num(_field(records, "cov_xi_eta").astype(float))
    n_match = _field(records, "n_match", -1).astype(float)
    nomatch = (flags & 1) != 0
    fitted = done & ~nomatch & np.isfinite(d_xi) & np.isfinite(d_eta)
    n_stacks = len(records)

    # --- QA per reason against the limit
    qa_rows = []
    for bit, name in _QA_BITS:
        k = int(np.count_nonzero(done & ((flags & bit) != 0)))
        qa_rows.append({"reason": name, "n_stacks": k, "fraction": k / n_stacks if n_stacks else
                        math.nan})
    n_qa = int(np.count_nonzero(done & (flags != 0)))
    n_failed = int(np.count_nonzero(~done))
    qa_rows.append({"reason": "ANY", "n_stacks": n_qa,
                    "fraction": n_qa / n_stacks if n_stacks else math.nan})
    # §5.7's own three rules (DENSE, BIGSHIFT, FEWMATCH) without this project's additions
    # (NOMATCH for stacks with no match at all, DISAGREE between the estimators): the
    # fraction the specification's rules give by themselves (issue 17)
    n_spec = int(np.count_nonzero(done & ((flags & (2 | 4 | 8)) != 0)))
    qa_rows.append({"reason": "SPEC_RULES", "n_stacks": n_spec,
                    "fraction": n_spec / n_stacks if n_stacks else math.nan})
    qa_rows.append({"reason": "FAILED", "n_stacks": n_failed,
                    "fraction": n_failed / n_stacks if n_stacks else math.nan})
    rep.tables["QA"] = qa_rows
    rep.headline["qa_fraction"] = n_qa / n_stacks if n_stacks else math.nan
    rep.headline["qa_limit_fraction"] = QA_LIMIT_FRACTION
    rep.headline["n_stacks"] = n_stacks

    # --- shifts beside the truth
    shift_rows = []
    true_xi = true_eta = None
    if truth is not None:
        ts = truth["stacks"]
        tmap = {s: i for i, s in enumerate(_strings(ts["stackid"]))}
        ti = np.array([tmap.get(s, -1) for s in sid])
        has_t = ti >= 0
        true_xi = np.where(has_t, np.asarray(ts["d_xi"], float)[np.maximum(ti, 0)], np.nan)
        true_eta = np.where(has_t, np.asarray(ts["d_eta"], float)[np.maximum(ti, 0)], np.nan)
    for label, mask in (("fitted", fitted),):
        for axis, v in (("xi", d_xi), ("eta", d_eta)):
            row = {"set": label, "axis": axis, **_stats(v[mask])}
            if true_xi is not None:
                tv = (true_xi if axis == "xi" else true_eta)[mask]
                st = _stats(tv)
                row.update({"true_mean": st["mean"], "true_std": st["std"],
                            "true_skew": st["skew"]})
                err = v[mask] - tv
                sig = (ex if axis == "xi" else ey)[mask]
                row["err_rms"] = float(np.sqrt(np.nanmean(err**2))) if err.size else math.nan
                pull = err / sig
                pull = pull[np.isfinite(pull)]
                row["pull_std"] = float(np.std(pull)) if pull.size else math.nan
                # robust width: a few wild stacks dominate the std
                row["pull_mad"] = float(1.4826 * np.median(np.abs(pull))) if pull.size else \
                    math.nan
                row["frac_err_gt_3sigma"] = float(np.mean(np.abs(pull) > 3)) if pull.size else \
                    math.nan
            shift_rows.append(row)
    tot = np.hypot(d_xi, d_eta)[fitted]
    pct = {f"p{q}": float(np.percentile(tot, q)) if tot.size else math.nan for q in (50, 90, 99)}
    rep.headline.update({f"shift_{k}": v for k, v in pct.items()})
    rep.headline["frac_shift_gt_2"] = float(np.mean(tot > 2.0)) if tot.size else math.nan
    rep.tables["SHIFTS"] = shift_rows
    rep.plot_data["shifts"] = (d_xi[fitted], d_eta[fitted],
                               None if true_xi is None else true_xi[fitted],
                               None if true_eta is None else true_eta[fitted])

    # --- per-stack offsets to Gaia, §5.5.7 pairs, overlap inputs
    det_truth = None
    if truth is not None:
        td = truth["detections"]
        det_truth = {}
        tnames = td.dtype.names or ()
        has_sig = all(n in tnames for n in ("sigma_true_major", "sigma_true_minor", "gaia_id"))
        sig_a = np.asarray(td["sigma_true_major"], float) if has_sig else np.full(len(td), np.nan)
        sig_b = np.asarray(td["sigma_true_minor"], float) if has_sig else np.full(len(td), np.nan)
        gid = np.asarray(td["gaia_id"], np.int64) if has_sig else np.full(len(td), -1)
        for k, (s, r, m) in enumerate(zip(_strings(td["stackid"]), np.asarray(td["region_id"]),
                                          np.asarray(td["msid"]), strict=True)):
            # (msid, true 1-sigma major, minor, has a Gaia counterpart)
            det_truth[(s, int(r))] = (int(m), float(sig_a[k]), float(sig_b[k]), gid[k] >= 0)
    regime_of = {}
    if truth is not None and "regime" in (truth["stacks"].dtype.names or ()):
        regime_of = dict(zip(_strings(truth["stacks"]["stackid"]),
                             _strings(truth["stacks"]["regime"]), strict=True))
    per_stack = []
    ab = {k: [] for k in ("dx", "dy", "cxx", "cyy", "cxy", "exx", "eyy", "exy", "instr",
                          "theta", "regime", "lam", "stack", "first", "txx", "tyy", "txy")}
    ov = {k: [] for k in ("key", "stack", "rab", "dab", "raa", "daa", "r95", "tol")}
    before_all, after_all = [], []
    for i, s in enumerate(sid):
        cat = catalogs.get(s)
        if cat is None or not done[i]:
            continue
        dx = d_xi[i] if fitted[i] else 0.0
        dy = d_eta[i] if fitted[i] else 0.0
        off = stack_offsets(cat, ra_stack=float(records["ra_stack"][i]),
                            dec_stack=float(records["dec_stack"][i]), d_xi=dx, d_eta=dy,
                            options=opt)
        fin_b, fin_a = np.isfinite(off.sep_before), np.isfinite(off.sep_after)
        per_stack.append({
            "stackid": s, "n_det": int(cat.ra_deg.size), "n_before": int(fin_b.sum()),
            "n_after": int(fin_a.sum()),
            "median_before": float(np.median(off.sep_before[fin_b])) if fin_b.any() else math.nan,
            "median_after": float(np.median(off.sep_after[fin_a])) if fin_a.any() else math.nan,
        })
        before_all.append(off.sep_before[fin_b])
        after_all.append(off.sep_after[fin_a])
        # §5.5.7 sample: fitted stacks with enough matches, well-measured detections.
        if fitted[i] and n_match[i] >= opt.abs_min_match and off.pair_det.size:
            j = off.pair_det
            use = cat.r0_arcsec[j] <= opt.abs_max_r95
            j = j[use]
            cx, cy, cc = ellipse_covariance(cat.r0_arcsec[j], cat.r1_arcsec[j], cat.ang_deg[j])
            ab["dx"].append(off.pair_dxi[use])
            ab["dy"].append(off.pair_deta[use])
            ab["cxx"].append(cx)
            ab["cyy"].append(cy)
            ab["cxy"].append(cc)
            # Residuals of pairs that entered the fit scatter less by the shift's covariance.
            m = j.size
            sign = {"subtract": -1.0, "add": 1.0}.get(opt.shift_covariance, 0.0)
            ab["exx"].append(np.full(m, sign * ex[i] ** 2 if np.isfinite(ex[i]) else 0.0))
            ab["eyy"].append(np.full(m, sign * ey[i] ** 2 if np.isfinite(ey[i]) else 0.0))
            ab["exy"].append(np.full(m, sign * cxy[i]))
            ab["instr"].append(np.full(m, instrument[i] or "?", dtype=object))
            ab["theta"].append(cat.theta_arcmin[j])
            ab["regime"].append(np.full(m, regime_of.get(s, ""), dtype=object))
            # expected chance pairs of a detection in this field
            ab["stack"].append(np.full(m, i, np.int64))
            # the detection's first pair (each detection counts once in the truth)
            ab["first"].append(np.r_[True, j[1:] != j[:-1]] if m else np.zeros(0, bool))
            if det_truth is not None:
                # True covariance of a detection with a Gaia counterpart (NaN: none, or the
                # truth file does not say): defines the term each §5.5.7 group should find.
                t = [det_truth.get((s, int(cat.region_id[jj])), (-1, math.nan, math.nan, False))
                     for jj in j]
                ta = np.array([v[1] if v[3] else math.nan for v in t], float)
                tb = np.array([v[2] if v[3] else math.nan for v in t], float)
                tc = ellipse_covariance(ta, tb, cat.ang_deg[j], radius_to_sigma=1.0)
            else:
                tc = (np.full(m, math.nan),) * 3
            for key, v in zip(("txx", "tyy", "txy"), tc, strict=True):
                ab[key].append(v)
            ab["lam"].append(np.full(m, off.gaia_density_arcsec2 * math.pi
                                     * opt.match_radius**2))
        if det_truth is not None:
            keys = np.array([det_truth.get((s, int(r)), (-1,))[0] for r in cat.region_id],
                            np.int64)
            tol = math.hypot(ex[i], ey[i]) if fitted[i] and np.isfinite(ex[i]) else 0.0
            ov["key"].append(keys)
            ov["stack"].append(np.full(keys.size, i))
            ov["rab"].append(cat.ra_deg)
            ov["dab"].append(cat.dec_deg)
            ov["raa"].append(off.ra_after_deg)
            ov["daa"].append(off.dec_after_deg)
            ov["r95"].append(cat.r0_arcsec)
            ov["tol"].append(np.full(keys.size, tol))
    rep.tables["STACKOFF"] = per_stack
    b_all = np.concatenate(before_all) if before_all else np.zeros(0)
    a_all = np.concatenate(after_all) if after_all else np.zeros(0)
    mb = np.array([r["median_before"] for r in per_stack], float)
    ma = np.array([r["median_after"] for r in per_stack], float)
    both = np.isfinite(mb) & np.isfinite(ma)
    rep.tables["GAIAOFF"] = [{
        "n_det_before": int(b_all.size), "n_det_after": int(a_all.size),
        "median_before": float(np.median(b_all)) if b_all.size else math.nan,
        "median_after": float(np.median(a_all)) if a_all.size else math.nan,
        "n_stacks": int(both.sum()),
        "frac_stacks_smaller": float(np.mean(ma[both] < mb[both])) if both.any() else math.nan,
        "frac_stacks_larger": float(np.mean(ma[both] > mb[both])) if both.any() else math.nan,
    }]
    rep.plot_data["gaiaoff"] = (mb[both], ma[both])

    # --- §5.5.7
    abs_rows = []
    if ab["dx"]:
        cat_ = {k: np.concatenate(v) for k, v in ab.items()}
        base = (cat_["dx"], cat_["dy"], cat_["cxx"], cat_["cyy"], cat_["cxy"])
        extra = (cat_["exx"], cat_["eyy"], cat_["exy"])
        kw = {"background_radius_arcsec": opt.match_radius, "level": opt.abs_level}
        injected = truth.get("sys_abs", math.nan) if truth is not None else math.nan

        free = opt.shift_covariance == "free"

        def run(label, mask):
            res = fit_absolute_error(*(a[mask] for a in base),
                                     extra_cov=tuple(e[mask] for e in extra),
                                     chance_pairs=cat_["lam"][mask],
                                     stack_labels=cat_["stack"][mask] if free else None, **kw)
            # The group's target on a simulation: what its true errors add to the stated ones
            # (each detection once).
            one = mask & cat_["first"]
            expected = (implied_systematic(cat_["cxx"][one], cat_["cyy"][one], cat_["cxy"][one],
                                           cat_["txx"][one], cat_["tyy"][one], cat_["txy"][one])
                        if truth is not None else math.nan)
            # ... and what this estimator finds when the offsets follow the true errors: the
            # value its interval is for (differs from "expected" where regimes mix)
            expected_fit = (simulated_systematic(
                *(cat_[k][one] for k in ("cxx", "cyy", "cxy", "txx", "tyy", "txy", "lam")),
                radius_arcsec=opt.match_radius, replicas=opt.abs_target_replicas,
                seed=len(abs_rows)) if truth is not None else math.nan)
            abs_rows.append({"group": label, "n_pairs": res.n, "sigma_sys": res.sigma_sys_arcsec,
                             "sigma_lo": res.sigma_lo_arcsec, "sigma_hi": res.sigma_hi_arcsec,
                             "r95": res.r95_arcsec, "r95_lo": res.r95_lo_arcsec,
                             "r95_hi": res.r95_hi_arcsec, "f_true": res.f_true,
                             "injected": injected, "expected": expected,
                             "expected_fit": expected_fit})
            return res

        all_mask = np.ones(cat_["dx"].size, bool)
        overall = run("all", all_mask)
        for name in sorted(set(cat_["instr"].tolist())):
            run(f"instrument={name}", cat_["instr"] == name)
        edges = opt.theta_bins
        theta_res = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = (cat_["theta"] >= lo) & (cat_["theta"] < hi if hi < edges[-1] else
                                         cat_["theta"] <= hi)
            theta_res.append((lo, hi, run(f"theta={lo:g}-{hi:g}'", m)))
        for name in sorted(set(cat_["regime"].tolist()) - {""}):
            run(f"regime={name}", cat_["regime"] == name)
        # Normalised offsets of the pairs most likely true (for the plot against Rayleigh).
        x = normalised_offsets(*base[:2], base[2] + extra[0], base[3] + extra[1],
                               base[4] + extra[2], sigma_sys_arcsec=overall.sigma_sys_arcsec)
        x0 = normalised_offsets(*base[:2], base[2] + extra[0], base[3] + extra[1],
                                base[4] + extra[2])
        rep.plot_data["abserr"] = (x, x0, overall, theta_res, opt.match_radius)
        rep.headline.update({"sigma_sys": overall.sigma_sys_arcsec,
                             "sigma_sys_lo": overall.sigma_lo_arcsec,
                             "sigma_sys_hi": overall.sigma_hi_arcsec,
                             "r95_sys": overall.r95_arcsec, "sys_injected": injected,
                             "sys_expected": abs_rows[0]["expected"],
                             "sys_expected_fit": abs_rows[0]["expected_fit"]})
    rep.tables["ABSERR"] = abs_rows

    # --- between-stack agreement
    if ov["key"]:
        o = {k: np.concatenate(v) for k, v in ov.items()}
        pairs = overlap_pairs(o["key"], o["stack"], o["rab"], o["dab"], o["raa"], o["daa"],
                              o["r95"], tol_arcsec=o["tol"])
        rows = []
        for label, mask in (("all", None), ("outlying", pairs.outlying)):
            s = summarise_overlap(pairs, mask)
            rows.append({"subset": label, "n_pairs": s.n_pairs, "n_improved": s.n_improved,
                         "n_stayed": s.n_stayed, "n_worsened": s.n_worsened,
                         "frac_improved": s.frac_improved, "frac_stayed": s.frac_stayed,
                         "frac_worsened": s.frac_worsened,
                         "median_before": s.median_before_arcsec,
                         "median_after": s.median_after_arcsec})
        rep.tables["OVERLAP"] = rows
        rep.plot_data["overlap"] = pairs
        rep.headline.update({"overlap_outlying_improved": rows[1]["frac_improved"],
                             "overlap_outlying_worsened": rows[1]["frac_worsened"],
                             "overlap_outlying_n": rows[1]["n_pairs"]})
    return rep


# --------------------------------------------------------------------------- writing

_UNITS = {"sigma_sys": "arcsec", "sigma_lo": "arcsec", "sigma_hi": "arcsec", "r95": "arcsec",
          "r95_lo": "arcsec", "r95_hi": "arcsec", "injected": "arcsec", "expected": "arcsec",
          "expected_fit": "arcsec",
          "median_before": "arcsec", "median_after": "arcsec", "mean": "arcsec",
          "std": "arcsec", "median": "arcsec", "true_mean": "arcsec", "true_std": "arcsec",
          "err_rms": "arcsec"}
_DESCRIPTIONS = {
    "sigma_sys": "systematic 1-sigma per axis added in quadrature (spec 5.5.7)",
    "sigma_lo": "lower end of the profile-likelihood interval",
    "sigma_hi": "upper end of the profile-likelihood interval",
    "r95": "95% radius of the systematic term (2.4477 sigma_sys)",
    "f_true": "fraction of detections with a true Gaia counterpart",
    "injected": "per-detection systematic injected by the simulation (NaN: real data)",
    "expected": "term the group's true errors imply over its stated ones (simulation)",
    "expected_fit": "what this estimator finds when the offsets follow the true errors "
                    "(simulation; the value the interval is for)",
    "frac_improved": "pairs whose between-stack separation shrank beyond the tolerance",
    "frac_worsened": "pairs whose between-stack separation grew beyond the tolerance",
    "median_before": "median separation before the correction",
    "median_after": "median separation after the correction",
    "fraction": "fraction of all stacks of the campaign",
    "pull_std": "std of (fitted - true) / reported sigma",
    "pull_mad": "1.4826 median |fitted - true| / reported sigma (1 when sigmas are honest)",
}


def _table_arrays(rows):
    names = list(rows[0].keys())
    out = []
    for n in names:
        vals = [r[n] for r in rows]
        if all(isinstance(v, str) for v in vals):
            out.append((n, np.array(vals, dtype=f"S{max(max(len(v) for v in vals), 1)}")))
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            out.append((n, np.array(vals, dtype=np.int64)))
        else:
            out.append((n, np.array(vals, dtype=float)))
    return out


def _write_fits(rep, path):
    from ..fitsutil import atomic_path, fitsio_on_temp

    with atomic_path(path) as tmp:
        with fitsio_on_temp(tmp, [{"name": "CONTENT", "value": "STKSCIENCE",
                                   "comment": "campaign science report"}]) as f:
            for name, rows in rep.tables.items():
                if not rows:
                    continue
                cols = _table_arrays(rows)
                data = np.zeros(len(rows), dtype=[(n, a.dtype) for n, a in cols])
                for n, a in cols:
                    data[n] = a
                header = [{"name": f"TCOMM{k}", "value": _DESCRIPTIONS.get(n, n)[:68],
                           "comment": ""} for k, (n, _) in enumerate(cols, start=1)]
                f.write(data, extname=name, header=header,
                        units=[_UNITS.get(n, "") for n, _ in cols])


def _write_csv(rows, path):
    import csv

    from ..fitsutil import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(list(rows[0].keys()))
            for r in rows:
                w.writerow(["" if isinstance(v, float) and math.isnan(v) else
                            (f"{v:.6g}" if isinstance(v, float) else v) for v in r.values()])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path):
    from ..fitsutil import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plots(rep, folder):
    plt = _pyplot()
    written = {}
    if "abserr" in rep.plot_data:
        x, x0, overall, theta_res, _ = rep.plot_data["abserr"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        ax = axes[0]
        bins = np.linspace(0, 5, 51)
        ax.hist(np.clip(x0[np.isfinite(x0)], 0, 5), bins=bins, density=True, histtype="step",
                color="0.5", label="stated errors only")
        ax.hist(np.clip(x[np.isfinite(x)], 0, 5), bins=bins, density=True, histtype="step",
                color="#4878a8", lw=1.5, label=f"with sigma_sys = {overall.sigma_sys_arcsec:.3f}\"")
        grid = np.linspace(0, 5, 200)
        ax.plot(grid, rayleigh_pdf(grid) * np.mean(np.isfinite(x) & (x < 3.0)), "k--",
                label="Rayleigh (scaled to the pairs below 3)")
        ax.set_xlabel("normalised offset to Gaia")
        ax.set_ylabel("density (all pairs within the match radius)")
        ax.legend(fontsize=8)
        ax.set_title("Spec 5.5.7: normalised offsets against the model")
        ax = axes[1]
        mids = [0.5 * (lo + hi) for lo, hi, _ in theta_res]
        s = np.array([r.sigma_sys_arcsec for _, _, r in theta_res])
        lo_ = np.array([r.sigma_lo_arcsec for _, _, r in theta_res])
        hi_ = np.array([r.sigma_hi_arcsec for _, _, r in theta_res])
        ok = np.isfinite(s)
        if ok.any():
            ax.errorbar(np.array(mids)[ok], s[ok], yerr=[s[ok] - lo_[ok], np.minimum(hi_[ok], 10)
                                                         - s[ok]], fmt="o", color="#4878a8")
        inj = rep.headline.get("sys_injected", math.nan)
        if math.isfinite(inj):
            ax.axhline(inj, color="k", ls=":", label=f"injected {inj:.3f}\" per detection")
            target = np.array([r["expected"] for r in rep.tables.get("ABSERR", ())
                               if str(r["group"]).startswith("theta=")], float)
            if target.size == len(mids) and np.isfinite(target).any():
                ax.plot(mids, target, "kx", ms=8,
                        label="target: true errors over the stated ones")
            ax.legend(fontsize=8)
        ax.set_xlabel("off-axis angle (arcmin)")
        ax.set_ylabel("sigma_sys (arcsec)")
        ax.set_title("systematic term against off-axis angle")
        path = Path(folder) / "science_abserr.png"
        _save(plt, fig, path)
        written[path.name] = ("The §5.5.7 absolute error: normalised offsets of corrected "
                              "detections to Gaia against the Rayleigh model, and the fitted "
                              "systematic term per off-axis bin (95 % intervals).")
    if "overlap" in rep.plot_data:
        p = rep.plot_data["overlap"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        ax = axes[0]
        colors = np.where(p.status > 0, "#4878a8", np.where(p.status < 0, "#d62728", "0.6"))
        lim = max(1.0, float(np.percentile(p.before_arcsec, 99.5)) * 1.05) if p.status.size else 1
        ax.scatter(p.before_arcsec, p.after_arcsec, s=5, c=colors, edgecolors="none")
        ax.plot([0, lim], [0, lim], "k-", lw=0.6)
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        ax.set_xlabel("between-stack separation before (arcsec)")
        ax.set_ylabel("after (arcsec)")
        ax.set_title("Same source in overlapping stacks (spec Fig. 4)")
        ax = axes[1]
        rows = rep.tables["OVERLAP"]
        labels = [r["subset"] for r in rows]
        for k, (key, color) in enumerate((("frac_improved", "#4878a8"),
                                          ("frac_stayed", "0.6"),
                                          ("frac_worsened", "#d62728"))):
            ax.bar(np.arange(len(rows)) + 0.27 * (k - 1), [r[key] for r in rows], width=0.27,
                   color=color, label=key.split("_")[1])
        ax.set_xticks(np.arange(len(rows)))
        ax.set_xticklabels([f"{lab} ({r['n_pairs']})" for lab, r in zip(labels, rows,
                                                                         strict=True)])
        ax.set_ylabel("fraction of pairs")
        ax.legend(fontsize=8)
        ax.set_title("improved / stayed / worsened")
        path = Path(folder) / "science_overlap.png"
        _save(plt, fig, path)
        written[path.name] = ("Between-stack agreement: separation of the same source in two "
                              "overlapping stacks before and after the correction (blue "
                              "improved, red worsened, grey within the tolerance); 'outlying' "
                              "are pairs whose separation before exceeded their combined 95 % "
                              "error.")
    if "gaiaoff" in rep.plot_data:
        mb, ma = rep.plot_data["gaiaoff"]
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        lim = max(1.0, float(np.percentile(mb, 99.5)) * 1.05) if mb.size else 1.0
        ax.scatter(mb, ma, s=5, alpha=0.6, color="#4878a8", edgecolors="none")
        ax.plot([0, lim], [0, lim], "k-", lw=0.6)
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        ax.set_xlabel("median offset to Gaia before (arcsec)")
        ax.set_ylabel("after (arcsec)")
        ax.set_title("Per stack: detections to nearest Gaia")
        path = Path(folder) / "science_gaia_offsets.png"
        _save(plt, fig, path)
        written[path.name] = "Per stack, the median offset of detections to their nearest Gaia " \
                             "source before and after the correction."
    if "shifts" in rep.plot_data:
        x, y, tx, ty = rep.plot_data["shifts"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        tot = np.hypot(x, y)
        bins = np.linspace(0, max(3.0, float(np.max(tot)) if tot.size else 3.0), 46)
        axes[0].hist(tot, bins=bins, histtype="step", lw=1.5, color="#4878a8", label="fitted")
        if tx is not None:
            axes[0].hist(np.hypot(tx, ty), bins=bins, histtype="step", color="k", label="true")
            err = np.hypot(x - tx, y - ty)
            axes[1].hist(np.clip(err, 0, 2), bins=np.linspace(0, 2, 41), color="#4878a8")
            axes[1].set_xlabel("|fitted - true| (arcsec)")
            axes[1].set_ylabel("stacks")
            axes[1].set_yscale("log")
            axes[1].set_title("shift errors against the truth")
        else:
            axes[1].axis("off")
        axes[0].set_xlabel("total shift (arcsec)")
        axes[0].set_ylabel("stacks")
        axes[0].legend(fontsize=8)
        axes[0].set_title("shift lengths")
        path = Path(folder) / "science_shifts.png"
        _save(plt, fig, path)
        written[path.name] = "Fitted shift lengths beside the true ones, and the errors."
    return written


def _html_table(rows):
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = []
    for r in rows:
        cells = []
        for v in r.values():
            if isinstance(v, float):
                text = "" if math.isnan(v) else f"{v:.4g}"
                cells.append(f'<td class="num">{text}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def format_science_html(rep, plots):
    """The science section as an HTML fragment (``<section>``), no script, no external links."""
    h = rep.headline
    parts = ['<section id="science"><h2>Campaign science (spec §6, §5.5.7)</h2>']
    qa = h.get("qa_fraction", math.nan)
    parts.append(f"<p>Stacks needing QA: {qa:.1%} of {h.get('n_stacks', 0)} "
                 f"(the specification's limit: {QA_LIMIT_FRACTION:.0%}, ~600 of ~10,000).</p>"
                 if math.isfinite(qa) else "")
    if "sigma_sys" in h:
        inj = h.get("sys_injected", math.nan)
        parts.append(
            f"<p>Absolute systematic error (§5.5.7): sigma_sys = {h['sigma_sys']:.3f}\" per axis "
            f"[{h['sigma_sys_lo']:.3f}, {h['sigma_sys_hi']:.3f}] (95 %), 95 % radius "
            f"{h['r95_sys']:.3f}\"" + (f"; injected {inj:.3f}\" per detection" if math.isfinite(inj)
                                        else "")
            + (f", {h['sys_expected']:.3f}\" implied by the population's true errors over its "
               "stated ones" + (f"; {h['sys_expected_fit']:.3f}\" is what this estimator finds "
                                "when the offsets follow the true errors (the value its interval "
                                "is for: a group that mixes error regimes is heavier-tailed than "
                                "one added term, and its chance-pair model takes part of the tail)"
                                if math.isfinite(h.get("sys_expected_fit", math.nan)) else "")
               if math.isfinite(h.get("sys_expected", math.nan)) else "")
            + ".</p>")
    for name, title in (("QA", "QA per reason"), ("SHIFTS", "Fitted shifts beside the truth"),
                        ("GAIAOFF", "Offsets to Gaia before and after"),
                        ("OVERLAP", "Between-stack agreement"),
                        ("ABSERR", "Absolute error (§5.5.7)")):
        if rep.tables.get(name):
            parts.append(f"<h3>{html.escape(title)}</h3>{_html_table(rep.tables[name])}")
    for fname, caption in plots.items():
        parts.append(f'<figure><img src="{html.escape(fname)}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def write_science_report(folder, rep):
    """Write science.fits, a CSV per section, the PNGs and science.html; return the fragment."""
    from ..fitsutil import atomic_path

    folder = Path(folder)
    _write_fits(rep, folder / "science.fits")
    for name, rows in rep.tables.items():
        if rows:
            _write_csv(rows, folder / f"science_{name.lower()}.csv")
    plots = _plots(rep, folder)
    fragment = format_science_html(rep, plots)
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Campaign science</title><style>body{font-family:sans-serif;margin:2em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
            "td.num{text-align:right}img{max-width:100%}</style></head><body>\n"
            + fragment + "\n</body></html>\n")
    with atomic_path(folder / "science.html") as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return fragment


# --------------------------------------------------------------------------- campaign entry


def read_truth(path):
    """``stk_simpop``'s truth file as the ``truth`` mapping :func:`analyse` takes."""
    import fitsio

    with fitsio.FITS(str(path)) as f:
        header = f[0].read_header()
        if str(header.get("CONTENT", "")).strip() != "STKPOPTRUTH":
            from ..errors import InputError

            raise InputError(f"{path}: not a stk_simpop truth file (CONTENT != 'STKPOPTRUTH')")
        return {"stacks": f["STACKS"].read(), "detections": f["DETECTIONS"].read(),
                "sys_abs": float(header.get("SYSABS", math.nan))}


def stack_inputs_from_database(db_path):
    """stackid -> (detfile, gaiafile) from a stk_batch run database (opened read-only)."""
    import sqlite3

    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        rows = conn.execute("SELECT stackid, detfile, gaiafile FROM stacks").fetchall()
    finally:
        conn.close()
    return {str(s): (d, g) for s, d, g in rows if d and g}


def run_science(folder, records, inputs, *, truthfile=None, options=None, log=None):
    """The science report of a campaign folder: read, analyse, write; return the HTML fragment.

    Parameters
    ----------
    folder : path
        The campaign folder (outputs are written there).
    records : numpy record array
        The campaign table's rows.
    inputs : mapping
        stackid -> (detfile, gaiafile) (e.g. :func:`stack_inputs_from_database`).
    truthfile : path, optional
        ``stk_simpop``'s ``truth.fits`` of a simulated campaign.
    """
    from ..errors import InputError

    opt = options or ScienceOptions()
    sid = _strings(_field(records, "stackid", ""))
    status = _strings(_field(records, "status", "done"))
    catalogs = {}
    for i, s in enumerate(sid):
        if status[i] != "done" or s not in inputs:
            continue
        detfile, gaiafile = inputs[s]
        try:
            catalogs[s] = load_stack(s, detfile, gaiafile, r_stack_arcmin=opt.r_stack_arcmin,
                                     ra_stack=float(records["ra_stack"][i]),
                                     dec_stack=float(records["dec_stack"][i]))
        except (OSError, KeyError, ValueError) as exc:
            if log is not None:
                log.warning("science report: stack %s left out: %s", s, exc)
    if not catalogs and len(records):
        raise InputError("science report: no stack's catalogs could be read")
    truth = read_truth(truthfile) if truthfile else None
    rep = analyse(records, catalogs, truth=truth, options=opt)
    return write_science_report(folder, rep), rep


def insert_into_index(folder, fragment, *, name="index.html"):
    """Put the science section into the campaign's HTML page (replacing an earlier one).

    The page is the batch report's; the section goes before ``</body>``.  Nothing happens when
    the page does not exist (the campaign was run with plots=no).
    """
    import re

    from ..fitsutil import atomic_path

    page_path = Path(folder) / name
    if not page_path.is_file():
        return None
    page = page_path.read_text(encoding="utf-8")
    page = re.sub(r'<section id="science">.*?</section>\n?', "", page, flags=re.S)
    if "</body>" in page:
        page = page.replace("</body>", fragment + "\n</body>", 1)
    else:
        page += "\n" + fragment + "\n"
    with atomic_path(page_path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return page_path


def summary_lines(rep):
    """A few lines for the terminal: the headline numbers of the science report."""
    h = rep.headline
    lines = []
    if "qa_fraction" in h:
        lines.append(f"Science: QA {h['qa_fraction']:.1%} of {h['n_stacks']} stacks "
                     f"(limit {QA_LIMIT_FRACTION:.0%})")
    if "overlap_outlying_n" in h:
        lines.append(f"Science: between-stack pairs beyond their errors: "
                     f"{h['overlap_outlying_improved']:.1%} improved, "
                     f"{h['overlap_outlying_worsened']:.1%} worsened "
                     f"({h['overlap_outlying_n']} pairs)")
    if "sigma_sys" in h:
        inj = h.get("sys_injected", math.nan)
        lines.append(f"Science: absolute systematic (5.5.7) {h['sigma_sys']:.3f}\" per axis "
                     f"[{h['sigma_sys_lo']:.3f}, {h['sigma_sys_hi']:.3f}], 95 % radius "
                     f"{h['r95_sys']:.3f}\"" + (f" (injected {inj:.3f}\", target "
                                                 f"{h.get('sys_expected', math.nan):.3f}\", "
                                                 "this estimator's on the true errors "
                                                 f"{h.get('sys_expected_fit', math.nan):.3f}\")"
                                                 if math.isfinite(inj) else ""))
    return lines
