"""The values kvmple saved before it first changed PLE parameters.

Written atomically (temp file + os.replace) BEFORE the first reload, so a crash between
changing and restoring still leaves what ``kvmple ple restore`` needs. Never overwritten
while it exists: it always holds the host's values from before kvmple touched them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kvmple import paths
from kvmple.errors import StoreError

FILE_NAME = "ple-originals.json"


@dataclass(frozen=True)
class SavedOriginals:
    module: str
    values: dict[str, int]
    saved_at: str
    kernel: str


def originals_path() -> Path:
    return paths.state_dir() / FILE_NAME


def load() -> SavedOriginals | None:
    """The saved originals, or None when kvmple has nothing to restore."""
    path = originals_path()
    try:
        data = json.loads(path.read_text())
        return SavedOriginals(
            module=str(data["module"]),
            values={str(k): int(v) for k, v in data["values"].items()},
            saved_at=str(data.get("saved_at", "")),
            kernel=str(data.get("kernel", "")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(
            f"{path}: unreadable saved PLE originals ({exc})",
            hint="inspect it; delete it only if you know the module's original values",
        ) from exc


def save_if_absent(module: str, values: Mapping[str, int]) -> bool:
    """Record ``values`` as the originals unless a record exists; True when written now."""
    if load() is not None:
        return False
    path = originals_path()
    record = {
        "schema_version": 1,
        "module": module,
        "values": dict(values),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return True


def forget() -> None:
    """Drop the record once the originals are back in place."""
    originals_path().unlink(missing_ok=True)
