"""Speed benchmark of the stk_astrometry tools (issue 6, part 4).

Tables, each figure a ratio to a reference measured in the same run where one
makes sense (absolute times on a shared machine are noisy):

1. start-up: each tool's ``--help``, ``--version`` and a run with a missing
   input (through ``bin/``, ``PYTHONPATH=lib``) against ``python -c pass``,
   median of N runs;
2. ``stk_match`` on 3,000 detections x 100,000 Gaia sources: the match core
   (``matching.match_stack``) alone and the whole in-process ``main()``,
   against the 1 s target; and a typical stack (50 x 5,000), run time without
   interpreter start-up (in-process ``main()``, warm);
3. ``stk_update_wcs`` in place on a 1 GB event file against a 1 MB one
   (header-only cost should make the ratio ~1), and copy mode against ``cp``;
4. stacks per second through ``stk_match`` + ``stk_xfm`` (in-process mains)
   on simulated stacks, with the median |error| / CRB as a sanity check;
5. the cores (issue 11): the spec fit's direct solver against ``least_squares``
   (target >= 3x at the same minimum), each stack fitted both ways; the
   mixture fit and the share of its start (grid + refinement).
6. the per-stack path (issue 11), side by side in one run on one core: the in-process API
   (``api.match_stack`` + ``api.fit_stack``, files in and out, both estimators run) against
   the >= 50 stacks/s target, the tools' ``main(argv)`` in one process against 1.25x the
   API (the two taking turns stack by stack), and one process per tool (``stk_match`` then
   ``stk_xfm`` on a typical stack) against 4x ``python -c "import numpy"`` each.

``main`` returns 1 (and run.py fails) when a target is missed.

``--quick`` shrinks everything (100 MB event file, fewer stacks and repeats).
Run: ``.venv/bin/python test/benchmarks/run.py --only speed`` (or this file).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402  (after the sys.path set-up above)
from _common import (  # noqa: E402
    BIN,
    PARAM,
    TOOLS,
    NotAvailable,
    extract_revision,
    fmt_s,
    match_inputs,
    median_command,
    median_time,
    na,
    print_table,
    private_pfiles,
    quiet,
    run_command,
    tool_env,
    tool_main,
    write_sim_inputs,
)

SEED = 20261120
GAIA_AREA_ARCMIN2 = math.pi * 10.1**2  # the simulator's cone: r_stack + 0.1' margin


def _sim(ndet, n_gaia, *, seed, **kwargs):
    from stk_astrometry.simulate import SimConfig, simulate_stack

    cfg = SimConfig(ndet=ndet, gaia_density=n_gaia / GAIA_AREA_ARCMIN2, **kwargs)
    return simulate_stack(cfg, seed=seed)


# --------------------------------------------------------------------------- 1. start-up


def bench_startup(quick):
    repeats = 3 if quick else 9
    rows = []
    with tempfile.TemporaryDirectory(prefix="stkbench_su_") as tmp:
        env = tool_env(tmp)
        py = sys.executable
        base = median_command([py, "-c", "pass"], env, repeats, expect=0)
        rows.append(["python -c pass", fmt_s(base), "1.0"])
        imp = median_command([py, "-c", "import numpy, astropy.io.fits, scipy.optimize"], env,
                             repeats, expect=0)
        rows.append(["python -c 'import numpy, astropy.io.fits, scipy.optimize'", fmt_s(imp),
                     f"{imp / base:.1f}"])
        missing = str(Path(tmp) / "no_such_file.fits")
        for tool in TOOLS:
            script = BIN / tool
            if not script.exists():
                rows.append([f"{tool} (all)", na(f"bin/{tool} missing"), "-"])
                continue
            cases = [("--help", ["--help"], 0), ("--version", ["--version"], 0)]
            par = PARAM / f"{tool}.par"
            if par.exists():
                # Every required ('a') parameter gets the missing file: the run resolves its
                # parameters, then fails on the first input (exit 1).
                required = [line.split(",")[0] for line in par.read_text().splitlines()
                            if line and not line.startswith("#") and line.split(",")[2:3] == ["a"]]
                argv = [f"{p}={missing if i == 0 else str(Path(tmp) / f'out{i}')}"
                        for i, p in enumerate(required)]
                if tool == "stk_simulate":
                    argv = [f"outdir={Path(tmp) / 'nodir' / 'x'}", "products=no"]
                cases.append(("missing input", [*argv, "mode=h", "verbose=0"], 1))
            for label, args, expect in cases:
                # The failing run must fail the CIAO way, not crash.
                err = f"# {tool} (stk_astrometry" if expect else None
                try:
                    t = median_command([py, str(script), *args], env, repeats, expect=expect,
                                       expect_stderr=err)
                    rows.append([f"{tool} {label}", fmt_s(t), f"{t / base:.1f}"])
                except NotAvailable as exc:
                    rows.append([f"{tool} {label}", na(str(exc)), "-"])
    print_table("Start-up (median wall time; ratio to python -c pass)",
                ["command", "median", "x python"], rows,
                notes=[f"{repeats} runs each after one warm-up, through bin/ with PYTHONPATH=lib"])


# --------------------------------------------------------------------------- 2. stk_match size


def _match_main_time(sim, tmp, repeats, *, label):
    main = tool_main("stk_match")
    paths = write_sim_inputs(sim, tmp)
    out = Path(tmp) / f"{label}_pairs.fits"
    argv = [str(paths["det"]), str(paths["gaia"]), str(out), f"wisefile={paths['allwise']}",
            f"bestnbfile={paths['bestnb']}", "clobber=yes", "verbose=0", "mode=h"]

    def run():
        with quiet():
            rc = main(argv)
        if rc != 0:
            raise NotAvailable(f"stk_match exit {rc}")
        return rc

    t, _ = median_time(run, repeats)
    return t, argv


def bench_match(quick):
    repeats = 2 if quick else 5
    rows = []
    big_det, big_gaia = (1000, 30_000) if quick else (3000, 100_000)
    with tempfile.TemporaryDirectory(prefix="stkbench_m_") as tmp, private_pfiles():
        t0 = time.perf_counter()
        big = _sim(big_det, big_gaia, seed=SEED)
        t_sim = time.perf_counter() - t0
        rows.append([f"simulate {big_det} x {big_gaia} (core)", fmt_s(t_sim), "-"])
        try:
            from stk_astrometry.matching import match_stack

            det, gaia, config = match_inputs(big)
            t_core, _ = median_time(lambda: match_stack(det, gaia, config), repeats)
            rows.append([f"match core {big_det} x {big_gaia}", fmt_s(t_core), f"{t_core / 1.0:.2f}"])
        except (ImportError, TypeError, NotAvailable) as exc:
            rows.append([f"match core {big_det} x {big_gaia}", na(str(exc)[:70]), "-"])
        try:
            t_main, _ = _match_main_time(big, tmp, repeats, label="big")
            rows.append([f"stk_match main() {big_det} x {big_gaia}", fmt_s(t_main),
                         f"{t_main / 1.0:.2f}"])
        except NotAvailable as exc:
            rows.append([f"stk_match main() {big_det} x {big_gaia}", na(str(exc)), "-"])
        # A typical stack: run time without interpreter start-up (warm, in-process).
        typical = _sim(50, 5000, seed=SEED + 1)
        try:
            t_typ, argv = _match_main_time(typical, tmp, repeats * 3, label="typical")
            rows.append(["stk_match main() 50 x 5,000 (warm)", fmt_s(t_typ), f"{t_typ:.3f}"])
            env = tool_env(tmp)
            t_sub = median_command([sys.executable, str(BIN / "stk_match"), *argv], env, repeats,
                                   expect=0)
            rows.append(["bin/stk_match 50 x 5,000 (subprocess)", fmt_s(t_sub), f"{t_sub:.3f}"])
        except NotAvailable as exc:
            rows.append(["stk_match main() 50 x 5,000", na(str(exc)), "-"])
    print_table("stk_match size (median wall time; ratio to the 1 s target)",
                ["case", "median", "x 1 s"], rows,
                notes=[(f"{repeats} repeats; main() includes reading the FITS inputs and writing "
                        "the pairs file; WISE + best neighbours included"),
                       "quick mode uses 1,000 x 30,000" if quick else "target: <= 1 s"])


# --------------------------------------------------------------------------- 3. stk_update_wcs


def _update_param_names():
    """(required parameter names, all names) of stk_update_wcs, from its par file."""
    par = PARAM / "stk_update_wcs.par"
    if not par.exists():
        raise NotAvailable("param/stk_update_wcs.par missing")
    names, required = [], []
    for line in par.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(",")
        names.append(fields[0])
        if fields[2:3] == ["a"]:
            required.append(fields[0])
    return required, names


def _make_transform(tmp):
    """A real transform file: simulate a stack, run stk_match and stk_xfm in-process."""
    match, xfm = tool_main("stk_match"), tool_main("stk_xfm")
    sim = _sim(50, 5000, seed=SEED + 2, shift_xi_arcsec=0.3, shift_eta_arcsec=-0.2)
    paths = write_sim_inputs(sim, tmp)
    pairs, out = Path(tmp) / "pairs.fits", Path(tmp) / "xfm.fits"
    with quiet():
        rc = match([str(paths["det"]), str(paths["gaia"]), str(pairs), "verbose=0", "mode=h"])
        if rc:
            raise NotAvailable(f"stk_match exit {rc}")
        rc = xfm([str(pairs), str(out), "verbose=0", "mode=h"])
        if rc:
            raise NotAvailable(f"stk_xfm exit {rc}")
    return sim, out


def _event_file(path, target_bytes, sim, rng):
    """An event file of about ``target_bytes`` built by synthprod."""
    try:
        from stk_astrometry import synthprod
    except ImportError as exc:
        raise NotAvailable("stk_astrometry.synthprod missing") from exc
    kinds = getattr(synthprod, "PRODUCT_KINDS", ())
    kind = next((k for k in ("EVT3", "STKEVT3", "evt3", "stkevt3") if k in kinds), None)
    if kind is None:
        raise NotAvailable(f"no event-file kind in synthprod.PRODUCT_KINDS {tuple(kinds)[:4]}")
    # Measure the row size on a small file, then scale.
    probe = path.with_name("probe_evt3.fits")
    synthprod.write_product(kind, probe, ra_nom=sim.config.ra_stack_deg,
                            dec_nom=sim.config.dec_stack_deg, instrument="ACIS", band="b",
                            nrows=20_000, rng=rng)
    probe_small = path.with_name("probe0_evt3.fits")
    synthprod.write_product(kind, probe_small, ra_nom=sim.config.ra_stack_deg,
                            dec_nom=sim.config.dec_stack_deg, instrument="ACIS", band="b",
                            nrows=10_000, rng=rng)
    per_row = (probe.stat().st_size - probe_small.stat().st_size) / 10_000
    overhead = probe_small.stat().st_size - per_row * 10_000
    probe.unlink()
    probe_small.unlink()
    nrows = max(int((target_bytes - overhead) / max(per_row, 1.0)), 1)
    synthprod.write_product(kind, path, ra_nom=sim.config.ra_stack_deg,
                            dec_nom=sim.config.dec_stack_deg, instrument="ACIS", band="b",
                            nrows=nrows, rng=rng)
    return path


def _update_argv(required, names, infile, xfmfile, outdir):
    """argv for stk_update_wcs: in place when ``outdir`` is None, else copy mode into ``outdir``.

    Parameter names are taken from the tool's par file: the transform goes to the
    parameter naming a transform, the output directory to the one starting 'out'.
    """
    values = {}
    for name in required:
        low = name.lower()
        if "xfm" in low or "transform" in low:
            values[name] = str(xfmfile)
        elif low.startswith("out"):
            values[name] = "" if outdir is None else str(outdir)
        else:
            values[name] = str(infile)
    if outdir is not None and not any(n.lower().startswith("out") for n in values):
        raise NotAvailable(f"no output parameter for copy mode among {', '.join(names)}")
    argv = [f"{k}={v}" for k, v in values.items()]
    if "clobber" in names:
        argv.append("clobber=yes")
    # Explicit, because a hidden value given on an earlier command line may have been learned.
    for name in ("inverse", "dryrun"):
        if name in names:
            argv.append(f"{name}=no")
    return [*argv, "verbose=0", "mode=h"]


def _check_applied(path, expected):
    """Make sure a timed run really edited the file: the EVENTS header records the transform."""
    from astropy.io import fits

    applied = "STKXFMID" in fits.getheader(path, "EVENTS")
    if applied != expected:
        raise NotAvailable(f"{path.name}: transform {'not ' if expected else ''}recorded after the run")


def bench_update(quick):
    big_bytes = (100 if quick else 1000) * 2**20
    small_bytes = 2**20
    repeats = 2 if quick else 3
    rows = []
    notes = []
    tmp = tempfile.mkdtemp(prefix="stkbench_u_", dir="/tmp")
    try:
        with private_pfiles():
            required, names = _update_param_names()
            if "inverse" not in names:
                raise NotAvailable("stk_update_wcs has no inverse parameter to undo between runs")
            update = tool_main("stk_update_wcs")
            sim, xfm = _make_transform(tmp)
            rng = np.random.default_rng(SEED)
            free = shutil.disk_usage(tmp).free
            if free < 3.2 * big_bytes:
                raise NotAvailable(f"only {free / 2**30:.1f} GiB free in /tmp")
            t0 = time.perf_counter()
            small = _event_file(Path(tmp) / "small_evt3.fits", small_bytes, sim, rng)
            big = _event_file(Path(tmp) / "big_evt3.fits", big_bytes, sim, rng)
            t_make = time.perf_counter() - t0
            big_mib = big.stat().st_size / 2**20
            notes.append(f"event files: {small.stat().st_size / 2**20:.1f} MiB and {big_mib:.0f} MiB "
                         f"(synthprod EVT3, built in {t_make:.0f} s); transform from "
                         "simulate -> stk_match -> stk_xfm")

            def run(argv, what):
                with quiet():
                    t0 = time.perf_counter()
                    rc = update(argv)
                    elapsed = time.perf_counter() - t0
                if rc:
                    raise NotAvailable(f"stk_update_wcs exit {rc} ({what})")
                return elapsed

            def in_place(path):
                # The first apply may have to grow a header (streamed rewrite, timed apart);
                # after it every header has spare blocks.  Then apply, undo (inverse=yes, not
                # timed), apply...: every timed run really edits the file.
                argv = _update_argv(required, names, path, xfm, None)
                undo = ["inverse=yes" if a == "inverse=no" else a for a in argv]
                inode = path.stat().st_ino
                first = run(argv, f"first apply on {path.name}")
                first_rewrote = path.stat().st_ino != inode
                run(undo, f"undo on {path.name}")
                times = []
                rewrites = 0
                for _ in range(repeats):
                    inode = path.stat().st_ino
                    times.append(run(argv, f"in place on {path.name}"))
                    rewrites += path.stat().st_ino != inode  # renamed into place = full rewrite
                    _check_applied(path, True)
                    run(undo, f"undo on {path.name}")
                    _check_applied(path, False)
                return statistics.median(times), f"{rewrites}/{repeats}", first, first_rewrote

            t_small, rw_small, first_small, fr_small = in_place(small)
            t_big, rw_big, first_big, fr_big = in_place(big)
            rows.append([f"in place, {small.stat().st_size / 2**20:.1f} MiB event file",
                         fmt_s(t_small), "1.0", rw_small])
            rows.append([f"in place, {big_mib:.0f} MiB event file", fmt_s(t_big),
                         f"{t_big / t_small:.1f}", rw_big])
            rows.append([f"first apply, {small.stat().st_size / 2**20:.1f} MiB (header may grow)",
                         fmt_s(first_small), f"{first_small / t_small:.1f}",
                         "1/1" if fr_small else "0/1"])
            rows.append([f"first apply, {big_mib:.0f} MiB (header may grow)", fmt_s(first_big),
                         f"{first_big / t_small:.1f}", "1/1" if fr_big else "0/1"])

            env = tool_env(tmp)
            out_dir = Path(tmp) / "copy"
            t_cp = []
            for _ in range(repeats):
                out_dir.mkdir()
                t_cp.append(run_command(["cp", str(big), str(out_dir / big.name)], env, expect=0)[0])
                shutil.rmtree(out_dir)
            t_cp = statistics.median(t_cp)
            # copy mode fsyncs what it writes (a crash must not leave a half-written copy);
            # plain cp does not, so also time cp followed by an fsync of the copy (sync FILE)
            t_cps = []
            for _ in range(repeats):
                out_dir.mkdir()
                dst = out_dir / big.name
                t_cps.append(run_command(["sh", "-c", f'cp "{big}" "{dst}" && sync "{dst}"'],
                                         env, expect=0)[0])
                shutil.rmtree(out_dir)
            t_cps = statistics.median(t_cps)
            argv = _update_argv(required, names, big, xfm, out_dir)
            t_copy = []
            for _ in range(repeats):
                out_dir.mkdir()
                t_copy.append(run(argv, "copy mode"))
                if not (out_dir / big.name).exists() and not any(out_dir.rglob(big.name)):
                    raise NotAvailable(f"copy mode wrote no {big.name} under outdir")
                shutil.rmtree(out_dir)
            t_copy = statistics.median(t_copy)
            rows.append([f"cp of the {big_mib:.0f} MiB file", fmt_s(t_cp), "1.0", "-"])
            rows.append([f"cp + fsync of the {big_mib:.0f} MiB file", fmt_s(t_cps),
                         f"{t_cps / t_cp:.2f}", "-"])
            rows.append([f"copy mode (outdir=), {big_mib:.0f} MiB file", fmt_s(t_copy),
                         f"{t_copy / t_cp:.2f}", "-"])
            rows.append(["copy mode / (cp + fsync)", "-", f"{t_copy / t_cps:.2f}", "-"])
    except NotAvailable as exc:
        rows.append(["stk_update_wcs", na(str(exc)), "-", "-"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table("stk_update_wcs (median wall time, in-process main(); ratios in the same run)",
                ["case", "median", "ratio", "rewrites"], rows,
                notes=[*notes, (f"{repeats} repeats; in-place and first-apply ratios are to the "
                                "small file's in-place time, copy mode's to cp; the page cache "
                                "is warm for both"),
                       ("first apply: a header without room grows, and the file is rewritten "
                        "once (streamed) with spare blocks in every changed header; later "
                        "applies and undos patch the header blocks in place"),
                       ("rewrites: timed applies that replaced the file (new inode: the header "
                        "had no room, data streamed) rather than patching it in place")])


# --------------------------------------------------------------------------- 4. throughput


def bench_throughput(quick):
    n_stacks = 20 if quick else 200
    rows = []
    try:
        match, xfm = tool_main("stk_match"), tool_main("stk_xfm")
    except NotAvailable as exc:
        print_table("Stacks per second through stk_match + stk_xfm", ["step", "value"],
                    [["all", na(str(exc))]])
        return
    from astropy.io import fits
    from stk_astrometry.simulate import SimConfig, simulate_stack

    rng = np.random.default_rng(SEED)
    t_sim = t_write = t_match = t_fit = 0.0
    pulls, failures = [], 0
    with tempfile.TemporaryDirectory(prefix="stkbench_t_") as tmp, private_pfiles(), quiet():
        for i in range(n_stacks):
            # A mix of fields: sparse to crowded, 10-200 detections, some two-step cases.
            dens = float(np.exp(rng.uniform(np.log(0.5), np.log(50.0))))
            cfg = SimConfig(ndet=int(rng.integers(10, 201)), gaia_density=dens,
                            wise_density=min(dens, 5.0), stack_id=f"acisfJ0000000p000000_{i % 1000:03d}")
            t0 = time.perf_counter()
            sim = simulate_stack(cfg, rng=rng)
            t1 = time.perf_counter()
            folder = Path(tmp) / f"s{i}"
            folder.mkdir()
            paths = write_sim_inputs(sim, folder)
            t2 = time.perf_counter()
            pairs, out = folder / "pairs.fits", folder / "xfm.fits"
            rc = match([str(paths["det"]), str(paths["gaia"]), str(pairs),
                        f"wisefile={paths['allwise']}", f"bestnbfile={paths['bestnb']}",
                        "verbose=0", "mode=h"])
            t3 = time.perf_counter()
            rc2 = xfm([str(pairs), str(out), "verbose=0", "mode=h"]) if rc == 0 else 1
            t4 = time.perf_counter()
            t_sim += t1 - t0
            t_write += t2 - t1
            t_match += t3 - t2
            t_fit += t4 - t3
            if rc or rc2:
                failures += 1
                continue
            with fits.open(out) as hdul:
                row = hdul["STKXFM"].data[0]
                crb = max(sim.truth.crb_xi_arcsec, 1e-3)
                if math.isfinite(crb):
                    pulls.append(abs(float(row["d_xi"]) - sim.truth.d_xi_arcsec) / crb)
            shutil.rmtree(folder)
    done = n_stacks - failures
    rows.append(["stacks", f"{n_stacks} ({failures} failed)"])
    rows.append(["simulate (core)", f"{n_stacks / t_sim:.0f} stacks/s"])
    rows.append(["write inputs (4 FITS tables)", f"{n_stacks / t_write:.1f} stacks/s"])
    rows.append(["stk_match main()", f"{n_stacks / t_match:.1f} stacks/s"])
    rows.append(["stk_xfm main()", f"{n_stacks / t_fit:.1f} stacks/s" if done else na("all failed")])
    rows.append(["match + fit", f"{n_stacks / (t_match + t_fit):.1f} stacks/s"])
    rows.append(["10,000 stacks, match + fit, 1 core",
                 f"{10_000 * (t_match + t_fit) / n_stacks / 60:.1f} min"])
    if pulls:
        rows.append(["median |d_xi - true| / CRB (sanity)", f"{statistics.median(pulls):.2f}"])
    print_table("Stacks per second through stk_match + stk_xfm (in-process mains)",
                ["step", "value"], rows,
                notes=[("simulated stacks: 10-200 detections, Gaia 0.5-50 per arcmin^2 "
                        "(log-uniform), ALLWISE and best neighbours included")])


# --------------------------------------------------------------------------- 5. the cores


def _core_stacks(quick):
    """Pair-level stacks of every accuracy-benchmark case (bench_accuracy's simulation)."""
    import bench_accuracy

    rng = np.random.default_rng(SEED)
    per_case = 4 if quick else 25
    return [(case.name, bench_accuracy.simulate_stack(rng, case))
            for case in bench_accuracy.CASES for _ in range(per_case)]


def _spec_inputs(leg, leg_index):
    from stk_astrometry.xfmfit import _weights, PairSet

    pairs = PairSet(region_id=leg.det, src_xi=leg.src_xi, src_eta=leg.src_eta, d_xi=leg.d_xi,
                    d_eta=leg.d_eta, sep=leg.sep, group=leg.group, err_r0=leg.err_r0,
                    err_r1=leg.err_r1, err_ang=leg.err_ang, ref_sigra=leg.ref_sigra,
                    ref_sigdec=leg.ref_sigdec)
    if leg_index == 0:
        weighting = "det" if np.all(leg.ref_sigra == 0) else "combined"
    else:
        weighting = "ref"
    w, var1 = _weights(pairs, weighting)
    return pairs, weighting, w, var1


def _mixture_problem(leg, mixture=None):
    """The mixture's internal problem for a leg, as fit_mixture builds it (to time the start),
    with today's module or the one given (``START_BASELINE``'s has the same two names)."""
    if mixture is None:
        from stk_astrometry import mixture

    cov, _ = mixture._floor_covariances(leg.cov.copy())
    order = np.lexsort((leg.d_eta, leg.d_xi, leg.det))
    _, det = np.unique(leg.det[order], return_inverse=True)
    return mixture._Problem(det, leg.d_xi[order], leg.d_eta[order], cov[order],
                            leg.density / 3600.0, 3.0, 5.0)


#: main as it was when issue 11 was filed (the parent of its first commit, c4d227b): its start
#: search was 65 % of the mixture fit's CPU -- the issue's "two thirds of its cost today"
START_BASELINE = "18874fd"
#: issue 11: the start search "coarse-to-fine or otherwise cut"; judged here as cut by two
#: thirds (3x cheaper on the same legs), with the same results (test_mixture's exhaustive-search
#: tests and bench_accuracy --baseline)
START_CUT = 3.0


def _start_baseline():
    """START_BASELINE's mixture module (bench_accuracy.load_baseline), or the reason it is not
    available (no git history, e.g. an exported tree)."""
    import subprocess

    import bench_accuracy

    try:
        folder, _, mixture = bench_accuracy.load_baseline(START_BASELINE)
    except (OSError, ImportError, subprocess.CalledProcessError) as exc:
        return None, None, f"git archive {START_BASELINE} failed: {exc}"
    return folder, mixture, ""


def bench_cores(quick):
    """Spec fit: the direct solver against least_squares, interleaved stack by stack in one
    run; the mixture fit and the share of its start.  Returns the number of missed targets."""
    from stk_astrometry.mixture import _start_by_grid, fit_mixture
    from stk_astrometry.xfmfit import fit_leg_spec, fit_translation

    stacks = _core_stacks(quick)
    fit_translation([0.0] * 3, [0.0] * 3, [0.1, 0.2, 0.3], [0.0] * 3, [1.0] * 3,
                    solver="least_squares")     # warm-up: imports scipy.optimize
    base_folder, base_mixture, base_why = _start_baseline()
    t = {"fast": 0.0, "ls": 0.0, "leg_fast": 0.0, "leg_ls": 0.0, "mix": 0.0, "mix_start": 0.0,
         "start_now": 0.0, "start_base": 0.0}
    worst = 0.0
    n_fits = n_direct = n_mix = 0
    for _name, legs in stacks:
        for i, leg in enumerate(legs):
            pairs, weighting, w, var1 = _spec_inputs(leg, i)
            zeros = np.zeros(len(pairs))
            # the solvers compared with the sandwich sigma: the calibrated bootstrap (issue 14)
            # costs both the same and depends on the minimum only
            kw = {"var_1sigma": var1, "cluster": leg.det, "sigma": "sandwich"}
            results = {}
            for solver, key in (("auto", "fast"), ("least_squares", "ls")):
                t0 = time.perf_counter()
                results[key] = fit_translation(zeros, zeros, leg.d_xi, leg.d_eta, w,
                                               solver=solver, **kw)
                t[key] += time.perf_counter() - t0
            for solver, key in (("auto", "leg_fast"), ("least_squares", "leg_ls")):
                t0 = time.perf_counter()
                fit_leg_spec(pairs, weighting=weighting, n_groups=3, use_groups=i == 0,
                             solver=solver)
                t[key] += time.perf_counter() - t0
            a, b = results["fast"], results["ls"]
            n_fits += 1
            n_direct += a.nfev == 0
            diffs = [abs(a.d_xi - b.d_xi), abs(a.d_eta - b.d_eta)]
            if np.isfinite(a.d_xi_err):
                diffs += [abs(a.d_xi_err - b.d_xi_err), abs(a.d_eta_err - b.d_eta_err)]
            worst = max(worst, *diffs)
            t0 = time.perf_counter()
            fit_mixture(leg.det, leg.d_xi, leg.d_eta, leg.cov, density_per_arcmin2=leg.density,
                        match_radius_arcsec=3.0)
            t["mix"] += time.perf_counter() - t0
            prob = _mixture_problem(leg)
            t0 = time.perf_counter()
            _start_by_grid(prob, 1.0)
            t["mix_start"] += time.perf_counter() - t0
            if base_mixture is not None:
                # the same leg's start with today's code and the filing's, in turn first
                pair = [("start_now", prob, _start_by_grid),
                        ("start_base", _mixture_problem(leg, base_mixture),
                         base_mixture._start_by_grid)]
                for key, problem, start in pair if n_mix % 2 else pair[::-1]:
                    t0 = time.process_time()
                    start(problem, 1.0)
                    t[key] += time.process_time() - t0
            n_mix += 1
    if base_folder is not None:
        shutil.rmtree(base_folder, ignore_errors=True)
    spec_ratio = t["ls"] / t["fast"]
    missed = 0
    rows = []
    ok = spec_ratio >= 3.0 and worst <= 1e-9
    missed += not ok
    rows.append(["spec fit (fit_translation): least_squares / direct",
                 f"{spec_ratio:.2f}x", f"{'PASS' if ok else 'FAIL'} >= 3x, same minimum"])
    rows.append(["  max |direct - least_squares| (shift, sigma)", f"{worst:.1e}\"",
                 "<= 1e-9\""])
    rows.append(["  fits decided by the direct solver (certificate)",
                 f"{n_direct}/{n_fits}", "-"])
    rows.append(["spec leg (fit_leg_spec, with group selection)",
                 f"{t['leg_ls'] / t['leg_fast']:.2f}x", "-"])
    rows.append(["spec fit per leg: direct | least_squares",
                 f"{1e3 * t['fast'] / n_fits:.2f} | {1e3 * t['ls'] / n_fits:.2f} ms", "-"])
    rows.append(["mixture fit per leg | its start (grid + refinement)",
                 f"{1e3 * t['mix'] / n_mix:.2f} | {1e3 * t['mix_start'] / n_mix:.2f} ms",
                 f"start {t['mix_start'] / t['mix']:.0%} of the fit"])
    if base_mixture is None:
        rows.append([f"start search: at issue 11's filing ({START_BASELINE}) / now",
                     na(base_why), f">= {START_CUT:g}x"])
    else:
        cut = t["start_base"] / t["start_now"]
        ok = cut >= START_CUT
        missed += not ok
        rows.append([f"start search: at issue 11's filing ({START_BASELINE}) / now, same legs",
                     f"{cut:.2f}x ({1e3 * t['start_base'] / n_mix:.2f} -> "
                     f"{1e3 * t['start_now'] / n_mix:.2f} ms CPU)",
                     f"{'PASS' if ok else 'FAIL'} >= {START_CUT:g}x (a two-thirds cut)"])
    print_table("The cores side by side (issue 11): each stack fitted both ways, interleaved",
                ["measure", "value", "target"], rows,
                notes=[f"{len(stacks)} stacks of bench_accuracy's cases (both legs of two-step "
                       "stacks); one least_squares fit first, untimed (scipy import)"])
    return missed


# --------------------------------------------------------------------------- 6. per-stack path

#: Issue 11's targets.
API_STACKS_PER_S = 50.0
MAINS_OVER_API = 1.25
PROCESS_OVER_NUMPY = 4.0


def _stack_mix(n, rng, folder):
    """The throughput benchmark's mix of stacks, written as input files."""
    from stk_astrometry.simulate import SimConfig, simulate_stack

    stacks = []
    for i in range(n):
        dens = float(np.exp(rng.uniform(np.log(0.5), np.log(50.0))))
        cfg = SimConfig(ndet=int(rng.integers(10, 201)), gaia_density=dens,
                        wise_density=min(dens, 5.0),
                        stack_id=f"acisfJ0000000p000000_{i % 1000:03d}")
        sim = simulate_stack(cfg, rng=rng)
        sub = Path(folder) / f"s{i}"
        sub.mkdir()
        stacks.append((sub, write_sim_inputs(sim, sub), cfg.ndet))
    return stacks


def _mains_argv(folder, p, tag):
    """The ``stk_match`` and ``stk_xfm`` command lines of one stack of :func:`_stack_mix`
    (outputs ``pairs_TAG.fits`` and ``xfm_TAG.fits`` in its folder), for today's tools and
    the filing tree's alike."""
    pairs = str(Path(folder) / f"pairs_{tag}.fits")
    return ([str(p["det"]), str(p["gaia"]), pairs, f"wisefile={p['allwise']}",
             f"bestnbfile={p['bestnb']}", "clobber=yes", "verbose=0", "mode=h"],
            [pairs, str(Path(folder) / f"xfm_{tag}.fits"), "clobber=yes", "verbose=0",
             "mode=h"])


@contextlib.contextmanager
def _one_core():
    """Pin this process to one CPU (the target is per core); a no-op where unsupported."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})
    except (AttributeError, OSError):
        yield "not pinned"
        return
    try:
        yield f"pinned to CPU {min(before)}"
    finally:
        os.sched_setaffinity(0, before)


class FilingMains:
    """Issue 11's filing tree (:data:`START_BASELINE`): its tools' ``main(argv)`` in one
    process on the same stacks as today's API, one round at a time, each beside a round of
    the API, so the speed-up is a ratio measured in one run (the shared machine's own speed,
    which swings by a third between spells, mostly cancels).

    The tree's ``lib`` and ``param`` are extracted with ``git archive``; a child process
    (:mod:`_filing_mains`, the tree's package first on its path) warms up on the stacks, then
    runs a round at each :meth:`round`.  It inherits the caller's CPU affinity (pinned: the
    same core as the API's rounds).  Raises NotAvailable where the tree cannot be had (no git
    history, e.g. an exported tree) or its tools fail.
    """

    def __init__(self, stacks, folder):
        self.stacks, self.folder = stacks, Path(folder)
        self.proc = self.tree = self.err = None

    def __enter__(self):
        import json
        import subprocess

        try:
            self.tree = extract_revision(START_BASELINE, "lib", "param",
                                         prefix="stk_bench_filing.")
        except (OSError, subprocess.CalledProcessError) as exc:
            raise NotAvailable(f"git archive {START_BASELINE} failed: {exc}") from exc
        listing = self.folder / "filing_stacks.json"
        listing.write_text(json.dumps([(str(f), *_mains_argv(f, p, "filing"))
                                       for f, p, _ in self.stacks]))
        (self.tree / "pfiles").mkdir()
        env = dict(os.environ, PYTHONPATH=str(self.tree / "lib"),
                   PFILES=f"{self.tree / 'pfiles'};{self.tree / 'param'}")
        env.pop("UPARM", None)
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_filing_mains.py"), str(listing)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)
        try:
            self._answer("ready")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _answer(self, expect=None):
        line = self.proc.stdout.readline().strip()
        if not line or (expect and line != expect):
            self.err.seek(0)
            tail = (self.err.read().strip().splitlines() or [line or "no output"])[-1]
            raise NotAvailable(f"the {START_BASELINE} tools failed: {tail[:60]}")
        return line

    def round(self):
        """One round over the stacks: (wall, CPU) seconds, timed in the child."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        wall, cpu = self._answer().split()
        return float(wall), float(cpu)

    def __exit__(self, *exc):
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except Exception:       # noqa: BLE001 -- whatever stops the wait, the child goes
                self.proc.kill()
                self.proc.wait()
        if self.err is not None:
            self.err.close()
        if self.tree is not None:
            shutil.rmtree(self.tree, ignore_errors=True)
        return False


def bench_per_stack(quick):
    """Issue 11's per-stack targets; returns the list of missed targets."""
    import logging

    from stk_astrometry import api

    n = 20 if quick else 100
    rounds = 2 if quick else 3
    rng = np.random.default_rng(SEED + 11)
    rows, missed = [], []
    match_main, xfm_main = tool_main("stk_match"), tool_main("stk_xfm")
    with tempfile.TemporaryDirectory(prefix="stkbench_api_") as tmp, private_pfiles():
        stacks = _stack_mix(n, rng, tmp)

        def api_one(folder, p):
            # the pairs file is written for the tools and the record; the fit takes the
            # same pairs in memory, as stk_batch's task does (the same transform)
            m = api.match_stack(p["det"], p["gaia"], folder / "pairs_api.fits",
                                wisefile=p["allwise"], bestnbfile=p["bestnb"], clobber=True)
            api.fit_stack(m, folder / "xfm_api.fits", clobber=True)

        def run_api():
            for folder, p, _ in stacks:
                api_one(folder, p)

        def run_api_group():
            # batch-style durability: the same calls, made durable together at the block's end
            with api.deferred_durability():
                run_api()

        def mains_one(folder, p):
            match_argv, xfm_argv = _mains_argv(folder, p, "main")
            rc = match_main(match_argv)
            rc2 = xfm_main(xfm_argv)
            if rc or rc2:
                raise NotAvailable(f"a tool failed on {folder} ({rc}, {rc2})")

        def run_mains():
            for folder, p, _ in stacks:
                mains_one(folder, p)

        def run_side_by_side():
            # the API and the mains take turns stack by stack (each first on every other
            # stack), so both see the same machine: a round of each, one after the other, saw
            # the machine's speed change between them (mains / API 1.34x in one run, 1.13-1.17x
            # in the runs beside it, as the CPU time said too)
            wall, cpu = {api_one: 0.0, mains_one: 0.0}, {api_one: 0.0, mains_one: 0.0}
            for i, (folder, p, _) in enumerate(stacks):
                for one in ((api_one, mains_one) if i % 2 == 0 else (mains_one, api_one)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    one(folder, p)
                    wall[one] += time.perf_counter() - t0
                    cpu[one] += time.process_time() - c0
            return wall[api_one], cpu[api_one], wall[mains_one], cpu[mains_one]

        pkg = logging.getLogger("stk_astrometry")
        level = pkg.level
        pkg.setLevel(logging.ERROR)        # the API logs; a user's handler is not timed here
        try:
            with _one_core() as pinned, quiet(), contextlib.ExitStack() as later:
                run_api()
                run_mains()                # warm both paths
                t_api, t_mains, t_group, c_api, c_group, c_mains = [], [], [], [], [], []
                for _ in range(rounds):
                    wall_api, cpu_api, wall_mains, cpu_mains = run_side_by_side()
                    t0, c0 = time.perf_counter(), time.process_time()
                    run_api_group()
                    t_group.append(time.perf_counter() - t0)
                    c_group.append(time.process_time() - c0)
                    t_api.append(wall_api)
                    c_api.append(cpu_api)
                    t_mains.append(wall_mains)
                    c_mains.append(cpu_mains)
                # the filing tree's mains, warmed in their own process (on this core), after
                # the target rounds, each of its rounds beside a round of the API for its ratio:
                # the target rounds have the core to themselves, as before the child was added
                # (with its 20 s rounds between them, mains / API was 1.28x and 1.06x in two
                # runs, 1.16x and 1.01x in two without: suggestive, not proof, since a later
                # run without the child still had 1.34x, the machine's speed changing between
                # rounds -- hence the turns stack by stack above)
                filing, filing_why, t_filing = None, "", []
                try:
                    filing = later.enter_context(FilingMains(stacks, tmp))
                except NotAvailable as exc:
                    filing_why = str(exc)
                t_api_f, c_api_f = [], []
                for _ in range(rounds if filing is not None else 0):
                    try:
                        t_filing.append(filing.round())
                    except NotAvailable as exc:
                        filing, filing_why, t_filing = None, str(exc), []
                        break
                    t0, c0 = time.perf_counter(), time.process_time()
                    run_api()
                    t_api_f.append(time.perf_counter() - t0)
                    c_api_f.append(time.process_time() - c0)
        finally:
            pkg.setLevel(level)
        api_rate = n / min(t_api)
        mains_ratio = min(t_mains) / min(t_api)
        rows.append(["in-process API, match + fit, files in and out", f"{api_rate:.1f} stacks/s",
                     f">= {API_STACKS_PER_S:g}", "ok" if api_rate >= API_STACKS_PER_S else "MISSED"])
        rows.append(["  the same by CPU time (process_time)", f"{n / min(c_api):.1f} stacks/s",
                     "-", "-"])
        rows.append([f"  in one deferred_durability block ({n} stacks, one group commit)",
                     f"{n / min(t_group):.1f} stacks/s", "-", "-"])
        rows.append(["  the same by CPU time", f"{n / min(c_group):.1f} stacks/s", "-", "-"])
        rows.append(["  system load (1 min) at the end", f"{os.getloadavg()[0]:.1f}", "-", "-"])
        rows.append(["tools' main(argv) in one process / API", f"{mains_ratio:.2f}x",
                     f"<= {MAINS_OVER_API:g}x", "ok" if mains_ratio <= MAINS_OVER_API else "MISSED"])
        rows.append(["  the same by CPU time (the disk's journal left out)",
                     f"{min(c_mains) / min(c_api):.2f}x", "-", "-"])
        filing_row = (f"issue 11's filing tree ({START_BASELINE}): its tools' main(argv) in one "
                      "process")
        if t_filing:
            filing_rate = n / min(wall for wall, _ in t_filing)
            rows.append([filing_row, f"{filing_rate:.1f} stacks/s", "-", "-"])
            rows.append(["  the API / that (same stacks, rounds side by side)",
                         f"{min(wall for wall, _ in t_filing) / min(t_api_f):.1f}x", "-", "-"])
            rows.append(["  the same by CPU time",
                         f"{min(cpu for _, cpu in t_filing) / min(c_api_f):.1f}x", "-", "-"])
        else:
            rows.append([filing_row, na(filing_why), "-", "-"])
        if api_rate < API_STACKS_PER_S:
            missed.append("API stacks/s")
        if mains_ratio > MAINS_OVER_API:
            missed.append("mains / API")

        # One process per tool on a typical stack (the one nearest 90 detections).
        folder, p, _ = min(stacks, key=lambda s: abs(s[2] - 90))
        env = tool_env(tmp)
        py = sys.executable
        repeats = 3 if quick else 7
        base = median_command([py, "-c", "import numpy"], env, repeats, expect=0)
        t_match = median_command(
            [py, str(BIN / "stk_match"), str(p["det"]), str(p["gaia"]),
             str(folder / "pairs_proc.fits"), f"wisefile={p['allwise']}",
             f"bestnbfile={p['bestnb']}", "clobber=yes", "verbose=0", "mode=h"],
            env, repeats, expect=0)
        t_xfm = median_command(
            [py, str(BIN / "stk_xfm"), str(folder / "pairs_proc.fits"),
             str(folder / "xfm_proc.fits"), "clobber=yes", "verbose=0", "mode=h"],
            env, repeats, expect=0)
        rows.append(['python -c "import numpy"', fmt_s(base), "1.0", "-"])
        for name, t in (("stk_match", t_match), ("stk_xfm", t_xfm)):
            ok = t / base <= PROCESS_OVER_NUMPY
            rows.append([f"{name}, one process, typical stack", f"{t / base:.1f}x numpy",
                         f"<= {PROCESS_OVER_NUMPY:g}x", "ok" if ok else "MISSED"])
            if not ok:
                missed.append(f"{name} process")
    print_table("Per-stack path (issue 11): API, mains, one process per tool",
                ["case", "measured", "target", "status"], rows,
                notes=[f"{n} stacks of the throughput mix (10-200 detections, Gaia 0.5-50 per "
                       f"arcmin^2, ALLWISE included); best of {rounds} rounds, "
                       f"{pinned}; in each round the API and the mains take turns stack by "
                       "stack (the same machine for both), then the deferred block",
                       "the API and the mains write the same files (pairs + transform); the "
                       "API's fit takes match_stack's result in memory (stk_batch's way: no "
                       "re-read of the pairs file it wrote), the mains read the file; the "
                       "mixture runs in every fit (the tool always runs both estimators)",
                       ("the target row is the API as called plainly: every output durable "
                        "on return (2 journal commits per call); the deferred row makes the "
                        "round's outputs durable at its end, as stk_batch does per database "
                        "commit -- informative, not the target"),
                       (f"the filing tree's mains: {START_BASELINE}'s stk_match and stk_xfm "
                        "in a child process on the same core, warmed, its rounds after the "
                        "target rounds, each followed by a round of the API (timed in the "
                        "child); the issue set 50/s when they ran at ~4-9 stacks/s (5.6-12x): "
                        "the ratio is that speed-up, whatever the shared machine's speed in "
                        "the run"),
                       f"one process per tool: median of {repeats} runs through bin/, "
                       "PYTHONPATH=lib, against python -c 'import numpy' in the same run"])
    return missed


def main(quick: bool = False) -> int:
    """Run the speed benchmarks and print their tables; 1 when a target is missed."""
    missed = 0
    for bench in (bench_startup, bench_match, bench_update, bench_throughput, bench_cores,
                  bench_per_stack):
        try:
            result = bench(quick)
        except NotAvailable as exc:
            print_table(bench.__name__, ["status"], [[na(str(exc))]])
            missed += bench is bench_per_stack
            continue
        if isinstance(result, list):
            if result:
                print(f"  TARGETS MISSED: {', '.join(result)}")
            missed += len(result)
        else:
            missed += result or 0
    if missed:
        print(f"{missed} speed target(s) MISSED")
    return 1 if missed else 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="stk_astrometry speed benchmarks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="one section, e.g. per_stack")
    args = parser.parse_args()
    if args.only:
        sys.exit(1 if globals()[f"bench_{args.only}"](args.quick) else 0)
    sys.exit(main(quick=args.quick))
