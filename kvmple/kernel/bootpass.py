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

from kvmple.kernel.boottest import BootResult
from kvmple.kernel.imageboot import ImageBootResult

RECORD = "kvmple-boottest.json"


def record_pass(
    out: Path, result: BootResult | ImageBootResult, image_sha256: str, *, kind: str = "initramfs"
) -> Path:
    """Write the pass record the install step insists on (tied to the image's hash); ``kind``
    says which boot test passed: the initramfs gate or a full guest image."""
    data = {
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


def load_pass(out: Path) -> dict[str, object] | None:
    try:
        data = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("passed") is True else None
