"""Series manifests: ``patches/<name>/series.yaml``.

A manifest describes a patch series (subjects, authors, upstream commits with how well each
hash is verified, the base it was posted against, the release it landed in) and where its
patches come from. It never contains kernel code: the patches are materialised from the
user's own source (see ``kvmple.kernel.sources``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kvmple.config import load_model
from kvmple.errors import PatchError
from kvmple.paths import project_root

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class HashStatus(StrEnum):
    verified = "verified"
    unverified = "unverified"
    unknown = "unknown"


class Marker(BaseModel):
    """Content evidence that a patch is present in a tree without git history."""

    model_config = _FROZEN
    files: list[str] = Field(
        description="candidate paths, relative to the tree (the code moved over the years)",
        min_length=1,
    )
    contains: str = Field(description="a literal line fragment the patch introduced")
    strength: Literal["specific", "weak"] = Field(
        default="specific",
        description="'weak' when the text could predate the patch (shown as such)",
    )


class PatchEntry(BaseModel):
    """One patch of a series, as posted."""

    model_config = _FROZEN
    subject: str = Field(description="subject as posted, without the [PATCH n/m] prefix")
    author: str = Field(default="", description="author as posted")
    upstream: str | None = Field(
        default=None, description="upstream commit hash (abbreviated) if known"
    )
    upstream_status: HashStatus = Field(
        default=HashStatus.unknown,
        description="verified: the hash was checked against the subject; unverified: never "
        "trust it, resolve it in the user's tree",
    )
    upstream_subject: str | None = Field(
        default=None, description="the subject upstream used, when it differs from the posting"
    )
    file: str | None = Field(
        default=None, description="for quilt/format-patch sources: the patch file name"
    )
    markers: list[Marker] = Field(
        default_factory=list, description="content evidence for trees without git history"
    )
    note: str = Field(default="", description="anything else known about this patch")


class SourceKind(StrEnum):
    quilt = "quilt"
    mbox = "mbox"
    diff = "diff"
    format_patch = "format-patch"
    git = "git"
    lore = "lore"


class Source(BaseModel):
    """Where the patch text comes from."""

    model_config = _FROZEN
    kind: SourceKind = Field(description="quilt | mbox | diff | format-patch | git | lore")
    path: str | None = Field(
        default=None,
        description="quilt dir / mbox file / format-patch dir, relative to the manifest",
    )
    range: str | None = Field(
        default=None, description="git: revision range to search subjects in (e.g. v2.6.38..)"
    )
    message_id: str | None = Field(default=None, description="lore: the cover letter msg id")


class Series(BaseModel):
    """A patch series manifest."""

    model_config = _FROZEN
    name: str = Field(description="short name, the folder name under patches/")
    title: str = Field(description="cover letter subject without the [PATCH 0/n] prefix")
    version: str = Field(default="", description="posting revision, e.g. v7")
    posted: str = Field(default="", description="date posted (YYYY-MM-DD)")
    posted_by: str = Field(default="", description="who posted the series")
    base: str = Field(default="", description="the kernel the series was posted against")
    landed_in: str | None = Field(
        default=None, description="first release containing the series (e.g. v2.6.39)"
    )
    landed_revision: str | None = Field(
        default=None, description="the revision that was merged if not this one (e.g. v8)"
    )
    sources: list[Source] = Field(
        default_factory=list, description="where the patches can be materialised from"
    )
    patches: list[PatchEntry] = Field(description="the patches, in order", min_length=1)
    notes: str = Field(default="", description="free text")

    @model_validator(mode="after")
    def _landed_is_a_version(self) -> Series:
        if self.landed_in is not None and parse_version(self.landed_in) is None:
            raise ValueError(f"landed_in {self.landed_in!r} is not a kernel version like v2.6.39")
        return self


_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """'v2.6.39' -> (2, 6, 39); '6.1.192' -> (6, 1, 192); 3-part kernels compare naturally."""
    match = _VERSION.match(text.strip())
    if not match:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


SUBJECT_PREFIX = re.compile(r"^\s*(\[[^\]]*\]\s*)+")


def normalise_subject(subject: str) -> str:
    """Lower-case, '[PATCH n/m]'/'[RFC -v7 PATCH]' prefixes stripped, whitespace collapsed."""
    text = SUBJECT_PREFIX.sub("", subject)
    return " ".join(text.split()).lower()


def series_dirs() -> list[Path]:
    """Where named series are looked up: ./patches, then the kvmple checkout's patches/."""
    dirs = [Path.cwd() / "patches"]
    root = project_root()
    if root is not None and (root / "patches") not in dirs:
        dirs.append(root / "patches")
    return [d for d in dirs if d.is_dir()]


def manifest_path(name_or_path: str) -> Path:
    """Resolve NAME (a folder under patches/) or a path to a series dir or series.yaml."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    if (candidate / "series.yaml").is_file():
        return candidate / "series.yaml"
    if "/" not in name_or_path:
        for base in series_dirs():
            if (base / name_or_path / "series.yaml").is_file():
                return base / name_or_path / "series.yaml"
    known = ", ".join(list_series()) or "none"
    raise PatchError(
        f"unknown series {name_or_path!r}",
        hint=f"known series: {known}; or pass a path to a folder with series.yaml",
    )


def load_series(name_or_path: str) -> tuple[Series, Path]:
    """Load a manifest; returns the model and the folder it lives in."""
    path = manifest_path(name_or_path)
    series = load_model(Series, path, hint="see patches/README.md for the manifest format")
    return series, path.parent


def list_series() -> list[str]:
    names: set[str] = set()
    for base in series_dirs():
        names.update(p.parent.name for p in base.glob("*/series.yaml"))
    return sorted(names)
