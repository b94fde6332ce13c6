"""What kvmple started: one small JSON record per guest, so nothing else is ever touched.

Records live in ``state_dir()/vm/records/<domain>.json``; each guest's files (overlay, console
log, known_hosts) in ``state_dir()/vm/guests/<domain>/``. A record is written (exclusively)
*before* the domain is created and forgotten only after the domain and its files are gone,
so a crash at any point leaves something ``kvmple gc`` can find.

A record names its owner process (pid + kernel start time, immune to pid reuse). A record
whose owner is dead belongs to a crashed run; ``detached`` records (``vm up --detach``)
belong to nobody and stay until ``vm down``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import JsonValue, TypeAdapter, ValidationError

from kvmple import paths
from kvmple.config.jsonfile import first_error
from kvmple.errors import GuestError, StoreError


def vm_dir() -> Path:
    directory = paths.state_dir() / "vm"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def records_dir() -> Path:
    directory = vm_dir() / "records"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def guests_dir() -> Path:
    """Parent of every guest's run directory (overlays live here; empty when idle)."""
    directory = vm_dir() / "guests"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone or a
    zombie (it exited and can no longer clean anything up; proc(5): state Z)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


@dataclass(frozen=True)
class GuestRecord:
    domain: str
    uri: str
    role: str
    campaign_id: str
    image: str
    run_dir: str
    ssh_port: int
    ssh_user: str
    ssh_key: str
    host_keys: tuple[str, ...]  # 'type base64' lines pinned for SSH
    owner_pid: int
    owner_start: int | None
    detached: bool
    created: float

    @property
    def owner_alive(self) -> bool:
        if self.detached:
            return False
        start = process_start_time(self.owner_pid)
        return start is not None and start == self.owner_start

    def to_json(self) -> dict[str, JsonValue]:
        """The record file's JSON object (host_keys as a list)."""
        return {**asdict(self), "host_keys": list(self.host_keys)}

    @classmethod
    def from_json(cls, data: object) -> GuestRecord:
        """Validate a parsed record file; a missing ``host_keys`` is empty (older records).
        pydantic's ValidationError names the missing or mistyped key."""
        if isinstance(data, dict) and "host_keys" not in data:
            data = {**data, "host_keys": []}
        return _GUEST_RECORD.validate_python(data)


_GUEST_RECORD: TypeAdapter[GuestRecord] = TypeAdapter(GuestRecord)


def record_path(domain: str) -> Path:
    return records_dir() / f"{domain}.json"


def claim(record: GuestRecord) -> None:
    """Write ``record`` unless one for the same domain exists (atomic, exclusive).

    GuestError when the name is taken by a live run; a dead owner's record means gc first.
    """
    target = record_path(record.domain)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    try:
        os.link(temp, target)  # fails if the target exists: an exclusive, complete create
    except FileExistsError:
        existing = load(record.domain)
        who = (
            f"process {existing.owner_pid}"
            if existing and existing.owner_alive
            else "a run that crashed or was detached"
        )
        raise GuestError(
            f"guest {record.domain} already exists (started by {who})",
            hint="stop it with 'kvmple vm down NAME' or reap crashed runs with 'kvmple gc'",
        ) from None
    finally:
        temp.unlink(missing_ok=True)


def update(record: GuestRecord) -> None:
    target = record_path(record.domain)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    os.replace(temp, target)


def load(domain: str) -> GuestRecord | None:
    path = record_path(domain)
    try:
        return GuestRecord.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise StoreError(
            f"VM record {path} is unreadable: {key}: {msg}",
            hint="remove the file by hand after checking 'virsh list --all'",
        ) from exc
    except ValueError as exc:
        raise StoreError(
            f"VM record {path} is unreadable: {exc}",
            hint="remove the file by hand after checking 'virsh list --all'",
        ) from exc


def all_records() -> list[GuestRecord]:
    records = []
    for path in sorted(records_dir().glob("*.json")):
        record = load(path.stem)
        if record is not None:
            records.append(record)
    return records


def forget(record: GuestRecord) -> None:
    """Delete the guest's run directory, then its record (that order: see module doc)."""
    run_dir = Path(record.run_dir)
    if run_dir.parent == guests_dir():  # never delete outside our own directory
        shutil.rmtree(run_dir, ignore_errors=True)
    record_path(record.domain).unlink(missing_ok=True)
