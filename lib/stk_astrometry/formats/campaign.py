"""The campaign results table (``campaign.fits`` and its CSV twin), written by ``stk_batch``.

One row per stack of a campaign: its status, the match summary, the fitted shift with its
uncertainty, the QA flags and the files written.  This module owns the column list (name,
type, unit, description -- the ``TUNITn``/``TCOMMn`` cards), the pure conversion of result rows
(mappings) into a numpy record array, and the atomic FITS/CSV writers and the reader.  It runs
no fit and knows nothing of Dask or SQLite.  See ``share/doc/formats.md`` section 5.

FITS: a binary table HDU ``CAMPAIGN`` (``CONTENT = 'STKCAMPAIGN'``), written with fitsio; every
column carries ``TUNITn`` (where it has a unit) and ``TCOMMn`` (its description), the
convention TOPCAT/STILTS display.  Missing numbers are NaN (floats) or -1 (counts); missing
strings are blank.  CSV: the same columns in the same order, a header line of names, NaN
written as an empty field.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError, OutputError
from ..fitsutil import atomic_path, fitsio_on_temp

__all__ = ["CampaignColumn", "CampaignWriter", "columns", "group_columns", "to_records",
           "write_campaign_table", "write_campaign_csv", "read_campaign_table", "CONTENT", "EXTNAME"]

CONTENT = "STKCAMPAIGN"
EXTNAME = "CAMPAIGN"


@dataclass(frozen=True)
class CampaignColumn:
    """One column of the campaign table.

    Attributes
    ----------
    name : str
    kind : str
        ``'str'``, ``'int'``, ``'float'`` or ``'bool'``.
    unit : str
        FITS unit string (blank: dimensionless).
    description : str
        The ``TCOMMn`` text.
    width : int
        Character width of a string column.
    """

    name: str
    kind: str
    unit: str
    description: str
    width: int = 0


def _c(name, kind, unit, description, width=0):
    return CampaignColumn(name, kind, unit, description, width)


#: The columns before the per-group match counts.
_HEAD = (
    _c("stackid", "str", "", "Stack id (detect_stack_id)", 40),
    _c("status", "str", "", "done or failed", 8),
    _c("failed_step", "str", "", "Step that failed (match, fit, update); blank if done", 8),
    _c("error", "str", "", "First line of the error of a failed stack", 200),
    _c("instrument", "str", "", "ACIS or HRC", 8),
    _c("method", "str", "", "Reference path: direct, twostep or none", 8),
    _c("ra_stack", "float", "deg", "Tangent point right ascension"),
    _c("dec_stack", "float", "deg", "Tangent point declination"),
    _c("n_det", "int", "", "Detections that passed the filters"),
    _c("n_gaia", "int", "", "Gaia sources that passed the filters"),
    _c("n_wise", "int", "", "ALLWISE sources that passed the filters (-1: no ALLWISE)"),
    _c("density_gaia", "float", "arcmin-2", "Gaia sources per square arcmin in the cone"),
    _c("density_wise", "float", "arcmin-2", "ALLWISE sources per square arcmin (NaN: none given)"),
    _c("n_match_gaia", "int", "", "Detections with at least one Gaia match"),
    _c("n_match_wise", "int", "", "Detections with at least one ALLWISE match"),
)

#: The columns after them.
_TAIL = (
    _c("estimator", "str", "", "Estimator applied: spec or mixture", 8),
    _c("d_xi", "float", "arcsec", "Fitted shift in xi (added to detections)"),
    _c("d_eta", "float", "arcsec", "Fitted shift in eta (added to detections)"),
    _c("d_xi_err", "float", "arcsec", "1-sigma uncertainty of d_xi"),
    _c("d_eta_err", "float", "arcsec", "1-sigma uncertainty of d_eta"),
    _c("cov_xi_eta", "float", "arcsec2", "Covariance of d_xi and d_eta"),
    _c("shift", "float", "arcsec", "Total shift sqrt(d_xi^2 + d_eta^2)"),
    _c("n_match", "int", "", "Matched detections in the selected group"),
    _c("n_used", "int", "", "Pairs used by the applied fit"),
    _c("group", "int", "", "Separation group selected (1-based; 0: none)"),
    _c("resstd0", "float", "arcsec", "Residual std before the shift"),
    _c("resstd1", "float", "arcsec", "Residual std after the shift"),
    _c("qa_flags", "int", "", "QA bits: 1 NOMATCH 2 DENSE 4 BIGSHIFT 8 FEWMATCH 16 DISAGREE"),
    _c("qa_reason", "str", "", "Readable QA reason (blank: no QA needed)", 120),
    _c("needs_qa", "bool", "", "True when any QA bit is set"),
    _c("disagree", "bool", "", "True when the two estimators differ by > 3 combined sigma"),
    _c("alt_estimator", "str", "", "The estimator not applied", 8),
    _c("alt_d_xi", "float", "arcsec", "Shift in xi of the estimator not applied"),
    _c("alt_d_eta", "float", "arcsec", "Shift in eta of the estimator not applied"),
    _c("n_eff", "float", "", "Effective number of true pairs (mixture; NaN otherwise)"),
    _c("xfm_id", "str", "", "Transform id STKXFMID", 40),
    _c("n_updated", "int", "", "Products updated (-1: update not run)"),
    _c("n_update_errors", "int", "", "Products the update could not process (-1: not run)"),
    _c("n_warnings", "int", "", "Warnings recorded for the stack (see the run database)"),
    _c("attempts", "int", "", "Times the stack was started in this campaign folder"),
    _c("t_match", "float", "s", "Wall time of the match step"),
    _c("t_fit", "float", "s", "Wall time of the fit step"),
    _c("t_update", "float", "s", "Wall time of the update step (NaN: not run)"),
    _c("pairsfile", "str", "", "Matched-pairs file written", 240),
    _c("xfmfile", "str", "", "Transform file written", 240),
    _c("detcorrfile", "str", "", "Corrected detections written (blank: none)", 240),
)

#: Columns whose values differ between two runs of the same campaign (timings, attempts).
RUN_DEPENDENT = ("attempts", "t_match", "t_fit", "t_update")


def group_columns(n_groups: int) -> tuple[CampaignColumn, ...]:
    """The per-separation-group match counts ``n_match_gaia_g1`` .. ``n_match_wise_gK``."""
    out = []
    for ref in ("gaia", "wise"):
        name = "Gaia" if ref == "gaia" else "ALLWISE"
        for k in range(1, n_groups + 1):
            out.append(_c(f"n_match_{ref}_g{k}", "int", "",
                          f"Detections with a {name} match in separation group {k}"))
    return tuple(out)


def columns(n_groups: int) -> tuple[CampaignColumn, ...]:
    """Every column of a table whose stacks have ``n_groups`` separation groups."""
    return _HEAD + group_columns(n_groups) + _TAIL


def _dtype(cols):
    kinds = {"int": "i8", "float": "f8", "bool": "?"}
    return np.dtype([(c.name, f"U{c.width}" if c.kind == "str" else kinds[c.kind]) for c in cols])


def _clean_column(col, values: list) -> list:
    """One column's values for the table: None -> the column's missing value (NaN, -1,
    False, blank); numbers by ``float``/``int``/``bool``; text on one line (runs of white
    space, newlines included, -> one space) and cut to the column's width.  One comprehension
    per kind: a campaign table converts ~50 columns x 10,000 rows (issue 12)."""
    if col.kind == "float":
        return [math.nan if v is None else float(v) for v in values]
    if col.kind == "int":
        return [-1 if v is None else int(v) for v in values]
    if col.kind == "bool":
        return [False if v is None else bool(v) for v in values]
    width = col.width
    return ["" if v is None else " ".join(str(v).split())[:width] for v in values]


def to_records(rows: Iterable[Mapping], n_groups: int) -> np.ndarray:
    """A structured array with the table's columns from result mappings (pure).

    Keys a row lacks take the missing value (NaN, -1, blank, False); keys that are not
    columns are ignored.  Filled column by column (:func:`_clean_column`).
    """
    cols = columns(n_groups)
    rows = list(rows)
    out = np.zeros(len(rows), dtype=_dtype(cols))
    for c in cols:
        name = c.name
        out[name] = _clean_column(c, [row.get(name) for row in rows])
    return out


def _fits_array(records: np.ndarray) -> np.ndarray:
    """Unicode -> bytes for fitsio (ASCII; other characters replaced)."""
    fields = []
    for name in records.dtype.names:
        dt = records.dtype[name]
        if dt.kind == "U":
            fields.append((name, f"S{max(dt.itemsize // 4, 1)}"))
        else:
            fields.append((name, dt))
    out = np.zeros(len(records), dtype=fields)
    for name in records.dtype.names:
        if records.dtype[name].kind == "U":
            out[name] = np.char.encode(records[name], "ascii", "replace")
        else:
            out[name] = records[name]
    return out


def n_groups_of(records: np.ndarray) -> int:
    """The number of separation groups a table's columns have."""
    return sum(1 for n in records.dtype.names if n.startswith("n_match_gaia_g"))


def _csv_rows(records: np.ndarray):
    """The CSV rows of ``records``: NaN as an empty field, booleans as true/false.  Made
    column by column (floats by ``repr``, the shortest text that reads back the same)."""
    cols = []
    for name in records.dtype.names:
        kind = records.dtype[name].kind
        values = records[name].tolist()
        if kind == "f":
            cols.append(["" if v != v else repr(v) for v in values])
        elif kind == "b":
            cols.append(["true" if v else "false" for v in values])
        else:
            cols.append(values)
    return zip(*cols, strict=True)


def format_csv(records: np.ndarray) -> str:
    """The CSV text of ``records``: a header line of names, NaN as an empty field (pure)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(records.dtype.names)
    writer.writerows(_csv_rows(records))
    return buf.getvalue()


class CampaignWriter:
    """Write ``campaign.fits`` and its CSV twin chunk by chunk; both appear only at the end.

    A campaign of any size is written holding one chunk of rows in memory: each
    :meth:`append` adds record-array rows (:func:`to_records`) to both files, which are
    temporary files beside their destinations until :meth:`close` writes the header
    keywords and checksums, fsyncs both and renames them into place.  An exception inside
    the ``with`` block (or :meth:`abort`) removes both temporary files; the old table and
    CSV, if any, stay as they were.

    Parameters
    ----------
    table_path : path-like
    csv_path : path-like or None
        None: no CSV.
    n_groups : int
        Separation groups (the ``n_match_*_gK`` columns); every appended chunk must have
        the columns of :func:`columns` ``(n_groups)``.

    Examples
    --------
    >>> with CampaignWriter("campaign.fits", "campaign.csv", 3) as w:   # doctest: +SKIP
    ...     for chunk in chunks:
    ...         w.append(to_records(chunk, 3))
    ...     w.close(header={"NSTACKS": n})
    """

    def __init__(self, table_path, csv_path, n_groups: int):
        self.table_path = Path(table_path)
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.cols = columns(n_groups)
        self.n_rows = 0
        self._stack = None
        self._fits = self._csv = self._writer = None
        self._closed = False

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        with self._guard():
            tmp_table = self._stack.enter_context(atomic_path(self.table_path))
            self._fits = fitsio_on_temp(tmp_table, [{"name": "CONTENT", "value": CONTENT,
                                                     "comment": "stk_astrometry campaign results"}])
            if self.csv_path is not None:
                tmp_csv = self._stack.enter_context(atomic_path(self.csv_path))
                self._csv = open(tmp_csv, "w", encoding="utf-8", newline="")
                self._writer = csv.writer(self._csv, lineterminator="\n")
                self._writer.writerow([c.name for c in self.cols])
        return self

    @contextlib.contextmanager
    def _guard(self):
        """Any failure inside: remove both temporary files; an OSError becomes OutputError."""
        try:
            yield
        except OSError as exc:
            self._fail()
            raise OutputError(f"cannot write the campaign table {self.table_path}: {exc}") from exc
        except BaseException:
            self._fail()
            raise

    def append(self, records: np.ndarray) -> None:
        """Add rows (a record array with the table's columns) to both files."""
        if tuple(c.name for c in self.cols) != records.dtype.names:
            raise FormatError("campaign table: the records do not have the campaign columns")
        with self._guard():
            data = _fits_array(records)
            if EXTNAME not in self._fits:
                self._fits.write_table(data, extname=EXTNAME, units=[c.unit for c in self.cols])
            else:
                self._fits[EXTNAME].append(data)
            if self._writer is not None:
                self._writer.writerows(_csv_rows(records))
        self.n_rows += len(records)

    def close(self, header: Mapping | None = None) -> tuple[Path, Path | None]:
        """Finish both files (header keywords, checksums, fsync) and rename them into place.

        ``header``: extra keywords for the table HDU (name -> value or (value, comment)).
        Returns the table's and the CSV's paths.
        """
        if self._closed:
            return self.table_path, self.csv_path
        with self._guard():
            if EXTNAME not in self._fits:    # no row at all: the table with its columns
                self._fits.write_table(_fits_array(np.zeros(0, dtype=_dtype(self.cols))),
                                       extname=EXTNAME, units=[c.unit for c in self.cols])
            hdu = self._fits[EXTNAME]
            hdu.write_key("CONTENT", CONTENT, comment="stk_astrometry campaign results")
            for i, c in enumerate(self.cols, start=1):
                hdu.write_key(f"TCOMM{i}", c.description[:68])
            for name, value in (header or {}).items():
                val, comment = value if isinstance(value, tuple) else (value, "")
                hdu.write_key(name, val, comment=comment)
            self._fits[0].write_checksum()
            hdu.write_checksum()
            self._fits.close()
            self._fits = None
            if self._csv is not None:
                self._csv.flush()
                os.fsync(self._csv.fileno())
                self._csv.close()
                self._csv = None
            self._closed = True
            self._stack.close()    # fsync and rename both (atomic_path)
        return self.table_path, self.csv_path

    def abort(self) -> None:
        """Remove both temporary files; the destinations stay as they were."""
        self._fail()

    def _fail(self):
        self._closed = True
        for fh in (self._fits, self._csv):
            if fh is not None:
                with contextlib.suppress(Exception):
                    fh.close()
        self._fits = self._csv = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            # unwind the atomic_path contexts as if their block raised: temporaries removed
            with contextlib.suppress(_Abort):
                stack.__exit__(_Abort, _Abort(), None)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._fail()
            return False
        self.close()
        return False


class _Abort(Exception):
    """Raised into the temporary files' contexts to remove them."""


def write_campaign_table(records: np.ndarray, path, *, header: Mapping | None = None) -> Path:
    """Write ``records`` (from :func:`to_records`) as ``campaign.fits``, atomically.

    Parameters
    ----------
    records : numpy structured array
    path : path-like
    header : mapping, optional
        Extra keywords for the table HDU (name -> value or (value, comment)).

    Returns
    -------
    Path

    See Also
    --------
    CampaignWriter : the table and its CSV twin written chunk by chunk.
    """
    path = Path(path)
    with CampaignWriter(path, None, n_groups_of(records)) as w:
        w.append(records)
        w.close(header=header)
    return path


def write_campaign_csv(records: np.ndarray, path) -> Path:
    """Write the CSV twin of the campaign table, atomically."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(format_csv(records))
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputError(f"cannot write the campaign table {path}: {exc}") from exc
    return path


def read_campaign_table(path) -> np.ndarray:
    """Read ``campaign.fits`` back as a structured array with unicode strings."""
    import fitsio

    path = Path(path)
    try:
        with fitsio.FITS(str(path)) as fits:
            if EXTNAME not in fits:
                raise FormatError(f"{path}: no {EXTNAME} HDU (not a stk_batch campaign table)")
            data = fits[EXTNAME].read()
    except OSError as exc:
        raise FormatError(f"cannot read the campaign table {path}: {exc}") from exc
    fields = []
    for name in data.dtype.names:
        dt = data.dtype[name]
        fields.append((name, f"U{dt.itemsize}" if dt.kind == "S" else dt.newbyteorder("=")))
    out = np.zeros(len(data), dtype=fields)
    for name in data.dtype.names:
        if data.dtype[name].kind == "S":
            out[name] = np.char.rstrip(np.char.decode(data[name], "ascii"))
        else:
            out[name] = data[name]
    return out
