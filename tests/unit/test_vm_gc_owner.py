"""Stopping a guest that is still starting (`kvmple lab down` of a booting lab host): the
owner gets SIGTERM and cleans up itself; a stuck owner is reported, never its guest killed
behind its back."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from kvmple.vm import gc, registry
from tests.unit.test_vm_registry import make_record

# An owner like `kvmple lab up`: on SIGTERM it removes its guest's record and exits.
CLEANS_UP = """
import signal, sys
from pathlib import Path
def stop(*_):
    Path(sys.argv[1]).unlink()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
signal.pause()
"""
IGNORES = """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
signal.pause()
"""


@pytest.fixture
def owner(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    code = CLEANS_UP if request.param == "cleans-up" else IGNORES
    path = registry.record_path("kvmple-t-boot")
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    try:
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("owner", ["cleans-up"], indirect=True)
def test_sigterm_to_the_owner_which_removes_its_guest(owner: subprocess.Popen[str]) -> None:
    record = make_record("kvmple-t-boot", pid=owner.pid)
    registry.claim(record)
    assert record.owner_alive
    report = gc.GcReport()
    gc.stop_owner(record, report, wait_s=60)  # the owner is a zombie until waited for
    assert owner.wait(timeout=60) == 0
    assert report.removed_records == ["kvmple-t-boot"] and not report.errors
    assert registry.load("kvmple-t-boot") is None


@pytest.mark.parametrize("owner", ["ignores"], indirect=True)
def test_an_owner_that_does_not_exit_is_reported_and_its_guest_kept(
    owner: subprocess.Popen[str],
) -> None:
    record = make_record("kvmple-t-boot", pid=owner.pid)
    registry.claim(record)
    report = gc.GcReport()
    gc.stop_owner(record, report, wait_s=1)
    assert report.errors == [
        f"kvmple-t-boot: its owner, process {owner.pid}, did not exit within 1 s of SIGTERM"
    ]
    assert owner.poll() is None and registry.load("kvmple-t-boot") == record
