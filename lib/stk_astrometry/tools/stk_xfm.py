"""stk_xfm: fit a stack's translation to the Gaia frame from stk_match's matched pairs.

Reads the matched-pairs file written by stk_match (share/doc/formats.md §1), fits the
translation of the CSC specification (direct path §5.5.3, or the two-step ALLWISE path
§5.5.4: separation-group selection, weighted least squares with a robust loss per pair),
estimates its 1-sigma uncertainty, raises the QA flags of §5.5.3/§5.5.4/§5.7, and writes
the transform as an HDU STKXFM in the layout of the CIAO transform file (formats.md §2).
Optionally writes every detection corrected (outdetfile) and a diagnostics copy of the
pairs (diagfile).  A QA flag is not a failure: the transform is written and the exit
status is 0.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stk_astrometry import xfmfit
from stk_astrometry.errors import FormatError, InputError, ParameterError
from stk_astrometry.runner import run_tool

logger = logging.getLogger(__name__)

TOOL = "stk_xfm"

#: Sky pixel grid per instrument: (pixel size arcsec, reference pixel).  HRC: the HRC-I grid.
INSTRUMENT_GRIDS = {"ACIS": (0.492, 4096.5), "HRC": (0.13175, 16384.5)}

PAIR_HDUS = ("GAIA_PAIRS", "WISE_PAIRS")
PAIR_COLUMNS = ("region_id", "det_xi", "det_eta", "d_xi", "d_eta", "sep", "group", "err_r0",
                "err_r1", "err_ang", "ref_sigra", "ref_sigdec")
WISE_GAIA_COLUMNS = ("wise_id", "wise_xi", "wise_eta", "wise_sigra", "wise_sigdec", "sep",
                     "d_xi", "d_eta")
DETECTION_COLUMNS = ("region_id", "ra", "dec", "theta", "src_cnts")

#: Mahalanobis distance above which the two estimators disagree (QA bit DISAGREE).
DISAGREE_SIGMA = 3.0


def main(argv=None) -> int:
    """Run stk_xfm; return the exit status."""
    return run_tool(TOOL, argv, _body, description=__doc__)


# ---------------------------------------------------------------------------------------------
# Reading the matched-pairs file


@dataclass(frozen=True, eq=False)
class PairsInput:
    """What stk_xfm needs from a matched-pairs file (formats.md §1)."""

    path: str
    stackid: str
    instrument: str
    ra_stack: float
    dec_stack: float
    method: str
    n_groups: int
    match_radius: float | None
    dens_gaia: float | None
    dens_wise: float | None
    detections: dict          # column -> ndarray
    tables: dict              # HDU name -> {column -> ndarray}
    hdus: dict                # HDU name -> astropy BinTableHDU (for the diagnostics copy)

    def pairs(self, hdu_name) -> xfmfit.PairSet:
        """The PairSet of a ``*_PAIRS`` HDU or of ``WISE_GAIA``."""
        return pairset_from_columns(self.tables[hdu_name], kind=hdu_name)


def _blank(value) -> bool:
    return value is None or str(value).strip() == ""


def _column_map(hdu):
    return {name.lower(): name for name in hdu.columns.names}


def _read_columns(hdu, label, wanted, *, optional=()):
    names = _column_map(hdu)
    missing = [c for c in wanted if c not in names]
    if missing:
        raise FormatError(f"{label}: required column(s) {', '.join(missing)} missing; "
                          f"is this a stk_match matched-pairs file (formats.md §1)?")
    out = {}
    for col in list(wanted) + [c for c in optional if c in names]:
        data = hdu.data[names[col]] if hdu.data is not None else np.zeros(0)
        out[col] = np.asarray(data)
    return out


def _header_float(header, name, label, *, required):
    from stk_astrometry.fitsutil import get_keyword

    value = get_keyword(header, name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise FormatError(f"{label}: keyword {name} missing")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{label}: keyword {name} = {value!r} is not a number") from exc
    if not np.isfinite(number):
        if required:
            raise FormatError(f"{label}: keyword {name} = {value!r} is not finite")
        return None
    return number


def read_pairs_file(spec, *, param="infile") -> PairsInput:
    """Read and check a stk_match matched-pairs file.

    Raises
    ------
    InputError
        Missing or unreadable file.
    FormatError
        Not a stk_match output: naming the missing HDU, column or keyword.
    """
    from astropy.io import fits

    from stk_astrometry.tableio import parse_virtual_filename

    path_text, block = parse_virtual_filename(spec)
    if block is not None:
        raise ParameterError(f"{param}={spec}: give the matched-pairs file without a block; "
                             f"stk_xfm reads all its HDUs")
    path = Path(path_text)
    if not path.exists():
        raise InputError(f"{param}={spec}: file {path} does not exist")
    if path.is_dir():
        raise InputError(f"{param}={spec}: {path} is a directory")
    try:
        hdul = fits.open(path, memmap=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{param}={spec}: cannot read {path} as FITS: {exc}") from exc
    with hdul:
        primary = hdul[0].header
        content = str(primary.get("CONTENT", "")).strip()
        if content != "STKPAIRS":
            raise FormatError(
                f"{param}={spec}: not a stk_match matched-pairs file: primary CONTENT = "
                f"{content or '(missing)'!r}, expected 'STKPAIRS' (formats.md §1)")
        names = {str(h.header.get("EXTNAME", "")).strip().upper(): h for h in hdul[1:]}
        missing = [n for n in ("DETECTIONS",) + PAIR_HDUS + ("WISE_GAIA",) if n not in names]
        if missing:
            raise FormatError(f"{param}={spec}: HDU(s) {', '.join(missing)} missing "
                              f"(a stk_match file has DETECTIONS, GAIA_PAIRS, WISE_PAIRS, "
                              f"WISE_GAIA)")
        label = f"{path}[PRIMARY]"
        method = str(primary.get("METHOD", "")).strip().lower()
        if method not in ("direct", "twostep", "none"):
            raise FormatError(f"{label}: keyword METHOD = {primary.get('METHOD')!r}, expected "
                              f"'direct', 'twostep' or 'none'")
        instrument = str(primary.get("INSTRUME", "")).strip().upper()
        if instrument not in INSTRUMENT_GRIDS:
            raise FormatError(f"{label}: keyword INSTRUME = {primary.get('INSTRUME')!r}, "
                              f"expected 'ACIS' or 'HRC'")
        ra_stack = _header_float(primary, "RA_STACK", label, required=True)
        dec_stack = _header_float(primary, "DEC_STACK", label, required=True)
        n_groups = _header_float(primary, "NGROUPS", label, required=True)
        if n_groups < 1 or n_groups != int(n_groups):
            raise FormatError(f"{label}: keyword NGROUPS = {n_groups!r} is not a positive integer")
        det = _read_columns(names["DETECTIONS"], f"{path}[DETECTIONS]", DETECTION_COLUMNS,
                            optional=("xi", "eta"))
        tables = {name: _read_columns(names[name], f"{path}[{name}]", PAIR_COLUMNS)
                  for name in PAIR_HDUS}
        tables["WISE_GAIA"] = _read_columns(names["WISE_GAIA"], f"{path}[WISE_GAIA]",
                                            WISE_GAIA_COLUMNS)
        hdus = {name: names[name].copy() for name in PAIR_HDUS + ("WISE_GAIA",)}
        return PairsInput(
            path=str(path), stackid=str(primary.get("STACKID", "")).strip(),
            instrument=instrument, ra_stack=ra_stack, dec_stack=dec_stack, method=method,
            n_groups=int(n_groups),
            match_radius=_header_float(primary, "MATCHRAD", label, required=False),
            dens_gaia=_header_float(primary, "DENSGAIA", label, required=False),
            dens_wise=_header_float(primary, "DENSWISE", label, required=False),
            detections=det, tables=tables, hdus=hdus)


def pairset_from_columns(cols, *, kind) -> xfmfit.PairSet:
    """A PairSet from the columns of a ``*_PAIRS`` HDU or of ``WISE_GAIA``.  Pure."""
    def f(name):
        return np.asarray(cols[name], dtype=float)

    if kind == "WISE_GAIA":
        n = len(cols["wise_id"])
        nan = np.full(n, np.nan)
        return xfmfit.PairSet(
            region_id=np.asarray(cols["wise_id"], dtype=np.int64), src_xi=f("wise_xi"),
            src_eta=f("wise_eta"), d_xi=f("d_xi"), d_eta=f("d_eta"), sep=f("sep"),
            group=np.zeros(n, dtype=int), err_r0=nan, err_r1=nan, err_ang=nan,
            ref_sigra=f("wise_sigra"), ref_sigdec=f("wise_sigdec"))
    return xfmfit.PairSet(
        region_id=np.asarray(cols["region_id"], dtype=np.int64), src_xi=f("det_xi"),
        src_eta=f("det_eta"), d_xi=f("d_xi"), d_eta=f("d_eta"), sep=f("sep"),
        group=np.asarray(cols["group"], dtype=int), err_r0=f("err_r0"), err_r1=f("err_r1"),
        err_ang=f("err_ang"), ref_sigra=f("ref_sigra"), ref_sigdec=f("ref_sigdec"))


# ---------------------------------------------------------------------------------------------
# include / exclude lists


_ID_SPLIT = re.compile(r"[\s,]+")


def parse_id_list(text, *, source="<string>") -> np.ndarray:
    """Detection ids from the text of an include/exclude file.  Pure.

    One or more integer ids per line, separated by blanks or commas; ``#`` starts a comment;
    blank lines are ignored.

    Raises
    ------
    InputError
        A token that is not an integer, naming the file, line and token.
    """
    ids = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        for token in _ID_SPLIT.split(body):
            if not token:
                continue
            try:
                ids.append(int(token))
            except ValueError:
                raise InputError(f"{source}, line {lineno}: {token!r} is not a detection "
                                 f"region_id (an integer)") from None
    return np.unique(np.asarray(ids, dtype=np.int64))


def read_id_list(path, *, param) -> np.ndarray:
    """Read an include/exclude file (see :func:`parse_id_list`), or a stk_qa selection file.

    ``@file`` (CIAO's list-file spelling) is the same as ``file``.  A selection file
    (formats.md §2d) gives the detections with a pair marked ``use = yes`` to ``include``,
    those with every pair marked ``no`` to ``exclude``.
    """
    from stk_astrometry.formats import selection

    text_path = str(path)
    p = Path(text_path[1:] if text_path.startswith("@") and not text_path.startswith("@@")
             else text_path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{param}={path}: cannot read the id list: {exc}") from exc
    if selection.is_selection_text(text):
        sel = selection.parse_selection(text, source=f"{param}={path}")
        ids, notes = selection.selected_ids(sel, which=param)
        for note in notes:
            logger.warning("%s", note)
        return ids
    return parse_id_list(text, source=f"{param}={path}")


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


# ---------------------------------------------------------------------------------------------
# Estimates (one applied, one alternative)


@dataclass(frozen=True, eq=False)
class Component:
    """One row of STKXFM."""

    name: str
    d_xi: float
    d_eta: float
    cov: np.ndarray
    n_used: int
    group: int
    resstd0: float
    resstd1: float


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
    return Estimate("spec", fit.method, tuple(comps), leg.n_match, leg.n_used > 0, message,
                    det_used=leg.used, ref_used=ref_used,
                    extra_nomatch=fit.notes[0] if fit.notes and leg.n_used else None)


def _run_mixture(pin: PairsInput, det_pairs: xfmfit.PairSet, wise_gaia: xfmfit.PairSet, *,
                 sys_floor, max_shift) -> Estimate:
    """All of the wiring of the mixture estimator (issue 7).

    Direct path: one mixture fit of the detection-Gaia pairs at DENSGAIA.  Two-step path: the
    detection→ALLWISE leg at DENSWISE and the ALLWISE→Gaia leg on the one-to-one pairs at
    DENSGAIA; the total is their sum, their covariances add.  Pair covariances are the full
    ellipses (:func:`stk_astrometry.mixture.pair_covariance`), the systematic ``sys_floor``
    added in quadrature.
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
                                   max_shift_arcsec=max_shift)

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
    if pin.method == "direct":
        c = component("TOTAL", fit1, det_pairs)
        return Estimate("mixture", "direct", (c,), n_match, ok1, message1,
                        det_p=fit1.membership, n_eff=fit1.n_eff)
    fit2 = leg_fit(wise_gaia, pin.dens_gaia, one_to_one=True)
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
                    n_eff=fit1.n_eff)


def disagreement(a: Component, b: Component) -> float | None:
    """Mahalanobis distance of the two totals with the sum of their covariances.  Pure.

    None when it cannot be computed (a covariance is missing or singular).
    """
    diff = np.array([a.d_xi - b.d_xi, a.d_eta - b.d_eta])
    cov = np.asarray(a.cov) + np.asarray(b.cov)
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(diff))):
        return None
    try:
        return float(np.sqrt(diff @ np.linalg.solve(cov, diff)))
    except np.linalg.LinAlgError:
        return None


# ---------------------------------------------------------------------------------------------
# Output


def transform_columns(components, *, instrument, ra_ref, dec_ref) -> dict:
    """The STKXFM columns (formats.md §2) for the given components.  Pure.

    ``t1 = d_xi / (3600 x_scale)``, ``t2 = d_eta / (3600 y_scale)`` with the sky pixel size in
    degrees, ``x_scale < 0`` (sky x grows westwards).
    """
    pix_arcsec, ref_pix = INSTRUMENT_GRIDS[instrument]
    x_scale = -pix_arcsec / 3600.0
    y_scale = pix_arcsec / 3600.0
    n = len(components)
    d_xi = np.array([c.d_xi for c in components], dtype=float)
    d_eta = np.array([c.d_eta for c in components], dtype=float)
    cov = np.array([np.asarray(c.cov, dtype=float) for c in components]).reshape(n, 2, 2)
    with np.errstate(invalid="ignore"):
        err_xi = np.sqrt(cov[:, 0, 0])
        err_eta = np.sqrt(cov[:, 1, 1])
    return {
        "a11": np.ones(n), "a12": np.zeros(n), "a21": np.zeros(n), "a22": np.ones(n),
        "t1": d_xi / (3600.0 * x_scale), "t2": d_eta / (3600.0 * y_scale),
        "ra_ref": np.full(n, ra_ref), "dec_ref": np.full(n, dec_ref), "roll_ref": np.zeros(n),
        "xpix_ref": np.full(n, ref_pix), "ypix_ref": np.full(n, ref_pix),
        "x_scale": np.full(n, x_scale), "y_scale": np.full(n, y_scale),
        "component": np.array([c.name for c in components]),
        "d_xi": d_xi, "d_eta": d_eta, "d_xi_err": err_xi, "d_eta_err": err_eta,
        "cov_xi_eta": cov[:, 0, 1],
        "n_used": np.array([c.n_used for c in components], dtype=np.int32),
        "group": np.array([c.group for c in components], dtype=np.int32),
        "resstd0": np.array([c.resstd0 for c in components], dtype=float),
        "resstd1": np.array([c.resstd1 for c in components], dtype=float),
    }


_UNITS = {"t1": "pixel", "t2": "pixel", "ra_ref": "deg", "dec_ref": "deg", "roll_ref": "deg",
          "xpix_ref": "pixel", "ypix_ref": "pixel", "x_scale": "deg", "y_scale": "deg",
          "d_xi": "arcsec", "d_eta": "arcsec", "d_xi_err": "arcsec", "d_eta_err": "arcsec",
          "cov_xi_eta": "arcsec**2", "resstd0": "arcsec", "resstd1": "arcsec"}


def _table_hdu(name, columns):
    from astropy.io import fits

    cols = []
    for key, arr in columns.items():
        arr = np.asarray(arr)
        if arr.dtype.kind in "US":
            fmt = "16A"     # fixed, so that transform files of many stacks concatenate
        elif arr.dtype.kind == "b":
            fmt = "L"
        elif arr.dtype.kind in "iu":
            fmt = "K" if arr.dtype.itemsize > 4 else "J"
        else:
            fmt = "D"
        cols.append(fits.Column(name=key, format=fmt, unit=_UNITS.get(key), array=arr))
    return fits.BinTableHDU.from_columns(cols, name=name)


def _value(x):
    """A header value: None (FITS undefined) for NaN."""
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def summary_keywords(pin, applied, qa, params, *, alternative=None) -> list:
    """(name, value, comment) keywords of the transform file.  Pure."""
    total = applied.total
    keys = [
        ("STACKID", pin.stackid, "detect_stack_id"),
        ("INSTRUME", pin.instrument, "ACIS or HRC: sets the sky pixel grid"),
        ("RA_STACK", pin.ra_stack, "[deg] stack tangent point RA"),
        ("DEC_STACK", pin.dec_stack, "[deg] stack tangent point Dec"),
        ("METHOD", applied.method, "direct, twostep or none"),
        ("ESTIMATR", applied.estimator, "estimator applied: spec or mixture"),
        ("LOSS", params["loss"], "robust loss of the spec estimator"),
        ("FSCALE", float(params["f_scale"]), "f_scale of the robust loss"),
        ("GROUP", int(total.group), "separation group used (0: all/none)"),
        ("NUSED", int(total.n_used), "pairs used by the detection leg"),
        ("NMATCH", int(applied.n_match), "matched detections used"),
        ("DXI", _value(total.d_xi), "[arcsec] applied shift in xi"),
        ("DETA", _value(total.d_eta), "[arcsec] applied shift in eta"),
        ("RESSTD0", _value(total.resstd0), "[arcsec] rms target - source, before"),
        ("RESSTD1", _value(total.resstd1), "[arcsec] rms target - source, after"),
        ("QAFLAGS", int(qa.flags), "1NOMATCH 2DENSE 4BIGSHIFT 8FEWMATCH 16DISAGREE"),
        ("QAREASON", qa.reason, "raised QA flags and why"),
    ]
    if applied.n_eff is not None:
        keys.append(("NEFF", _value(applied.n_eff), "mixture: effective number of true matches"))
    if alternative is not None and alternative.ok:
        keys += [("ALTEST", alternative.estimator, "the other estimator (not applied)"),
                 ("ALTDXI", _value(alternative.total.d_xi), "[arcsec] its shift in xi"),
                 ("ALTDETA", _value(alternative.total.d_eta), "[arcsec] its shift in eta")]
    return keys


def _set_keywords(header, keys):
    from stk_astrometry.fitsutil import set_keyword

    for name, value, comment in keys:
        if isinstance(value, str) and 13 + max(20, len(value) + 2) + len(comment) > 80:
            comment = ""    # a long string value keeps its text; the comment would be cut
        set_keyword(header, name, value, comment)


def build_transform_hdul(pin, applied, qa, params, *, alternative=None):
    """The transform file: primary + STKXFM (formats.md §2).  No I/O."""
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    primary.header["CONTENT"] = ("STKXFM", "stk_xfm transform file")
    xfm = _table_hdu("STKXFM", transform_columns(applied.components, instrument=pin.instrument,
                                                 ra_ref=pin.ra_stack, dec_ref=pin.dec_stack))
    keys = summary_keywords(pin, applied, qa, params, alternative=alternative)
    for hdu in (primary, xfm):
        _set_keywords(hdu.header, keys)
    return fits.HDUList([primary, xfm])


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


def build_detections_hdul(pin, applied, qa, params):
    """The outdetfile: primary + DETECTIONS with original and corrected positions.  No I/O."""
    from astropy.io import fits

    cols = corrected_detections(pin, applied.total.d_xi, applied.total.d_eta)
    units = {"ra": "deg", "dec": "deg", "ra_corr": "deg", "dec_corr": "deg", "xi": "arcsec",
             "eta": "arcsec", "xi_corr": "arcsec", "eta_corr": "arcsec"}
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format="J" if k == "region_id" else "D", unit=units.get(k),
                     array=v) for k, v in cols.items()], name="DETECTIONS")
    primary = fits.PrimaryHDU()
    primary.header["CONTENT"] = ("STKDETCORR", "stk_xfm corrected detections")
    keys = summary_keywords(pin, applied, qa, params)
    for h in (primary, hdu):
        _set_keywords(h.header, keys)
    return fits.HDUList([primary, hdu])


def build_diag_hdul(pin, selections, spec, mix, params):
    """Copy of the pairs HDUs with ``used_spec`` and ``p_true`` (NaN: mixture not run on it)."""
    from astropy.io import fits

    out = [fits.PrimaryHDU()]
    out[0].header["CONTENT"] = ("STKXFMDIAG", "stk_xfm diagnostics: pairs used")
    det_hdu = "GAIA_PAIRS" if pin.method == "direct" else "WISE_PAIRS"
    for name in PAIR_HDUS + ("WISE_GAIA",):
        src = pin.hdus[name]
        n = 0 if src.data is None else len(src.data)
        used = np.zeros(n, dtype=bool)
        p_true = np.full(n, np.nan)
        if pin.method != "none":
            if name == det_hdu:
                sel = selections["det"]
                if spec is not None and spec.det_used is not None:
                    used[sel] = spec.det_used
                if mix is not None and mix.det_p is not None:
                    p_true[sel] = mix.det_p
            elif name == "WISE_GAIA" and pin.method == "twostep":
                if spec is not None and spec.ref_used is not None:
                    used[:] = spec.ref_used
                if mix is not None and mix.ref_p is not None:
                    p_true[:] = mix.ref_p
        extra = fits.ColDefs([fits.Column(name="used_spec", format="L", array=used),
                              fits.Column(name="p_true", format="D", array=p_true)])
        hdu = fits.BinTableHDU.from_columns(src.columns + extra, name=name, nrows=n)
        for card in src.header.cards:
            if card.keyword not in hdu.header and card.keyword not in ("HISTORY", "COMMENT"):
                hdu.header.append(card)
        out.append(hdu)
    return fits.HDUList(out)


# ---------------------------------------------------------------------------------------------
# The tool


def _thresholds(params) -> xfmfit.QAThresholds:
    return xfmfit.QAThresholds(
        density=float(params["qa_density"]), dense_nmatch=int(params["qa_dense_nmatch"]),
        max_shift=float(params["qa_max_shift"]), few_matches=int(params["qa_few_matches"]),
        theta=float(params["qa_theta"]), counts=float(params["qa_counts"]),
        few_shift=float(params["qa_few_shift"]))


def _check_params(params):
    for name in ("infile", "outfile"):
        if _blank(params[name]):
            raise ParameterError(f"{name} is blank")
    for name in ("f_scale", "max_shift"):
        value = params[name]
        if value is None or not np.isfinite(value) or value <= 0:
            raise ParameterError(f"{name} must be > 0, not {value}")
    if params["min_group_matches"] is None or params["min_group_matches"] < 1:
        raise ParameterError(f"min_group_matches must be >= 1, not {params['min_group_matches']}")
    if params["sys_floor"] is None or params["sys_floor"] < 0:
        raise ParameterError(f"sys_floor must be >= 0, not {params['sys_floor']}")
    for name in ("qa_density", "qa_dense_nmatch", "qa_max_shift", "qa_few_matches", "qa_theta",
                 "qa_counts", "qa_few_shift"):
        if params[name] is None:
            raise ParameterError(f"{name} must be a number, not INDEF")
    from stk_astrometry.fitsutil import same_file
    from stk_astrometry.tableio import parse_virtual_filename

    infile = parse_virtual_filename(params["infile"])[0]
    id_lists = {n: str(params[n]).strip() for n in ("include", "exclude") if not _blank(params[n])}
    outputs = {}
    for name in ("outfile", "outdetfile", "diagfile"):
        if _blank(params[name]):
            continue
        target = str(params[name]).strip()
        if same_file(target, infile):
            raise ParameterError(f"{name}={params[name]} is the input file; choose another name")
        for list_name, list_path in id_lists.items():
            if same_file(target, list_path):
                raise ParameterError(f"{name}={params[name]} is also {list_name}; choose another name")
        for other_path, other in outputs.items():
            if same_file(target, other_path):
                raise ParameterError(f"{name}={params[name]} is also {other}")
        outputs[target] = name


def _body(params):
    from stk_astrometry.fitsutil import check_clobber, write_fits

    _check_params(params)
    outfile = str(params["outfile"]).strip()
    outdet = None if _blank(params["outdetfile"]) else str(params["outdetfile"]).strip()
    diagfile = None if _blank(params["diagfile"]) else str(params["diagfile"]).strip()
    check_clobber(outfile, params["clobber"], param="outfile")
    check_clobber(outdet, params["clobber"], param="outdetfile")
    check_clobber(diagfile, params["clobber"], param="diagfile")

    pin = read_pairs_file(str(params["infile"]).strip())
    include = None if _blank(params["include"]) else read_id_list(params["include"],
                                                                  param="include")
    exclude = None if _blank(params["exclude"]) else read_id_list(params["exclude"],
                                                                  param="exclude")
    logger.info("Stack %s (%s): METHOD = %s, tangent point (%.7f, %.7f)", pin.stackid or "?",
                pin.instrument, pin.method, pin.ra_stack, pin.dec_stack)

    det_hdu = "GAIA_PAIRS" if pin.method == "direct" else "WISE_PAIRS"
    all_det_pairs = pin.pairs(det_hdu)
    mask, use_groups, notes = apply_id_lists(all_det_pairs, pin.detections["region_id"],
                                             include=include, exclude=exclude,
                                             leg=det_hdu)
    for note in notes:
        logger.warning("%s", note)
    if include is not None or exclude is not None:
        logger.info("Operator selection: %d of %d %s pairs kept%s", int(mask.sum()),
                    len(all_det_pairs), det_hdu,
                    "; separation groups bypassed (include)" if not use_groups else "")
    det_pairs = all_det_pairs.subset(mask)
    wise_gaia = pin.pairs("WISE_GAIA") if pin.method == "twostep" else xfmfit.PairSet.empty()

    stack_fit = xfmfit.fit_stack_spec(
        pin.method, det_pairs, wise_gaia=wise_gaia, n_groups=pin.n_groups, loss=params["loss"],
        f_scale=float(params["f_scale"]), max_shift=float(params["max_shift"]),
        min_group_matches=int(params["min_group_matches"]), use_groups=use_groups)
    spec = spec_estimate(stack_fit)
    _log_spec(stack_fit)

    mix = _mixture_or_none(pin, det_pairs, wise_gaia, params)
    applied, alternative = spec, mix
    if params["estimator"] == "mixture":
        if mix is not None and mix.ok:
            applied, alternative = mix, spec
        elif pin.method != "none":
            logger.warning("estimator=mixture: the mixture fit failed (%s); the spec estimate "
                           "is applied; DISAGREE not evaluated",
                           "not available" if mix is None else mix.message)
    elif mix is not None and not mix.ok and pin.method != "none":
        logger.info("the mixture fit failed (%s); DISAGREE not evaluated", mix.message)
    disagree_reason = None
    if spec.ok and mix is not None and mix.ok:
        dist = disagreement(spec.total, mix.total)
        if dist is None and spec.extra_nomatch and mix.extra_nomatch:
            # without ALLWISE-Gaia pairs both totals are their detection legs (the other leg
            # is 0 with unknown errors): compare those
            dist = disagreement(spec.components[1], mix.components[1])
        if dist is None:
            logger.info("DISAGREE not evaluated: a covariance is unknown or singular")
        elif dist > DISAGREE_SIGMA:
            disagree_reason = (
                f"spec ({spec.total.d_xi:.3f}, {spec.total.d_eta:.3f})\" vs mixture "
                f"({mix.total.d_xi:.3f}, {mix.total.d_eta:.3f})\" differ by {dist:.1f} sigma "
                f"> {DISAGREE_SIGMA:g}")

    total = applied.total
    shift = float(np.hypot(total.d_xi, total.d_eta))
    density = pin.dens_gaia if pin.method == "direct" else pin.dens_wise
    if density is None and pin.method != "none":
        logger.warning("%s: no %s keyword; the DENSE rule is not evaluated", pin.path,
                       "DENSGAIA" if pin.method == "direct" else "DENSWISE")
    qa = xfmfit.decide_qa(
        method=applied.method, n_match=applied.n_match, total_shift_arcsec=shift,
        density=density, det_theta_arcmin=pin.detections["theta"],
        det_src_cnts=pin.detections["src_cnts"], thresholds=_thresholds(params),
        disagree_reason=disagree_reason, extra_nomatch=applied.extra_nomatch)

    logger.info("Applied (%s): d_xi = %+.4f +/- %.4f\", d_eta = %+.4f +/- %.4f\" "
                "(%d pairs, %d detections, group %d); rms %.3f\" -> %.3f\"",
                applied.estimator, total.d_xi, np.sqrt(total.cov[0, 0]), total.d_eta,
                np.sqrt(total.cov[1, 1]), total.n_used, applied.n_match, total.group,
                total.resstd0, total.resstd1)
    if alternative is not None and alternative.ok:
        logger.info("Not applied (%s): d_xi = %+.4f\", d_eta = %+.4f\"", alternative.estimator,
                    alternative.total.d_xi, alternative.total.d_eta)
    if qa.flags:
        logger.warning("QA flags %d (stack %s): %s -- the transform is written; review the "
                       "stack (spec 5.7)", qa.flags, pin.stackid or "?", qa.reason)

    write_fits(build_transform_hdul(pin, applied, qa, params, alternative=alternative),
               outfile, params, clobber=params["clobber"])
    if outdet:
        write_fits(build_detections_hdul(pin, applied, qa, params), outdet, params,
                   clobber=params["clobber"])
    if diagfile:
        write_fits(build_diag_hdul(pin, {"det": np.flatnonzero(mask)}, spec, mix, params),
                   diagfile, params, clobber=params["clobber"])
    return 0


def _log_spec(fit: xfmfit.StackFit):
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
        logger.warning("the residual scatter of the %d pairs (%d detections) is implausibly "
                       "small for their stated errors (identical or duplicated offsets?); the "
                       "reported errors are the formal ones from the stated errors",
                       leg.n_used, leg.fit.n_clusters)
    if leg.fit is not None and leg.fit.at_bound:
        logger.warning("the fitted shift sits on the max_shift bound")


def _mixture_or_none(pin, det_pairs, wise_gaia, params):
    """Run the mixture estimator; None (with a warning) if it cannot run."""
    from stk_astrometry.errors import FitError

    try:
        mix = _run_mixture(pin, det_pairs, wise_gaia, sys_floor=float(params["sys_floor"]),
                           max_shift=float(params["max_shift"]))
    except ImportError as exc:
        logger.warning("the mixture estimator is not available (%s)", exc)
        return None
    except FitError as exc:
        logger.warning("mixture estimator: %s", exc)
        return None
    logger.log(15, "mixture fit: %s", mix.message)
    return mix
