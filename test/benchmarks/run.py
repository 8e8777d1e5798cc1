#!/usr/bin/env python3
"""Run the stk_astrometry benchmark suite and print one table per benchmark.

Usage::

    .venv/bin/python test/benchmarks/run.py [--quick] [--only NAME[,NAME...]] [--list]

Runs every ``bench_*.py`` module of this folder (each exposes
``main(quick: bool = False) -> int`` and prints its own table) after a header
with the machine, the software versions and the date.  ``--quick`` shrinks the
sizes for a smoke run; ``--only speed`` runs ``bench_speed.py`` only.  The
benchmarks are not part of the test run (pytest never collects this folder).
Exit status: 0 when every benchmark ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (after the sys.path set-up above)


def discover():
    """Benchmark name -> path, for every ``bench_*.py`` here, sorted by name."""
    return {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py"))}


def _load(name, path):
    spec = importlib.util.spec_from_file_location(f"stk_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (e.g. speed)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    found = discover()
    if args.list:
        for name, path in found.items():
            print(f"{name:12s} {path.name}")
        return 0
    wanted = [n.strip().removeprefix("bench_").removesuffix(".py")
              for n in args.only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in found]
    if unknown:
        print(f"run.py: unknown benchmark(s) {', '.join(unknown)}; have {', '.join(found)}",
              file=sys.stderr)
        return 2
    selected = {n: p for n, p in found.items() if not wanted or n in wanted}

    title = f"stk_astrometry benchmarks{' (--quick)' if args.quick else ''}"
    print(title)
    print("=" * len(title))
    for line in _common.machine_info():
        print(line)
    print(f"benchmarks   {', '.join(selected) or 'none'}")
    sys.stdout.flush()

    status = {}
    for name, path in selected.items():
        print()
        print(f"### {name} ({path.name})")
        sys.stdout.flush()
        t0 = time.perf_counter()
        try:
            module = _load(name, path)
            rc = module.main(quick=args.quick)
            status[name] = "ok" if not rc else f"exit {rc}"
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not stop the others
            traceback.print_exc()
            status[name] = f"FAILED ({type(exc).__name__}: {exc})"
        print(f"[{name}: {status[name]}, {time.perf_counter() - t0:.1f} s]")
        sys.stdout.flush()

    print()
    print("Summary: " + "; ".join(f"{n} {s}" for n, s in status.items()))
    return 0 if all(s == "ok" for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
