"""The monitor's state: one SQLite database (the only sqlite3 user).

WAL mode, so `changedet monitor status` and `changedet review` can read while a run works; the
schema is migrated by version (`PRAGMA user_version`, one transaction per step); everything one
AOI's check changes is written in one `BEGIN IMMEDIATE` transaction (`State.commit_check`), so a
kill at any moment leaves the database as it was before that AOI or after it, never between.
Tables:

- `scenes`: every scene seen per AOI: processing baseline, `updated`, clear fraction around the
  AOI, outcome (used | skipped | unreadable | dropped | replaced) and reason, and the scene itself as
  JSON (so a run searches only the recent past and still knows every scene; an unreadable one is
  read again by the next run);
- `periods`: per AOI and period, the scenes it was computed from and the run that last did;
- `structures` + `structure_history`: the ledger (current status, review verdict) and every
  status change (candidate, confirmed, bermed, vanished, dropped, reviewed);
- `reviews`: every verdict an analyst gave (`changedet review`);
- `alerts` + `deliveries`: the outbox: one row per alert (idempotency key), one per channel;
- `runs` + `aoi_runs`: what each run did.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from changedet.errors import OutputError, UsageError

__all__ = [
    "LEDGER_TABLES",
    "SCHEMA_VERSION",
    "AlertRow",
    "CheckRecord",
    "DeliveryRow",
    "SceneRow",
    "State",
    "StructureRow",
    "emptied",
    "memo_bytes",
    "memo_folder",
]

_MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE aois (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        out_dir TEXT NOT NULL,
        last_acquired TEXT,
        outputs_review_seq INTEGER NOT NULL DEFAULT 0,
        outputs_run INTEGER
    );
    CREATE TABLE scenes (
        aoi_id TEXT NOT NULL,
        scene_id TEXT NOT NULL,
        acquired TEXT,
        processing_baseline TEXT,
        updated TEXT,
        clear_fraction REAL,
        outcome TEXT NOT NULL,
        reason TEXT,
        record TEXT,
        first_run INTEGER NOT NULL,
        PRIMARY KEY (aoi_id, scene_id)
    );
    CREATE TABLE periods (
        aoi_id TEXT NOT NULL,
        label TEXT NOT NULL,
        start TEXT NOT NULL,
        "end" TEXT NOT NULL,
        scene_ids TEXT NOT NULL,
        computed_run INTEGER NOT NULL,
        PRIMARY KEY (aoi_id, label)
    );
    CREATE TABLE structures (
        aoi_id TEXT NOT NULL,
        id TEXT NOT NULL,
        status TEXT NOT NULL,
        kind TEXT NOT NULL,
        confirmed INTEGER NOT NULL,
        bermed INTEGER,
        area_m2 REAL NOT NULL,
        confidence REAL NOT NULL,
        first_seen_start TEXT,
        first_seen_end TEXT,
        vanished_after TEXT,
        lat REAL,
        lon REAL,
        geometry TEXT,
        review TEXT,
        review_note TEXT,
        PRIMARY KEY (aoi_id, id)
    );
    CREATE TABLE structure_history (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        aoi_id TEXT NOT NULL,
        structure_id TEXT NOT NULL,
        change TEXT NOT NULL,
        previous TEXT,
        detail TEXT,
        run_id INTEGER,
        at TEXT NOT NULL
    );
    CREATE TABLE reviews (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        aoi_id TEXT NOT NULL,
        structure_id TEXT NOT NULL,
        verdict TEXT NOT NULL,
        note TEXT,
        at TEXT NOT NULL
    );
    CREATE TABLE alerts (
        key TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        aoi_id TEXT NOT NULL,
        structure_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        alert_key TEXT NOT NULL REFERENCES alerts(key),
        channel TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        delivered_at TEXT,
        PRIMARY KEY (alert_key, channel)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started TEXT NOT NULL,
        now TEXT NOT NULL,
        finished TEXT,
        outcome TEXT
    );
    CREATE TABLE aoi_runs (
        run_id INTEGER NOT NULL,
        aoi_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        new_scenes INTEGER NOT NULL DEFAULT 0,
        new_alerts INTEGER NOT NULL DEFAULT 0,
        message TEXT,
        PRIMARY KEY (run_id, aoi_id)
    );
    CREATE INDEX history_by_structure ON structure_history (aoi_id, structure_id);
    CREATE INDEX deliveries_pending ON deliveries (status);
    """,
    # 2: which outputs this ledger wrote (the SHA-256 of their run.json): outputs written since
    # by another ledger sharing the folder, or by `changedet run`, are written again
    """
    ALTER TABLE aois ADD COLUMN outputs_digest TEXT;
    """,
    # 3: a digest of the watch's setup (its AOI outline and effective config but the end) the
    # ledger was last computed with: an edited watch-list is computed again, not kept as it was
    """
    ALTER TABLE aois ADD COLUMN setup TEXT;
    """,
    # 4: why the AOI's last search stopped paging early (NULL: it did not): the next run
    # searches from the watch's start again, and every run says so until one is complete
    """
    ALTER TABLE aois ADD COLUMN search_stopped TEXT;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

# What "the ledger" means when a run must change nothing: these tables, byte for byte.
LEDGER_TABLES = ("scenes", "periods", "structures", "structure_history", "alerts")

# How long a writer waits for another (e.g. `changedet review` during a run) before giving up.
BUSY_TIMEOUT_S = 60.0


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SceneRow:
    scene_id: str
    acquired: str | None
    processing_baseline: str | None
    updated: str | None
    clear_fraction: float | None
    outcome: str  # "used" | "skipped" | "unreadable" | "dropped" | "replaced"
    reason: str | None
    record: Mapping[str, Any] | None  # the Scene as JSON (`monitor.scenes`), None for dropped ids


@dataclass(frozen=True)
class StructureRow:
    id: str
    status: str  # "candidate" | "confirmed" | "bermed" | "vanished" | "dropped"
    kind: str
    confirmed: bool
    bermed: bool | None
    area_m2: float
    confidence: float
    first_seen_start: str | None
    first_seen_end: str | None
    vanished_after: str | None
    lat: float | None
    lon: float | None
    geometry: str | None  # GeoJSON geometry, EPSG:4326
    review: str | None = None
    review_note: str | None = None


@dataclass(frozen=True)
class AlertRow:
    key: str
    aoi_id: str
    structure_id: str
    kind: str  # "new" | "bermed" | "vanished" | "withdrawn" | "reinstated"
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class DeliveryRow:
    alert: AlertRow
    channel: str
    attempts: int


@dataclass(frozen=True)
class HistoryEntry:
    structure_id: str
    change: str
    previous: str | None
    detail: str | None = None


@dataclass(frozen=True)
class CheckRecord:
    """Everything one AOI's check writes, in one transaction."""

    aoi_id: str
    aoi_name: str
    out_dir: str
    scenes: Sequence[SceneRow] = ()  # new or changed rows only
    periods: Sequence[tuple[str, str, str, tuple[str, ...]]] = ()  # label, start, end, scene ids
    structures: Sequence[StructureRow] = ()  # new or changed rows only
    history: Sequence[HistoryEntry] = ()
    alerts: Sequence[AlertRow] = ()
    channels: Sequence[str] = ()  # delivery channels configured now
    outputs_review_seq: int | None = None  # the review seq the written outputs show
    outputs_digest: str | None = None  # SHA-256 of the run.json of the outputs written
    setup: str | None = None  # the watch's setup they were computed with (`monitor.run`)


_STRUCTURE_COLUMNS = (
    "id",
    "status",
    "kind",
    "confirmed",
    "bermed",
    "area_m2",
    "confidence",
    "first_seen_start",
    "first_seen_end",
    "vanished_after",
    "lat",
    "lon",
    "geometry",
    "review",
    "review_note",
)


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


STATUS_ALERTS = ("bermed", "vanished")  # statuses an alert of their own tells


class State:
    """An open state database. Use as a context manager, or call `close()`."""

    def __init__(self, path: Path, *, empty_ok: bool = False, check: bool = False) -> None:
        """Open (or create) the database at `path`. A file emptied to 0 bytes is refused unless
        `empty_ok`: SQLite would take it for a new ledger, and opening writes its schema.
        `check`: read every page first (`PRAGMA quick_check`, about 1.4 s per 100 MB; a run
        does, status and review do not) and refuse a damaged database in one line."""
        self.path = Path(path)
        if not empty_ok and emptied(self.path):
            raise OutputError(
                f"state database '{self.path}' is empty (0 bytes): restore it from a backup, "
                "or delete it to start a new ledger"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._refuse_foreign()
            # Damaged pages were found only when a query reached them ("unexpected
            # DatabaseError"), and a run with nothing new exited 0 on them: checked here, once.
            found = [r[0] for r in self.db.execute("PRAGMA quick_check(1)")] if check else ["ok"]
            if found != ["ok"]:
                said = [x for r in found for x in str(r).splitlines() if not x.startswith("***")]
                raise sqlite3.DatabaseError(f"damaged: {'; '.join(said)[:200]}")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss too
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "unable to open" in str(exc):
                raise UsageError(  # the watch-list's `state` (or --state) names the wrong file
                    f"state database '{self.path}' cannot be used ({exc}); point the watch-list's "
                    "state (or --state) at the monitor's SQLite file, or at a new path"
                ) from None
            raise OutputError(
                f"state database '{self.path}' cannot be used ({exc}); restore it from a backup, "
                "or delete it to start a new ledger"
            ) from None
        except OSError as exc:
            raise OutputError(f"state database '{self.path}' cannot be created: {exc}") from None

    def _refuse_foreign(self) -> None:
        """Refuse, before writing anything, another program's SQLite file (tables, but never a
        changedet schema version): opening it would add changedet's tables to it."""
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        (tables,) = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if version == 0 and tables:
            self.db.close()
            raise UsageError(
                f"state database '{self.path}' is another program's SQLite file (it has tables "
                "but no changedet ledger); point the watch-list's state (or --state) at the "
                "monitor's SQLite file, or at a new path"
            )

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # --- schema -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"state database '{self.path}' has schema {version}, newer than this changedet "
                f"knows ({SCHEMA_VERSION}); upgrade changedet"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for statement in _MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {target}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT (ROLLBACK on any error). A full disk under the database
        is said as such (SQLite's "database or disk is full"), nothing of it committed."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
                raise OutputError(
                    f"the disk of the state database '{self.path}' is full (nothing of this "
                    "run's step was committed); free space there, then rerun"
                ) from None
            raise

    def integrity(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    # --- runs ---------------------------------------------------------------------------------

    def latest_now(self) -> datetime | None:
        """The latest clock a run of this ledger ran at (its `now`), None before the first."""
        rows = self.db.execute("SELECT now FROM runs").fetchall()
        return max((_aware(datetime.fromisoformat(r[0])) for r in rows), default=None)

    def begin_run(self, now: datetime) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (started, now) VALUES (?, ?)", (utc_now(), now.isoformat())
            )
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, outcome: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished = ?, outcome = ? WHERE id = ?",
                (utc_now(), outcome, run_id),
            )

    def abandon_run(self, run_id: int, *, interrupted: bool) -> None:
        """A run stopped before its end: kept as "interrupted" if it was interrupted (it may
        have committed an AOI it had not recorded yet) or wrote any ledger row; else (an error
        before any AOI, an unreachable scheduler say) forgotten, so a run that did nothing
        does not hold the ledger's clock (`latest_now`) or show in the history."""
        with self.transaction() as db:
            if interrupted or self._run_wrote(db, run_id):
                db.execute(
                    "UPDATE runs SET finished = ?, outcome = 'interrupted' WHERE id = ?",
                    (utc_now(), run_id),
                )
            else:
                db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    @staticmethod
    def _run_wrote(db: sqlite3.Connection, run_id: int) -> bool:
        """Whether any row of the ledger names the run: an AOI's check can be committed before
        it is recorded (a failure in between), and its rows must not point at no run."""
        return any(
            db.execute(f"SELECT 1 FROM {table} WHERE {column} = ? LIMIT 1", (run_id,)).fetchone()
            for table, column in (
                ("aoi_runs", "run_id"),
                ("alerts", "run_id"),
                ("structure_history", "run_id"),
                ("scenes", "first_run"),
                ("periods", "computed_run"),
                ("aois", "outputs_run"),
            )
        )

    def record_aoi_run(
        self,
        run_id: int,
        aoi_id: str,
        outcome: str,
        *,
        new_scenes: int = 0,
        new_alerts: int = 0,
        message: str | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO aoi_runs VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, aoi_id, outcome, new_scenes, new_alerts, message),
            )

    # --- reading ------------------------------------------------------------------------------

    def scenes(self, aoi_id: str) -> dict[str, SceneRow]:
        rows = self.db.execute(
            "SELECT scene_id, acquired, processing_baseline, updated, clear_fraction, outcome, "
            "reason, record FROM scenes WHERE aoi_id = ? ORDER BY scene_id",
            (aoi_id,),
        )
        return {
            r[0]: SceneRow(
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]) if r[7] else None
            )
            for r in rows
        }

    def structures(self, aoi_id: str) -> dict[str, StructureRow]:
        cols = ", ".join(f'"{c}"' for c in _STRUCTURE_COLUMNS)
        rows = self.db.execute(
            f"SELECT {cols} FROM structures WHERE aoi_id = ? ORDER BY id", (aoi_id,)
        )
        out = {}
        for r in rows:
            values = dict(zip(_STRUCTURE_COLUMNS, r, strict=True))
            values["confirmed"] = bool(values["confirmed"])
            values["bermed"] = _bool(values["bermed"])
            out[r[0]] = StructureRow(**values)
        return out

    def periods(self, aoi_id: str) -> dict[str, tuple[str, str, tuple[str, ...]]]:
        rows = self.db.execute(
            'SELECT label, start, "end", scene_ids FROM periods WHERE aoi_id = ?', (aoi_id,)
        )
        return {r[0]: (r[1], r[2], tuple(json.loads(r[3]))) for r in rows}

    def alerted(self, aoi_id: str) -> set[tuple[str, str]]:
        """(structure id, alert kind) of every alert ever made for the AOI, and (structure id,
        "bermed" / "vanished") where the structure's latest alert told that status: one alerted
        new and bermed, dropped by an outline edit and back, was alerted "bermed" again (and one
        reinstated as merely confirmed since is told "bermed" when it is)."""
        rows = self.db.execute(
            "SELECT structure_id, kind, json_extract(payload, '$.status') FROM alerts "
            "WHERE aoi_id = ? ORDER BY seq",
            (aoi_id,),
        )
        told: set[tuple[str, str]] = set()
        last: dict[str, str] = {}  # the status the latest alert of each structure told
        for structure_id, kind, status in rows:
            told.add((structure_id, kind))
            last[structure_id] = status
        return told | {(s, status) for s, status in last.items() if status in STATUS_ALERTS}

    def alerts(self, aoi_id: str) -> list[AlertRow]:
        rows = self.db.execute(
            "SELECT key, aoi_id, structure_id, kind, payload FROM alerts WHERE aoi_id = ? "
            "ORDER BY seq",
            (aoi_id,),
        )
        return [AlertRow(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def verdicts(self, aoi_id: str) -> dict[str, tuple[str, str | None]]:
        """structure id → (verdict, note): the latest verdict of each reviewed structure."""
        rows = self.db.execute(
            "SELECT structure_id, verdict, note FROM reviews WHERE aoi_id = ? ORDER BY seq",
            (aoi_id,),
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def review_seq(self, aoi_id: str) -> int:
        row = self.db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM reviews WHERE aoi_id = ?", (aoi_id,)
        ).fetchone()
        return int(row[0])

    def aoi(self, aoi_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT id, name, out_dir, last_acquired, outputs_review_seq, outputs_run, "
            "outputs_digest, setup, search_stopped FROM aois WHERE id = ?",
            (aoi_id,),
        ).fetchone()
        if row is None:
            return None
        keys = (
            "id",
            "name",
            "out_dir",
            "last_acquired",
            "outputs_review_seq",
            "outputs_run",
            "outputs_digest",
            "setup",
            "search_stopped",
        )
        return dict(zip(keys, row, strict=True))

    def note_search(self, aoi_id: str, name: str, out_dir: str, stopped: str | None) -> None:
        """Keep why the AOI's search stopped paging early (None: it did not), when it changed."""
        row = self.aoi(aoi_id)
        if (row["search_stopped"] if row is not None else None) == stopped:
            return
        with self.transaction() as db:
            db.execute(
                "INSERT INTO aois (id, name, out_dir, search_stopped) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET search_stopped = excluded.search_stopped",
                (aoi_id, name, out_dir, stopped),
            )

    def pending(self) -> list[DeliveryRow]:
        rows = self.db.execute(
            "SELECT a.key, a.aoi_id, a.structure_id, a.kind, a.payload, d.channel, d.attempts "
            "FROM deliveries d JOIN alerts a ON a.key = d.alert_key "
            "WHERE d.status = 'pending' ORDER BY a.seq, d.channel"
        )
        return [
            DeliveryRow(AlertRow(r[0], r[1], r[2], r[3], json.loads(r[4])), r[5], r[6])
            for r in rows
        ]

    def table_rows(self, table: str, aoi_id: str | None = None) -> list[tuple[Any, ...]]:
        """Every row of one table in a fixed order (for status, comparisons and tests)."""
        if table not in (*LEDGER_TABLES, "reviews", "deliveries", "runs", "aoi_runs", "aois"):
            raise ValueError(table)
        where = " WHERE aoi_id = ?" if aoi_id is not None and table != "deliveries" else ""
        args: tuple[Any, ...] = (aoi_id,) if where else ()
        return list(self.db.execute(f"SELECT * FROM {table}{where} ORDER BY 1, 2", args))

    # --- writing ------------------------------------------------------------------------------

    def commit_check(
        self, run_id: int, record: CheckRecord | Callable[[], CheckRecord]
    ) -> CheckRecord:
        """Everything one AOI's check changed, in one transaction. `record` may be a function
        that makes it within the transaction: what it reads then (the verdicts) cannot change
        before the commit, as a review made while the run computed would. Returns the record."""
        at = utc_now()
        with self.transaction() as db:
            if callable(record):
                record = record()
            db.execute(
                "INSERT INTO aois (id, name, out_dir) VALUES (?, ?, ?) ON CONFLICT(id) DO "
                "UPDATE SET name = excluded.name, out_dir = excluded.out_dir",
                (record.aoi_id, record.aoi_name, record.out_dir),
            )
            self._write_scenes(db, run_id, record)
            self._write_periods(db, run_id, record)
            self._write_structures(db, record)
            db.executemany(
                "INSERT INTO structure_history (aoi_id, structure_id, change, previous, detail, "
                "run_id, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (record.aoi_id, h.structure_id, h.change, h.previous, h.detail, run_id, at)
                    for h in record.history
                ],
            )
            self._write_alerts(db, run_id, record)
            if record.outputs_review_seq is not None:
                db.execute(
                    "UPDATE aois SET outputs_review_seq = ?, outputs_run = ?, outputs_digest = ?, "
                    "setup = ? WHERE id = ?",
                    (
                        record.outputs_review_seq,
                        run_id,
                        record.outputs_digest,
                        record.setup,
                        record.aoi_id,
                    ),
                )
            db.execute(
                "UPDATE aois SET last_acquired = (SELECT MAX(acquired) FROM scenes WHERE "
                "aoi_id = ? AND outcome IN ('used', 'skipped', 'unreadable')) WHERE id = ?",
                (record.aoi_id, record.aoi_id),
            )
        return record

    def _write_scenes(self, db: sqlite3.Connection, run_id: int, record: CheckRecord) -> None:
        db.executemany(
            "INSERT INTO scenes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(aoi_id, "
            "scene_id) DO UPDATE SET acquired = excluded.acquired, processing_baseline = "
            "excluded.processing_baseline, updated = excluded.updated, clear_fraction = "
            "excluded.clear_fraction, outcome = excluded.outcome, reason = excluded.reason, "
            "record = excluded.record",
            [
                (
                    record.aoi_id,
                    s.scene_id,
                    s.acquired,
                    s.processing_baseline,
                    s.updated,
                    s.clear_fraction,
                    s.outcome,
                    s.reason,
                    None if s.record is None else json.dumps(s.record, sort_keys=True),
                    run_id,
                )
                for s in record.scenes
            ],
        )

    def _write_periods(self, db: sqlite3.Connection, run_id: int, record: CheckRecord) -> None:
        stored = self.periods(record.aoi_id)
        for label, start, end, scene_ids in record.periods:
            if stored.get(label) == (start, end, tuple(scene_ids)):
                continue  # not touched by this run
            db.execute(
                "INSERT OR REPLACE INTO periods VALUES (?, ?, ?, ?, ?, ?)",
                (record.aoi_id, label, start, end, json.dumps(list(scene_ids)), run_id),
            )

    def _write_structures(self, db: sqlite3.Connection, record: CheckRecord) -> None:
        cols = ", ".join(f'"{c}"' for c in _STRUCTURE_COLUMNS)
        marks = ", ".join("?" for _ in _STRUCTURE_COLUMNS)
        db.executemany(
            f"INSERT OR REPLACE INTO structures (aoi_id, {cols}) VALUES (?, {marks})",
            [
                (record.aoi_id, *(getattr(s, c) for c in _STRUCTURE_COLUMNS))
                for s in record.structures
            ],
        )

    def _write_alerts(self, db: sqlite3.Connection, run_id: int, record: CheckRecord) -> None:
        row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM alerts").fetchone()
        seq = int(row[0])
        for alert in record.alerts:
            seq += 1
            cur = db.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    alert.key,
                    seq,
                    alert.aoi_id,
                    alert.structure_id,
                    alert.kind,
                    run_id,
                    json.dumps(alert.payload, sort_keys=True),
                ),
            )
            if cur.rowcount:
                db.executemany(
                    "INSERT OR IGNORE INTO deliveries (alert_key, channel, status) "
                    "VALUES (?, ?, 'pending')",
                    [(alert.key, channel) for channel in record.channels],
                )

    def mark_delivery(
        self, key: str, channel: str, *, delivered: bool, attempts: int, error: str | None
    ) -> None:
        """One delivery's outcome, committed at once (a delivered alert is never sent again). A
        failure leaves a delivery cancelled meanwhile (a false positive reviewed while it was
        being sent) cancelled: it must not come back for the next run."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + ?, last_error = ?, "
                "delivered_at = ? WHERE alert_key = ? AND channel = ?"
                + ("" if delivered else " AND status = 'pending'"),
                (
                    "delivered" if delivered else "pending",
                    attempts,
                    error,
                    utc_now() if delivered else None,
                    key,
                    channel,
                ),
            )

    def still_pending(self, key: str, channel: str) -> bool:
        """Whether a delivery listed at the start of the run is still to be sent (a review may
        have cancelled it since)."""
        row = self.db.execute(
            "SELECT status FROM deliveries WHERE alert_key = ? AND channel = ?", (key, channel)
        ).fetchone()
        return row is not None and row[0] == "pending"

    def add_review(self, aoi_id: str, structure_id: str, verdict: str, note: str | None) -> str:
        """Record a verdict, its history entry and, for a false positive, cancel its pending
        deliveries (it never alerts again; another verdict later restores them). Returns the
        structure's status."""
        at = utc_now()
        with self.transaction() as db:
            row = db.execute(
                "SELECT review, status FROM structures WHERE aoi_id = ? AND id = ?",
                (aoi_id, structure_id),
            ).fetchone()
            if row is None:
                raise UsageError(self._unknown(aoi_id, structure_id))
            db.execute(
                "INSERT INTO reviews (aoi_id, structure_id, verdict, note, at) VALUES (?, ?, ?, ?, ?)",
                (aoi_id, structure_id, verdict, note, at),
            )
            db.execute(
                "UPDATE structures SET review = ?, review_note = ? WHERE aoi_id = ? AND id = ?",
                (verdict, note, aoi_id, structure_id),
            )
            db.execute(
                "INSERT INTO structure_history (aoi_id, structure_id, change, previous, detail, "
                "run_id, at) VALUES (?, ?, 'reviewed', ?, ?, NULL, ?)",
                (aoi_id, structure_id, row[0], verdict + (f": {note}" if note else ""), at),
            )
            # A false positive's pending deliveries are cancelled; a later verdict that takes
            # it back restores them (only a false-positive verdict cancels), so none is lost.
            cancel = verdict == "false-positive"
            db.execute(
                "UPDATE deliveries SET status = ? WHERE status = ? AND alert_key IN "
                "(SELECT key FROM alerts WHERE aoi_id = ? AND structure_id = ?)",
                (
                    "cancelled" if cancel else "pending",
                    "pending" if cancel else "cancelled",
                    aoi_id,
                    structure_id,
                ),
            )
        return str(row[1])

    def _unknown(self, aoi_id: str, structure_id: str) -> str:
        import difflib

        ids = [
            r[0] for r in self.db.execute("SELECT id FROM structures WHERE aoi_id = ?", (aoi_id,))
        ]
        if not ids:
            aois = [r[0] for r in self.db.execute("SELECT id FROM aois ORDER BY id")]
            return (
                f"no AOI '{aoi_id}' with structures in {self.path} (AOIs: "
                f"{', '.join(aois) or 'none yet'}); run `changedet monitor run` first"
            )
        close = difflib.get_close_matches(structure_id, ids, n=1)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else "its ids are the `id` column of its structures.csv and the report's table"
        )
        return f"AOI '{aoi_id}' has no structure '{structure_id}'; {hint}"

    def unwatched_setups(self, watched: Sequence[str]) -> dict[str, str]:
        """The setup digest of every ledger `watched` does not name (and that kept one)."""
        names = set(watched)
        rows = self.db.execute("SELECT id, setup FROM aois WHERE setup IS NOT NULL")
        return {aoi: setup for aoi, setup in rows if aoi not in names}

    def rename_aoi(self, old: str, new: str, out_dir: str) -> None:
        """Carry `old`'s ledger over to `new` (an AOI whose id was changed), in one transaction:
        scenes, periods, structures and their history, reviews and alerts (their keys kept, so a
        receiver still tells them apart). The runs it took part in stay under `old`."""
        with self.transaction() as db:
            db.execute("UPDATE aois SET id = ?, out_dir = ? WHERE id = ?", (new, out_dir, old))
            for table in _AOI_TABLES:
                db.execute(f"UPDATE {table} SET aoi_id = ? WHERE aoi_id = ?", (new, old))
            # What an alert says (alerts.geojson, those still to deliver) names the AOI too.
            rows = db.execute("SELECT key, payload FROM alerts WHERE aoi_id = ?", (new,))
            db.executemany(
                "UPDATE alerts SET payload = ? WHERE key = ?",
                [
                    (json.dumps({**json.loads(text), "aoi": new}), key)
                    for key, text in rows.fetchall()
                ],
            )

    def split_channel(self, old: str, new: Sequence[str]) -> None:
        """The pending deliveries on channel `old` (an older state's one "smtp" for every
        recipient) as one per channel of `new` (one per recipient), in one transaction."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT alert_key, attempts FROM deliveries WHERE channel = ? AND status = 'pending'",
                (old,),
            ).fetchall()
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (alert_key, channel, status, attempts) "
                "VALUES (?, ?, 'pending', ?)",
                [(key, channel, attempts) for key, attempts in rows for channel in new],
            )
            db.execute("DELETE FROM deliveries WHERE channel = ? AND status = 'pending'", (old,))

    # --- status -------------------------------------------------------------------------------

    def unwatched(self, watched: Sequence[str]) -> dict[str, int]:
        """AOIs with structures in the ledger that `watched` does not name (taken out of the
        watch-list, or renamed as their outline or settings were edited: a new id then starts a
        new ledger), with their structure counts."""
        rows = self.db.execute("SELECT aoi_id, COUNT(*) FROM structures GROUP BY aoi_id")
        names = set(watched)
        return {aoi: n for aoi, n in rows if aoi not in names}

    def summary(self, aoi_id: str) -> dict[str, Any]:
        """What `changedet monitor status` shows for one AOI."""
        db = self.db
        last = db.execute(
            "SELECT r.id, r.started, r.now, ar.outcome, ar.new_scenes, ar.new_alerts, ar.message "
            "FROM aoi_runs ar JOIN runs r ON r.id = ar.run_id WHERE ar.aoi_id = ? "
            "ORDER BY r.id DESC LIMIT 1",
            (aoi_id,),
        ).fetchone()
        counts = dict(
            db.execute(
                "SELECT status, COUNT(*) FROM structures WHERE aoi_id = ? AND "
                "COALESCE(review, '') != 'false-positive' GROUP BY status",
                (aoi_id,),
            ).fetchall()
        )
        reviews = dict(
            db.execute(
                "SELECT review, COUNT(*) FROM structures WHERE aoi_id = ? AND review IS NOT NULL "
                "GROUP BY review",
                (aoi_id,),
            ).fetchall()
        )
        pending = db.execute(
            "SELECT COUNT(*) FROM deliveries d JOIN alerts a ON a.key = d.alert_key WHERE "
            "a.aoi_id = ? AND d.status = 'pending'",
            (aoi_id,),
        ).fetchone()[0]
        scenes = db.execute(
            "SELECT SUM(outcome = 'used'), MAX(acquired), SUM(outcome = 'unreadable') FROM "
            "scenes WHERE aoi_id = ? AND outcome IN ('used', 'skipped', 'unreadable')",
            (aoi_id,),
        ).fetchone()
        n_alerts = db.execute("SELECT COUNT(*) FROM alerts WHERE aoi_id = ?", (aoi_id,)).fetchone()
        return {
            "aoi": aoi_id,
            "last_run": None
            if last is None
            else {
                "run": last[0],
                "started": last[1],
                "now": last[2],
                "outcome": last[3],
                "new_scenes": last[4],
                "new_alerts": last[5],
                "message": last[6],
            },
            "scenes_used": scenes[0] or 0,
            "scenes_unreadable": scenes[2] or 0,  # read again by every run until they read
            "last_scene": scenes[1],
            "structures": counts,
            "reviews": reviews,
            "alerts": n_alerts[0],
            "pending_deliveries": pending,
        }


# Every table whose rows belong to one AOI's ledger, by its `aoi_id`.
_AOI_TABLES = (
    "scenes",
    "periods",
    "structures",
    "structure_history",
    "reviews",
    "alerts",
)


def emptied(path: Path) -> bool:
    """`path` is a file of 0 bytes: SQLite writes its header when the database is created."""
    try:
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False  # State says what is wrong with it


def _aware(when: datetime) -> datetime:
    """`when` with a time zone: UTC when it has none."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def memo_folder(state: Path, aoi_id: str) -> Path:
    """Where an AOI's period cache (`monitor.memo`) lies: beside the state database."""
    return state.with_name(state.name + ".periods") / aoi_id


def memo_bytes(state: Path, aoi_id: str) -> int:
    """The disk an AOI's period cache takes (0 when there is none)."""
    folder = memo_folder(state, aoi_id)
    total = 0
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total
