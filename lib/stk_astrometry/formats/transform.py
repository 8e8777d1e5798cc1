"""The transform file: HDU ``STKXFM`` (written by stk_xfm, read by stk_update_wcs).

formats.md §2.  One row per component (``TOTAL`` first; on the two-step path also
``DET_TO_WISE`` and ``WISE_TO_GAIA``) in the layout of the CIAO transform file / CSC ``XFM``
block plus the fit's own columns, and the fit's summary keywords in the primary and the
``STKXFM`` headers.  :class:`Component` is one row; :func:`build_transform_hdul` lays the
file out (no I/O), :func:`write_transform` writes it; :func:`read_transform_file` reads it
back whole and :func:`read_transform` reads what stk_update_wcs applies (the TOTAL row, its
``STKXFMID`` and the HDU's bytes for ASPSOL3).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stk_astrometry.errors import FormatError, InputError, ParameterError
from stk_astrometry.formats._fits import header_keywords, header_value, set_keywords, table_hdu

__all__ = ["CONTENT", "EXTNAME", "INSTRUMENT_GRIDS", "COLUMNS", "UNITS", "Component",
           "transform_columns", "transform_keywords", "build_transform_hdul",
           "write_transform", "TransformFile", "read_transform_file", "TransformInput",
           "read_transform"]

CONTENT = "STKXFM"
EXTNAME = "STKXFM"

#: Sky pixel grid per instrument: (pixel size arcsec, reference pixel).  HRC: the HRC-I grid.
INSTRUMENT_GRIDS = {"ACIS": (0.492, 4096.5), "HRC": (0.13175, 16384.5)}

#: STKXFM columns in file order.
COLUMNS = ("a11", "a12", "a21", "a22", "t1", "t2", "ra_ref", "dec_ref", "roll_ref", "xpix_ref",
           "ypix_ref", "x_scale", "y_scale", "component", "d_xi", "d_eta", "d_xi_err",
           "d_eta_err", "cov_xi_eta", "n_used", "group", "resstd0", "resstd1")
UNITS = {"t1": "pixel", "t2": "pixel", "ra_ref": "deg", "dec_ref": "deg", "roll_ref": "deg",
         "xpix_ref": "pixel", "ypix_ref": "pixel", "x_scale": "deg", "y_scale": "deg",
         "d_xi": "arcsec", "d_eta": "arcsec", "d_xi_err": "arcsec", "d_eta_err": "arcsec",
         "cov_xi_eta": "arcsec**2", "resstd0": "arcsec", "resstd1": "arcsec"}
#: ``component`` is a fixed 16A so that transform files of many stacks concatenate.
_FORMATS = {"component": "16A", "n_used": "J", "group": "J"}
_NOT_CARRIED = ("CONTENT", "CREATOR", "DATE", "HISTNUM", "CHECKSUM", "DATASUM", "STKXFMID")


@dataclass(frozen=True, eq=False)
class Component:
    """One row of STKXFM.

    Attributes
    ----------
    name : str
        ``TOTAL``, ``DET_TO_WISE`` or ``WISE_TO_GAIA``.
    d_xi, d_eta : float
        Shift, arcsec; corrected xi = xi + d_xi.
    cov : ndarray (2, 2)
        Covariance of (d_xi, d_eta), arcsec²; NaN when unknown.
    n_used : int
        Pairs used.
    group : int
        Separation group used (0: all/none).
    resstd0, resstd1 : float
        rms of target - source before and after the shift, arcsec.
    """

    name: str
    d_xi: float
    d_eta: float
    cov: np.ndarray
    n_used: int
    group: int
    resstd0: float
    resstd1: float


def transform_columns(components, *, instrument, ra_ref, dec_ref) -> dict:
    """The STKXFM columns (formats.md §2) for the given components.  Pure.

    ``t1 = d_xi / (3600 x_scale)``, ``t2 = d_eta / (3600 y_scale)`` with the sky pixel size in
    degrees, ``x_scale < 0`` (sky x grows westwards).
    """
    pix_arcsec, ref_pix = INSTRUMENT_GRIDS[instrument]
    x_scale = -pix_arcsec / 3600.0
    y_scale = pix_arcsec / 3600.0
    n = len(components)
    d_xi = np.array([c.d_xi for c in components], dtype=float)
    d_eta = np.array([c.d_eta for c in components], dtype=float)
    cov = np.array([np.asarray(c.cov, dtype=float) for c in components]).reshape(n, 2, 2)
    with np.errstate(invalid="ignore"):
        err_xi = np.sqrt(cov[:, 0, 0])
        err_eta = np.sqrt(cov[:, 1, 1])
    return {
        "a11": np.ones(n), "a12": np.zeros(n), "a21": np.zeros(n), "a22": np.ones(n),
        "t1": d_xi / (3600.0 * x_scale), "t2": d_eta / (3600.0 * y_scale),
        "ra_ref": np.full(n, ra_ref), "dec_ref": np.full(n, dec_ref), "roll_ref": np.zeros(n),
        "xpix_ref": np.full(n, ref_pix), "ypix_ref": np.full(n, ref_pix),
        "x_scale": np.full(n, x_scale), "y_scale": np.full(n, y_scale),
        "component": np.array([c.name for c in components]),
        "d_xi": d_xi, "d_eta": d_eta, "d_xi_err": err_xi, "d_eta_err": err_eta,
        "cov_xi_eta": cov[:, 0, 1],
        "n_used": np.array([c.n_used for c in components], dtype=np.int32),
        "group": np.array([c.group for c in components], dtype=np.int32),
        "resstd0": np.array([c.resstd0 for c in components], dtype=float),
        "resstd1": np.array([c.resstd1 for c in components], dtype=float),
    }


def transform_keywords(*, stackid, instrument, ra_stack, dec_stack, method, estimator, loss,
                       f_scale, total, n_match, qa_flags, qa_reason, n_eff=None,
                       alternative=None, error_model=None) -> list:
    """The summary keywords of a transform (and corrected-detections) file.  Pure.

    Parameters
    ----------
    total : Component
        The applied TOTAL.
    n_eff : float, optional
        Mixture only: its effective number of true matches (``NEFF``).
    alternative : (str, Component), optional
        The estimator not applied and its TOTAL (``ALTEST``, ``ALTDXI``, ``ALTDETA``).
    error_model : (float, float), optional
        The mixture's error model of the detection leg (issue 14): the systematic floor
        sigma_sys (``SYSERR``, arcsec) and the scale on the stated errors (``ERRSCALE``).

    Returns
    -------
    list of (name, value, comment)
        NaN values as None (FITS undefined).
    """
    keys = [
        ("STACKID", stackid, "detect_stack_id"),
        ("INSTRUME", instrument, "ACIS or HRC: sets the sky pixel grid"),
        ("RA_STACK", ra_stack, "[deg] stack tangent point RA"),
        ("DEC_STACK", dec_stack, "[deg] stack tangent point Dec"),
        ("METHOD", method, "direct, twostep or none"),
        ("ESTIMATR", estimator, "estimator applied: spec or mixture"),
        ("LOSS", loss, "robust loss of the spec estimator"),
        ("FSCALE", float(f_scale), "f_scale of the robust loss"),
        ("GROUP", int(total.group), "separation group used (0: all/none)"),
        ("NUSED", int(total.n_used), "pairs used by the detection leg"),
        ("NMATCH", int(n_match), "matched detections used"),
        ("DXI", header_value(total.d_xi), "[arcsec] applied shift in xi"),
        ("DETA", header_value(total.d_eta), "[arcsec] applied shift in eta"),
        ("RESSTD0", header_value(total.resstd0), "[arcsec] rms target - source, before"),
        ("RESSTD1", header_value(total.resstd1), "[arcsec] rms target - source, after"),
        ("QAFLAGS", int(qa_flags), "1NOMATCH 2DENSE 4BIGSHIFT 8FEWMATCH 16DISAGREE"),
        ("QAREASON", qa_reason, "raised QA flags and why"),
    ]
    if n_eff is not None:
        keys.append(("NEFF", header_value(n_eff), "mixture: effective number of true matches"))
    if error_model is not None:
        keys += [("SYSERR", header_value(error_model[0]),
                  "[arcsec] mixture: fitted systematic floor"),
                 ("ERRSCALE", header_value(error_model[1]),
                  "mixture: fitted scale on stated errors")]
    if alternative is not None:
        name, alt = alternative
        keys += [("ALTEST", name, "the other estimator (not applied)"),
                 ("ALTDXI", header_value(alt.d_xi), "[arcsec] its shift in xi"),
                 ("ALTDETA", header_value(alt.d_eta), "[arcsec] its shift in eta")]
    return keys


def build_transform_hdul(components, keywords, *, instrument, ra_ref, dec_ref):
    """The transform file: primary + STKXFM (formats.md §2).  No I/O.

    Parameters
    ----------
    components : sequence of Component
        TOTAL first.
    keywords : list of (name, value, comment)
        From :func:`transform_keywords`; written to both headers.
    instrument : str
        ``ACIS`` or ``HRC`` (the sky pixel grid).
    ra_ref, dec_ref : float
        Tangent point, deg.
    """
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    primary.header["CONTENT"] = (CONTENT, "stk_xfm transform file")
    xfm = table_hdu(EXTNAME, transform_columns(components, instrument=instrument,
                                               ra_ref=ra_ref, dec_ref=dec_ref),
                    units=UNITS, formats=_FORMATS)
    for hdu in (primary, xfm):
        set_keywords(hdu.header, keywords)
    return fits.HDUList([primary, xfm])


def write_transform(path, components, keywords, history, *, instrument, ra_ref, dec_ref,
                    clobber=False):
    """Write a transform file atomically, stamped with ``history`` (a tool's parameters)."""
    from stk_astrometry.fitsutil import write_fits

    write_fits(build_transform_hdul(components, keywords, instrument=instrument,
                                    ra_ref=ra_ref, dec_ref=dec_ref),
               path, history, clobber=clobber)


# ---------------------------------------------------------------------------------------------
# Readers


@dataclass(frozen=True, eq=False)
class TransformFile:
    """A transform file read whole.

    Attributes
    ----------
    components : tuple of Component
        The rows, TOTAL first.
    keywords : tuple of (name, value, comment)
        The STKXFM header's summary keywords (long names folded back).
    columns : dict
        The STKXFM columns as read.
    instrument : str
    xfm_id : str
        ``STKXFMID`` of the TOTAL row (formats.md §2).
    path : str
    """

    components: tuple
    keywords: tuple
    columns: dict = field(repr=False)
    instrument: str
    xfm_id: str
    path: str


def _stkxfm_hdu(hdul, spec, block, path):
    from astropy.io import fits

    if block is None:
        hdu = next((h for h in hdul if h.name.upper() == EXTNAME), None)
        if hdu is None:
            names = ", ".join(h.name for h in hdul)
            raise FormatError(f"transformfile={path}: no STKXFM HDU (HDUs: {names})")
    elif isinstance(block, int):
        if not 1 <= block <= len(hdul):
            raise FormatError(f"transformfile={spec}: no block {block}")
        hdu = hdul[block - 1]
    else:
        try:
            hdu = hdul[block]
        except KeyError as exc:
            raise FormatError(f"transformfile={spec}: no HDU {block}") from exc
    label = f"{path}[{hdu.name}]"
    if not isinstance(hdu, fits.BinTableHDU) or hdu.data is None or len(hdu.data) == 0:
        raise FormatError(f"transformfile={label}: not a table with rows")
    return hdu, label


def _open(spec):
    from stk_astrometry import fitsedit
    from stk_astrometry.tableio import parse_virtual_filename

    if not spec or not str(spec).strip():
        raise ParameterError("transformfile is blank")
    path, block = parse_virtual_filename(str(spec))
    if not Path(path).is_file():
        raise InputError(f"transformfile={spec}: no such file")
    if not fitsedit.is_fits_file(path):
        raise FormatError(f"transformfile={spec}: not a FITS file")
    return path, block


def read_transform_file(spec) -> TransformFile:
    """Read every row and keyword of a transform file (``file`` or ``file[block]``).

    Raises
    ------
    ParameterError, InputError, FormatError
    """
    from astropy.io import fits

    from stk_astrometry.wcsupdate import transform_id

    path, block = _open(spec)
    with fits.open(path) as hdul:
        hdu, label = _stkxfm_hdu(hdul, spec, block, path)
        cols = {}
        for col in hdu.columns:
            arr = np.asarray(hdu.data[col.name])
            if arr.dtype.kind == "S":
                arr = np.char.rstrip(np.char.decode(arr, "ascii", errors="replace"))
            cols[col.name.lower()] = arr
        missing = [c for c in COLUMNS if c not in cols]
        if missing:
            raise FormatError(f"transformfile={label}: missing column(s) {', '.join(missing)}")
        keywords = header_keywords(hdu.header, skip=_NOT_CARRIED)
        instrument = str(hdu.header.get("INSTRUME", "")).strip().upper()
    comps = []
    for i in range(len(cols["d_xi"])):
        cov = np.array([[cols["d_xi_err"][i] ** 2, cols["cov_xi_eta"][i]],
                        [cols["cov_xi_eta"][i], cols["d_eta_err"][i] ** 2]], dtype=float)
        comps.append(Component(str(cols["component"][i]).strip(), float(cols["d_xi"][i]),
                               float(cols["d_eta"][i]), cov, int(cols["n_used"][i]),
                               int(cols["group"][i]), float(cols["resstd0"][i]),
                               float(cols["resstd1"][i])))
    total = 0
    names = [c.name.upper() for c in comps]
    if "TOTAL" in names:
        total = names.index("TOTAL")
    xfm_id = transform_id(cols["d_xi"][total], cols["d_eta"][total], cols["ra_ref"][total],
                          cols["dec_ref"][total])
    return TransformFile(tuple(comps), keywords, cols, instrument, xfm_id, str(path))


@dataclass(frozen=True)
class TransformInput:
    """The transform and the STKXFM HDU it came from (header + data, for ASPSOL3)."""

    xfm: object              # stk_astrometry.wcsupdate.Transform
    hdu_bytes: bytes = field(repr=False)
    path: str = ""
    qa_flags: int = 0          # QAFLAGS of the STKXFM HDU (0: none, or not recorded)
    qa_decision: str = ""      # QADECIS: 'accept', 'refit', 'reject' or '' (not reviewed)


def read_transform(spec) -> TransformInput:
    """Read the TOTAL row of the STKXFM HDU of ``spec`` (formats.md §2), as stk_update_wcs applies it.

    Also returns the STKXFM HDU as FITS bytes with its ``STKXFMID`` (what an ASPSOL3 product
    gets a copy of, formats.md §3b).

    Raises
    ------
    ParameterError, InputError, FormatError
    """
    from astropy.io import fits

    from stk_astrometry import fitsedit, wcsupdate

    path, block = _open(spec)
    with fits.open(path) as hdul:
        hdu, label = _stkxfm_hdu(hdul, spec, block, path)
        names = {n.lower(): n for n in hdu.columns.names}
        need = ("a11", "a12", "a21", "a22", "ra_ref", "dec_ref", "d_xi", "d_eta")
        missing = [c for c in need if c not in names]
        if missing:
            raise FormatError(f"transformfile={label}: missing column(s) {', '.join(missing)}")
        row = 0
        if "component" in names:
            comps = [str(c).strip().upper() for c in hdu.data[names["component"]]]
            if "TOTAL" not in comps:
                raise FormatError(f"transformfile={label}: no row with component TOTAL")
            row = comps.index("TOTAL")
        vals = {c: float(hdu.data[names[c]][row]) for c in need}
        bad = [c for c, v in vals.items() if not np.isfinite(v)]
        if bad:
            raise FormatError(f"transformfile={label}: non-finite {', '.join(bad)} in the "
                              "TOTAL row")
        if not wcsupdate.is_position(vals["ra_ref"], vals["dec_ref"]):
            raise FormatError(f"transformfile={label}: ra_ref/dec_ref = "
                              f"({vals['ra_ref']}, {vals['dec_ref']}) is not a position")
        matrix = (vals["a11"], vals["a12"], vals["a21"], vals["a22"])
        if matrix != (1.0, 0.0, 0.0, 1.0):
            raise FormatError(
                f"transformfile={label}: matrix a11,a12,a21,a22 = {matrix} is not the identity; "
                "this release applies translations only")
        xfm = wcsupdate.Transform.from_shift(vals["d_xi"], vals["d_eta"], vals["ra_ref"],
                                             vals["dec_ref"], matrix=matrix)
        qa_flags = hdu.header.get("QAFLAGS", 0)
        qa_flags = qa_flags if isinstance(qa_flags, int) and not isinstance(qa_flags, bool) else 0
        qa_decision = str(hdu.header.get("QADECIS", "") or "").strip().lower()
        out = fits.BinTableHDU(data=hdu.data.copy(), header=hdu.header.copy(), name=EXTNAME)
        out.header["STKXFMID"] = (xfm.xfm_id, "stk_update_wcs: id of this transform")
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), out]).writeto(buf, checksum=True)
        hdu_bytes = buf.getvalue()[fitsedit.BLOCK:]
    return TransformInput(xfm, hdu_bytes, str(path), qa_flags, qa_decision)
