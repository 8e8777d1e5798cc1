"""FITS binary tables read straight from a file's bytes: the per-stack files and catalogs.

The per-stack path reads five small FITS files per stack (four catalogs, the pairs file).
Opening one with fitsio has cfitsio scan and describe every HDU (``get_hdu_info``), and the
table read goes through several layers of Python for a few kilobytes of rows (issue 11: ~1 ms
per file, 40 % of reading a pairs file).  Here the file is read once, each header's cards
are parsed by :func:`stk_astrometry.fitscards.parse_header` (as the fitsio path already
does), and a table's rows are one :func:`numpy.frombuffer`.

Only what reads the same as fitsio's ``hdu.read()`` is read here (the tests compare them):
binary tables of fixed-width logical, byte, integer, real and string columns, with no
scaling (``TSCALn``/``TZEROn``), no ``TDIMn``, no heap.  Anything else -- a compressed
file, other column types, a file that does not parse as plain FITS -- makes
:func:`read_hdus` or :func:`table_columns` return None, and the caller reads the file with
fitsio (or astropy) as before, whose messages then name any problem.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

__all__ = ["RawHdu", "read_hdus", "table_columns"]

BLOCK = 2880
_END = b"END" + b" " * 77
#: fitsio's HDU type names (``hdu.get_exttype()``)
_EXTTYPES = {"BINTABLE": "BINARY_TBL", "TABLE": "ASCII_TBL", "IMAGE": "IMAGE_HDU"}
#: TFORMn read here: a repeat count and one of these codes, nothing after it
_TFORM = re.compile(r"(\d*)([LBIJKAED])\Z")
_DTYPES = {"L": "u1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}
_WIDTHS = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8}


class RawHdu(NamedTuple):
    """One HDU of :func:`read_hdus`."""

    header: object      # fitscards.Header (or astropy's, for unusual cards)
    exttype: str        # as fitsio names it: IMAGE_HDU, BINARY_TBL, ASCII_TBL
    extname: str        # EXTNAME, stripped ('' when none)
    data_start: int     # byte offset of the data in the file's bytes
    buffer: bytes       # the whole file


def _int_key(header, name, default=None):
    value = header.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} = {value!r}")
    return value


def read_hdus(path):
    """Every HDU of the FITS file ``path`` (headers parsed, data located), or None when the
    file is compressed or does not parse as plain FITS here (the caller's reader decides)."""
    from stk_astrometry.fitscards import parse_header

    with open(path, "rb") as fh:
        buf = fh.read()
    if buf[:2] == b"\x1f\x8b" or not buf.startswith(b"SIMPLE  ="):
        return None
    hdus = []
    pos = 0
    try:
        while pos < len(buf):
            end = buf.find(_END, pos)
            while end >= 0 and (end - pos) % 80:
                end = buf.find(_END, end + 1)
            if end < 0:
                return None
            data_start = pos + -(-(end + 80 - pos) // BLOCK) * BLOCK
            header = parse_header(buf[pos:data_start].decode("ascii", errors="replace"))
            if pos == 0:
                if header.get("SIMPLE") is not True or header.get("GROUPS"):
                    return None
                exttype = "IMAGE_HDU"
            else:
                exttype = _EXTTYPES.get(str(header.get("XTENSION", "")).strip())
                if exttype is None:
                    return None
            naxis = _int_key(header, "NAXIS")
            size = 0
            if naxis:
                size = 1
                for i in range(1, naxis + 1):
                    size *= _int_key(header, f"NAXIS{i}")
                size = (abs(_int_key(header, "BITPIX")) // 8 * _int_key(header, "GCOUNT", 1)
                        * (_int_key(header, "PCOUNT", 0) + size))
            if data_start + size > len(buf):
                return None             # cut short: the caller's reader says so
            hdus.append(RawHdu(header, exttype, str(header.get("EXTNAME", "") or "").strip(),
                               data_start, buf))
            pos = data_start + -(-size // BLOCK) * BLOCK
    except (ValueError, KeyError, TypeError):
        return None
    return hdus


def table_columns(hdu):
    """The columns of a binary-table HDU of :func:`read_hdus`, ``{TTYPEn: ndarray}`` in file
    order, as fitsio's ``hdu.read()`` gives them (logical as bool, strings as ``U``, numbers
    in native byte order; each array its own copy); with no rows, zero-length arrays of
    fitsio's record dtype (strings ``S``).  None for a table this module does not read."""
    h = hdu.header
    if hdu.exttype != "BINARY_TBL" or h.get("PCOUNT", 0) != 0 or h.get("GCOUNT", 1) != 1:
        return None
    try:
        n_fields = _int_key(h, "TFIELDS")
        width, n_rows = _int_key(h, "NAXIS1"), _int_key(h, "NAXIS2")
    except ValueError:
        return None
    names, formats, offsets, codes = [], [], [], []
    offset = 0
    for i in range(1, n_fields + 1):
        name = h.get(f"TTYPE{i}")
        m = _TFORM.match(str(h.get(f"TFORM{i}", "")).strip())
        if (not isinstance(name, str) or m is None or f"TSCAL{i}" in h or f"TZERO{i}" in h
                or f"TDIM{i}" in h):
            return None
        repeat = int(m.group(1) or 1)
        code = m.group(2)
        if repeat == 0:
            return None
        if code == "A":
            formats.append(f"S{repeat}")
        else:
            formats.append(np.dtype(_DTYPES[code]) if repeat == 1
                           else (np.dtype(_DTYPES[code]), (repeat,)))
        names.append(name)
        offsets.append(offset)
        codes.append((code, repeat))
        offset += _WIDTHS[code] * repeat
    if offset != width or len(set(names)) < len(names):
        return None
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                      "itemsize": width})
    columns = {}
    if not n_rows:
        for name, (code, _) in zip(names, codes, strict=True):
            dt = dtype[name]
            base = np.dtype(bool) if code == "L" else dt.base.newbyteorder("=")
            columns[name] = np.zeros((0,) + dt.shape, dtype=base)
        return columns
    rows = np.frombuffer(hdu.buffer, dtype=dtype, count=n_rows, offset=hdu.data_start)
    for name, (code, repeat) in zip(names, codes, strict=True):
        arr = rows[name]
        if code == "L":
            columns[name] = arr == ord("T")
        elif code == "A":
            columns[name] = arr.astype(f"U{repeat}")
        else:
            columns[name] = arr.astype(arr.dtype.newbyteorder("="))
    return columns
