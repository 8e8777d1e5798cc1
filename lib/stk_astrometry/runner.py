"""The one tool runner every stk_* tool goes through.

Owns what a CIAO user expects of any tool, so no tool does it differently:
``-h``/``--help`` and ``--version``; parameter resolution (CIAO .par files,
command line, ``@@`` files); ``verbose`` 0-5 mapped onto logging; the echo of
the resolved parameters at verbose >= 1; the CIAO error line
``# tool (stk_astrometry X.Y.Z): ERROR message`` with exit status 1 for user
errors; a traceback only for a genuine bug, labelled as one; learning the par
file after a successful run.  It does no science and opens no data files.

A tool front end is::

    def main(argv=None) -> int:
        return run_tool("stk_match", argv, _body, description=__doc__)

``_body(params)`` receives the typed :class:`~stk_astrometry.parameters.ParameterSet`
and returns an exit status (None means 0).
"""

import logging
import os
import sys
import traceback
import warnings

from . import __version__
from .errors import StkError

__all__ = ["run_tool", "error_line", "configure_logging", "VERBOSE_LEVELS"]

#: verbose -> logging level, as CIAO's contributed scripts map it (ciao-conventions §2.2),
#: except that warnings are shown at every verbosity.
VERBOSE_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: 17, 3: 15, 4: 12, 5: logging.DEBUG}

_PKG_LOGGER = "stk_astrometry"


def error_line(toolname, message, *, kind="ERROR"):
    """The CIAO error line for ``message`` (not doubled if it already starts with ERROR)."""
    text = str(message).strip()
    # messages raised as "tool: ..." would name the tool twice on the CIAO line
    if text.startswith(f"{toolname}: "):
        text = text[len(toolname) + 2:]
    if kind and text.upper().startswith(kind):
        text = text[len(kind):].lstrip(" :")
    prefix = f"# {toolname} (stk_astrometry {__version__}):"
    return f"{prefix} {kind} {text}" if kind else f"{prefix} {text}"


class _ToolFormatter(logging.Formatter):
    """Plain messages for INFO and below; the CIAO-style prefix for warnings and errors."""

    def __init__(self, toolname):
        super().__init__()
        self.toolname = toolname

    def format(self, record):
        msg = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            msg += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return error_line(self.toolname, msg)
        if record.levelno >= logging.WARNING:
            return error_line(self.toolname, msg, kind="WARNING")
        return msg


class _MaxLevel(logging.Filter):
    def __init__(self, level):
        super().__init__()
        self.level = level

    def filter(self, record):
        return record.levelno < self.level


def configure_logging(toolname, verbose):
    """Attach the tool's handlers to the package logger; return a function that removes them.

    INFO and below go to stdout (CIAO's chatter), warnings and errors to stderr
    so that shell pipelines keep them apart.
    """
    level = VERBOSE_LEVELS.get(max(0, min(5, int(verbose))), logging.INFO)
    logger = logging.getLogger(_PKG_LOGGER)
    fmt = _ToolFormatter(toolname)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(fmt)
    out.addFilter(_MaxLevel(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    err.setLevel(logging.WARNING)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers = [out, err]
    logger.setLevel(level)
    logger.propagate = False

    def restore():
        for h in (out, err):
            h.flush()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]

    return restore


def _summary(text):
    """The title line and the one-paragraph description of a tool's docstring.

    Tool docstrings start with ``tool: what it does.`` and a paragraph for
    users; what follows is for developers and is not shown by ``--help``.
    """
    paras = [p.strip() for p in (text or "").strip().split("\n\n") if p.strip()]
    return "\n\n".join(paras[:2])


def _help_page(toolname):
    """Where the tool's help page is: installed copy, else the source tree's."""
    from pathlib import Path

    for folder in (Path(sys.prefix) / "share" / "doc" / "stk_astrometry",
                   Path(__file__).resolve().parents[2] / "share" / "doc"):
        page = folder / f"{toolname}.txt"
        if page.is_file():
            return str(page)
    return f"share/doc/{toolname}.txt in the stk_astrometry sources"


def _help_text(toolname, description):
    from .parameters import describe_tool

    parts = [f"{toolname} (stk_astrometry {__version__})", ""]
    desc = _summary(description)
    if desc:
        parts += ["\n".join(line.rstrip() for line in desc.splitlines()), ""]
    parts.append(describe_tool(toolname))
    parts += [
        "",
        f"Usage: {toolname} [name=value ...] [@@file.par | @@file.yaml] [-h] [--version]",
        f"Full help: {_help_page(toolname)}",
    ]
    return "\n".join(parts)


def _silence_stdout():
    """After a broken pipe (``tool -h | head``), point stdout at /dev/null so exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def run_tool(toolname, argv, body, *, description):
    """Run one tool invocation the CIAO way; return the exit status (see :func:`_run`)."""
    try:
        return _run(toolname, argv, body, description=description)
    except BrokenPipeError:
        # the reader of our output went away (e.g. piped into head): not an error of ours
        _silence_stdout()
        return 0


def _run(toolname, argv, body, *, description):
    """Run one tool invocation the CIAO way; return the exit status.

    Parameters
    ----------
    toolname : str
    argv : sequence of str or None
        Command-line arguments (``sys.argv[1:]`` when None).
    body : callable
        ``body(params) -> int | None``: the tool's work.
    description : str
        The tool's description (its module docstring), shown by ``--help``.

    Returns
    -------
    int
        0 on success, 1 on a user error or a bug, or what ``body`` returned.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        try:
            print(_help_text(toolname, description), flush=True)
        except StkError as exc:
            print(error_line(toolname, exc), file=sys.stderr)
            return 1
        return 0
    if "--version" in args:
        print(f"{toolname} (stk_astrometry {__version__})", flush=True)
        return 0

    restore = None
    try:
        from .parameters import load_parameters

        params = load_parameters(toolname, args)
        verbose = params["verbose"] if "verbose" in params and params["verbose"] is not None else 1
        restore = configure_logging(toolname, verbose)
        log = logging.getLogger(f"{_PKG_LOGGER}.{toolname}")
        if verbose >= 1:
            log.info("%s (stk_astrometry %s)", toolname, __version__)
            log.info("%s", params.format_plist())
        with warnings.catch_warnings(record=True) as caught:
            # a library's warning (astropy's on a truncated or odd file) is not a message for
            # the user in raw form: it goes to the tool's log, shown at verbose >= 2
            warnings.simplefilter("always")
            try:
                status = body(params)
            finally:
                for w in caught:
                    log.log(VERBOSE_LEVELS[2], "%s: %s", w.category.__name__,
                            " ".join(str(w.message).split()))
        status = 0 if status is None else int(status)
        if status == 0:
            params.learn()
        return status
    except StkError as exc:
        print(error_line(toolname, exc), file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise
    except KeyboardInterrupt:
        print(error_line(toolname, "Keyboard interrupt (control-c)", kind=""), file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: report the bug
        print(
            error_line(
                toolname,
                f"internal error - this is a bug in stk_astrometry, please report it with the "
                f"traceback below: {type(exc).__name__}: {exc}",
            ),
            file=sys.stderr,
        )
        traceback.print_exc(file=sys.stderr)
        return 1
    finally:
        if restore is not None:
            restore()
