"""Facts about a kernel source tree: is it one, which version, is it git, is it clean."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kvmple.errors import PatchError
from kvmple.run import run

_MAKEVAR = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)[ \t]*=[ \t]*(.*)$", re.M)


@dataclass(frozen=True)
class KernelTree:
    path: Path
    version: tuple[int, int, int]
    extraversion: str
    is_git: bool

    @property
    def version_text(self) -> str:
        return ".".join(str(p) for p in self.version) + self.extraversion


def parse_makefile_version(text: str) -> tuple[tuple[int, int, int], str] | None:
    """VERSION/PATCHLEVEL/SUBLEVEL/EXTRAVERSION from the top-level Makefile's text."""
    found = dict(_MAKEVAR.findall(text))
    try:
        version = (int(found["VERSION"]), int(found["PATCHLEVEL"]), int(found["SUBLEVEL"] or 0))
    except (KeyError, ValueError):
        return None
    return version, found.get("EXTRAVERSION", "").strip()


def inspect_tree(path: Path) -> KernelTree:
    """Check ``path`` is a kernel source tree and read its version; PatchError if not."""
    path = path.resolve()
    makefile = path / "Makefile"
    hint = "pass the top directory of a Linux source tree (the one with Makefile and Kconfig)"
    if not path.is_dir():
        raise PatchError(f"{path}: no such directory", hint=hint)
    if not makefile.is_file() or not (path / "Kconfig").is_file():
        raise PatchError(f"{path}: not a kernel tree (no Makefile/Kconfig at its top)", hint=hint)
    parsed = parse_makefile_version(makefile.read_text(encoding="utf-8", errors="replace"))
    if parsed is None:
        raise PatchError(f"{makefile}: not a kernel Makefile (no VERSION/PATCHLEVEL)", hint=hint)
    version, extra = parsed
    return KernelTree(path, version, extra, is_git=_git_toplevel(path) == path)


def _git_toplevel(path: Path) -> Path | None:
    if not (path / ".git").exists():
        return None
    result = run(["git", "-C", path, "rev-parse", "--show-toplevel"], timeout=30, check=False)
    return Path(result.stdout.strip()).resolve() if result.ok else None


def git_dirty_files(path: Path) -> list[str]:
    """Tracked files with uncommitted changes (untracked files do not block a worktree)."""
    result = run(
        ["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
        timeout=120,
        what="git status",
    )
    return [line[3:] for line in result.stdout.splitlines() if line.strip()]
