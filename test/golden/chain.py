"""The golden-file chain: the three tools on the bundled sample, and its comparison.

Run by ``test/test_golden.py``; run directly to regenerate the golden files after an
*intended* change of output (review ``git diff --stat test/golden`` and the FITSDiff report
printed first, never regenerate just to make the test pass):

    .venv/bin/python test/golden/chain.py --regenerate

The chain runs in a scratch folder holding a copy of ``share/sample`` as ``sample/``, with
relative paths, so the HISTORY records (which hold the parameters) are the same in every run.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent
STACK = "acisfJ1236480p621200_001"

#: Keywords FITSDiff ignores; HISTORY and CREATOR are compared separately, without their
#: time stamps and version (see ``normalised_history``/``creator_tool``).  HISTNUM counts the
#: HISTORY records, which is checked through HISTORY itself.
IGNORE_KEYWORDS = ["DATE", "CHECKSUM", "DATASUM", "CREATOR", "HISTORY", "HISTNUM"]
#: Numeric tolerances: fitted values come from iterative solvers and BLAS, whose last bits may
#: differ between platforms and library versions; 1e-9 relative is ~1e-10" on a 0.3" shift.
RTOL = 1e-9
ATOL = 1e-12

_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@contextmanager
def _cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_chain(workdir):
    """Run stk_match -> stk_xfm (spec and mixture) -> stk_update_wcs on a copy of the sample.

    Returns the list of output FITS files, relative to ``workdir``.
    """
    from stk_astrometry.tools.stk_match import main as stk_match
    from stk_astrometry.tools.stk_update_wcs import main as stk_update_wcs
    from stk_astrometry.tools.stk_xfm import main as stk_xfm

    workdir = Path(workdir)
    shutil.copytree(REPO / "share" / "sample", workdir / "sample")
    shutil.copytree(workdir / "sample" / "products", workdir / "products")
    s = f"sample/{STACK}"
    steps = [
        (stk_match, [f"{s}_det.fits", f"{s}_gaia.fits", "pairs.fits", f"wisefile={s}_allwise.fits",
                     f"bestnbfile={s}_bestnb.fits"]),
        (stk_xfm, ["pairs.fits", "xfm.fits", "outdetfile=det_corrected.fits", "diagfile=diag.fits"]),
        (stk_xfm, ["pairs.fits", "xfm_mixture.fits", "estimator=mixture"]),
        (stk_update_wcs, ["products", "xfm.fits", "outdir="]),
    ]
    with _cwd(workdir):
        for tool, argv in steps:
            status = tool(argv + ["verbose=0", "mode=h"])
            if status != 0:
                raise RuntimeError(f"{tool.__module__} {' '.join(argv)} exited {status}")
    outputs = ["pairs.fits", "xfm.fits", "det_corrected.fits", "diag.fits", "xfm_mixture.fits"]
    outputs += sorted(str(p.relative_to(workdir)) for p in (workdir / "products").rglob("*.fits"))
    return outputs


def normalised_history(path):
    """Per HDU, the HISTORY records with time stamps blanked."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        return [[_TIME.sub("<TIME>", str(v)) for v in h.header.get("HISTORY", [])] for h in hdul]


def creator_tool(path):
    """Per HDU, the CREATOR without its version: 'stk_xfm - stk_astrometry 0.1.0' -> 'stk_xfm'."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        return [str(h.header.get("CREATOR", "")).split(" - ")[0] for h in hdul]


def compare(new, golden):
    """FITSDiff of ``new`` against ``golden`` plus HISTORY/CREATOR checks; returns a report or ''."""
    from astropy.io.fits import FITSDiff

    diff = FITSDiff(str(new), str(golden), ignore_keywords=IGNORE_KEYWORDS, rtol=RTOL, atol=ATOL)
    report = "" if diff.identical else diff.report()
    if normalised_history(new) != normalised_history(golden):
        report += f"\nHISTORY records differ (time stamps ignored) between {new} and {golden}\n"
    if creator_tool(new) != creator_tool(golden):
        report += f"\nCREATOR tool differs: {creator_tool(new)} vs {creator_tool(golden)}\n"
    return report


def regenerate():
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PFILES"] = f"{tmp}/pfiles;{REPO / 'param'}"
        os.makedirs(f"{tmp}/pfiles")
        work = Path(tmp) / "work"
        work.mkdir()
        outputs = run_chain(work)
        changed = 0
        for rel in outputs:
            target = GOLDEN / rel
            if target.exists():
                report = compare(work / rel, target)
                if not report:
                    continue  # unchanged: keep the file (and git) as it is
                print(f"--- {rel} changes:\n{report}")
            else:
                print(f"--- {rel}: new golden file")
            changed += 1
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / rel, target)
        known = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.fits")}
        for stale in sorted(known - set(outputs)):
            print(f"--- {stale}: no longer produced, removed")
            (GOLDEN / stale).unlink()
        print(f"{len(outputs)} outputs compared with {GOLDEN}: {changed} written; review with git diff.")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate", action="store_true", help="rewrite the golden files")
    if parser.parse_args().regenerate:
        regenerate()
    else:
        parser.print_help()
