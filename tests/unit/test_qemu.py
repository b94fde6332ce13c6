"""The one QEMU argv builder (kvmple/qemu.py): accelerator mapping, CPU model with features,
user-mode NIC on 127.0.0.1 only, direct boot, drives, console, debug exit; a missing QEMU is
the same HostError (exit 4) for every caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.errors import HostError
from kvmple.kernel.boottest import boot_test
from kvmple.qemu import (
    DirectBoot,
    Drive,
    QemuConfig,
    accel_arg,
    command_line,
    cpu_arg,
    find_qemu,
    netdev_args,
)


def test_accel_mapping() -> None:
    assert accel_arg("kvm", 4) == "kvm"
    assert accel_arg("tcg", 1) == "tcg"
    assert accel_arg("tcg", 2) == "tcg,thread=multi"
    assert accel_arg("tcg,thread=single", 2) == "tcg,thread=single"


def test_cpu_model_with_features() -> None:
    assert cpu_arg("qemu64", ("+svm", "npt", "-x2apic")) == "qemu64,+svm,+npt,-x2apic"
    assert cpu_arg("host") == "host"


def test_netdev_binds_loopback_only() -> None:
    args = netdev_args(2222, netdev_id="n", device_extra="addr=0x1e")
    assert args == [
        "-netdev",
        "user,id=n,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device",
        "virtio-net-pci,netdev=n,addr=0x1e",
    ]
    with pytest.raises(ValueError):
        netdev_args(0)


def test_full_command_line(tmp_path: Path) -> None:
    config = QemuConfig(
        accel="tcg",
        memory_mib=2048,
        cpus=2,
        serial=tmp_path / "console.log",
        boot=DirectBoot(tmp_path / "bzImage", None, "console=ttyS0 root=/dev/vda"),
        drives=(Drive(tmp_path / "overlay.qcow2"),),
        ssh_port=2200,
        machine="q35",
        cpu_model="qemu64",
        cpu_features=("+svm", "+npt"),
        name="lab-amd",
        debug_exit=True,
    )
    argv = command_line(config)
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "tcg,thread=multi"]

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("-machine") == "q35"
    assert value("-cpu") == "qemu64,+svm,+npt"
    assert value("-name") == "lab-amd,debug-threads=on"
    assert value("-m") == "2048" and value("-smp") == "2"
    assert value("-serial") == f"file:{tmp_path / 'console.log'}"
    assert value("-kernel") == str(tmp_path / "bzImage") and "-initrd" not in argv
    assert value("-append") == "console=ttyS0 root=/dev/vda"
    assert (
        value("-drive") == f"file={tmp_path / 'overlay.qcow2'},if=virtio,format=qcow2,cache=unsafe"
    )
    assert "hostfwd=tcp:127.0.0.1:2200-:22" in value("-netdev")
    assert "isa-debug-exit,iobase=0xf4,iosize=0x04" in argv
    assert {"-nodefaults", "-no-reboot"} <= set(argv) and "-no-user-config" not in argv


def test_missing_qemu_is_a_host_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HostError) as info:
        find_qemu("qemu-system-nonexistent")
    assert info.value.exit_code == 4
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"\0")
    monkeypatch.setenv("PATH", str(tmp_path))  # no QEMU anywhere
    with pytest.raises(HostError, match="qemu-system-x86_64 not found"):
        boot_test(kernel, "6.1.0", accel="tcg")
