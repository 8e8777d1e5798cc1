"""Applying an stk_xfm transform to a stack's data products: the run behind ``stk_update_wcs``.

:func:`update_files` is the whole run (inputs expanded, each product planned, locked and
rewritten atomically, reversibly and idempotently) for :func:`stk_astrometry.api.update_products`
and its front end ``stk_update_wcs``; the per-HDU WCS arithmetic is
:mod:`stk_astrometry.wcsupdate`, the product table :mod:`stk_astrometry.products`.

The tool rewrites the EQPOS/EQSRC world coordinate systems, the RA/Dec position
keywords and the RA/Dec table columns of every product of specification
§5.6 (per-observation, source region, stack, stack source and master
products), recognised by content and CSC file name.  Sky pixel (X, Y)
positions never change; only their mapping to (RA, Dec) does.  Updates are
atomic, idempotent (a transform is recorded in every HDU it changed and is
not applied twice) and reversible (inverse=yes).  Header-only changes are
written in place under a journal, without reading or rewriting data units.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stk_astrometry import fitsedit, products, wcsupdate
from stk_astrometry.fitsutil import (
    add_history,
    locked,
    read_stacks,
    remove_orphan_temps,
    temp_owner,
)
from stk_astrometry.formats.transform import TransformInput, read_transform
from stk_astrometry.errors import (
    InputError,
    OutputError,
    ParameterError,
    ProductError,
    StkError,
)

#: The tool the HISTORY records of an updated HDU name (this run's parameters are its own).
TOOL = "stk_update_wcs"
#: Blank header blocks added when a header must grow (room for ~7 more runs' HISTORY).
SPARE_BLOCKS = 3
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class InputFile:
    """One file to process: its path and its path relative to the output directory.

    ``root`` is the directory input it was found under (None for a named file);
    ``error`` a problem found while listing it (an unreadable file or folder),
    reported as that file's failure.
    """

    path: Path
    rel: Path
    root: Path | None = None
    error: str = ""


def _read_list(spec: str) -> list[str]:
    no_prefix = spec.startswith("@-")
    lpath = Path(spec[2:] if no_prefix else spec[1:])
    try:
        lines = lpath.read_text().splitlines()
    except OSError as exc:
        raise ParameterError(f"infile={spec}: cannot read list file {lpath}: "
                             f"{exc.strerror}") from exc
    items = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("!"):
            items.append(text[1:])
        elif no_prefix or Path(text).is_absolute():
            items.append(text)
        else:
            # CIAO stacks: relative entries are relative to the list file's folder
            items.append(str(lpath.parent / text))
    return items


def _inside(real: Path, roots) -> bool:
    return any(real == r or r in real.parents for r in roots)


def _walk(top: Path, files, notes, seen, roots=(), walked=None) -> int:
    """Add the FITS/JPEG files below ``top`` to ``files``; return the count of other files.

    The real folders and files of the tree are walked first; then the symbolic
    links to folders outside every directory input (``roots``, resolved) are
    followed (each real folder walked once: a second link to a folder is noted
    and not walked again).  A symbolic link whose target lies inside a
    directory input (a link loop, a second name of a folder or product of the
    tree) is noted and dropped: the file or folder is processed by its real
    path, which is the one copy mode reproduces in outdir.  A link to a file
    outside the inputs is processed (the real file is read).  An unreadable
    folder or file, or a dangling symbolic link, becomes an input carrying its
    error.  ``walked`` collects the real folders walked (for the outdir check).
    """
    n_other = 0
    visited = set()
    roots = tuple(roots) or (top.resolve(),)
    walked = [] if walked is None else walked
    pending = []            # links to folders outside the inputs, walked after the real tree

    def error(where, text):
        rel = where.relative_to(top) if where.is_relative_to(top) else Path(where.name)
        files.append(InputFile(where, rel, top, text))

    def add_file(f: Path):
        nonlocal n_other
        if f.name.endswith(fitsedit.JOURNAL_SUFFIX) or temp_owner(f.name) is not None:
            return
        if not f.is_file():
            n_other += 1
            return
        try:
            keep = (fitsedit.is_fits_file(f) or fitsedit.is_jpeg_file(f)
                    or fitsedit.is_gzip_fits(f))
        except StkError as exc:
            error(f, str(exc))
            return
        if not keep:
            n_other += 1
            return
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            files.append(InputFile(f, f.relative_to(top), top))

    def walk_from(start: Path):
        stack = [start]
        while stack:
            d = stack.pop()
            try:
                st = os.stat(d)
            except OSError as exc:
                error(d, f"{d}: cannot read this folder ({exc.strerror}); its products were "
                         "not processed")
                continue
            if (st.st_dev, st.st_ino) in visited:
                notes.append(f"{d}: a folder already walked (a second link to it); not "
                             "walked again")
                continue
            visited.add((st.st_dev, st.st_ino))
            walked.append(Path(os.path.realpath(d)))
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                error(d, f"{d}: cannot read this folder ({exc.strerror}); its products were "
                         "not processed")
                continue
            subdirs = []
            for e in entries:
                p = Path(d) / e.name
                if e.is_symlink():
                    target = Path(os.path.realpath(p))
                    if not target.exists():
                        error(p, f"{p}: broken symbolic link (to {os.readlink(p)}, which does "
                                 "not exist): not processed; restore the target or remove "
                                 "the link")
                    elif _inside(target, roots):
                        notes.append(f"{p}: symbolic link to {target}, inside the input "
                                     "tree: processed by its real path only")
                    elif target.is_dir():
                        pending.append(p)
                    else:
                        add_file(p)
                    continue
                try:
                    is_dir = e.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    subdirs.append(p)
                else:
                    add_file(p)
            stack.extend(reversed(subdirs))

    walk_from(top)
    while pending:
        walk_from(pending.pop(0))
    return n_other


def expand_inputs(spec: str, walked=None) -> tuple[list[InputFile], list[str]]:
    """Expand ``infile``: a file, a comma list, ``@list`` (``@-list``), or directories.

    Directories are searched recursively; a file found there is kept when it
    is FITS or JPEG by content (real products are named .pi, .arf, .img ...).

    Returns
    -------
    files : list of InputFile
    notes : list of str
        What was left out, and why.

    ``walked``, if a list, receives the real folders walked (symbolic links
    followed included).
    """
    walked = [] if walked is None else walked
    text = (spec or "").strip()
    if not text:
        raise ParameterError("infile is blank: give a file, a comma list, @list or a directory")
    raw = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        raw.extend(_read_list(part) if part.startswith("@") else [part])
    files = []
    notes = []
    seen = set()
    n_other = 0
    roots = [Path(item).resolve() for item in raw if Path(item).is_dir()]
    for item in raw:
        p = Path(item)
        if p.is_dir():
            n_other += _walk(p, files, notes, seen, roots, walked)
        else:
            key = p.resolve()
            if key in seen:
                notes.append(f"{p}: listed twice; processed once")
                continue
            seen.add(key)
            files.append(InputFile(p, Path(p.name)))
    if n_other:
        notes.append(f"{n_other} file(s) under the input directories are neither FITS nor "
                     "JPEG: not products, left alone")
    return files, notes


# --------------------------------------------------------------------------- transform

# The transform file is read by stk_astrometry.formats.transform (formats.md §2).


def check_qa_review(transform: TransformInput, *, override: bool) -> str | None:
    """Refuse a transform that needs a human review and has not had one (spec §5.7).

    A transform with QA flags set must carry the operator's decision ``accept`` or ``refit``
    (keyword QADECIS, written by stk_qa); a ``reject`` decision is refused whatever its flags.
    Returns the warning to log when ``override`` lets it through, None when there is nothing
    to say.

    Raises
    ------
    InputError
        Not reviewed, or rejected, and ``override`` is false.
    """
    decision = transform.qa_decision
    if decision == "reject":
        problem = "was rejected in QA review (QADECIS = 'reject')"
    elif transform.qa_flags and decision not in ("accept", "refit"):
        problem = (f"has QA flags {transform.qa_flags} and no QA decision (QADECIS "
                   f"{decision or 'not set'}); review it with stk_qa (spec 5.7)")
    else:
        return None
    if not override:
        raise InputError(f"transformfile={transform.path}: the transform {problem}; "
                         "qa_override=yes applies it anyway")
    return f"qa_override=yes: applying a transform that {problem}"


# --------------------------------------------------------------------------- planning

@dataclass
class HduPlan:
    """What happens to one HDU of a file."""

    layout: fitsedit.HduLayout
    label: str
    header: object = None             # new astropy Header, or None if unchanged
    data: bytes | None = None         # new data unit bytes (same size), or None
    remove: bool = False              # drop this HDU (inverse of an inserted STKXFM)
    insert_after: bytes | None = None  # a whole HDU to insert after this one


@dataclass
class FileResult:
    """The outcome for one file, for the report."""

    path: Path
    ptype: str = "?"
    reason: str = ""
    action: str = ""
    changes: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    failed: bool = False
    category: str = ""


@dataclass(frozen=True)
class RunContext:
    """Everything a file's processing needs from the parameters."""

    transform: TransformInput
    outdir: Path | None
    unknown: str
    dryrun: bool
    inverse: bool
    force: bool
    scrub: bool
    clobber: bool
    history: tuple
    stacks: dict  # elements of @listfile parameters, read once per run (STCK records)
    replace: bool = False
    product: str = ""          # a type named by the user ('' recognise each file)
    lock_timeout: float = 60.0


def _hdu_name(layout) -> str:
    h = layout.header
    name = h.get("EXTNAME", h.get("HDUNAME", "PRIMARY" if layout.index == 0 else ""))
    return str(name).strip().upper()


def _column_names(header):
    n = int(header.get("TFIELDS", 0) or 0)
    return {str(header.get(f"TTYPE{i}", "")).strip().lower(): i for i in range(1, n + 1)}


_FLOAT_FORMS = re.compile(r"^\s*\d*[DE]\s*$", re.IGNORECASE)
_DEG_UNITS = ("", "deg", "degree", "degrees", "d")


def _column_pairs(header, ptype, hdu_name, *, generic: bool, notes, label):
    cols = _column_names(header)
    pairs = []
    for rule in ptype.columns:
        if not re.fullmatch(rule.hdu, hdu_name, flags=re.IGNORECASE):
            continue
        for name, n in cols.items():
            m = re.fullmatch(rule.ra, name, flags=re.IGNORECASE)
            if not m:
                continue
            dec = m.expand(rule.dec).lower()
            if dec not in cols:
                continue
            if wcsupdate.NOT_POSITION.search(name.replace("ra", "", 1)):
                continue
            nd = cols[dec]
            forms = (header.get(f"TFORM{n}", ""), header.get(f"TFORM{nd}", ""))
            if not all(_FLOAT_FORMS.match(str(f)) for f in forms):
                notes.append(wcsupdate.Note(label, f"columns {name},{dec}: format {forms} is "
                                                   "not floating point; left"))
                continue
            if any(k in header for k in (f"TSCAL{n}", f"TZERO{n}", f"TSCAL{nd}", f"TZERO{nd}")):
                notes.append(wcsupdate.Note(label, f"columns {name},{dec} are scaled "
                                                   "(TSCAL/TZERO); left"))
                continue
            units = (str(header.get(f"TUNIT{n}", "")).strip().lower(),
                     str(header.get(f"TUNIT{nd}", "")).strip().lower())
            if not all(u in _DEG_UNITS for u in units):
                notes.append(wcsupdate.Note(label, f"columns {name},{dec} have units {units}, "
                                                   "not degrees; left"))
                continue
            if (name, dec) not in pairs:
                pairs.append((name, dec))
    return pairs


_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])", re.IGNORECASE)
_TFORM_TYPES = {"L": ("V", 1), "B": ("u1", 1), "I": (">i2", 2), "J": (">i4", 4),
                "K": (">i8", 8), "A": ("V", 1), "E": (">f4", 4), "D": (">f8", 8),
                "C": ("V", 8), "M": ("V", 16), "P": ("V", 8), "Q": ("V", 16)}


def _table_dtype(header):
    """The numpy record dtype of a binary table's rows, from its TFORMn (no file opened).

    Numbers get their big-endian types (a repeat count > 1 a sub-array); strings,
    logicals, bits, complex and heap descriptors are opaque bytes (never edited).
    """
    from stk_astrometry.errors import FormatError

    names, formats, offsets = [], [], []
    offset = 0
    for n in range(1, int(header.get("TFIELDS", 0) or 0) + 1):
        tform = str(header.get(f"TFORM{n}", ""))
        m = _TFORM.match(tform)
        if not m:
            raise FormatError(f"TFORM{n} = {tform!r} is not a binary table format")
        repeat = int(m.group(1)) if m.group(1) else 1
        code = m.group(2).upper()
        if code == "X":
            fmt, size = f"V{-(-repeat // 8)}", -(-repeat // 8)
        else:
            base, width = _TFORM_TYPES[code]
            if base == "V":
                fmt, size = f"V{width * repeat}", width * repeat
            else:
                fmt = base if repeat == 1 else (base, (repeat,))
                size = width * repeat
        if size:
            names.append(str(header.get(f"TTYPE{n}", f"col{n}")).strip() or f"col{n}")
            formats.append(fmt)
            offsets.append(offset)
        offset += size
    if offset != int(header["NAXIS1"]):
        raise FormatError(f"TFORMn add up to {offset} bytes per row, NAXIS1 says "
                          f"{header['NAXIS1']}")
    try:
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": offset})
    except ValueError as exc:          # e.g. two columns of one name
        raise FormatError(f"unusable table columns: {exc}") from exc


def _move_columns(path, layout, pairs, steps, *, label, quats=(), notes=None):
    """Move RA/Dec column pairs of one table HDU by ``steps``; new data bytes or None.

    ``steps`` is a sequence of (Transform, inverse) applied in turn (one step, or
    for replace=yes the undo of the applied transform then the new one).
    ``quats`` (one per pair, '' for none): an attitude quaternion column rotated
    with its pair (ASPSOL3 ``q_att``), see :func:`wcsupdate.rotate_attitude`.
    """
    header = layout.header
    nrow_bytes = int(header["NAXIS1"]) * int(header["NAXIS2"])
    fd = os.open(path, os.O_RDONLY)
    try:
        raw = os.pread(fd, layout.data_size, layout.data_offset)
    finally:
        os.close(fd)
    dtype = _table_dtype(header)
    arr = np.frombuffer(raw[:nrow_bytes], dtype=dtype).copy()
    fields = {n.lower(): n for n in arr.dtype.names}
    changes = []
    quats = tuple(quats) or ("",) * len(pairs)
    for (ra, dec), quat in zip(pairs, quats, strict=True):
        ra0, dec0 = arr[fields[ra]].copy(), arr[fields[dec]].copy()
        moved_any = False
        for xfm, inverse in steps:
            res = wcsupdate.shift_columns(arr[fields[ra]], arr[fields[dec]], xfm,
                                          inverse=inverse)
            if res.n_moved == 0:
                continue
            moved_any = True
            arr[fields[ra]] = res.ra_deg
            arr[fields[dec]] = res.dec_deg
            changes.append(wcsupdate.Change(
                label, f"columns {fields[ra]},{fields[dec]}", f"{res.ra_deg.size} values",
                f"{res.n_moved} moved, {res.n_null} null and {res.n_sentinel} sentinel left"
                + (f", {res.n_unprojectable} {wcsupdate.PROJECTION_LIMIT_DEG:g} deg or more "
                   "from the stack tangent point left (the tangent projection fails there)"
                   if res.n_unprojectable else "")
                + (f"; {res.n_far} of the moved are more than "
                   f"{wcsupdate.MAX_DISTANCE_DEG:g} deg from the stack tangent point (hardly "
                   "of this stack)" if res.n_far else ""),
                "columns"))
        if moved_any and quat:
            qname = fields.get(quat.lower())
            col = arr[qname] if qname else None
            if col is None or col.ndim != 2 or col.shape[1] != 4:
                if notes is not None:
                    notes.append(wcsupdate.Note(label, f"no 4-element {quat} column: "
                                                       "attitude quaternions not rotated"))
                continue
            new_q, n_rot = wcsupdate.rotate_attitude(col, ra0, dec0, arr[fields[ra]],
                                                     arr[fields[dec]])
            arr[qname] = new_q
            changes.append(wcsupdate.Change(
                label, f"column {qname}", f"{len(col)} quaternions",
                f"{n_rot} rotated with their {fields[ra]},{fields[dec]} (roll kept)",
                "columns"))
    if not changes:
        return None, []
    return arr.tobytes() + raw[nrow_bytes:], changes


def _pointing(header, primary):
    for h in (header, primary):
        for a, b in (("RA_NOM", "DEC_NOM"), ("RA_PNT", "DEC_PNT")):
            if wcsupdate.is_position(h.get(a), h.get(b)):
                return float(h[a]), float(h[b])
    return None


def _instrument(header, primary, path):
    for h in (header, primary):
        if h.get("INSTRUME"):
            return str(h["INSTRUME"])
    name = Path(path).name.lower()
    return "HRC" if name.startswith("hrc") else ("ACIS" if name.startswith("acis") else "")


_POSITION_KINDS = ("EQPOS", "EQSRC", "position", "columns")


def _hdu_changes(path, lay, ptype, ctx, h, *, name, label, primary, new_primary, notes,
                 steps, move=True, scrub=True, shown=None):
    """The changes to one HDU (``h``, a copy of its header, edited); new data or None.

    ``steps``: (Transform, inverse) pairs applied in turn.
    """
    generic = ptype is products.GENERIC
    forward = not steps[-1][1]
    changes = []
    data = None
    if scrub and ptype.scrub and not ctx.inverse:
        sc, sn = wcsupdate.scrub_header(h, products.SCRUB_KEYWORDS, hdu_label=label,
                                        remove=ctx.scrub)
        changes += sc
        notes += sn
    if not move:
        return changes, data
    for xfm, inverse in steps:
        res = wcsupdate.update_header(h, xfm, hdu_label=label, inverse=inverse)
        changes += res.changes
        notes += res.notes
    # ---- EQSRC population (spec-notes 18)
    if (ptype.populate_eqsrc and forward
            and re.fullmatch(ptype.populate_eqsrc, name, flags=re.IGNORECASE)):
        inst = _instrument(h, primary, shown or path)
        try:
            pixel, crpix = products.instrument_grid(inst)
        except KeyError:
            pixel = crpix = None
        problem = (wcsupdate.eqsrc_problem(lay.header, pixel_deg=pixel, crpix=crpix)
                   if pixel else "unknown instrument")
        if problem is not None:
            point = _pointing(h, new_primary if new_primary is not None else primary)
            if pixel is None or point is None:
                raise ProductError(
                    f"{label}: EQSRC must be populated ({problem}) but the "
                    f"{'instrument' if pixel is None else 'pointing (RA_NOM/DEC_NOM)'} "
                    "is unknown")
            changes += wcsupdate.populate_eqsrc(h, ra_deg=point[0], dec_deg=point[1],
                                                pixel_deg=pixel, crpix=crpix,
                                                hdu_label=label)
            notes.append(wcsupdate.Note(label, f"populated EQSRC: {problem}"))
    # ---- columns
    if lay.is_table and ptype.columns:
        pairs = _column_pairs(lay.header, ptype, name, generic=generic, notes=notes,
                              label=label)
        if pairs:
            quats = [_quat_of(ptype, name, ra) for ra, _ in pairs]
            data, col_changes = _move_columns(path, lay, pairs, steps, label=label,
                                              quats=quats, notes=notes)
            if data is not None:
                changes += col_changes
    return changes, data


def _quat_of(ptype, hdu_name, ra_column) -> str:
    """The attitude quaternion column that turns with an RA/Dec column pair ('' if none)."""
    for rule in ptype.columns:
        if (rule.quat and re.fullmatch(rule.hdu, hdu_name, flags=re.IGNORECASE)
                and re.fullmatch(rule.ra, ra_column, flags=re.IGNORECASE)):
            return rule.quat
    return ""


def _extver(layout) -> int:
    try:
        return int(layout.header.get("EXTVER", 1))
    except (TypeError, ValueError):
        return 1


def _latest_stkxfm(layouts, xfm_id):
    """Index of the most recent STKXFM HDU recording ``xfm_id``, or None.

    This release numbers STKXFM HDUs newest first (EXTVER 1 the latest); files of
    earlier releases, whose STKXFM HDUs share one EXTVER, appended them (the last
    is the latest).
    """
    all_x = [lay for lay in layouts if _hdu_name(lay) == "STKXFM"]
    mine = [lay for lay in all_x if wcsupdate.applied_state(lay.header) == xfm_id]
    if not mine:
        return None
    if len({_extver(lay) for lay in all_x}) == len(all_x):
        return min(mine, key=_extver).index
    return mine[-1].index


def _stkxfm_hdu(hdu_bytes: bytes, extver: int) -> bytes:
    """The transform's STKXFM HDU with EXTVER ``extver`` (checksums recomputed)."""
    from astropy.io import fits

    end = 0
    while True:
        block = hdu_bytes[end:end + fitsedit.BLOCK]
        end += fitsedit.BLOCK
        if any(block[i:i + 8] == b"END     " for i in range(0, fitsedit.BLOCK, 80)):
            break
    header = fits.Header.fromstring(hdu_bytes[:end].decode("ascii"))
    data = hdu_bytes[end:]
    header["EXTVER"] = (int(extver), "STKXFM records of this file: 1 the latest")
    return fitsedit.checksummed_header_bytes(header, fitsedit.ones_complement_sum(data)) + data


def _renumber_stkxfm(plans, kept, *, first, fname, changes):
    """Number the STKXFM HDUs that stay ``first``, ``first`` + 1 ... in file order (newest
    first), so that each has its own EXTVER and ``file[STKXFM]`` (CFITSIO, astropy's
    ``hdul['STKXFM']`` and ``getheader(f, 'STKXFM')`` alike) is the latest."""
    for n, lay in enumerate(kept, start=first):
        if _extver(lay) == n and "EXTVER" in lay.header:
            continue
        plan = plans[lay.index]
        h = lay.header.copy()
        h["EXTVER"] = (n, "STKXFM records of this file: 1 the latest")
        plan.header = h
        changes.append(wcsupdate.Change(f"{fname}[STKXFM]", "EXTVER", lay.header.get("EXTVER"),
                                        n, "record"))


def _replaced_transform(path, layouts, ids, xfm, shown):
    """The applied transform replace=yes undoes, rebuilt from the file's records.

    A record holds the id and the shift, not the tangent point: the stack's new
    transform shares it (same stack), which the id proves (the id hashes all four).
    """
    (old_id,) = ids
    for lay in layouts:
        h = lay.header
        if wcsupdate.applied_state(h) == old_id and "STKDXI" in h and "STKDETA" in h:
            try:
                old = wcsupdate.Transform.from_shift(float(h["STKDXI"]), float(h["STKDETA"]),
                                                     xfm.ra_ref_deg, xfm.dec_ref_deg)
            except (TypeError, ValueError):
                break
            if old.xfm_id == old_id:
                return old
            break
    raise ProductError(
        f"{shown}: replace=yes cannot rebuild the applied transform STKXFMID={old_id} (its "
        f"tangent point differs from this transform's, or its record is incomplete): undo it "
        "with inverse=yes and its own transform file, then apply this one")


def plan_file(path, layouts, ptype, ctx: RunContext, *, shown=None):
    """Work out every change to one FITS file.  Reads only small table data.

    ``shown``: the name to use in labels and messages (default ``path``; a gzip
    product is planned on its decompressed temporary copy).

    Returns
    -------
    status : str
        ``update``, ``already`` (same transform recorded), ``nothing`` (no change),
        ``notapplied`` (inverse of a transform never applied).
    hdu_plans : list of HduPlan
    changes, notes : lists

    Raises
    ------
    ProductError
        Records of another transform (without replace or force), or an inconsistent
        file: some HDUs that carry positions record the transform and others do not.
    """
    shown = Path(shown if shown is not None else path)
    fname = shown.name
    xfm = ctx.transform.xfm
    notes = []
    changes = []
    # ---- idempotency
    ids = {}
    for lay in layouts:
        if _hdu_name(lay) == "STKXFM":
            continue
        rec = wcsupdate.applied_state(lay.header)
        if rec is not None:
            ids.setdefault(rec, []).append(lay.index)
    already = False
    replaced = None           # the applied transform replace=yes undoes
    if not ctx.inverse:
        if set(ids) == {xfm.xfm_id}:
            already = True
        others = sorted(set(ids) - {xfm.xfm_id})
        if len(ids) > 1:
            raise ProductError(f"{shown}: inconsistent records: HDUs carry transforms "
                               f"{', '.join(sorted(ids))}; not touched")
        if others and ctx.replace:
            replaced = _replaced_transform(path, layouts, others, xfm, shown)
        elif others and not ctx.force:
            raise ProductError(
                f"{shown}: already updated with another transform (STKXFMID={others[0]}, "
                f"this one is {xfm.xfm_id}); use replace=yes to undo that one and apply this "
                "one instead (e.g. a re-fit of the same stack), force=yes only to compose the "
                "two (apply this one on top), or inverse=yes with the other transform to undo it")
    else:
        if not ids:
            return "notapplied", [], [], notes
        if set(ids) != {xfm.xfm_id}:
            raise ProductError(
                f"{shown}: inverse=yes needs the applied transform; the file records "
                f"STKXFMID={', '.join(sorted(ids))}, this transform is {xfm.xfm_id}")
    if ctx.inverse:
        steps = ((xfm, True),)
    elif replaced is not None:
        steps = ((replaced, True), (xfm, False))
    else:
        steps = ((xfm, False),)
    # the STKXFM HDU an undo (or a replace) removes: the most recent of that transform
    drop_stkxfm = None
    if ctx.inverse:
        drop_stkxfm = _latest_stkxfm(layouts, xfm.xfm_id)
    elif replaced is not None:
        drop_stkxfm = _latest_stkxfm(layouts, replaced.xfm_id)
    primary = layouts[0].header
    new_primary = None
    plans = []
    unrecorded = []       # HDUs carrying positions without the record the others carry
    for lay in layouts:
        name = _hdu_name(lay)
        label = f"{fname}[{name or lay.index}]"
        plan = HduPlan(lay, label)
        plans.append(plan)
        if name == "STKXFM":
            if lay.index == drop_stkxfm:
                plan.remove = True
                changes.append(wcsupdate.Change(label, "HDU STKXFM", "present", None, "record"))
            continue
        recorded = wcsupdate.applied_state(lay.header) is not None
        if ids and not recorded:
            # would the transform move something here?  Then this HDU missed an update
            trial, _ = _hdu_changes(path, lay, ptype, ctx, lay.header.copy(), name=name,
                                    label=label, primary=primary, new_primary=new_primary,
                                    notes=[], steps=((xfm, False),), scrub=False, shown=shown)
            if any(c.what in _POSITION_KINDS for c in trial):
                unrecorded.append(name or str(lay.index))
                continue
        if (ctx.inverse or replaced is not None) and not recorded:
            continue
        h = lay.header.copy()
        hdu_notes = []
        # already applied: nothing moves again; only a requested scrub is still done
        hdu_changes, data = _hdu_changes(path, lay, ptype, ctx, h, name=name, label=label,
                                         primary=primary, new_primary=new_primary,
                                         notes=hdu_notes, steps=steps, move=not already,
                                         shown=shown)
        if not already or hdu_changes:
            notes += hdu_notes
        if data is not None:
            plan.data = data
        if not hdu_changes:
            continue
        if ctx.inverse:
            hdu_changes += wcsupdate.unrecord_transform(h, hdu_label=label)
        elif replaced is not None:
            hdu_changes += wcsupdate.unrecord_transform(h, hdu_label=label)
            hdu_changes += wcsupdate.record_transform(h, xfm, hdu_label=label)
        else:
            hdu_changes += wcsupdate.record_transform(h, xfm, hdu_label=label)
        add_history(h, TOOL, list(ctx.history), stacks=ctx.stacks)
        plan.header = h
        if lay.index == 0:
            new_primary = h
        changes += hdu_changes
    if unrecorded:
        with_rec = sorted({_hdu_name(layouts[i]) or str(i) for v in ids.values() for i in v})
        raise ProductError(
            f"{shown}: inconsistent: HDU(s) {', '.join(with_rec)} record transform "
            f"{', '.join(sorted(ids))} but HDU(s) {', '.join(unrecorded)} carry positions "
            "without that record (a partial update, or the file was edited since); "
            "not touched - inspect it, or restore it from the original")
    if already and not changes:
        return "already", [], [], notes
    # ---- declared WCS not found
    for kind in ptype.wcs:
        found = False
        for lay in layouts:
            if kind == "EQPOS" and wcsupdate.celestial_image_axes(lay.header):
                found = True
            for k, *_ in wcsupdate.celestial_table_columns(lay.header):
                found = found or k == kind
        if not found and not any(c.what == "EQSRC populated" for c in changes):
            notes.append(wcsupdate.Note(fname, f"§5.6 lists {kind} for {ptype.name} "
                                               "but the file has none"))
    # ---- ASPSOL3: STKXFM after XFM (spec-notes 17), before earlier STKXFM records, so that
    # file.fits[STKXFM] (the first of that name) is the transform applied last
    if ptype.append_stkxfm and not ctx.inverse and changes and not already:
        names = [_hdu_name(lay) for lay in layouts]
        kept = [lay for lay in layouts if names[lay.index] == "STKXFM"
                and lay.index != drop_stkxfm]
        extver = 1
        after = None
        for i, name in enumerate(names):
            if name in ("XFM", "XFM3"):
                after = i
        if after is None:
            first = next((lay.index for lay in kept), None)
            after = len(layouts) - 1 if first is None else first - 1
            while plans[after].remove:
                after -= 1
            notes.append(wcsupdate.Note(fname, f"no XFM HDU: STKXFM inserted after "
                                               f"{names[after] or after}"))
        plans[after].insert_after = _stkxfm_hdu(ctx.transform.hdu_bytes, extver)
        changes.append(wcsupdate.Change(f"{fname}[{names[after]}]", "HDU STKXFM",
                                        None, f"inserted after {names[after]} (EXTVER "
                                              f"{extver})", "record"))
        _renumber_stkxfm(plans, kept, first=2, fname=fname, changes=changes)
    elif drop_stkxfm is not None:
        kept = [lay for lay in layouts if _hdu_name(lay) == "STKXFM"
                and lay.index != drop_stkxfm]
        _renumber_stkxfm(plans, kept, first=1, fname=fname, changes=changes)
    status = "update" if changes else "nothing"
    if already and changes:
        notes.append(wcsupdate.Note(fname, f"transform {xfm.xfm_id} already "
                                           "applied: only the header scrub was done"))
    return status, plans, changes, notes


# --------------------------------------------------------------------------- writing

def _hdu_bytes_plan(path, plan: HduPlan, notes, *, pad=False):
    """New header (and data) bytes of a changed HDU; header sized to fit its blocks if it can.

    With ``pad`` (the file is being rewritten anyway) the header gets spare blocks
    even if it would fit, so that the next edits of this HDU fit in place.
    """
    lay = plan.layout
    if plan.data is not None:
        datasum = fitsedit.ones_complement_sum(plan.data)
    else:
        datasum = fitsedit.header_checksum_ok(lay.raw_header, lay.header)
        if datasum is None:
            datasum = fitsedit.datasum_of_range(path, lay.data_offset, lay.data_size)
            notes.append(wcsupdate.Note(plan.label, "input CHECKSUM blank or stale: DATASUM "
                                                    "recomputed from the data"))
    nblocks = lay.header_size // fitsedit.BLOCK
    header = plan.header                      # our own copy: DATASUM/CHECKSUM set on it
    fitted = None if pad else fitsedit.checksummed_header_bytes(header, datasum, nblocks=nblocks)
    if fitted is not None:
        return fitted, True
    # grown: leave spare blocks so that the next edits (each adds ~15 HISTORY cards) fit in place
    return fitsedit.checksummed_header_bytes(header, datasum, spare=SPARE_BLOCKS), False


def _assemble(src: Path, plans, notes):
    """The new version of ``src``: ``(pieces, patches, in_place_ok)``.

    ``pieces`` (bytes, or (offset, length) ranges of ``src``) make the whole new
    file; ``patches`` the same-length edits that make it in place, usable when
    ``in_place_ok``.
    """
    # Decide first whether the file must be rewritten: then every changed header gets spare
    # blocks (free, since all bytes move anyway), not only the ones that grew, so the next
    # run patches in place instead of rewriting again.
    headers = {}
    in_place_ok = True
    for i, plan in enumerate(plans):
        if plan.remove or plan.insert_after is not None:
            in_place_ok = False
        if plan.header is not None and not plan.remove:
            headers[i] = _hdu_bytes_plan(src, plan, notes)
            in_place_ok &= headers[i][1]
    if not in_place_ok:
        headers = {i: (_hdu_bytes_plan(src, plans[i], [], pad=True)[0], False) for i in headers}
    pieces = []
    patches = []
    fd = None
    try:
        for plan in plans:
            lay = plan.layout
            if plan.remove:
                continue
            idx = plans.index(plan)
            if plan.header is not None:
                hbytes, fits_blocks = headers[idx]
                pieces.append(hbytes)
                if fits_blocks:
                    patches.append(fitsedit.Patch(lay.header_offset, lay.raw_header, hbytes))
            else:
                pieces.append((lay.header_offset, lay.header_size))
            if plan.data is not None:
                pieces.append(plan.data)
                if fd is None:
                    fd = os.open(src, os.O_RDONLY)
                old = os.pread(fd, lay.data_size, lay.data_offset)
                patches.append(fitsedit.Patch(lay.data_offset, old, plan.data))
            elif lay.data_size:
                pieces.append((lay.data_offset, lay.data_size))
            if plan.insert_after is not None:
                pieces.append(plan.insert_after)
    finally:
        if fd is not None:
            os.close(fd)
    end = plans[-1].layout.end_offset
    size = src.stat().st_size
    if size > end:
        pieces.append((end, size - end))
    return pieces, patches, in_place_ok


def write_file(src: Path, dest: Path, plans, notes, *, scanned=None) -> str:
    """Write the planned new version of ``src`` to ``dest`` (may be ``src``).  Returns how.

    ``scanned`` (an ``os.stat_result`` of ``src`` taken when it was scanned): a
    rewrite is refused if ``src`` is no longer that file (size, inode, mtime), since
    its ranges are copied from the offsets found then.
    """
    pieces, patches, in_place_ok = _assemble(src, plans, notes)
    same = src.resolve() == dest.resolve() if dest.exists() else False
    if in_place_ok:
        if same:
            fitsedit.patch_in_place(src, patches, journal=True)
            return "updated in place (header/column bytes only, journaled)"
        tmp = fitsedit.copy_file(src, dest)
        try:
            fitsedit.patch_in_place(tmp, patches, journal=False)
            fitsedit.commit_temp(tmp, dest)
        except BaseException:
            fitsedit.discard_temp(tmp)
            raise
        return f"copied to {dest} and updated"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc.strerror}") from exc
    fitsedit.rewrite_file(src, dest, pieces, check=lambda: _unchanged(src, scanned))
    return ("rewritten (streamed; header grew or an HDU was added/removed)" if same
            else f"written to {dest} (streamed rewrite)")


def _unchanged(src: Path, scanned) -> None:
    """Refuse to commit a rewrite of ``src`` if it is not the file scanned (another program)."""
    if scanned is None:
        return
    now = src.stat()
    if (now.st_ino, now.st_size, now.st_mtime_ns) != (scanned.st_ino, scanned.st_size,
                                                       scanned.st_mtime_ns):
        raise ProductError(f"{src}: changed by another program while being updated; the "
                           "update was abandoned and the file left as that program wrote it")


def _copy_unchanged(src: Path, dest: Path) -> str:
    tmp = fitsedit.copy_file(src, dest)
    try:
        fitsedit.commit_temp(tmp, dest)
    except BaseException:
        fitsedit.discard_temp(tmp)
        raise
    return f"copied unchanged to {dest}"


# --------------------------------------------------------------------------- one file

def process_file(item: InputFile, ctx: RunContext) -> FileResult:
    """Recognise, plan and (unless dry run) write one file.  Raises StkError on failure.

    The product is locked (``flock``) from before its journal is looked at until
    its new version is in place: exclusively for an in-place update, shared for a
    copy or a dry run (which only read it).  A run that finds a product locked
    waits up to ``lock_timeout`` seconds, then re-reads it: work a concurrent run
    did meanwhile is then found done ("already applied").
    """
    if item.error:
        raise InputError(item.error)
    given = item.path
    result = FileResult(given)
    if not given.is_file():
        raise InputError(f"{given}: no such file")
    # a product reached through a symbolic link: read, write, journal and clean up the
    # real file (a rename onto the link would replace the link, not update the product)
    src = Path(os.path.realpath(given))
    dest = (ctx.outdir / item.rel) if ctx.outdir is not None else src
    if str(src) != os.path.normpath(os.path.abspath(given)):
        result.notes.append(wcsupdate.Note(given.name, (
            f"symbolic link to {src}: the real file is the one updated"
            if ctx.outdir is None else
            f"symbolic link to {src}: the real file is read (and left), its copy written to "
            f"{dest}")))
    if ctx.outdir is not None:
        if dest.resolve() == src:
            raise OutputError(f"{given}: outdir would overwrite the input; use outdir=\"\" for "
                              "an in-place update")
        if dest.exists() and not ctx.clobber:
            raise OutputError(f"Clobber set to no, and output file {dest} exists.")
    with locked(src, timeout=ctx.lock_timeout, shared=ctx.outdir is not None or ctx.dryrun,
                what="product"):
        return _process_locked(given, src, dest, ctx, result)


def _process_locked(given: Path, src: Path, dest: Path, ctx: RunContext,
                    result: FileResult) -> FileResult:
    jpath = fitsedit.journal_path(src)
    if ctx.outdir is not None:
        if jpath.exists():
            # copy mode never writes to an input, not even to roll a journal back
            raise ProductError(
                f"{given}: an interrupted in-place update left journal {jpath}; copy mode "
                "never writes to an input: run stk_update_wcs on it in place (outdir=\"\") "
                "first, which rolls it back, then copy")
        if not ctx.dryrun:
            _note_removed(result, dest, remove_orphan_temps(dest.parent, dest.name))
    elif not ctx.dryrun:
        done = fitsedit.recover(src)
        if done:
            result.notes.append(wcsupdate.Note(src.name, f"journal found: {done}"))
        _note_removed(result, src, remove_orphan_temps(src.parent, src.name))
    elif jpath.exists():
        # the file may hold a partial patch: planning on it would mislead
        result.action = (f"an interrupted update's journal {jpath.name} is pending: a real run "
                         "rolls it back first (or refuses it if the file changed since); "
                         "nothing planned (dry run)")
        result.category = "journal pending"
        return result
    if not fitsedit.is_gzip_fits(src):
        return _process_content(given, src, src, dest, ctx, result, gz=False)
    # a gzip product: decompressed into a private temporary file, planned there, and
    # written compressed (temp + fsync + rename) - never patched in place
    scratch = None
    if ctx.dryrun:
        scratch = tempfile.TemporaryDirectory(prefix="stk_update_wcs.")
        near = Path(scratch.name) / src.name
    elif ctx.outdir is not None:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write {dest}: {exc.strerror}") from exc
        near = dest
    else:
        near = src
    work = None
    try:
        work = fitsedit.gunzip_to_temp(src, near)
        return _process_content(given, src, work, dest, ctx, result, gz=True)
    finally:
        if work is not None:
            fitsedit.discard_temp(work)
        if scratch is not None:
            scratch.cleanup()


def _note_removed(result: FileResult, where: Path, names) -> None:
    for name in names:
        result.notes.append(wcsupdate.Note(where.name, f"removed {name}, left by an "
                                                       "interrupted run"))


def _process_content(given: Path, src: Path, work: Path, dest: Path, ctx: RunContext,
                     result: FileResult, *, gz: bool) -> FileResult:
    """Recognise and update one product whose FITS bytes are in ``work`` (``src`` or, for a
    gzip product, its decompressed temporary copy)."""
    scanned = os.stat(src)
    is_jpeg = fitsedit.is_jpeg_file(work)
    layouts = ()
    if is_jpeg:
        rec = products.recognise(src.name, [], is_jpeg=True)
    elif fitsedit.is_fits_file(work):
        layouts = fitsedit.scan_fits(work)
        infos = [products.hdu_info(lay.header, index=lay.index) for lay in layouts]
        rec = products.recognise(src.name, infos, forced=ctx.product)
    else:
        rec = products.Recognition(None, "", "not a FITS or JPEG file")
    ptype = rec.product
    result.reason = rec.reason
    own = _own_file(src, layouts, ctx)
    if own and not ctx.product:
        result.ptype = "NOT A PRODUCT"
        result.action = f"skipped ({own}; not a data product)"
        result.category = "skipped"
        if ctx.outdir is not None and not ctx.dryrun:
            result.action += "; not copied"
        return result
    if ptype is None and rec.weak:
        # one weak signal only (an HDU name): perhaps a catalog that looks like a product
        result.ptype = "NOT RECOGNISED"
        result.action = (f"left alone: {rec.reason}; a product needs two independent signals "
                         f"or a CSC file name - if it is one, name its type (product=TYPE)")
        result.category = "skipped"
        return result
    if ptype is None:
        if ctx.unknown == "error":
            raise ProductError(f"{src}: unknown product type ({rec.reason}); use unknown=skip "
                               "to leave such files or unknown=generic to apply the generic "
                               "rules")
        if ctx.unknown == "skip" or not layouts:
            result.ptype = "UNKNOWN"
            result.action = "skipped (unknown product type)"
            result.category = "skipped"
            return result
        ptype = products.GENERIC
    result.ptype = ptype.name + (f" band {rec.band}" if rec.band else "")
    if ptype.action == "inherit":
        result.action = f"inherits from {ptype.parent}; not modified"
        result.category = "inherit"
        result.notes.append(wcsupdate.Note(src.name, ptype.note))
    elif ptype.action == "nothing":
        result.action = "needs nothing; not modified"
        result.category = "needs nothing"
    else:
        status, plans, changes, notes = plan_file(work, layouts, ptype, ctx, shown=src)
        result.changes = changes
        result.notes += notes
        result.category = {"already": "already applied", "notapplied": "not applied",
                           "nothing": "nothing to change"}.get(status, "updated")
        if status == "already":
            result.action = (f"already applied (STKXFMID={ctx.transform.xfm.xfm_id}); "
                             "left byte-identical")
        elif status == "notapplied":
            result.action = "transform not recorded here; nothing to undo"
        elif status == "nothing":
            result.action = "nothing to change"
        elif ctx.dryrun:
            if ctx.outdir is None:
                problem = _in_place_problem(src, given)
                if problem:
                    result.notes.append(wcsupdate.Note(src.name, f"a real run would fail: "
                                                                 f"{problem}"))
            result.action = f"would change {len(changes)} item(s) (dry run)"
            result.category = "would update"
            return result
        else:
            if ctx.outdir is None:
                problem = _in_place_problem(src, given)
                if problem:
                    raise ProductError(problem)
            if gz:
                pieces, _, _ = _assemble(work, plans, result.notes)
                fitsedit.rewrite_file(work, dest, pieces, compress=True,
                                      check=lambda: _unchanged(src, scanned))
                result.action = ("rewritten compressed (gzip, temporary file + rename)"
                                 if ctx.outdir is None else
                                 f"written compressed to {dest}")
            else:
                result.action = write_file(src, dest, plans, result.notes, scanned=scanned)
            return result
    if ctx.outdir is not None and not ctx.dryrun:
        result.action += "; " + _copy_unchanged(src, dest)
    return result


def _in_place_problem(src: Path, given: Path) -> str:
    """Why ``src`` must not be updated in place ('' if it may).

    Read-only: no write access, or (for root, whom os.access always allows) no
    write permission bit for the file's owner (S_IWUSR; r--rw-r-- is read-only
    for its owner, so it is for root too).
    Hard links: an in-place patch would change every name of the file (a
    ``cp -al`` snapshot included), a rewrite would leave the other names old;
    either breaks what the user built, so the file is refused.
    """
    st = src.stat()
    if (os.geteuid() == 0 and not st.st_mode & stat.S_IWUSR) or not os.access(src, os.W_OK):
        return (f"{given} is read-only (mode {stat.filemode(st.st_mode)}); not updated: make "
                "it writable (chmod u+w) or use outdir= for updated copies")
    if st.st_nlink > 1:
        return (f"{given} has {st.st_nlink} hard links (e.g. a cp -al/rsync --link-dest "
                "snapshot): updating it in place would change or unshare the other names; "
                "not updated: break the link (cp the file over itself) or use outdir= for "
                "updated copies")
    return ""


#: CONTENT values of the files this tool chain writes (never data products).
_CHAIN_CONTENT = {"STKPAIRS": "an stk_match matched-pairs file",
                  "STKXFM": "an stk_xfm transform file",
                  "STKDETCORR": "stk_xfm's corrected detections (a catalog)",
                  "STKXFMDIAG": "stk_xfm's diagnostics"}
#: HDU names of the stack's input catalogs (stk_match's inputs, stk_simulate's truth).
_CATALOG_HDUS = {"GAIA": "a Gaia catalog", "ALLWISE": "an ALLWISE catalog",
                 "BESTNB": "a best-neighbour catalog", "TRUTH": "a simulation's truth table"}
#: File names of the stack's input catalogs as the chain and stk_simulate name them.
_CATALOG_NAME = re.compile(r"(?:^|_)(det|gaia|allwise|bestnb|truth|pairs|xfm|diag|"
                           r"det_?corr(?:ected)?)\.fits(?:\.gz)?$", re.IGNORECASE)


def _own_file(src: Path, layouts, ctx: RunContext) -> str:
    """Say so if ``src`` is a catalog or a file of this tool chain (found in a product tree),
    else ''.  Such files are never products, whatever their HDU names suggest."""
    if ctx.transform.path and src.resolve() == Path(ctx.transform.path).resolve():
        return "the transform file"
    names = {_hdu_name(lay) for lay in layouts}
    primary = str(layouts[0].header.get("CONTENT", "")).strip().upper() if layouts else ""
    if primary in _CHAIN_CONTENT:
        return _CHAIN_CONTENT[primary]
    if primary:
        return ""                      # a CONTENT of its own: decided by recognition
    if "STKXFM" in names:
        return "an stk_xfm transform file"
    for name, what in _CATALOG_HDUS.items():
        if name in names:
            return what
    m = _CATALOG_NAME.search(src.name)
    if m:
        return f"a stack input catalog or chain file by its name (*_{m.group(1)}.fits)"
    return ""


# --------------------------------------------------------------------------- report

#: Logging levels of the report (runner.VERBOSE_LEVELS): verbose=1 one line per file,
#: 2 the planned changes per HDU and the notes, 3 every keyword and column changed.
_PER_FILE = logging.INFO
_PER_HDU = 17
_PER_KEYWORD = 15

#: Notes that tell of an earlier failure or of a file left alone: warnings, not chatter.
_WARN_NOTES = ("journal found", "left by an interrupted run", "a real run would fail")


def _report(result: FileResult, stack: str) -> None:
    """Log one file's outcome: errors and warnings name the stack and the file."""
    where = f"stack {stack}: " if stack else ""
    if result.failed:
        text = result.action
        if text.startswith(f"{result.path}: ") or text.startswith(f"{result.path} "):
            logger.error("%s%s", where, text)          # the message names the file already
        else:
            logger.error("%s%s: %s", where, result.path, text)
        return
    if result.category == "skipped" and result.ptype == "NOT RECOGNISED":
        logger.warning("%s%s: %s", where, result.path, result.action)
    logger.log(_PER_FILE, "%s: %s (%s) -> %s", result.path, result.ptype, result.reason,
               result.action)
    for note in result.notes:
        if any(w in note.message for w in _WARN_NOTES):
            logger.warning("%s%s: %s", where, result.path, note.describe())
    if not logger.isEnabledFor(_PER_HDU):
        return
    by_hdu = {}
    for change in result.changes:
        by_hdu.setdefault(change.hdu, []).append(change)
    for hdu, changes in by_hdu.items():
        kinds = {}
        for c in changes:
            kinds.setdefault(c.what, []).append(c)
        parts = []
        for what, cs in kinds.items():
            if what == "columns":
                parts += [f"{c.key} ({c.new})" for c in cs]
            elif what == "record":
                parts.append("transform record " + ", ".join(
                    f"{c.key}{'' if c.new is None or c.key.startswith('HDU') else '=' + str(c.new)}"
                    f"{' removed' if c.new is None else ''}"
                    for c in cs if c.key in ("STKXFMID", "HDU STKXFM", "EXTVER")))
            else:
                parts.append(f"{len(cs)} {what} keyword(s)")
        logger.log(_PER_HDU, "    [%s] %s", hdu, "; ".join(p for p in parts if p))
        if logger.isEnabledFor(_PER_KEYWORD):
            for change in changes:
                logger.log(_PER_KEYWORD, "        %s", change.describe())
    for note in result.notes:
        logger.log(_PER_HDU, "    note: %s", note.describe())


def _stack_of(transform: TransformInput) -> str:
    """The stack the transform belongs to (STACKID of its STKXFM HDU), '' if not recorded."""
    head = transform.hdu_bytes[:fitsedit.BLOCK * 8]
    for i in range(0, len(head) - 79, 80):
        card = head[i:i + 80]
        if card.startswith(b"STACKID ="):
            value = card[10:].split(b"/")[0].strip().strip(b"'").strip()
            return value.decode("ascii", "replace")
        if card.startswith(b"END     "):
            break
    return ""


def runner_verbose_level(verbose: int) -> int:
    """The logging level at which a message shows from ``verbose`` on."""
    from stk_astrometry.runner import VERBOSE_LEVELS

    return VERBOSE_LEVELS[verbose]


def _mark_collisions(files, outdir: Path):
    """Copy mode: inputs that would write the same output file fail, before anything is written."""
    by_dest = {}
    for f in files:
        if not f.error:
            by_dest.setdefault(os.path.normpath(os.path.abspath(outdir / f.rel)), []).append(f)
    out = []
    for f in files:
        dest = os.path.normpath(os.path.abspath(outdir / f.rel))
        group = by_dest.get(dest, [f]) if not f.error else [f]
        if len(group) > 1:
            others = ", ".join(str(g.path) for g in group if g is not f)
            f = InputFile(f.path, f.rel, f.root,
                          f"{f.path}: same output file {dest} as {others}; none of them is "
                          "written (give them separately, with different outdir)")
        out.append(f)
    return out


def _product_param(value) -> str:
    text = str(value or "").strip().upper()
    if text and text not in products.PRODUCTS:
        raise ParameterError(f"product={value}: not a §5.6 product type; one of "
                             + ", ".join(products.PRODUCTS))
    return text


@dataclass(frozen=True)
class RunReport:
    """What one run did: every file's result, counts per category, and the summary line."""

    results: tuple
    counts: dict
    n_failed: int
    xfm_id: str

    @property
    def summary(self) -> str:
        """``N file(s): n1 category1, n2 category2 ...``."""
        text = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"{len(self.results)} file(s): {text}"


def update_files(p, history_items) -> RunReport:
    """The whole run, for the tool and for ``api.update_products`` alike.

    Parameters
    ----------
    p : mapping
        The parameters by their .par names (infile, transformfile, outdir, unknown,
        dryrun, inverse, replace, force, qa_override, scrub, clobber, product,
        lock_timeout).
    history_items : sequence of (name, text)
        What the HISTORY PARM records of every changed HDU say.

    Raises
    ------
    StkError
        A problem with the run as a whole (parameters, transform, outdir); a file's
        problem is that file's result.
    """
    product = _product_param(p["product"])
    if p["replace"] and p["force"]:
        raise ParameterError("replace=yes and force=yes exclude each other: replace undoes the "
                             "applied transform first, force composes with it")
    if p["replace"] and p["inverse"]:
        raise ParameterError("replace=yes and inverse=yes exclude each other")
    try:
        timeout = float(p["lock_timeout"])
    except (TypeError, ValueError):
        timeout = float("nan")
    if not math.isfinite(timeout) or timeout < 0:
        raise ParameterError(f"lock_timeout={p['lock_timeout']}: must be a number of "
                             "seconds >= 0")
    unknown = str(p["unknown"]).strip().lower()
    if unknown not in ("error", "skip", "generic"):
        raise ParameterError(f"unknown={p['unknown']}: expected one of error, skip, generic")
    transform = read_transform(p["transformfile"])
    if not p["inverse"]:     # undoing is always allowed
        warning = check_qa_review(transform, override=bool(p["qa_override"]))
        if warning:
            logger.warning("%s", warning)
    walked = []
    files, notes = expand_inputs(p["infile"], walked)
    outdir = p["outdir"]
    outdir = Path(outdir) if outdir and str(outdir).strip() else None
    if outdir is not None and outdir.exists() and not outdir.is_dir():
        raise OutputError(f"outdir={outdir} exists and is not a directory")
    if outdir is not None:
        out_real = outdir.resolve()
        # every real folder walked, those reached through followed symbolic links too
        inputs = {f.root.resolve() for f in files if f.root is not None}
        for root in sorted(inputs | set(walked)):
            if out_real == root or root in out_real.parents:
                where = (f"the input directory {root}" if root in inputs else
                         f"the input directory tree ({root}, walked through a symbolic link)")
                raise OutputError(
                    f"outdir={outdir} is inside {where}: the copies would be written into the "
                    "input tree (and taken for inputs by the next run); choose an outdir "
                    "outside it")
        files = _mark_collisions(files, outdir)
    items = tuple(history_items)
    ctx = RunContext(transform, outdir, unknown, bool(p["dryrun"]), bool(p["inverse"]),
                     bool(p["force"]), bool(p["scrub"]), bool(p["clobber"]),
                     items, read_stacks(items), replace=bool(p["replace"]), product=product,
                     lock_timeout=timeout)
    xfm = transform.xfm
    logger.info("transform %s from %s: d_xi=%+.4f\" d_eta=%+.4f\" about (%.6f, %.6f)%s%s",
                xfm.xfm_id, transform.path, xfm.d_xi_arcsec, xfm.d_eta_arcsec, xfm.ra_ref_deg,
                xfm.dec_ref_deg, " INVERSE" if ctx.inverse else "",
                " (dry run: nothing is written)" if ctx.dryrun else "")
    for note in notes:
        logger.info("note: %s", note)
    if not files:
        raise InputError(f"infile={p['infile']}: no files to process")
    if outdir is None or ctx.dryrun:
        results, counts, failed = _process_all(files, ctx)
    else:
        before = _existing_folders(outdir)
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"outdir={outdir}: cannot create it: {exc.strerror}") from exc
        try:
            # one run at a time writes into an output tree (the copies of a tree are one job)
            with locked(outdir, timeout=ctx.lock_timeout, what="output folder (outdir)"):
                results, counts, failed = _process_all(files, ctx)
        finally:
            _remove_new_empty_folders(outdir, before)
    return RunReport(tuple(results), counts, failed, xfm.xfm_id)


def _process_all(files, ctx: RunContext):
    """Process every input; return (results, counts per category, number failed)."""
    results = []
    counts = {}
    failed = 0
    stack = _stack_of(ctx.transform)
    for item in files:
        try:
            with warnings.catch_warnings(record=True) as caught:
                # a library's warning (astropy's on an odd header) is chatter about this file:
                # shown at verbose >= 2, never raw on stderr
                warnings.simplefilter("always")
                result = process_file(item, ctx)
            for w in caught:
                result.notes.append(wcsupdate.Note(
                    item.path.name, f"{w.category.__name__}: {str(w.message).strip()}"))
        except StkError as exc:
            result = FileResult(item.path, action=str(exc), failed=True, category="failed")
            failed += 1
        except Exception as exc:  # noqa: BLE001 - a bug fails this file; the others go on
            # the traceback is a bug report: shown at verbose >= 2
            logger.log(runner_verbose_level(2), "%s: internal error:\n%s", item.path,
                       "".join(traceback.format_exception(exc)).rstrip())
            result = FileResult(item.path, action=f"internal error (a bug; verbose=2 shows the "
                                                  f"traceback): {type(exc).__name__}: {exc}",
                                failed=True, category="failed")
            failed += 1
        _report(result, stack)
        results.append(result)
        counts[result.category] = counts.get(result.category, 0) + 1
    return results, counts, failed


def _existing_folders(outdir: Path) -> set:
    """The folders at and under ``outdir`` before the run, and its existing ancestors."""
    found = {str(p.resolve()) for p in Path(os.path.abspath(outdir)).parents if p.is_dir()}
    if not outdir.is_dir():
        return found
    found.add(str(outdir.resolve()))
    for root, dirs, _ in os.walk(outdir):
        found.update(str(Path(root, d).resolve()) for d in dirs)
    return found


def _remove_new_empty_folders(outdir: Path, before: set) -> None:
    """Copy mode: remove the folders this run created and left empty (a failed file's)."""
    if not outdir.is_dir():
        return
    for root, _dirs, _files in os.walk(outdir, topdown=False):
        path = Path(root)
        if str(path.resolve()) in before:
            continue
        try:
            path.rmdir()             # only succeeds when empty
        except OSError:
            pass
    # the ancestors of outdir this run created (outdir=new/deep), when left empty
    for parent in Path(os.path.abspath(outdir)).parents:
        if str(parent) in before or not parent.is_dir():
            break
        try:
            parent.rmdir()
        except OSError:
            break
