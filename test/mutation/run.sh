#!/bin/sh
# Mutation testing of the core modules (mutmut), in the project's virtual environment.
# Not part of the default test run.  Arguments go to test/mutation/run.py, e.g.
#   sh test/mutation/run.sh                 # all configured modules, then the summary
#   sh test/mutation/run.sh tangent         # one module
#   sh test/mutation/run.sh --results       # the last run's summary again
set -e
cd "$(dirname "$0")/../.."
STK_EXTRAS=test . share/scripts/ensure_venv.sh
exec "$STK_PY" test/mutation/run.py "$@"
