"""The results store on a real SQLite file: contract, atomicity, migrations, bad input,
export/import round trip. (PostgreSQL runs the same contract in tests/real.)"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from kvmple.errors import StoreError, UsageError
from kvmple.results.records import RunRecord
from kvmple.results.schema import LATEST, MIGRATIONS
from kvmple.results.store import DuplicateRun, Store, open_store, sqlite_path, sqlite_url
from kvmple.results.transfer import export_csv, export_json, import_file
from tests.fixtures.synthetic import synthetic_campaign


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "results.sqlite")


def test_contract(url: str) -> None:
    meta, runs = synthetic_campaign("c-1", runs_per_cell=2)
    with open_store(url) as store:
        assert store.campaigns() == []
        store.create_campaign(meta)
        for run in runs:
            store.add_run(run)
        assert store.runs("c-1") == sorted(runs, key=lambda r: (r.started, r.run_key))
        assert store.campaign("c-1") == meta
        assert store.run_keys("c-1") == {r.run_key for r in runs}
        assert store.run_counts() == {"c-1": (24, 0)}
        store.set_status("c-1", "interrupted")
    with open_store(url) as store:  # persisted, reopened
        assert store.campaign("c-1").status == "interrupted"
        assert store.schema_version() == LATEST


def test_duplicates_refused_and_batches_atomic(url: str) -> None:
    meta, runs = synthetic_campaign("c-1", runs_per_cell=2)
    with open_store(url) as store:
        store.create_campaign(meta)
        store.add_run(runs[0])
        with pytest.raises(DuplicateRun, match="already stored") as info:
            store.add_run(runs[0])
        assert info.value.exit_code == 11
        # a batch with one duplicate writes nothing at all
        with pytest.raises(DuplicateRun):
            store.add_runs([runs[1], runs[2], runs[0]])
        assert store.run_keys("c-1") == {runs[0].run_key}
        with pytest.raises(StoreError, match="already exists"):
            store.create_campaign(meta)


def test_unknown_campaigns_and_statuses(url: str) -> None:
    meta, runs = synthetic_campaign("2026-11-27-smoke-a", runs_per_cell=1)
    other, _ = synthetic_campaign("2026-11-27-smoke-b", runs_per_cell=1)
    with open_store(url) as store:
        with pytest.raises(StoreError, match="no campaigns in") as info:
            store.resolve(None)
        assert "kvmple run" in (info.value.hint or "")
        store.create_campaign(meta)
        store.create_campaign(other.model_copy(update={"created": meta.created + 5}))
        with pytest.raises(StoreError, match="no campaign 'nope'") as info:
            store.campaign("nope")
        assert "results list" in (info.value.hint or "")
        with pytest.raises(StoreError, match="no campaign"):
            store.runs("nope")
        with pytest.raises(StoreError, match="no campaign"):
            store.add_run(runs[0].model_copy(update={"campaign_id": "nope"}))
        with pytest.raises(StoreError, match="ambiguous"):
            store.resolve("2026-11-27")
        assert store.resolve("2026-11-27-smoke-a").id == meta.id
        assert store.resolve("2026-11-27-smoke-b"[:-1] + "b").id == other.id
        assert store.resolve(None).id == other.id  # latest
        assert store.resolve("latest").id == other.id
        with pytest.raises(StoreError, match="unknown campaign status"):
            store.set_status(meta.id, "done")


def test_urls_and_bad_stores(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///tmp/x.sqlite") == Path("/tmp/x.sqlite")
    assert sqlite_path("sqlite:////tmp/x.sqlite") == Path("/tmp/x.sqlite")
    with pytest.raises(StoreError, match="unsupported results store URL") as info:
        open_store("mysql://u:secret@h/db")
    assert "secret" not in str(info.value)
    with pytest.raises(StoreError, match="no results store at"):
        open_store(sqlite_url(tmp_path / "missing.sqlite"), create=False)
    assert not (tmp_path / "missing.sqlite").exists()
    with pytest.raises(StoreError, match="does not exist"):
        open_store(sqlite_url(tmp_path / "no" / "dir.sqlite"))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(StoreError, match=r"cannot be opened|failed"):
        open_store(sqlite_url(junk))
    # the default store lives in the data dir (tests point it at a temp dir)
    with open_store(None) as store:
        assert "results.sqlite" in store.url


def test_migrations_upgrade_and_refuse_newer(url: str) -> None:
    from kvmple.results.db import connect

    store = Store(connect(url))
    store.migrate(upto=1)
    assert store.schema_version() == 1
    store.close()
    path = sqlite_path(url)
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "campaigns_by_created" not in names
    with open_store(url) as store:  # opening upgrades
        assert store.schema_version() == LATEST == MIGRATIONS[-1].version
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "campaigns_by_created" in names
        conn.execute("UPDATE kvmple_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than"):
        open_store(url)


def test_export_import_round_trip(tmp_path: Path, url: str) -> None:
    meta, runs = synthetic_campaign("c-1", runs_per_cell=3, failed_every=7)
    with open_store(url) as store:
        store.create_campaign(meta)
        store.add_runs(runs)
        exported = export_json(store, [])
        csv_text = export_csv(store, ["c-1"])
    lines = csv_text.splitlines()
    assert len(lines) == 1 + len(runs)
    assert lines[0].startswith("campaign_id,campaign_name,run_key,run_index,status")
    assert "figures.transfers_per_sec" in lines[0] and "cell.overcommit" in lines[0]
    export_path = tmp_path / "export.json"
    export_path.write_text(exported)
    other_url = sqlite_url(tmp_path / "other.sqlite")
    with open_store(other_url) as other:
        assert import_file(other, export_path) == [("c-1", len(runs), 0)]
        assert import_file(other, export_path) == [("c-1", 0, len(runs))]  # idempotent
        assert other.runs("c-1") == sorted(runs, key=lambda r: (r.started, r.run_key))
        assert other.campaign("c-1") == meta
        # a partial copy (runs from another machine) merges without index files
        partial = json.loads(exported)
        partial["campaigns"][0]["runs"] = partial["campaigns"][0]["runs"][:5]
        export_path.write_text(json.dumps(partial))
    fresh_url = sqlite_url(tmp_path / "fresh.sqlite")
    with open_store(fresh_url) as fresh:
        assert import_file(fresh, export_path) == [("c-1", 5, 0)]
        export_path.write_text(exported)
        assert import_file(fresh, export_path) == [("c-1", len(runs) - 5, 5)]


def test_import_refuses_conflicts_and_bad_files(tmp_path: Path, url: str) -> None:
    meta, runs = synthetic_campaign("c-1", runs_per_cell=2)
    with open_store(url) as store:
        store.create_campaign(meta)
        store.add_runs(runs)
        data = json.loads(export_json(store, ["c-1"]))
        path = tmp_path / "changed.json"
        changed = json.loads(json.dumps(data))
        changed["campaigns"][0]["runs"][0]["figures"]["transfers_per_sec"] = 1.0
        path.write_text(json.dumps(changed))
        with pytest.raises(StoreError, match="differs from the stored one"):
            import_file(store, path)
        other = json.loads(json.dumps(data))
        other["campaigns"][0]["meta"]["playbook_hash"] = "f" * 64
        path.write_text(json.dumps(other))
        with pytest.raises(StoreError, match="another playbook"):
            import_file(store, path)
        # a file with a good campaign and then a conflicting one writes nothing
        good, good_runs = synthetic_campaign("c-2", runs_per_cell=1)
        mixed = {
            "kind": "kvmple-results",
            "version": 1,
            "campaigns": [
                {"meta": good.model_dump(), "runs": [r.model_dump() for r in good_runs]},
                other["campaigns"][0],
            ],
        }
        path.write_text(json.dumps(mixed))
        with pytest.raises(StoreError):
            import_file(store, path)
        assert [c.id for c in store.campaigns()] == ["c-1"]
        for text, message in (
            ("{not json", "not JSON"),
            ('{"kind": "other"}', "not a kvmple results export"),
            ('{"kind": "kvmple-results", "version": 9, "campaigns": []}', "newer than"),
            (
                '{"kind": "kvmple-results", "version": 1, "campaigns": [{"meta": {}}]}',
                r"campaigns\.0\.meta\.id: Field required",
            ),
        ):
            path.write_text(text)
            with pytest.raises(UsageError, match=message):
                import_file(store, path)
        with pytest.raises(UsageError, match="cannot read"):
            import_file(store, tmp_path / "absent.json")


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        RunRecord.model_validate(
            {
                "campaign_id": "c",
                "run_key": "k",
                "cell": {},
                "run_index": 0,
                "status": "maybe",
                "started": 0,
                "ended": 1,
            }
        )


def test_resume_after_a_kernel_install_only_without_runs(url: str) -> None:
    """A campaign registered before `kernel install --campaign` resumes on the new kernel
    (nothing measured yet, the host facts are re-recorded); one with runs does not."""
    from kvmple.campaign.playbook import parse_playbook
    from kvmple.campaign.runner import _resume
    from kvmple.errors import CampaignError

    text = Path("playbooks/lab-smoke.yaml").read_text()
    loaded = parse_playbook(text, "lab-smoke")
    meta, runs = synthetic_campaign("c-k", runs_per_cell=1)
    facts = {"hostname": "lab", "kernel_release": "6.1.0-28-amd64", "accelerator": "kvm"}
    meta = meta.model_copy(
        update={
            "playbook_text": text,
            "playbook_hash": loaded.sha256,
            "host": facts,
            "status": "interrupted",
        }
    )
    new = {**facts, "kernel_release": "6.1.158-kvmple-lab"}

    class Host:
        def __init__(self, facts: dict[str, str]) -> None:
            self.facts = facts

    with open_store(url) as store:
        store.create_campaign(meta)
        resumed, _ = _resume(store, "c-k", Host(new))  # type: ignore[arg-type]
        assert resumed.host == new and store.campaign("c-k").host == new
        store.add_run(runs[0])
        with pytest.raises(CampaignError, match="would mix runs"):
            _resume(store, "c-k", Host(facts))  # type: ignore[arg-type]
