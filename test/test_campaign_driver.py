"""The campaign's group commit (issue 11): a LocalCluster's workers leave their outputs' fsyncs
to the driver, which makes them durable before -- never after -- it records the stacks done.

The task is run in-process and the driver's loop on an in-process Dask client (threads, no
processes), so the order of the sync and the database commit can be watched directly.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
from campaign_sim import make_campaign
from proc_testlib import live_children

from stk_astrometry import fitsutil
from stk_astrometry.campaign import database, driver, progress, settings
from stk_astrometry.campaign.stacks import StackInput, read_stack_list
from stk_astrometry.campaign.task import StackPlan, null_stack, run_stack, output_paths


@pytest.fixture
def synclog(monkeypatch):
    """Every fsync (by path) and every make_durable call (with its paths), in order."""
    calls = []
    real_fsync, real_make = os.fsync, fitsutil.make_durable

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def make_durable(paths):
        paths = [str(p) for p in paths]
        calls.append(("make_durable", paths))
        return real_make(paths)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(fitsutil, "make_durable", make_durable)
    return calls


def _one_stack(root):
    listfile, _ = make_campaign(root, 1, specials=False)
    (stack,) = read_stack_list(f"@{listfile}")
    return stack


def test_task_leaves_the_sync_to_the_driver_only_when_told(tmp_path, synclog):
    stack = _one_stack(tmp_path / "in")
    folder = tmp_path / "camp" / "s"
    paths = output_paths(folder, stack.stackid)
    files = [paths["pairsfile"], paths["xfmfile"], paths["detcorrfile"]]

    out = run_stack(StackPlan(stack=stack, folder=str(folder), defer_sync=True))
    assert out["row"]["status"] == "done", out["row"]["error"]
    assert sorted(out["unsynced"]) == sorted(files)
    assert all(Path(f).exists() for f in files)            # renamed into place, complete
    assert [c for c in synclog if c[0] == "fsync" or c[0] == "make_durable"] == []
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    # without defer_sync the task makes its own files durable: one group commit at the end
    # of match + fit, covering all three (not two fsyncs per file)
    synclog.clear()
    out = run_stack(StackPlan(stack=stack, folder=str(folder), defer_sync=False))
    assert out["row"]["status"] == "done" and out["unsynced"] == []
    assert [c[0] for c in synclog if c[0] == "make_durable"] == ["make_durable"]
    (synced,) = [c[1] for c in synclog if c[0] == "make_durable"]
    assert sorted(synced) == sorted(files)
    assert not [c for c in synclog if c[0] == "fsync" and c[1] in files]


def _writing_task(plan):
    """A null task that also writes one output the way a step does (deferred when told)."""
    out = null_stack(plan)
    with fitsutil.deferred_durability(sync=not plan.defer_sync) as pending:
        dest = Path(plan.folder) / "out.txt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fitsutil.atomic_path(dest) as tmp:
            tmp.write_text(plan.stack.stackid)
    out["unsynced"] = list(pending.paths)
    return out


def _run_execute(tmp_path, monkeypatch, *, fail_sync=False, task=_writing_task, chunk=1, n=6,
                 done_first=(), flush_s=0.0):
    from distributed import Client

    events = []
    real_record = database.RunDatabase.record
    real_mark = database.RunDatabase.mark_submitted

    def record(self, outcomes, **kw):
        if kw.get("submitted"):
            events.append(("marked", [sid for sid, _ in kw["submitted"]]))
        if outcomes:
            events.append(("record", [o["stackid"] for o in outcomes],
                           [o["row"]["status"] for o in outcomes]))
        return real_record(self, outcomes, **kw)

    def mark_submitted(self, stackids, run_id):
        stackids = list(stackids)
        events.append(("mark_now", stackids))
        return real_mark(self, stackids, run_id)

    real_make = fitsutil.make_durable

    def make_durable(paths):
        paths = [str(p) for p in paths]
        events.append(("sync", paths))
        if fail_sync:
            raise OSError(5, "Input/output error")
        return real_make(paths)

    monkeypatch.setattr(database.RunDatabase, "record", record)
    monkeypatch.setattr(database.RunDatabase, "mark_submitted", mark_submitted)
    monkeypatch.setattr(fitsutil, "make_durable", make_durable)
    stacks = [StackInput(f"s{i}", f"/d{i}", f"/g{i}") for i in range(n)]
    plans = [StackPlan(stack=s, folder=str(tmp_path / "camp" / s.stackid)) for s in stacks]
    log = logging.getLogger("test_campaign_driver")
    with database.RunDatabase(tmp_path / "c.sqlite") as db, \
            Client(processes=False, n_workers=1, threads_per_worker=1,
                   dashboard_address=None,
                   # the scheduler's HTTP server on a free port, as stk_batch's own: another
                   # Dask scheduler on the machine may hold 8787 (Dask's warning is an error here)
                   scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as client:
        db.sync_stacks(stacks)
        run = db.start_run(host="h", version="v", command="c", scheduler="s")
        real_record(db, [null_stack(p) for p in plans if p.stack.stackid in done_first])
        prog = progress.Progress(len(plans), log=log, live=False, enabled=False)
        driver._execute(client, plans, db, run, prog, io.StringIO(), window=3,
                        task=task, chunk=chunk, flush_s=flush_s, defer_sync=True)
        states = db.states()
        rows = {r["stackid"]: r for r in db.result_rows()}
    return events, states, rows


def test_driver_syncs_the_files_before_it_records_the_stacks(tmp_path, monkeypatch):
    events, states, _ = _run_execute(tmp_path, monkeypatch)
    synced = set()
    recorded = []
    for ev in events:
        if ev[0] == "sync":
            synced |= set(ev[1])
        elif ev[0] == "record":
            for sid in ev[1]:
                # the stack's output was made durable by a sync BEFORE this commit
                assert str(tmp_path / "camp" / sid / "out.txt") in synced, (sid, events)
            recorded += ev[1]
    assert sorted(recorded) == [f"s{i}" for i in range(6)]
    assert {s: st.status for s, st in states.items()} == {f"s{i}": "done" for i in range(6)}
    for i in range(6):   # the workers did not sync: the task ran with defer_sync from _execute
        assert (tmp_path / "camp" / f"s{i}" / "out.txt").read_text() == f"s{i}"


def test_submissions_are_marked_in_the_periodic_commit(tmp_path, monkeypatch):
    """A submitted stack is marked running (attempts + 1) in the next periodic commit, with
    the outcomes and before its own, not in a commit per submission -- except a stack the
    database holds done (force, changed inputs), which is marked at once before it runs: a
    kill that lost its mark would leave it done while its rerun replaced its files."""
    events, states, _ = _run_execute(tmp_path, monkeypatch, n=12, flush_s=60.0,
                                     done_first=("s2", "s7"))
    assert [ev[1] for ev in events if ev[0] == "mark_now"] == [["s2"], ["s7"]]
    seen = set()
    for ev in events:
        if ev[0] == "mark_now":
            seen |= set(ev[1])
        elif ev[0] == "marked":
            assert not set(ev[1]) & {"s2", "s7"} and not set(ev[1]) & seen
            seen |= set(ev[1])
        elif ev[0] == "record":                 # recorded only after its mark
            assert set(ev[1]) <= seen, events
    assert seen == {f"s{i}" for i in range(12)}
    assert {s: (st.status, st.attempts) for s, st in states.items()} == {
        f"s{i}": ("done", 1) for i in range(12)}
    # the long flush interval: one commit at the end holds every mark and outcome but the two
    assert len([ev for ev in events if ev[0] == "record"]) == 1


def test_driver_records_failed_when_the_sync_fails(tmp_path, monkeypatch):
    """A sync error: the stacks are recorded failed (step 'sync'), never done, so a resume
    reruns them."""
    events, states, rows = _run_execute(tmp_path, monkeypatch, fail_sync=True)
    assert {s: st.status for s, st in states.items()} == {f"s{i}": "failed" for i in range(6)}
    assert {r["failed_step"] for r in rows.values()} == {"sync"}
    assert all("could not be made durable" in r["error"] for r in rows.values())
    assert all(set(ev[2]) == {"failed"} for ev in events if ev[0] == "record")


def _breaking_task(plan):
    """A task that fails as a whole (as when its worker dies) on stack s4, else writes."""
    if plan.stack.stackid == "s4":
        raise RuntimeError("the worker died")
    return _writing_task(plan)


_TASKS = []


def _spied_run_chunk(task, plans):
    """run_chunk that remembers each Dask task's stacks (module level: Dask pickles it by
    reference, so the in-process worker appends to this module's list)."""
    from stk_astrometry.campaign.task import run_chunk

    _TASKS.append([p.stack.stackid for p in plans])
    return run_chunk(task, plans)


def test_chunks_run_every_stack_once_and_only_the_breaking_stack_fails(tmp_path, monkeypatch):
    """Several stacks per Dask task: each stack recorded once, after its sync; a task that
    fails as a whole is rerun one stack per task, so its other stacks are recorded done and
    only the stack that broke it failed."""
    _TASKS.clear()
    monkeypatch.setattr(driver, "run_chunk", _spied_run_chunk)
    tasks = _TASKS
    events, states, rows = _run_execute(tmp_path, monkeypatch, task=_breaking_task, chunk=4,
                                        n=20)
    assert max(len(t) for t in tasks) == 4                # chunks were used
    assert ["s4"] in tasks and ["s5"] in tasks            # s4's chunk rerun one per task
    recorded = [sid for ev in events if ev[0] == "record" for sid in ev[1]]
    assert sorted(recorded) == sorted(f"s{i}" for i in range(20))   # each exactly once
    assert {s: st.status for s, st in states.items()} == {
        f"s{i}": "failed" if i == 4 else "done" for i in range(20)}
    assert rows["s4"]["failed_step"] == "task" and "the worker died" in rows["s4"]["error"]
    synced = {p for ev in events if ev[0] == "sync" for p in ev[1]}
    assert {str(tmp_path / "camp" / f"s{i}" / "out.txt") for i in range(20) if i != 4} <= synced


@pytest.mark.parametrize(("n", "threads", "expected"), [
    (30, 2, 1), (100, 2, 3), (1000, 2, 31), (10_000, 2, 32), (20_000, 2, 32), (10_000, 200, 3),
    (0, 0, 1)])
def test_chunk_size_keeps_every_thread_busy(n, threads, expected):
    assert driver.chunk_size(n, threads) == expected


def test_local_cluster_workers_spawn_without_profiler_or_dask_malloc_trim():
    """The LocalCluster (in its own process: campaign.localcluster) runs with Dask's worker
    profiler off, the nanny's pre-spawn environment leaving glibc's malloc trimming alone
    and Dask's periodic housekeeping at a slower pace (each cost the stacks CPU), in its
    scheduler and in its workers; the numpy thread limits stay.  Asked, it shuts down in a
    thread the caller joins (while it writes the table); then no process of it is left."""
    import dask

    keys = list(driver.WORKER_CONFIG)

    def worker_side():
        return ({k: dask.config.get(k) for k in keys}, os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                os.environ.get("OPENBLAS_NUM_THREADS"), os.environ.get("OMP_NUM_THREADS"))

    def scheduler_side(dask_scheduler):
        return ({k: dask.config.get(k) for k in keys}, os.getpid(), os.getppid(),
                dask_scheduler.extensions["stealing"]._callback_time)  # seconds

    before = set(live_children())       # children this test did not start are not its own
    closing = []
    with driver.dask_client("", 2, closing=closing) as (client, where):
        assert where == "LocalCluster (2 worker processes)"
        assert sorted(client.nthreads().values()) == [1, 1]
        answers = list(client.run(worker_side).values())
        config, sched_pid, sched_ppid, steal_s = client.run_on_scheduler(scheduler_side)
        assert set(live_children()) - before == {sched_pid}
    assert answers == [(driver.WORKER_CONFIG, None, "1", "1")] * 2
    assert config == driver.WORKER_CONFIG and sched_ppid == os.getpid()
    assert steal_s == 1.0            # the stealing interval in the scheduler (Dask: 0.1 s)
    # Dask's housekeeping at a slower pace (its defaults: 20 ms, 500 ms, 100 ms, 100 ms)
    assert {k: config[k] for k in (
        "distributed.admin.tick.interval", "distributed.admin.system-monitor.interval",
        "distributed.worker.memory.monitor-interval",
        "distributed.scheduler.work-stealing-interval")} == {
        "distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "5s",
        "distributed.worker.memory.monitor-interval": "1s",
        "distributed.scheduler.work-stealing-interval": "1s"}
    assert config["distributed.worker.profile.enabled"] is False
    assert len(closing) == 1
    closing[0].join(timeout=40)
    assert not closing[0].is_alive() and set(live_children()) <= before


def test_help_page_gives_the_local_workers_dask_settings_for_a_separate_cluster():
    """The Dask configuration file in the stk_batch help (DASK CLUSTERS) holds exactly the
    settings the LocalCluster's workers get (driver.WORKER_CONFIG)."""
    import textwrap

    import yaml

    text = (Path(__file__).resolve().parents[1] / "share" / "doc" / "stk_batch.txt").read_text()
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "distributed:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = [lines[start]]
    for ln in lines[start + 1:]:
        if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
            break
        block.append(ln)
    tree = yaml.safe_load(textwrap.dedent("\n".join(block)))
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(tree, "")
    assert flat == driver.WORKER_CONFIG


def test_a_chunk_on_a_remote_worker_syncs_its_stacks_files_once_before_returning(
        tmp_path, synclog):
    """Without defer_sync (a remote cluster's worker) a chunk is one group commit: one
    make_durable of every stack's file at the chunk's end, none per stack; with defer_sync
    nothing is synced and each outcome lists its own stack's file for the driver."""
    from stk_astrometry.campaign.task import run_chunk

    stacks = [StackInput(f"s{i}", f"/d{i}", f"/g{i}") for i in range(3)]
    files = [str(tmp_path / "camp" / s.stackid / "out.txt") for s in stacks]

    plans = [StackPlan(stack=s, folder=str(tmp_path / "camp" / s.stackid)) for s in stacks]
    outs = run_chunk(_writing_task, plans)
    assert [o["stackid"] for o in outs] == ["s0", "s1", "s2"]
    assert [c for c in synclog if c[0] == "make_durable"] == [("make_durable", files)]
    assert all(o["unsynced"] == [] for o in outs)

    synclog.clear()
    deferred = [StackPlan(stack=s, folder=p.folder, defer_sync=True)
                for s, p in zip(stacks, plans, strict=True)]
    outs = run_chunk(_writing_task, deferred)
    assert [c for c in synclog if c[0] in ("make_durable", "fsync")] == []
    assert [o["unsynced"] for o in outs] == [[f] for f in files]


def test_a_process_imports_the_rare_paths_modules_before_its_first_stack(tmp_path):
    """xfmfit's least_squares fallback imports scipy.optimize (~35 MB of a worker's RSS) on 1
    stack in thousands: run_stack imports it before the first step of a process's first
    stack, so a worker's memory does not step up at a random moment of a long campaign and
    its peak does not depend on the number of stacks (issue 12).  A fresh interpreter, the
    first step replaced by one that records what is imported when it starts."""
    import json
    import subprocess
    import sys

    import stk_astrometry

    code = r"""
import json, sys
from stk_astrometry import api
from stk_astrometry.campaign import task
from stk_astrometry.campaign.stacks import StackInput
from stk_astrometry.errors import InputError
before = {m: m in sys.modules for m in task.WARM_MODULES}
seen = {}
def match_stack(*args, **kwargs):
    seen.update({m: m in sys.modules for m in task.WARM_MODULES})
    raise InputError("stopped by the test")
api.match_stack = match_stack
out = task.run_stack(task.StackPlan(stack=StackInput("s0", "/d0", "/g0"), folder=sys.argv[1]))
print(json.dumps({"before": before, "seen": seen, "status": out["row"]["status"],
                  "error": out["row"]["error"]}))
"""
    env = dict(os.environ)
    lib = str(Path(stk_astrometry.__file__).resolve().parents[1])
    env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s0")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["status"] == "failed" and got["error"] == "stopped by the test"
    if all(got["before"].values()):
        pytest.skip("the modules are imported with the API already: nothing left to warm")
    assert got["seen"] and all(got["seen"].values()), got


def test_local_cluster_keeps_short_debugging_logs():
    """Dask's debugging logs keep driver.WORKER_CONFIG's 10 entries, not Dask's 1,000, in
    the scheduler (its stream to each worker keeps every compute-task message it sent, with
    the task's stack plans: +10 MB in the driver from 1,000 to 10,000 stacks) and in the
    worker processes of a real LocalCluster (the nanny hands them the configuration)."""
    import dask
    import distributed  # noqa: F401 - Dask's defaults of distributed.* are loaded with it

    n = driver.WORKER_CONFIG["distributed.admin.low-level-log-length"]
    assert n == 10 < dask.config.get("distributed.admin.low-level-log-length")
    def scheduler_lengths(dask_scheduler):
        streams = list(dask_scheduler.stream_comms.values())
        return (dask_scheduler.transition_log.maxlen,
                sorted({s.recent_message_log.maxlen for s in streams}))

    with driver.dask_client("", 1) as (client, _where):
        assert client.run_on_scheduler(scheduler_lengths) == (n, [n])

        def lengths(dask_worker):
            return (dask_worker.state.log.maxlen, dask_worker.state.stimulus_log.maxlen,
                    dask_worker.batched_stream.recent_message_log.maxlen)

        assert list(client.run(lengths).values()) == [(n, n, n)]
        assert client.scheduler_comm.recent_message_log.maxlen == n   # the client's own


def _old_plans(stacks, db, settings, campaign_dir, force, update_mode, detcorr):
    """The plans as the driver built them before they were made on demand (a list of every
    StackPlan): the reference of the test below."""
    step_digests = driver._step_digests(settings, update_mode, detcorr)
    states = db.states()
    plans = []
    for s in stacks:
        steps = ["match", "fit"] + (["update"] if update_mode != "none" and s.products else [])
        in_d = driver.inputs_digest(s)
        par_d = driver.params_digest({k: step_digests[k] for k in steps})
        folder = str(campaign_dir / "stacks" / driver.safe_name(s.stackid))
        st = states.get(s.stackid)
        if (not force and st is not None and st.status == "done" and st.inputs_digest == in_d
                and st.params_digest == par_d
                and driver._outputs_exist(s, folder, detcorr, update_mode)):
            continue
        plans.append(StackPlan(stack=s, folder=folder, match=settings.match, fit=settings.fit,
                               update=settings.update, update_mode=update_mode, detcorr=detcorr,
                               inputs_digest=in_d, params_digest=par_d,
                               step_digests=step_digests))
    return plans


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("update_mode", ["none", "copy"])
def test_plans_made_on_demand_equal_every_plan_built_at_once(tmp_path, monkeypatch, force,
                                                             update_mode):
    """Stacks decided over several blocks, some finished (skipped unless forced), one finished
    with its inputs changed since, one with products: each plan the list gives, by index, by
    negative index and by slice, equals the plan built the old way, in the same order."""
    from stk_astrometry.campaign import settings as st_mod

    monkeypatch.setattr(driver, "PLAN_BLOCK", 3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    stacks = []
    for i in range(11):
        files = []
        for kind in ("det", "gaia"):
            f = inputs / f"s{i}_{kind}.fits"
            f.write_bytes(b"x" * (i + 1))
            files.append(str(f))
        stacks.append(StackInput(stackid=f"s{i}", detfile=files[0], gaiafile=files[1],
                                 products=str(inputs) if i in (2, 7) else None))
    camp = tmp_path / "camp"
    cfg = st_mod.StepSettings(match={"match_radius": 3.0}, fit={"estimator": "spec"})
    with database.RunDatabase(tmp_path / "run.sqlite") as db:
        first, skipped = driver.plan_stacks(stacks, db, cfg, campaign_dir=camp, force=False,
                                            update_mode=update_mode, detcorr=True)
        assert (len(first), skipped) == (11, 0)
        # stacks 1, 4, 5, 7, 9 finished (their outputs on disk); 9's detections rewritten since
        finished = [first[i] for i in (1, 4, 5, 7, 9)]
        db.record([null_stack(p) for p in finished])
        for p in finished:
            for name, path in output_paths(p.folder, p.stack.stackid).items():
                if name != "products_out" or update_mode == "copy":
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    Path(path).write_bytes(b"")
        Path(stacks[9].detfile).write_bytes(b"changed!")
        want = _old_plans(stacks, db, cfg, camp, force, update_mode, True)
        plans, skipped = driver.plan_stacks(stacks, db, cfg, campaign_dir=camp, force=force,
                                            update_mode=update_mode, detcorr=True)
    assert [p.stack.stackid for p in want] == (
        [f"s{i}" for i in range(11)] if force else ["s0", "s2", "s3", "s6", "s8", "s9", "s10"])
    assert (len(plans), skipped) == (len(want), 11 - len(want))
    assert [plans[i] for i in range(len(plans))] == want
    assert plans[1:5] == want[1:5] and plans[:] == want and plans[5:99] == want[5:]
    assert plans[-1] == want[-1]
    with pytest.raises(IndexError):
        plans[len(want)]
    assert len({p.params_digest for p in want}) == (2 if update_mode == "copy" else 1)


def test_planning_a_large_campaign_holds_no_plan_per_stack(tmp_path):
    """20,000 stacks planned: beyond the stack list itself, the plans hold ~30 bytes per stack
    (indices and digests), where a list of StackPlans held ~390 and the planning's mappings of
    every stack's digests and state ~750 more at their peak (issue 12: memory flat)."""
    import tracemalloc

    from stk_astrometry.campaign import settings as st_mod

    n = 20_000
    stacks = [StackInput(stackid=f"acisfJ{i:07d}_001", detfile=f"/nonexistent/d/{i}_det.fits",
                         gaiafile=f"/nonexistent/g/{i}_gaia.fits") for i in range(n)]
    cfg = st_mod.StepSettings(match={}, fit={})
    with database.RunDatabase(tmp_path / "run.sqlite") as db:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            plans, _ = driver.plan_stacks(stacks, db, cfg, campaign_dir=tmp_path / "camp",
                                          force=False, update_mode="none", detcorr=True)
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(plans) == n
    assert (kept - before) / n < 60
    assert (peak - before) / n < 200


def test_cluster_start_warms_every_worker_before_it_is_used():
    """driver.ClusterStart (issue 12): the cluster starts in a thread while the driver reads
    the stack list and plans; each worker imports the steps' modules (task.warm_worker) as
    soon as it is up, not in its first task.  Not with warm=False."""

    names = ["stk_astrometry.mixture", "stk_astrometry.xfmfit", "astropy", "scipy.optimize"]

    def imported(names):
        import sys

        return [n in sys.modules for n in names]

    before = set(live_children())
    cold = driver.ClusterStart("", 1, warm=False)      # e.g. the benchmark's null tasks
    with cold as (client, _where):
        assert list(client.run(imported, names).values()) == [[False] * 4]
    for thread in cold.closing:
        thread.join()
    start = driver.ClusterStart("", 1)
    with start as (client, where):
        assert where == "LocalCluster (1 worker processes)"
        assert list(client.run(imported, names).values()) == [[True] * 4]
    for thread in start.closing:
        thread.join()
    start.close()                        # after use: nothing left to do
    assert client.status == "closed" and set(live_children()) <= before


@pytest.mark.parametrize("how", ["error while planning", "nothing to run"])
def test_a_cluster_begun_before_the_planning_is_shut_down_when_not_used(tmp_path, monkeypatch,
                                                                        how):
    """run_campaign begins a new campaign's cluster before it plans (driver.ClusterStart) and
    shuts it down when the run does not use it: an error while planning, or no stack to
    run."""

    started = []
    real_start = driver.ClusterStart

    class Recorded(real_start):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(driver, "ClusterStart", Recorded)
    before = set(live_children())
    cfg = settings.load_step_settings([])
    if how == "error while planning":
        def broken(*args, **kwargs):
            raise OSError("planning broke")

        monkeypatch.setattr(driver, "plan_stacks", broken)
        with pytest.raises(OSError, match="planning broke"):
            driver.run_campaign([], cfg, folder=tmp_path / "c", verbose=0)
    else:
        summary = driver.run_campaign([], cfg, folder=tmp_path / "c", plots=False, verbose=0)
        assert summary.n_run == 0 and (tmp_path / "c" / driver.TABLE_NAME).is_file()
    assert len(started) == 1
    start = started[0]
    client = start._value[0]
    assert client.status == "closed" and all(not t.is_alive() for t in start.closing)
    assert set(live_children()) <= before


def test_a_cluster_is_begun_before_the_planning_only_where_stacks_are_left():
    """driver._likely_work: a new campaign or one with stacks not done (begin the cluster
    before planning); every stack done: only once the planning finds stacks to run."""
    st = [StackInput(f"s{i}", f"/d{i}", f"/g{i}") for i in range(2)]
    done = [{"stackid": s.stackid, "inputs_digest": "i", "params_digest": "p",
             "elapsed_s": 0.1, "worker": "w", "steps": [], "warnings": [],
             "row": {"stackid": s.stackid, "status": "done"}} for s in st]
    with database.RunDatabase(":memory:") as db:
        assert driver._likely_work(db)                 # new
        db.sync_stacks(st)
        assert driver._likely_work(db)                 # pending stacks
        db.record(done[:1])
        assert driver._likely_work(db)
        db.record(done[1:])
        assert not driver._likely_work(db)             # all done
