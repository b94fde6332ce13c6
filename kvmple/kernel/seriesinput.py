"""Open any series input as a series: a manifest as it is, anything else (mbox, diff, quilt
folder, format-patch folder, git tree + range) as a manifest made from its patches.

The kind is decided once, by kvmple.kernel.inputs.detect_input; every command taking a
series (``kernel series show``, ``kernel apply``, the nightly apply step) comes through here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kvmple.errors import PatchError
from kvmple.kernel.inputs import InputKind, detect_input
from kvmple.kernel.series import PatchEntry, Series, Source, SourceKind, load_series
from kvmple.kernel.sources import (
    Materialised,
    from_diff,
    from_quilt,
    git_subjects,
    load_format_patch,
    load_mbox,
)


@dataclass
class OpenedSeries:
    """A series, the folder its relative paths hang off, and the patch source to use."""

    series: Series
    folder: Path
    kind: InputKind
    source: Path | None = None  # for a non-manifest input: the input itself
    dropped: list[str] = field(default_factory=list)
    revisions: tuple[int, ...] = ()


def open_series(
    name_or_path: str, *, git_range: str | None = None, revision: int | None = None
) -> OpenedSeries:
    """The series named or found at ``name_or_path`` (a path: relative to the current
    directory). A bare name without such a path is a manifest under patches/."""
    path = Path(name_or_path)
    if not path.exists() and "/" not in name_or_path:
        series, folder = load_series(name_or_path)  # a name from patches/ (PatchError if not)
        return OpenedSeries(series, folder, InputKind.manifest)
    found = detect_input(path)
    if found.kind is InputKind.manifest:
        series, folder = load_series(str(found.path))
        return OpenedSeries(series, folder, found.kind)
    if found.kind is InputKind.git:
        if not git_range:
            raise PatchError(
                f"{found.path} is a git tree: say which commits make the series",
                hint="add --range BASE..TIP (e.g. v6.1..my-branch)",
            )
        return _from_git(found.path, git_range)
    loaded = _load(found.kind, found.path, revision)
    kind = SourceKind(found.kind.value)
    title = loaded.cover or (
        loaded.patches[0].subject if len(loaded.patches) == 1 else found.path.name
    )
    series = Series(
        name=_slug(found.path.stem if found.path.is_file() else found.path.name),
        title=title,
        version=f"v{loaded.revision}" if loaded.revision else "",
        sources=[Source(kind=kind, path=str(found.path))],
        patches=[
            PatchEntry(subject=p.subject or p.name, author=p.author, file=p.name)
            for p in loaded.patches
        ],
    )
    return OpenedSeries(
        series, found.path.parent, found.kind, found.path, loaded.dropped, loaded.revisions
    )


def _load(kind: InputKind, path: Path, revision: int | None) -> Materialised:
    if kind is InputKind.mbox:
        return load_mbox(path, revision)
    if kind is InputKind.format_patch:
        return load_format_patch(path, revision)
    if kind is InputKind.quilt:
        return Materialised(from_quilt(path))
    return Materialised(from_diff(path))


def _from_git(tree: Path, git_range: str) -> OpenedSeries:
    commits = list(reversed(git_subjects(tree, git_range)))  # oldest first: apply order
    if not commits:
        raise PatchError(f"{tree}: no commits in {git_range}", hint="check the range (git log)")
    series = Series(
        name=_slug(f"{tree.name}-{git_range}"),
        title=f"{git_range} in {tree}",
        sources=[Source(kind=SourceKind.git, range=git_range)],
        patches=[PatchEntry(subject=subject, upstream=commit[:12]) for commit, subject in commits],
    )
    return OpenedSeries(series, tree, InputKind.git, tree)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "series"
