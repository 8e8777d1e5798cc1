"""stk_match: a stack's matched-pairs file from CSC detections, Gaia and ALLWISE.

Reads the stack's detections, the Gaia sources of its cone and optionally the
ALLWISE sources with the Gaia-ALLWISE best-neighbour table; applies the
specification's filters (sections 5.1, 5.2, 5.5.1), counts sources within
r_stack, finds every detection-reference pair within match_radius, counts
matches per separation group, decides between the direct and two-step paths
(section 5.5.2) and writes one FITS file (HDUs DETECTIONS, GAIA_PAIRS,
WISE_PAIRS, WISE_GAIA) for stk_xfm.

This module is the thin front end: it reads tables and parameters, builds the
arrays for :mod:`stk_astrometry.matching` (the pure core) and writes the
result.  Layout of the output: share/doc/formats.md section 1 and the help
page share/doc/stk_match.txt.
"""

import dataclasses
import logging
import re

from stk_astrometry.errors import CatalogError, ParameterError
from stk_astrometry.runner import run_tool

logger = logging.getLogger(__name__)

TOOL = "stk_match"

#: Accepted column names: canonical name -> aliases tried in order (all
#: case-insensitive).  Documented in share/doc/stk_match.txt.
DET_ALIASES = {
    "detect_stack_id": ("stackid", "stack_id"),
    "ra": ("ra_deg", "raj2000"),
    "dec": ("dec_deg", "dej2000", "decj2000"),
    "err_ellipse_r0": ("err_r0", "r0"),
    "err_ellipse_r1": ("err_r1", "r1"),
    "err_ellipse_ang": ("err_ang",),
    "theta": ("theta_mean",),
    "src_cnts": ("src_cnts_aper_b", "src_cnts_aper_w"),
    "conv_hull": ("convex_hull",),
    "instrument": ("instrume",),
}
DET_REQUIRED = ("region_id", "ra", "dec", "err_ellipse_r0", "err_ellipse_r1", "likelihood_class")
DET_OPTIONAL = (
    "detect_stack_id", "err_ellipse_ang", "theta", "src_cnts", "sat_src_flag", "conv_hull",
    "man_inc", "ra_stack", "dec_stack", "instrument",
)
REF_ALIASES = {
    "ra": ("ra_deg", "raj2000"),
    "dec": ("dec_deg", "dej2000", "decj2000"),
}
GAIA_REQUIRED = ("source_id", "ra", "dec", "pmra", "pmdec")
WISE_REQUIRED = ("allwise_oid", "ra", "dec", "sigra", "sigdec", "cc_flags")
BN_REQUIRED = ("source_id", "allwise_oid")

#: Tangent points from the columns of one stack must agree to this (deg).
TANGENT_TOLERANCE_DEG = 1e-6

#: Input-file parameters; outfile may name none of them.
INPUT_PARAMS = ("detfile", "gaiafile", "wisefile", "bestnbfile")

#: Real parameters for which INDEF means nothing (ra_stack/dec_stack INDEF: from detfile).
NUMBERS_NOT_INDEF = ("r_stack", "match_radius", "max_pm")


def main(argv=None) -> int:
    """Run stk_match; return the exit status."""
    return run_tool(TOOL, argv, _body, description=__doc__)


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------


def parse_sep_bins(text):
    """Parse ``sep_bins`` (``"1,2,3"``, commas and/or blanks) into a tuple of floats."""
    parts = [p for p in re.split(r"[,\s]+", str(text or "").strip()) if p]
    if not parts:
        raise ParameterError("sep_bins is blank: give the upper group edges, e.g. sep_bins=1,2,3")
    edges = []
    for part in parts:
        try:
            edges.append(float(part))
        except ValueError:
            raise ParameterError(f"sep_bins={text}: '{part}' is not a number") from None
    if len(edges) > 99:
        raise ParameterError(f"sep_bins={text}: at most 99 groups")
    return tuple(edges)


def _blank(value):
    return value is None or str(value).strip() == ""


def _fits_text(value):
    """True if ``value`` can be a FITS keyword value (printable ASCII)."""
    return value.isascii() and value.isprintable()


def check_outfile_not_input(params, outfile):
    """Refuse an outfile that is one of the input files (it would be overwritten).

    Compares the file part of each input (without its ``[block]``) with
    outfile after resolving relative paths and symbolic links, and by
    device/inode when both exist (hard links).

    Raises
    ------
    ParameterError
        ``outfile=X is also gaiafile; choose another output name``.
    """
    from stk_astrometry.fitsutil import same_file
    from stk_astrometry.tableio import parse_virtual_filename

    for name in INPUT_PARAMS:
        if _blank(params[name]):
            continue
        if same_file(parse_virtual_filename(params[name])[0], outfile):
            raise ParameterError(f"outfile={outfile} is also {name}; choose another output name")


# --------------------------------------------------------------------------
# Column conversion (astropy masked columns, bytes, booleans as text)
# --------------------------------------------------------------------------


def _column(tin, colname):
    return tin.table[colname]


def _floats(tin, colname):
    """A numeric column as float64 with NaN for nulls."""
    import numpy as np

    col = _column(tin, colname)
    data = np.ma.asarray(col)
    if data.ndim != 1:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not a scalar column")
    try:
        values = np.ma.filled(data.astype(float), np.nan)
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not numeric ({exc})") from None
    return np.asarray(values, dtype=float)


def _ints(tin, colname):
    """An id column as int64; nulls or non-integers are an error."""
    import numpy as np

    col = _column(tin, colname)
    data = np.ma.asarray(col)
    if data.ndim != 1:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not a scalar column")
    mask = np.ma.getmaskarray(data)
    if np.any(mask):
        raise CatalogError(
            f"{tin.hdu}: column '{colname}' has {int(mask.sum())} null value(s) "
            f"(first at row {int(np.flatnonzero(mask)[0]) + 1})"
        )
    raw = np.asarray(np.ma.getdata(data))
    too_large = CatalogError(
        f"{tin.hdu}: column '{colname}' holds ids that do not fit a 64-bit integer"
    )
    if raw.dtype.kind == "u" and raw.size and raw.max() > np.iinfo(np.int64).max:
        raise too_large
    if raw.dtype.kind in "iub":
        return raw.astype(np.int64)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise CatalogError(f"{tin.hdu}: column '{colname}' holds non-integer ids")
        if np.any(np.abs(raw) >= 2.0**63):
            raise too_large
        if np.any(np.abs(raw) > 2.0**53):  # e.g. Gaia source_id: rounded, ids merged
            raise CatalogError(
                f"{tin.hdu}: column '{colname}' holds ids beyond 2**53 as floating point "
                "numbers, which cannot hold them exactly; store the ids as integers"
            )
        return raw.astype(np.int64)
    try:
        return np.array([int(str(v).strip()) for v in _decode(raw)], dtype=np.int64)
    except ValueError:
        raise CatalogError(f"{tin.hdu}: column '{colname}' holds non-integer ids") from None
    except OverflowError:
        raise too_large from None


def _decode(raw):
    import numpy as np

    if raw.dtype.kind == "S":
        return np.char.decode(raw, "ascii", errors="replace")
    if raw.dtype.kind == "O":
        return np.array(
            [v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in raw],
            dtype=str,
        )
    return raw.astype(str)


def _strings(tin, colname):
    """A column as stripped str; nulls become ''."""
    import numpy as np

    data = np.ma.asarray(_column(tin, colname))
    if data.ndim != 1:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not a scalar column")
    mask = np.ma.getmaskarray(data)
    out = np.char.strip(_decode(np.asarray(np.ma.getdata(data))))
    if np.any(mask):
        out = out.astype(object)
        out[mask] = ""
        out = out.astype(str)
    return out


_TRUE_TEXT = ("T", "TRUE", "Y", "YES", "1")
_FALSE_TEXT = ("F", "FALSE", "N", "NO", "0", "")


def _flags(tin, colname):
    """A flag column as bool; a vector (per-observation) column is true if any element is.

    Booleans, integers (nonzero = set) and text (T/TRUE/Y/YES/1 vs
    F/FALSE/N/NO/0/blank) are accepted; nulls count as not set.
    """
    import numpy as np

    data = np.ma.asarray(_column(tin, colname))
    raw = np.asarray(np.ma.getdata(data))
    mask = np.ma.getmaskarray(data)
    if raw.dtype.kind in "biuf":
        with np.errstate(invalid="ignore"):
            flags = (raw != 0) & ~np.isnan(raw.astype(float))
    elif raw.dtype.kind in "SUO":
        text = np.char.upper(np.char.strip(_decode(raw.ravel()))).reshape(raw.shape)
        unknown = ~np.isin(text, _TRUE_TEXT + _FALSE_TEXT) & ~mask
        if np.any(unknown):
            bad = sorted(set(text[unknown].tolist()))[:5]
            raise CatalogError(
                f"{tin.hdu}: column '{colname}' has values that are not a flag: {', '.join(bad)}"
            )
        flags = np.isin(text, _TRUE_TEXT)
    else:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not a flag column")
    flags = flags & ~mask
    if flags.ndim > 1:
        flags = flags.reshape(len(flags), -1).any(axis=1)
    return flags


# --------------------------------------------------------------------------
# Detections: stack, tangent point, instrument
# --------------------------------------------------------------------------


def select_stack(stack_ids, requested):
    """Rows of the requested stack.  Pure.

    Parameters
    ----------
    stack_ids : ndarray of str
        ``detect_stack_id`` of every row.
    requested : str or None
        The ``stackid`` parameter (None/blank: the file must hold one stack).

    Returns
    -------
    stackid : str
    rows : ndarray of bool
    """
    import numpy as np

    present = sorted(set(stack_ids.tolist()))
    if not _blank(requested):
        want = str(requested).strip()
        rows = stack_ids == want
        if not np.any(rows) and len(stack_ids):
            shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "")
            raise CatalogError(
                f"stackid={want} is not in detfile (it holds {len(present)} stack(s): {shown})"
            )
        return want, rows
    if len(present) > 1:
        shown = ", ".join(present[:20]) + (f" ... ({len(present)} in all)" if len(present) > 20 else "")
        raise ParameterError(
            f"detfile holds {len(present)} stacks; choose one with stackid=: {shown}"
        )
    return (present[0] if present else ""), np.ones(len(stack_ids), dtype=bool)


def _header_value(header, name):
    from astropy.io import fits

    from stk_astrometry.fitsutil import get_keyword

    if isinstance(header, fits.Header):
        return get_keyword(header, name)
    return None


def find_tangent_point(params, tin, cols, rows):
    """The tangent point and where it came from.

    Order: the ra_stack/dec_stack parameters; the ra_stack/dec_stack columns
    of the stack's rows (which must agree); the RA_STACK/DEC_STACK header
    keywords (CXC DTYPEn/DVALn or HIERARCH for DEC_STACK).
    """
    import numpy as np

    ra_p, dec_p = params["ra_stack"], params["dec_stack"]
    if (ra_p is None) != (dec_p is None):
        raise ParameterError(
            "set both ra_stack and dec_stack, or leave both INDEF to read them from detfile"
        )
    if ra_p is not None:
        return float(ra_p), float(dec_p), "parameters"
    if cols["ra_stack"] and cols["dec_stack"] and np.any(rows):
        values = []
        for name in ("ra_stack", "dec_stack"):
            v = _floats(tin, cols[name])[rows]
            if not np.all(np.isfinite(v)):
                raise CatalogError(f"{tin.hdu}: column '{cols[name]}' has null or NaN values")
            if np.ptp(v) > TANGENT_TOLERANCE_DEG:
                raise CatalogError(
                    f"{tin.hdu}: column '{cols[name]}' varies within the stack "
                    f"({v.min():.8f} to {v.max():.8f}): one tangent point per stack"
                )
            values.append(float(v[0]))
        return values[0], values[1], f"{tin.hdu} columns"
    ra_h = _header_value(tin.header, "RA_STACK")
    dec_h = _header_value(tin.header, "DEC_STACK")
    if ra_h is not None and dec_h is not None:
        not_numbers = CatalogError(
            f"{tin.hdu}: RA_STACK/DEC_STACK keywords are not numbers: {ra_h!r}, {dec_h!r}"
        )
        if isinstance(ra_h, (bool, np.bool_)) or isinstance(dec_h, (bool, np.bool_)):
            raise not_numbers
        try:
            return float(ra_h), float(dec_h), f"{tin.hdu} header"
        except (TypeError, ValueError):
            raise not_numbers from None
    if cols["ra_stack"] and cols["dec_stack"]:
        where = f"{tin.hdu} has no rows to read its ra_stack/dec_stack columns from"
    else:
        where = f"{tin.hdu} has no ra_stack/dec_stack columns"
    raise CatalogError(
        f"no tangent point: {where} and no RA_STACK/DEC_STACK keywords; "
        "set the ra_stack and dec_stack parameters"
    )


def find_instrument(tin, cols, rows, stackid):
    """ACIS or HRC: instrument column, INSTRUME keyword, stack id prefix, else ACIS (warned)."""
    import numpy as np

    value = ""
    if cols["instrument"] and np.any(rows):
        found = [v for v in _strings(tin, cols["instrument"])[rows] if v]
        value = found[0] if found else ""
    if not value:
        header_value = _header_value(tin.header, "INSTRUME")
        value = str(header_value).strip() if header_value is not None else ""
    if not value:
        low = stackid.lower()
        value = "ACIS" if low.startswith("acis") else "HRC" if low.startswith("hrc") else ""
    upper = value.upper()
    for name in ("ACIS", "HRC"):
        if upper.startswith(name):
            return name
    if value:
        logger.warning("instrument %r is neither ACIS nor HRC: assuming ACIS", value)
    else:
        logger.warning("no instrument in %s and stack id %r: assuming ACIS", tin.hdu, stackid)
    return "ACIS"


def read_detections(params, tin):
    """Build the stack's :class:`~stk_astrometry.matching.Detections` and its metadata."""
    import numpy as np

    from stk_astrometry import matching
    from stk_astrometry.tableio import require_columns

    cols = require_columns(tin, DET_REQUIRED, aliases=DET_ALIASES, optional=DET_OPTIONAL)
    n_rows = len(tin.table)
    if n_rows == 0:
        logger.warning("%s has no rows: the stack has no detections", tin.hdu)
    if cols["detect_stack_id"]:
        stackid, rows = select_stack(_strings(tin, cols["detect_stack_id"]), params["stackid"])
        if not _fits_text(stackid):
            raise CatalogError(
                f"{tin.hdu}: detect_stack_id {stackid!r} is not printable ASCII "
                "(the STACKID keyword of the output cannot hold it)"
            )
        n_other = int(np.count_nonzero(~rows))
        if n_other:
            logger.info("%s: %d row(s) of other stacks ignored", tin.hdu, n_other)
    else:
        rows = np.ones(n_rows, dtype=bool)
        header_id = _header_value(tin.header, "STACKID")
        if not _blank(params["stackid"]):
            stackid = str(params["stackid"]).strip()
        elif header_id is not None and str(header_id).strip():
            stackid = str(header_id).strip()
        else:
            stackid = ""
            logger.warning("%s has no detect_stack_id column or STACKID keyword: STACKID is blank",
                           tin.hdu)

    region_id = _ints(tin, cols["region_id"])[rows]
    int32 = np.iinfo(np.int32)
    outside = (region_id < int32.min) | (region_id > int32.max)
    if np.any(outside):
        raise CatalogError(
            f"{tin.hdu}: region_id {int(region_id[outside][0])} does not fit the 32-bit "
            f"region_id of the output (formats.md); {int(np.count_nonzero(outside))} such row(s)"
        )
    values, counts = np.unique(region_id, return_counts=True)
    if np.any(counts > 1):
        dups = values[counts > 1]
        raise CatalogError(
            f"{tin.hdu}: region_id must be unique within stack {stackid or '(unnamed)'}; "
            f"repeated: {', '.join(str(v) for v in dups[:10])}"
            + (f" ... ({len(dups)} in all)" if len(dups) > 10 else "")
        )
    n = int(np.count_nonzero(rows))

    def optional_floats(name, what):
        if cols[name]:
            return _floats(tin, cols[name])[rows]
        logger.warning("%s has no %s column: %s written as NaN", tin.hdu, name, what)
        return np.full(n, np.nan)

    def optional_flags(name, what):
        if cols[name]:
            return _flags(tin, cols[name])[rows]
        logger.warning("%s has no %s column: no detection dropped as %s", tin.hdu, name, what)
        return None

    if cols["err_ellipse_ang"]:
        err_ang = _floats(tin, cols["err_ellipse_ang"])[rows]
    else:
        logger.info("%s has no err_ellipse_ang column: err_ang written as NaN", tin.hdu)
        err_ang = np.full(n, np.nan)
    det = matching.Detections(
        region_id=region_id,
        ra_deg=_floats(tin, cols["ra"])[rows],
        dec_deg=_floats(tin, cols["dec"])[rows],
        err_r0_arcsec=_floats(tin, cols["err_ellipse_r0"])[rows],
        err_r1_arcsec=_floats(tin, cols["err_ellipse_r1"])[rows],
        err_ang_deg=err_ang,
        theta_arcmin=optional_floats("theta", "off-axis angle (QA rules need it)"),
        src_cnts=optional_floats("src_cnts", "counts (QA rules need them)"),
        likelihood_class=np.char.upper(_strings(tin, cols["likelihood_class"])[rows]),
        sat_src_flag=optional_flags("sat_src_flag", "saturated"),
        conv_hull=optional_flags("conv_hull", "convex hull"),
        man_inc=_flags(tin, cols["man_inc"])[rows] if cols["man_inc"] else None,
    )
    ra0, dec0, origin = find_tangent_point(params, tin, cols, rows)
    if not (np.isfinite(ra0) and 0 <= ra0 <= 360 and np.isfinite(dec0) and abs(dec0) <= 90):
        raise CatalogError(f"tangent point from {origin} is out of range: ra={ra0}, dec={dec0}")
    instrument = find_instrument(tin, cols, rows, stackid)
    return det, stackid, ra0, dec0, origin, instrument


def read_gaia(tin):
    from stk_astrometry import matching
    from stk_astrometry.tableio import require_columns

    cols = require_columns(tin, GAIA_REQUIRED, aliases=REF_ALIASES)
    return matching.GaiaSources(
        source_id=_ints(tin, cols["source_id"]),
        ra_deg=_floats(tin, cols["ra"]),
        dec_deg=_floats(tin, cols["dec"]),
        pmra_masyr=_floats(tin, cols["pmra"]),
        pmdec_masyr=_floats(tin, cols["pmdec"]),
    )


def read_wise(tin):
    from stk_astrometry import matching
    from stk_astrometry.tableio import require_columns

    cols = require_columns(tin, WISE_REQUIRED, aliases=REF_ALIASES)
    return matching.WiseSources(
        allwise_oid=_ints(tin, cols["allwise_oid"]),
        ra_deg=_floats(tin, cols["ra"]),
        dec_deg=_floats(tin, cols["dec"]),
        sigra_arcsec=_floats(tin, cols["sigra"]),
        sigdec_arcsec=_floats(tin, cols["sigdec"]),
        cc_flags=_strings(tin, cols["cc_flags"]),
    )


def read_best_neighbours(tin):
    from stk_astrometry import matching
    from stk_astrometry.tableio import require_columns

    cols = require_columns(tin, BN_REQUIRED)
    return matching.BestNeighbours(
        source_id=_ints(tin, cols["source_id"]),
        allwise_oid=_ints(tin, cols["allwise_oid"]),
    )


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _table_hdu(name, columns):
    """A BinTableHDU from (name, format, unit, array) tuples (zero rows allowed)."""
    from astropy.io import fits

    cols = [fits.Column(name=n, format=f, unit=u or None, array=a) for n, f, u, a in columns]
    hdu = fits.BinTableHDU.from_columns(cols, name=name)
    return hdu


def _string_format(values):
    width = max([1] + [len(v) for v in values])
    return f"{width}A"


def build_hdus(result, det, gaia, wise, *, stackid, instrument):
    """The output HDUList (formats.md §1) from the core's result.  No I/O."""
    import numpy as np
    from astropy.io import fits

    from stk_astrometry import matching
    from stk_astrometry.fitsutil import set_keyword

    cfg = result.config
    rows = result.det_rows
    klass = np.asarray(det.likelihood_class)[rows].astype(str)
    det_hdu = _table_hdu("DETECTIONS", [
        ("region_id", "J", "", np.asarray(det.region_id)[rows].astype(np.int32)),
        ("ra", "D", "deg", np.asarray(det.ra_deg)[rows]),
        ("dec", "D", "deg", np.asarray(det.dec_deg)[rows]),
        ("xi", "D", "arcsec", result.det_xi_arcsec[rows]),
        ("eta", "D", "arcsec", result.det_eta_arcsec[rows]),
        ("err_r0", "D", "arcsec", np.asarray(det.err_r0_arcsec)[rows]),
        ("err_r1", "D", "arcsec", np.asarray(det.err_r1_arcsec)[rows]),
        ("err_ang", "D", "deg", np.asarray(det.err_ang_deg)[rows]),
        ("theta", "D", "arcmin", np.asarray(det.theta_arcmin)[rows]),
        ("src_cnts", "D", "count", np.asarray(det.src_cnts)[rows]),
        ("likelihood_class", _string_format(klass), "", klass),
        ("n_gaia", "J", "", result.n_gaia_cand.astype(np.int32)),
        ("n_wise", "J", "", result.n_wise_cand.astype(np.int32)),
    ])

    def pair_hdu(name, pairs, ref_ids, ref_ra, ref_dec, ref_xi, ref_eta, sigra, sigdec):
        d, r = pairs.det_row, pairs.ref_row
        return _table_hdu(name, [
            ("region_id", "J", "", np.asarray(det.region_id)[d].astype(np.int32)),
            ("ref_id", "K", "", np.asarray(ref_ids, dtype=np.int64)[r]),
            ("det_ra", "D", "deg", np.asarray(det.ra_deg)[d]),
            ("det_dec", "D", "deg", np.asarray(det.dec_deg)[d]),
            ("ref_ra", "D", "deg", np.asarray(ref_ra, dtype=float)[r]),
            ("ref_dec", "D", "deg", np.asarray(ref_dec, dtype=float)[r]),
            ("det_xi", "D", "arcsec", result.det_xi_arcsec[d]),
            ("det_eta", "D", "arcsec", result.det_eta_arcsec[d]),
            ("ref_xi", "D", "arcsec", np.asarray(ref_xi)[r]),
            ("ref_eta", "D", "arcsec", np.asarray(ref_eta)[r]),
            ("err_r0", "D", "arcsec", np.asarray(det.err_r0_arcsec)[d]),
            ("err_r1", "D", "arcsec", np.asarray(det.err_r1_arcsec)[d]),
            ("err_ang", "D", "deg", np.asarray(det.err_ang_deg)[d]),
            ("ref_sigra", "D", "arcsec", np.asarray(sigra, dtype=float)[r]),
            ("ref_sigdec", "D", "arcsec", np.asarray(sigdec, dtype=float)[r]),
            ("theta", "D", "arcmin", np.asarray(det.theta_arcmin)[d]),
            ("src_cnts", "D", "count", np.asarray(det.src_cnts)[d]),
            ("sep", "D", "arcsec", pairs.sep_arcsec),
            ("d_xi", "D", "arcsec", pairs.d_xi_arcsec),
            ("d_eta", "D", "arcsec", pairs.d_eta_arcsec),
            ("group", "J", "", pairs.group.astype(np.int32)),
            ("n_cand", "J", "", pairs.n_cand.astype(np.int32)),
        ])

    n_gaia = len(gaia)
    gaia_hdu = pair_hdu("GAIA_PAIRS", result.gaia_pairs, gaia.source_id, gaia.ra_deg,
                        gaia.dec_deg, result.gaia_xi_arcsec, result.gaia_eta_arcsec,
                        np.zeros(n_gaia), np.zeros(n_gaia))
    wise_pairs = result.wise_pairs or matching.empty_pairs(cfg.n_groups)
    if wise is None:
        empty_i, empty_f = np.empty(0, dtype=np.int64), np.empty(0)
        wise_ids = empty_i
        w_ra = w_dec = w_sigra = w_sigdec = empty_f
    else:
        wise_ids, w_ra, w_dec = wise.allwise_oid, wise.ra_deg, wise.dec_deg
        w_sigra, w_sigdec = wise.sigra_arcsec, wise.sigdec_arcsec
    wise_hdu = pair_hdu("WISE_PAIRS", wise_pairs, wise_ids, w_ra, w_dec, result.wise_xi_arcsec,
                        result.wise_eta_arcsec, w_sigra, w_sigdec)

    wg = result.wise_gaia
    wr, gr = wg.wise_row, wg.gaia_row
    wg_hdu = _table_hdu("WISE_GAIA", [
        ("wise_id", "K", "", np.asarray(wise_ids, dtype=np.int64)[wr]),
        ("gaia_id", "K", "", np.asarray(gaia.source_id, dtype=np.int64)[gr]),
        ("wise_ra", "D", "deg", np.asarray(w_ra, dtype=float)[wr]),
        ("wise_dec", "D", "deg", np.asarray(w_dec, dtype=float)[wr]),
        ("wise_xi", "D", "arcsec", np.asarray(result.wise_xi_arcsec)[wr]),
        ("wise_eta", "D", "arcsec", np.asarray(result.wise_eta_arcsec)[wr]),
        ("wise_sigra", "D", "arcsec", np.asarray(w_sigra, dtype=float)[wr]),
        ("wise_sigdec", "D", "arcsec", np.asarray(w_sigdec, dtype=float)[wr]),
        ("gaia_ra", "D", "deg", np.asarray(gaia.ra_deg, dtype=float)[gr]),
        ("gaia_dec", "D", "deg", np.asarray(gaia.dec_deg, dtype=float)[gr]),
        ("gaia_xi", "D", "arcsec", result.gaia_xi_arcsec[gr]),
        ("gaia_eta", "D", "arcsec", result.gaia_eta_arcsec[gr]),
        ("sep", "D", "arcsec", wg.sep_arcsec),
        ("d_xi", "D", "arcsec", wg.d_xi_arcsec),
        ("d_eta", "D", "arcsec", wg.d_eta_arcsec),
    ])

    primary = fits.PrimaryHDU()
    hdr = primary.header
    hdr["CONTENT"] = ("STKPAIRS", "stk_match matched-pairs file")
    hdr["HDUNAME"] = ("PRIMARY", "")
    for hdu in (primary, det_hdu, gaia_hdu, wise_hdu, wg_hdu):
        h = hdu.header
        h["STACKID"] = (stackid, "detect_stack_id")
        h["INSTRUME"] = (instrument, "ACIS or HRC")
        h["RA_STACK"] = (cfg.ra_stack_deg, "[deg] stack tangent point RA")
        set_keyword(h, "DEC_STACK", cfg.dec_stack_deg, "[deg] stack tangent point Dec")
    hdr["RSTACK"] = (cfg.r_stack_arcmin, "[arcmin] cone radius r_stack")
    hdr["MATCHRAD"] = (cfg.match_radius_arcsec, "[arcsec] cross-match radius")
    hdr["SEPBINS"] = (",".join(f"{e:g}" for e in cfg.sep_bins_arcsec),
                      "[arcsec] upper edges of separation groups")
    hdr["NGROUPS"] = (cfg.n_groups, "number of separation groups")
    hdr["MAXPM"] = (cfg.max_pm_masyr, "[mas/yr] total proper-motion limit")
    hdr["DENSGAIA"] = (result.density_gaia, "[arcmin-2] Gaia within RSTACK, unfiltered")
    hdr["DENSWISE"] = (result.density_wise or 0.0, "[arcmin-2] ALLWISE within RSTACK, unfiltered")
    hdr["HAVEWISE"] = (wise is not None, "ALLWISE inputs given?")
    hdr["NMGAIA"] = (result.n_match_gaia, "detections with >= 1 Gaia match")
    hdr["NMWISE"] = (result.n_match_wise, "detections with >= 1 ALLWISE match")
    for i, n in enumerate(result.gaia_pairs.n_match_group, start=1):
        hdr[f"NMGAIA{i}"] = (n, f"detections with a Gaia match in group {i}")
    for i, n in enumerate(wise_pairs.n_match_group, start=1):
        hdr[f"NMWISE{i}"] = (n, f"detections with an ALLWISE match in group {i}")
    hdr["METHOD"] = (result.method, "direct, twostep or none")
    hdr["METHREQ"] = (cfg.method, "method parameter (auto: spec 5.5.2)")
    for f in result.filters:
        hdr[f.keyword] = (f.count, f.description[:47])
    return fits.HDUList([primary, det_hdu, gaia_hdu, wise_hdu, wg_hdu])


# --------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------


def _report(result, stackid):
    for f in result.filters:
        if f.warn and f.count:
            logger.warning("%s: %d", f.description, f.count)
        else:
            logger.info("  %-8s = %6d  %s", f.keyword, f.count, f.description)
    logger.info("Stack %s: tangent point (%.7f, %.7f)", stackid or "(unnamed)",
                result.config.ra_stack_deg, result.config.dec_stack_deg)
    logger.info("Density within r_stack: Gaia %.4g /arcmin^2%s", result.density_gaia,
                "" if result.density_wise is None
                else f", ALLWISE {result.density_wise:.4g} /arcmin^2")
    logger.info("Gaia pairs %d, detections matched %d (per group %s)", len(result.gaia_pairs),
                result.n_match_gaia, ",".join(map(str, result.gaia_pairs.n_match_group)))
    if result.wise_pairs is not None:
        logger.info("ALLWISE pairs %d, detections matched %d (per group %s); "
                    "one-to-one ALLWISE-Gaia pairs %d", len(result.wise_pairs),
                    result.n_match_wise, ",".join(map(str, result.wise_pairs.n_match_group)),
                    len(result.wise_gaia))
    logger.info("Method: %s", result.method)
    if result.method == "none":
        logger.warning("no detection has a Gaia or ALLWISE match (spec 5.5.5): METHOD = 'none'")
    elif result.method == "twostep" and len(result.wise_gaia) == 0:
        logger.warning("METHOD = 'twostep' but there is no one-to-one ALLWISE-Gaia pair "
                       "within r_stack: the ALLWISE-to-Gaia leg cannot be fitted")


def _body(params):
    from stk_astrometry import matching
    from stk_astrometry.fitsutil import check_clobber, write_fits
    from stk_astrometry.tableio import read_table

    for name in ("detfile", "gaiafile", "outfile"):
        if _blank(params[name]):
            raise ParameterError(f"{name} is blank")
    outfile = str(params["outfile"]).strip()
    check_outfile_not_input(params, outfile)
    check_clobber(outfile, params["clobber"])
    have_wise = not _blank(params["wisefile"])
    if have_wise != (not _blank(params["bestnbfile"])):
        raise ParameterError(
            "wisefile and bestnbfile go together: give both (two-step path) or neither (Gaia only)"
        )
    if not _blank(params["stackid"]) and not _fits_text(str(params["stackid"]).strip()):
        raise ParameterError(
            f"stackid={params['stackid']!r} is not printable ASCII "
            "(the STACKID keyword of the output cannot hold it)"
        )
    method = str(params["method"]).strip().lower()
    if method == "twostep" and not have_wise:
        raise ParameterError("method=twostep needs the ALLWISE inputs: set wisefile and bestnbfile")
    # Validate the numeric settings before reading any file (tangent point later).
    for name in NUMBERS_NOT_INDEF:
        if params[name] is None:
            raise ParameterError(f"{name} must be a number, not INDEF")
    config = matching.MatchConfig(
        0.0, 0.0,
        r_stack_arcmin=float(params["r_stack"]),
        match_radius_arcsec=float(params["match_radius"]),
        sep_bins_arcsec=parse_sep_bins(params["sep_bins"]),
        max_pm_masyr=float(params["max_pm"]),
        method=method,
    )

    det_in = read_table(params["detfile"], param="detfile")
    det, stackid, ra0, dec0, origin, instrument = read_detections(params, det_in)
    logger.info("Read %d detection(s) of stack %s from %s; tangent point from %s",
                len(det), stackid or "(unnamed)", det_in.hdu, origin)
    config = dataclasses.replace(config, ra_stack_deg=ra0, dec_stack_deg=dec0)
    gaia_in = read_table(params["gaiafile"], param="gaiafile")
    gaia = read_gaia(gaia_in)
    logger.info("Read %d Gaia source(s) from %s", len(gaia), gaia_in.hdu)
    wise = best = None
    if have_wise:
        wise_in = read_table(params["wisefile"], param="wisefile")
        wise = read_wise(wise_in)
        best_in = read_table(params["bestnbfile"], param="bestnbfile")
        best = read_best_neighbours(best_in)
        logger.info("Read %d ALLWISE source(s) from %s and %d best-neighbour row(s) from %s",
                    len(wise), wise_in.hdu, len(best), best_in.hdu)

    result = matching.match_stack(det, gaia, config, wise=wise, best_neighbours=best)
    _report(result, stackid)
    hdul = build_hdus(result, det, gaia, wise, stackid=stackid, instrument=instrument)
    write_fits(hdul, outfile, params, clobber=params["clobber"])
    return 0
