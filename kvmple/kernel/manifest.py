"""The build manifest ``OUT/kvmple-build.json``: what ``kvmple kernel build`` built, read by
``kernel boot-test``, ``kernel install``, the nightly pipeline and the lab hosts.

On disk it is a JSON object; manifests written before ``schema_version`` existed load as
version 1. Only ``release``, ``image`` and ``image_sha256`` are required (every reader needs
them); the rest describe the build and are None/empty when a hand-written manifest omits them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kvmple.config.jsonfile import JsonRecord
from kvmple.errors import BuildError, InputError

MANIFEST = "kvmple-build.json"
_HINT = (
    "an old or hand-edited build manifest: run 'kvmple kernel build' again for this "
    "output directory (or fix the key named)"
)


class FragmentCheckRecord(BaseModel):
    """How the fragment options fared in the final .config (kernel/configs.py's check):
    counts and 'CONFIG_X=y (fragment)' lines."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    checked: int = 0
    other_arch: tuple[str, ...] = ()
    allowed_to_vanish: tuple[str, ...] = ()
    built_in_without_modules: tuple[str, ...] = ()


class BuildManifest(JsonRecord):
    """One finished kernel build. Paths are absolute; ``seconds`` is the wall time of the
    configure + make steps; ``series`` is apply's record (``.kvmple-applied.json``) verbatim
    when the tree came from ``kvmple kernel apply``."""

    SCHEMA_VERSION = 1

    release: str  # `make kernelrelease`
    image: Path  # OUT/arch/<arch>/boot/bzImage
    image_sha256: str
    config: Path | None = None  # OUT/.config
    config_sha256: str | None = None
    base: str | None = None  # tinyconfig, defconfig, running or a config file
    fragments: tuple[str, ...] = ()  # fragment files merged, in order
    fragment_check: FragmentCheckRecord = FragmentCheckRecord()
    modules: Path | None = None  # OUT/modules-install (INSTALL_MOD_PATH) or None: MODULES=n
    tree: Path | None = None
    tree_version: str | None = None
    series: dict[str, Any] | None = None  # apply's own record, opaque here
    out: Path | None = None
    jobs: int | None = None
    ccache: bool | None = None
    seconds: float | None = None
    log: Path | None = None  # OUT/build.log
    built_at: str | None = None  # ISO 8601 local time with offset

    @property
    def series_name(self) -> str | None:
        name = (self.series or {}).get("series")
        return str(name) if name is not None else None

    def require_config(self) -> Path:
        """The .config, which installing needs; InputError when the manifest names none."""
        if self.config is None:
            raise InputError(
                f"{self.out or '?'}/{MANIFEST}: config: required to install {self.release}",
                hint=_HINT,
            )
        return self.config


def load_manifest(out: Path) -> BuildManifest:
    """The manifest of a finished build in ``out``.

    BuildError (exit 9) when there is none (no finished build); InputError (exit 3), naming
    the file and key, when it is not a valid manifest (old, hand-edited or truncated)."""
    path = out / MANIFEST
    try:
        return BuildManifest.read(path, hint=_HINT)
    except FileNotFoundError as exc:
        raise BuildError(
            f"{out}: no finished kernel build here (no {MANIFEST})",
            hint="run 'kvmple kernel build' first",
        ) from exc
