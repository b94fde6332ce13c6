"""The per-owner reaper: what it reads from its owner, and that a SIGKILLed owner's records
(overlay directories included) are reaped while detached and other owners' records are not.
The domains themselves are destroyed through libvirt; tests/real/test_vm_real.py shows that
with real guests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

from kvmple.vm import reaper, registry
from tests.unit.test_vm_registry import make_record

ROOT = Path(__file__).resolve().parents[2]
OWNER = textwrap.dedent(
    """
    import os, sys, time
    from dataclasses import replace
    from kvmple.vm import reaper, registry
    from tests.unit.test_vm_registry import make_record

    for role in ("a", "b"):
        record = make_record(f"kvmple-reap-{role}")
        reaper.ensure()
        registry.claim(record)
        registry.guests_dir().joinpath(record.domain).mkdir()
        reaper.own(record.domain, record.uri)
    reaper.disown("kvmple-reap-b")  # e.g. detached: the reaper must leave it alone
    registry.update(replace(registry.load("kvmple-reap-b"), detached=True, owner_pid=0))
    print(reaper._owner.reaper_pid, flush=True)
    time.sleep(600)
    """
)


def test_read_announcements_follows_own_disown_and_dir() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"dir\t/s 1\nown\ttest:///default\tkvmple-x-a\n")
    os.write(write_end, b"own\tqemu:///system\tkvmple-x-b\ndisown\tkvmple-x-a\ngarbage\n")
    os.write(write_end, b"own\tqemu:///system\tkvmple-x-c\ndir\t/s 2\n")
    os.close(write_end)
    seen = reaper.read_announcements(read_end)
    assert seen.owned == {"kvmple-x-b": "qemu:///system", "kvmple-x-c": "qemu:///system"}
    assert seen.state_dirs == {"/s 1", "/s 2"}


def test_sigkilled_owner_is_reaped_and_nothing_else() -> None:
    mine = make_record("kvmple-reap-other")  # owned by this (live) test process
    registry.claim(mine)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert owner.stdout is not None
        reaper_pid = int(owner.stdout.readline())
        assert registry.load("kvmple-reap-a") is not None
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 10  # a bound on correctness, not a speed test
        while registry.load("kvmple-reap-a") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert registry.load("kvmple-reap-a") is None
        assert not registry.guests_dir().joinpath("kvmple-reap-a").exists()
        assert registry.load("kvmple-reap-b") is not None  # detached: left alone
        assert registry.guests_dir().joinpath("kvmple-reap-b").exists()
        assert registry.load(mine.domain) == mine  # another owner's: left alone
        log = (registry.vm_dir() / reaper.LOG_NAME).read_text()
        assert "forgot kvmple-reap-a" in log and "kvmple-reap-b" not in log
        while registry.process_start_time(reaper_pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert registry.process_start_time(reaper_pid) is None, "the reaper did not exit"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_a_live_owner_keeps_its_guests() -> None:
    record = replace(make_record("kvmple-reap-live"))
    reaper.ensure()
    registry.claim(record)
    reaper.own(record.domain, record.uri)
    time.sleep(0.5)
    assert registry.load(record.domain) == record
    reaper.disown(record.domain)
    assert record.domain not in reaper._owner.owned
