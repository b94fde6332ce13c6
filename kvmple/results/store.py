"""The results store: SQLite by default (a file, no server), PostgreSQL by URL.

One ``Store`` class speaks to either through a tiny ``_Db`` adapter (placeholders,
transactions, error mapping). Every write is one transaction: a run is stored whole or not
at all, so a crash mid-write or two concurrent campaigns never corrupt the store.

    with open_store(None) as store:           # paths.data_dir()/results.sqlite
        store.create_campaign(meta)
        store.add_run(run)                    # refuses a duplicate (campaign_id, run_key)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from kvmple import paths
from kvmple.errors import StoreError
from kvmple.results.records import CAMPAIGN_STATUSES, CampaignMeta, RunRecord
from kvmple.results.schema import LATEST, MIGRATIONS
from kvmple.results.sqlitewal import switch_to_wal

LIST_HINT = "see the campaigns in the store with 'kvmple results list'"


class DuplicateRun(StoreError):
    """A run with this (campaign_id, run_key) is already stored."""


def default_url() -> str:
    return sqlite_url(paths.data_dir() / "results.sqlite")


def sqlite_url(path: Path) -> str:
    """sqlite:///abs/path (three slashes, then the absolute path without its leading one)."""
    return "sqlite:///" + str(path.resolve()).lstrip("/")


def sqlite_path(url: str) -> Path:
    """The file of a sqlite:/// URL; sqlite:////abs/path (SQLAlchemy's spelling) works too."""
    return Path("/" + url.removeprefix("sqlite://").lstrip("/"))


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class _Db(Protocol):
    url: str

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...
    def is_duplicate(self, exc: BaseException) -> bool: ...
    def close(self) -> None: ...


class _Sqlite:
    """SQLite in WAL mode: readers never block the writer; writers queue (busy timeout)."""

    def __init__(self, path: Path, busy_timeout: float = 60.0) -> None:
        self.url = sqlite_url(path)
        if not path.parent.is_dir():
            raise StoreError(
                f"results store {self.url}: directory {path.parent} does not exist",
                hint="create it, or pass another --db URL",
            )
        self.busy_timeout = busy_timeout
        try:
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE) below
            self.conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
            switch_to_wal(self.conn, path, busy_timeout)
            # FULL: a committed run survives a host crash or power loss, not only a kill
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except StoreError:
            self.conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"results store {self.url} cannot be opened: {exc}",
                hint="is it a kvmple results store? pass another --db URL",
            ) from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, params).fetchall())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front so two writers queue instead of deadlocking
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def close(self) -> None:
        self.conn.close()


class _Postgres:
    """PostgreSQL through psycopg 3 (optional dependency: pip install kvmple[postgres])."""

    def __init__(self, url: str, connect_timeout: int = 10) -> None:
        self.url = redact(url)
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - psycopg is a test dependency
            raise StoreError(
                "a postgresql:// store needs psycopg", hint="pip install 'kvmple[postgres]'"
            ) from exc
        self._psycopg = psycopg
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"results store {self.url}: cannot connect: {detail}",
                hint="check the server, user, password and database in the URL",
            ) from exc

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(self._sql(sql), params).fetchall())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(sql), list(rows))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)

    def close(self) -> None:
        self.conn.close()


def _connect(url: str | None) -> _Db:
    url = url or default_url()
    if url.startswith("sqlite:///"):
        return _Sqlite(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        return _Postgres(url)
    raise StoreError(
        f"unsupported results store URL {redact(url)!r}",
        hint="use sqlite:///ABSOLUTE/PATH or postgresql://user:password@host/db",
    )


class Store:
    """Campaigns and their runs, in SQLite or PostgreSQL. Use as a context manager."""

    def __init__(self, db: _Db) -> None:
        self._db = db
        self.url = db.url

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self, what: str) -> Iterator[None]:
        try:
            with self._db.transaction():
                yield
        except StoreError:
            raise
        except Exception as exc:
            if self._db.is_duplicate(exc):
                raise DuplicateRun(
                    f"results store {self.url}: {what}: the key is already stored",
                    hint="campaign ids are unique in a store, run keys in a campaign",
                ) from exc
            raise StoreError(
                f"results store {self.url}: {what} failed: {_first_line(exc)}",
                hint="is the store reachable and writable? nothing was written",
            ) from exc

    def _schema_current(self) -> int:
        try:
            rows = self._db.query("SELECT version FROM kvmple_schema")
        except Exception:
            return 0  # no schema yet (or not a store: migrate() then says so)
        return int(rows[0][0]) if rows else 0

    def schema_version(self) -> int:
        rows = self._safe_query(
            "SELECT version FROM kvmple_schema", what="reading the schema version"
        )
        return int(rows[0][0]) if rows else 0

    def migrate(self, upto: int = LATEST) -> None:
        """Bring the schema to ``upto`` (default: the latest), one transaction."""
        with self._write("creating/upgrading the schema"):
            self._lock_for_migration()
            self._db.execute("CREATE TABLE IF NOT EXISTS kvmple_schema (version INTEGER NOT NULL)")
            rows = self._db.query("SELECT version FROM kvmple_schema")
            current = int(rows[0][0]) if rows else 0
            if current > LATEST:
                raise StoreError(
                    f"results store {self.url} has schema version {current}, newer than this "
                    f"kvmple supports ({LATEST})",
                    hint="upgrade kvmple, or use another --db URL",
                )
            for migration in MIGRATIONS:
                if current < migration.version <= upto:
                    for statement in migration.statements:
                        self._db.execute(statement)
                    current = migration.version
            if rows:
                self._db.execute("UPDATE kvmple_schema SET version = ?", (current,))
            else:
                self._db.execute("INSERT INTO kvmple_schema (version) VALUES (?)", (current,))

    def _lock_for_migration(self) -> None:
        if isinstance(self._db, _Postgres):
            # serialise concurrent first opens; SQLite's BEGIN IMMEDIATE already does
            self._db.execute("SELECT pg_advisory_xact_lock(7011)")

    def _safe_query(
        self, sql: str, params: Sequence[Any] = (), *, what: str
    ) -> list[tuple[Any, ...]]:
        try:
            return self._db.query(sql, params)
        except Exception as exc:
            raise StoreError(
                f"results store {self.url}: {what} failed: {_first_line(exc)}",
                hint="is this a kvmple results store? (it is created by the first campaign)",
            ) from exc

    # -- campaigns -----------------------------------------------------------------------

    def create_campaign(self, meta: CampaignMeta) -> None:
        """Store a new campaign; its id must not exist yet."""
        try:
            with self._write(f"creating campaign {meta.id}"):
                self._db.execute(
                    "INSERT INTO campaigns (id, name, created, status, record) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (meta.id, meta.name, meta.created, meta.status, meta.model_dump_json()),
                )
        except DuplicateRun as exc:
            raise StoreError(
                f"campaign {meta.id} already exists in {self.url}",
                hint="campaign ids are unique; continue it with 'kvmple run --resume ID'",
            ) from exc

    def set_status(self, campaign_id: str, status: str) -> None:
        """Mark a campaign running|interrupted|complete|failed."""
        if status not in CAMPAIGN_STATUSES:
            raise StoreError(
                f"unknown campaign status {status!r}", hint=f"one of {', '.join(CAMPAIGN_STATUSES)}"
            )
        self.campaign(campaign_id)
        with self._write(f"setting the status of campaign {campaign_id}"):
            self._db.execute("UPDATE campaigns SET status = ? WHERE id = ?", (status, campaign_id))

    def campaign(self, campaign_id: str) -> CampaignMeta:
        """The campaign with this exact id; StoreError if there is none."""
        rows = self._safe_query(
            "SELECT record, status FROM campaigns WHERE id = ?",
            (campaign_id,),
            what=f"reading campaign {campaign_id}",
        )
        if not rows:
            raise StoreError(f"no campaign {campaign_id!r} in {self.url}", hint=LIST_HINT)
        return _meta(rows[0][0], rows[0][1])

    def campaigns(self) -> list[CampaignMeta]:
        """All campaigns, oldest first."""
        rows = self._safe_query(
            "SELECT record, status FROM campaigns ORDER BY created, id", what="listing campaigns"
        )
        return [_meta(record, status) for record, status in rows]

    def resolve(self, ref: str | None) -> CampaignMeta:
        """A campaign by exact id, unique id prefix, or None/'latest' for the newest."""
        if ref in (None, "latest"):
            rows = self._safe_query(
                "SELECT record, status FROM campaigns ORDER BY created DESC, id DESC LIMIT 1",
                what="finding the latest campaign",
            )
            if not rows:
                raise StoreError(
                    f"no campaigns in {self.url} yet",
                    hint="run one with 'kvmple run PLAYBOOK', or pass --db URL of another store",
                )
            return _meta(rows[0][0], rows[0][1])
        assert ref is not None
        rows = self._safe_query(
            "SELECT record, status FROM campaigns WHERE id = ?",
            (ref,),
            what=f"reading campaign {ref}",
        )
        if rows:
            return _meta(rows[0][0], rows[0][1])
        matches = [c for c in self.campaigns() if c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(c.id for c in matches[:5])
            raise StoreError(f"campaign id prefix {ref!r} is ambiguous ({ids})", hint=LIST_HINT)
        raise StoreError(f"no campaign {ref!r} in {self.url}", hint=LIST_HINT)

    # -- runs ----------------------------------------------------------------------------

    def add_run(self, run: RunRecord) -> None:
        """Store one run atomically; refuses a duplicate (campaign_id, run_key)."""
        self.add_runs([run])

    def add_runs(self, runs: Sequence[RunRecord]) -> None:
        """Store runs in one transaction: all of them or none."""
        if not runs:
            return
        for campaign_id in sorted({r.campaign_id for r in runs}):
            self.campaign(campaign_id)
        rows = [
            (r.campaign_id, r.run_key, r.run_index, r.status, r.started, r.model_dump_json())
            for r in runs
        ]
        try:
            with self._write(f"storing {len(rows)} run(s)"):
                self._db.executemany(
                    "INSERT INTO runs (campaign_id, run_key, run_index, status, started, record) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except DuplicateRun as exc:
            keys = ", ".join(r.run_key for r in runs[:3])
            raise DuplicateRun(
                f"run {keys}{' ...' if len(runs) > 3 else ''} of campaign {runs[0].campaign_id} "
                "is already stored; nothing was written",
                hint="a run key is unique per campaign (a resumed campaign skips stored runs)",
            ) from exc

    def run_keys(self, campaign_id: str) -> set[str]:
        """Keys of the runs stored for a campaign (what a resume skips)."""
        rows = self._safe_query(
            "SELECT run_key FROM runs WHERE campaign_id = ?",
            (campaign_id,),
            what=f"reading run keys of {campaign_id}",
        )
        return {str(r[0]) for r in rows}

    def runs(self, campaign_id: str) -> list[RunRecord]:
        """All runs of a campaign (failed ones included), in start order."""
        self.campaign(campaign_id)
        rows = self._safe_query(
            "SELECT record FROM runs WHERE campaign_id = ? ORDER BY started, run_key",
            (campaign_id,),
            what=f"reading runs of {campaign_id}",
        )
        return [_run(r[0]) for r in rows]

    def run_counts(self) -> dict[str, tuple[int, int]]:
        """campaign id -> (ok runs, failed runs)."""
        rows = self._safe_query(
            "SELECT campaign_id, status, COUNT(*) FROM runs GROUP BY campaign_id, status",
            what="counting runs",
        )
        counts: dict[str, tuple[int, int]] = {}
        for campaign_id, status, count in rows:
            ok, failed = counts.get(campaign_id, (0, 0))
            counts[campaign_id] = (ok + count, failed) if status == "ok" else (ok, failed + count)
        return counts

    # -- merging (import) ---------------------------------------------------------------

    def plan_merge(self, meta: CampaignMeta, runs: Sequence[RunRecord]) -> list[RunRecord]:
        """The runs a merge would add; StoreError if the campaign or a run conflicts.

        A campaign with the same id must be the same experiment (same playbook hash); a run
        with a stored key must be identical.
        """
        known = {c.id: c for c in self.campaigns()}
        existing: dict[str, str] = {}
        if meta.id in known:
            if known[meta.id].playbook_hash != meta.playbook_hash:
                raise StoreError(
                    f"campaign {meta.id} exists in {self.url} with another playbook "
                    f"(hash {known[meta.id].playbook_hash[:12]} vs {meta.playbook_hash[:12]})",
                    hint="these are different experiments that share an id; nothing was imported",
                )
            rows = self._safe_query(
                "SELECT run_key, record FROM runs WHERE campaign_id = ?",
                (meta.id,),
                what="reading stored runs",
            )
            existing = {str(k): str(v) for k, v in rows}
        new: list[RunRecord] = []
        for run in runs:
            if run.campaign_id != meta.id:
                raise StoreError(
                    f"run {run.run_key} belongs to campaign {run.campaign_id}, not {meta.id}",
                    hint="the import file is inconsistent; nothing was imported",
                )
            stored = existing.get(run.run_key)
            if stored is None:
                new.append(run)
            elif _run(stored) != run:
                raise StoreError(
                    f"run {run.run_key} of campaign {meta.id} differs from the stored one",
                    hint="the same run key with different figures; nothing was imported",
                )
        return new

    def merge(self, meta: CampaignMeta, runs: Sequence[RunRecord]) -> tuple[int, int]:
        """Merge a campaign copied from elsewhere: (runs added, identical runs skipped).
        Refuses conflicts (see ``plan_merge``) before writing anything."""
        new = self.plan_merge(meta, runs)
        exists = any(c.id == meta.id for c in self.campaigns())
        with self._write(f"importing campaign {meta.id}"):
            if not exists:
                self._db.execute(
                    "INSERT INTO campaigns (id, name, created, status, record) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (meta.id, meta.name, meta.created, meta.status, meta.model_dump_json()),
                )
            if new:
                self._db.executemany(
                    "INSERT INTO runs (campaign_id, run_key, run_index, status, started, record) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.campaign_id,
                            r.run_key,
                            r.run_index,
                            r.status,
                            r.started,
                            r.model_dump_json(),
                        )
                        for r in new
                    ],
                )
        return len(new), len(runs) - len(new)


def _meta(record: str, status: str) -> CampaignMeta:
    try:
        data = json.loads(record)
        data["status"] = status  # the column is authoritative (set_status updates it)
        return CampaignMeta.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise StoreError(
            f"a stored campaign record is unreadable: {exc}",
            hint="the store may have been written by a newer kvmple",
        ) from exc


def _run(record: str) -> RunRecord:
    try:
        return RunRecord.model_validate_json(record)
    except ValidationError as exc:
        raise StoreError(
            f"a stored run record is unreadable: {exc.errors()[0]['msg']}",
            hint="the store may have been written by a newer kvmple",
        ) from exc


def open_store(url: str | None = None, *, create: bool = True) -> Store:
    """Open (and create/upgrade) the store at ``url``; None -> the default SQLite file.

    With ``create=False`` a store that does not exist yet is an error (for read-only
    commands, so a typo in --db does not silently create an empty store).
    """
    if not create and (url is None or url.startswith("sqlite:///")):
        path = sqlite_path(url or default_url())
        if not path.exists():
            raise StoreError(
                f"no results store at {path}",
                hint="run a campaign first ('kvmple run PLAYBOOK') or pass --db URL",
            )
    store = Store(_connect(url))
    try:
        if store._schema_current() != LATEST:
            store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
