"""Files of a simulated stack: its tables and data products written into a folder.

The library side of ``stk_simulate`` (and of :func:`stk_astrometry.api.simulate_stack`): the
parameters -> :class:`~stk_astrometry.simulate.SimConfig` mapping, the table files in the
layouts ``stk_match`` reads, the synthetic data-product tree, and the atomic installation of
the finished folder.  The model itself is :mod:`stk_astrometry.simulate` (no I/O there).
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError, ParameterError

__all__ = ["check_outdir", "config_from_params", "install_tree", "output_names", "table_hdul",
           "umask", "write_products", "write_stack"]

#: Table key -> (file suffix, EXTNAME).
_TABLE_FILES = {
    "det": ("_det.fits", "SRCLIST"),
    "gaia": ("_gaia.fits", "GAIA"),
    "allwise": ("_allwise.fits", "ALLWISE"),
    "bestnb": ("_bestnb.fits", "BESTNB"),
    "truth": ("_truth.fits", "TRUTH"),
}
#: Parameter -> SimConfig field.
_PARAM_TO_CONFIG = {
    "ra_stack": "ra_stack_deg",
    "dec_stack": "dec_stack_deg",
    "instrument": "instrument",
    "ndet": "ndet",
    "r_stack": "r_stack_arcmin",
    "shift_xi": "shift_xi_arcsec",
    "shift_eta": "shift_eta_arcsec",
    "shift_sigma": "shift_sigma_arcsec",
    "gaia_density": "gaia_density",
    "gaia_frac": "gaia_frac",
    "null_pm_frac": "null_pm_frac",
    "high_pm_frac": "high_pm_frac",
    "epoch_gap": "epoch_gap_yr",
    "wise_density": "wise_density",
    "wise_frac": "wise_frac",
    "wise_gaia_frac": "wise_gaia_frac",
    "multi_frac": "multi_frac",
    "clean_frac": "clean_frac",
    "wise_shift_xi": "wise_shift_xi_arcsec",
    "wise_shift_eta": "wise_shift_eta_arcsec",
    "false_frac": "false_frac",
    "match_radius": "match_radius_arcsec",
    "err_floor": "err_floor_arcsec",
    "missing_floor": "missing_floor_arcsec",
    "err_scale": "stated_err_scale",
    "bright_outliers": "bright_outliers",
}
#: Parameters that may not be INDEF.
_REQUIRED = ("ra_stack", "dec_stack", "ndet", "r_stack", "shift_sigma", "gaia_density",
             "wise_density", "epoch_gap", "wise_shift_xi", "wise_shift_eta", "match_radius",
             "err_floor", "missing_floor", "err_scale", "bright_outliers")


def config_from_params(params):
    """Build the :class:`~stk_astrometry.simulate.SimConfig` from resolved parameters.

    Raises
    ------
    ParameterError
        For an INDEF where a value is needed, or values the model rejects.
    """
    from .simulate import SimConfig

    kwargs = {}
    for pname, field_name in _PARAM_TO_CONFIG.items():
        value = params[pname]
        if value is None and pname in _REQUIRED:
            raise ParameterError(f"{pname}=INDEF: a value is needed")
        if value is not None:
            kwargs[field_name] = value
    stackid = params["stackid"]
    if stackid:
        kwargs["stack_id"] = stackid.strip()
    instrument = kwargs.get("instrument")
    if instrument is not None:
        kwargs["instrument"] = instrument.upper()
    return SimConfig(**kwargs)


def output_names(stack_id):
    """Table key -> file name inside the output directory (``<stackid>_det.fits`` ...)."""
    return {key: f"{stack_id}{suffix}" for key, (suffix, _) in _TABLE_FILES.items()}


def check_outdir(outdir, clobber):
    """Refuse an existing non-empty directory (clobber=no) or a file; before any work."""
    if outdir is None or str(outdir).strip() == "":
        raise ParameterError("outdir is blank: give the output directory")
    path = Path(outdir)
    if path.exists() and not path.is_dir():
        raise OutputError(f"outdir={outdir} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not clobber:
        raise OutputError(f"Clobber set to no, and output directory {outdir} exists and is not empty (outdir).")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"outdir={outdir}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"outdir={outdir}: folder {parent} is not writable")


def table_hdul(table, extname):
    """Primary + one binary table HDU, keywords set the CXC way (long names as DTYPEn/DVALn)."""
    from astropy.io import fits

    from .fitsutil import set_keyword

    meta = dict(table.meta)
    plain = table.copy(copy_data=False)
    plain.meta.clear()
    hdu = fits.table_to_hdu(plain)
    hdu.name = extname
    primary = fits.PrimaryHDU()
    for hdr in (primary.header, hdu.header):
        for name, value in meta.items():
            value, comment = value if isinstance(value, tuple) else (value, "")
            set_keyword(hdr, name, value, comment)
    hdu.header["HDUNAME"] = extname
    return fits.HDUList([primary, hdu])


def write_stack(sim, folder, params, *, shown_folder=None):
    """Write the five tables of ``sim`` into ``folder``; return {key: path}.

    ``shown_folder``: the folder to name in the log when ``folder`` is a temporary
    one renamed into place afterwards.
    """
    from .fitsutil import write_fits
    from .simulate import catalog_tables

    tables = catalog_tables(sim)
    names = output_names(sim.stack_id)
    paths = {}
    for key, (_, extname) in _TABLE_FILES.items():
        path = Path(folder) / names[key]
        shown = Path(shown_folder) / names[key] if shown_folder is not None else None
        write_fits(table_hdul(tables[key], extname), path, params, clobber=True, shown_as=shown)
        paths[key] = path
    return paths


def write_products(sim, folder, *, rng):
    """Write one synthetic data product per spec §5.6 type under ``folder``.

    The products are built by :mod:`stk_astrometry.synthprod` (not here), in
    its CSC-like tree (``obs/<obsid>/``, ``obs/<obsid>/r0012/``, ``stack/``,
    ``stack/r0012/``, ``master/``), all pointed at the stack's tangent point;
    stack-level file names carry this stack's id instead of synthprod's example
    stack.  The counts images (observation and stack ``_b_img3``) show the simulated
    sources (:func:`stk_astrometry.skyimage.simulated_sources`).  Returns the list of
    paths, in ``PRODUCT_KINDS`` order.
    """
    from . import skyimage, synthprod
    from .products import PRODUCT_TABLE

    levels = {p.name: p.level for p in PRODUCT_TABLE}
    sub = {"observation": "obs/14031", "observation source": "obs/14031/r0012",
           "stack": "stack", "stack source": "stack/r0012", "master": "master"}
    cfg = sim.config
    sources = skyimage.simulated_sources(sim)
    example_stack = synthprod.product_filename("STKEVT3", instrument=cfg.instrument)
    example_stack = example_stack[: example_stack.index("N")]  # e.g. acisfJ1348473p263535_002
    # Master products are named after a source; give them this stack's position.
    example_master = synthprod.product_filename("BAYESBLKS").split("N")[0]  # 2CXOJ...
    pos = re.search(r"J\d{7}[pm]\d{6}", sim.stack_id)
    master = f"2CXO{pos.group(0)}" if pos else example_master
    paths = []
    for kind in synthprod.PRODUCT_KINDS:
        where = Path(folder) / sub[levels[kind]]
        where.mkdir(parents=True, exist_ok=True)
        name = synthprod.product_filename(kind, instrument=cfg.instrument)
        name = name.replace(example_stack, sim.stack_id).replace(example_master, master)
        paths.append(synthprod.write_product(kind, where / name, ra_nom=cfg.ra_stack_deg,
                                             dec_nom=cfg.dec_stack_deg,
                                             instrument=cfg.instrument, rng=rng,
                                             sources=sources))
    return paths


def install_tree(tmp, outdir):
    """Move the finished temporary tree onto ``outdir`` (the old tree, if any, goes last)."""
    out = Path(outdir)
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:  # put the old tree back rather than leave nothing
            os.replace(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    from .fitsutil import fsync_directory

    fsync_directory(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
