"""A git kernel tree for the nightly tests: Debian's linux-source-6.1, unpacked by the
kernel pipeline's own helper (cached), hard-link copied and committed once into a cached
git repository; each test resets a branch to the base commit and "moves" it with commits."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kvmple.kernel.fetch import unpack_tree

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SHARED = Path("/var/cache/kvmple-tests")
BASE_TAG = "kvmple-nightly-base"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "kvmple tests",
    "GIT_AUTHOR_EMAIL": "tests@kvmple.invalid",
    "GIT_COMMITTER_NAME": "kvmple tests",
    "GIT_COMMITTER_EMAIL": "tests@kvmple.invalid",
}


def git(repo: Path, *args: str, timeout: float = 1800) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **GIT_ENV},
    ).stdout.strip()


def cached_git_tree(shared: Path = SHARED) -> Path:
    """The cached repository (built once: ~1-2 min), with tag ``kvmple-nightly-base``."""
    pristine = unpack_tree(TARBALL, shared)
    final = shared / "kernel" / f"nightly-git-{pristine.name}"
    if (final / ".git").is_dir():
        return final
    partial = final.with_name(f".partial-{final.name}")
    shutil.rmtree(partial, ignore_errors=True)
    # hard links: git only reads these files; checkouts replace files, never write into them
    subprocess.run(["cp", "-al", str(pristine), str(partial)], check=True, timeout=1800)
    git(partial, "init", "-q", "-b", "master")
    git(partial, "config", "gc.auto", "0")
    git(partial, "add", "-A", "-f")  # Debian's .gitignore ignores the whole top level
    git(partial, "commit", "-q", "-m", f"import {pristine.name}")
    git(partial, "tag", BASE_TAG)
    os.replace(partial, final)
    return final


def reset_branch(repo: Path, branch: str) -> str:
    """Check ``branch`` out at the base commit (files written fresh: the cache stays intact)."""
    git(repo, "worktree", "prune")
    git(repo, "checkout", "-q", "-f", "-B", branch, BASE_TAG)
    return git(repo, "rev-parse", "HEAD")


def move_tree(repo: Path, message: str) -> str:
    """Commit a small change on the checked-out branch (a new file, never an edit of a
    hard-linked one) and return the new head."""
    path = repo / "init" / "version.c"
    text = path.read_text(encoding="utf-8") + f"/* {message} */\n"
    temp = path.with_name(".version.c.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)  # a new inode: the pristine tree's file is untouched
    git(repo, "commit", "-q", "-am", message)
    return git(repo, "rev-parse", "HEAD")
