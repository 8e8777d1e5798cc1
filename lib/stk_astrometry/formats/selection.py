"""The QA selection file: the operator's editable choice of pairs (formats.md §2d).

stk_qa writes it, the operator edits its ``use`` column, and ``stk_xfm include=@file``
(or ``stk_qa decision=refit selection=file``) re-fits with the detections marked ``yes``
(spec §5.7.1: "select the matches that he/she considers most reliable and the WLS approach
should be repeated with the selected matches").  Plain text, one line per pair of the fit's
detection leg::

    # stk_qa selection file
    # STACKID = acisfJ1236480p621200_001
    # LEG = GAIA_PAIRS
    # STKXFMID = 3f2c0d6a9b1e4c57
    # region_id  ref_id  sep  group  status  p_true  use
    12  1234567890123456789  0.412  1  used  0.981  yes

``#`` starts a comment; blank lines are ignored; columns are separated by blanks.  ``sep``
is the separation in arcsec, ``group`` the separation group, ``status`` the pair's role in
the fit it was written from (``used``, ``unused``, ``excluded``), ``p_true`` the mixture's
membership probability (``nan``: not computed); only ``use`` (``yes``/``no``) is read back
as a choice.  stk_xfm selects detections (``region_id``), not pairs: a detection is
included when one of its pairs says ``yes`` (and then all its pairs in the leg enter the
fit); :func:`selected_ids` reports a detection whose pairs disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stk_astrometry.errors import InputError

__all__ = ["MARKER", "SelectionRow", "Selection", "format_selection", "parse_selection",
           "is_selection_text", "selected_ids", "read_selection", "write_selection"]

MARKER = "# stk_qa selection file"
COLUMNS = ("region_id", "ref_id", "sep", "group", "status", "p_true", "use")
_YES = {"yes": True, "y": True, "true": True, "1": True,
        "no": False, "n": False, "false": False, "0": False}


@dataclass(frozen=True)
class SelectionRow:
    """One pair of a selection file."""

    region_id: int
    ref_id: int
    sep: float
    group: int
    status: str
    p_true: float
    use: bool


@dataclass(frozen=True)
class Selection:
    """A selection file: its header values and rows."""

    stackid: str = ""
    leg: str = ""
    xfm_id: str = ""
    rows: tuple = field(default=())


def format_selection(sel: Selection) -> str:
    """The text of a selection file.  Pure."""
    lines = [MARKER,
             "# Edit the 'use' column (yes/no), then re-fit with the pairs marked yes:",
             "#   stk_xfm pairs.fits xfm_qa.fits include=@this_file",
             "#   stk_qa ... decision=refit selection=this_file",
             f"# STACKID = {sel.stackid}", f"# LEG = {sel.leg}", f"# STKXFMID = {sel.xfm_id}",
             "# " + "  ".join(COLUMNS)]
    for r in sel.rows:
        p = "nan" if not np.isfinite(r.p_true) else f"{r.p_true:.3f}"
        lines.append(f"{r.region_id:>9d}  {r.ref_id:>20d}  {r.sep:7.3f}  {r.group:3d}  "
                     f"{r.status:<8s}  {p:>5s}  {'yes' if r.use else 'no'}")
    return "\n".join(lines) + "\n"


def is_selection_text(text: str) -> bool:
    """True when ``text`` is a selection file (its first line is :data:`MARKER`)."""
    return text.lstrip().startswith(MARKER)


def parse_selection(text: str, *, source="<string>") -> Selection:
    """Read the text of a selection file.  Pure.

    Raises
    ------
    InputError
        A line that does not have the seven columns, or a value that does not parse, naming
        the file, line and value.
    """
    head = {}
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if "=" in body and body.split("=", 1)[0].strip() in ("STACKID", "LEG", "STKXFMID"):
                key, value = body.split("=", 1)
                head[key.strip()] = value.strip()
            continue
        body = stripped.split("#", 1)[0].strip()
        if not body:
            continue
        tokens = body.split()
        if len(tokens) != len(COLUMNS):
            raise InputError(f"{source}, line {lineno}: {len(tokens)} column(s), expected "
                             f"{len(COLUMNS)} ({' '.join(COLUMNS)})")
        try:
            rid, ref, sep, group = int(tokens[0]), int(tokens[1]), float(tokens[2]), \
                int(tokens[3])
            p_true = float(tokens[5])
        except ValueError:
            raise InputError(f"{source}, line {lineno}: {body!r}: region_id, ref_id and group "
                             "must be integers, sep and p_true numbers") from None
        use = _YES.get(tokens[6].lower())
        if use is None:
            raise InputError(f"{source}, line {lineno}: use = {tokens[6]!r}; write yes or no")
        rows.append(SelectionRow(rid, ref, sep, group, tokens[4], p_true, use))
    return Selection(head.get("STACKID", ""), head.get("LEG", ""), head.get("STKXFMID", ""),
                     tuple(rows))


def selected_ids(sel: Selection, *, which="include"):
    """Detection ids a selection gives stk_xfm, and notes on detections it cannot honour.

    ``which='include'``: the detections with a pair marked ``yes``; ``'exclude'``: those
    whose pairs are all marked ``no``.

    Returns
    -------
    ids : ndarray of int64 (sorted, unique)
    notes : list of str
    """
    by_det = {}
    for r in sel.rows:
        by_det.setdefault(r.region_id, []).append(r.use)
    mixed = sorted(d for d, uses in by_det.items() if any(uses) and not all(uses))
    if which == "include":
        ids = [d for d, uses in by_det.items() if any(uses)]
    elif which == "exclude":
        ids = [d for d, uses in by_det.items() if not any(uses)]
    else:
        raise ValueError(f"which={which!r}")
    notes = []
    if mixed:
        notes.append(f"selection: {len(mixed)} detection(s) have pairs marked both yes and no "
                     f"({', '.join(str(d) for d in mixed[:10])}); stk_xfm selects detections, "
                     "so all their pairs are " + ("used" if which == "include" else "kept"))
    return np.unique(np.asarray(ids, dtype=np.int64)), notes


def read_selection(path, *, param="selection") -> Selection:
    """Read a selection file (see :func:`parse_selection`)."""
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{param}={path}: cannot read the selection file: {exc}") from exc
    if not is_selection_text(text):
        raise InputError(f"{param}={path}: not a stk_qa selection file (first line is not "
                         f"{MARKER!r})")
    return parse_selection(text, source=f"{param}={path}")


def write_selection(path, sel: Selection) -> None:
    """Write a selection file atomically."""
    from stk_astrometry.fitsutil import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(format_selection(sel), encoding="utf-8")
