"""Input catalogs: the stack's detections, Gaia, ALLWISE and the Gaia-ALLWISE best neighbours.

formats.md §0.  Reads the columns ``stk_match`` needs from a table already read by
:func:`stk_astrometry.tableio.read_table` (FITS, VOTable, ECSV, CSV), by canonical name or
by one of the documented aliases (case-insensitive), and converts them: numbers to float64
with NaN for nulls, ids to int64 (nulls are an error), flags from booleans, integers or text.
Builds the arrays of :mod:`stk_astrometry.matching` (the pure core); it decides nothing
about the science.  The catalogs are inputs only: there is no writer here
(``stk_simulate`` writes them, :mod:`stk_astrometry.simulate` owns their content).
"""

import logging
from typing import NamedTuple

import numpy as np

from stk_astrometry import matching
from stk_astrometry.core import epoch as ep
from stk_astrometry.errors import CatalogError, ParameterError
from stk_astrometry.fitsutil import get_keyword
from stk_astrometry.tableio import require_columns

logger = logging.getLogger(__name__)

__all__ = [
    "DET_ALIASES", "DET_REQUIRED", "DET_OPTIONAL", "REF_ALIASES", "GAIA_REQUIRED",
    "WISE_REQUIRED", "BN_REQUIRED", "TANGENT_TOLERANCE_DEG", "DetectionCatalog",
    "read_detections", "read_gaia", "read_wise", "read_best_neighbours", "select_stack",
    "find_tangent_point", "find_instrument", "GAIA_ALIASES", "GAIA_OPTIONAL", "WISE_ALIASES",
    "GaiaAstrometry", "read_gaia_astrometry", "find_stack_epoch", "parse_epoch_parameter",
    "read_wise_linked", "SDSS_ALIASES", "SdssCatalog", "read_sdss",
]


class DetectionCatalog(NamedTuple):
    """What :func:`read_detections` found: the detections and the stack's metadata.

    Attributes
    ----------
    detections : stk_astrometry.matching.Detections
    stackid : str
        The stack's ``detect_stack_id`` ('' when the table names none).
    ra_stack, dec_stack : float
        Tangent point, deg.
    origin : str
        Where the tangent point came from (parameters, columns or header), for the log.
    instrument : str
        ``ACIS`` or ``HRC``.
    rows : ndarray of bool or None
        The table rows of the stack (for :func:`find_stack_epoch`).
    """

    detections: object
    stackid: str
    ra_stack: float
    dec_stack: float
    origin: str
    instrument: str
    rows: object = None


#: Accepted column names: canonical name -> aliases tried in order (all
#: case-insensitive).  Documented in share/doc/stk_match.txt and formats.md §0.
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
#: Gaia column aliases: the Gaia archive (and astroquery.gaia) use the canonical names,
#: VizieR (I/355/gaiadr3, I/350/gaiaedr3, I/345/gaia2) ``Source``, ``RA_ICRS``, ``DE_ICRS``,
#: ``pmRA``, ``pmDE``, ``e_RA_ICRS``, ``Plx``, ``Epoch``.  ``RAJ2000``/``DEJ2000`` come last:
#: in a VizieR Gaia table they are positions moved by CDS to epoch J2000.0
#: (:func:`read_gaia_astrometry` then takes 2000.0 as the reference epoch).
GAIA_ALIASES = {
    "source_id": ("source", "dr3_source_id", "dr2_source_id", "gaia_source_id"),
    "ra": ("ra_icrs", "radeg", "ra_deg", "raj2000"),
    "dec": ("de_icrs", "dec_icrs", "dedeg", "dec_deg", "dej2000", "decj2000"),
    "pmra": ("pm_ra",),
    "pmdec": ("pmde", "pm_dec"),
    "ref_epoch": ("epoch", "ref_epoch_yr"),
    "ra_error": ("e_ra_icrs", "e_radeg", "ra_err"),
    "dec_error": ("e_de_icrs", "e_dedeg", "dec_err"),
    "pmra_error": ("e_pmra",),
    "pmdec_error": ("e_pmde",),
    "parallax": ("plx",),
}
GAIA_OPTIONAL = ("ref_epoch", "ra_error", "dec_error", "pmra_error", "pmdec_error", "parallax")
WISE_REQUIRED = ("allwise_oid", "ra", "dec", "sigra", "sigdec", "cc_flags")
#: ALLWISE aliases: the Gaia archive's ``gaiadr1.allwise_original_valid`` has the canonical
#: names; IRSA's ``allwise_p3as_psd`` has ra, dec, sigra, sigdec, cc_flags but no
#: ``allwise_oid`` (the Gaia archive's own id): its rows are linked to the best neighbours
#: through ``designation`` (:func:`read_wise_linked`).
WISE_ALIASES = {
    "ra": ("ra_deg", "raj2000"),
    "dec": ("dec_deg", "dej2000", "decj2000"),
    "cc_flags": ("ccf",),
}
BN_REQUIRED = ("source_id", "allwise_oid")

#: Tangent points from the columns of one stack must agree to this (deg).
TANGENT_TOLERANCE_DEG = 1e-6


def _blank(value):
    return value is None or str(value).strip() == ""


def _fits_text(value):
    """True if ``value`` can be a FITS keyword value (printable ASCII)."""
    return value.isascii() and value.isprintable()

# --------------------------------------------------------------------------
# Column conversion (astropy masked columns, bytes, booleans as text)
# --------------------------------------------------------------------------


def _column(tin, colname):
    return tin.table[colname]


def _data_mask(tin, colname):
    """Column ``colname``'s data (an ndarray) and its mask (a boolean array of its shape):
    ``np.ma.getdata``/``np.ma.getmaskarray`` of the masked column, taken from a
    :class:`~stk_astrometry.tableio.ColumnTable` without building the masked array (issue 11)."""
    fast = getattr(tin.table, "data_mask", None)
    if fast is not None:
        return fast(colname)
    data = np.ma.asarray(_column(tin, colname))
    return np.asarray(np.ma.getdata(data)), np.ma.getmaskarray(data)


def _floats(tin, colname):
    """A numeric column as float64 with NaN for nulls."""
    fast = getattr(tin.table, "floats", None)       # tableio.ColumnTable (issue 11)
    if fast is not None:
        values = fast(colname)
        if values is not None:
            return values
    col = _column(tin, colname)
    data = np.ma.asarray(col)
    if data.ndim != 1:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not a scalar column")
    if data.dtype.kind in "USO":
        # numbers stored as text: silently parsing them hides a broken catalog (issue 15)
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not numeric: it holds text "
                           f"({data.dtype})")
    try:
        values = np.ma.filled(data.astype(float), np.nan)
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not numeric ({exc})") from None
    return np.asarray(values, dtype=float)


def _ints(tin, colname):
    """An id column as int64; nulls or non-integers are an error."""
    raw, mask = _data_mask(tin, colname)
    if raw.ndim != 1:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not a scalar column")
    if np.any(mask):
        raise CatalogError(
            f"{tin.hdu}: column '{colname}' has {int(mask.sum())} null value(s) "
            f"(first at row {int(np.flatnonzero(mask)[0]) + 1})"
        )
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
    raw, mask = _data_mask(tin, colname)
    if raw.ndim != 1:
        raise CatalogError(f"{tin.hdu}: column '{colname}' is not a scalar column")
    out = np.char.strip(_decode(raw))
    if np.any(mask):
        out = out.astype(object)
        out[mask] = ""
        out = out.astype(str)
    return out


def _upper(text):
    """``np.char.upper(text)`` of an array of str: ASCII letters raised by their codes (issue 11:
    numpy calls ``str.upper`` cell by cell, ~30 us for 200 cells); text beyond ASCII through
    numpy's (also big-endian str: any character but NUL reads as a code beyond 127 then)."""
    text = np.asarray(text)
    if text.dtype.kind != "U" or not text.size:
        return np.char.upper(text)
    codes = np.ascontiguousarray(text).view(np.uint32)
    if codes.max() > 127:
        return np.char.upper(text)
    raised = codes.copy()
    raised[(codes >= ord("a")) & (codes <= ord("z"))] -= ord("a") - ord("A")
    return raised.view(text.dtype).reshape(text.shape)


_TRUE_TEXT = ("T", "TRUE", "Y", "YES", "1")
_FALSE_TEXT = ("F", "FALSE", "N", "NO", "0", "")


def _flags(tin, colname):
    """A flag column as bool; a vector (per-observation) column is true if any element is.

    Booleans, integers (nonzero = set) and text (T/TRUE/Y/YES/1 vs
    F/FALSE/N/NO/0/blank) are accepted; nulls count as not set.
    """
    raw, mask = _data_mask(tin, colname)
    if raw.dtype.kind in "biu":
        flags = raw != 0        # never NaN (issue 11: no float copy and NaN test, ~5 us a column)
    elif raw.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            flags = (raw != 0) & ~np.isnan(raw.astype(float))
    elif raw.dtype.kind in "SUO":
        text = _upper(np.char.strip(_decode(raw.ravel()))).reshape(raw.shape)
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
    if hasattr(header, "cards"):        # a FITS header (astropy's or fitscards'); {} for text
        return get_keyword(header, name)
    return None


def find_tangent_point(tin, cols, rows, *, ra_stack=None, dec_stack=None):
    """The tangent point and where it came from.

    Order: the ra_stack/dec_stack parameters; the ra_stack/dec_stack columns
    of the stack's rows (which must agree); the RA_STACK/DEC_STACK header
    keywords (CXC DTYPEn/DVALn or HIERARCH for DEC_STACK).
    """
    ra_p, dec_p = ra_stack, dec_stack
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
    value = ""
    if cols["instrument"] and np.any(rows):
        # the first non-blank value of the rows (issue 11: looked for by numpy; a Python loop
        # over every row made ~180 numpy strings a stack, ~30-60 us)
        text = _strings(tin, cols["instrument"])[rows]
        found = np.flatnonzero(text != "")
        value = text[found[0]] if found.size else ""
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


def read_detections(tin, *, stackid=None, ra_stack=None, dec_stack=None):
    """The stack's detections and where they are.

    Parameters
    ----------
    tin : stk_astrometry.tableio.TableInput
        The detection table (CSC 2.x columns or their aliases, :data:`DET_ALIASES`).
    stackid : str, optional
        The stack to take when the table holds several (``detect_stack_id``).
    ra_stack, dec_stack : float, optional
        The tangent point (deg); both or neither.  Default: the ``ra_stack``/``dec_stack``
        columns, else the ``RA_STACK``/``DEC_STACK`` keywords.

    Returns
    -------
    DetectionCatalog

    Raises
    ------
    CatalogError, ParameterError
        Missing columns, null ids, several stacks without ``stackid``, no tangent point.
    """
    cols = require_columns(tin, DET_REQUIRED, aliases=DET_ALIASES, optional=DET_OPTIONAL)
    n_rows = len(tin.table)
    if n_rows == 0:
        logger.warning("%s has no rows: the stack has no detections", tin.hdu)
    if cols["detect_stack_id"]:
        stackid, rows = select_stack(_strings(tin, cols["detect_stack_id"]), stackid)
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
        if not _blank(stackid):
            stackid = str(stackid).strip()
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
        likelihood_class=_upper(_strings(tin, cols["likelihood_class"])[rows]),
        sat_src_flag=optional_flags("sat_src_flag", "saturated"),
        conv_hull=optional_flags("conv_hull", "convex hull"),
        man_inc=_flags(tin, cols["man_inc"])[rows] if cols["man_inc"] else None,
    )
    ra0, dec0, origin = find_tangent_point(tin, cols, rows, ra_stack=ra_stack, dec_stack=dec_stack)
    if not (np.isfinite(ra0) and 0 <= ra0 <= 360 and np.isfinite(dec0) and abs(dec0) <= 90):
        raise CatalogError(f"tangent point from {origin} is out of range: ra={ra0}, dec={dec0}")
    instrument = find_instrument(tin, cols, rows, stackid)
    return DetectionCatalog(det, stackid, ra0, dec0, origin, instrument, rows)


def read_gaia(tin):
    """The Gaia sources (:class:`~stk_astrometry.matching.GaiaSources`) of a table."""
    cols = require_columns(tin, GAIA_REQUIRED, aliases=GAIA_ALIASES)
    return matching.GaiaSources(
        source_id=_ints(tin, cols["source_id"]),
        ra_deg=_floats(tin, cols["ra"]),
        dec_deg=_floats(tin, cols["dec"]),
        pmra_masyr=_floats(tin, cols["pmra"]),
        pmdec_masyr=_floats(tin, cols["pmdec"]),
    )


def read_wise(tin):
    """The ALLWISE sources (:class:`~stk_astrometry.matching.WiseSources`) of a table."""
    cols = require_columns(tin, WISE_REQUIRED, aliases=WISE_ALIASES)
    return matching.WiseSources(
        allwise_oid=_ints(tin, cols["allwise_oid"]),
        ra_deg=_floats(tin, cols["ra"]),
        dec_deg=_floats(tin, cols["dec"]),
        sigra_arcsec=_floats(tin, cols["sigra"]),
        sigdec_arcsec=_floats(tin, cols["sigdec"]),
        cc_flags=_strings(tin, cols["cc_flags"]),
    )


def read_best_neighbours(tin):
    """The Gaia-ALLWISE best-neighbour rows of a table."""
    cols = require_columns(tin, BN_REQUIRED)
    return matching.BestNeighbours(
        source_id=_ints(tin, cols["source_id"]),
        allwise_oid=_ints(tin, cols["allwise_oid"]),
    )




# --------------------------------------------------------------------------
# Real catalogs (issue 14): epochs, Gaia astrometry, IRSA ALLWISE, SDSS
# --------------------------------------------------------------------------


class GaiaAstrometry(NamedTuple):
    """What a Gaia table says about its epoch and errors (for the propagation).

    Attributes
    ----------
    ref_epoch : ndarray or None
        Reference epoch per row (Julian year; NaN where null), None without such a column.
    ref_epoch_origin : str
        ``'ref_epoch column'``, ``'RAJ2000 columns'`` (VizieR's positions moved to J2000.0,
        then ``ref_epoch`` is all 2000.0) or ``''``.
    ra_error, dec_error : ndarray or None
        Position errors at the reference epoch, mas (``ra_error`` is on RA cos Dec).
    pmra_error, pmdec_error : ndarray or None
        Proper-motion errors, mas/yr.
    parallax : ndarray or None
        mas.
    """

    ref_epoch: object
    ref_epoch_origin: str
    ra_error: object
    dec_error: object
    pmra_error: object
    pmdec_error: object
    parallax: object


def read_gaia_astrometry(tin):
    """The optional astrometric columns of a Gaia table (:class:`GaiaAstrometry`)."""
    cols = require_columns(tin, GAIA_REQUIRED, aliases=GAIA_ALIASES, optional=GAIA_OPTIONAL)

    def opt(name):
        return _floats(tin, cols[name]) if cols[name] else None

    ref_epoch, origin = opt("ref_epoch"), ""
    if cols["ref_epoch"]:
        origin = f"{cols['ref_epoch']} column"
    if cols["ra"] in ("raj2000",) or cols["dec"] in ("dej2000", "decj2000"):
        ref_epoch = np.full(len(tin.table), 2000.0)
        origin = "RAJ2000 columns"
        logger.info("%s: positions from RAJ2000/DEJ2000 (VizieR: moved to J2000.0): "
                    "reference epoch 2000.0", tin.hdu)
    return GaiaAstrometry(ref_epoch, origin, opt("ra_error"), opt("dec_error"),
                          opt("pmra_error"), opt("pmdec_error"), opt("parallax"))


#: Columns of detfile giving the stack's epoch: Julian year, or MJD (TT).
EPOCH_COLUMNS = ("epoch", "epoch_obs")
MJD_COLUMNS = ("mjd_obs", "mjd")


def _parse_epoch_value(value, what):
    """A Julian year from a number (a year, or an MJD when > 10000) or an ISO date."""
    if isinstance(value, (bool, np.bool_)):
        raise CatalogError(f"{what} = {value!r} is not an epoch")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is not None:
        if not np.isfinite(number):
            raise CatalogError(f"{what} = {value!r} is not an epoch")
        return float(ep.julian_epoch_from_mjd(number)) if number > 10000 else number
    text = str(value).strip()
    if text[:1] in "Jj":
        try:
            return float(text[1:])
        except ValueError:
            pass
    try:
        return ep.julian_epoch_from_isot(text)
    except ValueError:
        raise CatalogError(f"{what} = {value!r} is neither a year, an MJD nor an ISO date") \
            from None


def find_stack_epoch(tin, rows=None):
    """The stack's epoch (Julian year) and where it came from (short, for EPOCHSRC).

    Returns (None, reason) when ``tin`` says nothing about its epoch.

    Order: an ``epoch`` (Julian year) or ``mjd_obs``/``mjd`` (MJD) column, averaged over the
    stack's rows; the ``MJD-OBS``/``MJD_OBS`` keyword; ``DATE-OBS`` (the midpoint with
    ``DATE-END`` when both are there).  CXC writes its dates in TT.
    """
    present = set(tin.table.colnames)
    n = len(tin.table)
    sel = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    for names, to_year in ((EPOCH_COLUMNS, None), (MJD_COLUMNS, ep.julian_epoch_from_mjd)):
        col = next((c for c in names if c in present), None)
        if col is None:
            continue
        values = _floats(tin, col)[sel]
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        years = values if to_year is None else to_year(values)
        return float(np.mean(years)), f"detfile column {tin.original_names.get(col, col)}"
    for key in ("MJD-OBS", "MJD_OBS"):
        value = _header_value(tin.header, key)
        if value is not None and str(value).strip():
            return _parse_epoch_value(value, f"{tin.hdu} {key}"), f"detfile {key}"
    start = _header_value(tin.header, "DATE-OBS")
    if start is not None and str(start).strip():
        year = _parse_epoch_value(start, f"{tin.hdu} DATE-OBS")
        end = _header_value(tin.header, "DATE-END")
        if end is not None and str(end).strip():
            year_end = _parse_epoch_value(end, f"{tin.hdu} DATE-END")
            return 0.5 * (year + year_end), "detfile DATE-OBS/DATE-END midpoint"
        return year, "detfile DATE-OBS"
    return None, (f"{tin.hdu} has no epoch/mjd_obs column and no MJD-OBS or DATE-OBS keyword")


def parse_epoch_parameter(value, name="epoch"):
    """The ``epoch`` parameter: ``'auto'`` (None), ``'none'`` ('none') or a Julian year.

    A number is a Julian year (``2012.5``, also ``J2012.5``), or an MJD when > 10000; text
    may be an ISO date (``2012-07-01T00:00:00``, TT).
    """
    text = "auto" if value is None else str(value).strip()
    low = text.lower()
    if low in ("", "auto", "indef"):
        return None
    if low == "none":
        return "none"
    try:
        year = _parse_epoch_value(text, name)
    except CatalogError as exc:
        raise ParameterError(f"{exc}; use auto, none, a year such as 2012.5, an MJD or an "
                             "ISO date") from None
    if not 1900.0 <= year <= 2100.0:
        raise ParameterError(f"{name}={text}: epoch {year:.3f} is outside 1900-2100")
    return year


def _designation_key(values):
    """ALLWISE designations normalised for a join ('WISEA J...' and 'J...' alike)."""
    text = np.char.upper(np.char.strip(np.asarray(values, dtype=str)))
    text = np.char.replace(text, "WISEA", "")
    return np.char.replace(text, " ", "")


def read_wise_linked(wise_tin, best_tin):
    """ALLWISE sources and best neighbours, linked by ``allwise_oid`` or by designation.

    The Gaia archive's ALLWISE table (``gaiadr1.allwise_original_valid``) carries the
    ``allwise_oid`` the best-neighbour table points to.  IRSA's AllWISE tables do not: their
    rows are then linked through ``designation`` = the best-neighbour table's
    ``original_ext_source_id``, and identified by IRSA's ``cntr`` (else by row number).

    Returns
    -------
    wise : stk_astrometry.matching.WiseSources
    best : stk_astrometry.matching.BestNeighbours
    """
    if "allwise_oid" in wise_tin.table.colnames:
        return read_wise(wise_tin), read_best_neighbours(best_tin)
    if "designation" not in wise_tin.table.colnames:
        raise CatalogError(
            f"{wise_tin.hdu}: required column 'allwise_oid' is missing, and no 'designation' "
            "column to link an IRSA AllWISE table to the best neighbours")
    bcols = require_columns(best_tin, ("source_id", "original_ext_source_id"))
    wcols = require_columns(wise_tin, ("ra", "dec", "sigra", "sigdec", "cc_flags"),
                            aliases=WISE_ALIASES, optional=("cntr",))
    n = len(wise_tin.table)
    ids = (_ints(wise_tin, wcols["cntr"]) if wcols["cntr"]
           else np.arange(1, n + 1, dtype=np.int64))
    keys = _designation_key(_strings(wise_tin, "designation"))
    lookup = {}
    for k, i in zip(keys.tolist(), ids.tolist(), strict=True):
        lookup.setdefault(k, i)
    bn_keys = _designation_key(_strings(best_tin, bcols["original_ext_source_id"]))
    # a designation absent from wisefile gets an id no ALLWISE row has (counted as NBNMISS)
    absent = -np.arange(1, len(bn_keys) + 1, dtype=np.int64)
    bn_ids = np.array([lookup.get(k, a) for k, a in zip(bn_keys.tolist(), absent.tolist(), strict=True)],
                      dtype=np.int64)
    logger.info("%s has no allwise_oid: linked to %s by designation (%d of %d best-neighbour "
                "rows found), ids from %s", wise_tin.hdu, best_tin.hdu,
                int(np.count_nonzero(bn_ids > 0)), len(bn_ids),
                "cntr" if wcols["cntr"] else "the row number")
    wise = matching.WiseSources(
        allwise_oid=ids, ra_deg=_floats(wise_tin, wcols["ra"]),
        dec_deg=_floats(wise_tin, wcols["dec"]),
        sigra_arcsec=_floats(wise_tin, wcols["sigra"]),
        sigdec_arcsec=_floats(wise_tin, wcols["sigdec"]),
        cc_flags=_strings(wise_tin, wcols["cc_flags"]))
    best = matching.BestNeighbours(source_id=_ints(best_tin, bcols["source_id"]),
                                   allwise_oid=bn_ids)
    return wise, best


#: SDSS columns (SkyServer/CasJobs PhotoObj, astroquery.sdss; names case-insensitive).
SDSS_ALIASES = {
    "objid": ("obj_id", "bestobjid", "source_id"),
    "ra": ("ra_deg", "raj2000"),
    "dec": ("dec_deg", "dej2000", "decj2000"),
    "objc_rowcerr": ("rowcerr_r", "rowcerr"),
    "objc_colcerr": ("colcerr_r", "colcerr"),
    "raerr": ("ra_err", "e_radeg"),
    "decerr": ("dec_err", "e_dedeg"),
    "muerr": ("mu_err",),
    "nuerr": ("nu_err",),
}
SDSS_OPTIONAL = ("ra", "dec", "mu", "nu", "node", "incl", "objc_rowcerr", "objc_colcerr",
                 "raerr", "decerr", "muerr", "nuerr", "mode", "mjd")


class SdssCatalog(NamedTuple):
    """SDSS objects as reference sources.

    Attributes
    ----------
    sources : stk_astrometry.matching.GaiaSources
        objID as ``source_id``, J2000 positions, no proper motions (NaN), 1-sigma errors
        per axis (RA cos Dec, Dec) from the seed's error model.
    epoch : ndarray or None
        Observation epoch per row (Julian year, from the ``mjd`` column).
    n_not_primary : int
        Rows dropped because ``mode`` is not 1 (not the primary detection).
    n_bad_err : int
        Rows dropped because their position error is not a positive number.
    error_model : str
        How the errors were formed (for the log and the SDSSERR keyword).
    """

    sources: object
    epoch: object
    n_not_primary: int
    n_bad_err: int
    error_model: str


def read_sdss(tin):
    """SDSS objects (:class:`SdssCatalog`) from a PhotoObj-like table (seed 003's model).

    Positions: ``ra``/``dec``, else the great-circle ``mu``/``nu`` with the scan's
    ``node``/``incl`` (columns or the tsField ``NODE``/``INCL`` keywords).  Errors: the
    calibration ``muErr``/``nuErr`` (default
    :data:`stk_astrometry.core.sdss.DEFAULT_CALIBRATION_ERROR`) in quadrature with the
    centroid errors ``objc_rowcErr``/``objc_colcErr`` x 0.396"/pixel, rotated from (mu, nu) to
    (RA, Dec) when the scan's node and inclination are known (circularised otherwise); or,
    for tables with ``raErr``/``decErr`` (arcsec) instead of centroid errors, those in
    quadrature with the calibration error.  ``mode`` other than 1 (secondary detections) is
    dropped when the column is there; so are objects whose centroid errors are SDSS's
    -9999 ("no value") or not positive.
    """
    from stk_astrometry.core import sdss

    cols = require_columns(tin, ("objid",) + SDSS_OPTIONAL, aliases=SDSS_ALIASES,
                           optional=SDSS_OPTIONAL)
    n = len(tin.table)

    def col(name):
        return _floats(tin, cols[name]) if cols[name] else None

    def err(name):     # SDSS writes -9999 (or 0) for "no value": NaN
        values = col(name)
        if values is None:
            return np.full(n, np.nan)
        with np.errstate(invalid="ignore"):
            return np.where(values > 0, values, np.nan)

    def scan_value(name):
        if cols[name]:
            return _floats(tin, cols[name])
        value = _header_value(tin.header, name.upper())
        try:
            return None if value is None else np.full(n, float(value))
        except (TypeError, ValueError):
            raise CatalogError(f"{tin.hdu}: keyword {name.upper()} = {value!r} is not a number") \
                from None

    mu, nu = col("mu"), col("nu")
    node, incl = scan_value("node"), scan_value("incl")
    have_scan = mu is not None and nu is not None and node is not None and incl is not None
    if cols["ra"] and cols["dec"]:
        ra, dec = _floats(tin, cols["ra"]), _floats(tin, cols["dec"])
    elif have_scan:
        ra, dec = sdss.great_circle_to_j2000(mu, nu, node, incl)
    else:
        raise CatalogError(
            f"{tin.hdu}: an SDSS table needs ra/dec (also tried ra_deg, raj2000 / dec_deg, "
            "dej2000), or mu/nu with the scan's node/incl (columns or NODE/INCL keywords)")
    cal_mu, cal_nu = err("muerr"), err("nuerr")
    if cols["objc_rowcerr"] and cols["objc_colcerr"]:
        s_mu, s_nu = sdss.great_circle_errors(cal_mu, cal_nu, err("objc_rowcerr"),
                                              err("objc_colcerr"))
        if have_scan:
            sig_ra, sig_dec, _ = sdss.radec_errors(mu, nu, node, incl, s_mu, s_nu)
            model = "muErr/nuErr + 0.396 objc_rowcErr/colcErr, rotated to RA/Dec"
        else:
            sig_ra = sig_dec = np.sqrt(0.5 * (s_mu**2 + s_nu**2))
            model = "muErr/nuErr + 0.396 objc_rowcErr/colcErr, circularised"
    elif cols["raerr"] and cols["decerr"]:
        cal = np.sqrt(0.5 * (np.where(np.isfinite(cal_mu), cal_mu,
                                      sdss.DEFAULT_CALIBRATION_ERROR) ** 2
                             + np.where(np.isfinite(cal_nu), cal_nu,
                                        sdss.DEFAULT_CALIBRATION_ERROR) ** 2))
        sig_ra, sig_dec = np.hypot(cal, err("raerr")), np.hypot(cal, err("decerr"))
        model = "calibration + raErr/decErr"
    else:
        raise CatalogError(
            f"{tin.hdu}: an SDSS table needs centroid errors objc_rowcErr/objc_colcErr "
            "(also tried rowcErr_r/colcErr_r) or raErr/decErr for its error model")
    if not (cols["muerr"] and cols["nuerr"]):
        model += f" (no muErr/nuErr: calibration {sdss.DEFAULT_CALIBRATION_ERROR:.3f}\")"
    keep = np.ones(n, dtype=bool)
    n_not_primary = 0
    if cols["mode"]:
        primary = _floats(tin, cols["mode"]) == 1
        n_not_primary = int(np.count_nonzero(~primary))
        keep &= primary
    with np.errstate(invalid="ignore"):
        good_err = np.isfinite(sig_ra) & np.isfinite(sig_dec) & (sig_ra > 0) & (sig_dec > 0)
    n_bad_err = int(np.count_nonzero(keep & ~good_err))
    keep &= good_err
    epoch = None
    if cols["mjd"]:
        epoch = ep.julian_epoch_from_mjd(_floats(tin, cols["mjd"]))[keep]
    nan = np.full(int(np.count_nonzero(keep)), np.nan)
    sources = matching.GaiaSources(
        source_id=_ints(tin, cols["objid"])[keep], ra_deg=np.asarray(ra)[keep],
        dec_deg=np.asarray(dec)[keep], pmra_masyr=nan, pmdec_masyr=nan.copy(),
        sigra_arcsec=np.asarray(sig_ra)[keep], sigdec_arcsec=np.asarray(sig_dec)[keep])
    return SdssCatalog(sources, epoch, n_not_primary, n_bad_err, model)
