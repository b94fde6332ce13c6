"""``Image``: what a built (or brought) guest image is, as the VM layer needs it.

An image directory in the cache holds ``disk.qcow2``, ``vmlinuz``, ``initrd.img``,
``manifest.json`` (what is inside) and ``build.log``. ``image.json`` there is the
serialised ``Image`` and is written last, so its presence means "complete".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from kvmple.errors import StoreError

IMAGE_FILE = "image.json"
BASE_CMDLINE = ("root=/dev/vda", "console=ttyS0")


class FileIdentity(BaseModel):
    """A brought file as it was when checked: path, size in bytes, mtime in ns (os.stat)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    path: str
    size: int
    mtime_ns: int


class ImageManifest(BaseModel):
    """``manifest.json``: what is inside an image (image/manifest.py assembles it for a built
    image, image/byo.py for a brought one). Keys a manifest did not have stay unset and are
    not written back (``document``), so the stored file keeps exactly its keys; unknown keys
    of a newer kvmple are ignored. ``key_inputs`` is what the cache key hashes (cache.py's
    ``key_inputs``), kept as plain JSON because its hash must not change."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: int | None = None  # manifest.MANIFEST_FORMAT for built images
    name: str
    key: str
    kvmple_version: str | None = None
    built_at: str | None = None  # ISO 8601 UTC, 'YYYY-MM-DDTHH:MM:SSZ'
    build_seconds: float | None = None
    step_seconds: dict[str, float] = {}
    recipe_sha256: str | None = None
    mirror: str | None = None
    suite: str | None = None
    kernel_release: str | None = None
    host_key_fingerprints: tuple[str, ...] = ()  # 'ED25519 SHA256:...'
    package_count: int | None = None
    packages: dict[str, str] = {}  # dpkg name -> version
    key_inputs: dict[str, JsonValue] = {}
    recipe_path: str | None = None
    disk_size: str | None = None  # the recipe's, e.g. '4G'
    bring_your_own: bool | None = None  # the rest: bring-your-own images only
    checked_at: str | None = None
    files: dict[str, FileIdentity] = {}
    host_keys: tuple[str, ...] = ()

    def document(self) -> dict[str, JsonValue]:
        """The JSON object stored as manifest.json (only the keys that were set)."""
        return self.model_dump(mode="json", exclude_unset=True)


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
    manifest: ImageManifest = field(hash=False, compare=False)

    def to_json(self) -> dict[str, JsonValue]:
        """The ``image.json`` object (paths as strings)."""
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
        manifest = ImageManifest.model_validate_json(
            (directory / "manifest.json").read_text(encoding="utf-8")
        )
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
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise StoreError(
            f"image cache entry {directory} is unreadable: {exc}",
            hint=f"remove it with 'kvmple image rm {directory.name}' and build again",
        ) from exc
