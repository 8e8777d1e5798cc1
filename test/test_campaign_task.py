"""campaign.task: what a worker runs.

warm_worker imports, before the first task, everything a stack's steps import: a worker's
first stack then pays for no import of its own (the point of warming it while the driver
plans), and a worker's memory at its first stacks is what it keeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from campaign_sim import make_campaign

import stk_astrometry

LIB = str(Path(stk_astrometry.__file__).resolve().parents[1])

_PROBE = r"""
import json, sys
from pathlib import Path
from stk_astrometry.campaign import driver, settings, stacks, task
listfile, out = sys.argv[1], Path(sys.argv[2])
plans_in = stacks.read_stack_list("@" + listfile)
with driver.RunDatabase(out / "db.sqlite") as db:
    plans, _ = driver.plan_stacks(plans_in, db, settings.load_step_settings([]),
                                  campaign_dir=out, force=False, update_mode="none",
                                  detcorr=True)
task.warm_worker()
report = []
for plan in plans:
    before = set(sys.modules)
    res = task.run_stack(plan)
    report.append({"stackid": plan.stack.stackid,
                   "status": [s["status"] for s in res["steps"]],
                   "new": sorted(set(sys.modules) - before)})
print(json.dumps(report))
"""


def test_a_warm_worker_imports_nothing_more_for_its_stacks(tmp_path):
    # the failing, NOMATCH and two-step stacks among them (their own branches)
    listfile, _ = make_campaign(tmp_path / "stacks", 5, mix="small")
    out = tmp_path / "camp"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=LIB + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", _PROBE, str(listfile), str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    assert len(report) == 5
    assert sum(r["status"] == ["done", "done"] for r in report) == 4, report
    # the first stack included, nothing is imported by a stack that runs after warm_worker
    # (the failing stack's error path may: astropy's readers try the unreadable file)
    assert [r["new"] for r in report if r["status"] == ["done", "done"]] == [[]] * 4, report
