"""stk_update_wcs safety and cost targets (issue 15), at full size.

1. 100 runs of two simultaneous stk_update_wcs on one tree (same transform,
   different transforms, apply vs inverse both ways): 0 corrupt files, 0 double
   applications, 0 files left over, every exit status true to what the run did.
2. 200 runs killed with SIGKILL at random moments (a fifth of them inside a
   journal window, held there by the fault hook), each followed by a rerun:
   0 corrupt files, 0 files left after the rerun.
3. An in-place apply over one stack's full product tree costs <= 5x reading the
   same files' headers (astropy, every HDU), measured side by side in one run,
   with every durability step in place (journal fsync, file fsync, folder fsync).

Prints a table; exit status 1 when a target is missed.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _update_race as race  # noqa: E402
from _common import print_table, quiet, tool_main  # noqa: E402

TARGET_RATIO = 5.0


def bench_races(tmp: Path, n_total: int):
    world = race.make_world(tmp / "race_world")
    scenarios = list(race.SCENARIOS)
    rows = []
    misses = 0
    per = {s: [] for s in scenarios}
    for i in range(n_total):
        sc = scenarios[i % len(scenarios)]
        # start the second run 0-0.4 s after the first: they meet at different points
        per[sc].append(race.race(world, sc, i, stagger=(i * 0.037) % 0.4))
    for sc, outs in per.items():
        corrupt = sum(len(o.corrupt) for o in outs)
        wrong = sum(len(o.wrong) for o in outs)
        debris = sum(len(o.debris) for o in outs)
        untrue = sum(len(o.untrue_status) for o in outs)
        statuses = sorted({o.statuses for o in outs})
        bad = corrupt + wrong + debris + untrue
        misses += bad > 0
        rows.append([sc, str(len(outs)), str(corrupt), str(wrong), str(debris), str(untrue),
                     " ".join(f"{a}{b}" for a, b in statuses),
                     f"{statistics.median(o.seconds for o in outs):.1f} s",
                     "ok" if not bad else "MISSED"])
        for o in outs:
            for what in (o.corrupt, o.wrong, o.debris, o.untrue_status):
                for line in what[:3]:
                    print(f"  {sc}: {line}")
    print_table(f"two simultaneous runs on one tree ({n_total} races)",
                ["scenario", "races", "corrupt", "double/wrong", "debris", "untrue exit",
                 "exit statuses seen", "median time", "target"], rows)
    return misses, world


def bench_kills(world, n_kills: int):
    import numpy as np

    rng = np.random.default_rng(20261205)
    # how long an uninterrupted run takes, to spread the kills over it
    import subprocess

    work = world.root / "timing"
    race._start_state(world, "orig", work)
    t0 = time.monotonic()
    subprocess.run(race.argv(work, world.xfm["A"]), env=world.env, capture_output=True,
                   timeout=900, check=True)
    t_full = time.monotonic() - t0
    shutil.rmtree(work)
    corrupt = debris = bad_rerun = journals = 0
    for i in range(n_kills):
        # half the kills on a fresh tree (every file rewritten: temp + rename), half on a
        # tree with room in its headers (patched in place under journals); every fifth held
        # inside a journal window by the fault hook
        start = "orig" if i % 2 == 0 else "AI"
        if i % 5 == 4:
            o = race.kill_and_rerun(world, i, 0.0, fault="journal:30", start="AI")
        else:
            o = race.kill_and_rerun(world, i, float(rng.uniform(0.3, max(t_full, 0.6))),
                                    start=start)
        corrupt += len(o.corrupt)
        debris += len(o.debris)
        bad_rerun += o.rerun_status != 0
        journals += o.journals_seen
        for line in (o.corrupt + o.debris)[:3]:
            print(f"  kill {i} at {o.delay:.2f} s: {line}")
    ok = corrupt == 0 and debris == 0 and bad_rerun == 0
    print_table(f"SIGKILL at random moments, then a rerun ({n_kills} kills; a full run "
                f"takes {t_full:.1f} s)",
                ["kills", "corrupt files", "files left after rerun", "reruns failing",
                 "journals met", "target"],
                [[str(n_kills), str(corrupt), str(debris), str(bad_rerun), str(journals),
                  "ok" if ok else "MISSED"]])
    return 0 if ok else 1


def _read_headers(folder: Path):
    from astropy.io import fits

    n = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".fits", ".gz"):
            with fits.open(p) as hdul:
                for hdu in hdul:
                    n += len(hdu.header)
    return n


def bench_cost(tmp: Path, repeats: int):
    import numpy as np

    from stk_astrometry import synthprod

    tree = tmp / "cost" / "tree"
    synthprod.write_product_tree(tree, ra_nom=race.RA0, dec_nom=race.DEC0,
                                 rng=np.random.default_rng(7))
    xfm = synthprod.write_stkxfm(tmp / "cost" / "xfm.fits", d_xi_arcsec=0.3,
                                 d_eta_arcsec=-0.2, ra_ref_deg=race.RA0,
                                 dec_ref_deg=race.DEC0)
    update = tool_main("stk_update_wcs")
    args = ["outdir=", "verbose=0", "mode=h"]
    with quiet():
        # apply and undo once: the headers get their spare blocks, later applies patch in place
        assert update([str(tree), str(xfm), *args]) == 0
        assert update([str(tree), str(xfm), *args, "inverse=yes"]) == 0
    t_read, t_apply = [], []
    for i in range(repeats):
        work = tmp / "cost" / f"work{i}"
        shutil.copytree(tree, work)
        t0 = time.perf_counter()
        _read_headers(work)
        t_read.append(time.perf_counter() - t0)
        with quiet():
            t0 = time.perf_counter()
            rc = update([str(work), str(xfm), *args])
            t_apply.append(time.perf_counter() - t0)
        assert rc == 0
        shutil.rmtree(work)
    ratios = [a / r for a, r in zip(t_apply, t_read, strict=True)]
    ratio = statistics.median(ratios)
    n_files = sum(1 for p in tree.rglob("*") if p.is_file())
    ok = ratio <= TARGET_RATIO
    print_table(f"in-place apply vs reading the headers ({n_files} files, one stack's tree; "
                f"median of {repeats}, side by side)",
                ["read every header (astropy)", "in-place apply (in-process)", "ratio",
                 "target"],
                [[f"{statistics.median(t_read):.3f} s", f"{statistics.median(t_apply):.3f} s",
                  f"{ratio:.2f}x", f"<= {TARGET_RATIO:g}x {'ok' if ok else 'MISSED'}"]])
    return 0 if ok else 1


def bench_gzip(tmp: Path, quick: bool):
    """An in-place update of a .fits.gz event list against gzip -c of the same file."""
    import gzip
    import subprocess

    import numpy as np

    from stk_astrometry import synthprod

    folder = tmp / "gz"
    folder.mkdir()
    rows = 200_000 if quick else 2_000_000
    plain = folder / "acisf14031_000N001_evt3.fits"
    synthprod.write_product("EVT3", plain, ra_nom=race.RA0, dec_nom=race.DEC0, nrows=rows,
                            rng=np.random.default_rng(11))
    gz = folder / (plain.name + ".gz")
    with open(plain, "rb") as fin, gzip.open(gz, "wb", compresslevel=6) as fout:
        shutil.copyfileobj(fin, fout, 16 << 20)
    size = plain.stat().st_size
    plain.unlink()
    xfm = synthprod.write_stkxfm(folder / "xfm.fits", d_xi_arcsec=0.3, d_eta_arcsec=-0.2,
                                 ra_ref_deg=race.RA0, dec_ref_deg=race.DEC0)
    update = tool_main("stk_update_wcs")
    t_tool, t_gzip = [], []
    for i in range(2 if quick else 3):
        t0 = time.perf_counter()
        with quiet():
            rc = update([str(gz), str(xfm), "outdir=", "verbose=0", "mode=h"]
                        + (["inverse=yes"] if i % 2 else []))
        t_tool.append(time.perf_counter() - t0)
        assert rc == 0
        t0 = time.perf_counter()
        # what a user would do by hand: decompress, (edit), compress again
        subprocess.run(f"gzip -dc '{gz}' | gzip -c > /dev/null", shell=True, check=True)
        t_gzip.append(time.perf_counter() - t0)
    ratio = statistics.median(t_tool) / statistics.median(t_gzip)
    print_table(f"gzip product updated in place ({size / 1e6:.0f} MB event list, "
                f"{gz.stat().st_size / 1e6:.0f} MB compressed)",
                ["stk_update_wcs in place", "gzip -dc | gzip -c", "ratio"],
                [[f"{statistics.median(t_tool):.2f} s", f"{statistics.median(t_gzip):.2f} s",
                  f"{ratio:.2f}x"]])
    return 0


def main(quick: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="bench_safety.") as d:
        tmp = Path(d)
        status = bench_cost(tmp, 3 if quick else 7)
        status |= bench_gzip(tmp, quick)
        misses, world = bench_races(tmp, 8 if quick else 100)
        status |= 1 if misses else 0
        status |= bench_kills(world, 10 if quick else 200)
    return status


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
