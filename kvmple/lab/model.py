"""The record of a lab host and the list of them.

A lab host booted through the guest runtime (``amd``) is a guest like any other: its
``GuestRecord`` (kvmple.vm.registry) makes ``kvmple gc`` reap it after a SIGKILL, and its
run directory carries ``lab.json`` (a ``LabHost``) beside the overlay and console log, so
removing the guest removes the lab record with it: nothing stale is ever listed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import JsonValue, TypeAdapter, ValidationError

from kvmple.config.jsonfile import first_error
from kvmple.errors import StoreError, UsageError
from kvmple.fsutil import write_atomic
from kvmple.vm import registry

# Campaign id of every lab host's domain: kvmple-lab-NAME
LAB_CAMPAIGN = "lab"
LAB_FILE = "lab.json"

LabKind = Literal["amd", "intel"]
LabState = Literal["running", "stopped", "booting", "orphaned"]


@dataclass(frozen=True)
class LabHost:
    """One lab host: what it emulates and how it was started.

    ``cpus``/``memory_mib``: the emulated machine's size; ``cpu``: the QEMU CPU model with
    its features ("qemu64,+svm,+npt"); ``ready_s``: seconds from start to SSH answering with
    the KVM module loaded; ``created``: Unix time; ``boot``: booted cold or restored from
    the booted snapshot ``snapshot`` (its key, kvmple.vm.snapshot).
    """

    name: str
    kind: LabKind
    domain: str
    cpus: int
    memory_mib: int
    cpu: str
    image: str
    created: float
    ready_s: float
    boot: Literal["cold", "restored"] = "cold"
    snapshot: str | None = None

    def to_json(self) -> dict[str, JsonValue]:
        """The ``lab.json`` object."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> LabHost:
        """Validate a parsed ``lab.json``; pydantic's ValidationError names a bad key."""
        return _LAB_HOST.validate_python(data)


_LAB_HOST: TypeAdapter[LabHost] = TypeAdapter(LabHost)


def save(record: registry.GuestRecord, host: LabHost) -> None:
    write_atomic(Path(record.run_dir) / LAB_FILE, json.dumps(host.to_json(), indent=2) + "\n")


def load(record: registry.GuestRecord) -> LabHost | None:
    """The lab record in the guest's run directory (None while the lab host still boots)."""
    path = Path(record.run_dir) / LAB_FILE
    try:
        return LabHost.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise StoreError(f"lab record {path} is unreadable: {key}: {msg}") from exc
    except ValueError as exc:
        raise StoreError(f"lab record {path} is unreadable: {exc}") from exc


@dataclass(frozen=True)
class LabEntry:
    """A lab host as ``lab list`` shows it: its guest record, its lab record, its state."""

    record: registry.GuestRecord
    host: LabHost | None
    state: LabState

    @property
    def name(self) -> str:
        return self.record.role

    def uptime_s(self, now: float | None = None) -> float:
        return (now or time.time()) - self.record.created

    def to_json(self) -> dict[str, JsonValue]:
        """A row of ``lab list --json``."""
        host = self.host
        return {
            "name": self.name,
            "kind": host.kind if host else None,
            "domain": self.record.domain,
            "cpus": host.cpus if host else None,
            "memory_mib": host.memory_mib if host else None,
            "cpu": host.cpu if host else None,
            "ssh_port": self.record.ssh_port,
            "uptime_s": round(self.uptime_s(), 1),
            "ready_s": host.ready_s if host else None,
            "boot": host.boot if host else None,
            "snapshot": host.snapshot if host else None,
            "state": self.state,
        }


def entries(running: set[str]) -> list[LabEntry]:
    """Every recorded lab host; ``running``: names of the libvirt domains that are active."""
    found: list[LabEntry] = []
    for record in registry.all_records():
        if record.campaign_id != LAB_CAMPAIGN:
            continue
        host = load(record)
        state: LabState
        if record.domain not in running:
            state = "stopped"
        elif host is None:
            state = "booting" if record.owner_alive else "orphaned"
        else:
            state = "running"
        found.append(LabEntry(record, host, state))
    return found


def find(name: str, running: set[str]) -> LabEntry:
    """The lab host called ``name``; UsageError listing the known ones otherwise."""
    all_entries = entries(running)
    for entry in all_entries:
        if name in (entry.name, entry.record.domain):
            return entry
    known = ", ".join(e.name for e in all_entries) or "none"
    raise UsageError(f"no lab host named {name!r} (known: {known})", hint="see 'kvmple lab list'")
