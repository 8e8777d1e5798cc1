"""stk_xfm: fit a stack's translation to the Gaia frame from stk_match's matched pairs.

Reads the matched-pairs file written by stk_match (share/doc/formats.md §1), fits the
translation of the CSC specification (direct path §5.5.3, or the two-step ALLWISE path
§5.5.4: separation-group selection, weighted least squares with a robust loss per pair),
estimates its 1-sigma uncertainty, raises the QA flags of §5.5.3/§5.5.4/§5.7, and writes
the transform as an HDU STKXFM in the layout of the CIAO transform file (formats.md §2).
Optionally writes every detection corrected (outdetfile) and a diagnostics copy of the
pairs (diagfile).  A QA flag is not a failure: the transform is written and the exit
status is 0.

This module is the thin front end: parameters -> :func:`stk_astrometry.api.fit_stack` ->
exit status.  The estimators are wired in :mod:`stk_astrometry.stackfit`, the files laid
out by :mod:`stk_astrometry.formats`.
"""

from stk_astrometry.errors import ParameterError
from stk_astrometry.runner import run_tool

TOOL = "stk_xfm"

_FIT_KEYWORDS = ("outdetfile", "diagfile", "estimator", "loss", "f_scale", "max_shift",
                 "min_group_matches", "sys_floor", "syserr", "include", "exclude", "qa_density",
                 "qa_dense_nmatch", "qa_max_shift", "qa_few_matches", "qa_theta", "qa_counts",
                 "qa_few_shift", "clobber")


def main(argv=None) -> int:
    """Run stk_xfm; return the exit status."""
    return run_tool(TOOL, argv, _body, description=__doc__)


def _blank(value) -> bool:
    return value is None or str(value).strip() == ""


def _body(params):
    from stk_astrometry import api

    for name in ("infile", "outfile"):
        if _blank(params[name]):
            raise ParameterError(f"{name} is blank")
    api.fit_stack(str(params["infile"]).strip(), str(params["outfile"]).strip(),
                  history=params, **{name: params[name] for name in _FIT_KEYWORDS})
    return 0

