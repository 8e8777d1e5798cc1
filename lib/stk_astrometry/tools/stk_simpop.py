"""stk_simpop - write a simulated campaign: N stacks over the sky with overlaps and known truth.

Writes, into a new directory, one folder per stack (``stacks/<stackid>/``) holding the
detection, Gaia, ALLWISE and best-neighbour tables in the layouts stk_match reads (the
names stk_simulate uses), a stack list for stk_batch (``stacks.lis``, and the table
``stacks.fits``), and the whole truth in one file (``truth.fits``: one row per stack, one per
detection with its sky source so that overlapping stacks can be compared).  Seeded; the
model is in share/doc/stk_simpop.txt and :mod:`stk_astrometry.core.population`.
"""

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import OutputError, ParameterError
from ..runner import run_tool
from ..fitsutil import make_durable
from ..simfiles import check_outdir, install_tree, umask

TOOLNAME = "stk_simpop"
logger = logging.getLogger(__name__)

__all__ = ["config_from_params", "main", "write_population"]

#: File suffixes inside a stack folder (as stk_simulate writes them; stk_batch looks for them).
SUFFIXES = {"det": "_det.fits", "gaia": "_gaia.fits", "allwise": "_allwise.fits",
            "bestnb": "_bestnb.fits"}


def main(argv=None) -> int:
    """Run stk_simpop; return the exit status."""
    return run_tool(TOOLNAME, argv, _body, description=__doc__)


def config_from_params(params):
    """The :class:`~stk_astrometry.core.population.PopConfig` of resolved parameters."""
    from ..core.population import REGIMES, PopConfig

    text = str(params["regimes"] or "").replace(",", " ").split()
    try:
        weights = tuple(float(t) for t in text)
    except ValueError:
        raise ParameterError(f"regimes={params['regimes']!r}: give {len(REGIMES)} numbers "
                             f"(weights of {', '.join(REGIMES)})") from None
    kwargs = {"n_stacks": params["nstacks"], "overlap_frac": params["overlap_frac"],
              "hrc_frac": params["hrc_frac"], "ndet_median": params["ndet_median"],
              "shift_r90_arcsec": params["shift_r90"], "sys_abs_arcsec": params["sys_abs"],
              "regime_weights": weights}
    for name, value in kwargs.items():
        if value is None:
            raise ParameterError(f"{name}=INDEF: a value is needed")
    try:
        return PopConfig(**kwargs)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None


def _records(columns):
    """A numpy structured array from (name, array) pairs (strings as fixed-width bytes)."""
    import numpy as np

    arrays = []
    for _, a in columns:
        a = np.asarray(a)
        if a.dtype.kind == "U":
            a = np.char.encode(a, "ascii") if a.size else a.astype("S1")
        arrays.append(a)
    n = arrays[0].shape[0] if arrays else 0
    dtype = [(name, a.dtype if a.dtype.kind != "S" or a.dtype.itemsize else "S1")
             for (name, _), a in zip(columns, arrays, strict=True)]
    out = np.zeros(n, dtype=dtype)
    for (name, _), a in zip(columns, arrays, strict=True):
        out[name] = a
    return out


def _write(path, extname, columns, units, keywords):
    """One binary table (fitsio: the campaign writes tens of thousands of these)."""
    import fitsio

    data = _records(columns)
    header = [{"name": k, "value": v, "comment": c} for k, (v, c) in keywords.items()]
    header.append({"name": "HDUNAME", "value": extname, "comment": ""})
    with fitsio.FITS(str(path), "rw", clobber=True) as f:
        f.write(data, extname=extname, header=header,
                units=[units.get(name, "") for name, _ in columns])


def _epoch_keywords(epoch_yr):
    from astropy.time import Time

    t = Time(epoch_yr, format="decimalyear", scale="tt")
    return {"DATE-OBS": (t.isot[:19], "stack epoch (simulated)"),
            "MJD-OBS": (round(float(t.mjd), 6), "[d] stack epoch (simulated)")}


def write_stack(st, folder):
    """Write one stack's four catalogs into ``folder``; return {key: path}."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    n = st.det_region_id.size
    common = {"RA_STACK": (st.ra_stack_deg, "[deg] tangent point"),
              "DEC_STACK": (st.dec_stack_deg, "[deg] tangent point"),
              "STACKID": (st.stack_id, "simulated stack")}
    paths = {k: folder / f"{st.stack_id}{s}" for k, s in SUFFIXES.items()}
    _write(paths["det"], "SRCLIST", [
        ("detect_stack_id", np.full(n, st.stack_id)), ("region_id", st.det_region_id),
        ("ra", st.det_ra_deg), ("dec", st.det_dec_deg),
        ("err_ellipse_r0", st.det_r0_arcsec), ("err_ellipse_r1", st.det_r1_arcsec),
        ("err_ellipse_ang", st.det_ang_deg), ("likelihood_class", st.det_class),
        ("sat_src_flag", st.det_sat), ("conv_hull", st.det_hull), ("man_inc", st.det_man_inc),
        ("theta", st.det_theta_arcmin), ("src_cnts", st.det_src_cnts),
        ("ra_stack", np.full(n, st.ra_stack_deg)), ("dec_stack", np.full(n, st.dec_stack_deg)),
        ("instrument", np.full(n, st.instrument)),
    ], {"ra": "deg", "dec": "deg", "err_ellipse_r0": "arcsec", "err_ellipse_r1": "arcsec",
        "err_ellipse_ang": "deg", "theta": "arcmin", "src_cnts": "count", "ra_stack": "deg",
        "dec_stack": "deg"},
        {**common, "INSTRUME": (st.instrument, ""), **_epoch_keywords(st.epoch_yr)})
    ng = st.gaia_source_id.size
    _write(paths["gaia"], "GAIA", [
        ("source_id", st.gaia_source_id), ("ra", st.gaia_ra_deg), ("dec", st.gaia_dec_deg),
        ("pmra", st.gaia_pmra), ("pmdec", st.gaia_pmdec), ("ref_epoch", np.full(ng, 2016.0)),
    ], {"ra": "deg", "dec": "deg", "pmra": "mas/yr", "pmdec": "mas/yr", "ref_epoch": "yr"},
        {**common, "RSTACK": (10.0, "[arcmin] r_stack")})
    _write(paths["allwise"], "ALLWISE", [
        ("allwise_oid", st.wise_oid), ("ra", st.wise_ra_deg), ("dec", st.wise_dec_deg),
        ("sigra", st.wise_sigra), ("sigdec", st.wise_sigdec), ("cc_flags", st.wise_cc_flags),
    ], {"ra": "deg", "dec": "deg", "sigra": "arcsec", "sigdec": "arcsec"},
        {**common, "RSTACK": (10.0, "[arcmin] r_stack")})
    _write(paths["bestnb"], "BESTNB", [
        ("source_id", st.bn_source_id), ("allwise_oid", st.bn_allwise_oid),
    ], {}, common)
    return paths


#: Per-stack truth columns: (column, StackSky attribute, unit, description).
STACK_TRUTH = (
    ("stackid", "stack_id", "", "stack"),
    ("field_id", "field_id", "", "field (stacks sharing sky)"),
    ("n_in_field", "n_in_field", "", "stacks in the field"),
    ("instrument", "instrument", "", "ACIS or HRC"),
    ("ra_stack", "ra_stack_deg", "deg", "tangent point"),
    ("dec_stack", "dec_stack_deg", "deg", "tangent point"),
    ("glat", "glat_deg", "deg", "Galactic latitude of the field"),
    ("epoch", "epoch_yr", "yr", "stack epoch"),
    ("exposure", "exposure_ks", "ks", "exposure"),
    ("regime", "regime", "", "error regime (csc nofloor inflated wavdetect)"),
    ("regime_value", "regime_value", "", "missing floor (arcsec) or inflation factor"),
    ("d_xi", "d_xi_arcsec", "arcsec", "true shift: xi + d_xi = Gaia frame"),
    ("d_eta", "d_eta_arcsec", "arcsec", "true shift: eta + d_eta = Gaia frame"),
    ("density_gaia", "gaia_density", "arcmin-2", "Gaia density within r_stack"),
    ("density_wise", "wise_density", "arcmin-2", "ALLWISE density within r_stack"),
    ("crb_xi", "crb_xi_arcsec", "arcsec", "Cramer-Rao bound, true errors, direct pairs"),
    ("crb_eta", "crb_eta_arcsec", "arcsec", "Cramer-Rao bound, true errors, direct pairs"),
    ("n_crb", "n_crb", "", "pairs entering the bound"),
)


def _truth_hdus(stacks, det_rows, cfg, seed):
    """The truth file's two tables as astropy HDUs (one write at the end)."""
    import numpy as np
    from astropy.io import fits

    def col(name, values, unit, desc):
        a = np.asarray(values)
        if a.dtype.kind == "U":
            fmt = f"{max(int(a.dtype.itemsize // 4), 1)}A"
        elif a.dtype.kind == "b":
            fmt = "L"
        elif a.dtype.kind in "iu":
            fmt = "K" if a.dtype.itemsize == 8 else "J"
        else:
            fmt = "D"
        return fits.Column(name=name, format=fmt, unit=unit or None, array=a), desc

    def table(name, cols):
        hdu = fits.BinTableHDU.from_columns([c for c, _ in cols], name=name)
        for i, (_, desc) in enumerate(cols, start=1):
            hdu.header[f"TCOMM{i}"] = desc
        return hdu

    s_cols = [col(c, [getattr(s, a) for s in stacks], u, d) for c, a, u, d in STACK_TRUTH]
    d = {k: np.concatenate(v) if v else np.zeros(0) for k, v in det_rows.items()}
    d_cols = [
        col("stackid", d["stackid"], "", "stack"),
        col("region_id", d["region_id"].astype(np.int32), "", "detection in the stack"),
        col("msid", d["msid"].astype(np.int64), "", "sky source (master source); -1 spurious"),
        col("ra_true", d["ra_true"], "deg", "true position at the stack epoch"),
        col("dec_true", d["dec_true"], "deg", "true position at the stack epoch"),
        col("sigma_true_major", d["sig_a"], "arcsec", "true 1-sigma major axis"),
        col("sigma_true_minor", d["sig_b"], "arcsec", "true 1-sigma minor axis"),
        col("gaia_id", d["gaia_id"].astype(np.int64), "", "true Gaia counterpart, -1 none"),
        col("wise_id", d["wise_id"].astype(np.int64), "", "true ALLWISE counterpart, -1 none"),
    ]
    primary = fits.PrimaryHDU()
    primary.header["CONTENT"] = ("STKPOPTRUTH", "stk_simpop truth")
    primary.header["SEED"] = (seed, "random seed")
    primary.header["NSTACKS"] = (len(stacks), "stacks")
    primary.header["SYSABS"] = (cfg.sys_abs_arcsec, "[arcsec] injected absolute systematic")
    primary.header["SHIFTR90"] = (cfg.shift_r90_arcsec, "[arcsec] 90% radius of true shifts")
    primary.header["OVERLAP"] = (cfg.overlap_frac, "fraction of stacks in shared fields")
    return fits.HDUList([primary, table("STACKS", s_cols), table("DETECTIONS", d_cols)])


def write_population(cfg, seed, folder, *, progress=None):
    """Simulate the population and write it under ``folder`` (an existing empty folder).

    Returns
    -------
    list of StackSky-like summaries (the per-stack truth rows, without the arrays).
    """
    import numpy as np

    from ..core.population import population_fields

    folder = Path(folder)
    (folder / "stacks").mkdir()
    summaries = []
    det_rows = {k: [] for k in ("stackid", "region_id", "msid", "ra_true", "dec_true", "sig_a",
                                "sig_b", "gaia_id", "wise_id")}
    listing = []
    table_rows = []
    for field in population_fields(cfg, seed=seed):
        for st in field.stacks:
            paths = write_stack(st, folder / "stacks" / st.stack_id)
            rel = {k: str(p.relative_to(folder)) for k, p in paths.items()}
            listing.append(f"stacks/{st.stack_id}")
            table_rows.append((st.stack_id, rel["det"], rel["gaia"], rel["allwise"],
                               rel["bestnb"]))
            n = st.det_region_id.size
            det_rows["stackid"].append(np.full(n, st.stack_id))
            det_rows["region_id"].append(st.det_region_id)
            det_rows["msid"].append(st.det_key)
            det_rows["ra_true"].append(st.det_true_ra_deg)
            det_rows["dec_true"].append(st.det_true_dec_deg)
            det_rows["sig_a"].append(st.det_sigma_true_major)
            det_rows["sig_b"].append(st.det_sigma_true_minor)
            det_rows["gaia_id"].append(st.det_gaia_id)
            det_rows["wise_id"].append(st.det_wise_id)
            summaries.append(_summary(st))
            if progress is not None:
                progress(len(summaries))
    (folder / "stacks.lis").write_text("\n".join(listing) + "\n", encoding="utf-8")
    names = ("stackid", "detfile", "gaiafile", "wisefile", "bestnbfile")
    _write(folder / "stacks.fits", "STACKS",
           [(nm, np.array([r[i] for r in table_rows])) for i, nm in enumerate(names)], {}, {})
    _truth_hdus(summaries, det_rows, cfg, seed).writeto(folder / "truth.fits")
    return summaries


def _summary(st):
    """The stack's scalar truth (drops the per-row arrays, so memory stays small)."""
    from types import SimpleNamespace

    return SimpleNamespace(**{a: getattr(st, a) for _, a, _, _ in STACK_TRUTH})


def _body(params):
    import numpy as np

    outdir = params["outdir"]
    clobber = bool(params["clobber"])
    check_outdir(outdir, clobber)
    cfg = config_from_params(params)
    seed = params["seed"]
    if seed is None:
        raise ParameterError("seed=INDEF: give a seed (the population is always reproducible)")
    out = Path(outdir)
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    step = max(cfg.n_stacks // 10, 1)

    def progress(k):
        if k % step == 0 or k == cfg.n_stacks:
            logger.info("%d / %d stacks written", k, cfg.n_stacks)

    try:
        summaries = write_population(cfg, seed, tmp, progress=progress)
        # the files were written unsynced: durable together (one syncfs) before the rename,
        # so the tree never appears without its data after a system crash
        walked = list(os.walk(tmp))
        make_durable([Path(d) / f for d, _, files in walked for f in files],
                     folders=[Path(d) for d, _, _ in walked])
        os.chmod(tmp, 0o777 & ~umask())
        install_tree(tmp, out)
    except OSError as exc:
        raise OutputError(f"cannot write outdir={outdir}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    k = np.array([s.n_in_field for s in summaries])
    shift = np.hypot([s.d_xi_arcsec for s in summaries], [s.d_eta_arcsec for s in summaries])
    logger.info("Wrote %d stacks (%d in overlapping fields) under %s; true shifts: median "
                "%.2f\", 90%% within %.2f\"", len(summaries), int(np.count_nonzero(k > 1)), out,
                float(np.median(shift)), float(np.percentile(shift, 90)))
    return 0
