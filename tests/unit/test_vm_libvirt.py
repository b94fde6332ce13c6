"""The libvirt backend, boot_guests' failure paths and gc, against libvirt's test:///default
driver (a real libvirt connection with an in-memory hypervisor: domains start, no QEMU)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.errors import GuestError, HostError
from kvmple.vm import gc, registry
from kvmple.vm.domxml import domain_xml
from kvmple.vm.libvirt_backend import Libvirt, connect
from kvmple.vm.lifecycle import boot_guests
from tests.fixtures.fake_image import FileImage
from tests.unit.test_vm_registry import dead_pid, make_record
from tests.unit.test_vm_spec import make_spec

TEST_URI = "test:///default"


@pytest.fixture
def lv() -> Iterator[Libvirt]:
    """One open connection keeps the test driver's state alive for the whole test."""
    with connect(TEST_URI) as conn:
        yield conn
        for name in conn.names("kvmple-"):
            conn.destroy(name)


def _xml(role: str = "a") -> str:
    spec = make_spec(role=role)
    return domain_xml(spec, overlay=Path("/o.qcow2"), console_log=Path("/c.log"), ssh_port=2)


def test_unreachable_libvirt_is_a_host_error() -> None:
    with (
        pytest.raises(HostError, match="unreachable") as info,
        connect("qemu+unix:///system?socket=/nonexistent/sock"),
    ):
        pass
    assert "libvirtd" in (info.value.hint or "")


def test_create_affinity_destroy(lv: Libvirt) -> None:
    lv.create(_xml(), "kvmple-c1-a")
    assert lv.is_running("kvmple-c1-a")
    assert lv.names("kvmple-") == ["kvmple-c1-a"]
    assert lv.vcpu_affinity("kvmple-c1-a") == {0: (0,), 1: (1,)}
    assert "<title>kvmple c1 a</title>" in lv.xml("kvmple-c1-a")
    assert lv.destroy("kvmple-c1-a") is True
    assert lv.destroy("kvmple-c1-a") is False  # idempotent
    assert not lv.exists("kvmple-c1-a")


def test_destroy_undefines_persistent_leftovers(lv: Libvirt) -> None:
    lv.define(_xml("p"))
    assert lv.exists("kvmple-c1-p") and not lv.is_running("kvmple-c1-p")
    assert lv.destroy("kvmple-c1-p")
    assert not lv.exists("kvmple-c1-p")


def test_duplicate_create_is_a_guest_error(lv: Libvirt) -> None:
    lv.create(_xml(), "kvmple-c1-a")
    with pytest.raises(GuestError, match="did not start"):
        lv.create(_xml(), "kvmple-c1-a")


def _nothing_left(lv: Libvirt) -> None:
    assert lv.names("kvmple-") == []
    assert registry.all_records() == []
    assert list(registry.guests_dir().iterdir()) == []


def test_guest_that_never_answers(lv: Libvirt, image: FileImage) -> None:
    specs = [make_spec(role=r, image=image) for r in ("a", "b")]
    start = time.monotonic()
    with pytest.raises(GuestError) as info, boot_guests(specs, uri=TEST_URI, ready_timeout=3):
        pytest.fail("must not get here")
    assert time.monotonic() - start < 30
    assert "did not answer SSH on 127.0.0.1:" in info.value.message
    assert "console log is empty" in info.value.message
    assert "sshd" in (info.value.hint or "")
    _nothing_left(lv)


def test_guest_that_dies_while_booting(lv: Libvirt, image: FileImage) -> None:
    def kill_soon() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not lv.exists("kvmple-c1-a"):
            time.sleep(0.05)
        lv.destroy("kvmple-c1-a")

    killer = threading.Thread(target=kill_soon)
    killer.start()
    try:
        with (
            pytest.raises(GuestError, match="died while booting"),
            boot_guests([make_spec(role="a", image=image)], uri=TEST_URI, ready_timeout=30),
        ):
            pass
    finally:
        killer.join()
    _nothing_left(lv)


@pytest.mark.usefixtures("ctrl_c")
def test_interrupt_while_booting_cleans_up(lv: Libvirt, image: FileImage) -> None:
    """Ctrl-C (and SIGTERM, which kvmple.cli turns into KeyboardInterrupt) mid-boot: a real
    SIGINT to this process while boot_guests waits for SSH."""

    def interrupt_soon() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not lv.exists("kvmple-c1-b"):
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    # on separate host CPUs, so both boot at once (boot_waves)
    specs = [
        make_spec(role="a", image=image, vcpus=1, vcpu_pins=((0,),)),
        make_spec(role="b", image=image, vcpus=1, vcpu_pins=((1,),)),
    ]
    interrupter = threading.Thread(target=interrupt_soon)
    interrupter.start()
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), boot_guests(specs, uri=TEST_URI, ready_timeout=60):
            pass
    finally:
        interrupter.join()
    assert time.monotonic() - start < 20, "the interrupt must not wait for the SSH timeout"
    _nothing_left(lv)


def test_name_taken_by_another_run_is_left_alone(lv: Libvirt, image: FileImage) -> None:
    other = make_record("kvmple-c1-a")
    registry.claim(other)
    lv.create(_xml(), "kvmple-c1-a")
    with (
        pytest.raises(GuestError, match="already exists"),
        boot_guests(
            [make_spec(role="a", image=image), make_spec(role="b", image=image)],
            uri=TEST_URI,
            ready_timeout=5,
        ),
    ):
        pass
    assert registry.all_records() == [other]  # the other run's record and guest survive
    assert lv.names("kvmple-") == ["kvmple-c1-a"]
    registry.forget(other)


def test_missing_image_file_is_refused_before_anything_starts(
    lv: Libvirt, image: FileImage
) -> None:
    image.kernel.unlink()
    with (
        pytest.raises(Exception, match="vmlinuz is missing"),
        boot_guests([make_spec(image=image)], uri=TEST_URI, ready_timeout=5),
    ):
        pass
    _nothing_left(lv)


def test_gc_reaps_dead_runs_and_nothing_else(lv: Libvirt) -> None:
    crashed = make_record("kvmple-t-crashed", pid=dead_pid())
    live = make_record("kvmple-t-live")
    detached = registry.GuestRecord(
        **{**make_record("kvmple-t-detached").to_json(), "detached": True, "owner_pid": 0}
    )
    for record in (crashed, live, detached):
        registry.claim(record)
        Path(record.run_dir).mkdir()
        (Path(record.run_dir) / "overlay.qcow2").write_text("x")
        lv.create(_xml().replace("kvmple-c1-a", record.domain), record.domain)
    lv.create(_xml().replace("kvmple-c1-a", "kvmple-t-foreign"), "kvmple-t-foreign")
    orphan = registry.guests_dir() / "kvmple-t-orphan"
    orphan.mkdir()

    report = gc.collect(uris=(TEST_URI,))
    assert report.removed_domains == ["kvmple-t-crashed"]
    assert report.removed_records == ["kvmple-t-crashed"]
    assert sorted(report.removed_dirs) == sorted([crashed.run_dir, str(orphan)])
    assert any("kvmple-t-live: in use by process" in k for k in report.kept)
    assert any("kvmple-t-detached: detached" in k for k in report.kept)
    assert report.foreign == [f"kvmple-t-foreign ({TEST_URI})"]
    assert lv.names("kvmple-t-") == ["kvmple-t-detached", "kvmple-t-foreign", "kvmple-t-live"]

    report = gc.collect(include_detached=True, uris=(TEST_URI,))
    assert report.removed_domains == ["kvmple-t-detached"]
    assert lv.names("kvmple-t-") == ["kvmple-t-foreign", "kvmple-t-live"]
    assert [r.domain for r in registry.all_records()] == ["kvmple-t-live"]
    registry.forget(live)


def test_foreign_domain_with_our_name_is_never_destroyed(lv: Libvirt, image: FileImage) -> None:
    """A kvmple-* domain kvmple has no record of (hand-made, other installation) is left alone
    even when a boot wants its name."""
    lv.create(_xml(), "kvmple-c1-a")
    with (
        pytest.raises(GuestError, match="no record of starting it"),
        boot_guests(
            [make_spec(role="a", image=image), make_spec(role="b", image=image)],
            uri=TEST_URI,
            ready_timeout=5,
        ),
    ):
        pass
    assert lv.names("kvmple-") == ["kvmple-c1-a"]
    assert registry.all_records() == []
    assert list(registry.guests_dir().iterdir()) == []


def test_orphan_run_dir_does_not_block_a_boot(lv: Libvirt, image: FileImage) -> None:
    orphan = registry.guests_dir() / "kvmple-c1-a"
    orphan.mkdir()
    (orphan / "overlay.qcow2").write_text("stale")
    with (
        pytest.raises(GuestError, match="did not answer SSH"),
        boot_guests([make_spec(role="a", image=image)], uri=TEST_URI, ready_timeout=2),
    ):
        pass
    _nothing_left(lv)


def test_detach_hands_guests_over_to_vm_down(lv: Libvirt, image: FileImage) -> None:
    from kvmple.remote import SSHExecutor
    from kvmple.vm.lifecycle import Guest, detach

    record = make_record("kvmple-c1-a")
    registry.claim(record)
    executor = SSHExecutor("127.0.0.1", 1, "root", Path("/k"), image.host_keys, "a")
    guest = Guest(make_spec(role="a", image=image), record, executor, lv)
    detach([guest])
    stored = registry.load("kvmple-c1-a")
    assert stored is not None and stored.detached and not stored.owner_alive
    assert guest.detached and guest.record == stored
    report = gc.collect(uris=(TEST_URI,))
    assert any("kvmple-c1-a: detached" in k for k in report.kept)
    assert registry.load("kvmple-c1-a") == stored
    registry.forget(stored)
