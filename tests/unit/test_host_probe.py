"""The KVM boot probe's image, classification and cache (the boots themselves: tests/real)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from kvmple.host import kvmprobe
from kvmple.host.kvmprobe import PROBE_ASM, PROBE_IMAGE, BootProbe, ProbeOutcome
from kvmple.run import run


def test_image_is_a_valid_multiboot_flat_binary() -> None:
    magic, flags, checksum, header, load, load_end, bss_end, entry = struct.unpack_from(
        "<8I", PROBE_IMAGE
    )
    assert magic == 0x1BADB002
    assert flags == 0x00010000  # address fields valid: a flat binary QEMU can load
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert header == load == 0x100000
    assert (load_end, bss_end) == (0, 0)
    assert entry == 0x100000 + 32
    # ends with the debug-exit write (out %eax,%dx) and the hlt loop
    assert bytes.fromhex("b82a000000eff4ebfd") in PROBE_IMAGE


def test_image_matches_its_source(tmp_path: Path) -> None:
    """PROBE_IMAGE is exactly what binutils makes of PROBE_ASM (no unexplained bytes)."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) not installed")
    source = tmp_path / "probe.S"
    source.write_text(PROBE_ASM)
    obj = tmp_path / "probe.o"
    binary = tmp_path / "probe.bin"
    run(["as", "--64", "-o", obj, source], timeout=60)
    run(
        ["ld", "-Ttext=0x100000", "--oformat", "binary", "-e", "_start", "-o", binary, obj],
        timeout=60,
    )
    assert binary.read_bytes() == PROBE_IMAGE


def test_exit_status_and_argv() -> None:
    assert kvmprobe.EXIT_STATUS == 85
    argv = kvmprobe.qemu_argv("qemu", "kvm", Path("/x/probe.bin"), Path("/x/s.txt"))
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "isa-debug-exit,iobase=0xf4,iosize=0x04" in argv
    assert "-nodefaults" in argv and "-no-reboot" in argv
    assert not any("-net" in a or "hostfwd" in a for a in argv)  # no network at all


def test_missing_qemu_is_a_failed_probe_not_a_crash() -> None:
    outcome = kvmprobe.run_probe("/nonexistent/qemu-system-x86_64", "tcg", timeout=5)
    assert outcome.status == "failed"
    assert not outcome.passed
    assert "not found" in outcome.detail


def test_qemu_that_exits_wrongly_is_failed() -> None:
    outcome = kvmprobe.run_probe("/bin/false", "tcg", timeout=5)
    assert outcome.status == "failed"
    assert "status 1" in outcome.detail


def test_stage_descriptions_cover_every_prefix() -> None:
    for n in range(len(kvmprobe.MARKS) + 1):
        assert kvmprobe.MARKS[:n] in kvmprobe.STAGES


def _outcome(accel: str, status: str) -> ProbeOutcome:
    return ProbeOutcome(accel, status, 1.0, "PGL", "detail")


def test_cache_round_trip_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_run_probe(qemu: str, accel: str, timeout: float = 10.0) -> ProbeOutcome:
        calls.append(accel)
        return _outcome(accel, "passed" if accel == "tcg" else "timeout")

    monkeypatch.setattr(kvmprobe, "run_probe", fake_run_probe)
    dev = Path("/dev/null")  # exists and is read/writable: stands in for /dev/kvm
    first = kvmprobe.boot_probe("qemu", "7.2.22", "kvm_pvm", dev)
    assert not first.cached
    assert calls == ["tcg", "kvm"]
    again = kvmprobe.boot_probe("qemu", "7.2.22", "kvm_pvm", dev)
    assert again.cached
    assert calls == ["tcg", "kvm"]  # no new boots
    assert again.kvm == first.kvm and again.tcg == first.tcg
    assert not again.kvm_boots
    kvmprobe.boot_probe("qemu", "8.0.0", "kvm_pvm", dev)  # another QEMU: probe again
    assert calls == ["tcg", "kvm"] * 2
    kvmprobe.boot_probe("qemu", "8.0.0", "kvm_intel", dev)  # another module: probe again
    assert len(calls) == 6
    kvmprobe.boot_probe("qemu", "8.0.0", "kvm_intel", dev, refresh=True)
    assert len(calls) == 8


def test_failed_control_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        kvmprobe, "run_probe", lambda qemu, accel, timeout=10.0: _outcome(accel, "failed")
    )
    kvmprobe.boot_probe("qemu", "7.2.22", "kvm_pvm", Path("/dev/null"))
    assert (
        kvmprobe.load_cached(
            kvmprobe.cache_key(__import__("platform").release(), "7.2.22", "kvm_pvm")
        )
        is None
    )


def test_missing_dev_kvm_skips_the_kvm_boot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        kvmprobe, "run_probe", lambda qemu, accel, timeout=10.0: _outcome(accel, "passed")
    )
    probe: BootProbe = kvmprobe.boot_probe("qemu", "7.2.22", None, tmp_path / "kvm")
    assert probe.kvm.status == "skipped"
    assert "does not exist" in probe.kvm.detail
    assert not probe.kvm_boots
    assert probe.to_json()["tcg_control"]["passed"] is True  # type: ignore[index]


def test_corrupt_cache_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmple import paths

    (paths.state_dir() / kvmprobe.CACHE_FILE).write_text("{not json")
    assert kvmprobe.load_cached(kvmprobe.cache_key("k", "q", "m")) is None
