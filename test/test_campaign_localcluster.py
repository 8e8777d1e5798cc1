"""campaign.localcluster: stk_batch's default LocalCluster, hosted in a child process.

Real processes throughout: the child, its Dask scheduler and workers.  The child must answer
with its scheduler's address or one line of error, and must end -- with its workers -- when
the driver closes its pipe or dies by kill -9.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from proc_testlib import alive, live_children, wait_gone

from stk_astrometry.campaign import localcluster
from stk_astrometry.errors import ParameterError

LIB = str(Path(localcluster.__file__).parents[2])


def test_the_cluster_runs_in_a_child_and_ends_with_close():
    from distributed import Client

    host = localcluster.LocalClusterProcess(1, {"distributed.worker.profile.enabled": False},
                                            {"dashboard_address": None})
    try:
        assert host.address.startswith("tcp://127.0.0.1:")
        with Client(host.address, timeout="30s") as client:
            assert list(client.nthreads().values()) == [1]
            assert client.run_on_scheduler(os.getpid) == host.pid
            workers = list(client.run(os.getpid).values())
            assert workers and all(p in live_children(host.pid) for p in workers)
            assert client.submit(sum, [1, 2, 3]).result() == 6
    finally:
        host.close()
    assert not alive(host.pid) and wait_gone(workers)


def test_what_a_worker_prints_goes_to_the_log_not_to_the_drivers_pipe(tmp_path):
    """A worker inherits the child's standard output: were it the pipe to the driver, which
    reads only the first line, a worker printing ~64 KB would stall.  It goes to the log."""
    log = tmp_path / "stk_batch.log"
    host = localcluster.LocalClusterProcess(1, {}, {"dashboard_address": None}, log=log)
    try:
        from distributed import Client

        with Client(host.address, timeout="30s") as client:
            def chatty():
                for _ in range(2000):
                    print("x" * 99, flush=True)     # 200 KB: more than a pipe holds
                return "done"

            assert client.submit(chatty).result(timeout=60) == "done"
    finally:
        host.close()
    assert log.read_text().count("x" * 99) == 2000


def test_a_cluster_that_cannot_start_is_one_line_of_error(tmp_path, capfd):
    """A worker that cannot start (here: a keyword its server does not take): the child
    answers with the error and exits; Dask's tracebacks go to the log, not the terminal."""
    log = tmp_path / "stk_batch.log"
    with pytest.raises(ParameterError) as err:
        localcluster.LocalClusterProcess(1, {}, {"no_such_keyword": 1}, log=log)
    message = str(err.value)
    assert message.startswith("cannot start the local Dask cluster: RuntimeError: ")
    assert message.endswith(f"(Dask's messages: {log})") and "\n" not in message
    out, errors = capfd.readouterr()
    assert out == "" and errors == ""
    assert "no_such_keyword" in log.read_text()


# a driver: it dies of SIGINT at once (os._exit: the Client's own shutdown at interpreter exit
# can wait up to its timeouts for a scheduler that is closing; what is tested is the child)
_PARENT = r"""
import os, signal, sys
from stk_astrometry.campaign.localcluster import LocalClusterProcess
from distributed import Client
signal.signal(signal.SIGINT, lambda *args: os._exit(130))
host = LocalClusterProcess(2, {}, {"dashboard_address": None})
client = Client(host.address, timeout="30s")
print(host.pid, *client.run(os.getpid).values(), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_the_child_and_its_workers_end_when_the_driver_dies(sig):
    """kill -9 of the driver: the kernel closes its end of the pipe and the child shuts the
    cluster down by itself.  A control-C reaches the whole process group: the child ignores
    it and ends when the driver (which dies of it here) is gone."""
    env = dict(os.environ, PYTHONPATH=LIB)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, text=True,
                              start_new_session=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3 and all(alive(p) for p in pids)
        os.killpg(parent.pid, sig)         # the driver's whole process group, as a terminal
        parent.wait(30)
        assert parent.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
        assert wait_gone(pids), [p for p in pids if alive(p)]
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdin.close()
        parent.stdout.close()


def test_dask_logs_to_sends_this_process_dask_messages_to_the_log(tmp_path, capfd):
    """What Dask or tornado log in the driver (e.g. "Stream is closed" when a control-C closes
    the client with results in flight) goes to the run's log while the block runs, and not to
    standard error; after it the loggers are as they were."""
    import logging

    import distributed  # noqa: F401  (it sets up the loggers)

    names = ("distributed", "distributed.client", "tornado", "tornado.application", "bokeh")

    def state():
        return [(logging.getLogger(n).handlers[:], logging.getLogger(n).propagate)
                for n in names]

    before = state()
    log = tmp_path / "stk_batch.log"
    log.write_text("earlier line\n")
    with localcluster.dask_logs_to(log):
        logging.getLogger("tornado.application").error("Exception in callback: closed")
        logging.getLogger("distributed.client").error("lost the scheduler")
    text = log.read_text()
    assert text.splitlines()[0] == "earlier line"     # appended
    assert "tornado.application - ERROR - Exception in callback: closed" in text
    assert "distributed.client - ERROR - lost the scheduler" in text
    assert capfd.readouterr().err == ""
    assert state() == before
    logging.getLogger("tornado.application").error("after the block")
    assert "after the block" not in log.read_text()
    with localcluster.dask_logs_to(None):      # no log: nothing changes
        assert state() == before
