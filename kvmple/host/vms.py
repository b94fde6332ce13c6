"""Which virtual machines run on this host: libvirt domains and processes holding /dev/kvm or
running qemu-system-*. kvmple names its domains ``kvmple-...``; everything else is foreign and
kvmple never touches it.

libvirt is asked through ``virsh`` (only kvmple/vm/libvirt_backend.py may import libvirt).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmple.errors import CommandError
from kvmple.qemuopts import qemu_option_fields
from kvmple.run import run, which

# Every domain kvmple starts is named "kvmple-..." (kvmple.vm.spec.DOMAIN_PREFIX, which a
# unit test holds equal to this: the host layer must not import the VM layer above it).
KVMPLE_PREFIX = "kvmple-"
KNOWN_URIS: tuple[str, ...] = ("qemu:///system",)


@dataclass(frozen=True)
class RunningVm:
    """One running VM (a libvirt domain, or a process when libvirt does not know it)."""

    name: str
    source: str  # "libvirt qemu:///system" or "process"
    pid: int | None
    uses_kvm: bool
    command: str

    @property
    def kvmple_owned(self) -> bool:
        return self.name.startswith(KVMPLE_PREFIX)

    def describe(self) -> str:
        where = f"pid {self.pid}" if self.pid is not None else self.source
        return f"{self.name} ({where}{', holds /dev/kvm' if self.uses_kvm else ''})"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "pid": self.pid,
            "uses_kvm": self.uses_kvm,
            "kvmple_owned": self.kvmple_owned,
            "command": self.command,
        }


def qemu_guest_name(argv: Sequence[str]) -> str | None:
    """The guest name from a QEMU command line (``-name guest=NAME,...`` or ``-name NAME``),
    with QEMU's ``,,`` escape undone (libvirt doubles the commas of a domain name)."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-name", "--name"):
            _, fields = qemu_option_fields(argv[i + 1], implied="guest")
            return fields.get("guest") or None
    return None


def _capability_probe(argv: Sequence[str]) -> bool:
    """libvirt's QMP capability probes (``-machine none``) are QEMU processes, not VMs."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-machine", "-M"):
            _, fields = qemu_option_fields(argv[i + 1], implied="type")
            if fields.get("type") == "none":
                return True
    return False


def _holds_kvm(pid_dir: Path) -> bool:
    try:
        fds = list((pid_dir / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target == "/dev/kvm" or target.startswith("anon_inode:kvm-vm"):
            return True
    return False


def process_argv(pid_dir: Path) -> list[str]:
    """A process's argv from /proc/PID/cmdline (empty for kernel threads and gone PIDs)."""
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def scan_processes(proc_root: Path, skip_pids: frozenset[int] = frozenset()) -> list[RunningVm]:
    """Processes holding /dev/kvm (or a KVM VM fd) and qemu-system-* processes."""
    found: list[RunningVm] = []
    for pid_dir in proc_root.iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) in skip_pids:
            continue
        argv = process_argv(pid_dir)
        if not argv:
            continue  # kernel thread, or gone
        program = Path(argv[0]).name
        is_qemu = program.startswith("qemu-system") or program.startswith("qemu-kvm")
        uses_kvm = _holds_kvm(pid_dir)
        if not (is_qemu or uses_kvm) or _capability_probe(argv):
            continue
        name = qemu_guest_name(argv) or f"{program}[{pid_dir.name}]"
        found.append(
            RunningVm(
                name=name,
                source="process",
                pid=int(pid_dir.name),
                uses_kvm=uses_kvm,
                command=" ".join(argv)[:200],
            )
        )
    return sorted(found, key=lambda vm: vm.pid or 0)


@dataclass(frozen=True)
class LibvirtListing:
    uri: str
    reachable: bool
    domains: tuple[str, ...]
    error: str | None


def libvirt_running(uri: str, timeout: float = 15.0) -> LibvirtListing:
    """Active domains of ``uri`` via ``virsh list --name`` (unreachable is not an error here)."""
    if which("virsh") is None:
        return LibvirtListing(uri, False, (), "virsh not installed")
    try:
        result = run(
            ["virsh", "-c", uri, "list", "--name"], timeout=timeout, check=False, what="virsh"
        )
    except CommandError as exc:
        return LibvirtListing(uri, False, (), exc.message)
    if not result.ok:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return LibvirtListing(uri, False, (), lines[-1] if lines else "virsh failed")
    names = tuple(n.strip() for n in result.stdout.splitlines() if n.strip())
    return LibvirtListing(uri, True, names, None)


def merge(listings: Sequence[LibvirtListing], processes: Sequence[RunningVm]) -> list[RunningVm]:
    """One entry per VM: libvirt domains (with their QEMU process when found), then the
    processes no libvirt domain accounts for."""
    by_name = {p.name: p for p in processes}
    merged: list[RunningVm] = []
    claimed: set[int] = set()
    for listing in listings:
        for name in listing.domains:
            proc = by_name.get(name)
            if proc is not None and proc.pid is not None:
                claimed.add(proc.pid)
            merged.append(
                RunningVm(
                    name=name,
                    source=f"libvirt {listing.uri}",
                    pid=proc.pid if proc else None,
                    uses_kvm=proc.uses_kvm if proc else False,
                    command=proc.command if proc else "",
                )
            )
    merged.extend(p for p in processes if p.pid not in claimed)
    return merged


class SystemVmLister:
    """The real lister: libvirt's known URIs plus a /proc scan."""

    def __init__(self, proc_root: Path = Path("/proc"), uris: Sequence[str] = KNOWN_URIS):
        self.proc_root = proc_root
        self.uris = tuple(uris)
        self.last_listings: tuple[LibvirtListing, ...] = ()

    def running(self) -> tuple[RunningVm, ...]:
        self.last_listings = tuple(libvirt_running(uri) for uri in self.uris)
        processes = scan_processes(self.proc_root, frozenset({os.getpid()}))
        return tuple(merge(self.last_listings, processes))
