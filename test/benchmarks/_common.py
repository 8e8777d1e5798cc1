"""Helpers shared by the benchmark modules: paths, timing, tables, simulated inputs.

Benchmarks report ratios measured in the same run wherever possible (absolute
times on a shared machine are noisy) and never invent a number: a row that
cannot be measured prints ``n/a (reason)``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "lib"
BIN = REPO / "bin"
PARAM = REPO / "param"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

TOOLS = ("stk_match", "stk_xfm", "stk_update_wcs", "stk_simulate")


class NotAvailable(Exception):
    """A measurement that cannot be made here; the message says why."""


def extract_revision(rev, *paths, prefix="stk_bench_base."):
    """``paths`` of the repository as they are at git revision ``rev``, extracted (``git
    archive``) into a new temporary folder, which is returned (the caller removes it).
    Raises OSError or subprocess.CalledProcessError where git or the revision is missing."""
    import io
    import tarfile

    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev, *paths],
                         capture_output=True, check=True).stdout
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(folder, filter="data")
    return folder


def na(reason, *, width=70):
    """The cell text for a measurement that could not be made (reason shortened to ``width``)."""
    reason = str(reason)
    if len(reason) > width:
        reason = reason[: width - 3] + "..."
    return f"n/a ({reason})"


def tool_main(name):
    """The in-process ``main`` of a tool, or raise NotAvailable saying why."""
    try:
        module = importlib.import_module(f"stk_astrometry.tools.{name}")
    except ImportError as exc:
        raise NotAvailable(f"{name} not importable: {exc}") from exc
    main = getattr(module, "main", None)
    if main is None:
        raise NotAvailable(f"{name} has no main()")
    return main


def tool_env(pfiles_dir):
    """Environment for running tools as subprocesses from the repository."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(LIB) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PFILES"] = f"{pfiles_dir};{PARAM}"
    env.pop("UPARM", None)
    return env


@contextlib.contextmanager
def private_pfiles():
    """A private PFILES user directory for in-process tool runs (restored afterwards)."""
    old = os.environ.get("PFILES")
    with tempfile.TemporaryDirectory(prefix="stkbench_pf_") as tmp:
        os.environ["PFILES"] = f"{tmp};{PARAM}"
        try:
            yield tmp
        finally:
            if old is None:
                os.environ.pop("PFILES", None)
            else:
                os.environ["PFILES"] = old


@contextlib.contextmanager
def quiet():
    """Silence stdout/stderr of in-process tool runs (their chatter is not the benchmark)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
            contextlib.redirect_stderr(devnull):
        yield


def median_time(fn, repeats, *, warmup=1):
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls; also the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def run_command(argv, env, *, expect=None, expect_stderr=None, timeout=300):
    """Run a command, return (wall seconds, returncode).

    With ``expect`` the exit status is checked, with ``expect_stderr`` that the
    standard error contains that text (so that a crash is never timed as the
    expected failure); a mismatch raises NotAvailable.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - t0
    bad_status = expect is not None and proc.returncode != expect
    bad_text = expect_stderr is not None and (
        expect_stderr not in proc.stderr or "Traceback" in proc.stderr)
    if bad_status or bad_text:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise NotAvailable(f"exit {proc.returncode}: {tail[0][:60]}")
    return elapsed, proc.returncode


def median_command(argv, env, repeats, *, expect=None, expect_stderr=None):
    """Median wall time of a command over ``repeats`` runs (after one warm-up run)."""
    run_command(argv, env, expect=expect, expect_stderr=expect_stderr)
    return statistics.median(
        run_command(argv, env, expect=expect, expect_stderr=expect_stderr)[0]
        for _ in range(repeats))


def fmt_s(seconds):
    """Seconds with a sensible number of digits."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def print_table(title, headers, rows, *, notes=()):
    """Print a fixed-width table: a title, a header line, the rows, then notes."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print()
    print(title)
    print("-" * len(title))
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()


def write_sim_inputs(sim, folder):
    """Write a simulated stack's det/gaia/allwise/bestnb tables as FITS (no HISTORY stamping).

    Returns
    -------
    dict
        ``det``, ``gaia``, ``allwise``, ``bestnb``, ``truth`` -> path.
    """
    from stk_astrometry.simulate import catalog_tables
    from stk_astrometry.simfiles import output_names, table_hdul

    tables = catalog_tables(sim)
    names = output_names(sim.stack_id)
    extnames = {"det": "SRCLIST", "gaia": "GAIA", "allwise": "ALLWISE", "bestnb": "BESTNB",
                "truth": "TRUTH"}
    paths = {}
    for key, ext in extnames.items():
        path = Path(folder) / names[key]
        table_hdul(tables[key], ext).writeto(path, overwrite=True)
        paths[key] = path
    return paths


def match_inputs(sim):
    """The simulated stack as the dataclasses of :mod:`stk_astrometry.matching`."""
    from stk_astrometry import matching

    d = sim.detections
    det = matching.Detections(
        region_id=d.region_id, ra_deg=d.ra_deg, dec_deg=d.dec_deg,
        err_r0_arcsec=d.err_r0_arcsec, err_r1_arcsec=d.err_r1_arcsec, err_ang_deg=d.err_ang_deg,
        theta_arcmin=d.theta_arcmin, src_cnts=d.src_cnts, likelihood_class=d.likelihood_class,
        sat_src_flag=d.sat_src_flag, conv_hull=d.conv_hull, man_inc=d.man_inc,
    )
    g = sim.gaia
    gaia = matching.GaiaSources(source_id=g.source_id, ra_deg=g.ra_deg, dec_deg=g.dec_deg,
                                pmra_masyr=g.pmra_masyr, pmdec_masyr=g.pmdec_masyr)
    config = matching.MatchConfig(ra_stack_deg=sim.config.ra_stack_deg,
                                  dec_stack_deg=sim.config.dec_stack_deg,
                                  r_stack_arcmin=sim.config.r_stack_arcmin)
    return det, gaia, config


def machine_info():
    """Lines describing the machine and the software versions."""
    import platform

    lines = [
        f"date (UTC)   {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}",
        (f"machine      {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
         f"{platform.system()} {platform.release()}"),
    ]
    with contextlib.suppress(OSError):
        lines.append("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    lines.append(f"python       {platform.python_version()} ({sys.executable})")
    versions = []
    for mod in ("numpy", "scipy", "astropy", "fitsio", "tweakwcs"):
        try:
            versions.append(f"{mod} {importlib.import_module(mod).__version__}")
        except ImportError:
            versions.append(f"{mod} not installed")
    lines.append("packages     " + ", ".join(versions))
    try:
        import stk_astrometry

        lines.append(f"stk_astrometry {stk_astrometry.__version__} from {Path(stk_astrometry.__file__).parent}")
    except ImportError as exc:  # pragma: no cover
        lines.append(f"stk_astrometry not importable: {exc}")
    return lines
