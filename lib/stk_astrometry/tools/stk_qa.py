"""stk_qa: the manual QA review of one stack (spec §5.7.1, §5.7.2).

From the stack image, the matched-pairs file (stk_match) and the transform (stk_xfm):
DS9 region file, postage stamps before/after the correction with the Gaia crosshair fixed
(PNG contact sheet + FITS cutouts), residual plot, an editable selection file for re-fits,
a corrected copy of the image and a DS9 script; with ds9=yes a DS9 review through XPA.
decision=accept|reject records the decision in the transform (QADECIS, QAITER, QAOPER,
QADATE, QANOTE, HISTORY) and in the campaign database; decision=refit re-fits with the
edited selection file, writes the new transform with the decision and reviews it.
Products are never modified.
"""

from __future__ import annotations

import logging

from stk_astrometry.errors import ParameterError
from stk_astrometry.runner import run_tool

logger = logging.getLogger(__name__)

TOOL = "stk_qa"


def main(argv=None) -> int:
    """Run stk_qa; return the exit status."""
    return run_tool(TOOL, argv, _body, description=__doc__)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _body(params):
    from stk_astrometry.fitsutil import same_file
    from stk_astrometry.qa import review_stack

    for name in ("infile", "pairsfile", "transformfile", "outdir"):
        if not _text(params[name]):
            raise ParameterError(f"{name} is blank")
    decision = _text(params["decision"]) or "none"
    if decision == "refit" and not _text(params["selection"]):
        raise ParameterError("decision=refit needs selection= (the edited selection file)")
    if decision != "refit" and _text(params["outfile"]):
        raise ParameterError("outfile is the re-fitted transform: give it with decision=refit")
    outfile = _text(params["outfile"]) or None
    if outfile:
        for name in ("infile", "pairsfile", "transformfile", "selection", "diagfile"):
            if _text(params[name]) and same_file(outfile, _text(params[name]).split("[")[0]):
                raise ParameterError(f"outfile={outfile} is also {name}; choose another name")
    result = review_stack(
        _text(params["infile"]), _text(params["pairsfile"]), _text(params["transformfile"]),
        _text(params["outdir"]), params=params, diagfile=_text(params["diagfile"]) or None,
        selection=_text(params["selection"]) or None, decision=decision,
        operator=_text(params["operator"]), reason=_text(params["reason"]), outfile=outfile,
        max_stamps=int(params["max_stamps"]), stamp_size=float(params["stamp_size"]),
        ds9=bool(params["ds9"]), xpaname=_text(params["xpaname"]) or "ds9",
        database=_text(params["database"]), queue=_text(params["queue"]) or None,
        clobber=bool(params["clobber"]))
    logger.info("Stack %s: %d stamps, median offset from Gaia %.2f\" -> %.2f\" (%d of %d "
                "closer)%s; review files in %s", result.stackid, result.n_stamps,
                result.median_before, result.median_after, result.n_closer, result.n_stamps,
                f"; QA iteration {result.iteration} {result.decision} recorded in "
                f"{result.transform}" if result.decision else "", _text(params["outdir"]))
    return 0
