"""The stacks of a campaign: reading the stack list and fingerprinting each stack's inputs.

A campaign is given either as ``@file`` -- a list of stack directories, one per line (blank
lines and ``#`` comments skipped, relative paths taken from the list's folder) -- or as a table
(FITS, or any text table astropy reads) with one row per stack and the columns ``stackid``,
``detfile``, ``gaiafile`` and optionally ``wisefile``, ``bestnbfile``, ``products``.

A stack directory holds the files ``stk_simulate`` writes: ``<stackid>_det.fits``,
``<stackid>_gaia.fits`` and, when present, ``<stackid>_allwise.fits``,
``<stackid>_bestnb.fits`` and a ``products/`` folder.

No science here and no writing: the list is checked (duplicate stack ids, missing files) before
any work starts, so a typo fails at once and not after hours.
"""

from __future__ import annotations

import hashlib
import os
import re
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError, ParameterError

__all__ = ["StackInput", "StackList", "read_stack_list", "inputs_digest", "safe_name"]

_SUFFIXES = {"detfile": "_det.fits", "gaiafile": "_gaia.fits", "wisefile": "_allwise.fits",
             "bestnbfile": "_bestnb.fits"}
_TABLE_COLUMNS = ("stackid", "detfile", "gaiafile", "wisefile", "bestnbfile", "products")


@dataclass(frozen=True, slots=True)
class StackInput:
    """The inputs of one stack (absolute paths; optional ones None)."""

    stackid: str
    detfile: str
    gaiafile: str
    wisefile: str | None = None
    bestnbfile: str | None = None
    products: str | None = None
    #: pass ``stackid`` to the match step (a detections file shared by several stacks)
    select: bool = False

    def input_files(self) -> tuple[str, ...]:
        """The catalog files whose content decides the stack's results."""
        return tuple(p for p in (self.detfile, self.gaiafile, self.wisefile, self.bestnbfile) if p)


_PATH_FIELDS = ("detfile", "gaiafile", "wisefile", "bestnbfile", "products")
_FIELD_SEP, _IN_FOLDER, _STACKID = "\x00", "\x01", "\x02"


class StackList(Sequence):
    """The stacks of a campaign, held packed: a sequence of :class:`StackInput` made when
    asked for (indexing gives one, a slice a list of them).

    A stack's five paths are held as one text: its files' folder once (the folder's parent as
    an index into the few distinct parents), each file's name with the stack id as one
    character, and no text at all for a missing one -- ~100 bytes a stack instead of ~660 as
    :class:`StackInput` objects, which kept the driver's memory growing with the campaign
    (issue 12: 6.6 MB held for 10,000 stacks).  A stack whose fields hold the few control
    characters the packing uses (or a blank id, or a folder that ``os.path.split`` does not
    give back) is kept as it is: every stack comes back exactly as it was added.
    """

    def __init__(self, stacks=()):
        self._text = bytearray()
        self._ends = array("q")
        self._parents: dict[str, int] = {}
        self._parent_list: list[str] = []
        self._plain: dict[int, StackInput] = {}
        for s in stacks:
            self.append(s)

    def append(self, stack: StackInput) -> None:
        """Add ``stack`` at the end."""
        folder = os.path.dirname(stack.detfile)
        fields = [stack.stackid, *(getattr(stack, f) or "" for f in _PATH_FIELDS)]
        if (not stack.stackid or not folder
                or any(c in f for f in fields for c in (_FIELD_SEP, _IN_FOLDER, _STACKID))):
            self._keep_plain(stack)
            return
        parent, name = os.path.split(folder)
        if os.path.join(parent, name) != folder:      # e.g. '/a//b': split drops a slash
            self._keep_plain(stack)
            return
        k = self._parents.setdefault(parent, len(self._parent_list))
        if k == len(self._parent_list):
            self._parent_list.append(parent)
        inside = folder + os.sep
        packed = [stack.stackid, str(k), name, "1" if stack.select else "0"]
        for f in _PATH_FIELDS:
            path = getattr(stack, f)
            if path is None:
                packed.append("")
            elif path.startswith(inside):
                packed.append(_IN_FOLDER + path[len(inside):].replace(stack.stackid, _STACKID))
            else:
                packed.append(" " + path)        # a path elsewhere (a resolved link), as it is
        self._text += _FIELD_SEP.join(packed).encode("utf-8", "surrogateescape")
        self._ends.append(len(self._text))

    def _keep_plain(self, stack: StackInput) -> None:
        self._plain[len(self._ends)] = stack
        self._ends.append(len(self._text))

    def __len__(self) -> int:
        return len(self._ends)

    def _get(self, i: int) -> StackInput:
        plain = self._plain.get(i)
        if plain is not None:
            return plain
        start = self._ends[i - 1] if i else 0
        stackid, k, name, select, *paths = self._text[start:self._ends[i]].decode(
            "utf-8", "surrogateescape").split(_FIELD_SEP)
        inside = os.path.join(self._parent_list[int(k)], name) + os.sep
        vals = {}
        for f, packed in zip(_PATH_FIELDS, paths, strict=True):
            if not packed:
                vals[f] = None
            elif packed[0] == _IN_FOLDER:
                vals[f] = inside + packed[1:].replace(_STACKID, stackid)
            else:
                vals[f] = packed[1:]
        return StackInput(stackid=stackid, select=select == "1", **vals)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self._get(i) for i in range(*key.indices(len(self)))]
        i = key.__index__()
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("stack index out of range")
        return self._get(i)


def safe_name(stackid: str) -> str:
    """A folder name for a stack id (characters other than ``[A-Za-z0-9._+-]`` become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", stackid.strip()) or "_"
    return "_" + name if name.startswith(".") else name


def _resolved(entry: os.DirEntry, real_folder: str) -> str:
    """``Path(entry.path).resolve()`` without a system call per path component: the folder is
    resolved once, and only an entry that is itself a symbolic link is resolved on its own."""
    if entry.is_symlink():
        return os.path.realpath(entry.path)
    return os.path.join(real_folder, entry.name)


def _real_folder(folder: str, parents: dict) -> str:
    """``os.path.realpath(folder)``, each parent folder resolved once per list (``parents``
    caches them): a folder that is not itself a symbolic link is its resolved parent + name."""
    parent, name = os.path.split(folder)
    if not name or name in (".", "..") or not parent or os.path.islink(folder):
        return os.path.realpath(folder)
    if parent not in parents:
        parents[parent] = os.path.realpath(parent)
    return os.path.join(parents[parent], name)


def _from_directory(folder: Path, parents: dict | None = None) -> StackInput:
    # one directory read per stack (os.scandir) and no pathlib: a 10,000-stack list was
    # 1-1.6 s of stat, lstat and path parsing (a glob, an is_file and a resolve per file)
    try:
        with os.scandir(folder) as it:
            entries = {e.name: e for e in it}
    except OSError as exc:
        if not folder.is_dir():
            raise InputError(f"stack directory {folder} does not exist") from exc
        raise InputError(f"stack directory {folder} cannot be read: "
                         f"{exc.strerror or exc}") from exc
    dets = sorted(name for name in entries if name.endswith(_SUFFIXES["detfile"]))
    if len(dets) != 1:
        what = "no" if not dets else f"{len(dets)}"
        raise InputError(f"stack directory {folder} has {what} *_det.fits file(s); expected one")
    stackid = dets[0][: -len(_SUFFIXES["detfile"])]
    real = _real_folder(os.fspath(folder), {} if parents is None else parents)
    paths = {}
    for key, suffix in _SUFFIXES.items():
        e = entries.get(f"{stackid}{suffix}")
        paths[key] = _resolved(e, real) if e is not None and e.is_file() else None
    if paths["gaiafile"] is None:
        raise InputError(f"stack directory {folder} has no {stackid}_gaia.fits")
    products = entries.get("products")
    return StackInput(stackid=stackid, detfile=paths["detfile"], gaiafile=paths["gaiafile"],
                      wisefile=paths["wisefile"], bestnbfile=paths["bestnbfile"],
                      products=(_resolved(products, real)
                                if products is not None and products.is_dir() else None))


def _read_list_file(path: Path) -> StackList:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"stacks=@{path}: cannot read the stack list: {exc.strerror or exc}") from exc
    out, parents = StackList(), {}
    base = os.fspath(path.parent)
    for lineno, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        folder = Path(os.path.join(base, os.path.expanduser(os.path.expandvars(entry))))
        try:
            out.append(_from_directory(folder, parents))
        except InputError as exc:
            raise InputError(f"stacks=@{path} line {lineno}: {exc}") from exc
    return out


def _cell(value) -> str | None:
    if value is None or getattr(value, "mask", False) is True:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    text = text.strip()
    return text or None


def _read_table_file(spec: str) -> StackList:
    from ..tableio import read_table

    tin = read_table(spec, param="stacks")
    names = set(tin.table.colnames)
    missing = [c for c in ("stackid", "detfile", "gaiafile") if c not in names]
    if missing:
        raise InputError(f"stacks={spec}: the stack table lacks column(s) {', '.join(missing)} "
                         f"(expected {', '.join(_TABLE_COLUMNS)})")
    base = tin.path.parent
    out = []
    for i, row in enumerate(tin.table, start=1):
        vals = {c: (_cell(row[c]) if c in names else None) for c in _TABLE_COLUMNS}
        if not vals["stackid"] or not vals["detfile"] or not vals["gaiafile"]:
            raise InputError(f"stacks={spec}: row {i} has a blank stackid, detfile or gaiafile")
        for key in ("detfile", "gaiafile", "wisefile", "bestnbfile", "products"):
            if vals[key]:
                p = Path(os.path.expandvars(vals[key])).expanduser()
                vals[key] = str((p if p.is_absolute() else base / p).resolve())
        out.append(StackInput(**vals))
    uses = Counter(s.detfile for s in out)
    shared = {d for d, n in uses.items() if n > 1}
    if shared:
        out = [replace(s, select=s.detfile in shared) for s in out]
    return StackList(out)


def read_stack_list(spec: str) -> StackList:
    """Read a campaign's stacks from ``@list`` or a stack table (see the module docstring).

    Returns
    -------
    StackList
        The stacks in the list's order (a sequence of :class:`StackInput`).

    Raises
    ------
    ParameterError
        Blank ``spec``.
    InputError
        Unreadable list, missing input files, duplicate stack ids.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ParameterError("stacks is blank: give @list of stack directories or a stack table")
    listed = spec.startswith("@")     # stack directories: their files were found there
    if listed:
        stacks = _read_list_file(Path(spec[1:]).expanduser())
    else:
        stacks = _read_table_file(spec)
    if not stacks:
        raise InputError(f"stacks={spec}: the list holds no stacks")
    seen = {}
    for s in stacks:
        key = safe_name(s.stackid)
        if key in seen:
            raise InputError(f"stacks={spec}: stack id {s.stackid} appears twice "
                             f"({seen[key]} and {s.detfile})")
        seen[key] = s.detfile
        for label, p in (() if listed else (("detfile", s.detfile), ("gaiafile", s.gaiafile),
                                            ("wisefile", s.wisefile), ("bestnbfile", s.bestnbfile))):
            if p and not os.path.isfile(p.split("[", 1)[0]):
                raise InputError(f"stacks={spec}: stack {s.stackid}: {label} {p} does not exist")
    return stacks


def inputs_digest(stack: StackInput) -> str:
    """A fingerprint of the stack's input files: path, size and modification time of each.

    What ``make`` trusts: a file rewritten (even with the same size) gets a new mtime.  A
    missing file gives a digest that never matches a finished run's.
    """
    h = hashlib.sha256()
    for p in stack.input_files():
        path = p.split("[", 1)[0]
        try:
            st = os.stat(path)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{p}\0missing\0".encode())
    return h.hexdigest()[:32]
