"""Running-VM discovery: QEMU command lines, a fake /proc, and merging with libvirt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmple.host.vms import LibvirtListing, merge, qemu_guest_name, scan_processes
from kvmple.image.artifact import ImageManifest


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["qemu-system-x86_64", "-name", "guest=kvmple-a,debug-threads=on"], "kvmple-a"),
        (["qemu-system-x86_64", "-name", "plain"], "plain"),
        (["qemu-system-x86_64", "-m", "64"], None),
        (["qemu-system-x86_64", "-name"], None),
    ],
)
def test_qemu_guest_name(argv: list[str], name: str | None) -> None:
    assert qemu_guest_name(argv) == name


def _proc(root: Path, pid: int, argv: list[str], fds: dict[str, str] | None = None) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    for fd, target in (fds or {}).items():
        os.symlink(target, d / "fd" / fd)


def test_scan_finds_qemu_and_kvm_holders(tmp_path: Path) -> None:
    _proc(
        tmp_path, 10, ["/usr/bin/qemu-system-x86_64", "-name", "guest=kvmple-g1"], {"3": "/dev/kvm"}
    )
    _proc(tmp_path, 11, ["qemu-system-x86_64", "-accel", "tcg"], {"0": "/dev/null"})
    _proc(tmp_path, 12, ["/usr/bin/firecracker"], {"5": "anon_inode:kvm-vm"})
    _proc(tmp_path, 13, ["/bin/bash"], {"0": "/dev/pts/0"})
    _proc(tmp_path, 14, ["qemu-system-x86_64", "-S", "-machine", "none,accel=kvm:tcg"])
    _proc(tmp_path, 15, [])  # kernel thread: empty cmdline
    (tmp_path / "self").mkdir()
    vms = scan_processes(tmp_path, skip_pids=frozenset())
    assert [(v.pid, v.name, v.uses_kvm, v.kvmple_owned) for v in vms] == [
        (10, "kvmple-g1", True, True),
        (11, "qemu-system-x86_64[11]", False, False),
        (12, "firecracker[12]", True, False),
    ]


def test_scan_skips_given_pids(tmp_path: Path) -> None:
    _proc(tmp_path, 20, ["qemu-system-x86_64"])
    assert scan_processes(tmp_path, skip_pids=frozenset({20})) == []


def test_merge_attaches_processes_to_domains(tmp_path: Path) -> None:
    _proc(tmp_path, 30, ["qemu-system-x86_64", "-name", "guest=web"], {"3": "/dev/kvm"})
    _proc(tmp_path, 31, ["qemu-system-x86_64", "-name", "guest=stray"])
    listing = LibvirtListing("qemu:///system", True, ("web", "paused-one"), None)
    merged = merge([listing], scan_processes(tmp_path))
    assert [(v.name, v.source, v.pid, v.uses_kvm) for v in merged] == [
        ("web", "libvirt qemu:///system", 30, True),
        ("paused-one", "libvirt qemu:///system", None, False),
        ("stray", "process", 31, False),
    ]
    assert merged[0].describe() == "web (pid 30, holds /dev/kvm)"
    assert merged[1].describe() == "paused-one (libvirt qemu:///system)"


CASES = Path(__file__).resolve().parents[1] / "data" / "cases"


def test_libvirt_escaped_comma_name_is_one_vm() -> None:
    """Case qemu-name-escaped-comma: libvirt started QEMU with ``-name guest=foo=1,,bar=2``."""
    procs = scan_processes(CASES / "qemu-name-escaped-comma" / "proc")
    assert [(p.pid, p.name) for p in procs] == [(4242, "foo=1,bar=2")]
    listing = LibvirtListing("qemu:///system", True, ("foo=1,bar=2",), None)
    vms = merge([listing], procs)
    assert [(v.name, v.pid) for v in vms] == [("foo=1,bar=2", 4242)]


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["qemu-system-x86_64", "-name", "guest=a,,b,,,,c,debug-threads=on"], "a,b,,c"),
        (["qemu-system-x86_64", "-name", "plain,,name,process=x"], "plain,name"),
        (["qemu-system-x86_64", "-name", "process=p,guest=late,,one"], "late,one"),
        (["qemu-system-x86_64", "-name", "guest=trailing,,"], "trailing,"),
    ],
)
def test_qemu_guest_name_honours_double_comma(argv: list[str], name: str) -> None:
    assert qemu_guest_name(argv) == name


def test_capability_probe_machine_with_escape(tmp_path: Path) -> None:
    """``-machine none,...`` is libvirt's probe; a machine type is compared after unescaping."""
    _proc(tmp_path, 40, ["qemu-system-x86_64", "-machine", "type=none,accel=kvm"])
    _proc(tmp_path, 41, ["qemu-system-x86_64", "-machine", "none,,x,accel=tcg"])
    assert [v.pid for v in scan_processes(tmp_path, skip_pids=frozenset())] == [41]


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a,b", ["a", "b"]),
        ("a,,b", ["a,b"]),
        ("a,,,b", ["a,", "b"]),
        ("", [""]),
        (",,", [","]),
    ],
)
def test_split_qemu_option(text: str, parts: list[str]) -> None:
    from kvmple.qemuopts import escape_qemu_value, split_qemu_option

    assert split_qemu_option(text) == parts
    assert split_qemu_option(",".join(escape_qemu_value(p) for p in parts)) == parts


def test_probe_overlay_path_with_a_comma_is_escaped(tmp_path: Path) -> None:
    """A QEMU option kvmple builds keeps a comma in a path as ',,' (read back as one path)."""
    from kvmple.image.artifact import Image
    from kvmple.image.probe import qemu_argv
    from kvmple.qemuopts import qemu_option_fields

    folder = tmp_path / "a,b"
    image = Image(
        name="img",
        key="k" * 64,
        qcow2=folder / "disk.qcow2",
        kernel=folder / "vmlinuz",
        initrd=None,
        cmdline="root=/dev/vda",
        ssh_user="root",
        host_keys=(),
        manifest=ImageManifest(name="img", key="k"),
    )
    argv = qemu_argv(
        image, folder / "o.qcow2", folder / "c.log", 2222, cpus=1, memory_mib=256, accel="tcg"
    )
    drive = argv[argv.index("-drive") + 1]
    assert qemu_option_fields(drive)[1]["file"] == str(folder / "o.qcow2")
