"""Opening a SQLite results store safely when several processes open it at once."""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kvmple.errors import StoreError

T = TypeVar("T")


def _locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def switch_to_wal(conn: sqlite3.Connection, path: Path, budget: float) -> None:
    """Put the store in WAL mode once, safely when several processes open a new store.

    WAL is persistent, so a store already in it is left alone. Otherwise the switch needs an
    exclusive lock, and two connections escalating from SHARED at once make SQLite return
    "database is locked" at once to one of them, without its busy wait (deadlock
    avoidance, sqlite.org/lockingv3.html). So kvmple processes switch one at a time under
    an flock on ``PATH.lock`` (flock and SQLite's POSIX locks do not interact), retrying a
    foreign lock holder until ``budget`` seconds have passed; StoreError names the file
    and the wait when it stays locked.
    """
    start = time.monotonic()
    if (
        _retry(lambda: conn.execute("PRAGMA journal_mode").fetchone()[0], path, start, budget)
        == "wal"
    ):
        return
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _wait_or_fail(path, start, budget, "another kvmple process is switching it")
        try:
            _retry(
                lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone()[0], path, start, budget
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _retry(step: Callable[[], T], path: Path, start: float, budget: float) -> T:
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            _wait_or_fail(path, start, budget, f"sqlite: {exc}")


def _wait_or_fail(path: Path, start: float, budget: float, why: str) -> None:
    waited = time.monotonic() - start
    if waited >= budget:
        raise StoreError(
            f"results store {path} stayed locked for {waited:.1f} s while opening it ({why})",
            hint="another process holds it (a kvmple campaign, a sqlite3 shell?): wait for it, "
            "or pass another --db URL",
        )
    time.sleep(min(0.05, max(budget - waited, 0.0)))
