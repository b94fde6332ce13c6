"""Real-tier fixtures: whatever a test's outcome, it leaves no guest running."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.errors import KvmpleError
from kvmple.image import Image, resolve
from kvmple.run import run
from kvmple.vm import gc, registry
from kvmple.vm.libvirt_backend import connect
from tests.support import need, need_program, need_root

# A SIGKILLed owner's reaper needs a moment (it starts Python and connects to libvirt).
REAPER_GRACE = 10.0


@pytest.fixture
def image(shared_cache: Path) -> Image:
    """The debian12-amqp image from the shared cache, on a host that can run two pinned
    libvirt guests (root, qemu-img, virsh answering on qemu:///system, host CPUs 0 and 1)."""
    need_root()
    need_program("qemu-img")
    need_program("virsh")
    need(
        run(["virsh", "-c", "qemu:///system", "uri"], timeout=30, check=False).ok,
        "libvirtd does not answer on qemu:///system (scripts/setup-host.sh starts it)",
    )
    need(len(os.sched_getaffinity(0)) >= 2, "needs host CPUs 0 and 1")
    return resolve("debian12-amqp")


def _running(records: list[registry.GuestRecord]) -> list[str]:
    running = []
    for record in records:
        try:
            with connect(record.uri) as lv:
                if lv.is_running(record.domain):
                    running.append(record.domain)
        except KvmpleError:
            continue  # libvirt gone: nothing of ours can run there
    return running


@pytest.fixture(autouse=True)
def _no_guest_left() -> Iterator[None]:
    """After every real test: any guest recorded in the test's own state directory (each test
    has one, see tests/conftest.py) that still runs is destroyed with its files, and the test
    errors. Other helpers' and users' domains are never looked at: only our records."""
    yield
    deadline = time.monotonic() + REAPER_GRACE
    records = registry.all_records()
    while records and time.monotonic() < deadline:
        if not _running(records):
            break
        time.sleep(0.5)  # a killed owner's reaper may still be at work
        records = registry.all_records()
    left = _running(records)
    report = gc.GcReport()
    for record in records:
        gc.reap(record, report)
    if left:
        pytest.fail(f"the test left guests running (now destroyed): {', '.join(left)}")
