"""The registry of guests kvmple started: exclusive claims, owner liveness, forgetting."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kvmple.errors import GuestError, StoreError
from kvmple.run import run
from kvmple.vm import registry


def make_record(domain: str = "kvmple-t-a", *, pid: int | None = None) -> registry.GuestRecord:
    owner = os.getpid() if pid is None else pid
    return registry.GuestRecord(
        domain=domain,
        uri="test:///default",
        role=domain.rsplit("-", 1)[-1],
        campaign_id="t",
        image="img",
        run_dir=str(registry.guests_dir() / domain),
        ssh_port=40000,
        ssh_user="root",
        ssh_key="/nonexistent/key",
        host_keys=("ssh-ed25519 AAAA",),
        owner_pid=owner,
        owner_start=registry.process_start_time(owner),
        detached=False,
        created=time.time(),
    )


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    result = run(["sh", "-c", "echo $$"], timeout=10)
    return int(result.stdout)


def test_claim_load_roundtrip() -> None:
    record = make_record()
    registry.claim(record)
    assert registry.load(record.domain) == record
    assert registry.all_records() == [record]
    assert record.owner_alive


def test_claim_is_exclusive() -> None:
    registry.claim(make_record())
    with pytest.raises(GuestError, match=r"kvmple-t-a already exists \(started by process"):
        registry.claim(make_record())
    assert not list(registry.records_dir().glob(".*.tmp"))


def test_dead_owner_and_pid_reuse() -> None:
    assert not make_record(pid=dead_pid()).owner_alive
    reused = make_record()
    reused = registry.GuestRecord(**{**reused.to_json(), "owner_start": 1, "host_keys": ()})
    assert not reused.owner_alive  # same pid, different start time: not our process


def test_claim_message_for_crashed_owner() -> None:
    registry.claim(make_record(pid=dead_pid()))
    with pytest.raises(GuestError) as info:
        registry.claim(make_record())
    assert "crashed" in info.value.message
    assert "kvmple gc" in (info.value.hint or "")


def test_forget_removes_run_dir_then_record() -> None:
    record = make_record()
    registry.claim(record)
    run_dir = Path(record.run_dir)
    run_dir.mkdir()
    (run_dir / "overlay.qcow2").write_text("x")
    registry.forget(record)
    assert not run_dir.exists()
    assert registry.load(record.domain) is None


def test_forget_never_deletes_outside_the_guests_dir(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    record = registry.GuestRecord(**{**make_record().to_json(), "run_dir": str(outside)})
    registry.claim(record)
    registry.forget(record)
    assert outside.exists()


def test_corrupt_record_is_a_store_error() -> None:
    registry.record_path("kvmple-t-bad").write_text("{not json")
    with pytest.raises(StoreError, match=r"kvmple-t-bad\.json is unreadable"):
        registry.all_records()


def test_stored_record_form_reads_back_and_mistyped_keys_are_named() -> None:
    """A record file as kvmple wrote it (host_keys a list; before host keys existed, no
    host_keys at all) loads; a mistyped key is a StoreError naming it."""
    record = make_record("kvmple-t-old")
    stored = record.to_json()
    assert stored["host_keys"] == ["ssh-ed25519 AAAA"]
    registry.record_path(record.domain).write_text(json.dumps(stored))
    assert registry.load(record.domain) == record
    older = {k: v for k, v in stored.items() if k != "host_keys"}
    registry.record_path(record.domain).write_text(json.dumps(older))
    loaded = registry.load(record.domain)
    assert loaded is not None and loaded.host_keys == ()
    registry.record_path(record.domain).write_text(json.dumps({**stored, "ssh_port": "ssh"}))
    with pytest.raises(StoreError, match=r"kvmple-t-old\.json is unreadable: ssh_port: "):
        registry.load(record.domain)
    registry.record_path(record.domain).unlink()
