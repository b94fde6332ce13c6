"""The boot-test pass record the install step insists on: ``OUT/kvmple-boottest.json``, tied
to the SHA-256 of the image that passed. Either boot test writes it: the initramfs gate
(boottest.py) or a full guest image (imageboot.py); this module depends on both, neither on
the other.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from kvmple.config.jsonfile import JsonRecord
from kvmple.errors import InputError
from kvmple.kernel.boottest import BootResult
from kvmple.kernel.imageboot import ImageBootResult

RECORD = "kvmple-boottest.json"


class BootPass(JsonRecord):
    """What install checks of a pass record: it passed, for exactly this image. The file also
    keeps the boot test's own result fields (console log, timings), which readers ignore."""

    SCHEMA_VERSION = 1

    passed: bool
    image_sha256: str  # the SHA-256 of the bzImage that booted
    kind: str = "initramfs"  # "initramfs" (the gate) or "image" (a full guest image)
    release: str | None = None  # uname -r seen in the guest
    accel: str | None = None  # kvm or tcg
    at: str | None = None  # ISO 8601 local time with offset


def record_pass(
    out: Path, result: BootResult | ImageBootResult, image_sha256: str, *, kind: str = "initramfs"
) -> Path:
    """Write the pass record the install step insists on (tied to the image's hash); ``kind``
    says which boot test passed: the initramfs gate or a full guest image."""
    data = {
        "schema_version": BootPass.SCHEMA_VERSION,
        **asdict(result),
        "kind": kind,
        "image_sha256": image_sha256,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = out / RECORD
    temp = out / f"{RECORD}.tmp"
    temp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)
    return path


def load_pass(out: Path) -> BootPass | None:
    """The pass record in ``out``, or None when there is none, it is unreadable or it records
    no pass (install then refuses: no passed boot test)."""
    try:
        record = BootPass.read(out / RECORD)
    except (FileNotFoundError, InputError):
        return None
    return record if record.passed else None
