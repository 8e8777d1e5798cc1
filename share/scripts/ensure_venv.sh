#!/bin/sh
# Make (or reuse) the project's virtual environment and install stk_astrometry into it.
#
#   STK_EXTRAS=test . share/scripts/ensure_venv.sh    # sets STK_PY to the venv's python
#
# Needs only python3 (with its venv module; on Debian/Ubuntu that is the python3-venv
# package).  Reinstalls only when setup.cfg/pyproject.toml or the extras change, so a
# second run costs nothing.  STK_VENV overrides the location (default: ./.venv).
# Sourced by scripts that cd to the repository root first ($0 is then the caller, so it
# cannot locate this file): the root is the current folder, checked by this file's presence.
set -e
STK_ROOT=${STK_ROOT:-$(pwd)}
if [ ! -f "$STK_ROOT/share/scripts/ensure_venv.sh" ] || [ ! -f "$STK_ROOT/setup.cfg" ]; then
    echo "stk_astrometry: ERROR $STK_ROOT is not the stk_astrometry repository root" >&2
    exit 1
fi
STK_VENV=${STK_VENV:-"$STK_ROOT/.venv"}
STK_EXTRAS=${STK_EXTRAS:-}
if [ ! -x "$STK_VENV/bin/python" ]; then
    echo "stk_astrometry: creating virtual environment $STK_VENV"
    if ! python3 -m venv "$STK_VENV"; then
        echo "stk_astrometry: ERROR python3 could not create a virtual environment." >&2
        echo "  On Debian/Ubuntu install the venv module first: apt-get install python3-venv" >&2
        exit 1
    fi
fi
STK_PY="$STK_VENV/bin/python"
STK_WANT=$("$STK_PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()+open(sys.argv[2],"rb").read()+sys.argv[3].encode()).hexdigest())' \
    "$STK_ROOT/setup.cfg" "$STK_ROOT/pyproject.toml" "$STK_EXTRAS")
STK_STAMP="$STK_VENV/.stk_astrometry-installed"
if [ ! -f "$STK_STAMP" ] || [ "$(cat "$STK_STAMP")" != "$STK_WANT" ]; then
    echo "stk_astrometry: installing into $STK_VENV (this happens once)"
    SPEC="$STK_ROOT"
    [ -n "$STK_EXTRAS" ] && SPEC="$STK_ROOT[$STK_EXTRAS]"
    "$STK_PY" -m pip install --quiet --disable-pip-version-check -e "$SPEC"
    echo "$STK_WANT" > "$STK_STAMP"
fi
export STK_PY STK_VENV STK_ROOT
