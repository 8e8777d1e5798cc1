"""One stack of a campaign: match -> fit -> (update), run on a Dask worker.

:func:`run_stack` is the Dask task.  It calls the in-process API (``stk_astrometry.api``),
never a tool's ``main``; it catches every failure of a step so that one bad stack never stops
the others; it captures the warnings the steps log (and raw Python warnings) so that they go to
the run database with the stack's name instead of to a terminal; and it returns a small plain
dictionary (no arrays, no pairs) for the driver to record.

No database, no Dask import, no printing here: the function can be called in-process too.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StkError

__all__ = ["StackPlan", "run_stack", "run_chunk", "null_stack", "output_paths", "UPDATE_MODES"]

#: stk_batch update= values: no update, copies in the campaign folder, or the products in place.
UPDATE_MODES = ("none", "copy", "inplace")

_PKG_LOGGER = "stk_astrometry"


@dataclass(frozen=True, slots=True)
class StackPlan:
    """Everything a worker needs to run one stack (picklable, small).

    Attributes
    ----------
    stack : StackInput
    folder : str
        The stack's output folder in the campaign.
    match, fit, update : dict
        Keyword arguments of the API calls (from :mod:`campaign.settings`).
    update_mode : str
        One of :data:`UPDATE_MODES`.
    detcorr : bool
        Write the corrected detections.
    inputs_digest, params_digest : str
        Handed back with the outcome for the resume bookkeeping.
    step_digests : dict
        step -> digest of its parameters.
    defer_sync : bool
        Leave the durability of the match and fit outputs to the driver (group commit): they
        are renamed into place atomically but not fsynced, and listed in the outcome's
        ``unsynced``; the driver makes them durable (:func:`fitsutil.make_durable`) before it
        records the stack.  Only for workers that share the driver's machine (a LocalCluster).
    """

    stack: object
    folder: str
    match: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    update: dict = field(default_factory=dict)
    update_mode: str = "none"
    detcorr: bool = True
    inputs_digest: str = ""
    params_digest: str = ""
    step_digests: dict = field(default_factory=dict)
    defer_sync: bool = False


def output_paths(folder, stackid, *, detcorr=True) -> dict:
    """The files a stack's steps write in its campaign folder."""
    from .stacks import safe_name

    base = Path(folder)
    name = safe_name(stackid)
    return {"pairsfile": str(base / f"{name}_pairs.fits"),
            "xfmfile": str(base / f"{name}_xfm.fits"),
            "detcorrfile": str(base / f"{name}_detcorr.fits") if detcorr else None,
            "products_out": str(base / "products")}


# ---------------------------------------------------------------------- capturing warnings

class _Collector(logging.Handler):
    """Routes warnings logged by stk_astrometry into the list of the task running in the thread."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.local = threading.local()

    def emit(self, record):
        sink = getattr(self.local, "sink", None)
        if sink is not None:
            sink.append(record.getMessage())


_collector = None
_collector_lock = threading.Lock()


def _install_collector():
    global _collector
    with _collector_lock:
        if _collector is None:
            _collector = _Collector()
            logger = logging.getLogger(_PKG_LOGGER)
            logger.addHandler(_collector)
            logging.getLogger("astropy").addHandler(_collector)
            # a worker is not a terminal: the run database is where warnings go
            logger.propagate = False
            if logger.level == logging.NOTSET or logger.level > logging.WARNING:
                logger.setLevel(logging.WARNING)
    return _collector


class _Capture:
    """Collect one step's warnings (logged and raw Python warnings) into ``sink``."""

    def __init__(self, sink):
        self.sink = sink

    def __enter__(self):
        # astropy hooks warnings.showwarning when first imported: import it before our hook
        import astropy  # noqa: F401

        self.collector = _install_collector()
        self.collector.local.sink = self.sink
        self._cw = warnings.catch_warnings()
        self._cw.__enter__()
        warnings.simplefilter("always")

        def show(message, category, filename, lineno, file=None, line=None):
            self.sink.append(f"{category.__name__}: {message}")

        warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        self._cw.__exit__(*exc)
        self.collector.local.sink = None
        return False


# ---------------------------------------------------------------------- results to plain data

def _plain(value):
    """JSON-friendly copy of a result field (numpy scalars and arrays to Python)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    return str(value)


def _result_dict(result, *, skip=()):
    if result is None:
        return None
    fields = getattr(result, "__dataclass_fields__", None) or {}
    return {k: _plain(getattr(result, k)) for k in fields if k not in skip}


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _first_line(text):
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else "unknown error"


def _row(stack, m, f, u, paths, failed_step, error, timings):
    """The campaign-table row of a stack (see formats/campaign.py)."""
    g = lambda obj, name, default=None: getattr(obj, name, default) if obj is not None else default  # noqa: E731
    d_xi, d_eta = _num(g(f, "d_xi")), _num(g(f, "d_eta"))
    cov = g(f, "cov")
    try:
        cov_xe = _num(cov[0][1]) if cov is not None else None
    except (TypeError, IndexError):
        cov_xe = None
    flags = g(f, "qa_flags")
    flags = int(flags) if flags is not None else None
    n_wise = g(m, "n_wise")
    row = {
        "stackid": stack.stackid,
        "status": "failed" if failed_step else "done",
        "failed_step": failed_step or "",
        "error": _first_line(error) if error else "",
        "instrument": g(f, "instrument") or g(m, "instrument"),
        "method": g(f, "method") or g(m, "method"),
        "ra_stack": _num(g(m, "ra_stack")), "dec_stack": _num(g(m, "dec_stack")),
        "n_det": g(m, "n_det"), "n_gaia": g(m, "n_gaia"),
        "n_wise": n_wise if g(m, "density_wise") is not None else -1,
        "density_gaia": _num(g(m, "density_gaia")), "density_wise": _num(g(m, "density_wise")),
        "n_match_gaia": g(m, "n_match_gaia"), "n_match_wise": g(m, "n_match_wise"),
        "n_match_gaia_group": tuple(int(v) for v in (g(m, "n_match_gaia_group") or ())),
        "n_match_wise_group": tuple(int(v) for v in (g(m, "n_match_wise_group") or ())),
        "estimator": g(f, "estimator"),
        "d_xi": d_xi, "d_eta": d_eta,
        "d_xi_err": _num(g(f, "d_xi_err")), "d_eta_err": _num(g(f, "d_eta_err")),
        "cov_xi_eta": cov_xe,
        "shift": math.hypot(d_xi, d_eta) if d_xi is not None and d_eta is not None else None,
        "n_match": g(f, "n_match"), "n_used": g(f, "n_used"), "group": g(f, "group"),
        "resstd0": _num(g(f, "resstd0")), "resstd1": _num(g(f, "resstd1")),
        "qa_flags": flags, "qa_reason": g(f, "qa_reason") or "",
        "needs_qa": bool(flags), "disagree": bool(flags and flags & 16),
        "alt_estimator": g(f, "alt_estimator") or "",
        "alt_d_xi": _num(g(f, "alt_d_xi")), "alt_d_eta": _num(g(f, "alt_d_eta")),
        "n_eff": _num(g(f, "n_eff")), "xfm_id": g(f, "xfm_id") or "",
        "n_updated": g(u, "n_updated", -1) if u is not None else -1,
        "n_update_errors": g(u, "n_errors", -1) if u is not None else -1,
        "t_match": timings.get("match"), "t_fit": timings.get("fit"),
        "t_update": timings.get("update"),
        "pairsfile": paths["pairsfile"] if m is not None else "",
        "xfmfile": paths["xfmfile"] if f is not None else "",
        "detcorrfile": (paths["detcorrfile"] or "") if f is not None else "",
    }
    return row


# ---------------------------------------------------------------------- the task

#: Modules the steps import only on a rare stack's path, imported before a process's first
#: stack: xfmfit's ``least_squares`` fallback (scipy.optimize, ~35 MB of a worker's RSS; 1
#: stack in 3,000-8,000 of the benchmark mix takes it).  Imported there, it stepped a
#: worker's memory up at a random moment of a long campaign -- what made a worker's peak RSS
#: grow with the number of stacks (issue 12: 109 MB at 1,000, 166 at 10,000) -- and cost that
#: stack ~0.3 s.  A worker's memory is now the same whatever the campaign's length.
WARM_MODULES = ("scipy.optimize",)


def _warm_up() -> None:
    """Import :data:`WARM_MODULES` (after a process's first stack, a look-up in
    ``sys.modules``)."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)


#: What a stack's steps import on a process's first stack besides :data:`WARM_MODULES`: the
#: API's step modules and the modules they import inside functions (the table reader, the
#: card maker, erfa for the epoch propagation, gzip), astropy, which :class:`_Capture`
#: imports before it hooks the warnings, and astropy.io.fits, whose Card makes a string card
#: longer than one card (a QA reason over 68 characters: a few stacks in a hundred; ~8 MB
#: and ~114 modules that a worker otherwise imports in the middle of a run).
STEP_MODULES = ("astropy", "astropy.io.fits", "erfa", "gzip", "stk_astrometry.api",
                "stk_astrometry.stackfit", "stk_astrometry.matching", "stk_astrometry.mixture",
                "stk_astrometry.xfmfit", "stk_astrometry.wcsupdate", "stk_astrometry.tableio",
                "stk_astrometry.fitscards", "stk_astrometry.formats.catalogs",
                "stk_astrometry.formats.pairs", "stk_astrometry.formats.transform",
                "stk_astrometry.formats.detcorr", "stk_astrometry.formats.diag",
                "stk_astrometry.formats.idlist", "stk_astrometry.core.epoch")


def warm_worker() -> None:
    """Import everything a stack's steps import (:data:`STEP_MODULES`, :data:`WARM_MODULES`):
    run on every worker as soon as the cluster is up (``driver.ClusterStart``), so that a new
    worker's ~0.6 s of imports overlap the driver's planning instead of delaying its first
    task.  Imports only: no state, no output."""
    import importlib

    for name in STEP_MODULES:
        importlib.import_module(name)
    _warm_up()


def run_stack(plan: StackPlan) -> dict:
    """Run one stack's steps; never raises for a failure of the stack itself.

    Returns
    -------
    dict
        ``stackid``, ``inputs_digest``, ``params_digest``, ``elapsed_s``, ``worker``,
        ``steps`` (list of per-step dicts: step, status, params_digest, started, elapsed_s,
        error, result), ``warnings`` (list of (step, message)), ``row`` (the campaign-table
        row), ``unsynced`` (with ``plan.defer_sync``: the files written but not yet durable;
        the caller must :func:`fitsutil.make_durable` them before recording the stack).
    """
    from .. import api
    from ..fitsutil import deferred_durability, remove_orphan_temps

    _warm_up()
    t_start = time.perf_counter()
    stack = plan.stack
    paths = output_paths(plan.folder, stack.stackid, detcorr=plan.detcorr)
    steps, warns, timings = [], [], {}
    m = f = u = None
    failed_step = error = None

    def step(name, call):
        nonlocal failed_step, error
        sink = []
        started = time.time()
        t0 = time.perf_counter()
        result, err, status = None, None, "done"
        try:
            with _Capture(sink):
                result = call()
        except StkError as exc:
            err, status = str(exc), "failed"
        except MemoryError:
            err, status = "out of memory", "failed"
        except Exception as exc:  # noqa: BLE001 - one stack's bug must not stop the campaign
            err = (f"internal error - this is a bug in stk_astrometry: {type(exc).__name__}: "
                   f"{exc}\n{traceback.format_exc()}")
            status = "failed"
        elapsed = time.perf_counter() - t0
        timings[name] = elapsed
        api_warnings = list(getattr(result, "warnings", ()) or ())
        # the API returns what it logged; keep each message once
        for msg in api_warnings + [w for w in sink if w not in api_warnings]:
            warns.append((name, str(msg)))
        steps.append({"step": name, "status": status,
                      "params_digest": plan.step_digests.get(name), "started": started,
                      "elapsed_s": elapsed, "error": err,
                      "result": _result_dict(result, skip=("pairs", "warnings"))})
        if status == "failed":
            failed_step, error = name, err
        return result

    try:
        Path(plan.folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        failed_step, error = "match", f"cannot create the stack folder {plan.folder}: {exc}"
    else:
        # the temporary files of a worker killed while it wrote this stack's files (a driver
        # killed with its LocalCluster): nobody holds them now, and no rerun would replace them
        remove_orphan_temps(plan.folder)

    # group commit: without defer_sync the block's end syncs the stack's outputs once (one
    # syncfs, not two fsyncs per file); with it the driver does, for many stacks at once
    with deferred_durability(sync=not plan.defer_sync) as pending:
        if failed_step is None:
            m = step("match", lambda: api.match_stack(
                stack.detfile, stack.gaiafile, paths["pairsfile"], wisefile=stack.wisefile,
                bestnbfile=stack.bestnbfile, stackid=stack.stackid if stack.select else None,
                clobber=True, **plan.match))
        if failed_step is None:
            f = step("fit", lambda: api.fit_stack(
                m, paths["xfmfile"], outdetfile=paths["detcorrfile"], clobber=True,
                **plan.fit))
    flagged = f is not None and int(getattr(f, "qa_flags", 0) or 0) != 0
    if (failed_step is None and plan.update_mode != "none" and stack.products and flagged
            and not plan.update.get("qa_override")):
        # spec 5.7: a flagged transform is applied only after review (stk_update_wcs refuses it)
        steps.append({"step": "update", "status": "skipped",
                      "params_digest": plan.step_digests.get("update"), "started": time.time(),
                      "elapsed_s": 0.0, "error": None,
                      "result": {"reason": "QA flags set: review the stack, then update"}})
    elif failed_step is None and plan.update_mode != "none" and stack.products:
        if pending.paths:
            # the products are changed durably: the transform they name must be on disk first
            pending.sync()
        outdir = paths["products_out"] if plan.update_mode == "copy" else None
        u = step("update", lambda: api.update_products(
            stack.products, paths["xfmfile"], outdir=outdir, clobber=True, **plan.update))
        if u is not None and getattr(u, "n_errors", 0):
            failed_step = "update"
            bad = [x for x in getattr(u, "files", ()) if getattr(x, "status", "") == "error"]
            error = (f"{u.n_errors} product(s) not updated" +
                     (f"; first: {bad[0].path}: {bad[0].message}" if bad else ""))
            steps[-1]["status"], steps[-1]["error"] = "failed", error

    row = _row(stack, m, f, u, paths, failed_step, error, timings)
    row["n_warnings"] = len(warns)
    return {"stackid": stack.stackid, "inputs_digest": plan.inputs_digest,
            "params_digest": plan.params_digest, "elapsed_s": time.perf_counter() - t_start,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "steps": steps,
            "warnings": warns, "row": row, "unsynced": list(pending.paths)}


def run_chunk(task, plans) -> list:
    """Run ``task`` on each of ``plans`` in turn: one Dask task for a few stacks.

    Dask's own cost per task (the scheduler's and the worker's bookkeeping, two messages) is
    ~5 ms of CPU on this machine, a sixth of a stack's; the driver submits stacks in chunks
    so that it is paid once per chunk.  ``task`` never raises for a failure of a stack, so
    one bad stack does not touch the others of its chunk; if the whole chunk fails (its
    worker died), the driver runs its stacks again one per task.

    Plans that leave their syncs to the driver (``defer_sync``) run as they are.  Otherwise
    (a remote cluster's worker) the chunk is one group commit: its stacks' files are made
    durable together at the chunk's end, before any outcome goes back -- one ``syncfs`` per
    chunk instead of one per stack.  If that sync fails the task fails, and the driver runs
    the stacks again one per task, each syncing its own files.

    Returns
    -------
    list
        The outcomes of ``task``, in the order of ``plans``.
    """
    from ..fitsutil import deferred_durability

    if len(plans) < 2 or any(plan.defer_sync for plan in plans):
        return [task(plan) for plan in plans]
    with deferred_durability(sync=True):     # each stack's own block joins this one
        outcomes = [task(plan) for plan in plans]
    for out in outcomes:
        out["unsynced"] = []                 # durable now: synced at the block's end
    return outcomes


def null_stack(plan: StackPlan) -> dict:
    """A task that runs no step and reports the stack done with an empty result.

    For the benchmarks: a campaign of null tasks measures what the machinery itself costs
    (Dask scheduling, the run database, the table and report) per stack.
    """
    row = {"stackid": plan.stack.stackid, "status": "done", "n_warnings": 0,
           "n_match_gaia_group": (0, 0, 0), "n_match_wise_group": (0, 0, 0)}
    return {"stackid": plan.stack.stackid, "inputs_digest": plan.inputs_digest,
            "params_digest": plan.params_digest, "elapsed_s": 0.0,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "steps": [{"step": "null", "status": "done", "params_digest": None,
                       "started": time.time(), "elapsed_s": 0.0, "error": None, "result": None}],
            "warnings": [], "row": row}
