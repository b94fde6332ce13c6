"""The two databases a results store lives in, behind one tiny adapter (``Db``):
placeholders, transactions and the duplicate-key error of SQLite (the default: a file, no
server) and PostgreSQL (psycopg 3, an optional dependency). Store URLs: ``sqlite:///PATH``,
``postgresql://user:password@host/db`` (the password is redacted in every message)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from kvmple import paths
from kvmple.errors import StoreError
from kvmple.results.sqlitewal import switch_to_wal


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


class Db(Protocol):
    url: str

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...
    def is_duplicate(self, exc: BaseException) -> bool: ...
    def close(self) -> None: ...


class Sqlite:
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


class Postgres:
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


def connect(url: str | None) -> Db:
    url = url or default_url()
    if url.startswith("sqlite:///"):
        return Sqlite(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        return Postgres(url)
    raise StoreError(
        f"unsupported results store URL {redact(url)!r}",
        hint="use sqlite:///ABSOLUTE/PATH or postgresql://user:password@host/db",
    )
