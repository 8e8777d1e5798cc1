"""stk_param - list, get, set and unlearn the parameters of the stk_* tools.

The parameter-file tools of CIAO (plist, pget, pset, punlearn) for users
without CIAO.  The files stay in CIAO format, so CIAO's own tools work on
them too.

    stk_param list    <tool|file.par>                 (plist)
    stk_param get     <tool|file.par> name [name ...] (pget)
    stk_param set     <tool|file.par> name=value ...  (pset)
    stk_param unlearn <tool> [tool ...]               (punlearn)

A tool name is looked up through PFILES (user copy first, then the system
file); ``set`` writes the user copy (created from the system file when
absent), or the named ``.par`` file.  Names and enumerated values may be
abbreviated to a unique prefix; ``name+``/``name-`` set booleans; positional
values of ``set`` fill the non-hidden parameters in order.
"""

import logging
import sys
from pathlib import Path

from .. import __version__
from ..errors import ParameterError, StkError
from ..parameters import (
    find_par_file,
    format_plist,
    pget_text,
    pset_values,
    read_par,
    unlearn,
    write_par,
)

TOOL = "stk_param"
SUBCOMMANDS = ("list", "get", "set", "unlearn")
USAGE = (
    "Usage: stk_param list <tool|file.par> | get <tool|file.par> name [name ...] | "
    "set <tool|file.par> name=value ... | unlearn <tool> [tool ...]"
)

logger = logging.getLogger(__name__)


def _error_line(message):
    text = str(message).strip()
    if text.upper().startswith("ERROR"):
        text = text[5:].lstrip(" :")
    return f"# {TOOL} (stk_astrometry {__version__}): ERROR {text}"


def _is_file(target):
    return target.endswith(".par") or "/" in target


def _open(target):
    """(tool label, path read, path written, ParFile) for a tool name or a .par file."""
    if _is_file(target):
        path = Path(target)
        if not path.is_file():
            raise ParameterError(f"Unable to open parameter file {path}")
        return path.stem, path, path, read_par(path)
    loc = find_par_file(target)
    return target, loc.path, loc.learn_path, read_par(loc.path)


def _cmd_list(args):
    if len(args) != 1:
        raise ParameterError(f"'list' takes one tool name or .par file; {USAGE}")
    _tool, path, _dest, pf = _open(args[0])
    sys.stdout.write(format_plist(pf, path))


def _cmd_get(args):
    if len(args) < 2:
        raise ParameterError(
            f"'get' needs a tool and at least one parameter name; {USAGE}"
        )
    tool, _path, _dest, pf = _open(args[0])
    for word in args[1:]:
        print(pget_text(pf, word, tool=tool))


def _cmd_set(args):
    if len(args) < 2:
        raise ParameterError(f"'set' needs a tool and name=value arguments; {USAGE}")
    tool, _path, dest, pf = _open(args[0])
    if dest is None:
        raise ParameterError(
            f"no user parameter directory to write {tool}.par to (PFILES has no user part)"
        )
    new, changes = pset_values(pf, args[1:], tool=tool)
    write_par(dest, new)
    for name, text in changes.items():
        logger.info("%s.%s = %s", tool, name, text)


def _cmd_unlearn(args):
    if not args:
        raise ParameterError(f"'unlearn' needs at least one tool name; {USAGE}")
    for tool in args:
        if _is_file(tool):
            raise ParameterError(
                f"'unlearn' takes tool names, not files ({tool}); to reset a file, delete it"
            )
        find_par_file(tool, check_stale=False)  # an unknown tool is an error
        removed = unlearn(tool)
        if removed is not None:
            logger.info("removed %s", removed)


_COMMANDS = {
    "list": _cmd_list,
    "get": _cmd_get,
    "set": _cmd_set,
    "unlearn": _cmd_unlearn,
}


def main(argv=None) -> int:
    """Run ``stk_param``; return the exit status (0, or 1 on an error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if args and args[0] == "--version":
        print(f"{TOOL} (stk_astrometry {__version__})")
        return 0
    from ..runner import configure_logging

    restore = configure_logging(TOOL, 0)
    try:
        if not args:
            raise ParameterError(f"no sub-command given; {USAGE}")
        command = _COMMANDS.get(args[0])
        if command is None:
            raise ParameterError(
                f"unknown sub-command '{args[0]}' (expected one of {', '.join(SUBCOMMANDS)}); "
                f"{USAGE}"
            )
        command(args[1:])
    except StkError as exc:
        print(_error_line(exc), file=sys.stderr)
        return 1
    finally:
        restore()
        sys.stdout.flush()
    return 0
