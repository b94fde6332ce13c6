"""The booted-snapshot cache: ready guests saved once, restored many times.

Layout: ``<cache>/snapshots/<key>/`` holds ``memory.save`` (libvirt's save image of the
ready guest), ``disk.qcow2`` (its overlay as it was at save time, backed by the image's
qcow2) and ``snapshot.json`` (what the key was made of, sizes, times). An entry is built in
``.tmp-<key>-<pid>`` and renamed into place, ``snapshot.json`` written last: a directory
without it, or a temporary one, is never used and is removed by ``prune``. Entries are
read-only once published: restores copy the save image and put a new overlay on the disk.

The key is a SHA-256 over the fields of ``SnapshotKey``; anything that shapes the state of a
ready guest belongs in it (see kvmple.vm.snapshot.key_for). The cache is bounded: ``prune``
removes the least recently used entries (``last_used`` is the entry's mtime, touched on each
restore) until it holds at most ``cap_bytes()`` (env KVMPLE_SNAPSHOT_CAP_MIB, default 4096).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmple.errors import StoreError, UsageError
from kvmple.events import Sink, Warn
from kvmple.paths import cache_dir

MEMORY = "memory.save"
DISK = "disk.qcow2"
META = "snapshot.json"
FORMAT = 1
DEFAULT_CAP_MIB = 4096


@dataclass(frozen=True)
class Snapshot:
    """A published cache entry. ``fields`` is what its key was computed from."""

    key: str
    directory: Path
    fields: dict[str, Any]
    size_bytes: int
    created: float
    last_used: float
    sizes: dict[str, int] | None = None  # bytes of each file when published

    def damage(self) -> str | None:
        """What is wrong with the files (a size differing from the published one), or None.
        Cheap by design (no hashing of a memory-sized file before each restore)."""
        for name, size in (self.sizes or {}).items():
            try:
                actual = (self.directory / name).stat().st_size
            except OSError as exc:
                return f"{name}: {exc.strerror}"
            if actual != size:
                return f"{name} has {actual} bytes, {size} when saved (truncated?)"
        return None

    @property
    def memory(self) -> Path:
        return self.directory / MEMORY

    @property
    def disk(self) -> Path:
        return self.directory / DISK


def snapshots_dir() -> Path:
    path = cache_dir() / "snapshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_of(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``fields`` as canonical JSON, with the cache format mixed in."""
    text = json.dumps({"format": FORMAT, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def cap_bytes() -> int:
    raw = os.environ.get("KVMPLE_SNAPSHOT_CAP_MIB", str(DEFAULT_CAP_MIB))
    try:
        value = int(raw)
    except ValueError as exc:
        raise UsageError(
            f"KVMPLE_SNAPSHOT_CAP_MIB={raw!r} is not a whole number of MiB",
            hint="e.g. KVMPLE_SNAPSHOT_CAP_MIB=4096; 0 keeps no snapshots",
        ) from exc
    return max(0, value) * 2**20


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def _load(directory: Path) -> Snapshot | None:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("key") != directory.name:
            return None
        stat = directory.stat()
        return Snapshot(
            key=directory.name,
            directory=directory,
            fields=dict(meta["fields"]),
            size_bytes=_size(directory),
            created=float(meta["created"]),
            last_used=stat.st_mtime,
            sizes={str(k): int(v) for k, v in meta.get("sizes", {}).items()},
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lookup(key: str) -> Snapshot | None:
    """The published entry for ``key`` (both files present), or None."""
    directory = snapshots_dir() / key
    entry = _load(directory)
    if entry is None or not entry.memory.is_file() or not entry.disk.is_file():
        return None
    return entry


def touch(entry: Snapshot) -> None:
    """Mark ``entry`` as just used (LRU order); a vanished entry is ignored."""
    try:
        os.utime(entry.directory)
    except OSError:
        pass


def staging(key: str) -> Path:
    """A fresh private directory to build the entry for ``key`` in (same file system)."""
    path = snapshots_dir() / f".tmp-{key}-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    return path


def publish(stage: Path, key: str, fields: Mapping[str, Any]) -> Snapshot | None:
    """Write ``snapshot.json`` into ``stage`` and rename it to the entry of ``key``.

    Returns the entry, or None when another boot published the same key first (``stage`` is
    removed then). OSError (disk full, ...) propagates after ``stage`` is removed.
    """
    try:
        sizes = {p.name: p.stat().st_size for p in stage.iterdir() if p.name != META}
        meta = {
            "format": FORMAT,
            "key": key,
            "fields": dict(fields),
            "created": time.time(),
            "sizes": sizes,
        }
        with (stage / META).open("w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(stage, snapshots_dir() / key)
        except OSError:
            if lookup(key) is None:
                raise
            shutil.rmtree(stage, ignore_errors=True)
            return None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return lookup(key)


def entries() -> list[Snapshot]:
    """Published entries, most recently used first."""
    found = [_load(p) for p in snapshots_dir().iterdir() if p.is_dir() and p.name[0] != "."]
    return sorted((e for e in found if e), key=lambda e: e.last_used, reverse=True)


def discard(key: str) -> bool:
    """Remove the entry of ``key`` (renamed aside first, so no reader sees half of it)."""
    directory = snapshots_dir() / key
    if not directory.exists():
        return False
    doomed = directory.with_name(f".rm-{key}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(directory, doomed)
    except FileNotFoundError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def remove(ref: str) -> list[str]:
    """``kvmple image rm``: remove the entries whose key starts with ``ref`` (>= 6 hex
    digits), or every entry for ``ref`` == "snapshots". UsageError when nothing matches."""
    if ref == "snapshots":
        keys = [e.key for e in entries()]
    elif len(ref) >= 6 and all(c in "0123456789abcdef" for c in ref):
        keys = [e.key for e in entries() if e.key.startswith(ref)]
    else:
        keys = []
    if not keys:
        raise UsageError(
            f"no snapshot matches {ref!r}", hint="see 'kvmple image list' for snapshot keys"
        )
    return [k for k in keys if discard(k)]


def prune(cap: int | None = None, *, keep: str | None = None) -> list[str]:
    """Drop stale temporaries (of dead processes) and the least recently used entries until
    the cache is at most ``cap`` bytes (default ``cap_bytes()``); ``keep`` is never dropped.
    Returns the removed keys."""
    limit = cap_bytes() if cap is None else cap
    for path in snapshots_dir().iterdir():
        if path.name.startswith((".tmp-", ".rm-")) and not _owner_alive(path.name):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir() and path.name[0] != "." and not (path / META).is_file():
            if time.time() - path.stat().st_mtime > 3600:  # half-published and abandoned
                shutil.rmtree(path, ignore_errors=True)
    removed: list[str] = []
    found = entries()
    total = sum(e.size_bytes for e in found)
    for entry in reversed(found):  # least recently used first
        if total <= limit:
            break
        if entry.key == keep:
            continue
        if discard(entry.key):
            removed.append(entry.key)
            total -= entry.size_bytes
    return removed


def _owner_alive(name: str) -> bool:
    try:
        pid = int(name.split("-")[2])
    except (IndexError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists()


def describe(entry: Snapshot) -> dict[str, Any]:
    """A JSON-ready row for ``kvmple image list``."""
    return {
        "key": entry.key,
        "directory": str(entry.directory),
        "size_bytes": entry.size_bytes,
        "created": entry.created,
        "last_used": entry.last_used,
        **{k: entry.fields.get(k) for k in ("image", "readiness", "vcpus", "memory_mib")},
    }


def check_writable() -> None:
    """StoreError when the snapshot directory cannot be written (read-only cache)."""
    if not os.access(snapshots_dir(), os.W_OK):
        raise StoreError(f"snapshot cache {snapshots_dir()} is not writable")


_VERSIONED = ("qemu", "libvirt")


def discard_other_versions(fields: Mapping[str, Any], sink: Sink) -> None:
    """Snapshots of this very guest shape made by another QEMU or libvirt can never be
    restored here (QEMU refuses a foreign migration stream): drop them, one line each."""
    same = {k: v for k, v in fields.items() if k not in _VERSIONED}
    for entry in entries():
        other = entry.fields
        if {k: other.get(k) for k in same} != same:
            continue
        if all(other.get(k) == fields[k] for k in _VERSIONED):
            continue
        if discard(entry.key):
            was = ", ".join(f"{k} {other.get(k)}" for k in _VERSIONED)
            now = ", ".join(f"{k} {fields[k]}" for k in _VERSIONED)
            sink(Warn(f"snapshot {entry.key[:12]} ({was}) discarded: this host runs {now}"))
