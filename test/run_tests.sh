#!/bin/sh
# Run the whole test suite in the project's virtual environment (made or reused here).
# Extra arguments go to pytest, e.g.  sh test/run_tests.sh -k parameters -x
set -e
cd "$(dirname "$0")/.."
STK_EXTRAS=test . share/scripts/ensure_venv.sh
exec "$STK_PY" -m pytest "$@"
