"""The in-process API: one function per step of the chain, returning a result object.

:func:`match_stack`, :func:`fit_stack`, :func:`update_products` and :func:`simulate_stack`
do what ``stk_match``, ``stk_xfm``, ``stk_update_wcs`` and ``stk_simulate`` do — the tools
are front ends that resolve their parameters and call these — so Python and the command
line give the same answers by construction.  Keyword names and defaults are the ``.par``
files' (``r_stack=10.0``, ``estimator="spec"``, ...).

Pure functions: no global state, no parameter files, no printing.  They log through
``logging.getLogger("stk_astrometry.api")`` and also return the warnings they logged on the
result (``result.warnings``), so a batch driver can store them per stack.  User errors raise
:class:`stk_astrometry.errors.StkError` subclasses.

Durability
----------
Every file a function writes appears atomically: it is written in full to a temporary file in
its folder and renamed into place, so a process killed at any moment leaves each output wholly
old or wholly new.  By default an output is also *durable* when the function returns (the file
fsynced before its rename, its folder after), so it survives a system crash.  That costs two
journal commits per call, 1-10 ms each on a shared disk -- the whole per-stack budget of a
campaign.  Inside :func:`deferred_durability` the outputs are still renamed atomically but
made durable together at the block's end, with one ``syncfs`` per file system
(:func:`make_durable`); until then a system crash may lose them.  Record an output as
finished (in a database, a log a rerun trusts) only after the block has ended -- or, with
``sync=False``, after your own :func:`make_durable` of ``pending.paths``.
:func:`update_products` keeps its own per-product guarantees (journal, locks) in any case.

Examples
--------
>>> from stk_astrometry import api
>>> m = api.match_stack("det.fits", "gaia.fits", wisefile="allwise.fits",
...                     bestnbfile="bestnb.fits")                      # doctest: +SKIP
>>> f = api.fit_stack(m, "xfm.fits", estimator="mixture")              # doctest: +SKIP
>>> f.d_xi, f.d_xi_err, f.qa_flags                                     # doctest: +SKIP
>>> u = api.update_products("products/", "xfm.fits", outdir="copies/")  # doctest: +SKIP
>>> with api.deferred_durability():            # many stacks, one sync at the end
...     for d in folders:                                                 # doctest: +SKIP
...         api.fit_stack(api.match_stack(f"{d}/det.fits", f"{d}/gaia.fits"), f"{d}/xfm.fits")
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stk_astrometry.errors import ParameterError
from stk_astrometry.fitsutil import PendingOutputs, deferred_durability, make_durable

logger = logging.getLogger(__name__)


@functools.cache
def _imported(*names):
    """The package's modules ``names`` (dotted, below ``stk_astrometry``), imported at the
    first call that asks for them -- a tool imports only what its step runs (issue 11,
    ``python -X importtime``) -- and then handed out from this cache: an import statement
    inside a function costs ~1.1 us a call once its module is loaded (issue 11: ~18 a
    stack).  Modules, not their functions: a function is looked up at call time, as the
    import statements did, so a test that replaces one still reaches the caller."""
    modules = []
    for name in names:
        # __import__, not importlib.import_module: the interpreter's own import, which
        # ``-X importtime`` reports (import_module's does not appear there)
        __import__(f"stk_astrometry.{name}")
        modules.append(sys.modules[f"stk_astrometry.{name}"])
    return tuple(modules)

__all__ = ["MatchResult", "FitResult", "FileOutcome", "UpdateResult", "SimulateResult",
           "match_stack", "fit_stack", "update_products", "simulate_stack", "parse_sep_bins",
           "deferred_durability", "make_durable", "PendingOutputs",
           "MATCH_DEFAULTS", "FIT_DEFAULTS", "UPDATE_DEFAULTS", "SIMULATE_DEFAULTS"]

# ---------------------------------------------------------------------------------------------
# Defaults: the .par files' names and defaults, in .par order (test_api checks they agree).
# The required ("a") parameters come first; verbose and mode are the tools' own.

MATCH_DEFAULTS = {
    "detfile": "", "gaiafile": "", "outfile": "", "wisefile": "", "bestnbfile": "",
    "stackid": "", "ra_stack": None, "dec_stack": None, "r_stack": 10.0,
    "match_radius": 3.0, "sep_bins": "1,2,3", "max_pm": 50.0, "refcat": "gaia",
    "epoch": "auto", "ref_epoch": None, "pm_disp": 5.0, "method": "auto", "clobber": False,
}
FIT_DEFAULTS = {
    "infile": "", "outfile": "", "outdetfile": "", "estimator": "spec", "loss": "cauchy",
    "f_scale": 1.0, "max_shift": 5.0, "min_group_matches": 3, "sys_floor": 0.0,
    "syserr": "fit", "include": "", "exclude": "", "diagfile": "", "qa_density": 100.0,
    "qa_dense_nmatch": 10, "qa_max_shift": 1.0, "qa_few_matches": 3, "qa_theta": 5.0,
    "qa_counts": 15.0, "qa_few_shift": 0.5, "clobber": False,
}
UPDATE_DEFAULTS = {
    "infile": "", "transformfile": "", "outdir": "", "unknown": "error", "dryrun": False,
    "inverse": False, "replace": False, "force": False, "qa_override": False, "scrub": False,
    "clobber": False, "product": "", "lock_timeout": 60.0,
}
SIMULATE_DEFAULTS = {
    "outdir": "", "seed": 1, "stackid": "", "ra_stack": 189.2, "dec_stack": 62.2,
    "instrument": "ACIS", "ndet": 50, "r_stack": 10.0, "shift_xi": None, "shift_eta": None,
    "shift_sigma": 0.25, "gaia_density": 2.0, "gaia_frac": 0.6, "null_pm_frac": 0.1,
    "high_pm_frac": 0.03, "epoch_gap": 10.0, "wise_density": 1.5, "wise_frac": 0.3,
    "wise_gaia_frac": 0.7, "multi_frac": 0.05, "clean_frac": 0.85, "wise_shift_xi": 0.0,
    "wise_shift_eta": 0.0, "false_frac": 0.0, "match_radius": 3.0, "err_floor": 0.1,
    "missing_floor": 0.0, "err_scale": 1.0, "bright_outliers": 0, "products": True,
    "clobber": False,
}

_ESTIMATORS = ("spec", "mixture")
_LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")
_METHODS = ("auto", "direct", "twostep")
_REFCATS = ("gaia", "sdss")
#: Reference epoch of a catalog without an epoch column and without ``ref_epoch``: Gaia DR3
#: (J2016.0); SDSS imaging (the middle of SDSS-I/II legacy imaging, 2000-2008).
_DEFAULT_REF_EPOCH = {"gaia": 2016.0, "sdss": 2004.0}
_UNKNOWN = ("error", "skip", "generic")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, eq=False)
class MatchResult:
    """What :func:`match_stack` found for one stack.

    Attributes
    ----------
    stackid : str
        ``detect_stack_id`` ('' when the detections name none).
    instrument : str
        ``ACIS`` or ``HRC``.
    method : str
        ``direct``, ``twostep`` or ``none`` (spec §5.5.2).
    ra_stack, dec_stack : float
        Tangent point, deg.
    n_det, n_gaia, n_wise : int
        Detections, Gaia and ALLWISE sources that passed the filters.
    density_gaia : float
        Gaia sources per arcmin² within ``r_stack``, before any filter.
    density_wise : float or None
        The same for ALLWISE; None without ALLWISE inputs.
    n_match_gaia, n_match_wise : int
        Detections with at least one Gaia / ALLWISE match.
    n_match_gaia_group, n_match_wise_group : tuple of int
        The same per separation group.
    outfile : str or None
        The matched-pairs file written (None: nothing written).
    pairs : stk_astrometry.formats.pairs.Pairs
        The matched-pairs file's content, in memory; :func:`fit_stack` accepts it (or this
        result) without a file round trip.
    warnings : tuple of str
        The warnings logged while matching.
    refcat : str
        ``gaia`` or ``sdss``: the reference catalog read from ``gaiafile``.
    epoch : float or None
        The stack's epoch (Julian year) the reference positions were moved to; None when
        they were used at their own epoch (``epoch='none'``, or no epoch found).
    ref_epoch : float or None
        The reference catalog's epoch (mean over its rows), None when not propagated.
    n_propagated : int
        Reference sources moved with their own proper motion.
    """

    stackid: str
    instrument: str
    method: str
    ra_stack: float
    dec_stack: float
    n_det: int
    n_gaia: int
    n_wise: int
    density_gaia: float
    density_wise: float | None
    n_match_gaia: int
    n_match_wise: int
    n_match_gaia_group: tuple
    n_match_wise_group: tuple
    outfile: str | None
    pairs: object = dataclasses.field(repr=False)
    warnings: tuple = ()
    refcat: str = "gaia"
    epoch: float | None = None
    ref_epoch: float | None = None
    n_propagated: int = 0


@dataclass(frozen=True, eq=False)
class FitResult:
    """The transform :func:`fit_stack` fitted for one stack.

    Attributes
    ----------
    stackid, instrument : str
    method : str
        ``direct``, ``twostep`` or ``none``.
    estimator : str
        The estimator applied: ``spec`` or ``mixture`` (``spec`` when the mixture was asked
        for and failed).
    d_xi, d_eta : float
        Applied shift, arcsec (corrected xi = xi + d_xi).
    d_xi_err, d_eta_err : float
        Its 1-sigma errors, arcsec (NaN when unknown).
    cov : ndarray (2, 2)
        Its covariance, arcsec².
    n_match : int
        Matched detections used.
    n_used : int
        Pairs used by the detection leg.
    group : int
        Separation group used (0: all/none).
    resstd0, resstd1 : float
        rms of target - source before / after the shift, arcsec.
    qa_flags : int
        Bits 1 NOMATCH, 2 DENSE, 4 BIGSHIFT, 8 FEWMATCH, 16 DISAGREE.
    qa_reason : str
        Why each flag was raised ('' when clean).
    alt_estimator : str
        The estimator not applied ('' when it did not give a result).
    alt_d_xi, alt_d_eta : float
        Its shift, arcsec (NaN if none).
    n_eff : float
        The mixture's effective number of true matches (NaN when it did not run).
    xfm_id : str
        ``STKXFMID`` of the applied TOTAL (formats.md §2).
    components : tuple of stk_astrometry.formats.transform.Component
        The STKXFM rows, TOTAL first.
    outfile, outdetfile, diagfile : str or None
        Files written.
    warnings : tuple of str
        The warnings logged while fitting.
    """

    stackid: str
    instrument: str
    method: str
    estimator: str
    d_xi: float
    d_eta: float
    d_xi_err: float
    d_eta_err: float
    cov: object = dataclasses.field(repr=False)
    n_match: int = 0
    n_used: int = 0
    group: int = 0
    resstd0: float = float("nan")
    resstd1: float = float("nan")
    qa_flags: int = 0
    qa_reason: str = ""
    alt_estimator: str = ""
    alt_d_xi: float = float("nan")
    alt_d_eta: float = float("nan")
    n_eff: float = float("nan")
    xfm_id: str = ""
    components: tuple = dataclasses.field(default=(), repr=False)
    outfile: str | None = None
    outdetfile: str | None = None
    diagfile: str | None = None
    warnings: tuple = ()


@dataclass(frozen=True)
class FileOutcome:
    """What :func:`update_products` did to one file.

    Attributes
    ----------
    path : str
    product_type : str
        The §5.6 product type recognised ('?' when none).
    status : str
        ``updated``, ``unchanged``, ``skipped`` or ``error``.
    message : str
        What was done, or the error.
    category : str
        The finer category of the tool's report (``already applied``, ``inherit``,
        ``needs nothing``, ``would update``, ...).
    """

    path: str
    product_type: str
    status: str
    message: str
    category: str = ""


@dataclass(frozen=True)
class UpdateResult:
    """What :func:`update_products` did.

    Attributes
    ----------
    files : tuple of FileOutcome
    n_updated, n_unchanged, n_skipped, n_errors : int
    xfm_id : str
        ``STKXFMID`` of the transform applied.
    warnings : tuple of str
    """

    files: tuple
    n_updated: int
    n_unchanged: int
    n_skipped: int
    n_errors: int
    xfm_id: str = ""
    warnings: tuple = ()


@dataclass(frozen=True)
class SimulateResult:
    """What :func:`simulate_stack` wrote.

    Attributes
    ----------
    outdir : str
    stackid : str
    seed : int
        The seed used (drawn when ``seed=None``).
    files : dict
        Table key (``det``, ``gaia``, ``allwise``, ``bestnb``, ``truth``) -> path.
    products : tuple of str
        The data products written (empty with ``products=False``).
    d_xi, d_eta : float
        The true shift, arcsec.
    crb_xi, crb_eta : float
        Cramér–Rao bound of the direct fit, arcsec.
    warnings : tuple of str
    """

    outdir: str
    stackid: str
    seed: int
    files: dict
    products: tuple
    d_xi: float
    d_eta: float
    crb_xi: float
    crb_eta: float
    warnings: tuple = ()


# ---------------------------------------------------------------------------------------------
# Shared plumbing


class _Collector(logging.Handler):
    """Collects the warnings logged by this thread (other threads' runs are not mixed in)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages = []

    def emit(self, record):
        if record.thread == self.thread:
            try:
                self.messages.append(record.getMessage())
            except Exception:  # noqa: BLE001 - a bad log call must not fail the run
                self.messages.append(str(record.msg))


@contextlib.contextmanager
def _collect_warnings():
    handler = _Collector()
    pkg = logging.getLogger("stk_astrometry")
    pkg.addHandler(handler)
    try:
        yield handler.messages
    finally:
        pkg.removeHandler(handler)


def _history_text(value):
    """A value as CIAO writes it in a HISTORY PARM record."""
    if value is None:
        return "INDEF"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(_history_text(v) for v in value)
    return str(value)


class _Run(Mapping):
    """A call's parameters for HISTORY records: ``.tool`` and ``.history_items()`` in .par order."""

    def __init__(self, tool, values):
        self.tool = tool
        self._values = dict(values)

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def history_items(self):
        return [(name, _history_text(v)) for name, v in self._values.items()]


def _history(tool, defaults, given, history):
    if history is not None:
        return history
    values = {name: given.get(name, default) for name, default in defaults.items()}
    return _Run(tool, values)


def _header_text(header, key):
    """A header keyword as stripped text, '' when absent (header may be a dict)."""
    try:
        value = header.get(key)
    except AttributeError:
        return ""
    return "" if value is None else str(value).strip()


def _blank(value):
    return value is None or str(value).strip() == ""


def _text(value):
    return None if _blank(value) else str(value).strip()


def _choice(name, value, allowed):
    text = str(value).strip().lower()
    if text not in allowed:
        raise ParameterError(f"{name}={value}: expected one of {', '.join(allowed)}")
    return text


def parse_sep_bins(text):
    """Parse ``sep_bins`` (``"1,2,3"``, commas and/or blanks, or numbers) into a tuple of floats."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(v) for v in text)
    parts = [p for p in re.split(r"[,\s]+", str(text or "").strip()) if p]
    if not parts:
        raise ParameterError("sep_bins is blank: give the upper group edges, e.g. sep_bins=1,2,3")
    edges = []
    for part in parts:
        try:
            edges.append(float(part))
        except ValueError:
            raise ParameterError(f"sep_bins={text}: '{part}' is not a number") from None
    if len(edges) > 99:
        raise ParameterError(f"sep_bins={text}: at most 99 groups")
    return tuple(edges)


def _fits_text(value):
    """True if ``value`` can be a FITS keyword value (printable ASCII)."""
    return value.isascii() and value.isprintable()


# ---------------------------------------------------------------------------------------------
# match_stack


def match_stack(detfile, gaiafile, outfile=None, *, wisefile=None, bestnbfile=None,
                stackid=None, ra_stack=None, dec_stack=None, r_stack=10.0, match_radius=3.0,
                sep_bins="1,2,3", max_pm=50.0, refcat="gaia", epoch="auto", ref_epoch=None,
                pm_disp=5.0, method="auto", clobber=False, history=None) -> MatchResult:
    """Cross-match a stack's detections with Gaia (and ALLWISE), as ``stk_match`` does.

    Applies the specification's filters (§5.1, §5.2, §5.5.1), counts the reference
    densities within ``r_stack``, finds every pair within ``match_radius`` in separation
    groups and decides between the direct and the two-step path (§5.5.2).

    Parameters
    ----------
    detfile, gaiafile : str or Path
        Detection and Gaia tables (``file``, ``file[EXTNAME]``, ``file[n]``; FITS, VOTable,
        ECSV or CSV).
    outfile : str or Path, optional
        The matched-pairs file to write (formats.md §1); None writes nothing.
    wisefile, bestnbfile : str or Path, optional
        ALLWISE and Gaia-ALLWISE best-neighbour tables: both or neither.
    stackid : str, optional
        The stack to use when ``detfile`` holds several.
    ra_stack, dec_stack : float, optional
        Tangent point, deg (default: from ``detfile``).
    r_stack : float
        Cone radius, arcmin.
    match_radius : float
        Cross-match radius, arcsec.
    sep_bins : str or sequence of float
        Upper edges of the separation groups, arcsec.
    max_pm : float
        Maximum total Gaia proper motion, mas/yr.
    refcat : {'gaia', 'sdss'}
        What ``gaiafile`` holds: Gaia, or SDSS objects (seed 003's error model).
    epoch : str or float
        The stack's epoch: ``'auto'`` (from ``detfile``: an epoch/mjd_obs column, MJD-OBS,
        DATE-OBS), ``'none'`` (reference positions used at their own epoch, errors 0 for
        Gaia: the specification's literal behaviour), a Julian year, an MJD or an ISO date.
    ref_epoch : float, optional
        The reference catalog's epoch when it has no ``ref_epoch`` column (default 2016.0,
        Gaia DR3; for SDSS without ``mjd``, 2004.0).
    pm_disp : float
        Proper-motion dispersion (mas/yr per coordinate) by which the position error of a
        source without a proper motion grows per year from its epoch.
    method : {'auto', 'direct', 'twostep'}
    clobber : bool
        Overwrite an existing ``outfile``.
    history : object, optional
        What the HISTORY records of ``outfile`` name (an object with ``.tool`` and
        ``.history_items()``, as a tool's resolved parameters); default: this call's
        keywords under the name ``stk_match``.

    Returns
    -------
    MatchResult

    Raises
    ------
    stk_astrometry.errors.StkError
        ParameterError, InputError, CatalogError, FormatError, OutputError.

    Notes
    -----
    ``outfile`` appears atomically and is durable on return, or at the end of an enclosing
    :func:`deferred_durability` block (module docstring, "Durability").
    """
    with _collect_warnings() as caught:
        result = _match(detfile, gaiafile, outfile, wisefile=wisefile, bestnbfile=bestnbfile,
                        stackid=stackid, ra_stack=ra_stack, dec_stack=dec_stack,
                        r_stack=r_stack, match_radius=match_radius, sep_bins=sep_bins,
                        max_pm=max_pm, refcat=refcat, epoch=epoch, ref_epoch=ref_epoch,
                        pm_disp=pm_disp, method=method, clobber=clobber, history=history)
    return dataclasses.replace(result, warnings=tuple(caught))


def _check_not_input(inputs, outfile):
    """Refuse an ``outfile`` that is one of ``inputs`` (:func:`fitsutil.same_file`, the
    output's identity taken once: :class:`fitsutil.FileIdentity`)."""
    fitsutil, tableio = _imported("fitsutil", "tableio")
    parse_virtual_filename = tableio.parse_virtual_filename

    out = fitsutil.FileIdentity(outfile)
    for name, value in inputs.items():
        if _blank(value):
            continue
        if out.same_as(parse_virtual_filename(str(value))[0]):
            raise ParameterError(f"outfile={outfile} is also {name}; choose another output name")


def _match(detfile, gaiafile, outfile, *, wisefile, bestnbfile, stackid, ra_stack, dec_stack,
           r_stack, match_radius, sep_bins, max_pm, refcat, epoch, ref_epoch, pm_disp, method,
           clobber, history):
    matching, fitsutil, catalogs, pairs_format, tableio = _imported(
        "matching", "fitsutil", "formats.catalogs", "formats.pairs", "tableio")
    check_clobber, read_table = fitsutil.check_clobber, tableio.read_table

    for name, value in (("detfile", detfile), ("gaiafile", gaiafile)):
        if _blank(value):
            raise ParameterError(f"{name} is blank")
    outfile = _text(outfile)
    inputs = {"detfile": detfile, "gaiafile": gaiafile, "wisefile": wisefile,
              "bestnbfile": bestnbfile}
    if outfile is not None:
        _check_not_input(inputs, outfile)
        check_clobber(outfile, clobber)
    have_wise = not _blank(wisefile)
    if have_wise != (not _blank(bestnbfile)):
        raise ParameterError(
            "wisefile and bestnbfile go together: give both (two-step path) or neither (Gaia only)"
        )
    if not _blank(stackid) and not _fits_text(str(stackid).strip()):
        raise ParameterError(
            f"stackid={stackid!r} is not printable ASCII "
            "(the STACKID keyword of the output cannot hold it)"
        )
    method = _choice("method", method, _METHODS)
    if method == "twostep" and not have_wise:
        raise ParameterError("method=twostep needs the ALLWISE inputs: set wisefile and bestnbfile")
    # Validate the numeric settings before reading any file (tangent point later).
    for name, value in (("r_stack", r_stack), ("match_radius", match_radius),
                        ("max_pm", max_pm)):
        if value is None:
            raise ParameterError(f"{name} must be a number, not INDEF")
    refcat = _choice("refcat", refcat, _REFCATS)
    epoch_req = catalogs.parse_epoch_parameter(epoch)
    ref_epoch = _check_ref_epoch(ref_epoch)
    pm_disp = _check_pm_disp(pm_disp)
    config = matching.MatchConfig(
        0.0, 0.0,
        r_stack_arcmin=float(r_stack),
        match_radius_arcsec=float(match_radius),
        sep_bins_arcsec=parse_sep_bins(sep_bins),
        max_pm_masyr=float(max_pm),
        method=method,
    )

    det_in = read_table(detfile, param="detfile")
    cat = catalogs.read_detections(det_in, stackid=stackid, ra_stack=ra_stack,
                                   dec_stack=dec_stack)
    det = cat.detections
    logger.info("Read %d detection(s) of stack %s from %s; tangent point from %s",
                len(det), cat.stackid or "(unnamed)", det_in.hdu, cat.origin)
    applied = _header_text(det_in.header, "STKXFMID")
    if applied:
        # stk_update_wcs moved these positions already (issue 15): a fit on them measures
        # what is left of the shift, ~0, not the stack's shift
        logger.warning("stack %s: %s: the detections carry transform STKXFMID=%s - "
                       "stk_update_wcs has moved their positions; the fit will measure the "
                       "shift left over (about zero), not the stack's.  Match the catalog as "
                       "the archive wrote it (or undo with stk_update_wcs inverse=yes)",
                       cat.stackid or "(unnamed)", det_in.hdu, applied)
    config = dataclasses.replace(config, ra_stack_deg=cat.ra_stack, dec_stack_deg=cat.dec_stack)
    gaia_in = read_table(gaiafile, param="gaiafile")
    gaia, ref_keys = _read_reference(gaia_in, refcat)
    gaia, epoch_keys, epochs, motion, errors = _at_stack_epoch(gaia, gaia_in, refcat, det_in,
                                                               cat, epoch_req, ref_epoch,
                                                               pm_disp)
    wise = best = None
    if have_wise:
        wise_in = read_table(wisefile, param="wisefile")
        best_in = read_table(bestnbfile, param="bestnbfile")
        wise, best = catalogs.read_wise_linked(wise_in, best_in)
        logger.info("Read %d ALLWISE source(s) from %s and %d best-neighbour row(s) from %s",
                    len(wise), wise_in.hdu, len(best), best_in.hdu)

    result = matching.match_stack(det, gaia, config, wise=wise, best_neighbours=best,
                                  motion=motion)
    # the positions the match used: at the stack's epoch wherever a result reads them
    gaia = dataclasses.replace(gaia, ra_deg=result.gaia_ra_deg, dec_deg=result.gaia_dec_deg)
    if errors is not None:
        gaia = _with_errors(gaia, errors, result.gaia_pairs.ref_row)
    _report_match(result, cat.stackid)
    pairs = pairs_format.pairs_from_match(result, det, gaia, wise, stackid=cat.stackid,
                                          instrument=cat.instrument)
    pairs = dataclasses.replace(pairs, keywords=pairs.keywords + ref_keys + epoch_keys)
    if outfile is not None:
        given = dict(detfile=detfile, gaiafile=gaiafile, outfile=outfile, wisefile=wisefile,
                     bestnbfile=bestnbfile, stackid=stackid, ra_stack=ra_stack,
                     dec_stack=dec_stack, r_stack=r_stack, match_radius=match_radius,
                     sep_bins=sep_bins, max_pm=max_pm, refcat=refcat, epoch=epoch,
                     ref_epoch=ref_epoch, pm_disp=pm_disp, method=method, clobber=clobber)
        pairs_format.write_pairs(pairs, outfile, _history("stk_match", MATCH_DEFAULTS, given,
                                                          history), clobber=clobber)
    wise_groups = (result.wise_pairs.n_match_group if result.wise_pairs is not None
                   else (0,) * config.n_groups)
    return MatchResult(
        stackid=cat.stackid, instrument=cat.instrument, method=result.method,
        ra_stack=float(cat.ra_stack), dec_stack=float(cat.dec_stack),
        n_det=int(len(result.det_rows)), n_gaia=int(len(result.gaia_rows)),
        n_wise=int(len(result.wise_rows)) if wise is not None else 0,
        density_gaia=float(result.density_gaia),
        density_wise=None if result.density_wise is None else float(result.density_wise),
        n_match_gaia=int(result.n_match_gaia), n_match_wise=int(result.n_match_wise),
        n_match_gaia_group=tuple(int(n) for n in result.gaia_pairs.n_match_group),
        n_match_wise_group=tuple(int(n) for n in wise_groups),
        outfile=outfile, pairs=pairs, refcat=refcat, epoch=epochs[0], ref_epoch=epochs[1],
        n_propagated=epochs[2])


def _check_ref_epoch(value):
    if value is None or (isinstance(value, str) and value.strip().upper() in ("", "INDEF")):
        return None
    try:
        year = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"ref_epoch={value!r} is not a number (a Julian year such as "
                             "2016.0)") from None
    if not (1900.0 <= year <= 2100.0):
        raise ParameterError(f"ref_epoch={value} is not a Julian year within 1900-2100")
    return year


def _check_pm_disp(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"pm_disp={value!r} is not a number (mas/yr)") from None
    import math

    if not (math.isfinite(number) and number >= 0):
        raise ParameterError(f"pm_disp must be a number >= 0 (mas/yr), got {value}")
    return number


def _read_reference(ref_in, refcat):
    """The reference sources of ``gaiafile`` and the keywords saying what they are."""
    catalogs, = _imported("formats.catalogs")

    if refcat == "gaia":
        gaia = catalogs.read_gaia(ref_in)
        logger.info("Read %d Gaia source(s) from %s", len(gaia), ref_in.hdu)
        return gaia, (("REFCAT", "GAIA", "reference catalog (refcat)"),)
    sd = catalogs.read_sdss(ref_in)
    logger.info("Read %d SDSS object(s) from %s; errors: %s", len(sd.sources), ref_in.hdu,
                sd.error_model)
    if sd.n_not_primary:
        logger.info("SDSS objects dropped: mode not 1 (not primary): %d", sd.n_not_primary)
    if sd.n_bad_err:
        logger.warning("SDSS objects dropped: position error NaN or <= 0: %d", sd.n_bad_err)
    keys = (("REFCAT", "SDSS", "reference catalog (refcat)"),
            ("NSNOTPRI", sd.n_not_primary, "SDSS objects dropped: mode not 1 (primary)"),
            ("NSBADERR", sd.n_bad_err, "SDSS objects dropped: error NaN or <= 0"),
            ("SDSSERR", sd.error_model[:68], ""))
    return _SdssSources(sd.sources, sd.epoch), keys


@dataclass(frozen=True)
class _SdssSources:
    """SDSS sources with their per-row epochs (read by :func:`_at_stack_epoch`)."""

    sources: object
    epoch: object


def _at_stack_epoch(gaia, ref_in, refcat, det_in, cat, epoch_req, ref_epoch, pm_disp):
    """Reference errors at the stack's epoch (issue 14), the keywords, and the motion.

    Returns (sources, keywords, (epoch, mean reference epoch, number moved), motion, errors).
    The sources' positions are the catalog's, at its epoch; ``motion`` (None when nothing is
    propagated) is the :class:`~stk_astrometry.core.epoch.Propagation` to the stack's epoch
    that :func:`stk_astrometry.matching.match_stack` applies to the rows a result depends
    on (issue 11): the other rows are never moved, and their positions in the sources are
    not the stack epoch's -- use ``MatchResult.gaia_ra_deg``/``gaia_dec_deg`` of the match
    (or ``motion.move``), never these, for positions at the stack's epoch.  ``errors`` (None
    when nothing is propagated: the sources' own errors stand) gives the stack epoch's
    ``(sigra_arcsec, sigdec_arcsec)`` of the rows asked for (issue 11: only the rows of pairs
    need them, ~100 of a few thousand; :func:`_with_errors`).
    """
    import numpy as np

    ep, catalogs = _imported("core.epoch", "formats.catalogs")

    row_epochs = None
    astrom = None
    if isinstance(gaia, _SdssSources):
        row_epochs, gaia = gaia.epoch, gaia.sources
        epoch_origin = "mjd column" if row_epochs is not None else ""
    if epoch_req == "none":
        year, origin = None, "epoch=none"
    elif epoch_req is None:
        year, origin = catalogs.find_stack_epoch(det_in, cat.rows)
        if year is None:
            logger.warning("no stack epoch (%s): reference positions used at their own epoch; "
                           "set epoch= to propagate them", origin)
            origin = "none found in detfile"
        else:
            logger.info("Stack epoch %.4f from %s (%s)", year, origin, det_in.hdu)
    else:
        year, origin = float(epoch_req), "epoch parameter"
    keys = [("EPOCHMOD", "none" if year is None else "propagate",
             "reference positions moved to EPOCHOBS?"),
            ("EPOCHOBS", year, "[yr] stack epoch (Julian) used"),
            ("EPOCHSRC", origin[:68], "")]
    if year is None:
        return gaia, tuple(keys), (None, None, 0), None, None
    fallback = ref_epoch if ref_epoch is not None else _DEFAULT_REF_EPOCH[refcat]
    fallback_origin = "ref_epoch parameter" if ref_epoch is not None else (
        "Gaia DR3 default" if refcat == "gaia" else "SDSS default")
    n = len(gaia)
    if refcat == "gaia":
        astrom = catalogs.read_gaia_astrometry(ref_in)
        row_epochs, epoch_origin = astrom.ref_epoch, astrom.ref_epoch_origin
    ref_rows = np.full(n, fallback)
    if row_epochs is not None:
        ok = np.isfinite(row_epochs)
        ref_rows[ok] = row_epochs[ok]
        if not np.all(ok):
            logger.info("%d reference row(s) without an epoch: %.2f (%s)",
                        int(np.count_nonzero(~ok)), fallback, fallback_origin)
            epoch_origin += f", else {fallback_origin}"
    else:
        epoch_origin = fallback_origin
        logger.info("%s has no reference-epoch column: %.2f (%s)", ref_in.hdu, fallback,
                    fallback_origin)
    motion = ep.Propagation(gaia.ra_deg, gaia.dec_deg, gaia.pmra_masyr, gaia.pmdec_masyr,
                            ref_rows, year,
                            parallax_mas=None if astrom is None else astrom.parallax)
    moved = motion.moved
    dt = year - ref_rows

    def errors(rows):
        """(sigra, sigdec) at the stack's epoch, arcsec, of ``rows``: position_sigma and the
        growth of the catalog's own errors work row by row, so these are the numbers of the
        whole columns at those rows."""
        def at(column):
            return None if column is None else np.asarray(column, dtype=float)[rows]

        sig_ra = ep.position_sigma(dt[rows], moved[rows],
                                   pos_err_mas=at(getattr(astrom, "ra_error", None)),
                                   pm_err_masyr=at(getattr(astrom, "pmra_error", None)),
                                   pm_disp_masyr=pm_disp)
        sig_dec = ep.position_sigma(dt[rows], moved[rows],
                                    pos_err_mas=at(getattr(astrom, "dec_error", None)),
                                    pm_err_masyr=at(getattr(astrom, "pmdec_error", None)),
                                    pm_disp_masyr=pm_disp)
        if gaia.sigra_arcsec is not None:        # SDSS: the catalog's own errors, grown
            sig_ra = np.hypot(at(gaia.sigra_arcsec), sig_ra)
            sig_dec = np.hypot(at(gaia.sigdec_arcsec), sig_dec)
        return sig_ra, sig_dec

    n_moved = int(np.count_nonzero(moved))
    mean_ref = float(np.mean(ref_rows)) if n else float(fallback)
    with np.errstate(invalid="ignore"):
        n_grown = int(np.count_nonzero(~moved & np.isfinite(gaia.ra_deg)))
    logger.info("Reference positions moved from epoch %.3f (%s) to the stack's epoch %.3f "
                "(%s): %d with their proper motion, %d without one kept with errors grown by "
                "%g mas/yr", mean_ref, epoch_origin, year, origin, n_moved, n_grown, pm_disp)
    keys += [("EPOCHREF", mean_ref, "[yr] reference catalog epoch (mean of rows)"),
             ("EPOCHRSC", epoch_origin[:68], ""),
             ("PMDISP", pm_disp, "[mas/yr] pm dispersion, sources without pm"),
             ("NGPROP", n_moved, "reference sources moved with their pm"),
             ("NGGROWN", n_grown, "reference sources without pm: error grown")]
    return gaia, tuple(keys), (year, mean_ref, n_moved), motion, errors


def _with_errors(sources, errors, rows):
    """``sources`` with the stack epoch's errors (``errors`` of :func:`_at_stack_epoch`) at
    ``rows`` -- the rows the pairs read -- and NaN at every other row (never read: the errors
    only travel to the pairs file)."""
    import numpy as np

    arrays, = _imported("core.arrays")
    rows = arrays.distinct_rows(rows, len(sources))
    sig_ra, sig_dec = np.full(len(sources), np.nan), np.full(len(sources), np.nan)
    sig_ra[rows], sig_dec[rows] = errors(rows)
    return dataclasses.replace(sources, sigra_arcsec=sig_ra, sigdec_arcsec=sig_dec)


def _report_match(result, stackid):
    for f in result.filters:
        if f.warn and f.count:
            logger.warning("%s: %d", f.description, f.count)
        else:
            logger.info("  %-8s = %6d  %s", f.keyword, f.count, f.description)
    logger.info("Stack %s: tangent point (%.7f, %.7f)", stackid or "(unnamed)",
                result.config.ra_stack_deg, result.config.dec_stack_deg)
    logger.info("Density within r_stack: Gaia %.4g /arcmin^2%s", result.density_gaia,
                "" if result.density_wise is None
                else f", ALLWISE {result.density_wise:.4g} /arcmin^2")
    logger.info("Gaia pairs %d, detections matched %d (per group %s)", len(result.gaia_pairs),
                result.n_match_gaia, ",".join(map(str, result.gaia_pairs.n_match_group)))
    if result.wise_pairs is not None:
        logger.info("ALLWISE pairs %d, detections matched %d (per group %s); "
                    "one-to-one ALLWISE-Gaia pairs %d", len(result.wise_pairs),
                    result.n_match_wise, ",".join(map(str, result.wise_pairs.n_match_group)),
                    len(result.wise_gaia))
    logger.info("Method: %s", result.method)
    if result.method == "none":
        logger.warning("no detection has a Gaia or ALLWISE match (spec 5.5.5): METHOD = 'none'")
    elif result.method == "twostep" and len(result.wise_gaia) == 0:
        logger.warning("METHOD = 'twostep' but there is no one-to-one ALLWISE-Gaia pair "
                       "within r_stack: the ALLWISE-to-Gaia leg cannot be fitted")


# ---------------------------------------------------------------------------------------------
# fit_stack


def fit_stack(pairs, outfile=None, *, outdetfile=None, diagfile=None, estimator="spec",
              loss="cauchy", f_scale=1.0, max_shift=5.0, min_group_matches=3, sys_floor=0.0,
              syserr="fit", include=None, exclude=None, qa_density=100.0, qa_dense_nmatch=10,
              qa_max_shift=1.0, qa_few_matches=3, qa_theta=5.0, qa_counts=15.0,
              qa_few_shift=0.5, clobber=False, history=None) -> FitResult:
    """Fit a stack's translation to the Gaia frame, as ``stk_xfm`` does.

    Runs both estimators — the specification's (§5.5.3 direct, §5.5.4 two-step: separation
    group, weighted least squares with a robust loss per pair) and the mixture (chance
    matches modelled) — applies the one asked for, and raises the QA flags (§5.5.3, §5.5.4,
    §5.7; DISAGREE when the two differ by more than 3 combined sigma).

    Parameters
    ----------
    pairs : str or Path or MatchResult or stk_astrometry.formats.pairs.Pairs
        A matched-pairs file, or the in-memory pairs of :func:`match_stack` (no file read:
        the same fit as from the file it wrote; a MatchResult's ``outfile`` is then the
        ``infile`` the outputs' HISTORY names, and no output may replace it).
    outfile : str or Path, optional
        The transform file to write (formats.md §2); None writes nothing.
    outdetfile, diagfile : str or Path, optional
        Corrected detections (§2a) and diagnostics (§2b) to write.
    estimator : {'spec', 'mixture'}
        The estimator applied.
    loss : {'linear', 'soft_l1', 'huber', 'cauchy', 'arctan'}
        Robust loss of the spec estimator.
    f_scale : float
        Soft margin of the loss, in units of sqrt(w)·r.
    max_shift : float
        Bound on each shift component, arcsec.
    min_group_matches : int
        Matched detections a separation group needs to compete.
    sys_floor : float
        Systematic error added in quadrature, mixture only, arcsec: fixed with
        ``syserr='fixed'``, the smallest floor the fit may choose with ``syserr='fit'``.
    syserr : {'fit', 'fixed'}
        ``fit`` (default): the mixture fits a systematic floor and a scale on the stated
        errors by maximum likelihood (SYSERR, ERRSCALE keywords); ``fixed``: it trusts the
        stated errors plus ``sys_floor``.
    include, exclude : str or Path or sequence of int, optional
        An id-list file (formats.md §2c) or the detection ``region_id`` values to use exactly
        / to leave out (spec §5.7.1).
    qa_density, qa_dense_nmatch, qa_max_shift, qa_few_matches, qa_theta, qa_counts, qa_few_shift
        QA thresholds (see the stk_xfm help page).
    clobber : bool
        Overwrite existing output files.
    history : object, optional
        What the HISTORY records of the outputs name (see :func:`match_stack`); default:
        this call's keywords under the name ``stk_xfm``.

    Returns
    -------
    FitResult

    Raises
    ------
    stk_astrometry.errors.StkError

    Notes
    -----
    The outputs are written in full, made durable together (one fsync, or one syncfs for
    several) and only then renamed into place, each folder fsynced once after: on return
    all of them are durable, each wholly old or wholly new after a kill or a crash; when
    the call fails none is replaced.  Inside a :func:`deferred_durability` block they are
    renamed at once and made durable at the block's end instead (module docstring,
    "Durability").
    """
    given = dict(outfile=outfile, outdetfile=outdetfile, diagfile=diagfile,
                 estimator=estimator, loss=loss, f_scale=f_scale, max_shift=max_shift,
                 min_group_matches=min_group_matches, sys_floor=sys_floor, syserr=syserr,
                 include=include,
                 exclude=exclude, qa_density=qa_density, qa_dense_nmatch=qa_dense_nmatch,
                 qa_max_shift=qa_max_shift, qa_few_matches=qa_few_matches, qa_theta=qa_theta,
                 qa_counts=qa_counts, qa_few_shift=qa_few_shift, clobber=clobber)
    with _collect_warnings() as caught:
        result = _fit(pairs, given, history)
    return dataclasses.replace(result, warnings=tuple(caught))


def _is_path(value):
    return isinstance(value, (str, os.PathLike))


def _id_values(name, value):
    import numpy as np

    idlist, = _imported("formats.idlist")
    read_id_list = idlist.read_id_list

    if value is None or (_is_path(value) and _blank(value)):
        return None
    if _is_path(value):
        return read_id_list(str(value).strip(), param=name)
    try:
        return np.unique(np.asarray(list(value), dtype=np.int64))
    except (TypeError, ValueError):
        raise ParameterError(
            f"{name}: give a file name or a sequence of integer region_ids") from None


def _check_fit_params(infile, p):
    import numpy as np

    fitsutil, tableio = _imported("fitsutil", "tableio")
    FileIdentity, parse_virtual_filename = fitsutil.FileIdentity, tableio.parse_virtual_filename

    for name in ("f_scale", "max_shift"):
        value = p[name]
        if value is None or not np.isfinite(value) or value <= 0:
            raise ParameterError(f"{name} must be > 0, not {value}")
    if p["min_group_matches"] is None or p["min_group_matches"] < 1:
        raise ParameterError(f"min_group_matches must be >= 1, not {p['min_group_matches']}")
    if p["sys_floor"] is None or p["sys_floor"] < 0:
        raise ParameterError(f"sys_floor must be >= 0, not {p['sys_floor']}")
    if p["syserr"] not in ("fit", "fixed"):
        raise ParameterError(f"syserr must be fit or fixed, not {p['syserr']!r}")
    for name in ("qa_density", "qa_dense_nmatch", "qa_max_shift", "qa_few_matches", "qa_theta",
                 "qa_counts", "qa_few_shift"):
        if p[name] is None:
            raise ParameterError(f"{name} must be a number, not INDEF")
    if infile is not None:
        infile = parse_virtual_filename(infile)[0]
    id_lists = {n: str(p[n]).strip() for n in ("include", "exclude")
                if _is_path(p[n]) and not _blank(p[n])}
    outputs = {}
    for name in ("outfile", "outdetfile", "diagfile"):
        if _blank(p[name]):
            continue
        target = str(p[name]).strip()
        out = FileIdentity(target)
        if infile is not None and out.same_as(infile):
            raise ParameterError(f"{name}={p[name]} is the input file; choose another name")
        for list_name, list_path in id_lists.items():
            if out.same_as(list_path):
                raise ParameterError(f"{name}={p[name]} is also {list_name}; choose another name")
        for other_path, other in outputs.items():
            if out.same_as(other_path):
                raise ParameterError(f"{name}={p[name]} is also {other}")
        outputs[target] = name


def _fit(pairs_in, p, history):
    import numpy as np

    stackfit, xfmfit, fitsutil, detcorr, diag, pairs_format, transform, wcsupdate = _imported(
        "stackfit", "xfmfit", "fitsutil", "formats.detcorr", "formats.diag", "formats.pairs",
        "formats.transform", "wcsupdate")
    check_clobber = fitsutil.check_clobber

    estimator = _choice("estimator", p["estimator"], _ESTIMATORS)
    loss = _choice("loss", p["loss"], _LOSSES)
    infile = str(pairs_in).strip() if _is_path(pairs_in) else None
    if _is_path(pairs_in) and _blank(pairs_in):
        raise ParameterError("infile is blank")
    # pairs handed on in memory by match_stack, which also wrote them: the file they came
    # from as far as the outputs' HISTORY and the name checks go (its content, not re-read)
    written = pairs_in.outfile if isinstance(pairs_in, MatchResult) else None
    _check_fit_params(infile or written, p)
    outfile, outdet, diagfile = (_text(p[n]) for n in ("outfile", "outdetfile", "diagfile"))
    clobber = bool(p["clobber"])
    check_clobber(outfile, clobber, param="outfile")
    check_clobber(outdet, clobber, param="outdetfile")
    check_clobber(diagfile, clobber, param="diagfile")

    if infile is not None:
        pin = pairs_format.read_pairs(infile)
    elif isinstance(pairs_in, MatchResult):
        pin = pairs_in.pairs
    elif isinstance(pairs_in, pairs_format.Pairs):
        pin = pairs_in
    else:
        raise ParameterError("pairs: give a matched-pairs file, a MatchResult or its .pairs, "
                             f"not {type(pairs_in).__name__}")
    include = _id_values("include", p["include"])
    exclude = _id_values("exclude", p["exclude"])
    logger.info("Stack %s (%s): METHOD = %s, tangent point (%.7f, %.7f)", pin.stackid or "?",
                pin.instrument, pin.method, pin.ra_stack, pin.dec_stack)

    det_hdu = "GAIA_PAIRS" if pin.method == "direct" else "WISE_PAIRS"
    all_det_pairs = pin.pairs(det_hdu)
    mask, use_groups, notes = stackfit.apply_id_lists(
        all_det_pairs, pin.detections["region_id"], include=include, exclude=exclude,
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
        pin.method, det_pairs, wise_gaia=wise_gaia, n_groups=pin.n_groups, loss=loss,
        f_scale=float(p["f_scale"]), max_shift=float(p["max_shift"]),
        min_group_matches=int(p["min_group_matches"]), use_groups=use_groups)
    spec = stackfit.spec_estimate(stack_fit)
    stackfit.log_spec(stack_fit, pin.stackid)

    mix = stackfit.mixture_or_none(pin, det_pairs, wise_gaia, sys_floor=p["sys_floor"],
                                   max_shift=p["max_shift"], calibrate=p["syserr"] == "fit")
    applied, alternative = spec, mix
    if estimator == "mixture":
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
        compare = spec.compare_cov or (None, None)
        dist = stackfit.disagreement(spec.total, mix.total, cov_a=compare[0])
        if dist is None and spec.extra_nomatch and mix.extra_nomatch:
            # without ALLWISE-Gaia pairs both totals are their detection legs (the other leg
            # is 0 with unknown errors): compare those
            dist = stackfit.disagreement(spec.components[1], mix.components[1],
                                         cov_a=compare[1])
        if dist is None:
            logger.info("DISAGREE not evaluated: a covariance is unknown or singular")
        elif dist > stackfit.DISAGREE_SIGMA:
            disagree_reason = (
                f"spec ({spec.total.d_xi:.3f}, {spec.total.d_eta:.3f})\" vs mixture "
                f"({mix.total.d_xi:.3f}, {mix.total.d_eta:.3f})\" differ by {dist:.1f} sigma "
                f"> {stackfit.DISAGREE_SIGMA:g}")

    total = applied.total
    shift = float(np.hypot(total.d_xi, total.d_eta))
    density = pin.dens_gaia if pin.method == "direct" else pin.dens_wise
    if density is None and pin.method != "none":
        logger.warning("%s: no %s keyword; the DENSE rule is not evaluated",
                       pin.path or "pairs", "DENSGAIA" if pin.method == "direct" else "DENSWISE")
    thresholds = xfmfit.QAThresholds(
        density=float(p["qa_density"]), dense_nmatch=int(p["qa_dense_nmatch"]),
        max_shift=float(p["qa_max_shift"]), few_matches=int(p["qa_few_matches"]),
        theta=float(p["qa_theta"]), counts=float(p["qa_counts"]),
        few_shift=float(p["qa_few_shift"]))
    qa = xfmfit.decide_qa(
        method=applied.method, n_match=applied.n_match, total_shift_arcsec=shift,
        density=density, det_theta_arcmin=pin.detections["theta"],
        det_src_cnts=pin.detections["src_cnts"], thresholds=thresholds,
        disagree_reason=disagree_reason, extra_nomatch=applied.extra_nomatch)

    logger.info("Applied (%s): d_xi = %+.4f +/- %.4f\", d_eta = %+.4f +/- %.4f\" "
                "(%d pairs, %d detections, group %d); rms %.3f\" -> %.3f\"",
                applied.estimator, total.d_xi, np.sqrt(total.cov[0, 0]), total.d_eta,
                np.sqrt(total.cov[1, 1]), total.n_used, applied.n_match, total.group,
                total.resstd0, total.resstd1)
    alt_ok = alternative is not None and alternative.ok
    if alt_ok:
        logger.info("Not applied (%s): d_xi = %+.4f\", d_eta = %+.4f\"", alternative.estimator,
                    alternative.total.d_xi, alternative.total.d_eta)
    if qa.flags:
        logger.warning("QA flags %d (stack %s): %s -- the transform is written; review the "
                       "stack (spec 5.7)", qa.flags, pin.stackid or "?", qa.reason)

    def keywords(with_alternative):
        return transform.transform_keywords(
            stackid=pin.stackid, instrument=pin.instrument, ra_stack=pin.ra_stack,
            dec_stack=pin.dec_stack, method=applied.method, estimator=applied.estimator,
            loss=loss, f_scale=p["f_scale"], total=total, n_match=applied.n_match,
            qa_flags=qa.flags, qa_reason=qa.reason, n_eff=applied.n_eff,
            error_model=mix.error_model if mix is not None and mix.ok else None,
            alternative=((alternative.estimator, alternative.total)
                         if with_alternative and alt_ok else None))

    hist = _history("stk_xfm", FIT_DEFAULTS, dict(p, infile=infile or written or ""), history)
    # the outputs are written, synced together, then renamed: two journal commits in all
    with fitsutil.commit_group():
        if outfile:
            transform.write_transform(outfile, applied.components, keywords(True), hist,
                                      instrument=pin.instrument, ra_ref=pin.ra_stack,
                                      dec_ref=pin.dec_stack, clobber=clobber)
        if outdet:
            cols = stackfit.corrected_detections(pin, total.d_xi, total.d_eta)
            detcorr.write_detcorr(outdet, cols, keywords(False), hist, clobber=clobber)
        if diagfile:
            used, p_true = _diag_columns(pin, np.flatnonzero(mask), spec, mix)
            diag.write_diag(diagfile, pin, used, p_true, hist, clobber=clobber,
                            keywords=[k for k in keywords(False)
                                      if k[0] in ("SYSERR", "ERRSCALE")])

    with np.errstate(invalid="ignore"):
        errs = np.sqrt(np.diag(np.asarray(total.cov, dtype=float)))
    return FitResult(
        stackid=pin.stackid, instrument=pin.instrument, method=applied.method,
        estimator=applied.estimator, d_xi=float(total.d_xi), d_eta=float(total.d_eta),
        d_xi_err=float(errs[0]), d_eta_err=float(errs[1]),
        cov=np.array(total.cov, dtype=float), n_match=int(applied.n_match),
        n_used=int(total.n_used), group=int(total.group), resstd0=float(total.resstd0),
        resstd1=float(total.resstd1), qa_flags=int(qa.flags), qa_reason=qa.reason,
        alt_estimator=alternative.estimator if alt_ok else "",
        alt_d_xi=float(alternative.total.d_xi) if alt_ok else float("nan"),
        alt_d_eta=float(alternative.total.d_eta) if alt_ok else float("nan"),
        n_eff=float(mix.n_eff) if mix is not None and mix.n_eff is not None else float("nan"),
        xfm_id=wcsupdate.transform_id(total.d_xi, total.d_eta, pin.ra_stack, pin.dec_stack),
        components=tuple(applied.components), outfile=outfile, outdetfile=outdet,
        diagfile=diagfile)


def _diag_columns(pin, selected, spec, mix):
    """``used_spec`` and ``p_true`` per pair HDU for the diagnostics file."""
    import numpy as np

    from stk_astrometry.formats.diag import HDUS

    det_hdu = "GAIA_PAIRS" if pin.method == "direct" else "WISE_PAIRS"
    used, p_true = {}, {}
    for name in HDUS:
        n = pin.n_rows(name)
        u = np.zeros(n, dtype=bool)
        pt = np.full(n, np.nan)
        if pin.method != "none":
            if name == det_hdu:
                if spec is not None and spec.det_used is not None:
                    u[selected] = spec.det_used
                if mix is not None and mix.det_p is not None:
                    pt[selected] = mix.det_p
            elif name == "WISE_GAIA" and pin.method == "twostep":
                if spec is not None and spec.ref_used is not None:
                    u[:] = spec.ref_used
                if mix is not None and mix.ref_p is not None:
                    pt[:] = mix.ref_p
        used[name], p_true[name] = u, pt
    return used, p_true


# ---------------------------------------------------------------------------------------------
# update_products


def update_products(infile, transformfile, *, outdir=None, unknown="error", dryrun=False,
                    inverse=False, replace=False, force=False, scrub=False, qa_override=False,
                    clobber=False, product="", lock_timeout=60.0,
                    history=None) -> UpdateResult:
    """Rewrite the world coordinates of a stack's data products, as ``stk_update_wcs`` does.

    Every product of spec §5.6 found in ``infile`` gets its EQPOS/EQSRC WCS, RA/Dec keyword
    pairs and RA/Dec columns moved by the transform, atomically and reversibly; sky pixel
    positions are never touched.

    Parameters
    ----------
    infile : str or Path
        A file, a comma list, ``@list`` or a directory (searched recursively).
    transformfile : str or Path
        A transform file with an STKXFM HDU (``file`` or ``file[block]``).
    outdir : str or Path, optional
        Write updated copies there; None or '' updates in place.
    unknown : {'error', 'skip', 'generic'}
        What to do with a file of unknown product type.
    dryrun : bool
        Only report the planned changes.
    inverse : bool
        Undo the transform.
    replace : bool
        Undo a different, applied transform and apply this one instead (one step).
    force : bool
        Compose with a different, already applied transform (apply on top).
    scrub : bool
        Remove observation keywords from master products.
    qa_override : bool
        Apply a transform whose QA flags are set without a QA decision (or that was
        rejected); otherwise such a transform raises InputError (spec §5.7).
    clobber : bool
        Overwrite existing files in ``outdir``.
    product : str
        A §5.6 product type for every file given ('' recognises each file).
    lock_timeout : float
        Seconds to wait for a product another run has locked before that file fails.
    history : object, optional
        What the HISTORY records name (see :func:`match_stack`); default: this call's
        keywords under the name ``stk_update_wcs``.

    Returns
    -------
    UpdateResult
        A file that failed is counted in ``n_errors`` (the others are still processed);
        nothing is raised for it.

    Notes
    -----
    Every product written is durable when this returns, also inside a
    :func:`deferred_durability` block (which it suspends): products are the user's data, and
    the in-place editor's journal must be on disk before a header is patched.
    """
    given = dict(infile=str(infile), transformfile=str(transformfile),
                 outdir="" if outdir is None else str(outdir), unknown=unknown, dryrun=dryrun,
                 inverse=inverse, replace=replace, force=force, qa_override=qa_override,
                 scrub=scrub, clobber=clobber, product=product, lock_timeout=lock_timeout)
    from stk_astrometry.fitsutil import immediate_durability

    # products are the user's data: each write durable before the next step, block or not
    with _collect_warnings() as caught, immediate_durability():
        result = _update(given, _history("stk_update_wcs", UPDATE_DEFAULTS, given, history))
    return dataclasses.replace(result, warnings=tuple(caught))


#: stk_update_wcs's report categories -> FileOutcome.status.  A dry run changes nothing:
#: what it would update is 'unchanged' (its category says 'would update').
_STATUS = {"updated": "updated", "failed": "error", "skipped": "skipped",
           "journal pending": "skipped"}


def _update(p, hist):
    from stk_astrometry import update as upd

    p = {**UPDATE_DEFAULTS, **p}
    p["unknown"] = _choice("unknown", p["unknown"], _UNKNOWN)
    run = upd.update_files(p, hist.history_items())     # the tool's own run, locks and all
    outcomes = []
    for result in run.results:
        status = "error" if result.failed else _STATUS.get(result.category, "unchanged")
        outcomes.append(FileOutcome(str(result.path), result.ptype, status, result.action,
                                    result.category))
    logger.info("%s", run.summary)
    if run.n_failed:
        logger.error("%d of %d file(s) failed (the others were completed; see above)",
                     run.n_failed, len(run.results))
    xfm_id = run.xfm_id

    def n(status):
        return sum(1 for o in outcomes if o.status == status)

    return UpdateResult(tuple(outcomes), n("updated"), n("unchanged"), n("skipped"),
                        n("error"), xfm_id)


# ---------------------------------------------------------------------------------------------
# simulate_stack


def simulate_stack(outdir, *, seed=1, history=None, **simulate_params) -> SimulateResult:
    """Write a synthetic stack with a known true translation, as ``stk_simulate`` does.

    Parameters
    ----------
    outdir : str or Path
        The new directory (created atomically; an existing non-empty one needs
        ``clobber=True``).
    seed : int or None
        Random seed (None: drawn, and recorded in the truth file).
    history : object, optional
        What the HISTORY records name (see :func:`match_stack`).
    **simulate_params
        The other ``stk_simulate`` parameters (:data:`SIMULATE_DEFAULTS`): ``ndet``,
        ``shift_xi``, ``gaia_density``, ``products``, ``clobber`` ...

    Returns
    -------
    SimulateResult
    """
    unknown = sorted(set(simulate_params) - set(SIMULATE_DEFAULTS))
    if unknown:
        raise ParameterError(f"simulate_stack: unknown parameter(s) {', '.join(unknown)}")
    values = dict(SIMULATE_DEFAULTS)
    values.update(simulate_params)
    values["outdir"] = "" if outdir is None else str(outdir)
    values["seed"] = seed
    run = history if history is not None else _Run("stk_simulate", values)
    with _collect_warnings() as caught:
        result = _simulate(values, run)
    return dataclasses.replace(result, warnings=tuple(caught))


def _simulate(p, run):
    import contextlib as _contextlib
    import secrets
    import shutil
    import tempfile

    import numpy as np

    from stk_astrometry.errors import OutputError
    from stk_astrometry.simulate import simulate_stack as simulate_core
    from stk_astrometry import simfiles

    outdir = p["outdir"]
    clobber = bool(p["clobber"])
    simfiles.check_outdir(outdir, clobber)
    cfg = simfiles.config_from_params(p)
    seed = p["seed"]
    if seed is None:
        seed = secrets.randbits(31)
        logger.info("seed=INDEF: using seed %d (recorded in the truth file)", seed)
    # Independent streams for the catalogs and the products: adding a product never
    # changes the catalogs of a given seed.
    cat_seq, prod_seq = np.random.SeedSequence(seed).spawn(2)
    sim = simulate_core(cfg, rng=np.random.default_rng(cat_seq))
    sim = dataclasses.replace(sim, seed=seed)
    t = sim.truth
    logger.info("Stack %s: %d detections, %d Gaia, %d ALLWISE, %d best-neighbour rows",
                sim.stack_id, sim.detections.region_id.size, sim.gaia.source_id.size,
                sim.wise.allwise_oid.size, sim.best_neighbours.source_id.size)
    logger.info("True shift d_xi=%.4f d_eta=%.4f arcsec; CRB %.4f, %.4f arcsec from %d pairs",
                t.d_xi_arcsec, t.d_eta_arcsec, t.crb_xi_arcsec, t.crb_eta_arcsec, t.n_crb)

    from stk_astrometry.fitsutil import deferred_durability, make_durable

    out = Path(outdir)
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    products = []
    try:
        # group commit: the tree's files are written unsynced, then made durable together
        # (one syncfs) before the tree is renamed into place -- the products were not synced
        # at all before, the catalogs two commits each
        with deferred_durability(sync=False) as pending:
            paths = simfiles.write_stack(sim, tmp, run, shown_folder=out)
            if p["products"]:
                products = simfiles.write_products(sim, tmp / "products",
                                                   rng=np.random.default_rng(prod_seq))
                logger.info("Wrote %d data products under %s", len(products),
                            out / "products")
        written = [q for q in pending.paths if Path(q).is_relative_to(tmp)]
        make_durable([*written, *products],
                     folders=[tmp, *(Path(d) for d, _, _ in os.walk(tmp))])
        os.chmod(tmp, 0o777 & ~simfiles.umask())
        simfiles.install_tree(tmp, out)
    except OSError as exc:
        raise OutputError(f"cannot write outdir={outdir}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            with _contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    logger.info("Wrote %s", out)
    files = {key: str(out / Path(path).name) for key, path in paths.items()}
    prods = tuple(str(out / Path(q).relative_to(tmp)) for q in products)
    return SimulateResult(
        outdir=str(out), stackid=sim.stack_id, seed=int(seed), files=files, products=prods,
        d_xi=float(t.d_xi_arcsec), d_eta=float(t.d_eta_arcsec),
        crb_xi=float(t.crb_xi_arcsec), crb_eta=float(t.crb_eta_arcsec))
