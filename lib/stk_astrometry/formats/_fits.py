"""Helpers the format modules share: tables as column dicts, header cards as tuples.

A table travels between reader and writer as an ordered ``{name: ndarray}`` plus
``{name: unit}``; header keywords as ``(name, value, comment)`` tuples, long names written
the CXC way (DTYPEn/DVALn) by :func:`stk_astrometry.fitsutil.set_keyword`.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np

from stk_astrometry import __version__, fitsedit, fitsutil
from stk_astrometry.errors import OutputError

#: The writers' "Wrote" lines go to fitsutil's logger, as :func:`fitsutil.write_fits`'s do.
logger = logging.getLogger("stk_astrometry.fitsutil")

#: Header cards a reader does not carry over: structure, column descriptions, stamps that
#: the writer sets anew.
_STRUCTURAL = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|TFIELDS|EXTNAME|"
    r"T(TYPE|FORM|UNIT|NULL|DISP|DIM|SCAL|ZERO|COMM|UCD)\d+|HISTORY|COMMENT)$")
_DTYPE = re.compile(r"^DTYPE(\d+)$")


def column_format(values, fmt=None):
    """The TFORM of a column: ``fmt`` when given, else from the dtype (strings: their width)."""
    if fmt:
        return fmt
    arr = np.asarray(values)
    kind = arr.dtype.kind
    if kind in "US":
        # the longest value's len() (trailing NULs are no part of a numpy string)
        width = max(1, int(np.char.str_len(arr).max())) if arr.size else 1
        return f"{width}A"
    # a vector column (one array per row) repeats its element type: "2D" for (n, 2) floats
    repeat = str(int(np.prod(arr.shape[1:]))) if arr.ndim > 1 else ""
    if kind == "b":
        return repeat + "L"
    if kind in "iu":
        return repeat + ("K" if arr.dtype.itemsize > 4 else ("J" if arr.dtype.itemsize > 2 else "I"))
    if kind == "f" and arr.dtype.itemsize == 4:
        return repeat + "E"
    return repeat + "D"


def table_hdu(name, columns, *, units=None, formats=None, nrows=None):
    """A BinTableHDU from ``{column: array}`` (zero rows allowed).  No I/O.

    Parameters
    ----------
    name : str
        EXTNAME.
    columns : dict
        Column name -> values, in output order.
    units, formats : dict, optional
        Column name -> TUNIT / TFORM (TFORM inferred from the dtype when not given).
    """
    from astropy.io import fits

    units = units or {}
    formats = formats or {}
    cols = [fits.Column(name=key, format=column_format(arr, formats.get(key)),
                        unit=units.get(key) or None, array=arr)
            for key, arr in columns.items()]
    if nrows is None:
        return fits.BinTableHDU.from_columns(cols, name=name)
    return fits.BinTableHDU.from_columns(cols, name=name, nrows=nrows)


def set_keywords(header, keys, *, drop_long_comments=True):
    """Write ``(name, value, comment)`` keywords (long names as DTYPEn/DVALn).

    With ``drop_long_comments`` a string value too long for its comment on one card keeps
    its text and loses the comment.
    """
    from stk_astrometry.fitsutil import set_keyword

    for name, value, comment in keys:
        if (drop_long_comments and isinstance(value, str)
                and 13 + max(20, len(value) + 2) + len(comment) > 80):
            comment = ""    # a long string value keeps its text; the comment would be cut
        set_keyword(header, name, value, comment)


def header_keywords(header, *, skip=()):
    """The user keywords of a header as ``(name, value, comment)``, DTYPEn/DVALn folded back.

    Structure, column descriptions, HISTORY/COMMENT and the names in ``skip`` are left out.
    """
    skip = {s.upper() for s in skip}
    cards = [(c.keyword, _defined(c.value), c.comment) for c in header.cards]
    dval = {}
    for kw, value, _ in cards:
        m = _DTYPE.match(kw)
        if m:
            dval[f"DVAL{m.group(1)}"] = str(value).strip().upper()
    out = []
    folded = set(dval.values())
    for kw, value, comment in cards:
        if not kw or _STRUCTURAL.match(kw) or _DTYPE.match(kw) or kw in skip:
            continue
        if kw in dval:
            if dval[kw] in skip:
                continue
            kw = dval[kw]
        elif len(kw) > 8 and kw.upper() in folded:
            continue        # the HIERARCH copy of a DTYPEn/DVALn keyword
        out.append((kw, value, comment))
    return tuple(out)


def extra_cards(header):
    """Cards of an extension header beyond its structure and columns (HISTORY/COMMENT left out).

    Kept as read (DTYPEn/DVALn as they are), for a copy of the HDU (the diagnostics file).
    HISTNUM is left out with the HISTORY records it counts: the copy's writer numbers its own
    records from 1, and HISTNUM is then their last counter (ciao-conventions 2.4).
    """
    return tuple((c.keyword, _defined(c.value), c.comment) for c in header.cards
                 if c.keyword and c.keyword != "HISTNUM" and not _STRUCTURAL.match(c.keyword))


def _defined(value):
    """None for an undefined value (astropy's or :mod:`stk_astrometry.fitscards`'s)."""
    return None if type(value).__name__ == "Undefined" else value


def keyword_value(keys, name, default=None):
    """The value of ``name`` among ``(name, value, comment)`` tuples."""
    name = name.upper()
    for kw, value, _ in keys:
        if kw.upper() == name:
            return value
    return default


def header_value(x):
    """A header value: None (FITS undefined) for NaN; numpy scalars as Python numbers."""
    kind = type(x)
    if kind is int or kind is str or kind is bool or x is None:
        return x            # (issue 11: the usual values, ~60 a stack, without the checks)
    if kind is float:
        return x if math.isfinite(x) else None
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def open_product(path, content, what):
    """Open one of our own FITS files for reading, checked: exists, is FITS, has ``CONTENT``.

    Every failure is one :class:`~stk_astrometry.errors.InputError` (missing, unreadable,
    truncated) or :class:`~stk_astrometry.errors.FormatError` (FITS, but not ``what``), never
    a raw astropy exception.  The data are read eagerly (``lazy_load_hdus=False``), so a file
    cut short fails here and not later, half way through a caller's loop.

    Returns
    -------
    astropy.io.fits.HDUList
        Open; the caller closes it (``with open_product(...) as hdul:``).
    """
    import warnings

    from astropy.io import fits

    from stk_astrometry.errors import FormatError, InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    hdul = None
    try:
        with warnings.catch_warnings():
            # a truncated file: astropy warns, then fails; we say it once, below
            warnings.simplefilter("ignore")
            hdul = fits.open(p, memmap=False, lazy_load_hdus=False)
            for hdu in hdul:
                _ = hdu.data
    except (OSError, ValueError, TypeError, IndexError) as exc:
        if hdul is not None:
            hdul.close()
        raise InputError(f"{path}: cannot read as FITS: {exc}") from exc
    if str(hdul[0].header.get("CONTENT", "")).strip() != content:
        hdul.close()
        raise FormatError(f"{path}: not a {what} (CONTENT != {content})")
    return hdul


#: The fast path for the per-stack files: fitsio reads them, write_fits_fast writes their bytes
#: (cfitsio's, see _fits_image); False: astropy reads and writes them (astropy's path stays for
#: a file fitsio cannot read and for callers that want astropy objects).  It was off for a
#: while after pytest-xdist workers segfaulted; the cause was astropy's C VOTable writer in the
#: tests, not fitsio (conftest.py).
FITSIO_IO = True


def _read_fits_astropy(path):
    from astropy.io import fits

    out = []
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            header = hdu.header.copy()
            extname = str(header.get("EXTNAME", "")).strip()
            if not isinstance(hdu, fits.BinTableHDU):
                out.append((extname, header, None, {}))
                continue
            columns, units = {}, {}
            for col in hdu.columns:
                arr = np.array(hdu.data[col.name]) if hdu.data is not None else np.zeros(0)
                if arr.dtype.kind == "S":
                    arr = np.char.rstrip(np.char.decode(arr, "ascii", errors="replace"))
                elif arr.dtype.byteorder == ">":
                    arr = arr.astype(arr.dtype.newbyteorder("="))
                columns[col.name.lower()] = arr
                if col.unit:
                    units[col.name.lower()] = col.unit
            out.append((extname, header, columns, units))
    return out


def read_fits(path):
    """Every HDU of a FITS file, read with fitsio (fast for the small per-stack files).

    Returns
    -------
    list of (extname, header, columns, units)
        ``header`` the cards as written (:func:`stk_astrometry.fitscards.parse_header`: an
        astropy-compatible read-only header, astropy's own for unusual cards); ``columns``
        ``{lower-case name: ndarray}`` in native byte order (strings as str, trailing blanks
        removed), None for a non-table HDU; ``units`` ``{name: TUNITn}``.

    Raises
    ------
    OSError
        The file cannot be read as FITS.
    """
    if not FITSIO_IO:
        return _read_fits_astropy(path)
    try:
        return _read_fits_fitsio(path)
    except OSError:
        # not FITS, truncated, damaged: astropy's reader raises the one-line message the
        # readers pass on (cfitsio's spans several lines and names its internals)
        return _read_fits_astropy(path)


def _read_fits_fitsio(path):
    from stk_astrometry.tableio import open_fits, raw_header

    out = []
    with open_fits(path) as fh:     # numpy for a plain layout (tableio.PlainFits), else fitsio
        for hdu in fh:
            header = raw_header(path, hdu)
            extname = str(header.get("EXTNAME", "")).strip()
            if hdu.get_exttype() != "BINARY_TBL":
                out.append((extname, header, None, {}))
                continue
            names = hdu.get_colnames()
            data = hdu.read() if hdu.get_nrows() else None
            rec = hdu.get_rec_dtype()[0] if data is None else None
            columns, units = {}, {}
            for i, name in enumerate(names, start=1):
                if data is not None:
                    arr = data[name]
                    if arr.dtype.byteorder == ">":
                        arr = arr.astype(arr.dtype.newbyteorder("="))
                else:
                    dt = rec[name]
                    base = dt.base
                    if base.kind == "S":
                        base = np.dtype(f"U{base.itemsize}")
                    arr = np.zeros((0,) + dt.shape, dtype=base.newbyteorder("="))
                if arr.dtype.kind == "S":
                    arr = np.char.rstrip(np.char.decode(arr, "ascii", errors="replace"))
                columns[name.lower()] = arr
                unit = header.get(f"TUNIT{i}")
                if unit:
                    units[name.lower()] = str(unit).strip()
            out.append((extname, header, columns, units))
    return out


# ---------------------------------------------------------------------------------------------
# Writing (the bytes cfitsio writes; see _fits_image below)


@dataclass(frozen=True, eq=False)
class HduSpec:
    """One HDU to write: the primary (``name`` None) or a binary table.

    Attributes
    ----------
    name : str or None
        EXTNAME; None for the primary HDU (no data).
    columns : dict
        Column name -> array, in file order (tables).
    units, formats : dict
        Column name -> TUNIT / TFORM (TFORM from the dtype when not given).
    keys : list of (name, value, comment)
        Keywords in order; names longer than eight characters become DTYPEn/DVALn pairs.
    cards : tuple of (name, value, comment)
        Cards copied from another file as they are (names of up to eight characters),
        written first, each only when its name is not there yet.
    drop_long_comments : bool
        See :func:`set_keywords`.
    column_info : dict
        Column name -> (description, UCD), written as TCOMMn / TUCDn (empty: not written).
    """

    name: str | None
    columns: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    formats: dict = field(default_factory=dict)
    keys: tuple = ()
    cards: tuple = ()
    drop_long_comments: bool = True
    column_info: dict = field(default_factory=dict)


#: The comments astropy gives the structural cards (the golden files carry them).
_ASTROPY_COMMENTS = {
    "SIMPLE": "conforms to FITS standard", "BITPIX": "array data type",
    "NAXIS": "number of array dimensions", "EXTEND": "", "XTENSION": "binary table extension",
    "NAXIS1": "length of dimension 1", "NAXIS2": "length of dimension 2",
    "PCOUNT": "number of group parameters", "GCOUNT": "number of groups",
    "TFIELDS": "number of table fields", "EXTNAME": "extension name",
}


def to_hdulist(specs):
    """The astropy HDUList of ``specs`` (for callers that want astropy objects).  No I/O."""
    from astropy.io import fits

    out = []
    for spec in specs:
        if spec.name is None:
            hdu = fits.PrimaryHDU()
        else:
            hdu = table_hdu(spec.name, spec.columns, units=spec.units, formats=spec.formats,
                            nrows=_n_rows(spec.columns))
            for i, key in enumerate(spec.columns, start=1):
                desc, ucd = spec.column_info.get(key, ("", ""))
                if desc:
                    hdu.header[f"TCOMM{i}"] = desc
                if ucd:
                    hdu.header[f"TUCD{i}"] = ucd
        for card in spec.cards:
            if card[0] not in hdu.header:
                hdu.header.append(_as_card(*card))
        set_keywords(hdu.header, spec.keys, drop_long_comments=spec.drop_long_comments)
        for name, value, comment in spec.keys:
            if len(name.strip()) > 8:
                hdu.header.append(_as_card(name.strip().upper(), value, comment))
        out.append(hdu)
    return fits.HDUList(out)


def _as_card(name, value, comment=""):
    """An astropy Card; a name longer than eight characters as a HIERARCH card (no warning)."""
    from astropy.io.fits import Card

    if len(name) > 8 and not name.upper().startswith("HIERARCH "):
        name = f"HIERARCH {name}"
    return Card(name, value, comment)


def _n_rows(columns):
    return len(next(iter(columns.values()))) if columns else 0


def _table_columns(spec):
    """The table's columns as cfitsio writes them (native byte order, strings as ASCII bytes),
    their TFORMs, and the dtype of a row (what fitsio derives the table's definition from:
    its TFORMs and TDIMs, and the row's width; byte order plays no part)."""
    fields, tforms, arrays = [], [], []
    formats = spec.formats
    for key, values in spec.columns.items():
        arr = values if type(values) is np.ndarray else np.asarray(values)
        fmt = formats.get(key)
        if not fmt and arr.dtype.kind in "US":
            fmt = column_format(arr)        # a text column's width: from its values
        # the rest is the same for every column of a kind (issue 11: ~2 us a column)
        tform, dt = _column_type(fmt or None, arr.dtype, arr.shape[1:])
        fields.append((key, dt) if arr.ndim <= 1 else (key, dt, arr.shape[1:]))
        tforms.append(tform)
        # strings cut or padded to the width, numbers cast, as assigning into the rows would
        if arr.dtype.kind == "U" and dt.kind == "S":
            arrays.append(_ascii_bytes(arr, dt))
        else:
            arrays.append(np.ascontiguousarray(arr.astype(dt, copy=False)))
    return arrays, tforms, _fields_dtype(tuple(fields))


def _ascii_bytes(arr, dt):
    """``arr.astype(dt)`` of a str array ``arr`` and a bytes dtype ``dt``, contiguous: ASCII
    text by its character codes (issue 11: numpy's cast encodes cell by cell, ~25 us for a
    pairs file's 180 likelihood classes), cut or padded with NULs to ``dt``'s width; other text
    (and a byte-swapped array) by numpy's cast, which refuses what is not ASCII."""
    width = arr.dtype.itemsize // 4
    if not (arr.size and width and arr.dtype.isnative):
        return np.ascontiguousarray(arr.astype(dt))
    codes = np.ascontiguousarray(arr).view(np.uint32).reshape(arr.shape + (width,))
    if codes.max() > 127:
        return np.ascontiguousarray(arr.astype(dt))
    out = np.zeros(arr.shape + (dt.itemsize,), np.uint8)
    keep = min(width, dt.itemsize)
    out[..., :keep] = codes[..., :keep]
    return out.view(dt).reshape(arr.shape)


@functools.lru_cache(maxsize=256)
def _column_type(fmt, dtype, shape):
    """A column's TFORM and the dtype cfitsio is handed for it: ``fmt`` when given, else from
    the values' ``dtype`` and cell ``shape`` (:func:`column_format`)."""
    tform = fmt or column_format(np.empty((0,) + shape, dtype))
    if tform.endswith("A"):
        width = int(tform[:-1] or 1)
        dt = np.dtype(f"S{width}")     # str cast to it as ASCII (UnicodeEncodeError if not)
    elif tform.lstrip("0123456789") == "L":
        dt = np.dtype("?")
    else:
        dt = np.dtype({"I": "i2", "J": "i4", "K": "i8", "E": "f4",
                       "D": "f8"}[tform.lstrip("0123456789")])
    return tform, dt


@functools.lru_cache(maxsize=256)
def _fields_dtype(fields):
    """``np.dtype(fields)``, remembered (a file kind's tables have the same fields)."""
    return np.dtype(list(fields))


def _format_float(value):
    """A float as astropy writes it in a card: Python's shortest repr, ``E``, at most 20 characters."""
    text = repr(float(value)).replace("e", "E")
    if len(text) > 20:
        idx = text.find("E")
        text = text[:20] if idx < 0 else text[:20 - (len(text) - idx)] + text[idx:]
    return text


def format_card(name, value, comment=""):
    """An 80-character FITS card, byte for byte as astropy's ``Card(name, value, comment).image``.

    For the value types the formats write (str, bool, int, float, None); a name longer than
    eight characters or a string longer than 68 characters is left to astropy (HIERARCH,
    CONTINUE), which is then imported.  Cards with a text value are remembered (the column
    cards and most keywords are the same in every file of a kind: issue 11), and so are
    int and float cards (by type: ``1`` and ``1.0`` are equal keys but different cards),
    except a float zero (0.0 and -0.0 are equal keys but different cards).
    """
    kind = type(value)
    if kind is str and type(name) is str and type(comment) is str:
        return _text_card(name, value, comment)
    if (kind is int or kind is float) and len(name) <= 8:
        if value or kind is int:
            # remembered too: a stack's files repeat most of their numbers (the transform's
            # summary in four headers, the pairs file's in five), and runs repeat constants
            return _number_card(name, value, comment)
        return _short_number_card(name, value, comment)     # 0.0 and -0.0: equal keys
    return _format_card(name, value, comment)


@functools.lru_cache(maxsize=512, typed=True)
def _number_card(name, value, comment):
    return _short_number_card(name, value, comment)


def _short_number_card(name, value, comment):
    """An int or float card of a name of up to eight characters, as :func:`_format_card`
    makes it (issue 11: directly)."""
    text = f"{value:>20d}" if type(value) is int else f"{_format_float(value):>20}"
    card = f"{name:8}= {text}"
    if comment:
        card += f" / {comment}"
    return card[:80].ljust(80)


#: (the cards that repeat are few: ~50 over stk_batch's benchmark stacks, the column cards
#: being remembered per file kind by _column_cards; every stack adds ~8 of its own -- ids,
#: paths, dates.  At 4,096 the cache filled over a campaign's first ~500 stacks and held
#: ~1.5 MB of one-off cards (~360 bytes each) in every stk_batch worker: issue 12, session 11.)
@functools.lru_cache(maxsize=256)
def _text_card(name, value, comment):
    return _format_card(name, value, comment)


def _format_card(name, value, comment):
    if (len(name) > 8 and isinstance(value, (float, int, np.floating, np.integer))
            and not isinstance(value, (bool, np.bool_))):
        number = _format_float(value) if isinstance(value, (float, np.floating)) else int(value)
        card = f"HIERARCH {name.upper()} = {number}" + (f" / {comment}" if comment else "")
        if len(card) <= 80:
            return card.ljust(80)
    if len(name) > 8 or (isinstance(value, str) and len(value) > 68):
        return _as_card(name, value, comment).image
    if value is None:
        body = ""
    elif isinstance(value, (bool, np.bool_)):
        body = f"{'T' if value else 'F':>20}"
    elif isinstance(value, (int, np.integer)):
        body = f"{int(value):>20d}"
    elif isinstance(value, (float, np.floating)):
        body = f"{_format_float(value):>20}"
    elif value == "":
        body = "''"
    else:
        text = str(value).replace("'", "''")
        quoted = f"'{text:8}'"
        body = f"{quoted:20}"
    card = f"{name:8}= {body}"
    if comment:
        card += f" / {comment}"
    # too long: the comment is cut, as astropy cuts it (without its warning)
    return card[:80].ljust(80)




def write_fits_fast(path, specs, history, *, clobber):
    """Write ``specs`` stamped and atomically, with the headers astropy would write.

    The same conventions as :func:`stk_astrometry.fitsutil.write_fits`: CREATOR, DATE, this
    run's CIAO HISTORY records with HISTNUM, CHECKSUM/DATASUM on every HDU, a temporary file
    renamed into place.  Structural cards get astropy's comments and values are formatted as
    astropy formats them, so a file reads the same whichever library wrote it.  The bytes are
    those cfitsio writes through :func:`_write_one`, assembled by :func:`_fits_image` (or by
    cfitsio itself for a card :func:`_fits_image` leaves to it).
    """
    # (fitsutil's functions looked up in it at each call: tests replace some; issue 11: the
    # imports were made here at each write, ~5 us)
    if not FITSIO_IO:
        fitsutil.write_fits(to_hdulist(specs), path, history, clobber=clobber)
        return
    fitsutil.check_clobber(path, clobber)
    when = fitsutil.utc_now()
    items = list(history.history_items())
    stacks = fitsutil.read_stacks(items)
    creator = f"{history.tool} - stk_astrometry {__version__}"
    run = (history.tool, items, stacks, when, creator, _records_memo(fitsutil.history_records))
    # the file's bytes are made in memory and go to atomic_path's locked temporary file in
    # one write, through its descriptor (fitsio's clobber=True would unlink and recreate it
    # unlocked)
    try:
        parts = _fits_parts(specs, run)
        if parts is None:
            parts = [_cfitsio_image(specs, run)]
        fitsutil.write_atomically(path, parts)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    logger.info("Wrote %s", path)


def _cfitsio_image(specs, run):
    """The bytes of the file of ``specs`` as cfitsio makes them, in its memory driver
    ("mem://"): the writer of any file :func:`_fits_image` does not make, and its reference
    (test_formats_fits).  Through fitsio every keyword written flushes cfitsio's buffer -- a
    write() per card on a disk file (issue 11)."""
    import fitsio

    with fitsio.FITS("mem://", "rw") as fh:
        for ext, spec in enumerate(specs, start=1):     # the primary first
            _write_one(fh, ext, spec, *run)
        return fh.read_raw()


def _records_memo(history_records):
    """``history_records`` for one write: the same run's records for every HDU, differing only
    in the counter they start at -- formatted once per counter (the HDUs of a file mostly
    start at the same one)."""
    made = {}

    def records(tool, items, *, start, when, stacks):
        if start not in made:
            made[start] = history_records(tool, items, start=start, when=when, stacks=stacks)
        return made[start]

    return records


def _write_one(fh, ext, spec, tool, items, stacks, when, creator, history_records):
    """Append HDU number ``ext`` (1: the primary) of ``specs`` to the open ``fh``.

    A table goes through fitsio's cfitsio handle ``fh._FITS`` by HDU number: fitsio's HDU
    objects re-read a new HDU's description from cfitsio after each call that changes it,
    and convert the rows to native byte order and back (issue 11: ~1.3 ms per stack, a
    quarter of the pairs and transform files' cost).  The same cfitsio calls in the same
    order: the file's bytes are those fitsio's objects write (test_formats_fits)."""
    from fitsio.fitslib import BINARY_TBL, descr2tabledef

    cfits = fh._FITS
    if spec.name is None:
        fh.write(None)
        hdu = fh[-1]
        # what fitsio writes differently from astropy: BITPIX 16 for no data, the comments,
        # two COMMENT cards about the FITS paper
        for key, value in (("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)):
            hdu.write_key(key, value, _ASTROPY_COMMENTS[key] or " ")
        hdu.delete_key("COMMENT")
        hdu.delete_key("COMMENT")
        present = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND"}
    else:
        arrays, tforms, rows = _table_columns(spec)
        names, formats, dims = descr2tabledef(rows.descr)
        units = [spec.units.get(k) or "" for k in spec.columns]
        cfits.create_table_hdu(BINARY_TBL, 0, names, formats, tunit=units, tdim=dims,
                               extname=spec.name, extver=0)
        n_rows = _n_rows(spec.columns)
        if n_rows:
            cfits.write_columns(ext, list(range(len(arrays))), arrays, firstrow=1,
                                write_bitcols=False)
        structure = (("XTENSION", "BINTABLE"), ("BITPIX", 8), ("NAXIS", 2),
                     ("NAXIS1", rows.itemsize), ("NAXIS2", n_rows), ("PCOUNT", 0),
                     ("GCOUNT", 1), ("TFIELDS", len(spec.columns)), ("EXTNAME", spec.name))
        for key, value in structure:
            if isinstance(value, str):
                cfits.write_string_key(ext, key, value, _ASTROPY_COMMENTS[key])
            else:
                cfits.write_long_long_key(ext, key, value, _ASTROPY_COMMENTS[key])
        present = {key for key, _ in structure}
        # Two passes with the same result as one: cfitsio looks a keyword up from the last one
        # it found, so the column cards fitsio wrote are updated in header order first (short
        # look-ups), then the new TCOMMn/TUCDn cards are appended in their order (issue 11:
        # interleaved, every update searched the whole header, ~40 % of a pairs file's write).
        for i, (key, tform) in enumerate(zip(spec.columns, tforms, strict=True), start=1):
            cfits.write_string_key(ext, f"TTYPE{i}", key, " ")  # " ": no comment, as astropy
            cfits.write_string_key(ext, f"TFORM{i}", tform, " ")
            present |= {f"TTYPE{i}", f"TFORM{i}"}
            if spec.units.get(key):
                cfits.write_string_key(ext, f"TUNIT{i}", spec.units[key], " ")
                present.add(f"TUNIT{i}")
        for i, key in enumerate(spec.columns, start=1):
            desc, ucd = spec.column_info.get(key, ("", ""))
            if desc:
                _append_text_card(cfits, ext, f"TCOMM{i}", desc)
                present.add(f"TCOMM{i}")
            if ucd:
                _append_text_card(cfits, ext, f"TUCD{i}", ucd)
                present.add(f"TUCD{i}")
    final, records = _keyword_cards(spec, present, tool, items, stacks, when, creator,
                                    history_records)
    for name, value, comment in final:
        _write_card(cfits, ext, name, value, comment)
    for rec in records:
        cfits.write_record(ext, f"HISTORY {rec}")
    cfits.write_checksum(ext)


def _keyword_cards(spec, present, tool, items, stacks, when, creator, history_records):
    """The keywords of HDU ``spec`` after its structure (whose names are ``present``), as
    ``(name, value, comment)`` in file order, and this run's HISTORY records.

    Copied cards first (those not ``present``), then the HDU's keywords (long names the CXC
    way: DTYPEn/DVALn and a HIERARCH copy), then the stamps: CREATOR and DATE replaced or
    added, HISTNUM continuing a copied one; stale CHECKSUM/DATASUM left out.
    """
    # copied cards, then this HDU's keywords (long names the CXC way), then the stamps
    out = [c for c in spec.cards if c[0] not in present]
    dtype_n = max([int(m.group(1)) for c in out if (m := _DTYPE.match(c[0]))], default=0)
    drop = spec.drop_long_comments
    for name, value, comment in spec.keys:
        name = name.strip().upper()
        if drop and isinstance(value, str) and 13 + max(20, len(value) + 2) + len(comment) > 80:
            comment = ""
        if len(name) <= 8:
            out.append((name, value, comment))
        else:
            # CIAO's DM reads the DTYPEn/DVALn pair as the long name; astropy and the HIERARCH
            # convention readers read the same value as a plain keyword of that name
            dtype_n += 1
            out += [(f"DTYPE{dtype_n}", name, "Long key name - value in DVALn"),
                    (f"DVAL{dtype_n}", value, comment), (name, value, comment)]
    # the cards the stamps replace or drop (issue 11: most HDUs have none; every card was
    # compared with each stamp's name)
    stamped = [card for card in out if card[0] in _STAMPS]
    last = 0
    for name, value, _ in stamped:
        if name == "HISTNUM":
            try:
                last = max(last, int(value))
            except (TypeError, ValueError):
                pass
    records = history_records(tool, items, start=last + 1, when=when, stacks=stacks)
    histnum = last + len(records)
    seen = set()
    final = out
    if stamped:
        final = []
        for card in out:
            name = card[0]
            if name in _STAMPS:
                if name == "HISTNUM":
                    card = (name, histnum, card[2])
                elif name == "CREATOR":
                    card = (name, creator, "tool that created this output")
                elif name == "DATE":
                    card = (name, when, "Date and time of file creation")
                else:
                    continue
                seen.add(name)
            final.append(card)
    if "CREATOR" not in seen:
        final.append(("CREATOR", creator, "tool that created this output"))
    if "DATE" not in seen:
        final.append(("DATE", when, "Date and time of file creation"))
    if "HISTNUM" not in seen:
        final.append(("HISTNUM", histnum, "Number of HISTORY records"))
    return final, records


#: The names of the cards :func:`_keyword_cards` stamps (CREATOR, DATE, HISTNUM) or drops.
_STAMPS = frozenset(("HISTNUM", "CREATOR", "DATE", "CHECKSUM", "DATASUM"))


def _append_text_card(cfits, ext, name, value):
    """Append the new keyword ``name`` with a string value and a blank comment to HDU number
    ``ext`` of fitsio's cfitsio handle ``cfits``: the card that ``hdu.write_key(name, value,
    " ")`` writes (test_formats checks it byte for byte), without cfitsio's look-up of
    ``name`` in the whole header first.  Values cfitsio would write differently (empty,
    quotes, 65 characters and more: its long-string convention, not printable ASCII) go
    through cfitsio's own string keyword writer."""
    if (len(name) <= 8 and 0 < len(value) <= _CFITSIO_SHORT_STRING and "'" not in value
            and value.isascii() and value.isprintable()):
        cfits.write_record(ext, format_card(name, value, " "))
    else:
        cfits.write_string_key(ext, name, value, " ")


# the longest string value cfitsio writes on one card (longer: CONTINUE cards)
_CFITSIO_SHORT_STRING = 64


def _write_card(cfits, ext, name, value, comment):
    image = format_card(name, value, comment)
    # fitsio has no public call that writes a card image as given; its key writers format
    # floats with 15 digits, which would not read back as the value written
    for i in range(0, len(image), 80):
        cfits.write_record(ext, image[i:i + 80])


# ---------------------------------------------------------------------------------------------
# The same bytes without cfitsio's keyword calls (issue 11)
#
# Through cfitsio's keyword API a pairs or transform file cost ~300 calls: each card written by
# a call that formats, looks up or shifts the header, and the checksums computed by re-reading
# it (py-spy: ~12 % of a stack's CPU in _write_one itself).  The header of a file is the card
# images the code above hands cfitsio anyway (format_card: astropy's images), so here the file
# is assembled directly: the cards, END and blank fill to 2880 bytes, the rows big-endian with
# zero fill, and the CHECKSUM/DATASUM cards of cfitsio's fits_write_chksum.  Anything whose
# card cfitsio would write differently from format_card (see _plain, _kept) makes the whole
# file go through cfitsio (_cfitsio_image); test_formats_fits compares the two byte for byte.


def _fits_image(specs, run):
    """The bytes cfitsio would make of ``specs`` (:func:`_cfitsio_image`), or None when an
    HDU has a card or column this writer leaves to cfitsio."""
    parts = _fits_parts(specs, run)
    return None if parts is None else b"".join(parts)


def _fits_parts(specs, run):
    """:func:`_fits_image`'s bytes as the buffers that make them up, in order (each HDU's
    header, then its data), or None.  Written as they are (issue 11: joined, a pairs file's
    ~200 kB were copied once more per stack)."""
    stamp = _checksum_time()
    parts = []
    for spec in specs:
        part = _hdu_image(spec, stamp, run)
        if part is None:
            return None
        parts += part
    return parts


def _checksum_time():
    """The time cfitsio puts in the CHECKSUM/DATASUM comments: now, UTC, to the second."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


#: The primary HDU's structure as _write_one leaves it (fitsio's own cards rewritten).
_PRIMARY = (("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True))


def _hdu_image(spec, stamp, run):
    """One HDU's bytes as :func:`_write_one` has cfitsio write them, as ``[header, data]``
    (see :func:`_with_checksums`), or None (see _fits_image)."""
    if spec.name is None:
        fixed = _primary_text()
        present = _PRIMARY_NAMES
        data = b""
    else:
        arrays, tforms, rows = _table_columns(spec)
        if not arrays or any(arr.ndim > 2 for arr in arrays):
            return None         # no columns; TDIMn (cfitsio writes them)
        n_rows = _n_rows(spec.columns)
        layout = tuple((key, tform, spec.units.get(key) or "", *spec.column_info.get(key, ("", "")))
                       for key, tform in zip(spec.columns, tforms, strict=True))
        columns = _column_cards(spec.name, layout)
        if columns is None:
            return None
        before, after = _structure_text(rows.itemsize, len(arrays))
        fixed = before + format_card("NAXIS2", n_rows, _ASTROPY_COMMENTS["NAXIS2"]) + after \
            + columns[0]
        present = _TABLE_NAMES | columns[1]
        data = _table_data(arrays, n_rows, rows)
    final, records = _keyword_cards(spec, present, *run)
    text = _cards_text(final)
    history = _history_text(tuple(records))
    # The structure and column cards are printable ASCII already (_column_text checks theirs).
    if text is None or history is None:
        return None
    return _with_checksums(fixed + text + history, data, stamp)


def _cards_text(cards):
    """The images of the ``(name, value, comment)`` ``cards`` (:func:`format_card`) as one
    text, or None when cfitsio's write_record would change one: not printable ASCII (blanked),
    a name not in upper case (raised) or not valid (refused).

    A card's image and its check are remembered by the card (issue 11: a stack's files repeat
    most of their keywords -- the transform's summary in four headers, the stack's in five --
    and ~1 us a card went to formatting, looking up and checking it again), with the type of
    its value: equal cards of different types (``1``, ``1.0``, ``True``) have different images,
    and so do the float zeros 0.0 and -0.0 (never remembered), and numpy's numbers (not either).
    """
    images = []
    for card in cards:
        value = card[1]
        kind = type(value)
        hit = _CARD_IMAGES.get(card)
        if hit is None or hit[1] is not kind:
            # format_card's image, without its own memos (a card not remembered here is
            # mostly one of this stack's: issue 11, and their memory stays for the others)
            if (kind is int or kind is float) and len(card[0]) <= 8:
                image = _short_number_card(*card)
            else:
                image = _format_card(*card)
            if not (_name_kept(card[0]) and image.isascii() and image.isprintable()):
                return None
            hit = (image, kind)
            if kind is str or kind is int or kind is bool or value is None \
                    or (kind is float and value):
                if len(_CARD_IMAGES) >= _CARD_IMAGES_MAX:
                    _CARD_IMAGES.clear()      # bounded (issue 12): a stack adds ~100 of its own
                _CARD_IMAGES[card] = hit
        images.append(hit[0])
    return "".join(images)


#: :func:`_cards_text`'s images: card -> (image, type of the value); emptied when full.
_CARD_IMAGES = {}
_CARD_IMAGES_MAX = 512


@functools.lru_cache(maxsize=8)
def _history_text(records):
    """The HISTORY cards of this run's ``records`` as one text, or None when cfitsio's
    write_record would change one (not printable ASCII, not one card).  Remembered: every HDU
    of a file has the same records (issue 11)."""
    text = "".join([f"HISTORY {rec}" for rec in records])
    if not (text.isascii() and text.isprintable() and all(len(rec) == 72 for rec in records)):
        return None
    return text


#: The names of the primary's structure cards and of a table's (NAXIS2 included).
_PRIMARY_NAMES = frozenset(key for key, _ in _PRIMARY)
_TABLE_NAMES = frozenset(("XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
                          "TFIELDS"))


@functools.lru_cache(maxsize=1)
def _primary_text():
    """The primary HDU's structure cards (the same in every file)."""
    return "".join(format_card(key, value, _ASTROPY_COMMENTS[key] or " ")
                   for key, value in _PRIMARY)


@functools.lru_cache(maxsize=64)
def _structure_text(itemsize, n_fields):
    """A binary table's structure cards before and after NAXIS2 (the rows, the only one that
    changes from file to file of a kind), for rows of ``itemsize`` bytes in ``n_fields`` columns."""
    before = (("XTENSION", "BINTABLE"), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", itemsize))
    after = (("PCOUNT", 0), ("GCOUNT", 1), ("TFIELDS", n_fields))
    return tuple("".join(format_card(key, value, _ASTROPY_COMMENTS[key]) for key, value in cards)
                 for cards in (before, after))


@functools.lru_cache(maxsize=256)
def _column_cards(extname, layout):
    """:func:`_column_text`, remembered: a file kind's columns are the same in every file."""
    return _column_text(extname, layout)


def _column_text(extname, layout):
    """The cards _write_one has cfitsio write after TFIELDS, for the columns ``layout``
    (name, TFORM, unit, description, UCD): TTYPEn, TFORMn and TUNITn, EXTNAME, then TCOMMn and
    TUCDn -- as one text and the set of their names, or None when cfitsio would write one of
    them differently."""
    texts = []
    for i, (key, tform, unit, _, _) in enumerate(layout, start=1):
        texts += [(f"TTYPE{i}", key), (f"TFORM{i}", tform)] + ([(f"TUNIT{i}", unit)] if unit else [])
    texts.append(("EXTNAME", extname))
    for i, (_, _, _, desc, ucd) in enumerate(layout, start=1):
        texts += [(name, text) for name, text in ((f"TCOMM{i}", desc), (f"TUCD{i}", ucd)) if text]
    texts = [(name, text, _ASTROPY_COMMENTS.get(name, " ")) for name, text in texts]
    if not all(_plain(text, comment) for _, text, comment in texts):
        return None
    return "".join(format_card(*text) for text in texts), frozenset(text[0] for text in texts)


def _plain(text, comment):
    """True for a string value that cfitsio's string keyword writer puts on one card with
    ``comment`` as :func:`format_card` does: printable ASCII, not empty, value (quotes
    doubled) and comment within the card (longer: cfitsio's CONTINUE cards)."""
    return (text.isascii() and text.isprintable()
            and 0 < len(text.replace("'", "''")) <= 65 - len(comment))


#: A keyword name cfitsio accepts (fftkey): letters, digits, - and _, blank fill.
_KEYWORD = re.compile(r"[A-Z0-9_-]* *")


@functools.lru_cache(maxsize=1024)
def _name_kept(name):
    """:func:`_kept`, remembered (the same names in every file of a kind)."""
    return _kept(name)


def _kept(name):
    """True for a keyword name that :func:`format_card` puts on cards cfitsio's write_record
    (ffprec) writes unchanged: in upper case up to the ``=``, the card's first eight
    characters a valid name (``HIERARCH`` for a longer one)."""
    return name == name.upper() and (len(name) > 8 or _KEYWORD.fullmatch(f"{name:8}") is not None)


def _table_data(arrays, n_rows, rows):
    """The rows of a binary table as cfitsio writes ``arrays`` (:func:`_table_columns`, with
    ``rows`` the dtype of a row of them): big-endian, logicals as ``T``/``F``, strings as
    their bytes; zero fill to 2880 bytes.  One buffer (an ndarray of bytes), the rows made in
    place."""
    if not n_rows:
        return b""
    dtype = _row_dtype(rows)
    size = n_rows * dtype.itemsize
    data = np.empty(size + -size % 2880, np.uint8)
    data[size:] = 0
    rows = data[:size].view(dtype)
    for name, arr in zip(dtype.names, arrays, strict=True):
        rows[name] = np.where(arr, np.uint8(ord("T")), np.uint8(ord("F"))) if arr.dtype.kind == "b" else arr
    return data


@functools.lru_cache(maxsize=256)
def _row_dtype(rows):
    """:func:`_big_endian_row` of the fields of the row dtype ``rows``, remembered (issue 11:
    looked up by the row dtype, ~0.5 us a column less than by the arrays' dtypes)."""
    return _big_endian_row(_row_fields(rows))


def _row_fields(rows):
    """``(dtype.str, shape)`` of each field of the row dtype ``rows``, in order: what the
    arrays of the fields have (their dtype, and the shape of a cell)."""
    return tuple((rows.fields[name][0].base.str, rows.fields[name][0].shape) for name in rows.names)


def _big_endian_row(fields):
    """The file's row dtype for columns of dtypes ``(dtype.str, shape)``: big-endian, a
    logical as one byte."""
    return np.dtype([(f"f{i}", np.dtype("u1" if kind == "|b1" else kind).newbyteorder(">"), shape)
                     for i, (kind, shape) in enumerate(fields)])


def _with_checksums(header, data, stamp):
    """The HDU of the card images ``header`` and the padded ``data``, as ``[header bytes,
    data]``, with the CHECKSUM and DATASUM cards cfitsio's fits_write_chksum appends (FITS
    checksum convention: the 32-bit ones' complement sums, as :mod:`stk_astrometry.fitsedit`
    computes and encodes them for the headers it rewrites; DATASUM of no data
    ``'         0'``)."""
    datasum = fitsedit.ones_complement_sum(data) if len(data) else 0
    at = len(header) + 11       # the value of the CHECKSUM card, its first card added here
    header += (format_card("CHECKSUM", "0" * 16, f"HDU checksum updated {stamp}")
               + format_card("DATASUM", str(datasum) if datasum else f"{0:10d}",
                             f"data unit checksum updated {stamp}")
               + "END")
    header += " " * (-len(header) % 2880)
    raw = header.encode("ascii")
    total = fitsedit.ones_complement_sum(raw, datasum)
    checksum = fitsedit.encode_checksum(0xFFFFFFFF - total).encode("ascii")
    return [raw[:at] + checksum + raw[at + 16:], data]

