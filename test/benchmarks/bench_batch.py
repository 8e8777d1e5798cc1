"""Campaign benchmark of stk_batch (issue 12).

Tables:

1. the machinery alone: a campaign of null tasks (no step runs) through the LocalCluster at
   1,000 and 10,000 stacks -- stacks/s of Dask + run database + table + report, and the
   peak RSS of the driver, of the LocalCluster's own process (its scheduler: a child of the
   driver, campaign.localcluster) and of the largest worker (memory must stay flat in the
   number of stacks);
2. match + fit over N simulated stacks of the benchmark mix (10-200 detections, Gaia
   0.5-50 per arcmin^2, ALLWISE; default N = 10,000) end to end through the default
   LocalCluster (target: >= 85 stacks/s wall including the database and the table, i.e.
   10,000 in under 2 minutes), and through a separately started ``dask scheduler`` + ``dask
   worker`` (target: within 1.3x of the LocalCluster's wall time, same table); beside them the
   CPU per stack of the steps alone (``run_stack`` in one process on 200 of the stacks: no
   Dask, no database), the ceiling that bounds the rate whatever the campaign machinery does;
   and the peak memory of the driver, the scheduler and the largest worker over the first
   tenth of the same stacks beside the whole campaign's (target: at most 1.10x -- flat in the
   number of stacks);
3. ``kill -9`` of the driver at random moments (20 times), then a resume to the end: every
   stack recorded exactly once, the results table equal to the uninterrupted run's (all
   columns but timings and attempts).

Inputs are generated once (seeded, fitsio) into a cache folder under the temporary directory
(``STK_BENCH_BATCH_CACHE`` overrides) and reused: their generation is not timed.  The driver
runs as a separate process, as a user runs it; its wall time includes start-up, reading the
stack list, the Dask cluster's start and stop, and writing the table and plots.
``STK_BENCH_BATCH_N`` sets N; ``--quick`` uses N = 200 and 5 kills.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
TEST = HERE.parent
if str(TEST) not in sys.path:
    sys.path.insert(0, str(TEST))

import numpy as np  # noqa: E402
from _common import LIB, na, print_table  # noqa: E402

SEED = 20261205
TARGET_RATE = 85.0
TARGET_SCHED_RATIO = 1.3
#: the peaks (driver, largest worker) over N stacks against over the first N/10 of them
TARGET_MEM_GROWTH = 1.10
KILLS = 20

_RUNNER = r"""
import json, os, resource, sys, threading, time
t0 = time.perf_counter()
from stk_astrometry.campaign import driver, settings, stacks, task

# The workers' peak RSS, each from its own VmHWM (sampled until it exits; the high-water mark
# only rises): not the children's ru_maxrss, which a worker started by fork + exec from this
# process inherits at the driver's RSS of that moment (a 30,000-row stack table read before
# the cluster started made the "workers" 164.7 MB where the workers' own peak was 141 MB).
# Every descendant is looked at: the LocalCluster's scheduler is a child process of the driver
# (campaign.localcluster) and the workers are its children -- told apart by where they are in
# the tree, not by their command lines, which Dask rewrites ("dask worker [tcp://...]").
hwm, role, stop = {}, {}, threading.Event()
def _descendants():
    # {pid: "cluster" (a child), "worker" (a grandchild or deeper), or "other"}
    parent = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parent[pid] = f.read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                pass
    me = str(os.getpid())
    found, level, depth = {}, {me}, 0
    while level:
        depth += 1
        level = {pid for pid, ppid in parent.items() if ppid in level and pid not in found}
        for pid in level:
            found[pid] = "cluster" if depth == 1 else "worker"
    for pid in found:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"resource_tracker" in f.read():
                    found[pid] = "other"      # multiprocessing's semaphore tracker
        except OSError:
            pass
    return found
def _watch():
    while not stop.wait(0.5):
        # children looked for at every sample: a 1,000-null-task campaign's workers live
        # ~2 s, and a scan every 2 s missed them (its worker peak printed as 0 MB)
        for pid, who in _descendants().items():
            role[pid] = who
            try:
                with open(f"/proc/{pid}/status") as f:
                    kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
                hwm[pid] = max(hwm.get(pid, 0), kb)
            except (OSError, StopIteration):
                pass
def _peak_mb(who):
    return max((kb for pid, kb in hwm.items() if role.get(pid) == who), default=0) / 1024
def _own_hwm_kb():
    # this process's own peak: VmHWM starts again at exec, ru_maxrss does not -- it keeps
    # the benchmark process's RSS at the fork (278 MB for a 1,000-stack driver started after
    # the benchmark had compared two 10,000-row tables; its own peak was ~120 MB)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
watcher = threading.Thread(target=_watch, daemon=True)
watcher.start()
a = json.loads(sys.argv[1])
st = stacks.read_stack_list(a["stacks"])
cfg = settings.load_step_settings([])
t1 = time.perf_counter()
s = driver.run_campaign(st, cfg, folder=a["folder"], scheduler=a.get("scheduler", ""),
                        nworkers=a.get("nworkers", 0), plots=a.get("plots", True), verbose=0,
                        detcorr=a.get("detcorr", True), task=getattr(task, a["task"]))
t2 = time.perf_counter()
stop.set()
watcher.join()
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"cpu_self": me.ru_utime + me.ru_stime, "cpu_children": kids.ru_utime + kids.ru_stime,
                  "wall": t2 - t0, "campaign": t2 - t1, "run_s": s.run_s, "n_run": s.n_run,
                  "n_done": s.n_done, "n_failed": s.n_failed,
                  "maxrss_mb": _own_hwm_kb() / 1024,
                  "workers_maxrss_mb": _peak_mb("worker"),
                  "cluster_maxrss_mb": _peak_mb("cluster"),
                  "children_ru_maxrss_mb": kids.ru_maxrss / 1024}))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(LIB) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def make_inputs(n):
    """The cached inputs of ``n`` stacks; returns (list file, seconds spent generating).

    The driver is given ``@`` + the list file, as a user types ``stacks=@stacks.lis``.
    """
    root = Path(os.environ.get("STK_BENCH_BATCH_CACHE",
                               Path(tempfile.gettempdir()) / f"stk_bench_batch_{SEED}"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    missing = [i for i in range(n) if not (root / f"s{i:05d}").is_dir()
               or not any((root / f"s{i:05d}").glob("*_gaia.fits"))]
    if missing:
        import multiprocessing as mp

        from campaign_sim import make_chunk

        chunk = 100
        jobs = [(str(root), s, min(chunk, n - s), SEED)
                for s in range(min(missing) // chunk * chunk, n, chunk)]
        with mp.get_context("spawn").Pool(max(1, (os.cpu_count() or 1))) as pool:
            for _ in pool.imap_unordered(make_chunk, jobs):
                pass
    listfile = root / f"stacks_{n}.lis"
    listfile.write_text("".join(f"s{i:05d}\n" for i in range(n)))
    return listfile, time.perf_counter() - t0


def null_table(folder, n):
    """A stack table of ``n`` rows that all name one tiny stack (for the null-task runs)."""
    from campaign_sim import make_campaign

    lst, _ = make_campaign(folder / "one", 1, seed=SEED, specials=False, mix="small")
    one = lst.parent / lst.read_text().split()[0]
    det = next(one.glob("*_det.fits"))
    gaia = next(one.glob("*_gaia.fits"))
    path = folder / f"null_{n}.csv"
    path.write_text("stackid,detfile,gaiafile\n" +
                    "".join(f"null{i:06d},{det},{gaia}\n" for i in range(n)))
    return path


_STEPS_ALONE = r"""
import json, logging, os, sys, time
from stk_astrometry.campaign import driver, settings, stacks, task
from stk_astrometry.fitsutil import make_durable
a = json.loads(sys.argv[1])
try:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
except (AttributeError, OSError):
    pass
logging.getLogger("stk_astrometry").setLevel(logging.ERROR)
st = stacks.read_stack_list(a["stacks"])
st = st[:: max(1, len(st) // a["n"])][: a["n"]]              # spread over the campaign
cfg = settings.load_step_settings([])
digests = driver._step_digests(cfg, "none", True)
plans = [task.StackPlan(stack=s, folder=os.path.join(a["folder"], stacks.safe_name(s.stackid)),
                        match=cfg.match, fit=cfg.fit, update=cfg.update, step_digests=digests,
                        defer_sync=True) for s in st]
task.run_chunk(task.run_stack, plans[:10])                   # imports and caches warm
c0, t0 = time.process_time(), time.perf_counter()
outs = task.run_chunk(task.run_stack, plans)
make_durable([p for o in outs for p in o["unsynced"]])
print(json.dumps({"cpu": time.process_time() - c0, "wall": time.perf_counter() - t0,
                  "failed": sum(o["row"]["status"] != "done" for o in outs)}))
"""


def steps_alone(stacks, folder, n):
    """CPU per stack of the steps alone: ``run_stack`` on ``n`` of the stacks (spread over the
    list) in one process pinned to one core -- no Dask, no database, no table.  The campaign
    cannot beat (cores / this) stacks/s whatever its machinery does."""
    args = json.dumps({"stacks": str(stacks), "folder": str(folder), "n": n})
    proc = subprocess.run([sys.executable, "-c", _STEPS_ALONE, args], env=_env(),
                          capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"steps alone: exit {proc.returncode}: {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["cpu"] / n, out["wall"] / n


def run_driver(stacks, folder, *, task="run_stack", scheduler="", plots=True, timeout=7200):
    """Run one campaign in a driver process; return its JSON report (+ 'proc_wall')."""
    args = json.dumps({"stacks": str(stacks), "folder": str(folder), "task": task,
                       "scheduler": scheduler, "plots": plots})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, args], env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"driver exit {proc.returncode}: {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["proc_wall"] = wall
    return out


def _science(path):
    from stk_astrometry.formats.campaign import RUN_DEPENDENT, read_campaign_table

    t = read_campaign_table(path)
    out = {}
    for name in t.dtype.names:
        if name in RUN_DEPENDENT:
            continue
        col = t[name]
        if name.endswith("file"):
            col = np.array([Path(v).name for v in col.tolist()])
        out[name] = col
    return out


def tables_equal(a, b):
    """(equal, first difference) of two campaign tables, timings and folders left out."""
    ta, tb = _science(a), _science(b)
    if list(ta) != list(tb):
        return False, "columns differ"
    for name in ta:
        x, y = ta[name], tb[name]
        if len(x) != len(y):
            return False, f"{len(x)} vs {len(y)} rows"
        same = (x == y) | ((x != x) & (y != y)) if x.dtype.kind == "f" else (x == y)
        if not np.all(same):
            i = int(np.flatnonzero(~same)[0])
            return False, f"column {name} row {i}: {x[i]!r} vs {y[i]!r}"
    return True, ""


def worker_config_file(path):
    """The Dask configuration file the stk_batch help gives for a separately started
    cluster's workers: the LocalCluster's worker settings (``driver.WORKER_CONFIG``)."""
    import yaml
    from stk_astrometry.campaign.driver import WORKER_CONFIG

    tree = {}
    for key, value in WORKER_CONFIG.items():
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    Path(path).write_text(yaml.safe_dump(tree))
    return path


class ExternalCluster:
    """``dask scheduler`` and ``dask worker`` (one process per core, one thread each), with
    the Dask configuration file of the stk_batch help (``DASK_CONFIG``)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.procs = []

    def __enter__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dask = str(Path(sys.executable).parent / "dask")
        self.log = open(self.folder / "dask.log", "w")  # noqa: SIM115 - closed in __exit__
        self.address = f"tcp://127.0.0.1:{port}"
        env = dict(_env(), DASK_CONFIG=str(worker_config_file(self.folder / "stk_batch.yaml")))
        sf = self.folder / "scheduler.json"
        self.procs.append(subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
             "--scheduler-file", str(sf)], stdout=self.log, stderr=self.log, env=env))
        deadline = time.time() + 60
        while not sf.exists():
            if time.time() > deadline:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.2)
        self.procs.append(subprocess.Popen(
            [dask, "worker", self.address, "--nworkers", str(os.cpu_count() or 1), "--nthreads",
             "1", "--no-dashboard"], stdout=self.log, stderr=self.log, env=env))
        from distributed import Client

        with Client(self.address, timeout="30s") as c:
            c.wait_for_workers(os.cpu_count() or 1, timeout=120)
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()
        return False


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _recorded(path):
    """Stacks recorded done or failed in a run database; 0 when a kill came before the
    driver made it (reading a 10,000-stack list takes over a second)."""
    if not Path(path).exists():
        return 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM stacks WHERE status IN "
                           "('done','failed')").fetchone()[0]
    except sqlite3.OperationalError:     # no schema yet
        return 0
    finally:
        con.close()


def kill_and_resume(listfile, folder, n, kills, rng, *, max_wait=8.0):
    """Kill the driver ``kills`` times at random moments, then resume to the end.

    Each run is killed after a random 1 to ``max_wait`` seconds (start-up included); the
    caller scales ``max_wait`` to the uninterrupted run so that the kills spread over the
    whole campaign and it is not finished before the last one."""
    args = json.dumps({"stacks": f"@{listfile}", "folder": str(folder), "task": "run_stack",
                       "plots": False})
    orphan_waits, recorded = [], []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", _RUNNER, args], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(1.0, max_wait))
        if proc.poll() is not None:
            break  # finished before the kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.perf_counter()
        while _group_alive(proc.pid) and time.perf_counter() - t0 < 120:
            time.sleep(0.2)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            orphan_waits.append(float("inf"))
        else:
            orphan_waits.append(time.perf_counter() - t0)
        recorded.append(_recorded(folder / "campaign.sqlite"))
    final = run_driver(f"@{listfile}", folder, plots=False)
    con = sqlite3.connect(folder / "campaign.sqlite")
    status = dict(con.execute("SELECT status, COUNT(*) FROM stacks GROUP BY status"))
    n_results = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    n_runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    attempts = con.execute("SELECT MAX(attempts) FROM stacks").fetchone()[0]
    con.close()
    # debris: temporary files of the writes the kills cut short, still there after the resume
    debris = sum(1 for _ in Path(folder).rglob("*.tmp"))
    return {"kills": len(orphan_waits), "recorded": recorded, "orphan_waits": orphan_waits,
            "status": status, "n_results": n_results, "n_runs": n_runs,
            "max_attempts": attempts, "final": final, "debris": debris}


def main(quick: bool = False) -> int:
    n = int(os.environ.get("STK_BENCH_BATCH_N", 200 if quick else 10_000))
    kills = 5 if quick else KILLS
    misses = []
    load0 = os.getloadavg()
    listfile, t_gen = make_inputs(n)
    print(f"inputs: {n} stacks in {listfile.parent} ({t_gen:.0f} s to generate/check, not timed)")
    with tempfile.TemporaryDirectory(prefix="stkbench_batch_") as tmp:
        tmp = Path(tmp)
        # 1. the machinery alone
        rows = []
        for m in (1_000, 10_000):
            table = null_table(tmp / f"null{m}", m)
            try:
                r = run_driver(table, tmp / f"nullcamp{m}", task="null_stack")
                rows.append([f"{m:,} null tasks", f"{r['proc_wall']:.1f} s",
                             f"{m / r['proc_wall']:.0f}", f"{m / r['run_s']:.0f}",
                             f"{1e3 * r['cpu_self'] / m:.2f} ms",
                             f"{1e3 * r['cpu_children'] / m:.2f} ms",
                             f"{r['maxrss_mb']:.0f} / {r['cluster_maxrss_mb']:.0f} / "
                             f"{r['workers_maxrss_mb']:.0f} MB"])
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                rows.append([f"{m:,} null tasks", na(exc), "-", "-", "-", "-", "-"])
        print_table("The machinery alone (LocalCluster, null tasks)",
                    ["campaign", "wall end to end", "stacks/s", "stacks/s (Dask part)",
                     "driver CPU/stack", "cluster CPU/stack",
                     "peak RSS driver / scheduler / worker"], rows,
                    notes=["wall: driver process start to exit (imports, stack list, cluster "
                           "start/stop, database, table, plots)"])

        # 2. match + fit, LocalCluster and a separate scheduler
        rows = []
        local = run_driver(f"@{listfile}", tmp / "local")
        rate = n / local["proc_wall"]
        ok = rate >= TARGET_RATE
        misses += [] if ok else [f"match+fit {rate:.1f} stacks/s < {TARGET_RATE}"]
        cpu = (local["cpu_self"] + local["cpu_children"]) / n
        rows.append([f"LocalCluster ({os.cpu_count()} workers)", f"{local['proc_wall']:.1f} s",
                     f"{rate:.1f}", f"{n / local['run_s']:.1f}",
                     f"{1e3 * local['cpu_self'] / n:.1f} + {1e3 * local['cpu_children'] / n:.1f} ms"
                     f" ({(os.cpu_count() or 1) / cpu:.1f}/s)",
                     f"{local['maxrss_mb']:.0f} / {local['cluster_maxrss_mb']:.0f} / "
                     f"{local['workers_maxrss_mb']:.0f} MB",
                     f"{'PASS' if ok else 'FAIL'} >= {TARGET_RATE:.0f}/s"])
        with ExternalCluster(tmp) as cluster:
            ext = run_driver(f"@{listfile}", tmp / "external", scheduler=cluster.address)
        ratio = ext["proc_wall"] / local["proc_wall"]
        same, diff = tables_equal(tmp / "local" / "campaign.fits",
                                  tmp / "external" / "campaign.fits")
        ok = ratio <= TARGET_SCHED_RATIO and same
        misses += [] if ok else [f"separate scheduler {ratio:.2f}x (same table: {same} {diff})"]
        rows.append(["separate dask scheduler + worker", f"{ext['proc_wall']:.1f} s",
                     f"{n / ext['proc_wall']:.1f}", f"{n / ext['run_s']:.1f}",
                     f"{1e3 * ext['cpu_self'] / n:.1f} ms + workers not counted",
                     f"{ext['maxrss_mb']:.0f} MB / workers not counted",
                     f"{'PASS' if ok else 'FAIL'} {ratio:.2f}x <= {TARGET_SCHED_RATIO}; "
                     f"table {'identical' if same else 'DIFFERS: ' + diff}"])
        n_alone = min(n, 200)
        try:
            cpu1, _ = steps_alone(f"@{listfile}", tmp / "alone", n_alone)
            machinery = cpu - cpu1
            rows.append([f"the steps alone (run_stack in one process, {n_alone} stacks, 1 core)",
                         "-", "-", "-",
                         f"{1e3 * cpu1:.1f} ms ({(os.cpu_count() or 1) / cpu1:.1f}/s)", "-",
                         f"ceiling; the campaign adds {1e3 * machinery:.1f} ms/stack"])
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            rows.append(["the steps alone", na(exc), "-", "-", "-", "-", "-"])
        print_table(f"match + fit over {n:,} simulated stacks of the benchmark mix",
                    ["execution", "wall end to end", "stacks/s", "stacks/s (Dask part)",
                     "CPU/stack driver + cluster (cores/CPU)",
                     "peak RSS driver / scheduler / worker",
                     "target"], rows,
                    notes=[f"10,000 stacks at this rate: {10_000 / rate / 60:.1f} min "
                           f"(target < 2 min)",
                           "cores/CPU: the rate the CPU per stack allows on this machine's cores "
                           "if nothing else ran (the machine is shared: compare with the wall)",
                           f"done {local['n_done']}, failed {local['n_failed']}"])

        # 2b. memory flat in the number of stacks: the first tenth of the same stacks, same
        # driver, beside the whole campaign's peaks
        m = max(100, n // 10)
        try:
            small = run_driver(f"@{make_inputs(m)[0]}", tmp / "tenth")
            rows = []
            for who, key in (("driver", "maxrss_mb"),
                             ("LocalCluster's process (scheduler)", "cluster_maxrss_mb"),
                             ("largest worker (own VmHWM)", "workers_maxrss_mb")):
                # a peak of 0 is a process the sampling never saw: not measured, not a pass
                ratio = local[key] / small[key] if small[key] else float("inf")
                ok = ratio <= TARGET_MEM_GROWTH and local[key] > 0
                misses += [] if ok else [f"{who} peak {small[key]:.0f} -> {local[key]:.0f} MB "
                                         f"({ratio:.2f}x > {TARGET_MEM_GROWTH})"]
                rows.append([who, f"{small[key]:.1f} MB", f"{local[key]:.1f} MB",
                             f"{ratio:.3f}x", f"{'PASS' if ok else 'FAIL'} <= "
                             f"{TARGET_MEM_GROWTH}x"])
            leak_kb = ((TARGET_MEM_GROWTH - 1) * small["workers_maxrss_mb"] * 1024
                       / max(1, n - m))
            print_table(f"peak memory, match + fit: {m:,} stacks vs {n:,} (the first {m:,} of "
                        "them)", ["process", f"{m:,} stacks", f"{n:,} stacks", "ratio",
                                  "target"], rows,
                        notes=[f"flat: {n / m:.0f}x the stacks, at most "
                               f"{100 * (TARGET_MEM_GROWTH - 1):.0f} % more peak memory (a leak "
                               f"of {leak_kb:.1f} KB a stack in a worker would fail it)"])
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            misses.append(f"memory run of {m} stacks: {na(exc)}")

        # 3. kill -9 then resume
        # each killed run starts again (~2 s) and then records stacks: at most ~1.6 times the
        # uninterrupted run's share per kill, at most 8 s (10,000 stacks: always 8 s)
        max_wait = min(8.0, max(2.0, 2.0 + 1.6 * local["proc_wall"] / kills))
        res = kill_and_resume(listfile, tmp / "killed", n, kills, random.Random(SEED),
                              max_wait=max_wait)
        same, diff = tables_equal(tmp / "local" / "campaign.fits",
                                  tmp / "killed" / "campaign.fits")
        once = (res["n_results"] == n and sum(res["status"].values()) == n
                and set(res["status"]) <= {"done", "failed"})
        ok = (same and once and res["kills"] >= min(kills, KILLS if not quick else kills)
              and res["debris"] == 0)
        misses += [] if ok else [f"kill/resume: same table {same} {diff}; once {once}; "
                                 f"{res['debris']} temporary file(s) left"]
        waits = [w for w in res["orphan_waits"] if w != float("inf")]
        print_table(f"kill -9 of the driver {res['kills']} times, then resume ({n:,} stacks)",
                    ["measure", "value"], [
                        ["kill moments", f"1-{max_wait:.1f} s after each start (random)"],
                        ["stacks recorded after each kill", ", ".join(map(str, res["recorded"]))],
                        ["final state", ", ".join(f"{k} {v}" for k, v in res["status"].items())],
                        ["result rows / stacks", f"{res['n_results']} / {n}"],
                        ["max attempts of one stack", str(res["max_attempts"])],
                        ["runs recorded", str(res["n_runs"])],
                        ["worker processes gone after a kill (max)",
                         f"{max(waits):.1f} s" if waits else "-"],
                        ["workers that had to be killed by hand",
                         str(sum(1 for w in res["orphan_waits"] if w == float("inf")))],
                        ["table equals the uninterrupted run's",
                         "PASS" if same else f"FAIL {diff}"],
                        ["temporary files left after the resume", str(res["debris"])],
                    ])
    load1 = os.getloadavg()
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} "
          f"(other work on this {os.cpu_count()}-core machine competes for it)")
    if misses:
        print("MISSED: " + "; ".join(misses))
    return 1 if misses else 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="stk_batch campaign benchmark")
    parser.add_argument("--quick", action="store_true")
    sys.exit(main(quick=parser.parse_args().quick))
