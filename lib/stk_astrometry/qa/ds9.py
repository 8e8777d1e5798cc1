"""The interactive DS9 review (spec §5.7.1: "blink between the image before and after the
correction (with the crosshair mark fixed)"), driven through XPA.

Two frames: 1 the stack image with its original WCS, 2 a copy with the corrected WCS (the
product itself is never touched); the pairs' region file in both; frames and crosshair locked
on WCS, crosshair mode on at the first stamp's Gaia position, blinking.  A running DS9 with
the given XPA name is reused; otherwise one is started (``ds9 -title <name>``, which needs an
X display) and waited for.  :func:`ds9_script` writes the same set-up as a shell script that
starts DS9 from its command line (no XPA needed) to reopen the review later; the driver also
saves a DS9 backup when asked.

XPA is used through its command-line clients ``xpaaccess``, ``xpaset`` and ``xpaget``
(Debian ``xpa-tools``), as CIAO's own scripts do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from stk_astrometry.errors import StkError

logger = logging.getLogger(__name__)

__all__ = ["DS9Error", "XPA", "connect", "open_review", "ds9_commands", "ds9_script"]


class DS9Error(StkError):
    """DS9 or XPA is missing, does not start, or refuses a command."""


@dataclass(frozen=True)
class XPA:
    """One DS9 reached through XPA by its access-point name."""

    name: str
    timeout: float = 20.0

    def _run(self, args, *, what):
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except FileNotFoundError as exc:
            raise DS9Error(f"{args[0]} not found: install the XPA tools (Debian/Ubuntu: "
                           "apt-get install xpa-tools saods9)") from exc
        except subprocess.TimeoutExpired as exc:
            raise DS9Error(f"XPA {what} timed out after {self.timeout:g} s") from exc
        if proc.returncode != 0 or "XPA$ERROR" in proc.stdout + proc.stderr:
            message = (proc.stderr or proc.stdout).strip().splitlines()
            raise DS9Error(f"DS9 ({self.name}) refused {what!r}: "
                           f"{message[-1] if message else 'exit ' + str(proc.returncode)}")
        return proc.stdout

    def set(self, command: str) -> None:
        """``xpaset -p <name> <command>``."""
        self._run(["xpaset", "-p", self.name, *shlex.split(command)], what=command)

    def get(self, command: str) -> str:
        """``xpaget <name> <command>``, its output stripped."""
        return self._run(["xpaget", self.name, *shlex.split(command)], what=command).strip()

    def alive(self) -> bool:
        try:
            proc = subprocess.run(["xpaaccess", "-n", self.name], capture_output=True,
                                  text=True, timeout=self.timeout, check=False)
        except FileNotFoundError as exc:
            raise DS9Error("xpaaccess not found: install the XPA tools (Debian/Ubuntu: "
                           "apt-get install xpa-tools saods9)") from exc
        except subprocess.TimeoutExpired:
            return False
        return proc.stdout.strip().isdigit() and int(proc.stdout.strip()) > 0


def connect(name="ds9", *, start=True, wait=30.0):
    """The DS9 called ``name``: a running one, or one started now.

    Returns
    -------
    xpa : XPA
    pid : int or None
        The process id of the DS9 started here (None when one was running); it keeps
        running after stk_qa ends.

    Raises
    ------
    DS9Error
        None running and ``start`` false, no ``ds9`` program, no display, or it did not answer
        within ``wait`` seconds.
    """
    xpa = XPA(name)
    if xpa.alive():
        return xpa, None
    if not start:
        raise DS9Error(f"no DS9 with XPA name {name!r} is running")
    program = shutil.which("ds9")
    if program is None:
        raise DS9Error("ds9 not found on PATH: install SAOImage DS9 (Debian/Ubuntu: apt-get "
                       "install saods9 xpa-tools)")
    if not os.environ.get("DISPLAY"):
        raise DS9Error("no X display (DISPLAY is not set) to start DS9 on")
    # started from a shell in the background: DS9 outlives stk_qa (it is the operator's), and
    # this process keeps no child to reap
    started = subprocess.run(
        ["sh", "-c", '"$1" -title "$2" </dev/null >/dev/null 2>&1 & echo $!', "sh", program,
         name], capture_output=True, text=True, check=False, start_new_session=True)
    try:
        pid = int(started.stdout.strip())
    except ValueError:
        raise DS9Error(f"could not start ds9: {started.stderr.strip()}") from None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _running(pid):
            raise DS9Error(f"ds9 exited at start (DISPLAY={os.environ.get('DISPLAY')})")
        if xpa.alive():
            return xpa, pid
        time.sleep(0.2)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    raise DS9Error(f"ds9 did not answer on XPA name {name!r} within {wait:g} s")


def _running(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def ds9_commands(before, after, regions, *, ra, dec, blink_interval=1.0):
    """The DS9 commands of the review, in order (XPA/command-line syntax without the dash)."""
    cross = f"crosshair {ra:.9f} {dec:.9f} wcs icrs"
    return [
        "frame delete all", "frame new", f"file {before}", f"regions load {regions}",
        "frame new", f"file {after}", f"regions load {regions}",
        "lock frame wcs", "lock crosshair wcs", "mode crosshair", "frame 1", cross,
        f"blink interval {blink_interval:g}", "blink yes",
    ]


def open_review(xpa: XPA, before, after, regions, *, ra, dec, blink_interval=1.0,
                backup=None) -> None:
    """Load the review into ``xpa``'s DS9; save a DS9 backup file if asked."""
    for command in ds9_commands(before, after, regions, ra=ra, dec=dec,
                                blink_interval=blink_interval):
        xpa.set(command)
    if backup is not None:
        xpa.set("blink no")
        xpa.set(f"backup {backup}")
        xpa.set("blink yes")


def ds9_script(before, after, regions, *, ra, dec, title="stk_qa", blink_interval=1.0) -> str:
    """A POSIX shell script that reopens the review in a new DS9 (command-line options)."""
    q = shlex.quote
    return "\n".join([
        "#!/bin/sh",
        "# Reopen the stk_qa review of this stack in DS9: frame 1 the original WCS, frame 2",
        "# the corrected one, the pairs' regions in both, crosshair locked on WCS, blinking.",
        f"exec ds9 -title {q(title)} {q(str(before))} -regions load {q(str(regions))} \\",
        f"    -frame new {q(str(after))} -regions load {q(str(regions))} \\",
        "    -lock frame wcs -lock crosshair wcs -mode crosshair -frame 1 \\",
        f"    -crosshair {ra:.9f} {dec:.9f} wcs icrs \\",
        f"    -blink interval {blink_interval:g} -blink yes \"$@\"",
        ""])
