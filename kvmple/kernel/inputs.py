"""The one input-kind detector for everything that takes a patch series.

``kernel series show``, ``kernel apply --series/--from`` and nightly configs accept the same
kinds: a manifest (``series.yaml`` or a folder holding one), an mbox (lore thread, b4
output, ``git format-patch --stdout``, one mail), a plain diff, a quilt directory (a
``series`` file), a ``git format-patch`` directory (``*.patch`` files) and a kernel git
tree (with a revision range). A path typed on the command line is relative to the current
directory; only paths inside a manifest (or nightly config) are relative to that file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from kvmple.errors import PatchError

KINDS_HINT = (
    "give a series.yaml (or its folder), an mbox, a .patch file, a quilt folder (with a "
    "'series' file), a git format-patch folder (*.patch), or a kernel git tree with --range"
)


class InputKind(StrEnum):
    manifest = "manifest"
    mbox = "mbox"
    diff = "diff"
    quilt = "quilt"
    format_patch = "format-patch"
    git = "git"


@dataclass(frozen=True)
class DetectedInput:
    kind: InputKind
    path: Path  # absolute; for a manifest the series.yaml itself


_MAIL_HEADER = re.compile(r"^(From|Subject|Date|Message-I[dD]|To|Cc|In-Reply-To):", re.M)
_DIFF_START = re.compile(r"^(diff |--- \S|Index: )", re.M)


def detect_input(path: Path, cwd: Path | None = None) -> DetectedInput:
    """What kind of series input ``path`` is (relative paths: to ``cwd``, default the
    current directory). Decided on content, not only the name; PatchError otherwise, saying
    what was looked for and what the path holds."""
    path = path if path.is_absolute() else (cwd or Path.cwd()) / path
    path = path.resolve()
    if path.is_dir():
        return DetectedInput(
            _folder_kind(path), path / "series.yaml" if _is_manifest_dir(path) else path
        )
    if not path.is_file():
        raise PatchError(f"{path}: no such file or folder", hint=KINDS_HINT)
    return DetectedInput(_file_kind(path), path)


def _is_manifest_dir(path: Path) -> bool:
    return (path / "series.yaml").is_file()


def _folder_kind(path: Path) -> InputKind:
    if _is_manifest_dir(path):
        return InputKind.manifest
    if (path / "series").is_file():
        return InputKind.quilt
    if any(p.is_file() for p in path.glob("*.patch")):
        return InputKind.format_patch
    if (path / ".git").exists():
        return InputKind.git
    names = sorted(p.name for p in path.iterdir())[:6]
    raise PatchError(
        f"{path}: a folder, but not a series (looked for series.yaml, a quilt 'series' file, "
        f"*.patch files, a .git); it holds: {', '.join(names) or 'nothing'}",
        hint=KINDS_HINT,
    )


def _file_kind(path: Path) -> InputKind:
    if path.suffix in (".yaml", ".yml"):
        return InputKind.manifest
    with path.open("rb") as handle:
        head = handle.read(8192).decode("utf-8", errors="replace")
    stripped = head.lstrip()
    if stripped.startswith("From ") or _looks_like_mail(stripped):
        return InputKind.mbox
    if _DIFF_START.search(head):
        return InputKind.diff
    if re.search(r"^patches:\s*$", head, re.M) and re.search(r"^name:", head, re.M):
        return InputKind.manifest
    first = next((line for line in head.splitlines() if line.strip()), "")[:60]
    raise PatchError(
        f"{path}: not a series (looked for a YAML manifest with 'name:' and 'patches:', "
        f"mail headers such as 'From:'/'Subject:', or a diff); it starts with {first!r}",
        hint=KINDS_HINT,
    )


def _looks_like_mail(text: str) -> bool:
    """Mail headers at the top: the first lines are 'Name: value' and From/Subject appear."""
    header = text.split("\n\n", 1)[0]
    return bool(_MAIL_HEADER.match(header)) and bool(re.search(r"^Subject:", header, re.M))
