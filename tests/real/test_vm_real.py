"""Real tier: pinned 2-vCPU guests from the debian12-amqp image through qemu:///system (TCG
here), commands over SSH, placement read back from the kernel, and nothing left behind, also
when the `kvmple vm up` process is killed midway (SIGTERM; SIGKILL, after which its reaper
destroys the guests; or SIGKILL of both, followed by gc)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.errors import GuestError
from kvmple.image import Image
from kvmple.run import run
from kvmple.vm import lifecycle, registry
from kvmple.vm.libvirt_backend import connect
from kvmple.vm.lifecycle import boot_guests
from kvmple.vm.spec import VMSpec

pytestmark = pytest.mark.real

URI = "qemu:///system"
READY_TIMEOUT = 420.0  # TCG on a busy 2-core host; alone a guest answers in ~30 s
PINS = ((0,), (1,))
# `vm up` resolves the image itself: a cache hit takes ~1 s, but a recipe edited since the
# fixture resolved it means a rebuild (minutes) before any domain exists.
WAIT_FOR_DOMAINS = 600.0  # vCPU0 -> host CPU 0, vCPU1 -> host CPU 1, in both guests


def domains() -> set[str]:
    listing = run(["virsh", "-c", URI, "list", "--all", "--name"], timeout=30)
    return {line.strip() for line in listing.stdout.splitlines() if line.strip()}


def assert_nothing_left(names: set[str]) -> None:
    assert not names & domains(), f"left behind in libvirt: {names & domains()}"
    assert list(registry.guests_dir().iterdir()) == [], "overlay directory not empty"
    assert registry.all_records() == []


def spec(image: Image, role: str, campaign: str) -> VMSpec:
    return VMSpec(
        role=role,
        image=image,
        vcpus=2,
        memory_mib=1024,
        vcpu_pins=PINS,
        emulator_pins=(0, 1),
        accelerator="tcg",
        campaign_id=campaign,
    )


def test_two_pinned_guests(image: Image, tmp_path: Path) -> None:
    base_before = image.qcow2.stat().st_mtime_ns
    specs = [spec(image, role, "realtest") for role in ("amqp", "spin")]
    names = {s.domain_name for s in specs}
    with boot_guests(specs, uri=URI, ready_timeout=READY_TIMEOUT) as guests:
        assert {g.name for g in guests} == names
        assert names <= domains()
        for guest in guests:
            assert guest.alive()
            assert guest.affinity() == {0: (0,), 1: (1,)}
            assert guest.readback["vcpu_affinity"] == {"0": [0], "1": [1]}
            assert set(guest.readback["vcpu_threads"]) == {"0", "1"}  # type: ignore[arg-type]
            ex = guest.executor
            assert ex.run(["nproc"], timeout=60).stdout.strip() == "2"
            assert ex.run(["uname", "-r"], timeout=60).stdout.strip().startswith("6.1.")
            marker = tmp_path / f"{guest.name}.txt"
            marker.write_text(guest.name)
            ex.put(marker, "/tmp/kvmple/marker.txt")
            back = tmp_path / f"{guest.name}.back"
            ex.get("/tmp/kvmple/marker.txt", back)
            assert back.read_text() == guest.name
            assert "ttyS0" in guest.console_tail(200) or guest.console_log.stat().st_size > 0
        # the two guests really are two machines
        ids = {g.executor.run(["cat", "/etc/machine-id"], timeout=60).stdout for g in guests}
        boot_ids = {
            g.executor.run(["cat", "/proc/sys/kernel/random/boot_id"], timeout=60).stdout
            for g in guests
        }
        restored = [g.readback["boot"]["mode"] == "restored" for g in guests]  # type: ignore[index]
        if all(restored):
            # from one booted snapshot: the kernel's boot_id is the snapshot's (it is made
            # once per boot); what tells them apart is their VM generation ID (kvmple.vm.snapshot)
            genids = {
                run(["virsh", "-c", URI, "dumpxml", g.name], timeout=60).stdout.split("<genid>")[1]
                for g in guests
            }
            assert len(genids) == 2, genids
        else:
            assert len(boot_ids) == 2, ids

        # a guest that dies mid-run: alive() says so, commands fail with one GuestError
        victim = guests[1]
        run(["virsh", "-c", URI, "destroy", victim.name], timeout=60)
        assert not victim.alive()
        with pytest.raises(GuestError):
            victim.executor.run(["true"], timeout=30)
        assert guests[0].executor.run(["true"], timeout=60).ok
    assert_nothing_left(names)
    assert image.qcow2.stat().st_mtime_ns == base_before, "the base image was written"


def _vm_up(campaign: str, roles: tuple[str, ...]) -> subprocess.Popen[str]:
    argv = [
        sys.executable, "-m", "kvmple.cli", "vm", "up", "--accel", "tcg",
        "--campaign", campaign, "--ready-timeout", str(READY_TIMEOUT),
        *(f"{role}=debian12-amqp,vcpus=2,pins=0/1" for role in roles),
    ]  # fmt: skip
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started are killed even when the test fails."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run([sys.executable, "-m", "kvmple.cli", "gc"], timeout=120, check=False)


def _wait_for(names: set[str], proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not names <= domains():
        assert proc.poll() is None, f"vm up exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "guests never appeared in libvirt"
        time.sleep(0.2)


def test_sigterm_while_booting_leaves_nothing(
    image: Image, reaper: list[subprocess.Popen[str]]
) -> None:
    names = {"kvmple-sigterm-a", "kvmple-sigterm-b"}
    proc = _vm_up("sigterm", ("a", "b"))
    reaper.append(proc)
    _wait_for(names, proc, timeout=WAIT_FOR_DOMAINS)
    time.sleep(2)  # well into the SSH wait
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert_nothing_left(names)


def _reaper_of(owner: int) -> int:
    """The pid of the reaper process ``owner`` started (vm/reaper.py)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == owner and b"kvmple.vm.reaper" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"process {owner} has no reaper")


def _gone_within(names: set[str], seconds: float) -> set[str]:
    """Poll until no domain of ``names`` exists (a bound on correctness, not a speed test)."""
    deadline = time.monotonic() + seconds
    while names & domains() and time.monotonic() < deadline:
        time.sleep(0.5)
    return names & domains()


def test_sigkilled_owner_takes_its_guests_along(
    image: Image, reaper: list[subprocess.Popen[str]]
) -> None:
    """`kvmple vm up` (not detached) killed by SIGKILL, which nothing in it can catch: its
    reaper destroys the guest, its overlay and record within 10 s."""
    names = {"kvmple-ownerkill-a"}
    proc = _vm_up("ownerkill", ("a",))
    reaper.append(proc)
    _wait_for(names, proc, timeout=WAIT_FOR_DOMAINS)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _gone_within(names, 10.0) == set(), "the guest outlived its SIGKILLed owner"
    assert_nothing_left(names)


def test_sigkill_after_ready_then_gc(image: Image, reaper: list[subprocess.Popen[str]]) -> None:
    """One guest through the CLI (two were booted above; one keeps the tier short). Its owner
    and the owner's reaper are both killed (the OOM killer could do that): gc cleans up."""
    names = {"kvmple-sigkill-a"}
    proc = _vm_up("sigkill", ("a",))
    reaper.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready NAME NAME" once both answer SSH
    assert line.split() == ["ready", *sorted(names)], proc.stderr.read() if proc.stderr else ""

    # the human commands work against the running guests
    ssh = run([sys.executable, "-m", "kvmple.cli", "vm", "ssh", "a", "--", "nproc"], timeout=120)
    assert ssh.stdout.strip() == "2"
    listed = run([sys.executable, "-m", "kvmple.cli", "vm", "list", "--json"], timeout=60)
    states = {row["domain"]: row["state"] for row in json.loads(listed.stdout)}
    assert states == {n: f"owner {proc.pid}" for n in names}
    down = run([sys.executable, "-m", "kvmple.cli", "vm", "down", "--all"], timeout=60, check=False)
    assert "owned by running process" in down.stderr and names <= domains()
    gc_live = run([sys.executable, "-m", "kvmple.cli", "gc"], timeout=120)
    assert "in use by process" in gc_live.stderr and names <= domains()

    os.kill(_reaper_of(proc.pid), signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(2)
    assert names <= domains(), "with the reaper killed too, the guests must still be there"
    assert len(registry.all_records()) == 1

    gc = run([sys.executable, "-m", "kvmple.cli", "gc"], timeout=120)
    for name in names:
        assert f"removed domain {name}" in gc.stderr
    assert_nothing_left(names)
    again = run([sys.executable, "-m", "kvmple.cli", "gc"], timeout=120)
    assert "nothing to clean" in again.stderr


def test_ssh_port_taken_meanwhile_is_retried(image: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process grabs the port between kvmple picking it and QEMU binding it: QEMU
    refuses to start, kvmple retries with a new port (real QEMU, real libvirt)."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        offered = iter([taken])
        real_free_port = lifecycle.free_port
        monkeypatch.setattr(lifecycle, "free_port", lambda: next(offered, 0) or real_free_port())
        guest_spec = spec(image, "port", "porttest")
        with connect(URI) as lv:
            boot = lifecycle._Boot(lv, ready_timeout=5)
            try:
                guest = boot.start(guest_spec)
                assert guest.ssh_port != taken
                assert guest.alive()
                assert registry.load(guest.name).ssh_port == guest.ssh_port  # type: ignore[union-attr]
            finally:
                assert boot.teardown() == []
    assert_nothing_left({guest_spec.domain_name})
