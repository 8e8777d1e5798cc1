"""The campaign QA queue: one static HTML page listing the flagged stacks, worst first.

Each row: the stack, its QA flags and reason, the shift, the decision so far (iteration,
operator), the image-measured median offset before -> after, a thumbnail of its contact sheet
(linking to the full sheet, the residual plot and the DS9 script).  Severity orders it:
undecided stacks first, then by the sum of the flags' weights (DISAGREE 5, BIGSHIFT 4,
FEWMATCH 3, DENSE 2, NOMATCH 1), then by the size of the shift.  The page is plain HTML with
inline CSS (no script, nothing fetched from the network): it opens from a file system,
a web server or an archive alike.

Entries are kept in ``<page>.json`` beside the page, one per stack, so that every
``stk_qa ... queue=page.html`` run adds or updates its stack and rewrites the page.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["QueueEntry", "FLAG_NAMES", "severity", "render_queue", "update_queue"]

FLAG_NAMES = {1: "NOMATCH", 2: "DENSE", 4: "BIGSHIFT", 8: "FEWMATCH", 16: "DISAGREE"}
_WEIGHTS = {1: 1, 2: 2, 4: 4, 8: 3, 16: 5}


@dataclass(frozen=True)
class QueueEntry:
    """One stack of the queue (paths relative to the page when possible)."""

    stackid: str
    qa_flags: int
    qa_reason: str
    d_xi: float
    d_eta: float
    decision: str = ""
    iteration: int = 0
    operator: str = ""
    median_before: float = float("nan")
    median_after: float = float("nan")
    n_stamps: int = 0
    sheet: str = ""
    residuals: str = ""
    ds9_script: str = ""
    transform: str = ""


def severity(entry: QueueEntry) -> tuple:
    """Sort key, most severe first (module docstring)."""
    weight = sum(w for bit, w in _WEIGHTS.items() if entry.qa_flags & bit)
    shift = (entry.d_xi ** 2 + entry.d_eta ** 2) ** 0.5
    decided = entry.decision in ("accept", "refit", "reject")
    return (decided, -weight, -(shift if shift == shift else 0.0), entry.stackid)


def _flags_text(flags: int) -> str:
    return " ".join(name for bit, name in FLAG_NAMES.items() if flags & bit) or "none"


def _num(x, fmt):
    return "&ndash;" if x != x else format(x, fmt)


def render_queue(entries, *, title="stk_qa queue") -> str:
    """The HTML page of ``entries`` (sorted by :func:`severity`).  Pure."""
    e = html.escape
    rows = []
    for n, ent in enumerate(sorted(entries, key=severity), start=1):
        links = " ".join(f'<a href="{e(p)}">{label}</a>' for label, p in (
            ("sheet", ent.sheet), ("residuals", ent.residuals), ("DS9", ent.ds9_script),
            ("transform", ent.transform)) if p)
        thumb = (f'<a href="{e(ent.sheet)}"><img src="{e(ent.sheet)}" alt="contact sheet of '
                 f'{e(ent.stackid)}" width="320"></a>' if ent.sheet else "")
        decision = (f"{e(ent.decision)} (iteration {ent.iteration}, {e(ent.operator)})"
                    if ent.decision else '<span class="todo">to review</span>')
        rows.append(
            f'<tr class="{"done" if ent.decision else "pending"}"><td>{n}</td>'
            f"<td><b>{e(ent.stackid)}</b><br>{links}</td>"
            f"<td>{e(_flags_text(ent.qa_flags))} ({ent.qa_flags})<br>"
            f'<span class="reason">{e(ent.qa_reason)}</span></td>'
            f'<td>({_num(ent.d_xi, "+.3f")}, {_num(ent.d_eta, "+.3f")})"</td>'
            f'<td>{_num(ent.median_before, ".2f")}" &rarr; {_num(ent.median_after, ".2f")}"'
            f"<br>{ent.n_stamps} stamps</td><td>{decision}</td><td>{thumb}</td></tr>")
    n_todo = sum(1 for ent in entries if not ent.decision)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        '<link rel="icon" href="data:,">',
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px;vertical-align:top;font-size:13px}"
        "th{background:#eee}.reason{color:#444;font-size:12px}.todo{color:#b00}"
        "tr.done{background:#f4fff4}</style>", "</head>", "<body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{len(entries)} stack(s), {n_todo} to review; most severe first (undecided, then "
        "DISAGREE &gt; BIGSHIFT &gt; FEWMATCH &gt; DENSE &gt; NOMATCH, then the larger "
        "shift). Offsets: median distance of the sources from their Gaia crosshairs, measured "
        "on the image before &rarr; after the correction.</p>",
        "<table>", "<thead><tr><th>#</th><th>stack</th><th>QA flags and reason</th>"
        "<th>shift (xi, eta)</th><th>offset before &rarr; after</th><th>decision</th>"
        "<th>contact sheet</th></tr></thead>", "<tbody>", *rows, "</tbody>", "</table>",
        "</body>", "</html>", ""])


def _relative(path, page_dir):
    if not path:
        return ""
    try:
        return os.path.relpath(Path(path).resolve(), page_dir)
    except ValueError:      # another drive (Windows)
        return str(Path(path).resolve())


def update_queue(page, entry: QueueEntry) -> list:
    """Add or replace ``entry`` in ``<page>.json`` and rewrite ``page``; return all entries.

    The entry's file paths are stored relative to the page's folder.
    """
    from stk_astrometry.fitsutil import atomic_path

    page = Path(page)
    page_dir = page.resolve().parent
    store = page.with_name(page.name + ".json")
    entries = {}
    if store.is_file():
        for item in json.loads(store.read_text(encoding="utf-8")):
            entries[item["stackid"]] = QueueEntry(**item)
    fields = asdict(entry)
    for key in ("sheet", "residuals", "ds9_script", "transform"):
        fields[key] = _relative(fields[key], page_dir)
    entries[entry.stackid] = QueueEntry(**fields)
    ordered = sorted(entries.values(), key=severity)
    page_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(store) as tmp:
        tmp.write_text(json.dumps([asdict(x) for x in ordered], indent=1), encoding="utf-8")
    with atomic_path(page) as tmp:
        tmp.write_text(render_queue(ordered), encoding="utf-8")
    return ordered
