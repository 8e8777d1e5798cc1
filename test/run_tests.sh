#!/bin/sh
# Run the whole test suite in the project's virtual environment (made or reused here).
# Extra arguments go to pytest, e.g.  sh test/run_tests.sh -k parameters -x
# Tests run in parallel, one pytest-xdist worker per core (-n auto); pass -n 0 to run them in
# this process (needed for --pdb), or STK_TEST_WORKERS=N to choose the number of workers.
# --max-worker-restart=0: a worker that dies (a crash in a C extension) ends the run at once,
# red, naming the test it was running.  With restarts, xdist 3.8's loadgroup scheduling never
# hands work to the restarted worker and the run hangs forever (seen on this machine).
set -e
cd "$(dirname "$0")/.."
STK_EXTRAS=test . share/scripts/ensure_venv.sh
exec "$STK_PY" -m pytest -n "${STK_TEST_WORKERS:-auto}" --dist loadgroup --max-worker-restart=0 "$@"
