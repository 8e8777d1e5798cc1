"""stk_batch - run stk_match -> stk_xfm (-> stk_update_wcs) over every stack of a campaign.

Runs each stack as one Dask task (local worker processes by default, or an existing Dask
cluster with scheduler=), records every stack in an SQLite run database in the campaign
folder, resumes after an interruption (finished, unchanged stacks are skipped), and writes one
results table (campaign.fits and campaign.csv), plots and an index.html.  A failing stack is
recorded with its error and never stops the others.  Step parameters come from the tools'
installed defaults and the sections of @@campaign.yaml; nothing is learned.

The work is in stk_astrometry.campaign; this front end resolves the parameters and calls it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ParameterError
from ..runner import run_tool

TOOLNAME = "stk_batch"

__all__ = ["main"]


def main(argv=None) -> int:
    """Run stk_batch; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    yaml_files = [a[2:] for a in args if a.startswith("@@") and a.lower().endswith((".yaml", ".yml"))]
    return run_tool(TOOLNAME, args, lambda params: _body(params, yaml_files, args),
                    description=__doc__)


def _check_folder(outdir: Path) -> None:
    from ..campaign.driver import DB_NAME

    if outdir.exists() and not outdir.is_dir():
        raise ParameterError(f"outdir={outdir} is a file, not a campaign folder")
    if outdir.is_dir() and not (outdir / DB_NAME).exists() and any(outdir.iterdir()):
        raise ParameterError(f"outdir={outdir} exists, is not empty and is not a stk_batch "
                             f"campaign folder (no {DB_NAME}); give a new or empty folder")


def _body(params, yaml_files, argv):
    from ..campaign import driver

    outdir = (params["outdir"] or "").strip()
    if not outdir:
        raise ParameterError("outdir is blank: give the campaign folder")
    folder = Path(outdir).expanduser()
    verbose = int(params["verbose"])
    truthfile = (params["truthfile"] or "").strip()
    if truthfile and not params["science"]:
        raise ParameterError("truthfile is given but science=no: set science=yes")
    if truthfile and not Path(truthfile).is_file():
        raise ParameterError(f"truthfile={truthfile} does not exist")
    if params["action"] == "report":
        driver.report_only(folder, plots=params["plots"], verbose=verbose)
        _science(folder, params)
        return 0

    from ..campaign.settings import load_step_settings
    from ..campaign.stacks import read_stack_list

    settings = load_step_settings(yaml_files)
    stacks = read_stack_list(params["stacks"])
    _check_folder(folder)
    driver.run_campaign(
        stacks, settings, folder=folder, scheduler=params["scheduler"] or "",
        nworkers=int(params["nworkers"]), force=params["force"], update_mode=params["update"],
        detcorr=params["detcorr"], plots=params["plots"], verbose=verbose,
        progress_interval=float(params["progress_interval"]),
        command=" ".join([TOOLNAME, *argv]))
    _science(folder, params)
    return 0


def _science(folder: Path, params) -> None:
    """science=yes: the campaign science report (spec 6, 5.5.7) into the folder and its page."""
    truthfile = (params["truthfile"] or "").strip()
    if not params["science"]:
        return
    import logging

    from ..campaign import science
    from ..campaign.driver import DB_NAME, TABLE_NAME
    from ..formats.campaign import read_campaign_table

    log = logging.getLogger("stk_astrometry.stk_batch")
    records = read_campaign_table(folder / TABLE_NAME)
    inputs = science.stack_inputs_from_database(folder / DB_NAME)
    fragment, rep = science.run_science(folder, records, inputs, truthfile=truthfile or None,
                                        log=log)
    science.insert_into_index(folder, fragment)
    for line in science.summary_lines(rep):
        log.info("%s", line)
