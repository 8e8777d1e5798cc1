#!/bin/sh
# Run the whole test suite in the project's virtual environment (made or reused here).
# Extra arguments go to pytest, e.g.  sh test/run_tests.sh -k parameters -x
# Tests run in parallel, one pytest-xdist worker per core (-n auto); pass -n 0 to run them in
# this process (needed for --pdb), or STK_TEST_WORKERS=N to choose the number of workers.
set -e
cd "$(dirname "$0")/.."
STK_EXTRAS=test . share/scripts/ensure_venv.sh
exec "$STK_PY" -m pytest -n "${STK_TEST_WORKERS:-auto}" --dist loadgroup "$@"
