"""The only module that imports libvirt: a thin, typed layer over the calls kvmple needs.

Guests are *transient* domains (``createXML``): destroying one removes it from libvirt
entirely, so a crash between "define" and "start" cannot leave a defined domain behind.
Persistent ``kvmple-*`` leftovers (older runs, hand-made) can still be undefined by gc.

Every libvirt failure becomes a ``HostError`` (libvirt unreachable) or ``GuestError`` (a
domain failed) naming the domain and the URI.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import libvirt

from kvmple.errors import GuestError, HostError

_handler_lock = threading.Lock()
_handler_state = {"installed": False}


def _silence_libvirt() -> None:
    """libvirt prints every error to stderr by default; we raise them as KvmpleErrors."""
    with _handler_lock:
        if not _handler_state["installed"]:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _handler_state["installed"] = True


def _message(exc: Exception) -> str:
    text = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
    return (text or str(exc)).strip().splitlines()[0] if (text or str(exc)) else repr(exc)


def _no_domain(exc: libvirt.libvirtError) -> bool:
    return bool(exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN)


class _Domain(Protocol):
    """The virDomain calls kvmple makes (libvirt-python has no type hints)."""

    def name(self) -> str: ...
    def isActive(self) -> int: ...  # libvirt-python's names
    def isPersistent(self) -> int: ...
    def destroy(self) -> int: ...
    def reset(self, flags: int = 0) -> int: ...
    def undefine(self) -> int: ...
    def XMLDesc(self, flags: int = 0) -> str: ...
    # ([(vcpu number, state, cpu time ns, host cpu)], [per vCPU: allowed flag per host CPU])
    def vcpus(self) -> tuple[list[tuple[int, int, int, int]], list[tuple[bool, ...]]]: ...
    def saveFlags(self, to: str, dxml: str | None = None, flags: int = 0) -> int: ...


class _Connection(Protocol):
    """The virConnect calls kvmple makes."""

    def close(self) -> int: ...
    def lookupByName(self, name: str) -> _Domain: ...
    def createXML(self, xmlDesc: str, flags: int = 0) -> _Domain: ...
    def defineXML(self, xml: str) -> _Domain: ...
    def listAllDomains(self, flags: int = 0) -> list[_Domain]: ...
    def restoreFlags(self, frm: str, dxml: str | None = None, flags: int = 0) -> int: ...
    def getLibVersion(self) -> int: ...
    def getVersion(self) -> int: ...


class Libvirt:
    """An open connection to one libvirt URI."""

    def __init__(self, uri: str, conn: _Connection) -> None:
        self.uri = uri
        self._conn = conn

    def close(self) -> None:
        try:
            self._conn.close()
        except libvirt.libvirtError:
            pass

    def _lookup(self, name: str) -> _Domain | None:
        try:
            return self._conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _no_domain(exc):
                return None
            raise HostError(f"libvirt ({self.uri}): looking up {name}: {_message(exc)}") from exc

    def create(self, xml: str, name: str) -> None:
        """Start a transient domain from ``xml``."""
        try:
            self._conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise GuestError(
                f"guest {name} did not start ({self.uri}): {_message(exc)}",
                hint=f"check 'kvmple doctor'; libvirt's log is /var/log/libvirt/qemu/{name}.log",
            ) from exc

    def exists(self, name: str) -> bool:
        return self._lookup(name) is not None

    def is_running(self, name: str) -> bool:
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError as exc:
            if _no_domain(exc):
                return False
            raise HostError(f"libvirt ({self.uri}): state of {name}: {_message(exc)}") from exc

    def destroy(self, name: str) -> bool:
        """Stop ``name`` hard and undefine it if persistent. True when something was removed."""
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()  # kvmple domains boot a kernel directly: no NVRAM
        except libvirt.libvirtError as exc:
            if _no_domain(exc):
                return True
            raise GuestError(
                f"could not remove guest {name} ({self.uri}): {_message(exc)}"
            ) from exc
        return True

    def reset(self, name: str) -> None:
        """Reset ``name`` like a power cycle (virDomainReset): the guest's firmware and its
        direct-boot kernel start again. GuestError when it is not running."""
        dom = self._lookup(name)
        if dom is None:
            raise GuestError(f"cannot reset guest {name} ({self.uri}): no such domain")
        try:
            dom.reset(0)
        except libvirt.libvirtError as exc:
            raise GuestError(f"could not reset guest {name} ({self.uri}): {_message(exc)}") from exc

    def names(self, prefix: str) -> list[str]:
        """Names of all domains (running or defined) starting with ``prefix``."""
        try:
            domains = self._conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise HostError(f"libvirt ({self.uri}): listing domains: {_message(exc)}") from exc
        return sorted(d.name() for d in domains if d.name().startswith(prefix))

    def vcpu_affinity(self, name: str) -> dict[int, tuple[int, ...]]:
        """Per vCPU, the host CPUs its thread may run on, as libvirt reads them back live."""
        dom = self._lookup(name)
        if dom is None:
            raise GuestError(f"guest {name} is gone ({self.uri})")
        try:
            infos, cpumaps = dom.vcpus()
        except libvirt.libvirtError as exc:
            raise GuestError(f"reading vCPU affinity of {name}: {_message(exc)}") from exc
        result: dict[int, tuple[int, ...]] = {}
        for info, cpumap in zip(infos, cpumaps, strict=True):
            result[int(info[0])] = tuple(i for i, allowed in enumerate(cpumap) if allowed)
        return result

    def xml(self, name: str) -> str:
        dom = self._lookup(name)
        if dom is None:
            raise GuestError(f"guest {name} is gone ({self.uri})")
        return str(dom.XMLDesc(0))

    def save(self, name: str, path: str) -> None:
        """Save the running ``name``'s memory and device state to ``path`` (virDomainSaveFlags);
        the domain stops. GuestError when libvirt or QEMU fail (e.g. disk full)."""
        dom = self._lookup(name)
        if dom is None:
            raise GuestError(f"guest {name} is gone ({self.uri})")
        try:
            dom.saveFlags(path, None, 0)
        except libvirt.libvirtError as exc:
            raise GuestError(f"saving guest {name} to {path}: {_message(exc)}") from exc

    def restore(self, path: str, name: str) -> None:
        """Start the guest saved in ``path`` running (virDomainRestoreFlags): its domain XML is
        the one in the image's header. GuestError when libvirt or QEMU refuse it."""
        try:
            self._conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        except libvirt.libvirtError as exc:
            raise GuestError(f"restoring guest {name} from {path}: {_message(exc)}") from exc

    def versions(self) -> dict[str, int]:
        """libvirt's and the hypervisor's (QEMU's) versions as libvirt encodes them
        (major * 1,000,000 + minor * 1,000 + release)."""
        try:
            libvirt_version = int(self._conn.getLibVersion())
            return {"libvirt": libvirt_version, "qemu": int(self._conn.getVersion())}
        except libvirt.libvirtError as exc:
            raise HostError(f"libvirt ({self.uri}): reading versions: {_message(exc)}") from exc

    def define(self, xml: str) -> str:
        """Define a persistent domain (tests of gc use this to plant leftovers)."""
        try:
            return str(self._conn.defineXML(xml).name())
        except libvirt.libvirtError as exc:
            raise GuestError(f"libvirt ({self.uri}) refused the domain: {_message(exc)}") from exc


@contextmanager
def connect(uri: str) -> Iterator[Libvirt]:
    """Open ``uri``; HostError with a hint when libvirt is not answering."""
    _silence_libvirt()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HostError(
            f"libvirt at {uri} is unreachable: {_message(exc)}",
            hint="start it with scripts/setup-host.sh (or 'libvirtd -d'); check 'kvmple doctor'",
        ) from exc
    if conn is None:  # pragma: no cover - old bindings returned None
        raise HostError(f"libvirt at {uri} is unreachable")
    lv = Libvirt(uri, conn)
    try:
        yield lv
    finally:
        lv.close()
