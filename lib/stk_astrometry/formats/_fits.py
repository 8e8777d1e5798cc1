"""Helpers the format modules share: tables as column dicts, header cards as tuples.

A table travels between reader and writer as an ordered ``{name: ndarray}`` plus
``{name: unit}``; header keywords as ``(name, value, comment)`` tuples, long names written
the CXC way (DTYPEn/DVALn) by :func:`stk_astrometry.fitsutil.set_keyword`.
"""

from __future__ import annotations

import re

import numpy as np

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
        width = max([1] + [len(str(v)) for v in arr.ravel()])
        return f"{width}A"
    if kind == "b":
        return "L"
    if kind in "iu":
        return "K" if arr.dtype.itemsize > 4 else ("J" if arr.dtype.itemsize > 2 else "I")
    if kind == "f" and arr.dtype.itemsize == 4:
        return "E"
    return "D"


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
    from astropy.io.fits.card import Undefined

    skip = {s.upper() for s in skip}
    cards = [(c.keyword, None if isinstance(c.value, Undefined) else c.value, c.comment)
             for c in header.cards]
    dval = {}
    for kw, value, _ in cards:
        m = _DTYPE.match(kw)
        if m:
            dval[f"DVAL{m.group(1)}"] = str(value).strip().upper()
    out = []
    for kw, value, comment in cards:
        if not kw or _STRUCTURAL.match(kw) or _DTYPE.match(kw) or kw in skip:
            continue
        if kw in dval:
            if dval[kw] in skip:
                continue
            kw = dval[kw]
        out.append((kw, value, comment))
    return tuple(out)


def extra_cards(header):
    """Cards of an extension header beyond its structure and columns (HISTORY/COMMENT left out).

    Kept as read (DTYPEn/DVALn as they are), for a copy of the HDU (the diagnostics file).
    """
    return tuple((c.keyword, c.value, c.comment) for c in header.cards
                 if c.keyword and not _STRUCTURAL.match(c.keyword))


def keyword_value(keys, name, default=None):
    """The value of ``name`` among ``(name, value, comment)`` tuples."""
    name = name.upper()
    for kw, value, _ in keys:
        if kw.upper() == name:
            return value
    return default


def header_value(x):
    """A header value: None (FITS undefined) for NaN; numpy scalars as Python numbers."""
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
