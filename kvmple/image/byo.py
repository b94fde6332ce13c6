""" "Bring your own image": an existing qcow2 + kernel + initrd + host keys, only checked.

kvmple never modifies such an image (the VM layer boots an overlay on it). The checks catch
the usual mix-ups before a guest is started: a raw disk named .qcow2, an initrd given as the
kernel, a host key file that is really a private key.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from kvmple.errors import CommandError, ConfigError
from kvmple.image.artifact import FileIdentity, Image, ImageManifest, cmdline_for, host_key_lines
from kvmple.image.recipe import BringYourOwn, Recipe
from kvmple.run import run

INITRD_MAGICS = (
    b"\x1f\x8b",  # gzip
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\xfd7zXZ",  # xz
    b"070701",  # cpio (uncompressed, or early microcode prefix)
    b"\x02\x21\x4c\x18",  # lz4
    b"BZh",  # bzip2
    b"\x5d\x00\x00",  # lzma
)


def is_bzimage(head: bytes) -> bool:
    """x86 boot protocol: 'HdrS' at offset 0x202."""
    return head[0x202:0x206] == b"HdrS"


def is_initrd(head: bytes) -> bool:
    return any(head.startswith(magic) for magic in INITRD_MAGICS)


def _head(path: Path, size: int = 1024) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def check(recipe: Recipe, source: Path) -> Image:
    """Check a bring-your-own recipe's files and return them as an ``Image``."""
    byo = recipe.bring_your_own
    assert byo is not None
    where = f"{source}: bring_your_own"
    disk_format = _disk_format(Path(byo.qcow2), where)
    if disk_format != "qcow2":
        raise ConfigError(
            f"{where}.qcow2: {byo.qcow2} is a {disk_format} image, not qcow2",
            hint=f"convert it: qemu-img convert -O qcow2 {byo.qcow2} NEW.qcow2",
        )
    if not is_bzimage(_head(Path(byo.kernel))):
        raise ConfigError(
            f"{where}.kernel: {byo.kernel} is not an x86 kernel image (no bzImage header)",
            hint="point 'kernel' at a vmlinuz/bzImage file",
        )
    if not is_initrd(_head(Path(byo.initrd))):
        raise ConfigError(
            f"{where}.initrd: {byo.initrd} is not an initrd (not cpio or compressed cpio)",
            hint="point 'initrd' at the initrd.img matching the kernel",
        )
    text = Path(byo.host_keys).read_text(encoding="utf-8", errors="replace")
    try:
        host_keys = host_key_lines(text)
    except ValueError as exc:
        raise ConfigError(
            f"{where}.host_keys: {byo.host_keys}: {exc}",
            hint="give the guest's /etc/ssh/ssh_host_*_key.pub lines (public keys only)",
        ) from exc
    files = _file_identity(byo)
    key = hashlib.sha256(
        json.dumps(
            {
                "recipe": recipe.model_dump(mode="json"),
                "files": {label: f.model_dump() for label, f in files.items()},
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    manifest = ImageManifest(
        name=recipe.name,
        key=key,
        bring_your_own=True,
        checked_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        files=files,
        host_keys=host_keys,
    )
    return Image(
        name=recipe.name,
        key=key,
        qcow2=Path(byo.qcow2),
        kernel=Path(byo.kernel),
        initrd=Path(byo.initrd),
        cmdline=cmdline_for(recipe.cmdline),
        ssh_user=byo.ssh_user,
        host_keys=host_keys,
        manifest=manifest,
    )


def _disk_format(path: Path, where: str) -> str:
    try:
        result = run(
            ["qemu-img", "info", "--output=json", "-U", path],
            timeout=60,
            what="qemu-img info",
        )
        info = json.loads(result.stdout)
    except (CommandError, ValueError) as exc:
        raise ConfigError(
            f"{where}.qcow2: {path} is not a readable disk image: {exc}",
            hint="check the path and that qemu-utils is installed",
        ) from exc
    return str(info.get("format", "unknown"))


def _file_identity(byo: BringYourOwn) -> dict[str, FileIdentity]:
    identity = {}
    for label in ("qcow2", "kernel", "initrd", "host_keys"):
        path = Path(getattr(byo, label))
        stat = path.stat()
        identity[label] = FileIdentity(path=str(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return identity
