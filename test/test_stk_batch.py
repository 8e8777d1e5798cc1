"""stk_batch end to end: a seeded 30-stack campaign (a failing, a NOMATCH and a two-step stack
among them) through the default LocalCluster and through a separately started ``dask
scheduler`` + ``dask worker``; resume after ``kill -9``; the results table against the
per-stack tool outputs; the plots.  The kill -9 and control-C tests use a 200-stack campaign,
long enough that the kill lands while stacks still run.

The stacks are the small mix of ``campaign_sim`` (10-60 detections, sparse fields) so the
whole module costs seconds of CPU; the 10,000-stack figures are in the benchmark suite.  The two
tests that start processes of their own (separate scheduler, kill -9) are marked ``slow``: the
default test run leaves them out and ``.ci/run`` runs them (``sh test/run_tests.sh -m slow``).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from campaign_sim import FAIL, NOMATCH, TWOSTEP, make_campaign
from proc_testlib import group_gone

from stk_astrometry.campaign.stacks import safe_name
from stk_astrometry.formats.campaign import RUN_DEPENDENT, read_campaign_table
from stk_astrometry.tools.stk_batch import main as batch_main

REPO = Path(__file__).resolve().parents[1]
N_STACKS = 30

# one xdist worker runs the whole module: the 30-stack campaign is made and run once
pytestmark = pytest.mark.xdist_group("stk_batch")


def _python_env():
    """The environment for subprocesses: the stk_astrometry these tests imported comes first."""
    import stk_astrometry

    env = dict(os.environ)
    lib = str(Path(stk_astrometry.__file__).resolve().parents[1])
    env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacks")
    listfile, special = make_campaign(root, N_STACKS, mix="small")
    return listfile, special


def _run_in_process(listfile, tmp_path_factory, *args):
    """``stk_batch @listfile <new folder> nworkers=2 *args`` in this process, its own PFILES."""
    out = tmp_path_factory.mktemp("run") / "camp"
    pf = tmp_path_factory.mktemp("pf")
    old = os.environ.get("PFILES")
    os.environ["PFILES"] = f"{pf};{REPO / 'param'}"
    try:
        rc = batch_main([f"@{listfile}", str(out), "nworkers=2", *args])
    finally:
        if old is None:
            os.environ.pop("PFILES", None)
        else:
            os.environ["PFILES"] = old
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def local_run(campaign, tmp_path_factory):
    """The campaign run once through the default LocalCluster (2 workers), verbose=1."""
    listfile, _ = campaign
    return _run_in_process(listfile, tmp_path_factory, "verbose=1")


# A campaign long enough that a kill or a control-C lands while stacks still run: the driver
# commits every 0.5 s, and on a quick machine the 30 stacks above all finish within one commit
# (CI saw the kill -9 test's first run record all 30 at once).  200 small stacks take >= 2 s.
N_LONG = 200


@pytest.fixture(scope="module")
def long_campaign(tmp_path_factory):
    listfile, _ = make_campaign(tmp_path_factory.mktemp("long"), N_LONG, mix="small")
    return listfile


def _science(table):
    """The table without the columns that differ between runs (timings, attempts)."""
    names = [n for n in table.dtype.names if n not in RUN_DEPENDENT]
    return table[names]


def _same_tables(a, b):
    a, b = _science(a), _science(b)
    assert a.dtype.names == b.dtype.names
    assert len(a) == len(b)
    for name in a.dtype.names:
        x, y = a[name], b[name]
        if name.endswith("file"):  # paths inside two different campaign folders
            x = np.array([Path(v).name for v in x.tolist()])
            y = np.array([Path(v).name for v in y.tolist()])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=name)  # NaN == NaN here
        else:
            assert x.tolist() == y.tolist(), name


def test_local_campaign_table(local_run, campaign):
    _, special = campaign
    table = read_campaign_table(local_run / "campaign.fits")
    assert len(table) == N_STACKS
    by_id = {r["stackid"]: r for r in table}
    # the failing stack is recorded with its error and did not stop the others
    bad = by_id[special[FAIL]]
    assert bad["status"] == "failed" and bad["failed_step"] == "match"
    assert special[FAIL] in bad["error"] or "det" in bad["error"]
    assert (table["status"] == "done").sum() == N_STACKS - 1
    nomatch = by_id[special[NOMATCH]]
    assert nomatch["status"] == "done" and nomatch["qa_flags"] & 1 and nomatch["method"] == "none"
    assert by_id[special[TWOSTEP]]["method"] == "twostep"
    done = table[table["status"] == "done"]
    fitted = done[done["method"] != "none"]
    assert np.isfinite(done["d_xi"]).all() and np.isfinite(fitted["d_xi_err"]).all()
    assert (fitted["qa_flags"] & 1 == 0).all()
    assert (done["attempts"] == 1).all()
    assert set(done["method"]) <= {"direct", "twostep", "none"}
    # every group count column adds up to at most the matched detections
    g = sum(done[f"n_match_gaia_g{k}"] for k in (1, 2, 3))
    assert (done["n_match_gaia_g1"] <= done["n_match_gaia"]).all() and (g >= 0).all()


def test_table_units_and_descriptions(local_run):
    import fitsio

    with fitsio.FITS(str(local_run / "campaign.fits")) as f:
        h = f["CAMPAIGN"].read_header()
        names = f["CAMPAIGN"].get_colnames()
    units = {h[f"TTYPE{i}"]: h.get(f"TUNIT{i}", "") for i in range(1, len(names) + 1)}
    comms = [h.get(f"TCOMM{i}", "") for i in range(1, len(names) + 1)]
    assert units["d_xi"] == "arcsec" and units["ra_stack"] == "deg" and units["t_fit"] == "s"
    assert all(c.strip() for c in comms), "every column has a TCOMM description"
    assert h["NSTACKS"] == N_STACKS and h["NFAILED"] == 1
    # astropy (TOPCAT's reader is stricter than fitsio's) reads it with the units
    from astropy.table import Table

    t = Table.read(local_run / "campaign.fits", hdu="CAMPAIGN")
    assert str(t["d_xi"].unit) == "arcsec"


def test_csv_twin_matches_fits(local_run):
    from astropy.table import Table

    fits_t = read_campaign_table(local_run / "campaign.fits")
    csv_t = Table.read(local_run / "campaign.csv", format="ascii.csv")
    assert list(csv_t.colnames) == list(fits_t.dtype.names)
    d = np.ma.filled(csv_t["d_xi"].astype(float), np.nan)
    np.testing.assert_allclose(d, fits_t["d_xi"], rtol=1e-15, equal_nan=True)
    assert list(csv_t["stackid"]) == fits_t["stackid"].tolist()


def test_table_against_tool_outputs(local_run, campaign, private_pfiles):
    """The table's numbers are those of the per-stack files, and of the tools run by hand."""
    from astropy.io import fits

    from stk_astrometry.tools.stk_match import main as match_main
    from stk_astrometry.tools.stk_xfm import main as xfm_main

    listfile, special = campaign
    table = read_campaign_table(local_run / "campaign.fits")
    by_id = {r["stackid"]: r for r in table}
    picks = [table["stackid"][0], special[TWOSTEP], special[NOMATCH]]
    for sid in picks:
        row = by_id[sid]
        with fits.open(row["xfmfile"]) as h:
            x = h["STKXFM"].data[0]
            assert float(x["d_xi"]) == pytest.approx(row["d_xi"], abs=1e-12)
            assert float(x["d_eta"]) == pytest.approx(row["d_eta"], abs=1e-12)
        # the tools, run by hand on the same inputs, give the same shift
        folder = next(p for p in listfile.parent.iterdir() if (p / f"{sid}_det.fits").exists())
        tmp = Path(local_run).parent / f"byhand_{sid}"
        tmp.mkdir()
        rc = match_main([str(folder / f"{sid}_det.fits"), str(folder / f"{sid}_gaia.fits"),
                         str(tmp / "pairs.fits"), f"wisefile={folder / f'{sid}_allwise.fits'}",
                         f"bestnbfile={folder / f'{sid}_bestnb.fits'}", "verbose=0", "mode=h"])
        assert rc == 0
        rc = xfm_main([str(tmp / "pairs.fits"), str(tmp / "xfm.fits"), "verbose=0", "mode=h"])
        assert rc == 0
        with fits.open(tmp / "xfm.fits") as h:
            x = h["STKXFM"].data[0]
            assert float(x["d_xi"]) == pytest.approx(row["d_xi"], abs=1e-9)
            assert float(x["d_eta"]) == pytest.approx(row["d_eta"], abs=1e-9)
            assert h[0].header.get("STKQA", h["STKXFM"].header.get("QAFLAGS", row["qa_flags"])) \
                is not None


def test_database_rows(local_run, campaign):
    _, special = campaign
    con = sqlite3.connect(local_run / "campaign.sqlite")
    try:
        steps = con.execute("SELECT stackid, step, status FROM steps").fetchall()
        status = dict(con.execute("SELECT stackid, status FROM stacks").fetchall())
        warn = con.execute("SELECT stackid, step, message FROM warnings").fetchall()
        runs = con.execute("SELECT status, n_done, n_failed FROM runs").fetchall()
    finally:
        con.close()
    assert status[special[FAIL]] == "failed"
    assert sum(1 for s in status.values() if s == "done") == N_STACKS - 1
    # one row per stack and step: match+fit for the done ones, match for the failed one
    assert len(steps) == 2 * (N_STACKS - 1) + 1
    # the NOMATCH stack's warnings are recorded with its name, not printed
    assert any(sid == special[NOMATCH] for sid, _, _ in warn)
    assert runs == [("finished", N_STACKS - 1, 1)]
    log = (local_run / "stk_batch.log").read_text()
    assert special[NOMATCH] in log


def test_plots_are_pngs(local_run):
    from stk_astrometry.campaign.report import PLOTS

    for name in PLOTS:
        data = (local_run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    page = (local_run / "index.html").read_text()
    for name in PLOTS:
        assert f'src="{name}"' in page


def test_resume_skips_finished_and_reruns_changed(local_run, campaign, capsys):
    listfile, special = campaign
    capsys.readouterr()
    # touching one stack's Gaia file reruns that stack; the failed stack is retried; the 28
    # other done ones are skipped
    sid = read_campaign_table(local_run / "campaign.fits")["stackid"][5]
    gaia = next(listfile.parent.glob(f"*/{sid}_gaia.fits"))
    os.utime(gaia, ns=(time.time_ns(), time.time_ns()))
    # temporary files a killed run left (nobody holds their lock): in the folder of a stack it
    # had started (so not recorded done) and beside the campaign table; the rerun removes both
    dead = [local_run / "stacks" / safe_name(sid) / f".{safe_name(sid)}_xfm.fits.deadbeef.tmp",
            local_run / ".campaign.fits.deadbeef.tmp"]
    for p in dead:
        p.write_bytes(b"SIMPLE  =                    T")
    rc = batch_main([f"@{listfile}", str(local_run), "nworkers=1", "verbose=1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 to run, 28 finished and unchanged" in out
    assert not [p for p in dead if p.exists()]
    table = read_campaign_table(local_run / "campaign.fits")
    assert table["attempts"][5] == 2 and table["attempts"][0] == 1


def test_report_action(local_run, capsys):
    os.unlink(local_run / "shifts.png")
    rc = batch_main(["", str(local_run), "action=report", "verbose=1"])
    assert rc == 0
    assert (local_run / "shifts.png").stat().st_size > 5000
    assert "30 stacks" in capsys.readouterr().out


def test_bad_parameters(tmp_path, campaign, capsys):
    listfile, _ = campaign
    (tmp_path / "c.yaml").write_text("stk_xfm:\n  estimator: nonsense\n")
    assert batch_main([f"@{listfile}", str(tmp_path / "o"), f"@@{tmp_path / 'c.yaml'}"]) == 1
    assert "estimator" in capsys.readouterr().err
    (tmp_path / "d.yaml").write_text("stk_match:\n  outfile: x.fits\n")
    assert batch_main([f"@{listfile}", str(tmp_path / "o"), f"@@{tmp_path / 'd.yaml'}"]) == 1
    assert "outfile" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file.txt").write_text("mine")
    assert batch_main([f"@{listfile}", str(busy)]) == 1
    assert "not a stk_batch campaign folder" in capsys.readouterr().err
    assert batch_main([f"@{tmp_path / 'nolist'}", str(tmp_path / "o2")]) == 1
    assert not (tmp_path / "o2").exists()


def test_yaml_sections_reach_the_steps(tmp_path, campaign):
    listfile, _ = campaign
    small = tmp_path / "three.lis"
    small.write_text("".join(f"{listfile.parent / line}\n" for line in
                             listfile.read_text().split()[4:7]))
    (tmp_path / "c.yaml").write_text(
        "stk_batch:\n  nworkers: 1\n  plots: no\nstk_xfm:\n  estimator: mixture\n")
    out = tmp_path / "camp"
    assert batch_main([f"@{small}", str(out), f"@@{tmp_path / 'c.yaml'}", "verbose=0"]) == 0
    table = read_campaign_table(out / "campaign.fits")
    assert set(table["estimator"]) == {"mixture"}
    assert not (out / "shifts.png").exists()


# ---------------------------------------------------------------------- separate scheduler

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_bin(name):
    path = Path(sys.executable).parent / "dask"
    if not path.exists():
        pytest.fail(f"the dask command is not installed next to {sys.executable}")
    return [str(path), name]


@pytest.mark.slow
def test_separate_scheduler_and_worker(campaign, local_run, tmp_path):
    """The same campaign through `dask scheduler` + `dask worker` processes started apart."""
    listfile, _ = campaign
    port = _free_port()
    env = _python_env()
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed below
    sched = subprocess.Popen([*_dask_bin("scheduler"), "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard", "--scheduler-file", str(tmp_path / "s.json")],
                             stdout=log, stderr=log, env=env)
    worker = None
    try:
        deadline = time.time() + 60
        while not (tmp_path / "s.json").exists():
            assert time.time() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        worker = subprocess.Popen([*_dask_bin("worker"), f"tcp://127.0.0.1:{port}",
                                   "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                  stdout=log, stderr=log, env=env)
        out = tmp_path / "camp"
        proc = subprocess.run(
            [sys.executable, str(REPO / "bin" / "stk_batch"), f"@{listfile}", str(out),
             f"scheduler=tcp://127.0.0.1:{port}", "verbose=1", "plots=no"],
            env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert f"scheduler tcp://127.0.0.1:{port}" in proc.stdout
        # nothing but the closing warning on stderr: per-stack warnings went to the database
        assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
            f"# stk_batch (stk_astrometry {_version()}): WARNING 1 of {N_STACKS} stacks failed "
            f"(listed in {out / 'campaign.fits'})"]
        _same_tables(read_campaign_table(out / "campaign.fits"),
                     read_campaign_table(local_run / "campaign.fits"))
        con = sqlite3.connect(out / "campaign.sqlite")
        workers = {w for (w,) in con.execute("SELECT worker FROM stacks WHERE worker IS NOT NULL")}
        con.close()
        assert len(workers) == 2, workers  # both external worker processes took stacks
    finally:
        for p in (worker, sched):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        log.close()


def _version():
    from stk_astrometry import __version__

    return __version__


# ---------------------------------------------------------------------- kill -9 and resume

def _done_count(db):
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM stacks WHERE status IN "
                               "('done', 'failed')").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return 0


@pytest.mark.slow
def test_kill_then_resume(long_campaign, tmp_path_factory, tmp_path):
    listfile = long_campaign
    out = tmp_path / "camp"
    env = _python_env()
    argv = [sys.executable, str(REPO / "bin" / "stk_batch"), f"@{listfile}", str(out),
            "nworkers=2", "verbose=0", "plots=no"]
    errfile = tmp_path / "first_run.err"
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    deadline = time.time() + 300
    while _done_count(out / "campaign.sqlite") < 5:
        assert proc.poll() is None, errfile.read_text()
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = _done_count(out / "campaign.sqlite")
    assert 5 <= n_before < N_LONG
    con = sqlite3.connect(out / "campaign.sqlite")
    n_done_before = con.execute("SELECT COUNT(*) FROM stacks WHERE status='done'").fetchone()[0]
    con.close()
    assert n_before - n_done_before in (0, 1)     # only the failing stack fails
    # the orphaned workers of the killed driver go away by themselves
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    # no debris: the temporary files of the writes the kill cut short are gone
    assert not [p for p in out.rglob("*.tmp")]
    table = read_campaign_table(out / "campaign.fits")
    uninterrupted = _run_in_process(listfile, tmp_path_factory, "verbose=0", "plots=no")
    _same_tables(table, read_campaign_table(uninterrupted / "campaign.fits"))
    con = sqlite3.connect(out / "campaign.sqlite")
    runs = con.execute("SELECT status, n_planned FROM runs ORDER BY run_id").fetchall()
    con.close()
    # the first run never finished; the second ran everything not recorded done (the stacks
    # never recorded and the failed ones: the failing stack, if it was recorded before the kill)
    assert runs[0][0] == "running" and runs[1] == ("finished", N_LONG - n_done_before)
    assert (table["attempts"] >= 1).all()
    assert group_gone(proc.pid, 60), "processes of the killed driver still ran after 60 s"


_SIGINT_DEFAULT = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)   # as at a terminal (a background job ignores it)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@pytest.mark.slow
def test_control_c_stops_the_run_cleanly(long_campaign, tmp_path):
    """A control-C at the terminal (SIGINT to the whole process group: stk_batch, its
    LocalCluster's process and the workers) while stacks run: stk_batch says it was
    interrupted and how to resume, in its own lines only -- no traceback of a worker or of
    Dask on the terminal (they go to stk_batch.log) -- and no process of the run is left."""
    listfile = long_campaign
    out = tmp_path / "camp"
    argv = [sys.executable, "-c", _SIGINT_DEFAULT, str(REPO / "bin" / "stk_batch"),
            f"@{listfile}", str(out), "nworkers=2", "verbose=1", "plots=no"]
    with open(tmp_path / "out.txt", "wb") as so, open(tmp_path / "err.txt", "wb") as se:
        proc = subprocess.Popen(argv, env=_python_env(), stdout=so, stderr=se,
                                start_new_session=True)
        deadline = time.time() + 300
        while _done_count(out / "campaign.sqlite") < 3:
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()
            assert time.time() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 1
    err = (tmp_path / "err.txt").read_text().splitlines()
    assert err and all(line.startswith("# stk_batch (stk_astrometry ") for line in err), err
    assert any("interrupted" in line and "run again to resume" in line for line in err)
    assert _done_count(out / "campaign.sqlite") < N_LONG    # it did stop
    assert group_gone(proc.pid, 60), "processes of the interrupted run still ran after 60 s"


# ---------------------------------------------------------------------- the page in a browser

@pytest.mark.slow
def test_index_html_in_headless_chromium(local_run, tmp_path):
    """index.html opens in real headless Chromium with every plot shown and no console error.

    Needs Debian's chromium; .ci/run installs it and sets STK_REQUIRE_BROWSER=1, which turns a
    missing browser into a failure instead of a skip.
    """
    from browser_check import check_page, find_chromium

    if find_chromium() is None:
        if os.environ.get("STK_REQUIRE_BROWSER"):
            pytest.fail("STK_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    # the checker itself can fail: a page with a missing image and a console error
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<img src="missing.png"><script>console.error("boom")</script></body></html>')
    rep = check_page(bad)
    assert any("boom" in e for e in rep.errors)
    assert rep.images == [("missing.png", 0, 0)]

    rep = check_page(local_run / "index.html", screenshot=True)
    assert rep.errors == [], rep.errors
    from stk_astrometry.campaign.report import PLOTS

    assert [src for src, _, _ in rep.images] == list(PLOTS)
    assert all(w > 100 and h > 100 for _, w, h in rep.images), rep.images
    assert rep.title.startswith("Campaign")
    assert rep.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


def test_update_copy_leaves_products_untouched(tmp_path):
    """update=copy: each stack's products are updated as copies in the campaign folder."""
    from stk_astrometry import api

    sim = api.simulate_stack(tmp_path / "stk", seed=7, ndet=40)
    before = {p: p.read_bytes() for p in (tmp_path / "stk" / "products").rglob("*") if p.is_file()}
    assert before
    lst = tmp_path / "s.lis"
    lst.write_text("stk\n")
    out = tmp_path / "camp"
    assert batch_main([f"@{lst}", str(out), "update=copy", "nworkers=1", "plots=no",
                       "verbose=0"]) == 0
    row = read_campaign_table(out / "campaign.fits")[0]
    assert row["status"] == "done", row["error"]
    if row["qa_flags"]:
        # spec 5.7: a flagged transform waits for review; the update step is skipped
        assert row["n_updated"] == -1
    else:
        assert row["n_updated"] > 0 and row["n_update_errors"] == 0
        copies = list((out / "stacks" / sim.stackid / "products").rglob("*.fits*"))
        assert len(copies) >= row["n_updated"]
    assert {p: p.read_bytes() for p in before} == before  # originals untouched
