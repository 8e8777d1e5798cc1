"""The campaign driver: plan, run every stack on Dask, record, and write the table and report.

Only this process writes the run database (in transactions, as results arrive), so a killed
driver loses at most the stacks in flight; :func:`run_campaign` then resumes: a stack whose
inputs (path, size, mtime of each catalog) and parameters (digest of every step's values) are
unchanged since it finished, and whose outputs still exist, is skipped; every other stack runs.

Execution: the default is a :class:`distributed.LocalCluster` of processes, one single-threaded
worker per core; ``scheduler=tcp://host:port`` or a scheduler file (``*.json``) connects to an
existing Dask cluster instead (its workers must see the same file paths).  Stacks are submitted
in a bounded window, each one's plan made only when it is submitted (:class:`PlanList`), so
that memory stays flat however many stacks there are, a few stacks per Dask task in a large
campaign (Dask's own bookkeeping costs a sixth of a stack's CPU per task).

Durability (group commit): a stack's files (pairs, transform, corrected detections) appear
atomically (temporary file + rename) whatever happens.  On a LocalCluster the workers do not
fsync them; before each database commit this process makes every file of the stacks it is about
to record durable at once (one ``syncfs`` per file system, one fsync per folder), so a stack is
never recorded done before its files are on disk, at one or two journal commits per database
commit instead of two per file.  The workers of a remote cluster make their own files durable.
Updated products are always durable before the update step returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fcntl
import logging
import operator
import os
import socket
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError, ParameterError
from .database import RunDatabase
from .localcluster import LocalClusterProcess, dask_logs_to, quiet_dask
from .progress import Progress
from .settings import StepSettings, params_digest
from .stacks import inputs_digest, safe_name
from .task import UPDATE_MODES, StackPlan, output_paths, run_chunk, run_stack

__all__ = ["CampaignSummary", "run_campaign", "write_outputs", "DB_NAME", "TABLE_NAME"]

logger = logging.getLogger(__name__)

DB_NAME = "campaign.sqlite"
TABLE_NAME = "campaign.fits"
CSV_NAME = "campaign.csv"
LOG_NAME = "stk_batch.log"
LOCK_NAME = ".stk_batch.lock"


@dataclass
class CampaignSummary:
    """What a run did and what the campaign holds afterwards.

    Attributes
    ----------
    n_stacks : int
        Stacks in the list.
    n_run, n_skipped : int
        Stacks run in this invocation / skipped as finished and unchanged.
    n_done, n_failed, n_qa, n_pending : int
        Over the whole campaign (this and earlier runs).
    qa_reasons, methods : Counter
        Done stacks per QA reason (blank: none needed) and per method.
    failures : list of (stackid, step, first error line)
    wall_s : float
        Wall time of this invocation.
    run_s : float
        Wall time of the Dask part (first submission to last result).
    table, csv, report : Path or None
    """

    n_stacks: int = 0
    n_run: int = 0
    n_skipped: int = 0
    n_done: int = 0
    n_failed: int = 0
    n_qa: int = 0
    n_pending: int = 0
    n_warnings: int = 0
    qa_reasons: Counter = field(default_factory=Counter)
    methods: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    wall_s: float = 0.0
    run_s: float = 0.0
    table: Path | None = None
    csv: Path | None = None
    report: Path | None = None


# ---------------------------------------------------------------------- folder lock

@contextlib.contextmanager
def campaign_lock(folder: Path):
    """Hold the campaign folder's lock: one driver per campaign at a time (released on exit or kill)."""
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise InputError(f"another stk_batch is running on the campaign folder {folder} "
                             f"(it holds {path})") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- planning

def _step_digests(settings: StepSettings, update_mode: str, detcorr: bool) -> dict:
    return {"match": params_digest(settings.match),
            "fit": params_digest({**settings.fit, "_detcorr": detcorr}),
            "update": params_digest({**settings.update, "_mode": update_mode})}


def _outputs_exist(stack, folder, detcorr, update_mode) -> bool:
    p = output_paths(folder, stack.stackid, detcorr=detcorr)
    need = [p["pairsfile"], p["xfmfile"]] + ([p["detcorrfile"]] if detcorr else [])
    if update_mode == "copy" and stack.products:
        need.append(p["products_out"])
    return all(os.path.exists(x) for x in need)


def _remove_dead_temps(folder: Path) -> None:
    """The temporary files a killed driver left in the campaign folder (of the table, CSV,
    page, plots, science report): called under the campaign's lock, so no other driver is
    writing them; a still-locked one is left all the same (:func:`remove_orphan_temps`)."""
    from ..fitsutil import remove_orphan_temps

    removed = remove_orphan_temps(folder)
    if removed:
        logger.info("removed %d temporary file(s) of a run that died in %s", len(removed), folder)


class PlanList(Sequence):
    """The stacks a run will run, each one's :class:`StackPlan` made when it is asked for.

    A campaign of N stacks keeps N indices into the stack list and two digests each here (~30
    bytes a stack), not N plans (~400 bytes each with their folder and digest strings): the
    driver's memory stays flat in the number of stacks (issue 12).  Indexing gives a plan, a
    slice a list of plans, in the stack list's order.
    """

    def __init__(self, stacks, template: StackPlan, stacks_dir: str):
        self._stacks = stacks
        self._template = template
        self._stacks_dir = stacks_dir
        self._index = array("q")
        self._inputs = bytearray()           # 16 bytes a stack: the inputs digest's hex
        self._params = array("H")            # into _param_digests (a few distinct values)
        self._param_digests: list[str] = []

    def add(self, i: int, inputs_digest_hex: str, params_digest_hex: str) -> None:
        """Plan stack ``i`` of the stack list with these digests."""
        self._index.append(i)
        self._inputs += bytes.fromhex(inputs_digest_hex)
        try:
            k = self._param_digests.index(params_digest_hex)
        except ValueError:
            k = len(self._param_digests)
            self._param_digests.append(params_digest_hex)
        self._params.append(k)

    def __len__(self) -> int:
        return len(self._index)

    def folder(self, stack) -> str:
        """The output folder of ``stack`` in the campaign (its plan's ``folder``)."""
        return os.path.join(self._stacks_dir, safe_name(stack.stackid))

    def _plan(self, j: int) -> StackPlan:
        s = self._stacks[self._index[j]]
        return dataclasses.replace(
            self._template, stack=s, folder=self.folder(s),
            inputs_digest=self._inputs[16 * j:16 * j + 16].hex(),
            params_digest=self._param_digests[self._params[j]])

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self._plan(j) for j in range(*key.indices(len(self)))]
        j = operator.index(key)
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError("plan index out of range")
        return self._plan(j)


#: stacks decided per block (one query of their states)
PLAN_BLOCK = 500


def plan_stacks(stacks, db, settings, *, campaign_dir, force, update_mode, detcorr):
    """(plans to run, number skipped) -- the resume decision for every stack.

    The plans are a :class:`PlanList`; the stacks are decided block by block, so that no
    mapping of every stack's digests or state is held at once.
    """
    step_digests = _step_digests(settings, update_mode, detcorr)
    template = StackPlan(stack=None, folder="", match=settings.match, fit=settings.fit,
                         update=settings.update, update_mode=update_mode, detcorr=detcorr,
                         step_digests=step_digests)
    params = {}
    for with_update in (False, True):
        steps = ["match", "fit"] + (["update"] if with_update else [])
        params[with_update] = params_digest({k: step_digests[k] for k in steps})
    db.sync_stacks(stacks)
    plans = PlanList(stacks, template, str(campaign_dir / "stacks"))
    skipped = 0
    for first in range(0, len(stacks), PLAN_BLOCK):
        block = stacks[first:first + PLAN_BLOCK]
        states = db.states([s.stackid for s in block])
        for i, s in enumerate(block, start=first):
            in_d = inputs_digest(s)
            par_d = params[update_mode != "none" and bool(s.products)]
            st = states.get(s.stackid)
            if (not force and st is not None and st.status == "done"
                    and st.inputs_digest == in_d and st.params_digest == par_d
                    and _outputs_exist(s, plans.folder(s), detcorr, update_mode)):
                skipped += 1
                continue
            plans.add(i, in_d, par_d)
    return plans, skipped


# ---------------------------------------------------------------------- Dask

#: Dask settings of the LocalCluster (an external cluster keeps its own; the help page gives
#: these as a Dask configuration file for one): no statistical profiler (it samples the task
#: thread's stack every 10 ms); glibc's own malloc trimming, not the nanny's
#: MALLOC_TRIM_THRESHOLD_=65536 -- a stack's many small numpy buffers went back to the system
#: and were faulted in again, 10 % more CPU per stack; and Dask's periodic housekeeping at a
#: slower pace: the event-loop tick every 20 ms, the system monitor every 0.5 s, the memory
#: monitor every 0.1 s and work stealing every 0.1 s cost an idle 2-worker LocalCluster
#: 84 ms of CPU per second (20 per worker, 44 in this process), ~1 ms per stack at the
#: target's 85 stacks/s; at these intervals 21 ms per second.  Nothing here reads them
#: faster: no dashboard, the 60 s tick limit; a worker is still stopped within a second of
#: passing its memory limit, and the scheduler keeps at most two tasks on a worker
#: (worker-saturation), so a late steal waits for little.  Dask's debugging logs (each
#: batched stream's recent messages, the transition and event logs) keep 10 entries, not
#: 1,000: every compute-task message the scheduler sends holds its task's stack plans
#: (~1 KB a stack), so with 1,000 the driver kept every task's plans up to ~16,000 stacks
#: per worker, +10 MB between 1,000 and 10,000 stacks (issue 12; tracemalloc); with 100
#: and 32 stacks a task, ~3,400 plans (gc), null-task driver 114 -> 128 MB from 1,000 to
#: 10,000 stacks; with 10, ~30 plans and 114 -> 118 MB.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False,
                 "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                 "distributed.admin.tick.interval": "1s",
                 "distributed.admin.system-monitor.interval": "5s",
                 "distributed.worker.memory.monitor-interval": "1s",
                 "distributed.scheduler.work-stealing-interval": "1s",
                 "distributed.admin.low-level-log-length": 10}


@contextlib.contextmanager
def dask_client(scheduler: str, nworkers: int, *, closing: list | None = None, log=None):
    """A connected ``distributed.Client``: a fresh LocalCluster, or the given scheduler.

    The LocalCluster runs in a process of its own (:class:`~.localcluster.LocalClusterProcess`:
    its scheduler off this process's GIL), which ends with it, or with this process however it
    ends.  With ``closing`` (a list) the LocalCluster is shut down in a thread appended to it,
    which the caller joins later: its workers' exit (~1 s) then overlaps the writing of the
    table.  ``log``: a file the LocalCluster's processes append their standard error to, and
    this process's own Dask and tornado log messages go to while the client lives.
    """
    import dask
    from distributed import Client

    quiet_dask()  # after the import: distributed sets its loggers' levels when imported

    with dask_logs_to(log):     # the driver's own Dask messages: the run's log
        scheduler = (scheduler or "").strip()
        config = {"distributed.worker.daemon": True, **WORKER_CONFIG,
                  "distributed.scheduler.work-stealing": True,
                  "distributed.admin.tick.limit": "60s"}
        with dask.config.set(config):    # the client's own comms keep short logs, too
            if not scheduler:
                n = nworkers if nworkers > 0 else (os.cpu_count() or 1)
                # no dashboard; the scheduler's HTTP server (health routes) on a free port, not
                # on 8787, which another cluster on the machine may hold
                host = LocalClusterProcess(n, config, {
                    "dashboard_address": None,
                    "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}}, log=log)
                try:
                    with Client(host.address, timeout="30s") as client:
                        yield client, f"LocalCluster ({n} worker processes)"
                finally:
                    if closing is None:
                        host.close()
                    else:
                        closing.append(threading.Thread(target=host.close,
                                                        name="stk_batch-close"))
                        closing[-1].start()
                return
            try:
                if scheduler.endswith(".json") or os.path.isfile(scheduler):
                    client = Client(scheduler_file=scheduler, timeout="30s")
                else:
                    client = Client(scheduler, timeout="30s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ParameterError(f"scheduler={scheduler}: cannot connect to the Dask "
                                     f"scheduler: {exc}") from exc
            try:
                try:
                    client.wait_for_workers(1, timeout=60)
                except TimeoutError as exc:
                    raise ParameterError(
                        f"scheduler={scheduler}: no worker joined within 60 s") from exc
                yield client, f"scheduler {client.scheduler.address}"
            finally:
                client.close()


class ClusterStart:
    """:func:`dask_client` entered in a thread, begun at once, used later as its context.

    Starting a LocalCluster takes ~1 s (its worker processes import Dask, then this package's
    steps: :func:`campaign.task.warm_worker` runs on every worker as soon as it is up); begun
    before the stacks are planned, that overlaps the planning instead of following it.
    ``with start as (client, where):`` waits for it and then behaves as ``with
    dask_client(...)``; :meth:`close` shuts down a cluster that is not needed (nothing to
    run, or an error before the run).  An error of the start itself (a scheduler that does
    not answer) is raised by ``with``, as :func:`dask_client` raises it.
    """

    def __init__(self, scheduler: str, nworkers: int, *, closing: list | None = None,
                 warm: bool = True, log=None):
        #: the LocalCluster's shutdown thread goes here (:func:`dask_client`); join them
        self.closing = [] if closing is None else closing
        self._cm = dask_client(scheduler, nworkers, closing=self.closing, log=log)
        self._value = self._error = None
        self._open = False
        self._warm = warm
        # entered and left in one context (the Client marks itself current in a context
        # variable, which only the context that set it may reset), from either thread
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._context.run, args=(self._start,),
                                        name="stk_batch-start", daemon=True)
        self._thread.start()

    def _start(self):
        # any error is raised again by __enter__, in the caller's thread
        try:
            self._value = self._cm.__enter__()
            self._open = True
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            return
        if not self._warm:
            return
        from .task import warm_worker

        # only a head start: a worker that cannot import fails its stacks, each recorded
        # with its error
        try:
            self._value[0].run(warm_worker)
        except Exception as exc:  # noqa: BLE001
            logger.debug("stk_batch: warming the workers failed: %s", exc)

    def __enter__(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def __exit__(self, *exc):
        self._open = False
        return self._context.run(self._cm.__exit__, *exc)

    def close(self) -> None:
        """Shut the cluster down (in the ``closing`` thread, as :func:`dask_client` does)."""
        self._thread.join()
        if self._open:
            self.__exit__(None, None, None)


def _likely_work(db: RunDatabase) -> bool:
    """Whether a run on ``db`` will run stacks, as far as the database alone says: a new
    campaign, or one with stacks not done (a list with new stacks or changed inputs is found
    only by planning)."""
    counts = db.counts()
    return not counts or any(status != "done" for status in counts)


def _failed_outcome(plan: StackPlan, exc) -> dict:
    """The outcome of a stack whose task itself failed (worker died, not picklable...)."""
    msg = f"the Dask task failed: {type(exc).__name__}: {exc}"
    return {"stackid": plan.stack.stackid, "inputs_digest": plan.inputs_digest,
            "params_digest": plan.params_digest, "elapsed_s": None, "worker": None,
            "steps": [{"step": "task", "status": "failed", "error": msg}], "warnings": [],
            "row": {"stackid": plan.stack.stackid, "status": "failed", "failed_step": "task",
                    "error": msg, "n_warnings": 0}}


def _not_durable(out: dict, exc: OSError) -> dict:
    """The outcome of a stack whose outputs could not be made durable: failed, rerun later."""
    msg = f"its outputs could not be made durable: {exc}"
    row = dict(out["row"], status="failed", failed_step="sync", error=msg)
    return dict(out, row=row, steps=[*out["steps"], {"step": "sync", "status": "failed",
                                                      "error": msg}])


def make_outcomes_durable(outcomes: list) -> None:
    """Group commit (issue 11): make every file the workers left unsynced durable, at once.

    Called before the outcomes are recorded -- a stack is never recorded done before its files
    are on disk.  One :func:`fitsutil.make_durable` for all of them (one syncfs per file
    system, one fsync per folder); if it fails, each stack with unsynced files is recorded
    failed instead (a resume reruns it).
    """
    from ..fitsutil import make_durable

    paths = [p for out in outcomes for p in out.get("unsynced") or ()]
    if not paths:
        return
    try:
        make_durable(paths)
    except OSError as exc:
        for i, out in enumerate(outcomes):
            if out.get("unsynced"):
                outcomes[i] = _not_durable(out, exc)


#: most stacks in one Dask task (:func:`campaign.task.run_chunk`).  Dask's bookkeeping costs
#: ~5-10 ms of CPU per task (scheduler, client and worker); 16 stacks per task instead of 8
#: took 0.9 ms per stack off the campaign's CPU beside the steps (1,000 stacks, alternating,
#: load 10: 4.8 -> 3.9 ms), and 32 instead of 16 another ~0.16 ms (10,000 null tasks, three
#: alternating pairs: driver 0.59 -> 0.48 ms, workers 0.33 -> 0.25 ms per stack).  A kill
#: loses the stacks finished inside a running task (up to 31 per worker, under a second of
#: work at the benchmark's mix), which a resume reruns.
MAX_CHUNK = 32


def chunk_size(n_plans: int, threads: int, max_chunk: int = MAX_CHUNK) -> int:
    """Stacks per Dask task: up to ``max_chunk``, while every worker thread still gets ~16
    tasks (a small campaign runs one stack per task)."""
    return max(1, min(max_chunk, n_plans // (16 * max(1, threads))))


def _execute(client, plans, db, run_id, progress, warn_log, *, window, task=run_stack,
             chunk=1, threads=1, flush_s=0.5, defer_sync=False):
    """Submit ``plans`` in a bounded window and record the outcomes as they arrive.

    ``window`` Dask tasks are in flight at a time, each running up to ``chunk`` stacks
    (:func:`campaign.task.run_chunk`; smaller near the end, so that the last tasks spread
    over the ``threads`` worker threads).  A task that fails as a whole (its worker died)
    is run again one stack per task, so only the stack that caused it is recorded failed.
    With ``defer_sync`` (workers on this machine) the workers leave their outputs' fsyncs to
    this process, which makes them durable once per database commit, before the commit.
    """
    from distributed import as_completed

    by_key = {}
    pending_records = []
    # stacks submitted since the last commit, marked running in the next one (with the
    # outcomes), not in a commit of their own per submission; a stack the database holds
    # done (force, changed inputs) is marked at once: were that mark lost in a kill, a resume
    # would take the stack for finished while its rerun may have replaced its files
    to_mark = []
    last_flush = time.perf_counter()
    pos = 0

    def submit(n, retry=()):
        nonlocal pos
        groups = [[plan] for plan in retry]
        while len(groups) < n and pos < len(plans):
            k = min(chunk, max(1, (len(plans) - pos) // (4 * max(1, threads))))
            groups.append(plans[pos:pos + k])
            pos += k
        if not groups:
            return []
        if not retry:
            now = time.time()
            ids = [p.stack.stackid for g in groups for p in g]
            done_before = db.with_status("done", ids)      # none of them is done in this run
            redo = [sid for sid in ids if sid in done_before]
            if redo:
                db.mark_submitted(redo, run_id)
            to_mark.extend((sid, now) for sid in ids if sid not in done_before)
        futs = []
        for group in groups:
            if defer_sync:
                group = [dataclasses.replace(p, defer_sync=True) for p in group]
            key = (f"stk_batch-{safe_name(group[0].stack.stackid)}-{len(group)}-"
                   f"{os.urandom(4).hex()}")
            fut = client.submit(run_chunk, task, group, pure=False, key=key)
            by_key[fut.key] = group
            futs.append(fut)
        return futs

    def flush():
        nonlocal last_flush
        if pending_records or to_mark:
            make_outcomes_durable(pending_records)     # files on disk before "done" is
            db.record(pending_records, submitted=to_mark, run_id=run_id)
            for out in pending_records:
                for step, msg in out["warnings"]:
                    warn_log.write(f"{out['stackid']} {step}: WARNING {msg}\n")
            warn_log.flush()
            pending_records.clear()
            to_mark.clear()
        last_flush = time.perf_counter()

    ac = as_completed(submit(window), with_results=True, raise_errors=False)
    try:
        for fut, result in ac:
            group = by_key.pop(fut.key)
            ok = (fut.status == "finished" and isinstance(result, list)
                  and len(result) == len(group) and all(isinstance(r, dict) for r in result))
            if not ok:
                exc = result if isinstance(result, BaseException) else fut.exception()
            fut.release()
            if not ok and len(group) > 1:
                for f in submit(0, retry=group):       # find the stack that broke the task
                    ac.add(f)
                continue
            if not ok:
                result = [_failed_outcome(group[0], exc)]
            for out in result:
                pending_records.append(out)
                row = out["row"]
                failed = row["status"] == "failed"
                progress.update(done=0 if failed else 1, failed=1 if failed else 0,
                                qa=1 if row.get("needs_qa") and not failed else 0)
            for f in submit(max(0, window - len(by_key))):
                ac.add(f)
            if time.perf_counter() - last_flush >= flush_s or len(pending_records) >= 1000:
                flush()
    finally:
        flush()


# ---------------------------------------------------------------------- outputs

def write_outputs(folder: Path, db: RunDatabase, *, plots=True, chunk=1000):
    """Write ``campaign.fits``, ``campaign.csv`` and the report from the run database.

    The rows are read, converted and written ``chunk`` at a time, so the driver's memory does
    not grow with the campaign: only the few columns the report and the summary need
    (:func:`report.compact`, ~100 bytes per stack) are kept for every stack.

    Returns
    -------
    (compact records, table path, csv path, report path or None)
    """
    from ..fitsutil import utc_now
    from ..formats.campaign import CampaignWriter, to_records
    from .report import compact

    n_groups = db.max_groups()
    parts, interned = [], {}
    with CampaignWriter(folder / TABLE_NAME, folder / CSV_NAME, n_groups) as writer:
        for rows in db.iter_result_rows(chunk):
            for r in rows:
                for ref in ("gaia", "wise"):
                    vals = tuple(r.pop(f"n_match_{ref}_group", ()) or ())
                    for k in range(n_groups):
                        r[f"n_match_{ref}_g{k + 1}"] = vals[k] if k < len(vals) else None
            records = to_records(rows, n_groups)
            writer.append(records)
            parts.append(compact(records, interned))
        records = compact(to_records([], n_groups)) if not parts else np.concatenate(parts)
        status = Counter(records["status"].tolist())
        table, csv = writer.close(header={
            "CREATOR": (f"stk_batch - stk_astrometry {__version__}", "tool that created this output"),
            "DATE": (utc_now(), "file creation date (UTC)"),
            "NSTACKS": (len(records), "stacks in the campaign"),
            "NDONE": (status.get("done", 0), "stacks done"),
            "NFAILED": (status.get("failed", 0), "stacks failed"),
            "NPENDING": (status.get("pending", 0), "stacks not run yet"),
            "NQA": (int(records["needs_qa"].sum()), "done stacks with a QA flag"),
            "NGROUPS": (n_groups, "separation groups"),
        })
    report = None
    if plots:
        from .report import write_report

        report = write_report(folder, records, db=db)
    return records, table, csv, report


def summarize(records, summary: CampaignSummary, db: RunDatabase) -> CampaignSummary:
    status = records["status"]
    done = status == "done"
    summary.n_stacks = len(records)
    summary.n_done = int(done.sum())
    summary.n_failed = int((status == "failed").sum())
    summary.n_pending = int((status == "pending").sum())
    summary.n_qa = int((records["needs_qa"] & done).sum())
    summary.qa_reasons = Counter(r for r, d in zip(records["qa_reason"].tolist(), done, strict=True)
                                 if d)
    summary.methods = Counter(m for m, d in zip(records["method"].tolist(), done, strict=True) if d)
    summary.failures = [(s, st, e) for s, st, e, x in
                        zip(records["stackid"].tolist(), records["failed_step"].tolist(),
                            records["error"].tolist(), status == "failed", strict=True) if x]
    summary.n_warnings = db.n_warnings()
    return summary


def summary_lines(summary: CampaignSummary, *, max_failures=20) -> list[str]:
    """The closing summary, as lines."""
    s = summary
    rate = f", {s.n_run / s.run_s:.1f} stacks/s" if s.run_s > 0 and s.n_run else ""
    lines = [f"stk_batch: {s.n_stacks} stacks: {s.n_done} done ({s.n_qa} need QA), "
             f"{s.n_failed} failed, {s.n_pending} not run",
             f"  this run: {s.n_run} run, {s.n_skipped} skipped as finished and unchanged, "
             f"{s.wall_s:.1f} s{rate}"]
    if s.methods:
        lines.append("  method: " + ", ".join(f"{k or '-'} {v}" for k, v in s.methods.most_common()))
    if s.n_done:
        lines.append("  QA reasons:")
        for reason, n in s.qa_reasons.most_common():
            lines.append(f"    {n:7d}  {reason or '(none: accepted)'}")
    if s.failures:
        lines.append(f"  failed stacks ({len(s.failures)}):")
        for sid, step, err in s.failures[:max_failures]:
            lines.append(f"    {sid} [{step}] {err}")
        if len(s.failures) > max_failures:
            lines.append(f"    ... {len(s.failures) - max_failures} more in {TABLE_NAME}")
    if s.n_warnings:
        lines.append(f"  {s.n_warnings} warnings, each naming its stack: {LOG_NAME} and the "
                     f"warnings table of {DB_NAME}")
    if s.table is not None:
        lines.append(f"  results: {s.table} (+ {CSV_NAME})"
                     + (f"; report: {s.report}" if s.report else ""))
    return lines


# ---------------------------------------------------------------------- the campaign

def run_campaign(stacks, settings: StepSettings, *, folder, scheduler="", nworkers=0,
                 force=False, update_mode="none", detcorr=True, plots=True, verbose=1,
                 live=None, progress_interval=10.0, window=None, chunk=None, command="",
                 task=run_stack) -> CampaignSummary:
    """Run (or resume) a campaign and write its table and report.

    Parameters
    ----------
    stacks : list of StackInput
    settings : StepSettings
    folder : path-like
        The campaign folder (created): run database, table, report, per-stack outputs.
    scheduler : str
        Blank: a LocalCluster; else ``tcp://host:port`` or a scheduler file.
    nworkers : int
        Workers of the LocalCluster (0: one per core).
    force : bool
        Rerun finished, unchanged stacks too.
    update_mode : {'none', 'copy', 'inplace'}
    detcorr : bool
        Write each stack's corrected detections.
    plots : bool
        Write the plots and ``index.html``.
    verbose : int
        0: silent; 1: progress and summary.
    live : bool or None
        Live progress bar (default: when standard error is a terminal).
    window : int or None
        Dask tasks in flight at once (default 4 per worker thread, at least 8).
    chunk : int or None
        Stacks per Dask task (default :func:`chunk_size`: up to 32, fewer in a small
        campaign).
    task : callable
        The per-stack task (default :func:`campaign.task.run_stack`); the benchmarks give a
        trivial one to measure the machinery alone.

    Returns
    -------
    CampaignSummary
    """
    if update_mode not in UPDATE_MODES:
        raise ParameterError(f"update={update_mode}: expected one of {', '.join(UPDATE_MODES)}")
    t0 = time.perf_counter()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the campaign folder {folder}: {exc}") from exc
    folder = folder.resolve()
    log = logging.getLogger("stk_astrometry.stk_batch")
    summary = CampaignSummary(n_stacks=len(stacks))
    closing = []
    try:
        _run_and_write(stacks, settings, summary, folder=folder, scheduler=scheduler,
                       nworkers=nworkers, force=force, update_mode=update_mode, detcorr=detcorr,
                       plots=plots, verbose=verbose, live=live,
                       progress_interval=progress_interval, window=window, chunk=chunk,
                       command=command, task=task, closing=closing, log=log)
    finally:
        for thread in closing:           # the LocalCluster's shutdown, begun after the run
            thread.join()
    summary.wall_s = time.perf_counter() - t0
    if verbose >= 1:
        for line in summary_lines(summary):
            log.info("%s", line)
    if summary.n_failed:
        log.warning("%d of %d stacks failed (listed in %s)", summary.n_failed, summary.n_stacks,
                    summary.table)
    return summary


def _run_and_write(stacks, settings, summary, *, folder, scheduler, nworkers, force,
                   update_mode, detcorr, plots, verbose, live, progress_interval, window, chunk,
                   command, task, closing, log):
    """:func:`run_campaign`'s work under the campaign's lock (see there)."""
    with campaign_lock(folder), RunDatabase(folder / DB_NAME) as db:
        _remove_dead_temps(folder)
        # a new or unfinished campaign: start the cluster now, while the stacks are planned
        # (ClusterStart); else only once planning has found stacks to run
        start = (ClusterStart(scheduler, nworkers, closing=closing, warm=task is run_stack,
                              log=folder / LOG_NAME)
                 if _likely_work(db) else None)
        try:
            _plan_and_run(stacks, settings, summary, db, start, folder=folder,
                          scheduler=scheduler, nworkers=nworkers, force=force,
                          update_mode=update_mode, detcorr=detcorr, verbose=verbose, live=live,
                          progress_interval=progress_interval, window=window, chunk=chunk,
                          command=command, task=task, closing=closing, log=log)
        finally:
            if start is not None:
                start.close()     # not used: nothing to run, or an error before the run
        records, summary.table, summary.csv, summary.report = write_outputs(folder, db, plots=plots)
        summarize(records, summary, db)


def _plan_and_run(stacks, settings, summary, db, start, *, folder, scheduler, nworkers, force,
                  update_mode, detcorr, verbose, live, progress_interval, window, chunk, command,
                  task, closing, log):
    """Plan the stacks and run those to run on ``start`` (a :class:`ClusterStart`, or None:
    started here when there is something to run)."""
    db.set_meta("parameters", {"match": settings.match, "fit": settings.fit,
                               "update": settings.update, "update_mode": update_mode,
                               "detcorr": detcorr})
    plans, skipped = plan_stacks(stacks, db, settings, campaign_dir=folder, force=force,
                                 update_mode=update_mode, detcorr=detcorr)
    summary.n_run, summary.n_skipped = len(plans), skipped
    if verbose >= 1:
        log.info("stk_batch: %d stacks in %s: %d to run, %d finished and unchanged",
                 len(stacks), folder, len(plans), skipped)
    if not plans:
        return
    run_id = db.start_run(host=socket.gethostname(), version=__version__,
                          command=command, scheduler=scheduler or "LocalCluster")
    status = "interrupted"
    progress = Progress(len(plans), log=log, live=live, interval=progress_interval,
                        enabled=verbose >= 1)
    try:
        # (a cluster begun here only once the log is open: nothing then to shut down)
        with (open(folder / LOG_NAME, "a", encoding="utf-8") as warn_log,
              (start or ClusterStart(scheduler, nworkers, closing=closing,
                                     warm=task is run_stack, log=folder / LOG_NAME))
              as (client, where)):
            warn_log.write(f"# stk_batch run {run_id} started "
                           f"{time.strftime('%Y-%m-%dT%H:%M:%S')} on {where}\n")
            if verbose >= 1:
                log.info("stk_batch: running on %s", where)
            threads = sum(client.nthreads().values()) or 1
            t_run = time.perf_counter()
            # a LocalCluster's workers share this machine's page cache: one syncfs
            # here per database commit makes their files durable (group commit); a
            # remote cluster's workers sync their own
            _execute(client, plans, db, run_id, progress, warn_log,
                     window=window or max(8, 4 * threads), task=task, threads=threads,
                     chunk=chunk or chunk_size(len(plans), threads),
                     defer_sync=not (scheduler or "").strip())
            summary.run_s = time.perf_counter() - t_run
        status = "finished"
    finally:
        progress.close()
        c = db.counts()
        db.finish_run(run_id, n_planned=len(plans), n_done=progress.done,
                      n_failed=progress.failed, n_skipped=skipped, status=status)
        if status != "finished":
            log.warning("stk_batch: interrupted; %d stacks recorded, %d done in all; "
                        "run again to resume", progress.finished, c.get("done", 0))


def report_only(folder, *, plots=True, verbose=1) -> CampaignSummary:
    """``action=report``: rewrite the table and report of a campaign folder, run nothing."""
    folder = Path(folder)
    if not (folder / DB_NAME).is_file():
        raise InputError(f"{folder} holds no {DB_NAME}: not a stk_batch campaign folder")
    log = logging.getLogger("stk_astrometry.stk_batch")
    t0 = time.perf_counter()
    summary = CampaignSummary()
    with campaign_lock(folder), RunDatabase(folder / DB_NAME) as db:
        _remove_dead_temps(folder)
        records, summary.table, summary.csv, summary.report = write_outputs(folder, db, plots=plots)
        summarize(records, summary, db)
    summary.wall_s = time.perf_counter() - t0
    if verbose >= 1:
        for line in summary_lines(summary):
            log.info("%s", line)
    return summary
