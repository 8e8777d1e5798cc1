"""stk_update_wcs killed with SIGKILL at random moments: every file stays wholly old or wholly new.

A file edited in place is protected by a journal; the journal is rolled back by
``fitsedit.recover`` (which the tool itself runs on every file it is given).
Files without a journal must already be wholly old or wholly new.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from stk_astrometry import fitsedit, synthprod

# These start and kill -9 processes of their own, dozens of times (25-100 s): .ci/run runs
# them with the other slow tests; the in-process fault-hook tests of test_fitsedit.py cover
# every journal step in the default run.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEED = 20261120
IGNORE = {"HISTORY", "HISTNUM", "CHECKSUM", "DATASUM", "", "COMMENT"}


def _tool(folder, xfm, env, *, capture=True):
    return subprocess.Popen(
        [sys.executable, str(REPO / "bin" / "stk_update_wcs"), str(folder), str(xfm), "outdir=",
         "verbose=0", "mode=h"],
        env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture else subprocess.DEVNULL)


def _signature(path):
    """What must match between two 'new' versions: every card but HISTORY/checksums, all data."""
    with fits.open(path, checksum=True) as hdul:      # a bad checksum warns: an error here
        sig = []
        for hdu in hdul:
            cards = tuple((c.keyword, repr(c.value)) for c in hdu.header.cards
                          if c.keyword not in IGNORE)
            raw = b"" if hdu.data is None else np.ascontiguousarray(hdu.data).tobytes()
            sig.append((cards, raw))
    return sig


def _products(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))


def _primed(tmp_path, orig, xfm):
    """The tool's environment (own PFILES, no fault injection), after applying and undoing the
    transform once on ``orig``: headers get spare blocks, so that the next run patches most
    files in place under a journal (and still rewrites the ASPSOL3, which gains an HDU)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"))
    env.pop(fitsedit.FAULT_ENV, None)
    pf = tmp_path / "pf"
    pf.mkdir()
    env["PFILES"] = f"{pf};{REPO / 'param'}"
    for extra in ([], ["inverse=yes"]):
        proc = subprocess.run([sys.executable, str(REPO / "bin" / "stk_update_wcs"), str(orig),
                               str(xfm), "outdir=", "verbose=0", "mode=h", *extra],
                              env=env, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
    return env


def test_sigkill_leaves_every_file_old_or_new(tmp_path):
    rng = np.random.default_rng(SEED)
    orig = tmp_path / "orig"
    synthprod.write_product_tree(orig, ra_nom=201.2, dec_nom=26.6, rng=rng)
    # bigger event lists so that streamed rewrites take a while
    for i in range(2):
        synthprod.write_product("STKEVT3", orig / "stack" / f"big{i}.fits", ra_nom=201.2,
                                dec_nom=26.6, nrows=100_000, rng=rng)
    xfm = synthprod.write_stkxfm(tmp_path / "xfm.fits", d_xi_arcsec=0.3, d_eta_arcsec=-0.2,
                                 ra_ref_deg=201.2, dec_ref_deg=26.6)
    env = _primed(tmp_path, orig, xfm)

    ref = tmp_path / "ref"
    shutil.copytree(orig, ref)
    t0 = time.monotonic()
    proc = _tool(ref, xfm, env)
    _, err = proc.communicate(timeout=120)
    t_full = time.monotonic() - t0
    assert proc.returncode == 0, err.decode()
    old = {p.relative_to(orig): p.read_bytes() for p in _products(orig)}
    new = {p.relative_to(ref): _signature(p) if p.suffix == ".fits" else p.read_bytes()
           for p in _products(ref)}
    # only the files the run changes can be caught old or new (9 of the 44 never change)
    changing = {rel for rel in old if (ref / rel).read_bytes() != old[rel]}
    assert 0 < len(changing) < len(old)

    seen = {"old": 0, "new": 0, "journal": 0}
    # kills at random moments; the last one held inside a journal window by the fault hook,
    # so that the journal path (roll back on the next run) is exercised every time
    delays = list(rng.uniform(0.35, max(t_full, 0.6), 3)) + ["journal"]
    for delay in delays:
        work = tmp_path / f"work{delay if isinstance(delay, str) else f'{delay:.3f}'}"
        shutil.copytree(orig, work)
        if delay == "journal":
            proc = _tool(work, xfm, dict(env, **{fitsedit.FAULT_ENV: "journal:60"}),
                         capture=False)
            _wait_for(lambda w=work: next(iter(w.rglob("*" + fitsedit.JOURNAL_SUFFIX)), None))
        else:
            proc = _tool(work, xfm, env, capture=False)
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for p in _products(work):
            rel = p.relative_to(work)
            if p.name.endswith(fitsedit.JOURNAL_SUFFIX):
                continue
            if fitsedit.journal_path(p).exists():
                seen["journal"] += 1
                # a kill between the file's fsync and the journal's removal leaves every patch
                # written: recovery keeps that new version; any other journal is rolled back
                action = fitsedit.recover(p)
                if "rolled back" in action:
                    assert p.read_bytes() == old[rel], f"{rel}: not rolled back"
                else:
                    assert "completed" in action, action
                    assert _signature(p) == new[rel], f"{rel}: kept, but not wholly new"
                assert not fitsedit.journal_path(p).exists()
            raw = p.read_bytes()
            if raw == old[rel]:
                seen["old"] += rel in changing
                continue
            assert p.suffix == ".fits", f"{rel}: changed"
            assert _signature(p) == new[rel], f"{rel}: neither wholly old nor wholly new"
            seen["new"] += 1
        # a rerun finishes the job and cleans up what the kill left
        proc = _tool(work, xfm, env)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert not [p for p in work.rglob(".*") if p.is_file()], "temporary files left"
        for p in _products(work):
            rel = p.relative_to(work)
            got = _signature(p) if p.suffix == ".fits" else p.read_bytes()
            assert got == new[rel], rel
    # the kills landed before and after some of the run's writes, and inside a journal window
    print("kill outcomes", seen, "full run", t_full)
    assert seen["old"] > 0 and seen["new"] > 0 and seen["journal"] > 0, seen


def _wait_for(cond, timeout=180.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = cond()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_sigkill_inside_the_journal_window(tmp_path):
    """The fault hook (STK_UPDATE_WCS_FAULT) holds the tool inside the journal window.

    ``journal:<s>``: killed after the journal is in place, before any patch;
    ``patch:<s>``: killed after the first of the file's patches is written.  Either
    way the journal survives, recovery makes the file wholly old, every other file
    is wholly old or wholly new, and a rerun finishes the job.
    """
    rng = np.random.default_rng(SEED + 1)
    orig = tmp_path / "orig"
    synthprod.write_product_tree(orig, ra_nom=201.2, dec_nom=26.6, rng=rng)
    xfm = synthprod.write_stkxfm(tmp_path / "xfm.fits", d_xi_arcsec=0.3, d_eta_arcsec=-0.2,
                                 ra_ref_deg=201.2, dec_ref_deg=26.6)
    env = _primed(tmp_path, orig, xfm)
    ref = tmp_path / "ref"
    shutil.copytree(orig, ref)
    proc = _tool(ref, xfm, env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    old = {p.relative_to(orig): p.read_bytes() for p in _products(orig)}
    new = {p.relative_to(ref): _signature(p) if p.suffix == ".fits" else p.read_bytes()
           for p in _products(ref)}
    for where in ("journal", "patch"):
        work = tmp_path / f"work_{where}"
        shutil.copytree(orig, work)
        proc = _tool(work, xfm, dict(env, **{fitsedit.FAULT_ENV: f"{where}:60"}), capture=False)
        try:
            jpath = _wait_for(lambda w=work: next(iter(w.rglob("*" + fitsedit.JOURNAL_SUFFIX)),
                                                  None))
            target = jpath.with_name(jpath.name[1:-len(fitsedit.JOURNAL_SUFFIX)])
            rel = target.relative_to(work)
            if where == "patch":
                _wait_for(lambda t=target, r=rel: t.read_bytes() != old[r])
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        journals = list(work.rglob("*" + fitsedit.JOURNAL_SUFFIX))
        assert journals == [jpath]
        assert (target.read_bytes() == old[rel]) == (where == "journal")
        assert "rolled back" in fitsedit.recover(target)
        assert target.read_bytes() == old[rel] and not jpath.exists()
        for p in _products(work):
            r = p.relative_to(work)
            if p.read_bytes() != old[r]:
                assert _signature(p) == new[r], f"{r}: neither wholly old nor wholly new"
        proc = _tool(work, xfm, env)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert not [p for p in work.rglob(".*") if p.is_file()], "temporary files left"
        for p in _products(work):
            r = p.relative_to(work)
            assert (_signature(p) if p.suffix == ".fits" else p.read_bytes()) == new[r], r
