"""QEMU and libvirt as the host offers them (asked through their command-line tools)."""

from __future__ import annotations

import json
import os
import platform
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from kvmple import paths
from kvmple.errors import CommandError
from kvmple.run import run, which

QEMU_BINARY = "qemu-system-x86_64"
LIBVIRT_URI = "qemu:///system"
DOMAIN_TYPES_CACHE = "libvirt-domain-types.json"


@dataclass(frozen=True)
class QemuInfo:
    binary: str | None
    version: str | None
    error: str | None

    def to_json(self) -> dict[str, object]:
        return {"binary": self.binary, "version": self.version, "error": self.error}


@dataclass(frozen=True)
class LibvirtInfo:
    uri: str
    reachable: bool
    domain_types: tuple[str, ...]
    error: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "uri": self.uri,
            "reachable": self.reachable,
            "domain_types": list(self.domain_types),
            "error": self.error,
        }


def parse_qemu_version(text: str) -> str | None:
    """``QEMU emulator version 7.2.22 (Debian ...)`` -> ``7.2.22``."""
    match = re.search(r"QEMU emulator version (\S+)", text)
    return match.group(1) if match else None


def qemu_info() -> QemuInfo:
    binary = which(QEMU_BINARY)
    if binary is None:
        return QemuInfo(None, None, f"{QEMU_BINARY} not found")
    try:
        result = run([binary, "--version"], timeout=30, check=False, what="qemu --version")
    except CommandError as exc:
        return QemuInfo(binary, None, exc.message)
    version = parse_qemu_version(result.stdout)
    if not result.ok or version is None:
        return QemuInfo(binary, None, f"'{binary} --version' failed: {result.stderr.strip()}")
    return QemuInfo(binary, version, None)


def parse_domain_types(capabilities_xml: str, arch: str = "x86_64") -> tuple[str, ...]:
    """Domain types (``qemu``, ``kvm``) libvirt offers for ``arch`` guests."""
    root = ET.fromstring(capabilities_xml)  # trusted: our own libvirtd's output
    found: list[str] = []
    for guest in root.iter("guest"):
        arch_el = guest.find("arch")
        if arch_el is None or arch_el.get("name") != arch:
            continue
        for domain in arch_el.iter("domain"):
            kind = domain.get("type")
            if kind and kind not in found:
                found.append(kind)
    return tuple(found)


def _domain_types_key(uri: str, qemu_version: str | None) -> dict[str, str | None]:
    daemon = which("libvirtd") or which("virtqemud")
    stamp = None
    if daemon is not None:
        info = Path(daemon).stat()
        stamp = f"{daemon}:{info.st_size}:{int(info.st_mtime)}"
    return {"uri": uri, "kernel": platform.release(), "qemu": qemu_version, "daemon": stamp}


def _cached_domain_types(key: dict[str, str | None]) -> tuple[str, ...] | None:
    try:
        data = json.loads((paths.state_dir() / DOMAIN_TYPES_CACHE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return tuple(str(t) for t in data.get("domain_types", []))


def _store_domain_types(key: dict[str, str | None], types: tuple[str, ...]) -> None:
    path = paths.state_dir() / DOMAIN_TYPES_CACHE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "domain_types": list(types)}, sort_keys=True) + "\n")
    os.replace(tmp, path)


def libvirt_info(
    uri: str = LIBVIRT_URI,
    qemu_version: str | None = None,
    *,
    timeout: float = 60.0,
    refresh: bool = False,
) -> LibvirtInfo:
    """Is ``uri`` reachable, and which domain types does it offer for x86_64 guests?

    ``virsh capabilities`` takes 5-15 s here (libvirtd re-probes the host), so the domain
    types are cached keyed by (uri, kernel, QEMU version, libvirt daemon binary).
    """
    if which("virsh") is None:
        return LibvirtInfo(uri, False, (), "virsh not installed (package libvirt-clients)")
    try:
        reach = run(["virsh", "-c", uri, "uri"], timeout=timeout, check=False)
    except CommandError as exc:
        return LibvirtInfo(uri, False, (), exc.message)
    if not reach.ok:
        lines = [line.strip() for line in reach.stderr.splitlines() if line.strip()]
        return LibvirtInfo(uri, False, (), lines[-1] if lines else "virsh failed")
    key = _domain_types_key(uri, qemu_version)
    cached = None if refresh else _cached_domain_types(key)
    if cached is not None:
        return LibvirtInfo(uri, True, cached, None)
    try:
        result = run(["virsh", "-c", uri, "capabilities"], timeout=timeout, check=False)
    except CommandError as exc:
        return LibvirtInfo(uri, True, (), f"virsh capabilities: {exc.message}")
    if not result.ok:
        return LibvirtInfo(uri, True, (), f"virsh capabilities failed: {result.stderr.strip()}")
    try:
        types = parse_domain_types(result.stdout)
    except ET.ParseError as exc:
        return LibvirtInfo(uri, True, (), f"unparsable capabilities XML: {exc}")
    _store_domain_types(key, types)
    return LibvirtInfo(uri, True, types, None)
