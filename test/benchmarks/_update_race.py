"""Two stk_update_wcs runs that meet on one product tree, and runs killed with SIGKILL.

Shared by the test suite (a few trials: ``test/test_stk_update_wcs.py``) and the
benchmark suite (the issue-15 sizes: ``bench_safety.py``).  Everything is real:
subprocesses of ``bin/stk_update_wcs``, real files, the kernel's locks.

A *world* is a synthetic stack's product tree (every §5.6 type, plus one bigger
event list so that a run takes long enough to be met), two transforms A and B
with the stack's tangent point, and the signature of every file in three
reference states: the original tree, the tree with A applied, with B applied.
After a trial every file must verify (FITS checksums) and match one of the
states the runs can legitimately leave; a file matching none is corrupt or
moved twice (a double application).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "lib") not in sys.path:
    sys.path.insert(0, str(REPO / "lib"))

#: Cards that differ between two runs doing the same thing (time stamps, counters).
IGNORE = {"HISTORY", "HISTNUM", "CHECKSUM", "DATASUM", "", "COMMENT", "DATE"}
RA0, DEC0 = 201.2, 26.6


@dataclass
class World:
    """A product tree and its reference states."""

    root: Path
    orig: Path
    xfm: dict                       # name ('A', 'B') -> transform file
    states: dict = field(default_factory=dict)    # state -> {rel: signature}
    env: dict = field(default_factory=dict)


def _env(tmp: Path) -> dict:
    pf = tmp / "pfiles"
    pf.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "lib")
    env["PFILES"] = f"{pf};{REPO / 'param'}"
    env.pop("STK_UPDATE_WCS_FAULT", None)
    return env


def argv(folder, xfmfile, *extra):
    """The command line of one in-place run (hidden parameters given: nothing learned)."""
    return [sys.executable, str(REPO / "bin" / "stk_update_wcs"), str(folder), str(xfmfile),
            "outdir=", "verbose=0", "mode=h", "lock_timeout=120", *extra]


def signature(path: Path):
    """What two files in the same state share; raises if the file does not verify."""
    if path.suffix != ".fits":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    from astropy.io import fits

    from stk_astrometry import fitsedit

    raw = path.read_bytes()
    data = [hashlib.sha256(raw[lay.data_offset:lay.end_offset]).hexdigest()
            for lay in fitsedit.scan_fits(path)]
    sig = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # a bad checksum warns: make it an error
        with fits.open(path, checksum=True) as hdul:
            if len(hdul) != len(data):
                raise ValueError(f"{len(hdul)} HDUs read, {len(data)} scanned")
            for hdu, digest in zip(hdul, data, strict=True):
                cards = tuple((c.keyword, repr(c.value)) for c in hdu.header.cards
                              if c.keyword not in IGNORE)
                sig.append((cards, digest))
    return tuple(sig)


def products(folder: Path):
    """Every file of the tree (temporary files and journals included: they are debris)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def tree_signature(folder: Path):
    return {str(p.relative_to(folder)): signature(p) for p in products(folder)}


def make_world(tmp: Path, *, big_rows=60_000, seed=20261205, kinds=None) -> World:
    """Build the tree and its three reference states (A applied, B applied by real runs)."""
    import numpy as np

    from stk_astrometry import synthprod

    tmp = Path(tmp)
    rng = np.random.default_rng(seed)
    orig = tmp / "orig"
    synthprod.write_product_tree(orig, ra_nom=RA0, dec_nom=DEC0, rng=rng,
                                 **({"kinds": kinds} if kinds else {}))
    if big_rows:
        synthprod.write_product("STKEVT3", orig / "stack" / "acisfJ1324480p263600_001N001_evt3.fits",
                                ra_nom=RA0, dec_nom=DEC0, nrows=big_rows, rng=rng)
    xfm = {
        "A": synthprod.write_stkxfm(tmp / "xfm_A.fits", d_xi_arcsec=0.31, d_eta_arcsec=-0.22,
                                    ra_ref_deg=RA0 + 0.01, dec_ref_deg=DEC0 - 0.01),
        "B": synthprod.write_stkxfm(tmp / "xfm_B.fits", d_xi_arcsec=-0.18, d_eta_arcsec=0.27,
                                    ra_ref_deg=RA0 + 0.01, dec_ref_deg=DEC0 - 0.01),
    }
    world = World(tmp, orig, xfm, env=_env(tmp))
    world.states["orig"] = tree_signature(orig)
    # state -> (state it starts from, transform, extra arguments); run in this order
    for state, (start, name, extra) in REFERENCE_STATES.items():
        ref = tmp / f"ref_{state}"
        shutil.copytree(orig if start == "orig" else tmp / f"ref_{start}", ref)
        proc = subprocess.run(argv(ref, xfm[name], *extra), env=world.env,
                              capture_output=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"reference run {state} failed: {proc.stderr.decode()}")
        world.states[state] = tree_signature(ref)
    return world


#: The reference states besides the original: A or B applied; A applied then undone (AI;
#: an undo restores positions to ~1e-12 deg, not bit for bit, and keeps the grown
#: headers); and A applied again after that (AIA).
REFERENCE_STATES = {
    "A": ("orig", "A", ()),
    "B": ("orig", "B", ()),
    "AI": ("A", "A", ("inverse=yes",)),
    "AIA": ("AI", "A", ()),
}
#: (for kill_and_rerun's start='AI': the state A gives from AI is AIA)


#: scenario -> (start state, run 1 (transform, extra args), run 2, states a file may end
#: in whatever the order the two runs reach it)
SCENARIOS = {
    "same": ("orig", ("A", ()), ("A", ()), {"A"}),
    "different": ("orig", ("A", ()), ("B", ()), {"A", "B"}),
    # from A applied: apply first (already applied) then undo -> AI; undo first then apply -> AIA
    "apply_vs_inverse": ("A", ("A", ()), ("A", ("inverse=yes",)), {"AI", "AIA"}),
    # from the original: undo first (nothing to undo) then apply -> A; apply then undo -> AI
    "inverse_vs_apply": ("orig", ("A", ("inverse=yes",)), ("A", ()), {"A", "AI"}),
}


@dataclass
class Outcome:
    """One trial: what went wrong (empty lists when nothing did)."""

    scenario: str
    corrupt: list = field(default_factory=list)     # unreadable / failing checksums
    wrong: list = field(default_factory=list)       # a state no legitimate order gives
    debris: list = field(default_factory=list)      # temporary files or journals left
    untrue_status: list = field(default_factory=list)
    statuses: tuple = ()
    seconds: float = 0.0


def _start_state(world: World, state: str, work: Path) -> None:
    src = world.orig if state == "orig" else world.root / f"ref_{state}"  # ref trees kept
    shutil.copytree(src, work)


def race(world: World, scenario: str, trial: int, *, stagger=0.0) -> Outcome:
    """Start two runs on one copy of the tree at (nearly) the same moment and judge the tree."""
    start, (x1, e1), (x2, e2), allowed = SCENARIOS[scenario]
    work = world.root / f"race_{scenario}_{trial}"
    _start_state(world, start, work)
    t0 = time.monotonic()
    p1 = subprocess.Popen(argv(work, world.xfm[x1], *e1), env=world.env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if stagger:
        time.sleep(stagger)
    p2 = subprocess.Popen(argv(work, world.xfm[x2], *e2), env=world.env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err1 = p1.communicate(timeout=900)[1].decode()
    err2 = p2.communicate(timeout=900)[1].decode()
    out = Outcome(scenario, statuses=(p1.returncode, p2.returncode),
                  seconds=time.monotonic() - t0)
    for rc, err, who in ((p1.returncode, err1, "run 1"), (p2.returncode, err2, "run 2")):
        failed = "ERROR" in err
        if "Traceback" in err or (rc == 0) == failed or rc not in (0, 1):
            out.untrue_status.append(f"{who}: exit {rc}, stderr {err.strip()[:300]!r}")
    for p in products(work):
        rel = str(p.relative_to(work))
        if p.name.startswith("."):
            out.debris.append(rel)
            continue
        try:
            sig = signature(p)
        except Exception as exc:  # noqa: BLE001 - any failure to read is corruption
            out.corrupt.append(f"{rel}: {type(exc).__name__}: {exc}")
            continue
        states = {s for s in world.states if world.states[s].get(rel) == sig}
        if not states & allowed:
            out.wrong.append(f"{rel}: matches {sorted(states) or 'no reference state'}, "
                             f"expected one of {sorted(allowed)}")
    # the statuses must say what happened: a run that exited 0 did all its files
    if scenario == "different":
        for rc, name in ((p1.returncode, x1), (p2.returncode, x2)):
            if rc == 0:
                bad = [rel for rel, sig in tree_signature(work).items()
                       if world.states[name].get(rel) != sig]
                if bad:
                    out.untrue_status.append(f"run with {name} exited 0 but {len(bad)} files "
                                             f"are not in state {name}: {bad[:3]}")
    shutil.rmtree(work, ignore_errors=True)
    return out


@dataclass
class KillOutcome:
    """One killed run and its rerun."""

    delay: float
    corrupt: list = field(default_factory=list)
    debris: list = field(default_factory=list)
    rerun_status: int = 0
    journals_seen: int = 0


def kill_and_rerun(world: World, trial: int, delay: float, *, fault: str = "",
                   start: str = "orig") -> KillOutcome:
    """Kill an in-place run (A) after ``delay`` s; check every file; rerun; check debris.

    ``start``: 'orig' (a fresh tree: every header grows, so every file is rewritten by
    temp + rename) or 'AI' (A applied and undone: the headers have room, so most files
    are patched in place under a journal); the run must leave each file in the start
    state or in the state A gives from there.  With ``fault`` (the fault hook, e.g.
    'journal:30') the kill waits for a journal to appear, so it lands inside a journal
    window.
    """
    from stk_astrometry import fitsedit

    old_state, new_state = (start, "A") if start == "orig" else (start, start + "A")
    work = world.root / f"kill_{trial}"
    _start_state(world, start, work)
    env = dict(world.env)
    if fault:
        env[fitsedit.FAULT_ENV] = fault
    proc = subprocess.Popen(argv(work, world.xfm["A"]), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if fault:
        t0 = time.monotonic()
        while (not any(work.rglob("*" + fitsedit.JOURNAL_SUFFIX))
               and time.monotonic() - t0 < 300 and proc.poll() is None):
            time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    out = KillOutcome(delay)
    for p in products(work):
        if p.name.startswith("."):
            continue
        rel = str(p.relative_to(work))
        if fitsedit.journal_path(p).exists():
            out.journals_seen += 1
            continue                        # inside the journal window: the rerun decides
        try:
            sig = signature(p)
        except Exception as exc:  # noqa: BLE001
            out.corrupt.append(f"{rel} (after the kill): {type(exc).__name__}: {exc}")
            continue
        if sig not in (world.states[old_state].get(rel), world.states[new_state].get(rel)):
            out.corrupt.append(f"{rel} (after the kill): neither wholly old nor wholly new")
    rerun = subprocess.run(argv(work, world.xfm["A"]), env=world.env, capture_output=True,
                           timeout=900)
    out.rerun_status = rerun.returncode
    for p in products(work):
        rel = str(p.relative_to(work))
        if p.name.startswith("."):
            out.debris.append(rel)
            continue
        try:
            sig = signature(p)
        except Exception as exc:  # noqa: BLE001
            out.corrupt.append(f"{rel} (after the rerun): {type(exc).__name__}: {exc}")
            continue
        if sig != world.states[new_state].get(rel):
            out.corrupt.append(f"{rel} (after the rerun): not the updated version")
    shutil.rmtree(work, ignore_errors=True)
    return out
