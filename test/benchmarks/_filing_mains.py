"""The tools' ``main(argv)`` of another tree in one process, a round at a time (bench_speed).

Run by :class:`bench_speed.FilingMains` as ``python _filing_mains.py STACKS.json`` with the
other tree's ``lib`` first on ``PYTHONPATH`` and its ``param`` on ``PFILES``.  STACKS.json
lists ``[folder, stk_match argv, stk_xfm argv]`` per stack (``bench_speed._mains_argv``, the
command lines today's mains are timed with).  It runs ``stk_match`` then ``stk_xfm`` on every
stack once (warm-up: imports, caches), prints
``ready``, then for each ``go`` line on its input runs them again and prints the round's wall
and CPU seconds as ``wall cpu``.  Imports nothing of this tree: the package it finds is the
other tree's.
"""

import contextlib
import io
import json
import logging
import sys
import time


def main(listing):
    from stk_astrometry.tools.stk_match import main as match_main
    from stk_astrometry.tools.stk_xfm import main as xfm_main

    with open(listing) as fh:
        stacks = json.load(fh)
    logging.getLogger("stk_astrometry").setLevel(logging.ERROR)

    def run():
        for folder, match_argv, xfm_argv in stacks:
            rc = match_main(match_argv)
            rc2 = xfm_main(xfm_argv)
            if rc or rc2:
                raise RuntimeError(f"a tool failed on {folder} ({rc}, {rc2})")

    out = sys.stdout
    # the tools' own printing is not the parent's to read
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run()
        print("ready", file=out, flush=True)
        for line in sys.stdin:
            if line.strip() != "go":
                break
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            print(f"{time.perf_counter() - t0!r} {time.process_time() - c0!r}", file=out,
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
