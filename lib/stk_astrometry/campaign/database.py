"""The run database of a campaign: one SQLite file (``campaign.sqlite``) in the campaign folder.

Written by the driver process only, always in transactions, so that a crash or ``kill -9`` at any
moment leaves the last committed state: a stack is either recorded as finished with all its
results, or it is not (and a resume runs it again).  Workers never open it.

Tables (``sqlite3 campaign.sqlite`` reads them):

``stacks``
    One row per stack: its inputs, the digests of its inputs and parameters, ``status``
    (``pending``, ``running``, ``done``, ``failed``), ``attempts``, the failed step and error,
    timings and the worker that ran it.
``steps``
    One row per stack and step (``match``, ``fit``, ``update``): status, parameters digest,
    wall time, error, and the step's whole result as JSON.
``results``
    One row per finished stack, typed: the campaign table's columns (per-group match counts as
    comma lists).
``warnings``
    Every warning a stack's steps emitted, naming the stack and step.
``runs``
    One row per ``stk_batch`` invocation: when, where, what it did.
``meta``
    Key/value: schema version, the step parameters.

Durability: WAL journal with ``synchronous=FULL``; a committed transaction survives a process
kill and a power cut.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..formats.campaign import _HEAD, _TAIL

__all__ = ["RunDatabase", "StackState", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
#: stack ids per query of :meth:`RunDatabase.states` and :meth:`RunDatabase.with_status`
#: (SQLite's limit on a statement's parameters is 999 in older builds)
_IDS_PER_QUERY = 500

_SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER"}
#: typed result columns (the campaign table's, with the group counts as text)
RESULT_COLUMNS = tuple(c for c in _HEAD + _TAIL if c.name != "stackid")
_GROUP_COLUMNS = ("n_match_gaia_group", "n_match_wise_group")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS stacks (
    stackid TEXT PRIMARY KEY, ord INTEGER,
    detfile TEXT, gaiafile TEXT, wisefile TEXT, bestnbfile TEXT, products TEXT,
    inputs_digest TEXT, params_digest TEXT,
    status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    failed_step TEXT, error TEXT, submitted REAL, finished REAL, elapsed_s REAL, worker TEXT,
    run_id INTEGER);
CREATE INDEX IF NOT EXISTS stacks_status ON stacks(status);
CREATE TABLE IF NOT EXISTS steps (
    stackid TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, params_digest TEXT,
    started REAL, elapsed_s REAL, error TEXT, result TEXT,
    PRIMARY KEY (stackid, step));
CREATE TABLE IF NOT EXISTS results (
    stackid TEXT PRIMARY KEY,
    {", ".join(f'"{c.name}" {_SQL_TYPES[c.kind]}' for c in RESULT_COLUMNS)},
    {", ".join(f"{n} TEXT" for n in _GROUP_COLUMNS)});
CREATE TABLE IF NOT EXISTS warnings (
    stackid TEXT NOT NULL, step TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS warnings_stack ON warnings(stackid);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL, finished REAL, host TEXT,
    version TEXT, command TEXT, scheduler TEXT, n_planned INTEGER, n_done INTEGER,
    n_failed INTEGER, n_skipped INTEGER, status TEXT);
"""


@dataclass(frozen=True)
class StackState:
    """What the database knows of a stack (for the resume decision)."""

    stackid: str
    status: str
    inputs_digest: str | None
    params_digest: str | None
    attempts: int


def _sql_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool):
        return int(value)
    return value


class RunDatabase:
    """The campaign's SQLite run database (see the module docstring).

    Parameters
    ----------
    path : path-like
        ``campaign.sqlite``; created with its schema when absent.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"run database {self.path}: {exc}") from exc
        if row is None:
            with self.transaction():
                self.conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise InputError(f"run database {self.path} has schema version {row[0]}; this "
                             f"stk_batch writes version {SCHEMA_VERSION}")

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ transactions

    class _Txn:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
            return False

    def transaction(self):
        """``with db.transaction() as conn:`` -- all or nothing."""
        return self._Txn(self.conn)

    # ------------------------------------------------------------------ meta and runs

    def set_meta(self, key: str, value) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def start_run(self, *, host, version, command, scheduler) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO runs (started, host, version, command, scheduler, status) "
                "VALUES (?, ?, ?, ?, ?, 'running')", (time.time(), host, version, command, scheduler))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, *, n_planned, n_done, n_failed, n_skipped, status) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET finished=?, n_planned=?, n_done=?, n_failed=?, n_skipped=?, "
                      "status=? WHERE run_id=?",
                      (time.time(), n_planned, n_done, n_failed, n_skipped, status, run_id))

    # ------------------------------------------------------------------ stacks

    def sync_stacks(self, stacks: Sequence) -> None:
        """Record the campaign's stacks (insert new ones, refresh paths and order).

        The stored digests are those of the last finished run and are not touched here.
        """
        with self.transaction() as c:
            # stacks no longer in the list keep their rows but leave the table (ord NULL)
            c.execute("UPDATE stacks SET ord=NULL")
            for i, s in enumerate(stacks):
                c.execute(
                    "INSERT INTO stacks (stackid, ord, detfile, gaiafile, wisefile, bestnbfile, "
                    "products) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(stackid) DO UPDATE SET "
                    "ord=excluded.ord, detfile=excluded.detfile, gaiafile=excluded.gaiafile, "
                    "wisefile=excluded.wisefile, bestnbfile=excluded.bestnbfile, "
                    "products=excluded.products",
                    (s.stackid, i, s.detfile, s.gaiafile, s.wisefile, s.bestnbfile, s.products))

    def states(self, stackids: Sequence[str] | None = None) -> dict[str, StackState]:
        """stackid -> :class:`StackState` of every stack, or of those of ``stackids`` that
        the database holds."""
        query = "SELECT stackid, status, inputs_digest, params_digest, attempts FROM stacks"
        return {r[0]: StackState(*r) for r in self._select(query, (), stackids)}

    def with_status(self, status: str, stackids: Sequence[str] | None = None) -> set[str]:
        """The ids of the stacks whose status is ``status`` (among ``stackids``, if given)."""
        return {r[0] for r in self._select("SELECT stackid FROM stacks WHERE status=?",
                                           (status,), stackids)}

    def _select(self, query, args, stackids):
        """The rows of ``query`` (without ``stackids``: all of them; with: those whose
        stackid is one of them, in queries of at most :data:`_IDS_PER_QUERY` ids)."""
        if stackids is None:
            yield from self.conn.execute(query, args)
            return
        where = " AND " if " WHERE " in query else " WHERE "
        ids = list(stackids)
        for i in range(0, len(ids), _IDS_PER_QUERY):
            part = ids[i:i + _IDS_PER_QUERY]
            yield from self.conn.execute(
                f"{query}{where}stackid IN ({','.join('?' * len(part))})", [*args, *part])

    def mark_submitted(self, stackids: Iterable[str], run_id: int) -> None:
        """Mark stacks running (attempts + 1) at once, in their own transaction."""
        now = time.time()
        with self.transaction() as c:
            self._mark(c, [(s, now) for s in stackids], run_id)

    @staticmethod
    def _mark(c, submitted, run_id):
        c.executemany(
            "UPDATE stacks SET status='running', attempts=attempts+1, submitted=?, run_id=? "
            "WHERE stackid=?", [(when, run_id, s) for s, when in submitted])

    def record(self, outcomes: Sequence[Mapping], *, submitted: Sequence = (),
               run_id: int | None = None) -> None:
        """Store finished stacks (each an outcome of :func:`campaign.task.run_stack`), atomically.

        ``submitted``: (stackid, time) of the stacks submitted since the last commit, marked
        running (attempts + 1) in the same transaction, before the outcomes (a stack's mark is
        always buffered before its outcome arrives).  Folding the marks into this commit is
        safe under a kill because a stack whose mark is lost keeps the status it had, and the
        driver marks a stack at once (:meth:`mark_submitted`) when that status is ``done``:
        every other status is rerun by a resume.  A kill can leave such a stack's
        ``attempts`` one short.
        """
        if not outcomes and not submitted:
            return
        now = time.time()
        names = [c.name for c in RESULT_COLUMNS] + list(_GROUP_COLUMNS)
        quoted = ", ".join(f'"{n}"' for n in names)
        insert_result = (f"INSERT OR REPLACE INTO results (stackid, {quoted}) "
                         f"VALUES ({', '.join('?' * (len(names) + 1))})")
        with self.transaction() as c:
            if submitted:
                self._mark(c, submitted, run_id)
            for out in outcomes:
                sid = out["stackid"]
                row = out["row"]
                c.execute(
                    "UPDATE stacks SET status=?, failed_step=?, error=?, finished=?, elapsed_s=?, "
                    "worker=?, inputs_digest=?, params_digest=? WHERE stackid=?",
                    (row["status"], row.get("failed_step") or None, row.get("error") or None, now,
                     out.get("elapsed_s"), out.get("worker"), out["inputs_digest"],
                     out["params_digest"], sid))
                c.execute("DELETE FROM steps WHERE stackid=?", (sid,))
                c.executemany(
                    "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(sid, st["step"], st["status"], st.get("params_digest"), st.get("started"),
                      st.get("elapsed_s"), st.get("error"),
                      json.dumps(st.get("result"), default=str, allow_nan=True))
                     for st in out["steps"]])
                c.execute("DELETE FROM warnings WHERE stackid=?", (sid,))
                c.executemany("INSERT INTO warnings VALUES (?, ?, ?)",
                              [(sid, step, msg) for step, msg in out["warnings"]])
                vals = [_sql_value(row.get(n)) for n in names[: len(RESULT_COLUMNS)]]
                vals += [",".join(str(int(v)) for v in row.get(g) or ()) for g in _GROUP_COLUMNS]
                c.execute(insert_result, [sid, *vals])

    # ------------------------------------------------------------------ reading back

    def result_rows(self) -> list[dict]:
        """Every stack's row for the campaign table, in the list's order (unfinished: pending)."""
        return [row for chunk in self.iter_result_rows() for row in chunk]

    def iter_result_rows(self, chunk: int = 1000):
        """:meth:`result_rows` in lists of at most ``chunk`` rows, read as they are needed, so
        that writing the table of a large campaign holds one chunk in memory, not every row."""
        names = [c.name for c in RESULT_COLUMNS] + list(_GROUP_COLUMNS)
        cols = ", ".join(f'r."{n}"' for n in names)
        sql = (f"SELECT s.stackid, s.status, s.attempts, {cols} "
               f"FROM stacks s LEFT JOIN results r ON r.stackid = s.stackid WHERE s.ord IS NOT NULL "
               f"ORDER BY s.ord")
        cursor = self.conn.execute(sql)
        while True:
            batch = cursor.fetchmany(chunk)
            if not batch:
                return
            out = []
            for rec in batch:
                sid, status, attempts, *vals = rec
                row = dict(zip(names, vals, strict=True))
                row["stackid"] = sid
                row["status"] = status if status in ("done", "failed") else "pending"
                row["attempts"] = attempts
                for g in _GROUP_COLUMNS:
                    text = row.pop(g) or ""
                    row[g] = tuple(int(x) for x in text.split(",") if x)
                out.append(row)
            yield out

    def max_groups(self) -> int:
        """The most separation groups any listed stack's Gaia match counts have (0: none)."""
        (n,) = self.conn.execute(
            "SELECT MAX(LENGTH(r.n_match_gaia_group) - LENGTH(REPLACE(r.n_match_gaia_group, ',', '')) "
            "+ 1) FROM stacks s JOIN results r ON r.stackid = s.stackid "
            "WHERE s.ord IS NOT NULL AND r.n_match_gaia_group <> ''").fetchone()
        return int(n or 0)

    def counts(self) -> dict[str, int]:
        return dict(self.conn.execute(
            "SELECT status, COUNT(*) FROM stacks WHERE ord IS NOT NULL GROUP BY status"))

    def warnings_of(self, stackid: str) -> list[tuple[str, str]]:
        return list(self.conn.execute(
            "SELECT step, message FROM warnings WHERE stackid=? ORDER BY rowid", (stackid,)))

    def n_warnings(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM warnings").fetchone()[0])
