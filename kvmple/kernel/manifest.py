"""The build manifest ``OUT/kvmple-build.json``: what ``kvmple kernel build`` built, read by
``kernel boot-test``, ``kernel install``, the nightly pipeline and the lab hosts.

On disk it is a JSON object; manifests written before ``schema_version`` existed load as
version 1. Only ``release``, ``image`` and ``image_sha256`` are required (every reader needs
them); the rest describe the build and are None/empty when a hand-written manifest omits them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

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


class _Verbatim(BaseModel):
    """A record kept as it was read: frozen; unknown keys kept; written back with only the
    keys it had (no default filled in), so a manifest rewritten keeps its bytes' meaning."""

    model_config = ConfigDict(frozen=True, extra="allow")

    @model_serializer(mode="wrap")
    def _only_present(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        present = self.model_fields_set | set(self.model_extra or {})
        return {key: value for key, value in data.items() if key in present}


class AppliedPatch(_Verbatim):
    """One patch in apply's record: its place in the series, subject, status (apply.Status's
    value: 'applied', 'already upstream', 'does not apply', ...), detail and origin."""

    index: int | None = None
    subject: str | None = None
    status: str | None = None
    detail: str | None = None
    origin: str | None = None


class AppliedRecord(_Verbatim):
    """``kvmple kernel apply``'s record (``.kvmple-applied.json``, kernel/apply.py
    ApplyReport.to_json) as the build manifest carries it. Every key is optional: hand-written
    or older manifests hold parts of it."""

    series: str | None = None  # the series' name
    tree: str | None = None  # the tree it was applied to
    method: str | None = None  # 'git am -3' | 'quilt (patch)' | 'none'
    target: str | None = None  # the copy or worktree it produced
    branch: str | None = None
    results: tuple[AppliedPatch, ...] | None = None
    dropped: tuple[str, ...] | None = None
    revision: int | None = None  # mail sources: the revision applied


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
    series: AppliedRecord | None = None  # apply's own record
    out: Path | None = None
    jobs: int | None = None
    ccache: bool | None = None
    seconds: float | None = None
    log: Path | None = None  # OUT/build.log
    built_at: str | None = None  # ISO 8601 local time with offset

    @property
    def series_name(self) -> str | None:
        return self.series.series if self.series is not None else None

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
