"""Unit-tier fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.run import run
from tests.fixtures.fake_image import FileImage


@pytest.fixture
def image(tmp_path: Path) -> FileImage:
    """A fake guest image: a real 16 MiB qcow2 (qemu-img) with a kernel and initrd that are
    not bootable; for tests of the libvirt/snapshot logic that never start a guest."""
    base = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], timeout=30)
    (tmp_path / "vmlinuz").write_bytes(b"not a kernel")
    (tmp_path / "initrd.img").write_bytes(b"not an initrd")
    return FileImage("fake", base, tmp_path / "vmlinuz", tmp_path / "initrd.img")
