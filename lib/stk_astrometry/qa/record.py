"""Recording a QA decision (spec §5.7.1 iterations, §5.7.2 flags): in the transform file and,
when there is one, in the campaign's run database.

In the transform file, both headers (primary and ``STKXFM``) get (formats.md §2, "QA"):

==========  ===============================================================
``QADECIS``  ``accept``, ``refit`` or ``reject`` (stk_update_wcs applies a flagged transform
             only after ``accept`` or ``refit``; never after ``reject``)
``QAITER``   iteration number of the review (1, 2, ...)
``QAOPER``   operator
``QADATE``   UTC time of the decision
``QANOTE``   the operator's reason (long text as CONTINUE cards)
==========  ===============================================================

and a HISTORY record per iteration (earlier iterations' records are carried over into a
re-fitted transform)::

    HISTORY stk_qa iteration 2 2026-12-05T10:12:00 operator=jdoe decision=refit
    HISTORY   shift (+0.2968, -0.2477)" -> (+0.3010, -0.2390)" from 12 pairs; reason: ...

The database write is one row in table ``qa_reviews`` of the campaign's SQLite file (created
if absent), in its own short transaction with a busy timeout: a missing database is simply
skipped, a locked or unreadable one is a warning, never a failure of the review.
"""

from __future__ import annotations

import getpass
import logging
import sqlite3
import textwrap
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["DECISIONS", "QARecord", "history_lines", "qa_keywords", "record_in_transform",
           "find_database", "record_in_database", "default_operator"]

DECISIONS = ("accept", "refit", "reject")
HISTORY_PREFIX = "stk_qa iteration"
DB_NAME = "campaign.sqlite"
_TABLE = """CREATE TABLE IF NOT EXISTS qa_reviews (
    stackid TEXT NOT NULL, iteration INTEGER NOT NULL, decision TEXT NOT NULL,
    operator TEXT, time TEXT, reason TEXT, d_xi REAL, d_eta REAL, prev_d_xi REAL,
    prev_d_eta REAL, n_used INTEGER, qa_flags INTEGER, xfm_id TEXT, transform TEXT,
    PRIMARY KEY (stackid, iteration))"""


@dataclass(frozen=True)
class QARecord:
    """One QA iteration."""

    stackid: str
    iteration: int
    decision: str
    operator: str
    time: str
    reason: str
    d_xi: float
    d_eta: float
    prev_d_xi: float
    prev_d_eta: float
    n_used: int
    qa_flags: int
    xfm_id: str
    transform: str


def default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def history_lines(rec: QARecord) -> list:
    """The HISTORY text of one iteration (each line <= 72 characters).  Pure."""
    head = (f"{HISTORY_PREFIX} {rec.iteration} {rec.time} operator={rec.operator} "
            f"decision={rec.decision}")
    body = (f'shift ({rec.prev_d_xi:+.4f}, {rec.prev_d_eta:+.4f})" -> '
            f'({rec.d_xi:+.4f}, {rec.d_eta:+.4f})" from {rec.n_used} pairs; '
            f"reason: {rec.reason or '-'}")
    return textwrap.wrap(head, 72) + ["  " + t for t in textwrap.wrap(body, 70)]


def qa_keywords(rec: QARecord) -> list:
    """(name, value, comment) of a decision.  Pure."""
    return [("QADECIS", rec.decision, "QA decision: accept, refit or reject"),
            ("QAITER", int(rec.iteration), "QA review iteration"),
            ("QAOPER", rec.operator, "QA operator"),
            ("QADATE", rec.time, "UTC time of the QA decision"),
            ("QANOTE", rec.reason, "")]


def earlier_history(header) -> list:
    """The QA HISTORY lines already in ``header`` (carried into a re-fitted transform)."""
    lines, inside = [], False
    for card in header.cards:
        if card.keyword != "HISTORY":
            continue
        text = str(card.value)
        if text.startswith(HISTORY_PREFIX):
            inside = True
        elif not text.startswith("  "):
            inside = False
        if inside:
            lines.append(text)
    return lines


def record_in_transform(path, rec: QARecord, params, *, carry=()) -> None:
    """Write the decision into the transform file ``path`` (rewritten atomically).

    ``carry``: earlier iterations' HISTORY lines to copy in first (a re-fitted transform
    carries the review's history).  ``params``: the tool's parameters, for its CIAO HISTORY.
    """
    from astropy.io import fits

    from stk_astrometry.fitsutil import set_keyword, write_fits

    with fits.open(path, memmap=False) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    for hdu in (hdul[0], hdul["STKXFM"]):
        h = hdu.header
        present = set(earlier_history(h))
        for line in carry:
            if line not in present:
                h.add_history(line)
        for name, value, comment in qa_keywords(rec):
            if name == "QANOTE":
                h[name] = (value, comment)     # long text: astropy writes CONTINUE cards
            else:
                set_keyword(h, name, value, comment)
        for line in history_lines(rec):
            h.add_history(line)
    write_fits(hdul, path, params, clobber=True)


def find_database(given, transform_path):
    """The campaign database to record in, or None.

    ``given``: a path, ``none`` (no database), or blank: ``campaign.sqlite`` in the transform
    file's folder or one of its three parent folders, if there is one.
    """
    text = "" if given is None else str(given).strip()
    if text.lower() == "none":
        return None
    if text:
        return Path(text)
    folder = Path(transform_path).resolve().parent
    for candidate in [folder, *list(folder.parents)[:3]]:
        if (candidate / DB_NAME).is_file():
            return candidate / DB_NAME
    return None


def record_in_database(db_path, rec: QARecord) -> bool:
    """Insert (or replace) the iteration's row; a warning, not an error, when it fails."""
    path = Path(db_path)
    if not path.is_file():
        logger.warning("campaign database %s does not exist: QA decision not recorded there",
                       path)
        return False
    try:
        conn = sqlite3.connect(str(path), timeout=30.0)
        try:
            with conn:
                conn.execute(_TABLE)
                conn.execute(
                    "INSERT OR REPLACE INTO qa_reviews VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (rec.stackid, rec.iteration, rec.decision, rec.operator, rec.time,
                     rec.reason, rec.d_xi, rec.d_eta, rec.prev_d_xi, rec.prev_d_eta,
                     rec.n_used, rec.qa_flags, rec.xfm_id, rec.transform))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        logger.warning("campaign database %s: QA decision not recorded: %s", path, exc)
        return False
    logger.info("Recorded QA iteration %d (%s) of %s in %s", rec.iteration, rec.decision,
                rec.stackid, path)
    return True


def database_rows(db_path) -> list:
    """Every ``qa_reviews`` row of a database, as dicts (empty without the table)."""
    conn = sqlite3.connect(str(db_path), timeout=30.0)
    try:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(
                "SELECT * FROM qa_reviews ORDER BY stackid, iteration")]
        except sqlite3.OperationalError:
            return []
    finally:
        conn.close()
