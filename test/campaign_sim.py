"""Seeded simulated campaigns for the stk_batch tests and benchmarks (fast fitsio writes).

``make_campaign(root, n, seed=...)`` writes ``n`` stack folders in the layout ``stk_simulate``
uses (``<stackid>_det.fits``, ``_gaia``, ``_allwise``, ``_bestnb``, ``_truth``) and a stack list
``stacks.lis``.  With ``specials=True`` three stacks are made to exercise the campaign's
branches: one whose detections file is corrupt (the stack fails), one with no counterpart
anywhere (NOMATCH), and one where ALLWISE has many more matches than Gaia (two-step path).
The stack mix otherwise follows the speed benchmark's: 10-200 detections, Gaia density
0.5-50 per square arcmin (log-uniform), ALLWISE up to 5.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FAIL, NOMATCH, TWOSTEP = "fail", "nomatch", "twostep"


def _array(table):
    """An astropy Table as a numpy structured array fitsio writes (strings as bytes)."""
    cols = []
    for name in table.colnames:
        col = np.asarray(table[name])
        if col.dtype.kind == "U":
            col = np.char.encode(col, "ascii")
        cols.append((name, col))
    out = np.zeros(len(table), dtype=[(n, c.dtype, c.shape[1:]) for n, c in cols])
    for n, c in cols:
        out[n] = c
    return out


def _header(meta):
    recs = []
    for name, value in meta.items():
        value, comment = value if isinstance(value, tuple) else (value, "")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        recs.append({"name": name, "value": value, "comment": comment})
    return recs


def write_stack_fitsio(sim, folder):
    """Write a simulated stack's five tables into ``folder`` with fitsio; return {key: path}."""
    import fitsio

    from stk_astrometry.simulate import catalog_tables

    extnames = {"det": "SRCLIST", "gaia": "GAIA", "allwise": "ALLWISE", "bestnb": "BESTNB",
                "truth": "TRUTH"}
    suffix = {"det": "_det.fits", "gaia": "_gaia.fits", "allwise": "_allwise.fits",
              "bestnb": "_bestnb.fits", "truth": "_truth.fits"}
    tables = catalog_tables(sim)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, table in tables.items():
        path = folder / f"{sim.stack_id}{suffix[key]}"
        units = [str(table[c].unit) if table[c].unit is not None else "" for c in table.colnames]
        with fitsio.FITS(str(path), "rw", clobber=True) as f:
            f.write_table(_array(table), extname=extnames[key], units=units,
                          header=_header(table.meta))
        paths[key] = path
    return paths


def stack_config(i, rng, kind=None, *, mix="bench"):
    """The SimConfig of stack ``i`` of the benchmark mix (or of a special kind).

    ``mix="small"`` keeps the test suite cheap: 10-60 detections, Gaia 0.5-5 per arcmin^2.
    """
    from stk_astrometry.simulate import SimConfig

    sid = f"acisfJ{i:07d}p000000_001"
    if kind == NOMATCH:
        return SimConfig(ndet=20, gaia_density=0.05, gaia_frac=0.0, wise_density=0.05,
                         wise_frac=0.0, stack_id=sid)
    if kind == TWOSTEP:
        return SimConfig(ndet=120, gaia_density=0.3, gaia_frac=0.03, wise_density=3.0,
                         wise_frac=0.8, wise_gaia_frac=0.9, stack_id=sid)
    top, nmax = (50.0, 201) if mix == "bench" else (5.0, 61)
    dens = float(np.exp(rng.uniform(np.log(0.5), np.log(top))))
    return SimConfig(ndet=int(rng.integers(10, nmax)), gaia_density=dens,
                     wise_density=min(dens, 5.0), stack_id=sid)


def make_campaign(root, n, *, seed=20261205, specials=True, start=0, mix="bench"):
    """Write ``n`` seeded stacks under ``root``; return (list file, {kind: stackid}).

    Stacks ``start .. start+n-1``; each is seeded from (seed, index) alone, so a stack is the
    same whatever ``n`` is.
    """
    from stk_astrometry.simulate import simulate_stack

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    kinds = {}
    if specials:
        kinds = {start + 1: FAIL, start + 2: NOMATCH, start + 3: TWOSTEP}
    folders, special_ids = [], {}
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i])
        cfg = stack_config(i, rng, kinds.get(i), mix=mix)
        folder = root / f"s{i:05d}"
        if not (folder / f"{cfg.stack_id}_gaia.fits").exists():
            sim = simulate_stack(cfg, rng=rng)
            write_stack_fitsio(sim, folder)
            if kinds.get(i) == FAIL:
                det = folder / f"{cfg.stack_id}_det.fits"
                det.write_bytes(det.read_bytes()[:4000])  # truncated: not a readable FITS file
        if i in kinds:
            special_ids[kinds[i]] = cfg.stack_id
        folders.append(folder.name)
    listfile = root / "stacks.lis"
    listfile.write_text("".join(f"{f}\n" for f in folders))
    return listfile, special_ids


def make_chunk(args):
    """``make_campaign`` over (root, start, n, seed) without specials (a process-pool job)."""
    root, start, n, seed = args
    make_campaign(root, n, seed=seed, specials=False, start=start)
    return n
