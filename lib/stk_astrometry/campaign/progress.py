"""Progress of a running campaign: a live line on a terminal, plain periodic lines otherwise.

On a terminal a ``tqdm`` bar on standard error shows stacks done / failed / QA, the rate and
the ETA.  Elsewhere (a log file, a batch system) one INFO line is logged every ``interval``
seconds and at the end, so a log does not fill with carriage returns.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


def _eta(seconds):
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts finished stacks and shows them.

    Parameters
    ----------
    total : int
        Stacks to run in this invocation.
    log : logging.Logger
        Where the plain lines go (INFO).
    live : bool or None
        Force the live bar on or off (default: when standard error is a terminal).
    interval : float
        Seconds between plain lines.
    enabled : bool
        False shows nothing (verbose=0).
    """

    def __init__(self, total, *, log, live=None, interval=10.0, enabled=True):
        self.total = int(total)
        self.log = log
        self.interval = float(interval)
        self.enabled = enabled
        self.done = self.failed = self.qa = 0
        self.t0 = time.perf_counter()
        self._last = self.t0
        self._bar = None
        if live is None:
            live = sys.stderr.isatty()
        if enabled and live and self.total:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="stack", file=sys.stderr, dynamic_ncols=True,
                             smoothing=0.05, desc="stk_batch")

    @property
    def finished(self):
        return self.done + self.failed

    def rate(self):
        dt = time.perf_counter() - self.t0
        return self.finished / dt if dt > 0 else 0.0

    def line(self):
        """The plain progress line."""
        rate = self.rate()
        left = self.total - self.finished
        pct = 100.0 * self.finished / self.total if self.total else 100.0
        eta = _eta(left / rate) if rate > 0 else "?"
        return (f"{self.finished}/{self.total} stacks ({pct:.1f}%): {self.done} done, "
                f"{self.failed} failed, {self.qa} need QA; {rate:.1f} stacks/s, ETA {eta}")

    def update(self, *, done=0, failed=0, qa=0):
        self.done += done
        self.failed += failed
        self.qa += qa
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(f"failed={self.failed} QA={self.qa}", refresh=False)
            self._bar.update(done + failed)
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self.log.info("stk_batch: %s", self.line())

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.total:
            self.log.info("stk_batch: %s", self.line())
