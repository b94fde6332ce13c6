#!/usr/bin/env python3
"""Benchmark of the results layer (issue 7 targets), printing what one run measured:

- report for 12 cells x 30 runs with 10,000 bootstrap resamples: target < 2 s
- store 10,000 runs and query a campaign: target < 1 s

    .venv/bin/python bench/results.py [--pg URL]

Data are synthetic (RFC-shaped, tests/fixtures/synthetic.py); the store is a fresh SQLite file
in a temp dir (and PostgreSQL when --pg is given or the test server answers).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kvmple.errors import StoreError
from kvmple.results.analysis import analyse
from kvmple.results.html import render_html
from kvmple.results.records import RunRecord
from kvmple.results.store import open_store, sqlite_url
from kvmple.results.tables import render_text

# The synthetic campaigns are a test fixture (tests/fixtures/, not shipped in the package):
# bench runs from a checkout, so take them from its tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.synthetic import synthetic_campaign

TEST_PG = "postgresql://kvmple_test:kvmple_test@127.0.0.1:5432/kvmple_test"


def timed(label: str, target: float | None, fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    took = time.perf_counter() - start
    verdict = (
        ""
        if target is None
        else (f"  target < {target:g} s: " + ("MET" if took < target else "MISSED"))
    )
    print(f"  {label:<58} {took:8.3f} s{verdict}")
    return value, took


def bench_report() -> None:
    print("report, 12 cells x 30 runs, 10,000 bootstrap resamples (BCa):")
    meta, runs = synthetic_campaign("bench", runs_per_cell=30)
    analysis, t_analyse = timed(
        "statistics (12 cells, 6 PLE gains, 8 costs)", None, lambda: analyse(meta, runs)
    )
    _, t_text = timed("render text tables", None, lambda: render_text(analysis))
    print(
        f"  {'=> text report total':<58} {t_analyse + t_text:8.3f} s  target < 2 s: "
        + ("MET" if t_analyse + t_text < 2 else "MISSED")
    )
    timed("render HTML (2 matplotlib plots, base64)", None, lambda: render_html(analysis))


def many_runs(total: int, per_campaign: int) -> list[tuple[object, list[RunRecord]]]:
    campaigns = []
    for i in range(total // per_campaign):
        meta, runs = synthetic_campaign(f"bench-{i:03d}", runs_per_cell=per_campaign // 12, seed=i)
        campaigns.append((meta, runs))
    return campaigns


def bench_store(url: str, label: str) -> None:
    print(f"store ({label}):")
    campaigns = many_runs(10_080, 360)  # 28 RFC-sized campaigns of 360 runs
    big_meta, big_runs = synthetic_campaign("bench-big", runs_per_cell=834)  # 10,008 runs
    with open_store(url) as store:

        def insert() -> int:
            count = 0
            for meta, runs in campaigns:
                store.create_campaign(meta)  # type: ignore[arg-type]
                store.add_runs(runs)
                count += len(runs)
            return count

        count, took = timed("store 10,080 runs (28 campaigns, one transaction each)", None, insert)
        print(f"  {'':<58} {count / took:8.0f} runs/s")
        runs, _ = timed(
            "query one campaign (360 runs, records validated)", 1.0, lambda: store.runs("bench-014")
        )
        assert len(runs) == 360
        timed(
            "store one 10,008-run campaign",
            None,
            lambda: (store.create_campaign(big_meta), store.add_runs(big_runs)),
        )
        runs, _ = timed("query the 10,008-run campaign", 1.0, lambda: store.runs("bench-big"))
        assert len(runs) == 10_008
        extra, single = synthetic_campaign("bench-single", runs_per_cell=17)  # 204 runs
        store.create_campaign(extra)
        start = time.perf_counter()
        for r in single:
            store.add_run(r)
        per_run = (time.perf_counter() - start) / len(single)
        print(
            f"  {'add_run, one durable transaction per run (what a campaign does)':<58} "
            f"{1000 * per_run:8.2f} ms/run"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=TEST_PG, help="PostgreSQL URL ('' to skip)")
    args = parser.parse_args()
    bench_report()
    with tempfile.TemporaryDirectory() as tmp:
        bench_store(sqlite_url(Path(tmp) / "bench.sqlite"), "SQLite, synchronous=FULL, WAL")
    if args.pg:
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        try:
            with psycopg.connect(args.pg, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
        except psycopg.Error as exc:
            print(f"store (PostgreSQL): skipped, {args.pg} does not answer: {exc}")
            return
        try:
            bench_store(f"{args.pg}?options=-csearch_path%3D{schema}", "PostgreSQL 127.0.0.1")
        except StoreError as exc:
            print(f"store (PostgreSQL): failed: {exc}")
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
