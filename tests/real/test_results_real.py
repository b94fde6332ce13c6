"""Real tier of the results layer: a real PostgreSQL server (scripts/test-postgres.sh),
concurrent writer processes and a writer killed mid-transaction on SQLite and PostgreSQL,
an export/import round trip across the two, the HTML report opened in headless Chromium
(screenshot checked), and JUnit output validated against a schema that pytest's own JUnit
output also passes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvmple.cli import main
from kvmple.errors import StoreError
from kvmple.results.records import RunRecord
from kvmple.results.store import DuplicateRun, open_store, sqlite_path, sqlite_url
from kvmple.run import run
from tests.fixtures.synthetic import synthetic_campaign
from tests.support import need, need_program

pytestmark = pytest.mark.real

PG_URL = os.environ.get(
    "KVMPLE_TEST_PG_URL", "postgresql://kvmple_test:kvmple_test@127.0.0.1:5432/kvmple_test"
)
XSD = Path(__file__).resolve().parents[1] / "data" / "junit.xsd"
BATCH = 500


def _pg_answers() -> str:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=5):
            return ""
    except Exception as exc:  # any failure to connect is the reason to report
        return str(exc).strip().splitlines()[0]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throw-away schema in the test database, as a store URL."""
    problem = _pg_answers()
    need(
        not problem,
        f"PostgreSQL test server at {PG_URL} does not answer: {problem} "
        "(run scripts/test-services.sh)",
    )
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "results.sqlite")
    return str(request.getfixturevalue("pg_url"))


def test_postgresql_contract(pg_url: str) -> None:
    meta, runs = synthetic_campaign("pg-1", runs_per_cell=2)
    with open_store(pg_url) as store:
        store.create_campaign(meta)
        store.add_run(runs[0])
        with pytest.raises(DuplicateRun):
            store.add_run(runs[0])
        with pytest.raises(DuplicateRun):
            store.add_runs([runs[1], runs[0]])  # atomic: runs[1] not written either
        assert store.run_keys("pg-1") == {runs[0].run_key}
        store.add_runs(runs[1:])
        assert store.runs("pg-1") == sorted(runs, key=lambda r: (r.started, r.run_key))
        store.set_status("pg-1", "complete")
        assert store.resolve("pg").status == "complete"
        with pytest.raises(StoreError, match="no campaign 'nope'"):
            store.campaign("nope")
    with pytest.raises(StoreError, match=r"cannot connect.*password") as info:
        open_store(PG_URL.replace("kvmple_test@", "wrong@").replace(":kvmple_test@", ":x@"))
    assert ":x@" not in str(info.value) or "***" in str(info.value)


# -- concurrent writers --------------------------------------------------------------------


def _writer(url: str, name: str, shared: str, count: int) -> None:
    """A campaign of its own plus interleaved runs into a shared campaign."""
    meta, runs = synthetic_campaign(name, runs_per_cell=count // 12, seed=hash(name) % 1000)
    shared_meta, shared_runs = synthetic_campaign(shared, runs_per_cell=count // 12)
    with open_store(url) as store:
        store.create_campaign(meta)
        try:
            store.create_campaign(shared_meta)
        except StoreError:
            pass  # the other writer created it first
        for mine, theirs in zip(runs, shared_runs, strict=True):
            store.add_run(mine)
            store.add_run(theirs.model_copy(update={"run_key": f"{name}/{theirs.run_key}"}))


def test_two_concurrent_writers(any_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    # both processes also race to create the schema of a brand-new store
    procs = [
        ctx.Process(target=_writer, args=(any_url, f"writer-{i}", "shared", 120)) for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"writer exited with {p.exitcode}"
    with open_store(any_url) as store:
        assert store.run_counts() == {
            "writer-0": (120, 0),
            "writer-1": (120, 0),
            "shared": (240, 0),
        }
        keys = store.run_keys("shared")
        assert sum(k.startswith("writer-0/") for k in keys) == 120
        assert all(isinstance(r, RunRecord) for r in store.runs("shared"))
    if any_url.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(any_url)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _batch_writer(url: str, ready: Any) -> None:
    meta, _ = synthetic_campaign("crash", runs_per_cell=1)
    with open_store(url) as store:
        store.create_campaign(meta)
        ready.set()
        for batch in range(10_000):
            _, runs = synthetic_campaign("crash", runs_per_cell=BATCH // 12 + 1, seed=batch)
            runs = [r.model_copy(update={"run_key": f"{batch}/{r.run_key}"}) for r in runs]
            store.add_runs(runs[:BATCH])


def test_writer_killed_mid_transaction_leaves_whole_batches(any_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_batch_writer, args=(any_url, ready))
    proc.start()
    assert ready.wait(120)
    time.sleep(1.5)  # a few batches committed, one in flight
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    with open_store(any_url) as store:
        keys = store.run_keys("crash")
        assert keys, "no batch was committed before the kill"
        batches: dict[str, int] = {}
        for key in keys:
            batches[key.split("/")[0]] = batches.get(key.split("/")[0], 0) + 1
        assert set(batches.values()) == {BATCH}, "a batch was stored partly"
        assert len(store.runs("crash")) == len(keys)
        # the store still takes writes after the crash
        meta, runs = synthetic_campaign("after", runs_per_cell=1)
        store.create_campaign(meta)
        store.add_runs(runs)
    if any_url.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(any_url)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- export/import across backends -----------------------------------------------------------


def test_export_import_round_trip_sqlite_postgresql(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lite = sqlite_url(tmp_path / "a.sqlite")
    with open_store(lite) as store:
        for cid in ("one", "two"):
            meta, runs = synthetic_campaign(cid, runs_per_cell=3, failed_every=5)
            store.create_campaign(meta)
            store.add_runs(runs)
    first = tmp_path / "first.json"
    second = tmp_path / "second.json"
    assert main(["results", "export", "--db", lite, "-o", str(first)]) == 0
    assert main(["results", "import", str(first), "--db", pg_url]) == 0
    assert main(["results", "import", str(first), "--db", pg_url]) == 0  # merge: no dupes
    assert "0 run(s) added, 36 already stored" in capsys.readouterr().err
    assert main(["results", "export", "--db", pg_url, "-o", str(second)]) == 0
    assert json.loads(first.read_text()) == json.loads(second.read_text())
    assert main(["report", "one", "--db", pg_url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == 7


# -- HTML in a browser, JUnit against a schema -------------------------------------------------


def _report_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    url = sqlite_url(tmp_path / "r.sqlite")
    with open_store(url) as store:
        meta, runs = synthetic_campaign("browser", runs_per_cell=10, failed_every=13)
        store.create_campaign(meta)
        store.add_runs(runs)
    out = tmp_path / "report.html"
    assert main(["report", "browser", "--db", url, "--format", "html", "-o", str(out)]) == 0
    capsys.readouterr()
    return out


def test_html_report_renders_in_headless_chromium(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium = need_program("chromium")
    page = _report_html(tmp_path, capsys)
    shot = tmp_path / "shot.png"
    result = run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,1800",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        timeout=120,
        what="headless chromium screenshot of the HTML report",
    )
    assert shot.exists(), result.stderr[-500:]
    from matplotlib.image import imread

    pixels = np.asarray(imread(shot))[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    not_white = (pixels < 0.9).any(axis=2).mean()
    assert not_white > 0.03, f"screenshot is nearly blank ({not_white:.1%} non-white)"
    red = ((pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)).sum()
    blue = ((pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.3)).sum()
    # the embedded plots were decoded and drawn: no-PLE (red) and PLE (blue) lines/points
    assert red > 50 and blue > 50, (red, blue)


def _validate(xml: Path) -> None:
    xmllint = need_program("xmllint")
    result = run([xmllint, "--noout", "--schema", XSD, xml], timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_junit_output_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # first show the schema accepts what an independent producer (pytest) writes
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "test_probe.py").write_text(
        "import pytest\n"
        "def test_ok(): print('out')\n"
        "def test_bad(): assert 1 == 2\n"
        "@pytest.mark.skip(reason='skip')\n"
        "def test_skip(): pass\n"
    )
    pytest_xml = tmp_path / "pytest.xml"
    run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            probe,
            probe / "test_probe.py",
            f"--junitxml={pytest_xml}",
        ],
        timeout=120,
        check=False,
        env={**os.environ, "PYTEST_ADDOPTS": ""},
    )
    _validate(pytest_xml)
    url = sqlite_url(tmp_path / "j.sqlite")
    with open_store(url) as store:
        for cid, factor in (("base", 1.0), ("slow", 0.8)):
            meta, runs = synthetic_campaign(cid, runs_per_cell=6, cv=0.01, failed_every=11)
            runs = [
                r.model_copy(update={"figures": {k: v * factor for k, v in r.figures.items()}})
                for r in runs
            ]
            store.create_campaign(meta)
            store.add_runs(runs)
    report = tmp_path / "report.xml"
    compare = tmp_path / "compare.xml"
    main(["report", "base", "--db", url, "--format", "junit", "-o", str(report)])
    assert (
        main(["compare", "base", "slow", "--db", url, "--format", "junit", "-o", str(compare)])
        == 20
    )
    _validate(report)
    _validate(compare)
    broken = tmp_path / "broken.xml"
    broken.write_text(compare.read_text().replace('tests="12"', 'tests="twelve"', 1))
    with pytest.raises(AssertionError):
        _validate(broken)
