"""A minimal initramfs for the boot gate: busybox-static plus an /init that mounts /proc and
/sys, prints one marker line with ``uname -r`` on the console and reboots (QEMU runs with
-no-reboot, so it exits at once).

The cpio ("newc") archive is written here in pure Python, so it needs no root (the
/dev/console node is just a header) and is reproducible: it is cached by content. The
per-boot token arrives through the kernel command line (``kvmple_token=...``), which the
kernel hands to init as an environment variable, so one cached archive serves every boot.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmple.errors import HostError

MARKER = "KVMPLE-BOOT-OK"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "{MARKER} release=$(/bin/busybox uname -r) token=$kvmple_token"
/bin/busybox reboot -f
"""

BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def newc_archive(entries: list[Entry]) -> bytes:
    """A cpio archive in the kernel's "newc" format (pure)."""
    chunks: list[bytes] = []
    for ino, entry in enumerate([*entries, Entry("TRAILER!!!", 0)], 1):
        name = entry.name.encode() + b"\0"
        fields = (ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        chunks += [header, name, _pad(len(header) + len(name)), entry.data, _pad(len(entry.data))]
    return b"".join(chunks)


def is_static_elf(data: bytes) -> bool:
    """True for an ELF64 executable without a PT_INTERP (dynamic loader) program header."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    endian = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    for index in range(phnum):
        (kind,) = struct.unpack_from(endian + "I", data, phoff + index * phentsize)
        if kind == 3:  # PT_INTERP
            return False
    return True


def find_busybox() -> bytes:
    for path in BUSYBOX_CANDIDATES:
        if path.is_file():
            data = path.read_bytes()
            if is_static_elf(data):
                return data
    raise HostError(
        "no statically linked busybox found (/bin/busybox)",
        hint="apt-get install busybox-static (the initramfs has no libc to load)",
    )


def boot_entries(busybox: bytes) -> list[Entry]:
    directory, regular, executable = 0o040755, 0o100644, 0o100755
    return [
        Entry("bin", directory),
        Entry("dev", directory),
        Entry("proc", directory),
        Entry("sys", directory),
        Entry("dev/console", 0o020600, rdev=(5, 1)),
        Entry("bin/busybox", executable, busybox),
        Entry("bin/sh", 0o120777, b"busybox"),
        Entry("init", executable, INIT_SCRIPT.encode()),
        Entry("etc", directory),
        Entry("etc/kvmple-initramfs", regular, b"kvmple boot-test initramfs\n"),
    ]


def boot_initramfs(cache: Path) -> Path:
    """The cached boot-test initramfs (built on first use)."""
    archive = newc_archive(boot_entries(find_busybox()))
    key = hashlib.sha256(archive).hexdigest()[:16]
    path = cache / "kernel" / f"boot-initramfs-{key}.cpio"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".initramfs-", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(archive)
        os.replace(temp, path)
    return path
