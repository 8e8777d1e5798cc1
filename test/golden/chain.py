"""The golden-file chain: the three tools on the bundled sample, and its comparison.

Run by ``test/test_golden.py``; run directly to regenerate the golden files after an
*intended* change of output (review ``git diff --stat test/golden`` and the FITSDiff report
printed first, never regenerate just to make the test pass):

    .venv/bin/python test/golden/chain.py --regenerate

Regeneration refuses to write anything when a regenerated transform (``xfm*.fits``) is more
than 3 sigma (its own reported sigma, on either axis) from the sample's simulated truth: a
snapshot must not freeze a wrong answer.  ``--accept-far-from-truth`` overrides that, for a
change that is known to be right although it moves a fit away from the truth (say why in the
commit).

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


#: A regenerated transform farther than this from the truth (in its own sigmas, either axis) is
#: refused by ``--regenerate``.
TRUTH_SIGMA = 3.0
TRUTH_FILE = f"{STACK}_truth.fits"


def truth_problems(xfm_files, truth_file=None):
    """Why the given transform files disagree with the sample's truth (empty list: they agree).

    Each file's STKXFM TOTAL row (d_xi, d_eta) is compared with the truth header's D_XI, D_ETA
    in units of the row's own d_xi_err, d_eta_err.
    """
    from astropy.io import fits

    truth = fits.getheader(truth_file or REPO / "share" / "sample" / TRUTH_FILE, 0)
    problems = []
    for path in xfm_files:
        with fits.open(path) as hdul:
            rows = hdul["STKXFM"].data
            total = rows[rows["component"] == "TOTAL"][0]
        for axis, true in (("xi", truth["D_XI"]), ("eta", truth["D_ETA"])):
            fitted, sigma = float(total[f"d_{axis}"]), float(total[f"d_{axis}_err"])
            pull = (fitted - true) / sigma if sigma > 0 else float("inf")
            if not abs(pull) <= TRUTH_SIGMA:
                problems.append(f"{Path(path).name}: d_{axis} = {fitted:.4f}\" +- {sigma:.4f} is "
                                f"{pull:+.1f} sigma from the truth {true:.4f}\" (limit {TRUTH_SIGMA:g})")
    return problems


def regenerate(accept_far_from_truth=False):
    """Rerun the chain and rewrite the golden files that changed; returns the exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PFILES"] = f"{tmp}/pfiles;{REPO / 'param'}"
        os.makedirs(f"{tmp}/pfiles")
        work = Path(tmp) / "work"
        work.mkdir()
        outputs = run_chain(work)
        problems = truth_problems(sorted(work / rel for rel in outputs if re.fullmatch(r"xfm\w*\.fits", rel)))
        if problems:
            banner = "!" * 78
            print(banner, file=sys.stderr)
            for line in problems:
                print(f"!! {line}", file=sys.stderr)
            if not accept_far_from_truth:
                print("!! REFUSED: nothing written.  A golden file must not freeze a fit that misses the\n"
                      "!! simulated truth.  Fix the fit, or rerun with --accept-far-from-truth if the\n"
                      "!! change is known to be right (and say why in the commit).", file=sys.stderr)
                print(banner, file=sys.stderr)
                return 1
            print("!! WARNING: writing them anyway (--accept-far-from-truth)", file=sys.stderr)
            print(banner, file=sys.stderr)
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
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "lib"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate", action="store_true", help="rewrite the golden files")
    parser.add_argument("--accept-far-from-truth", action="store_true",
                        help=f"regenerate even if a transform is more than {TRUTH_SIGMA:g} sigma from the truth")
    args = parser.parse_args()
    if args.regenerate:
        sys.exit(regenerate(accept_far_from_truth=args.accept_far_from_truth))
    parser.print_help()
