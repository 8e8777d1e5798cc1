"""Speed and accuracy of stk_qa on the bundled sample (issue 13 target: end to end < 3 s;
the stamps' sources closer to their Gaia crosshairs after the correction).

Side by side in one run, each the median of N runs through ``bin/`` (a fresh interpreter,
as a user runs it): ``stk_qa`` on the sample stack (image, pairs, transform -> region file,
contact sheet, FITS stamps, residual plot, selection file, corrected image, DS9 script),
``stk_xfm`` on the same pairs, and the bare imports stk_qa needs (numpy, astropy FITS/WCS,
matplotlib, regions).  The target is absolute; the ratios say how much of it is stk_qa's own
work on a machine that may be loaded.  Then the measurement the contact sheet shows: the
median offset of the stamps' sources from their crosshairs, before and after.

Run: ``.venv/bin/python test/benchmarks/run.py --only qa`` (or this file).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402  (after the sys.path set-up above)
    BIN,
    REPO,
    fmt_s,
    median_command,
    print_table,
    run_command,
    tool_env,
)

TARGET_S = 3.0
STACK = "acisfJ1236480p621200_001"


def _cpu(argv, env, repeats):
    """Median CPU seconds (user + system) of a command's process tree, after a warm-up run.

    Less sensitive than wall time to other jobs on a shared machine (not immune: caches)."""
    import resource
    import statistics

    run_command(argv, env, expect=0)
    times = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run_command(argv, env, expect=0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(times)


def main(quick: bool = False) -> int:
    repeats = 3 if quick else 7
    sample = REPO / "share" / "sample"
    image = sample / "products" / "stack" / f"{STACK}N029_b_img3.fits"
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="stkbench_qa_") as tmp:
        tmp = Path(tmp)
        env = tool_env(tmp)
        s = sample / STACK
        pairs, xfm = tmp / "pairs.fits", tmp / "xfm.fits"
        run_command([py, str(BIN / "stk_match"), f"{s}_det.fits", f"{s}_gaia.fits",
                     str(pairs), f"wisefile={s}_allwise.fits", f"bestnbfile={s}_bestnb.fits",
                     "mode=h", "verbose=0", "clobber=yes"], env, expect=0)
        run_command([py, str(BIN / "stk_xfm"), str(pairs), str(xfm),
                     f"diagfile={tmp / 'diag.fits'}", "mode=h", "verbose=0", "clobber=yes"],
                    env, expect=0)
        cmd_imports = [py, "-c", "import numpy, astropy.io.fits, astropy.wcs, "
                       "matplotlib.figure, regions"]
        cmd_xfm = [py, str(BIN / "stk_xfm"), str(pairs), str(tmp / "x2.fits"), "mode=h",
                   "verbose=0", "clobber=yes"]
        cmd_qa = [py, str(BIN / "stk_qa"), str(image), str(pairs), str(xfm), str(tmp / "qa"),
                  f"diagfile={tmp / 'diag.fits'}", "mode=h", "verbose=0", "clobber=yes"]
        walls = [median_command(c, env, repeats, expect=0)
                 for c in (cmd_imports, cmd_xfm, cmd_qa)]
        cpus = [_cpu(c, env, repeats) for c in (cmd_imports, cmd_xfm, cmd_qa)]
        from stk_astrometry.qa import stamps
        from stk_astrometry.qa.review import load_review

        review = load_review(pairs, xfm, diagfile=tmp / "diag.fits")
        img = stamps.load_image(image, review)
        meas = stamps.measure(review, img, stamps.choose_stamps(review, img))
        shutil.rmtree(tmp / "qa", ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t_imports, t_xfm, t_qa = walls
    ok_time = t_qa < TARGET_S
    ok_closer = meas.median_after < meas.median_before
    print_table(
        f"stk_qa on the bundled sample (median of {repeats} runs; load average {load:.1f})",
        ["what", "wall", "ratio", "cpu", "ratio", "target"],
        [["imports stk_qa needs (python -c)", fmt_s(walls[0]), f"{walls[0] / walls[1]:.2f}",
          fmt_s(cpus[0]), f"{cpus[0] / cpus[1]:.2f}", ""],
         ["stk_xfm (same pairs)", fmt_s(walls[1]), "1.00", fmt_s(cpus[1]), "1.00", ""],
         ["stk_qa end to end", fmt_s(walls[2]), f"{walls[2] / walls[1]:.2f}", fmt_s(cpus[2]),
          f"{cpus[2] / cpus[1]:.2f}", f"wall < {TARGET_S:g} s: {'PASS' if ok_time else 'FAIL'}"],
         [f"stamps: median offset from Gaia ({meas.rows.size} stamps)",
          f'{meas.median_before:.3f}" -> {meas.median_after:.3f}"',
          f"{meas.median_after / meas.median_before:.2f}", "", "",
          f"after < before: {'PASS' if ok_closer else 'FAIL'}"]],
        notes=[f"{meas.n_closer} of {meas.rows.size} sources closer after the correction; "
               "catalogued positions "
               f'{float(_median(meas.catalog_before)):.3f}" -> '
               f'{float(_median(meas.catalog_after)):.3f}"'])
    return 0 if ok_time and ok_closer else 1


def _median(values):
    import numpy as np

    values = np.asarray(values, dtype=float)
    return np.median(values[np.isfinite(values)])


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv))
