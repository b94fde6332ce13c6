"""Is a series already in a tree? Decide, and say on what evidence.

- git tree: each patch's subject is searched in HEAD's history, case-insensitively after
  stripping "[PATCH n/m]" (upstream often changes "kvm:" into "KVM:"); an abbreviated hash in
  the manifest is only used as a fallback and is reported as resolved or not.
- tree without history (a release tarball such as Debian's linux-source-6.1): the tree's
  Makefile version is compared with the manifest's ``landed_in``, and each patch's content
  markers (a line the patch introduced, in one of the paths the code lived in) are looked
  for. A version at or past ``landed_in`` decides "upstream"; the markers are reported as
  corroboration (or contradiction: a missing marker is shown, e.g. a later rewrite).
  This is inference from release metadata plus text, not a proof by history, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvmple.kernel.series import Marker, Series, parse_version
from kvmple.kernel.sources import find_by_subject, git_subjects
from kvmple.kernel.tree import KernelTree


@dataclass(frozen=True)
class Presence:
    index: int  # 0-based position in the series
    upstream: bool
    evidence: str


def marker_found(tree: Path, marker: Marker) -> str | None:
    """The path (relative) where the marker's text occurs, or None."""
    for relative in marker.files:
        path = tree / relative
        try:
            if marker.contains in path.read_text(encoding="utf-8", errors="replace"):
                return relative
        except OSError:
            continue
    return None


def check_upstream(
    series: Series, tree: KernelTree, git_range: str | None = None
) -> list[Presence]:
    if tree.is_git:
        return _by_history(series, tree.path, git_range)
    return _by_version_and_markers(series, tree)


def _by_history(series: Series, tree: Path, git_range: str | None) -> list[Presence]:
    found = find_by_subject(series.patches, git_subjects(tree, git_range))
    result: list[Presence] = []
    for index, entry in enumerate(series.patches):
        hit = found.get(index)
        if hit is not None:
            commit, subject = hit
            note = ""
            if entry.upstream and not commit.startswith(entry.upstream):
                note = f"; manifest hash {entry.upstream} ({entry.upstream_status.value}) differs"
            result.append(
                Presence(index, True, f"commit {commit[:12]} {subject!r} (by subject){note}")
            )
        else:
            result.append(
                Presence(index, False, f"no commit with this subject in {git_range or 'HEAD'}")
            )
    return result


def _by_version_and_markers(series: Series, tree: KernelTree) -> list[Presence]:
    landed = parse_version(series.landed_in) if series.landed_in else None
    by_version = landed is not None and tree.version >= landed
    result: list[Presence] = []
    for index, entry in enumerate(series.patches):
        seen: list[str] = []
        missing: list[str] = []
        for marker in entry.markers:
            where = marker_found(tree.path, marker)
            label = f"{marker.contains!r}" + (" (weak)" if marker.strength == "weak" else "")
            (seen if where else missing).append(f"{label} in {where or '/'.join(marker.files)}")
        parts: list[str] = []
        if landed is not None:
            relation = ">=" if by_version else "<"
            parts.append(f"tree {tree.version_text} {relation} landed_in {series.landed_in}")
        if seen:
            parts.append("marker found: " + "; ".join(seen))
        if missing:
            parts.append("marker MISSING: " + "; ".join(missing))
        if not entry.markers:
            parts.append("no content marker known")
        parts.append("no git history: inferred, not proven")
        result.append(Presence(index, by_version, ", ".join(parts)))
    return result
