"""``Image``: what a built (or brought) guest image is, as the VM layer needs it.

An image directory in the cache holds ``disk.qcow2``, ``vmlinuz``, ``initrd.img``,
``manifest.json`` (what is inside) and ``build.log``. ``image.json`` there is the
serialised ``Image`` and is written last, so its presence means "complete".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmple.errors import StoreError

IMAGE_FILE = "image.json"
BASE_CMDLINE = ("root=/dev/vda", "console=ttyS0")


@dataclass(frozen=True)
class Image:
    """A bootable guest image. Treat ``qcow2`` as read-only: boot from an overlay on it."""

    name: str
    key: str
    qcow2: Path
    kernel: Path
    initrd: Path
    cmdline: str
    ssh_user: str
    host_keys: tuple[str, ...]
    manifest: dict[str, Any] = field(hash=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "qcow2": str(self.qcow2),
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "cmdline": self.cmdline,
            "ssh_user": self.ssh_user,
            "host_keys": list(self.host_keys),
        }

    def known_hosts(self, host: str, port: int) -> str:
        """known_hosts text pinning this image's host keys for ``host:port``."""
        label = host if port == 22 else f"[{host}]:{port}"
        return "".join(f"{label} {line}\n" for line in self.host_keys)


def cmdline_for(additions: tuple[str, ...]) -> str:
    return " ".join((*BASE_CMDLINE, *additions))


def host_key_lines(text: str) -> tuple[str, ...]:
    """'type base64 [comment]' lines -> 'type base64' (comments dropped, validated)."""
    keys: list[str] = []
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 2 or not (words[0].startswith(("ssh-", "ecdsa-", "sk-"))):
            raise ValueError(f"not an SSH public key line: {raw[:60]!r}")
        keys.append(f"{words[0]} {words[1]}")
    if not keys:
        raise ValueError("no SSH public key lines")
    return tuple(keys)


def load_image(directory: Path) -> Image:
    """Read a complete cache directory back into an ``Image``.

    The files are taken from ``directory`` itself, by their names in image.json: a cache that
    was moved or renamed (another KVMPLE_CACHE_DIR, a copied cache) still points at its own
    files, never at where they were built.
    """
    try:
        data = json.loads((directory / IMAGE_FILE).read_text(encoding="utf-8"))
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        return Image(
            name=data["name"],
            key=data["key"],
            qcow2=directory / Path(data["qcow2"]).name,
            kernel=directory / Path(data["kernel"]).name,
            initrd=directory / Path(data["initrd"]).name,
            cmdline=data["cmdline"],
            ssh_user=data["ssh_user"],
            host_keys=tuple(data["host_keys"]),
            manifest=manifest,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"image cache entry {directory} is unreadable: {exc}",
            hint=f"remove it with 'kvmple image rm {directory.name}' and build again",
        ) from exc
