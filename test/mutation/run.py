#!/usr/bin/env python3
"""Mutation testing of the core modules with mutmut (not part of the default test run).

    sh test/mutation/run.sh                  # every module in MODULES, then a summary
    sh test/mutation/run.sh tangent matching  # only these modules
    sh test/mutation/run.sh --results         # the summary of the last run again
    sh test/mutation/run.sh formats.pairs     # a file-contract module (lib/stk_astrometry/formats/pairs.py)

mutmut makes one small deliberate bug (a "mutant") at a time in the modules below and runs, for
each, only the tests that call the mutated function (it records which tests reach which function
in one clean run first).  A mutant that no test notices "survives": either a test is missing, or
the mutant is equivalent (the code means the same thing) -- then it is listed, with the reason, in
``test/mutation/equivalent.md`` next to this file.

mutmut (3.x) mutates packages under ``src/``; ours live under ``lib/``.  So each module is staged
in ``.mutation/<module>/`` (git-ignored): a copy of ``lib/stk_astrometry`` as
``src/stk_astrometry``, the tests, and a setup.cfg made from ``test/mutation/setup.cfg`` (which
module to mutate, which tests to use).  mutmut writes its ``mutants/`` tree and its cache there;
a rerun after a change of the sources or tests updates the staged copy in place and resumes:
mutants that already have a verdict keep it (mutmut retests those of functions whose source
changed), so an interrupted run continues where it stopped.  ``--rerun`` retests every mutant of
the module; ``--survivors`` retests only the last run's open survivors (after adding the tests
that should kill them); ``--timeouts`` retests the last run's timeouts (on a loaded machine a
slow mutant times out although every test passes: a survivor in disguise -- 15 of wcsupdate's
20 were).  mutmut collects which tests reach which function only for tests it has not seen: after
a function is split or added the older tests are not mapped to it and its mutants survive
falsely; ``--fresh-stats`` makes it collect the map again for every test first.
``--functions f,g`` (one module) retests every mutant of those functions only and summarises
only them -- after a change of a few functions, without a full run of the module first.

Runs at niceness 15 (``nice -n 15``) with one worker per core: the machine is shared.
"""

import argparse
import configparser
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STAGE = REPO / ".mutation"

#: what the staged copy needs besides the sources and the tests
COPY = ["README.md", "pyproject.toml", "param", "share/sample", "bin"]


def _config():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(HERE / "setup.cfg")
    return cfg


#: the core modules under mutation testing (lib/stk_astrometry/<name>.py, a dot for a sub-package:
#: formats.pairs is lib/stk_astrometry/formats/pairs.py), in run order
MODULES = [m for m in _config()["stk_mutation"] if m != "deselect"]


def stage(module):
    """Bring .mutation/<module>/ up to date with the sources and tests (in place: mutmut keeps
    its cache, and reruns what changed)."""
    folder = STAGE / module
    folder.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".hypothesis", "mutation")
    shutil.copytree(REPO / "lib" / "stk_astrometry", folder / "src" / "stk_astrometry", ignore=ignore,
                    dirs_exist_ok=True)
    shutil.copytree(REPO / "test", folder / "test", ignore=ignore, dirs_exist_ok=True)
    for name in COPY:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, folder / name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(REPO / name, folder / name)
    cfg = _config()
    tests = cfg["stk_mutation"][module].split()
    tests += [f"--deselect={t}" for t in cfg["stk_mutation"]["deselect"].split()
              if t.split("::")[0] in tests]
    tests += ["-m", "not slow"]    # as the default test run
    out = configparser.ConfigParser(interpolation=None)
    out["mutmut"] = dict(cfg["mutmut"])
    out["mutmut"]["only_mutate"] = f"src/stk_astrometry/{module.replace('.', '/')}.py"
    out["mutmut"]["pytest_add_cli_args_test_selection"] = "\n" + "\n".join(tests)
    out["tool:pytest"] = dict(cfg["tool:pytest"])
    with open(folder / "setup.cfg", "w") as fh:
        out.write(fh)
    return folder


def mutmut(module, *args, check=True):
    exe = Path(sys.executable).with_name("mutmut")
    cmd = [str(exe), *args]
    env = dict(os.environ, STK_ASTROMETRY_TESTING="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run(cmd, cwd=STAGE / module, env=env, check=check, text=True,
                          capture_output=args[0] == "results")


def _patterns(module, functions):
    """mutmut's names of the mutants of ``functions`` of ``module`` (``name`` for a function,
    ``Class.method`` for a method), as fnmatch patterns"""
    out = []
    for f in functions:
        if "." in f:
            cls, meth = f.split(".", 1)
            out.append(f"stk_astrometry.{module}.xǁ{cls}ǁ{meth}__mutmut_*")
        else:
            out.append(f"stk_astrometry.{module}.x_{f}__mutmut_*")
    return out


def _selected(name, functions):
    """Whether mutant ``name`` is one of ``functions`` (all when None)."""
    return functions is None or any(fnmatch.fnmatchcase(name, pat)
                                    for pat in _patterns(_module_of(name), functions))


def _results(modules, functions=None):
    counts = {}
    survivors = []
    lines = []
    for module in modules:
        if (STAGE / module / "mutants").is_dir():
            lines += mutmut(module, "results", "--all", "true").stdout.splitlines()
    for line in lines:
        m = re.match(r"\s*(stk_astrometry\.([\w.]+?)\.x[_ǁ]\S+): (.+)$", line)
        if not m or m.group(2) not in modules:
            continue
        name, module, status = m.groups()
        if not _selected(name, functions):
            continue
        counts.setdefault(module, {}).setdefault(status, 0)
        counts[module][status] += 1
        if status == "survived":
            survivors.append(name)
    return counts, survivors


def _timeouts(module):
    """The mutants of ``module`` whose last verdict was a timeout."""
    if not (STAGE / module / "mutants").is_dir():
        return []
    lines = mutmut(module, "results", "--all", "true").stdout.splitlines()
    return [m.group(1) for line in lines
            if (m := re.match(r"\s*(stk_astrometry\.\S+): timeout$", line))]


def _module_of(mutant):
    """'stk_astrometry.formats.pairs.x_read__mutmut_3' -> 'formats.pairs'"""
    return re.match(r"stk_astrometry\.([\w.]+?)\.x[_ǁ]", mutant).group(1)


def _equivalent():
    return set(re.findall(r"`(stk_astrometry\.[\w.ǁ]+__mutmut_\d+)`", (HERE / "equivalent.md").read_text()))


def summary(modules, functions=None):
    counts, survivors = _results(modules, functions)
    equivalent = {e for e in _equivalent() if _selected(e, functions)}
    if functions:
        print(f"\nonly the mutants of {', '.join(functions)}")
    head = ["mutants", "killed", "timeout", "survived", "equivalent", "no tests", "other"]
    print(f"\n{'module':16s}" + "".join(f"{h:>11s}" for h in head) + "   score")
    tot = dict.fromkeys(head, 0)
    for module in modules + ["all"]:
        if module == "all":
            if len(modules) < 2:
                break
            row = tot
        else:
            c = counts.get(module, {})
            surv = [s for s in survivors if _module_of(s) == module]
            row = {"mutants": sum(c.values()), "killed": c.get("killed", 0), "timeout": c.get("timeout", 0),
                   "survived": len(surv), "equivalent": len([s for s in surv if s in equivalent])}
            row["no tests"] = c.get("no tests", 0)
            row["other"] = (row["mutants"] - row["killed"] - row["timeout"] - row["survived"]
                            - row["no tests"])
            for h in head:
                tot[h] += row[h]
        # a mutant no selected test reaches is a bug the module's tests would not see: counted
        # as not killed, like a survivor
        denom = (row["killed"] + row["timeout"] + row["survived"] + row["no tests"]
                 - row["equivalent"])
        score = f"{100 * (row['killed'] + row['timeout']) / denom:5.1f} %" if denom else "    -"
        print(f"{module:16s}" + "".join(f"{row[h]:11d}" for h in head) + f"  {score}")
    print("score = (killed + timeout) / (killed + timeout + survived + no tests - equivalent);\n"
          "survived includes the equivalent ones; no tests = no test of the module's selection\n"
          "reaches the mutated function (a gap, counted against the score); other = not run yet\n"
          "(see `mutmut results --all true` in .mutation/MODULE/)")
    # mutmut numbers the mutants of a function in order: a change of the function renumbers them,
    # and a listed name may then point at another mutation.  A listed name that did not survive
    # is such a stale entry (or a mutant a new test kills): say so.
    stale = sorted(e for e in equivalent if _module_of(e) in modules and e not in survivors
                   and _module_of(e) in counts)
    if stale:
        print(f"\n{len(stale)} name(s) in {HERE / 'equivalent.md'} that did not survive (renumbered "
              "by a change of their function, or killed now): check them with `mutmut show`")
        for e in stale:
            print(f"  {e}")
    open_survivors = [s for s in survivors if s not in equivalent]
    if open_survivors:
        print(f"\n{len(open_survivors)} surviving mutant(s) not listed as equivalent in {HERE / 'equivalent.md'}:")
        for s in open_survivors:
            print(f"  {s}")
        print("show one with:  (cd .mutation/MODULE && ../../.venv/bin/mutmut show NAME)")
    return 1 if open_survivors else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: {' '.join(MODULES)})")
    ap.add_argument("--results", action="store_true", help="print the last run's summary only")
    ap.add_argument("--rerun", action="store_true",
                    help="retest every mutant, not only those without a verdict yet")
    ap.add_argument("--survivors", action="store_true",
                    help="retest only the last run's survivors that are not listed as equivalent")
    ap.add_argument("--timeouts", action="store_true",
                    help="retest only the last run's timeouts (survivors under load?)")
    ap.add_argument("--fresh-stats", action="store_true",
                    help="collect the test-to-function map again for every test first")
    ap.add_argument("--functions", metavar="NAME[,NAME...]",
                    help="only the mutants of these functions of the module (Class.method for a "
                         "method): retest them all and summarise only them -- after changing a "
                         "few functions of a module that has no staged verdicts yet")
    args = ap.parse_args(argv)
    os.nice(max(0, 15 - os.nice(0)))    # nice -n 15, whoever started us
    modules = args.modules or MODULES
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        ap.error(f"not configured for mutation testing: {', '.join(unknown)} (choose from {', '.join(MODULES)})")
    functions = [f.strip() for f in args.functions.split(",") if f.strip()] if args.functions else None
    if functions is not None and (len(modules) != 1 or not functions):
        ap.error("--functions needs exactly one module and at least one function name")
    if not args.results:
        for module in modules:
            stage(module)
            if args.fresh_stats:
                (STAGE / module / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
            t0 = time.monotonic()
            if args.survivors or args.timeouts:
                names = []
                if args.survivors:
                    names += [s for s in _results([module], functions)[1] if s not in _equivalent()]
                if args.timeouts:
                    names += [t for t in _timeouts(module) if _selected(t, functions)]
            elif functions:
                names = _patterns(module, functions)
            elif args.rerun:
                names = [f"stk_astrometry.{module}.*"]
            else:
                names = []    # resume: only mutants without a verdict (only_mutate limits the module)
            if names or not (args.survivors or args.timeouts):
                mutmut(module, "run", *names, check=False)
            print(f"\n{module}: mutmut run took {time.monotonic() - t0:.0f} s")
    return summary(modules, functions)


if __name__ == "__main__":
    sys.exit(main())
