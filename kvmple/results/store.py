"""The results store: SQLite by default (a file, no server), PostgreSQL by URL.

One ``Store`` class speaks to either through a tiny ``Db`` adapter (kvmple.results.db:
placeholders, transactions, error mapping). Every write is one transaction: a run is stored
whole or not at all, so a crash mid-write or two concurrent campaigns never corrupt the store.

    with open_store(None) as store:           # paths.data_dir()/results.sqlite
        store.create_campaign(meta)
        store.add_run(run)                    # refuses a duplicate (campaign_id, run_key)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from pydantic import JsonValue, ValidationError

from kvmple.errors import StoreError
from kvmple.results.db import (
    Db,
    Postgres,
    connect,
    default_url,
    redact,
    sqlite_path,
    sqlite_url,
)
from kvmple.results.records import CAMPAIGN_STATUSES, CampaignMeta, RunRecord
from kvmple.results.schema import LATEST, MIGRATIONS

__all__ = [
    "DuplicateRun",
    "Store",
    "default_url",
    "open_store",
    "redact",
    "sqlite_path",
    "sqlite_url",
]

LIST_HINT = "see the campaigns in the store with 'kvmple results list'"


class DuplicateRun(StoreError):
    """A run with this (campaign_id, run_key) is already stored."""


class Store:
    """Campaigns and their runs, in SQLite or PostgreSQL. Use as a context manager."""

    def __init__(self, db: Db) -> None:
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
        if isinstance(self._db, Postgres):
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

    def set_host(self, campaign_id: str, host: Mapping[str, JsonValue]) -> CampaignMeta:
        """Record new host facts for a campaign (only one without runs: kvmple run --resume
        after a kernel install between its registration and its first run)."""
        meta = self.campaign(campaign_id).model_copy(update={"host": dict(host)})
        with self._write(f"updating the host of campaign {campaign_id}"):
            self._db.execute(
                "UPDATE campaigns SET record = ? WHERE id = ?",
                (meta.model_dump_json(), campaign_id),
            )
        return meta

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
    store = Store(connect(url))
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
