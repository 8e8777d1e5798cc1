"""stk_update_wcs: apply an stk_xfm transform to the WCS of every data product of a stack.

Rewrites the EQPOS/EQSRC world coordinate systems, the RA/Dec position
keywords and the RA/Dec table columns of every product of specification
§5.6 (per-observation, source region, stack, stack source and master
products), recognised by content and CSC file name.  Sky pixel (X, Y)
positions never change; only their mapping to (RA, Dec) does.  Updates are
atomic, idempotent (a transform is recorded in every HDU it changed and is
not applied twice) and reversible (inverse=yes).  Header-only changes are
written in place under a journal, without reading or rewriting data units.
"""

import logging

from stk_astrometry.runner import run_tool
from stk_astrometry.update import update_files

TOOL = "stk_update_wcs"
logger = logging.getLogger("stk_astrometry.update")


def main(argv=None) -> int:
    """Run the tool; return the exit status."""
    return run_tool(TOOL, argv, _body, description=__doc__)


def _body(params) -> int:
    run = update_files(params, params.history_items())
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s", run.summary)
    else:
        print(run.summary, flush=True)           # verbose=0: the summary line only
    if run.n_failed:
        logger.error("%d of %d file(s) failed (the others were completed; see above)",
                     run.n_failed, len(run.results))
        return 1
    return 0
