"""The store's schema as an ordered list of migrations, one list for both SQL dialects.

A store records its version in ``kvmple_schema``; opening a store applies the migrations it
lacks inside one transaction (under a lock, so two processes opening a new store at once do
not race). A store newer than this kvmple is refused rather than guessed at.

Records are kept whole as JSON text (``record``) next to the columns that are queried, so a
new record field needs no migration while anything used in a WHERE clause gets a column.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "campaigns and runs",
        (
            """CREATE TABLE campaigns (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created DOUBLE PRECISION NOT NULL,
                status TEXT NOT NULL,
                record TEXT NOT NULL
            )""",
            """CREATE TABLE runs (
                campaign_id TEXT NOT NULL REFERENCES campaigns(id),
                run_key TEXT NOT NULL,
                run_index INTEGER NOT NULL,
                status TEXT NOT NULL,
                started DOUBLE PRECISION NOT NULL,
                record TEXT NOT NULL,
                PRIMARY KEY (campaign_id, run_key)
            )""",
        ),
    ),
    Migration(
        2,
        "index campaigns by creation time (results list, 'latest')",
        ("CREATE INDEX campaigns_by_created ON campaigns (created)",),
    ),
)

LATEST = MIGRATIONS[-1].version
