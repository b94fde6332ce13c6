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


class KnobKind(StrEnum):
    module_param = "module-param"
    debugfs = "debugfs"
    sysfs = "sysfs"
    guest_cpu_feature = "guest-cpu-feature"


_MODULE_PARAM = re.compile(r"^([a-z0-9_]+)\.([a-z0-9_]+)$")
_PATH_PREFIX = {KnobKind.debugfs: "/sys/kernel/debug/", KnobKind.sysfs: "/sys/"}


class SeriesKnob(BaseModel):
    """A tunable the series adds (or needs), named as a playbook factor would name it.

    ``module-param``: ``<module>.<param>`` (path ``/sys/module/<module>/parameters/<param>``);
    ``debugfs``/``sysfs``: an absolute path under ``/sys/kernel/debug/`` or ``/sys/``;
    ``guest-cpu-feature``: a QEMU/libvirt CPU feature name (e.g. ``kvm-pv-sched-yield``).
    Whether a host has the knob is decided at run time by the host knob operations, not here.
    """

    model_config = _FROZEN
    name: str = Field(description="factor name: kvm.halt_poll_ns, a /sys path, a CPU feature")
    kind: KnobKind = Field(description="module-param | debugfs | sysfs | guest-cpu-feature")
    path: str | None = Field(
        default=None, description="host path (module-param: derived when omitted)"
    )
    values: list[str] = Field(default_factory=list, description="settings worth comparing")
    default: str | None = Field(default=None, description="the value without any change")
    added_by: int | None = Field(
        default=None, ge=1, description="1-based number of the patch that adds the knob"
    )
    note: str = Field(default="", description="what the knob does, where the fact comes from")

    @model_validator(mode="after")
    def _name_and_path_agree(self) -> SeriesKnob:
        if self.kind is KnobKind.module_param:
            match = _MODULE_PARAM.match(self.name)
            if match is None:
                raise ValueError(f"module-param knob {self.name!r} is not <module>.<param>")
            derived = f"/sys/module/{match[1]}/parameters/{match[2]}"
            if self.path is not None and self.path != derived:
                raise ValueError(f"knob {self.name!r}: path must be {derived}, not {self.path}")
        elif self.kind is KnobKind.guest_cpu_feature:
            if self.path is not None:
                raise ValueError(f"guest-cpu-feature knob {self.name!r} has no host path")
        else:
            prefix = _PATH_PREFIX[self.kind]
            path = self.path or self.name
            if not path.startswith(prefix) or "/../" in path + "/" or path.endswith("/"):
                raise ValueError(
                    f"{self.kind.value} knob {self.name!r}: path {path!r} "
                    f"is not a file under {prefix}"
                )
        if self.default is not None and self.values and self.default not in self.values:
            raise ValueError(f"knob {self.name!r}: default {self.default!r} not in values")
        return self

    @property
    def host_path(self) -> str | None:
        """The file the knob lives in on the host; None for guest CPU features."""
        if self.kind is KnobKind.module_param:
            module, param = self.name.split(".", 1)
            return f"/sys/module/{module}/parameters/{param}"
        if self.kind is KnobKind.guest_cpu_feature:
            return None
        return self.path or self.name


class SeriesBenchmark(BaseModel):
    """A benchmark the series' authors report, with what they reported (quoted, not ours)."""

    model_config = _FROZEN
    name: str = Field(description="benchmark as the posting names it (e.g. PARSEC dedup)")
    workload: str | None = Field(
        default=None, description="kvmple's workload of that name, when kvmple has one"
    )
    setup: str = Field(default="", description="host, guests, overcommit as reported")
    metric: str = Field(default="", description="what was measured (e.g. throughput)")
    better: Literal["higher", "lower"] | None = Field(
        default=None, description="direction of improvement of the metric"
    )
    reported: list[str] = Field(default_factory=list, description="results as reported")
    source: str = Field(default="", description="where it was reported (cover letter, patch)")


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
    knobs: list[SeriesKnob] = Field(
        default_factory=list, description="tunables the series adds, as playbook factors"
    )
    benchmarks: list[SeriesBenchmark] = Field(
        default_factory=list, description="benchmarks the authors report"
    )

    @model_validator(mode="after")
    def _landed_is_a_version(self) -> Series:
        if self.landed_in is not None and parse_version(self.landed_in) is None:
            raise ValueError(f"landed_in {self.landed_in!r} is not a kernel version like v2.6.39")
        return self

    @model_validator(mode="after")
    def _knobs_are_consistent(self) -> Series:
        names = [knob.name for knob in self.knobs]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"knob named more than once: {', '.join(twice)}")
        for knob in self.knobs:
            if knob.added_by is not None and knob.added_by > len(self.patches):
                raise ValueError(
                    f"knob {knob.name!r}: added_by {knob.added_by} but the series has "
                    f"{len(self.patches)} patches"
                )
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
