"""Build step 3: the tree becomes an ext4 file system (``mkfs.ext4 -d``, no loop mount), then
a qcow2, and the kernel and initrd are copied out beside it for direct kernel boot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kvmple.errors import BuildError, CommandError
from kvmple.image.configure import guest_path
from kvmple.image.recipe import size_mib
from kvmple.run import run_logged

LABEL = "kvmple-root"


def make_disk(tree: Path, size: str, qcow2: Path, log: Path) -> None:
    """``tree`` -> ext4 of ``size`` -> ``qcow2`` (the raw intermediate is removed)."""
    raw = qcow2.with_suffix(".raw")
    try:
        with raw.open("wb") as handle:
            os.ftruncate(handle.fileno(), size_mib(size) * 1024 * 1024)
        run_logged(
            ["mkfs.ext4", "-q", "-F", "-L", LABEL, "-d", tree, raw],
            log=log,
            timeout=900,
            what="mkfs.ext4 -d",
        )
        run_logged(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2],
            log=log,
            timeout=900,
            what="qemu-img convert",
        )
    except CommandError as exc:
        text = log.read_text(encoding="utf-8", errors="replace")
        cause = exc.message
        hint = f"full log: {log}"
        if "No space left" in text or "Could not allocate block" in text:
            cause = "the image's disk_size is too small for its packages"
            hint = f"raise 'disk_size' in the recipe; {hint}"
        raise BuildError(f"step disk failed: {cause}", hint=hint) from exc
    except OSError as exc:
        raise BuildError(
            f"step disk failed: {exc.strerror or exc}: {exc.filename or raw}",
            hint=f"check free space in {raw.parent}",
        ) from exc
    finally:
        raw.unlink(missing_ok=True)


def copy_boot_files(tree: Path, release: str, kernel: Path, initrd: Path) -> None:
    """Copy vmlinuz-RELEASE and initrd.img-RELEASE out of the tree."""
    for name, target in ((f"vmlinuz-{release}", kernel), (f"initrd.img-{release}", initrd)):
        source = guest_path(tree, f"/boot/{name}")
        if not source.is_file():
            raise BuildError(
                f"step disk: /boot/{name} missing in the image",
                hint="the recipe must install a kernel package such as linux-image-amd64",
            )
        shutil.copyfile(source, target)
