"""stk_simulate - write a synthetic CSC stack with a known true translation.

Writes, into a new directory, the detection table, the Gaia, ALLWISE and
Gaia-ALLWISE best-neighbour tables in the layouts stk_match reads, a truth
file (true shift, per-detection truth, Cramer-Rao bound of the direct fit),
and a tree of synthetic CXC-like data products (one per product type of spec
§5.6) for stk_update_wcs.  Seeded: the same parameters and seed give the same
tables.  The model is described in share/doc/stk_simulate.txt.
"""

import logging

from ..runner import run_tool
from ..simfiles import (  # noqa: F401  (the tool's names, kept for its users)
    config_from_params,
    output_names,
    table_hdul,
    write_products,
    write_stack,
)

TOOLNAME = "stk_simulate"
logger = logging.getLogger(__name__)

__all__ = ["config_from_params", "main", "output_names", "table_hdul", "write_products",
           "write_stack"]


def main(argv=None) -> int:
    """Run stk_simulate; return the exit status."""
    return run_tool(TOOLNAME, argv, _body, description=__doc__)


def _body(params):
    from ..api import SIMULATE_DEFAULTS, simulate_stack

    kwargs = {name: params[name] for name in SIMULATE_DEFAULTS if name not in ("outdir", "seed")}
    simulate_stack(params["outdir"], seed=params["seed"], history=params, **kwargs)
    return 0
