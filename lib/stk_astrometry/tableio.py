"""Reading catalog tables named CIAO-style.

Owns the parsing of ``file.fits[EXTNAME]`` / ``file.fits[n]`` (CIAO's block
syntax: 1-based, 1 = the primary HDU) and the reading of a table from FITS or
any format astropy reads (VOTable, ECSV, CSV), with case-insensitive column
lookup.  It does not interpret the columns.

FITS tables are read with fitsio (several times faster than astropy's table layer for the
small per-stack tables); what fitsio does not read the way astropy does (scaled columns, bit
and variable-length arrays, ASCII tables) goes through astropy.  A file of the plain layouts
the catalogs and per-stack files use is read by :class:`PlainFits` with numpy, giving exactly
what fitsio gives without cfitsio's scan of every HDU on open (issue 11); any other file goes
to fitsio as before.  astropy and fitsio are imported inside the functions, so importing this
module is cheap.
"""

import functools
import logging
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import fitscards
from .errors import CatalogError, FormatError, InputError, ParameterError
from .fitsutil import _stat_or_none

logger = logging.getLogger(__name__)

__all__ = ["TableInput", "parse_virtual_filename", "read_table", "require_columns", "is_fits_file"]

_BLOCK_RE = re.compile(r"^(?P<path>.*?)\[(?P<block>[^\[\]]*)\]$")


@dataclass(frozen=True)
class TableInput:
    """A table read from a file.

    Attributes
    ----------
    table : astropy.table.Table
        The rows, column names lower-cased.
    header : astropy.io.fits.Header or dict
        The header of the FITS HDU read ({} for other formats).
    path : Path
        The file.
    hdu : str
        A label for messages, e.g. ``det.fits[DETECTIONS]``.
    spec : str
        What the user gave.
    original_names : dict
        Lower-cased name -> the name as written in the file.
    ambiguous : dict
        Lower-cased name -> the names (differing only in case) of columns left out because
        a case-insensitive lookup could not tell them apart.
    """

    table: object
    header: object
    path: Path
    hdu: str
    spec: str
    original_names: dict = field(default_factory=dict)
    ambiguous: dict = field(default_factory=dict)


def parse_virtual_filename(spec):
    """Split ``file[block]`` into the file name and the block.  Pure.

    Parameters
    ----------
    spec : str
        ``file``, ``file[NAME]`` or ``file[n]`` (CIAO numbering: 1 = primary).

    Returns
    -------
    path : str
    block : str or int or None
        The block name, the 1-based block number, or None.

    Raises
    ------
    ParameterError
        For an empty name or DM filters this reader does not support
        (``[cols ...]``, ``[x>1]``, several bracket groups).
    """
    text = str(spec).strip()
    if not text:
        raise ParameterError("empty file name")
    m = _BLOCK_RE.match(text)
    if not m:
        if "[" in text or "]" in text:
            raise ParameterError(
                f"{spec}: only one block selector is supported, e.g. file.fits[EXTNAME] or file.fits[2]"
            )
        return text, None
    path, block = m.group("path").strip(), m.group("block").strip()
    if not path:
        raise ParameterError(f"{spec}: no file name before the block selector")
    if "[" in path or "]" in path:
        raise ParameterError(
            f"{spec}: DM filters are not supported; select a block only, e.g. file.fits[EXTNAME]"
        )
    if not block:
        return path, None
    if re.fullmatch(r"\d+", block):
        n = int(block)
        if n < 1:
            raise ParameterError(f"{spec}: block numbers start at 1 (the primary HDU)")
        return path, n
    if not re.fullmatch(r"[A-Za-z_][\w\-]*", block):
        raise ParameterError(
            f"{spec}: '[{block}]' is not a block name or number; DM filters are not supported"
        )
    return path, block


def is_fits_file(path):
    """True if ``path`` starts like a FITS file (also gzip-compressed FITS)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if head.startswith(b"SIMPLE  ="):
        return True
    if head.startswith(b"\x1f\x8b"):
        import gzip

        try:
            with gzip.open(path, "rb") as fh:
                return fh.read(9).startswith(b"SIMPLE  =")
        except OSError:
            return False
    return False


def _ascii_format(path):
    suffix = path.suffix.lower()
    if suffix in (".gz", ".bz2", ".xz"):
        suffix = Path(path.stem).suffix.lower()
    return {
        ".csv": "ascii.csv",
        ".ecsv": "ascii.ecsv",
        ".xml": "votable",
        ".vot": "votable",
        ".votable": "votable",
        ".tsv": "ascii.tab",
        ".tbl": "ascii.ipac",       # IRSA's IPAC tables
    }.get(suffix)


#: Reader options per format: SkyServer CSV exports start with a '#Table1' line.
_READ_OPTIONS = {"ascii.csv": {"comment": "#"}}


def _lowercase_columns(table, label):
    """Lower-case the column names; returns (original names, ambiguous names).

    Columns whose names differ only in case (VizieR's ``b_Teff_gaia``/``B_Teff_gaia``) are
    removed from the table and listed as ambiguous: they are an error only if a reader asks
    for one of them (:func:`require_columns`), never merely for being there.
    """
    groups = {}
    for name in table.colnames:
        groups.setdefault(name.strip().lower(), []).append(name)
    original, ambiguous = {}, {}
    for low, names in groups.items():
        if len(names) > 1:
            ambiguous[low] = tuple(names)
            table.remove_columns(names)
            logger.debug("%s: columns %s differ only in case; left out", label,
                         ", ".join(repr(n) for n in names))
            continue
        original[low] = names[0]
        if low != names[0]:
            table.rename_column(names[0], low)
    return original, ambiguous


def _read_fits(path, block, spec, param):
    from astropy.io import fits
    from astropy.table import Table

    try:
        hdul = fits.open(path, memmap=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{param}={spec}: cannot read FITS file {path}: {exc}") from exc
    with hdul:
        if block is None:
            idx = next(
                (i for i, h in enumerate(hdul) if isinstance(h, (fits.BinTableHDU, fits.TableHDU))),
                None,
            )
            if idx is None:
                raise FormatError(f"{param}={spec}: {path} has no table HDU")
        elif isinstance(block, int):
            idx = block - 1
            if idx >= len(hdul):
                raise InputError(
                    f"{param}={spec}: {path} has {len(hdul)} HDUs, no block [{block}]"
                )
        else:
            want = block.upper()
            idx = next(
                (
                    i
                    for i, h in enumerate(hdul)
                    if str(h.header.get("EXTNAME", "")).strip().upper() == want
                    or str(h.header.get("HDUNAME", "")).strip().upper() == want
                ),
                None,
            )
            if idx is None:
                names = [str(h.header.get("EXTNAME", "")).strip() or str(i + 1) for i, h in enumerate(hdul)]
                raise InputError(
                    f"{param}={spec}: {path} has no HDU named {block} (HDUs: {', '.join(names)})"
                )
        hdu = hdul[idx]
        # CIAO numbers blocks from 1 (= primary); label unnamed HDUs that way
        name = str(hdu.header.get("EXTNAME", "")).strip() or str(idx + 1)
        label = f"{path}[{name}]"
        if not isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            raise FormatError(f"{param}={spec}: {label} is not a table")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                table = Table.read(hdu, mask_invalid=True)
            except (ValueError, TypeError, OSError) as exc:
                raise InputError(f"{param}={spec}: cannot read table {label}: {exc}") from exc
        for w in caught:
            logger.debug("%s: %s", label, w.message)
        header = hdu.header.copy()
    return table, header, label


class ColumnTable:
    """The columns of a FITS table read by fitsio, with the parts of astropy's Table API the readers use.

    ``table[name]`` is a masked array: NaN in float columns, ``TNULLn`` in integer columns and
    blank strings are masked, as ``Table.read(..., mask_invalid=True)`` masks them.
    """

    def __init__(self, columns, nulls=None):
        self._columns = dict(columns)
        self._nulls = dict(nulls or {})

    @property
    def colnames(self):
        return list(self._columns)

    def __len__(self):
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def __contains__(self, name):
        return name in self._columns

    def __getitem__(self, name):
        import numpy as np

        data, mask = self._data_mask(name)
        if mask is None:
            return np.ma.MaskedArray(data)
        return np.ma.MaskedArray(data, mask=mask)

    def data_mask(self, name):
        """``table[name]``'s data and its mask as a boolean array of the data's shape,
        without the masked array (issue 11: building one costs more than the mask)."""
        import numpy as np

        data, mask = self._data_mask(name)
        return data, np.zeros(data.shape, bool) if mask is None else mask

    def _data_mask(self, name):
        """The data of column ``name`` and its mask, None for a column that has none."""
        import numpy as np

        data = self._columns[name]
        kind = data.dtype.kind
        if kind == "f":
            return data, np.isnan(data)
        if kind in "iu" and name in self._nulls:
            return data, data == self._nulls[name]
        if kind in "US":
            return data, (np.char.str_len(np.char.strip(data)) == 0 if data.size
                          else np.zeros(data.shape, bool))
        return data, None

    def floats(self, name):
        """A numeric column as float64 with NaN where ``table[name]`` is masked (what
        ``np.ma.filled(table[name].astype(float), nan)`` gives, without the masked arrays);
        None for a column that is not a plain number column."""
        import numpy as np

        data = self._columns[name]
        if data.ndim != 1 or data.dtype.kind not in "fiu":
            return None
        values = data.astype(float)
        if data.dtype.kind in "iu" and name in self._nulls:
            values[data == self._nulls[name]] = np.nan
        return values

    def remove_columns(self, names):
        for name in names:
            self._columns.pop(name)
            self._nulls.pop(name, None)

    def rename_column(self, old, new):
        self._columns = {(new if k == old else k): v for k, v in self._columns.items()}
        if old in self._nulls:
            self._nulls[new] = self._nulls.pop(old)


#: fitsio for FITS catalogs (astropy reads what fitsio does not: see :func:`_read_fits_fast`).
_FAST_READ = True

_FALLBACK_TFORM = re.compile(r"[XPQ]", re.I)


def _read_fits_fast(path, block, spec, param, plain=None):
    """Read a FITS table with fitsio; None when astropy should read it (see module docstring).

    Anything fitsio cannot read goes to astropy too, whose messages name the problem.
    ``plain``: the file already open as a :class:`PlainFits` (closed here).
    """
    try:
        return _read_with_fitsio(path, block, plain)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError):
        return None


#: Read plain FITS files with numpy (:class:`PlainFits`), fitsio the others; False: fitsio all.
_PLAIN_READ = True

_BLOCK = 2880
_END = b"END" + b" " * 77
_PLAIN_TFORM = re.compile(r"(\d*)([LBIJKAED])\Z")
#: TFORM letter -> (fitsio's on-disk numpy type, width in bytes)
_PLAIN_TYPES = {"L": ("?", 1), "B": ("u1", 1), "I": (">i2", 2), "J": (">i4", 4),
                "K": (">i8", 8), "E": (">f4", 4), "D": (">f8", 8), "A": ("S", 1)}
_PLAIN_BITPIX = (8, 16, 32, 64, -32, -64)
#: Keywords of a table layout :class:`PlainFits` leaves to fitsio (scaling, heap, shapes).
_NOT_PLAIN = re.compile(r"^(?:TSCAL|TZERO|TDIM|THEAP)", re.M)


def _has_end(block):
    """True when one of the 80-character cards of the 2880-byte ``block`` is END."""
    at = block.find(_END)
    while at > 0 and at % 80:        # found across two cards: look on from there
        at = block.find(_END, at + 1)
    return at >= 0


def _plain_int(kw, key):
    """An integer keyword of ``kw`` (keyword -> value) as an int, or None (absent, not an
    integer, a logical)."""
    value = kw.get(key)
    return value if type(value) is int else None


class PlainHdu:
    """One HDU of a :class:`PlainFits` file: the parts of fitsio's HDU objects the readers use,
    giving what fitsio gives (``read`` the same structured array, strings decoded, logicals as
    bool, numbers big-endian)."""

    def __init__(self, fits, header, data_start, padded, exttype, extname, columns, nrows):
        self._fits = fits
        self.header = header
        self._data_start = data_start
        self._padded = padded            # the data unit's size in whole blocks
        self._exttype = exttype
        self._extname = extname
        self._columns = columns          # [(name, disk type)] for a table, else None
        self._nrows = nrows

    def get_exttype(self):
        return self._exttype

    def get_extname(self):
        return self._extname

    def get_colnames(self):
        return [name for name, _ in self._columns]

    def get_nrows(self):
        return self._nrows

    def get_rec_dtype(self):
        return (_np_dtype(self._columns),)

    def read(self):
        import numpy as np

        data = self._rows()
        # as fitsio.TableHDU.read: text as str (ASCII), then the logicals' 'T' as True
        if any(t[0] == "S" for _, t in self._columns):
            data = data.astype([(n, "U" + t[1:]) if t[0] == "S" else (n, t)
                                for n, t in self._columns])
        for name, t in self._columns:
            if t == "?":
                data[name] = (data[name].view(np.int8) == ord("T")).astype(bool)
        return data

    def read_columns(self):
        """The columns of :meth:`read`'s array, each in native byte order -- what
        ``_read_with_fitsio`` makes of fitsio's array, column by column from the file's rows
        (issue 11: no copy of the whole table to str fields first)."""
        import numpy as np

        data = self._rows()
        columns = {}
        for name, t in self._columns:
            arr = data[name]
            if t[0] == "S":
                arr = _ascii_text(arr, "U" + t[1:])
            elif t == "?":
                arr = arr.view(np.int8) == ord("T")
            elif arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("="))
            columns[name] = arr
        return columns

    def _rows(self):
        """The table's rows as they are in the file (a structured array, big-endian)."""
        import numpy as np

        dtype = _np_dtype(self._columns)
        buf = bytearray(dtype.itemsize * self._nrows)
        fh = self._fits.fh
        fh.seek(self._data_start)
        if fh.readinto(buf) != len(buf):
            raise OSError(f"{self._fits.path}: the table data ends early")
        return np.frombuffer(buf, dtype=dtype)


def _ascii_text(arr, dtype):
    """``arr.astype(dtype)`` for a text column ``arr`` (bytes) and its ``dtype`` (str of the
    same width): each byte its character's code (issue 11: ~4x faster than numpy's cast,
    which decodes cell by cell).  A byte beyond ASCII goes to numpy's cast, which refuses it."""
    import numpy as np

    codes = np.ascontiguousarray(arr).view(np.uint8)
    if codes.size and codes.max() > 127:
        return arr.astype(dtype)
    return codes.astype(np.uint32).view(dtype)


def _np_dtype(columns):
    """The rows' dtype of a plain table's ``columns`` [(name, disk type)], remembered (issue 11:
    ~2-7 us a table to make)."""
    return _np_dtype_of(tuple(columns))


@functools.lru_cache(maxsize=64)
def _np_dtype_of(columns):
    import numpy as np

    return np.dtype(list(columns))


#: The names of a table's TTYPEn and TFORMn keywords, n = 1..999 (made once: issue 11).
_TTYPE = tuple(f"TTYPE{i}" for i in range(1, 1000))
_TFORM = tuple(f"TFORM{i}" for i in range(1, 1000))


def _plain_layout(names, tforms, width):
    """A plain table's columns ``((name, disk type), ...)`` from its TTYPEn ``names`` and TFORMn
    ``tforms`` values, in rows of ``width`` (NAXIS1) bytes: ValueError for a layout
    :class:`PlainFits` leaves to fitsio (a name not a non-blank str without surrounding
    blanks or repeated, a TFORM not a scalar ``L B I J K E D`` or a text ``rA``, the columns
    not packed to ``width``).  Remembered as :func:`_plain_columns`."""
    columns, total = [], 0
    for name, tform in zip(names, tforms, strict=True):
        m = _PLAIN_TFORM.match(tform.strip()) if isinstance(tform, str) else None
        if not isinstance(name, str) or not name.strip() or name != name.strip() or m is None:
            raise ValueError("not a plain column")
        repeat = int(m.group(1)) if m.group(1) else 1
        npy, size = _PLAIN_TYPES[m.group(2)]
        if npy == "S":
            if repeat < 1:
                raise ValueError("empty text column")
            npy = f"S{repeat}"
        elif repeat != 1:
            raise ValueError("a vector column")
        columns.append((name, npy))
        total += size * repeat
    if total != width or len({name for name, _ in columns}) < len(names):
        raise ValueError("columns not packed to NAXIS1, or names repeated")
    return tuple(columns)


#: :func:`_plain_layout`, remembered by layout (issue 11: a kind of catalog has the same columns
#: in every file; a refused layout is not remembered -- its error is raised each time).  (A
#: wrapper, not a decorator: mutmut makes no mutants of a decorated function.)
_plain_columns = functools.lru_cache(maxsize=64)(_plain_layout)


class PlainFits:
    """A FITS file of the plain layouts, read with numpy: the parts of ``fitsio.FITS`` the
    readers use (``len``, iteration, indexing, ``with``), without cfitsio's scan of every HDU's
    description on open (issue 11: ~1 ms of a stack's four catalogs).

    :meth:`open` gives one only for a file whose every HDU it is proven on (test_tableio
    compares both readers on every layout the package uses and on fuzzed headers): headers
    found at their 2880-byte blocks up to the file's exact end, a primary ``SIMPLE = T`` with
    no random groups, image extensions, and binary tables of fixed-width scalar columns
    (``L B I J K E D`` and ``rA``, packed to ``NAXIS1``) with no heap, no ``TSCALn``/``TZEROn``/
    ``TDIMn``/``THEAP``, unique non-blank names.  Anything else (gzip, ASCII tables, vector or
    variable-length columns, a damaged file): None, and the caller uses fitsio, then astropy.
    """

    def __init__(self, path, fh, hdus):
        self.path = path
        self.fh = fh
        self._hdus = hdus

    @classmethod
    def open(cls, path):
        from stk_astrometry.fitscards import parse_header

        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by __exit__ or below
        except OSError:
            return None
        try:
            fits = cls(path, fh, [])
            size = os.fstat(fh.fileno()).st_size
            offset = 0
            while offset < size:
                raw = b""
                while True:
                    block = fh.read(_BLOCK)
                    if len(block) < _BLOCK:
                        raise ValueError("truncated header")
                    raw += block
                    if _has_end(block):
                        break
                header = parse_header(raw.decode("ascii"))
                hdu = cls._hdu(fits, header, offset + len(raw), not fits._hdus)
                fits._hdus.append(hdu)
                offset = hdu._data_start + hdu._padded
                fh.seek(offset)
            if offset != size or not fits._hdus:
                raise ValueError("not whole HDUs")
        except Exception:  # noqa: BLE001 - any doubt about the layout: fitsio reads it
            fh.close()
            return None
        return fits

    @staticmethod
    def _hdu(fits, header, data_start, primary):
        """The HDU of ``header``; ValueError for a layout this reader leaves to fitsio."""
        if isinstance(header, fitscards.Header):
            kw = header.first_values()
        else:
            kw = {}
            for card in header.cards:       # the first card of each name, as header.get
                kw.setdefault(card.keyword.upper(), card.value)
        first = next(iter(kw), None)
        if primary:
            if first != "SIMPLE" or kw["SIMPLE"] is not True or "GROUPS" in kw:
                raise ValueError("not a plain primary HDU")
            exttype = "IMAGE_HDU"
        else:
            kind = kw["XTENSION"] if first == "XTENSION" else None
            exttype = {"IMAGE": "IMAGE_HDU", "BINTABLE": "BINARY_TBL"}.get(kind)
            if exttype is None:
                raise ValueError("not a plain extension")
        bitpix, naxis = _plain_int(kw, "BITPIX"), _plain_int(kw, "NAXIS")
        pcount, gcount = _plain_int(kw, "PCOUNT"), _plain_int(kw, "GCOUNT")
        if primary:      # no random groups (above): PCOUNT and GCOUNT, if there, are 0 and 1
            pcount = pcount if "PCOUNT" in kw else 0
            gcount = gcount if "GCOUNT" in kw else 1
        if bitpix not in _PLAIN_BITPIX or naxis is None or not 0 <= naxis <= 999 \
                or pcount != 0 or gcount != 1:
            raise ValueError("not a plain HDU")
        dims = [_plain_int(kw, f"NAXIS{i}") for i in range(1, naxis + 1)]
        if any(d is None or d < 0 for d in dims):
            raise ValueError("bad NAXISn")
        nbytes = abs(bitpix) // 8 * math.prod(dims) if naxis else 0
        extname = kw.get("EXTNAME", kw.get("HDUNAME", ""))     # as fitsio's get_extname
        if not isinstance(extname, str):
            raise ValueError("EXTNAME not a string")
        extname = extname.strip()        # cfitsio's value has no leading blanks either
        columns, nrows = None, 0
        if exttype == "BINARY_TBL":
            columns, nrows = PlainFits._columns(kw, bitpix, dims)
        return PlainHdu(fits, header, data_start, -(-nbytes // _BLOCK) * _BLOCK, exttype,
                        extname, columns, nrows)

    @staticmethod
    def _columns(kw, bitpix, dims):
        nfields = _plain_int(kw, "TFIELDS")
        if bitpix != 8 or len(dims) != 2 or nfields is None or not 1 <= nfields <= 999:
            raise ValueError("not a plain table")
        if _NOT_PLAIN.search("\n".join(kw)):        # a keyword starting so (one search)
            raise ValueError("scaled, shaped or heap columns")
        get = kw.get
        columns = _plain_columns(tuple([get(key) for key in _TTYPE[:nfields]]),
                                 tuple([get(key) for key in _TFORM[:nfields]]), dims[0])
        return list(columns), dims[1]

    def __len__(self):
        return len(self._hdus)

    def __iter__(self):
        return iter(self._hdus)

    def __getitem__(self, index):
        return self._hdus[index]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def open_fits(path):
    """``path`` open for reading: a :class:`PlainFits` when its layout is plain, else
    ``fitsio.FITS`` (whose errors the callers handle)."""
    plain = PlainFits.open(path) if _PLAIN_READ else None
    if plain is not None:
        return plain
    import fitsio

    return fitsio.FITS(str(path))


def raw_header(path, hdu):
    """The header of a fitsio HDU, from the bytes in the file.

    fitsio's parsed header records drop cards whose value is an empty string (``KEY = ''``)
    and keep only the first card of a CONTINUE long string; the bytes have every card.
    Parsed by :func:`stk_astrometry.fitscards.parse_header` (astropy's values, without
    astropy for the usual cards).
    """
    import gzip

    from stk_astrometry.fitscards import parse_header

    if isinstance(hdu, PlainHdu):
        return hdu.header          # parsed from the same bytes by PlainFits.open
    offsets = hdu.get_offsets()
    start, data_start = offsets["header_start"], offsets["data_start"]
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
        fh.seek(start)
        raw = fh.read(data_start - start)
    return parse_header(raw.decode("ascii", errors="replace"))



def _read_with_fitsio(path, block, plain=None):
    import numpy as np

    with plain if plain is not None else open_fits(path) as fh:
        n_hdus = len(fh)
        info = [(h.get_exttype(), str(h.get_extname() or "").strip()) for h in fh]
        if block is None:
            idx = next((i for i, (t, _) in enumerate(info) if t in ("BINARY_TBL", "ASCII_TBL")),
                       None)
            if idx is None:
                return None
        elif isinstance(block, int):
            idx = block - 1
            if idx >= n_hdus:
                return None
        else:
            want = block.upper()
            idx = next((i for i, (_, name) in enumerate(info) if name.upper() == want), None)
            if idx is None:
                return None      # HDUNAME or an error: astropy's path says which
        if info[idx][0] != "BINARY_TBL":
            return None
        hdu = fh[idx]
        header = raw_header(path, hdu)
        # a plain table (PlainFits) has no scaled, heap or bit columns: of its column keywords
        # only the TNULLn matter (issue 11: the TFORMn were looked up too, ~10-25 us a file)
        wanted = "TNULL" if isinstance(hdu, PlainHdu) else ("TFORM", "TSCAL", "TZERO", "TNULL")
        keys = {k: header[k] for k in header if k.startswith(wanted)}
        if any((k.startswith("TFORM") and _FALLBACK_TFORM.search(str(v)))
               or k.startswith(("TSCAL", "TZERO")) for k, v in keys.items()):
            return None
        names = hdu.get_colnames()
        if len({n.lower() for n in names}) < len(names):
            # cfitsio finds columns by name case-insensitively: names that differ only in
            # case (VizieR's b_Teff_gaia/B_Teff_gaia) are left to astropy
            return None
        plain = isinstance(hdu, PlainHdu) and hdu.get_nrows()
        data = hdu.read() if hdu.get_nrows() and not plain else None
        read = hdu.read_columns() if plain else {}
        columns, nulls = {}, {}
        for i, name in enumerate(names, start=1):
            if plain:
                arr = read[name]
            elif data is not None:
                arr = data[name]
                arr = arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder == ">" else arr
            else:
                dt = hdu.get_rec_dtype()[0][name]
                arr = np.zeros((0,) + dt.shape, dtype=dt.base.newbyteorder("="))
            columns[name] = arr
            if f"TNULL{i}" in keys:
                nulls[name] = keys[f"TNULL{i}"]
        name = info[idx][1] or str(idx + 1)
        label = f"{path}[{name}]"
    return ColumnTable(columns, nulls), header, label


def read_table(spec, *, param):
    """Read a table named CIAO-style.

    Parameters
    ----------
    spec : str
        ``file``, ``file[NAME]`` or ``file[n]``.  FITS files are recognised by
        content; without a block the first table HDU is read.  Other files are
        read by astropy (VOTable, ECSV, CSV, other ASCII tables).
    param : str
        The parameter that named the file, for messages.

    Returns
    -------
    TableInput

    Raises
    ------
    InputError, FormatError, ParameterError
    """
    path_text, block = parse_virtual_filename(spec)
    path = Path(path_text)
    # a plain FITS file is opened once: PlainFits.open takes only a file that starts as FITS
    # (and nothing it cannot open: a name that is not there, a folder; a name with a NUL,
    # which open() refuses with a ValueError, is not there either)
    try:
        plain = PlainFits.open(path) if _FAST_READ and _PLAIN_READ else None
    except ValueError:
        plain = None
    if plain is None:
        # the stat only when the file is not a plain FITS file (issue 11: ~3 us a catalog)
        st = _stat_or_none(path)        # one stat for pathlib's exists() and is_dir()
        if st is None:
            raise InputError(f"{param}={spec}: file {path} does not exist")
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{param}={spec}: {path} is a directory, not a table")
    if plain is not None or is_fits_file(path):
        fast = _read_fits_fast(path, block, spec, param, plain) if _FAST_READ else None
        table, header, label = fast if fast is not None else _read_fits(path, block, spec, param)
    else:
        if block is not None:
            raise InputError(f"{param}={spec}: {path} is not a FITS file, so it has no block [{block}]")
        from astropy.table import Table

        fmt = _ascii_format(path)
        label = str(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                table = (Table.read(path, format=fmt, **_READ_OPTIONS.get(fmt, {})) if fmt
                         else Table.read(path, format="ascii"))
            except Exception as exc:  # noqa: BLE001 - astropy raises many types for unreadable text
                # astropy's message can list every format it tried: keep its first line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if path.stat().st_size == 0:
                    first = "the file is empty"
                raise InputError(
                    f"{param}={spec}: {path} is neither FITS nor a table astropy can read ({first})"
                ) from exc
        for w in caught:
            logger.debug("%s: %s", label, w.message)
        header = {}
        if len(table.colnames) == 0:
            raise FormatError(f"{param}={spec}: {path} holds no columns")
    original, ambiguous = _lowercase_columns(table, label)
    return TableInput(table=table, header=header, path=path, hdu=label, spec=str(spec),
                      original_names=original, ambiguous=ambiguous)


def require_columns(tin, names, *, aliases=None, optional=()):
    """Find columns case-insensitively, trying documented aliases.

    Parameters
    ----------
    tin : TableInput
    names : iterable of str
        Canonical column names, all required unless also in ``optional``.
    aliases : dict, optional
        Canonical name -> list of alternative names, tried in order.
    optional : iterable of str
        Names whose absence is not an error (mapped to None).

    Returns
    -------
    dict
        Canonical name -> column name present in ``tin.table`` (or None).

    Raises
    ------
    CatalogError
        Naming the file, HDU and the missing column.
    """
    aliases = aliases or {}
    optional = set(optional)
    present = set(tin.table.colnames)
    ambiguous = getattr(tin, "ambiguous", None) or {}
    found = {}
    # (issue 11: plain loops, the ambiguous names looked at only when there are some -- the
    # generators cost ~3 us a name, ~45 us a detections table)
    for name in list(names) + [n for n in optional if n not in names]:
        candidates = [name.lower()] + [a.lower() for a in aliases.get(name, ())]
        hit = None
        for c in candidates:
            if c in present:
                hit = c
                break
        clash = None
        if ambiguous:
            clash = next((c for c in candidates if c in ambiguous), None)
        if clash is not None and (hit is None or candidates.index(clash) < candidates.index(hit)):
            raise CatalogError(
                f"{tin.hdu}: column '{name}' is ambiguous: "
                f"{' and '.join(repr(n) for n in ambiguous[clash])} differ only in case; "
                "rename one of them")
        if hit is None and name not in optional:
            also = f" (also tried {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
            raise CatalogError(f"{tin.hdu}: required column '{name}' is missing{also}")
        found[name] = hit
    return found
