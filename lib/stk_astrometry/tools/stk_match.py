"""stk_match: a stack's matched-pairs file from CSC detections, Gaia and ALLWISE.

Reads the stack's detections, the Gaia sources of its cone and optionally the
ALLWISE sources with the Gaia-ALLWISE best-neighbour table; applies the
specification's filters (sections 5.1, 5.2, 5.5.1), counts sources within
r_stack, finds every detection-reference pair within match_radius, counts
matches per separation group, decides between the direct and two-step paths
(section 5.5.2) and writes one FITS file (HDUs DETECTIONS, GAIA_PAIRS,
WISE_PAIRS, WISE_GAIA) for stk_xfm.

This module is the thin front end: parameters -> :func:`stk_astrometry.api.match_stack`
-> exit status.  The catalogs are read by :mod:`stk_astrometry.formats.catalogs`, the
output laid out by :mod:`stk_astrometry.formats.pairs` (share/doc/formats.md §1); the help
page is share/doc/stk_match.txt.
"""

from stk_astrometry.errors import ParameterError
from stk_astrometry.runner import run_tool

TOOL = "stk_match"


def main(argv=None) -> int:
    """Run stk_match; return the exit status."""
    return run_tool(TOOL, argv, _body, description=__doc__)


def _blank(value):
    return value is None or str(value).strip() == ""


def _body(params):
    from stk_astrometry import api

    for name in ("detfile", "gaiafile", "outfile"):
        if _blank(params[name]):
            raise ParameterError(f"{name} is blank")
    api.match_stack(
        params["detfile"], params["gaiafile"], str(params["outfile"]).strip(),
        wisefile=params["wisefile"], bestnbfile=params["bestnbfile"],
        stackid=params["stackid"], ra_stack=params["ra_stack"], dec_stack=params["dec_stack"],
        r_stack=params["r_stack"], match_radius=params["match_radius"],
        sep_bins=params["sep_bins"], max_pm=params["max_pm"], refcat=params["refcat"],
        epoch=params["epoch"], ref_epoch=params["ref_epoch"], pm_disp=params["pm_disp"],
        method=params["method"],
        clobber=params["clobber"], history=params)
    return 0
