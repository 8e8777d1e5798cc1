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
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError, ParameterError

__all__ = ["StackInput", "read_stack_list", "inputs_digest", "safe_name"]

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


def _read_list_file(path: Path) -> list[StackInput]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"stacks=@{path}: cannot read the stack list: {exc.strerror or exc}") from exc
    out, parents = [], {}
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


def _read_table_file(spec: str) -> list[StackInput]:
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
    return out


def read_stack_list(spec: str) -> list[StackInput]:
    """Read a campaign's stacks from ``@list`` or a stack table (see the module docstring).

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
