"""stk_batch's default cluster: a ``distributed.LocalCluster`` hosted in a process of its own.

A LocalCluster made in the driver runs its scheduler (and the workers' nannies) on the driver's
event loop, under the driver's GIL: every task's messages then wait for, and delay, the
driver's own work of recording results (issue 12: at 85 stacks/s the driver and the scheduler
together spent 1.0 ms of CPU per stack in one process, and the same campaign ran ~4 % faster
through a separately started scheduler).  So the driver starts this module as a child process
(:class:`LocalClusterProcess`), which makes the LocalCluster -- the same workers, settings and
behaviour -- and tells the driver its scheduler's address; the driver's ``Client`` connects to
it as to any other scheduler.

The child lives exactly as long as the driver wants it: it reads its settings from its
standard input, then waits on it.  When the driver closes the pipe (:meth:`close`) or dies --
even by ``kill -9``, when the kernel closes the pipe for it -- the child shuts the cluster down
(its workers exit with it) and exits.  It ignores SIGINT: a Ctrl-C on the terminal reaches the
whole process group, and the driver, which handles it, closes the pipe.  The child prints
nothing but its one line of JSON to the driver; an error of the cluster's start is that line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading

from ..errors import ParameterError

__all__ = ["LocalClusterProcess", "dask_logs_to", "quiet_dask"]

#: seconds the driver waits for the child's cluster to start before it gives up
START_TIMEOUT = 120
#: seconds the child's cluster has to close before the driver kills the child
CLOSE_TIMEOUT = 30

_CHILD = "from stk_astrometry.campaign.localcluster import _host; _host()"


def quiet_dask() -> None:
    """Dask's and tornado's loggers at ERROR: call after importing ``distributed``, which sets
    its loggers' levels when it is imported."""
    import logging

    for name in ("distributed", "distributed.worker", "distributed.scheduler",
                 "distributed.nanny", "distributed.core", "distributed.comm",
                 "distributed.batched", "distributed.shuffle", "tornado"):
        logging.getLogger(name).setLevel(logging.ERROR)


_DASK_LOGGERS = ("distributed", "tornado", "bokeh")


@contextlib.contextmanager
def dask_logs_to(path):
    """While the block runs, Dask's and tornado's log messages in this process go to the file
    ``path`` (appended), not to standard error.

    ``distributed``, when imported, gives its loggers and tornado's a handler on standard error
    (or, when the root logger already has handlers, lets them propagate there); the driver's
    client logs through it, e.g. when a control-C closes the client while results are in
    flight (tornado's "Exception in callback ... Stream is closed" and its traceback).  Those
    are the run's log, not the terminal's.  The loggers are restored after.  ``path`` None:
    nothing changes.
    """
    if path is None:
        yield
        return
    import logging

    import dask
    import distributed  # noqa: F401  (its import sets up the loggers)

    handler = logging.FileHandler(path, mode="a", encoding="utf-8", errors="replace")
    handler.setFormatter(logging.Formatter(dask.config.get("distributed.admin.log-format")))
    loggers = {name: logger for name, logger in list(logging.Logger.manager.loggerDict.items())
               if name.split(".")[0] in _DASK_LOGGERS and isinstance(logger, logging.Logger)}
    saved = []
    for name in (*_DASK_LOGGERS, *sorted(set(loggers) - set(_DASK_LOGGERS))):
        logger = logging.getLogger(name)
        top = name in _DASK_LOGGERS
        if top or logger.handlers:
            # the top loggers write to the file alone; one below with handlers of its own
            # (distributed gives tornado.application one) passes its messages up to them
            saved.append((logger, logger.handlers, logger.propagate))
            logger.handlers, logger.propagate = ([handler], False) if top else ([], True)
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


class LocalClusterProcess:
    """A LocalCluster of ``n_workers`` single-threaded worker processes, in a child process.

    Parameters
    ----------
    n_workers : int
        Worker processes (one thread each).
    config : dict
        Dask settings (``dask.config.set`` keys) of the child, hence of its scheduler and,
        through the nannies, of its workers.
    kwargs : dict, optional
        More keyword arguments of ``LocalCluster`` (JSON values).
    log : path, optional
        A file the child and its workers append their standard error to (Dask's error
        messages, a dying worker's last words); default: this process's standard error.

    Attributes
    ----------
    address : str
        The scheduler's address (``tcp://127.0.0.1:port``).

    Raises
    ------
    ParameterError
        The cluster could not start (the child's error, in one line).
    """

    def __init__(self, n_workers: int, config: dict, kwargs: dict | None = None, *,
                 log=None):
        spec = {"n_workers": int(n_workers), "config": config, "kwargs": kwargs or {}}
        env = dict(os.environ)
        # the child imports this package (and its workers, the steps) from where this
        # process does, whatever its PYTHONPATH
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        err = None
        try:
            if log is not None:
                err = open(log, "ab")  # noqa: SIM115 - the child's from here on
            self._proc = subprocess.Popen([sys.executable, "-c", _CHILD],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=err, env=env, close_fds=True, text=True)
        except OSError as exc:
            raise ParameterError(f"cannot start the local Dask cluster: {exc}") from exc
        finally:
            if err is not None:
                err.close()
        self._log = log
        self.address = None
        try:
            self._proc.stdin.write(json.dumps(spec) + "\n")
            self._proc.stdin.flush()
            answer = self._answer()
        except BaseException:
            self.close()
            raise
        if "address" not in answer:
            self.close()
            where = f" (Dask's messages: {self._log})" if self._log is not None else ""
            raise ParameterError("cannot start the local Dask cluster: "
                                 f"{answer.get('error', 'no answer from its process')}{where}")
        self.address = answer["address"]

    def _answer(self) -> dict:
        """The child's one line, or {} when it exits (or hangs) first."""
        timer = threading.Timer(START_TIMEOUT, self._proc.kill)
        timer.start()
        try:
            line = self._proc.stdout.readline()
        finally:
            timer.cancel()
        try:
            answer = json.loads(line)
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Shut the cluster down and wait for its process (killed after ``timeout`` s)."""
        proc = self._proc
        try:
            proc.stdin.close()
        except OSError:
            pass                      # the child is gone already: its end of the pipe, too
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid


def _host() -> None:
    """The child's side: start the LocalCluster, print its address, serve until stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the pipe to the driver carries the one answer; anything else written to standard
    # output -- by this process or by a worker, which inherits it -- goes where standard error
    # goes: a pipe nobody reads would fill and stall its writer
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    cluster = None
    try:
        spec = json.loads(sys.stdin.readline())
        import logging

        import dask
        from distributed import LocalCluster

        quiet_dask()
        # set for the process's life: the scheduler reads its settings when it starts, the
        # nannies hand theirs to each worker they (re)start
        dask.config.set(spec["config"])
        cluster = LocalCluster(n_workers=spec["n_workers"], threads_per_worker=1,
                               processes=True, silence_logs=logging.ERROR, **spec["kwargs"])
        out.write(json.dumps({"address": cluster.scheduler_address}) + "\n")
        out.close()
        sys.stdin.read()              # until the driver closes the pipe, or dies
    except BaseException as exc:      # noqa: BLE001 - said to the driver, in one line
        if cluster is None:
            text = " ".join(str(exc).split())
            out.write(json.dumps({"error": f"{type(exc).__name__}: {text}"}) + "\n")
            out.close()
    finally:
        if cluster is not None:
            try:
                cluster.close(timeout=CLOSE_TIMEOUT - 5)
            except BaseException:     # noqa: BLE001 - the workers die with this process
                pass
        os._exit(0)
