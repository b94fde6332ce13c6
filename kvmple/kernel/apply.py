"""Apply a series to a kernel tree without touching the user's checked-out work.

- git tree: a fresh branch ``kvmple/<series>-<stamp>`` in a new worktree, ``git am -3`` per
  patch (a patch whose reverse applies is reported "already applied" and skipped).
- tree without git (e.g. an unpacked release tarball): a hard-linked copy (GNU patch breaks
  the links of the files it changes, so the original stays untouched), quilt-compatible
  application with ``patch``, and quilt's ``.pc/`` state so ``quilt pop`` works there.
  Already-applied patches are detected by popping the stack: every patch whose reverse
  applies (last to first) is taken off, then the series is pushed again in order; a patch
  that was taken off and goes back on was "already applied".

Before any of that, patches already upstream (see ``kvmple.kernel.upstream``) are reported
as such and not applied. On a failure the message names the patch, the file and the hunk,
and the copy/worktree/branch is removed: the tree is left as it was.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from pydantic import ValidationError

from kvmple.config.jsonfile import first_error
from kvmple.errors import InputError, PatchError
from kvmple.kernel.manifest import AppliedRecord
from kvmple.kernel.patchtool import (
    APPLIED_REASON,
    Failure,
    parse_git_am_failure,
    parse_patch_failure,
    run_patch,
    touched_files,
    write_quilt_state,
)
from kvmple.kernel.series import Series, normalise_subject
from kvmple.kernel.sources import Patch, materialise
from kvmple.kernel.tree import KernelTree, git_dirty_files, inspect_tree
from kvmple.kernel.upstream import Presence, check_upstream
from kvmple.paths import cache_dir
from kvmple.run import run

RECORD = ".kvmple-applied.json"


class Status(StrEnum):
    applied = "applied"
    already_applied = "already applied"
    looks_applied = "looks applied"
    upstream = "already upstream"
    failed = "does not apply"


@dataclass(frozen=True)
class PatchResult:
    index: int
    subject: str
    status: Status
    detail: str = ""
    origin: str = ""


@dataclass
class ApplyReport:
    series: str
    tree: Path
    method: str  # "git am -3" | "quilt (patch)" | "none"
    target: Path | None = None
    branch: str | None = None
    results: list[PatchResult] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # inputs left out, and why
    revision: int | None = None  # mail sources: the revision applied

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def ok(self) -> bool:
        return self.count(Status.failed) == 0

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["tree"] = str(self.tree)
        data["target"] = str(self.target) if self.target else None
        data["results"] = [{**asdict(r), "status": r.status.value} for r in self.results]
        return data


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "series"


def work_target(series: Series, into: Path | None) -> Path:
    if into is not None:
        if into.exists():
            raise PatchError(f"{into} already exists", hint="--into needs a new directory path")
        return into.resolve()
    base = cache_dir() / "kernel" / "work"
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{slug(series.name)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def apply_series(
    series: Series,
    folder: Path,
    tree_path: Path,
    *,
    into: Path | None = None,
    source: Path | None = None,
    git_range: str | None = None,
    check_only: bool = False,
    revision: int | None = None,
) -> ApplyReport:
    """Apply ``series`` to a copy of ``tree_path``; per-patch status in the report.

    ``check_only``: go through every patch (a failing one is skipped, the rest continue),
    report, and remove the copy again.
    """
    tree = inspect_tree(tree_path)
    if tree.is_git:
        dirty = git_dirty_files(tree.path)
        if dirty:
            raise PatchError(
                f"{tree.path}: the tree has uncommitted changes ({', '.join(dirty[:3])}"
                f"{', ...' if len(dirty) > 3 else ''})",
                hint="commit or stash them first: kvmple applies on a branch from HEAD",
            )
    presence = check_upstream(series, tree, git_range) if series.landed_in or tree.is_git else []
    upstream = {p.index: p for p in presence if p.upstream}
    report = ApplyReport(series.name, tree.path, "none")
    if len(upstream) == len(series.patches):
        report.results = [
            PatchResult(i + 1, e.subject, Status.upstream, upstream[i].evidence)
            for i, e in enumerate(series.patches)
        ]
        return report
    found = materialise(
        series,
        folder,
        override=source,
        git_tree=tree.path if tree.is_git else None,
        git_range=git_range,
        revision=revision,
    )
    patches = found.patches
    report.dropped = found.dropped
    report.revision = found.revision
    pending = [p for p in patches if not _is_upstream(p, series, upstream)]
    target = work_target(series, into)
    try:
        if tree.is_git:
            report.method = "git am -3"
            report.branch = f"kvmple/{target.name}"
            results = _apply_git(tree, pending, target, report.branch, check_only)
        else:
            report.method = "quilt (patch)"
            results = _apply_quilt(tree, pending, target, check_only)
        report.target = target
        report.results = sorted(
            results + _upstream_results(patches, series, upstream), key=lambda r: r.index
        )
        if check_only or not any(r.status is Status.applied for r in results):
            _remove(tree, target, report.branch)
            report.target = report.branch = None
        else:
            _write_record(target, report)
        return report
    except BaseException:
        _remove(tree, target, report.branch)
        raise


def _is_upstream(patch: Patch, series: Series, upstream: dict[int, Presence]) -> bool:
    return _entry_index(patch, series) in upstream


def _entry_index(patch: Patch, series: Series) -> int:
    for index, entry in enumerate(series.patches):
        if entry.file and entry.file == patch.name:
            return index
        if normalise_subject(entry.subject) == normalise_subject(patch.subject):
            return index
    return patch.index - 1


def _upstream_results(
    patches: list[Patch], series: Series, upstream: dict[int, Presence]
) -> list[PatchResult]:
    return [
        PatchResult(
            p.index,
            p.subject,
            Status.upstream,
            upstream[_entry_index(p, series)].evidence,
            p.origin,
        )
        for p in patches
        if _is_upstream(p, series, upstream)
    ]


def _fail(patch: Patch, failure: Failure) -> PatchError:
    return PatchError(
        f"patch {patch.index} {patch.name} ({patch.subject!r}) does not apply: "
        f"{failure.describe()}",
        hint="the tree was left as it was; refresh the patch against this tree or pick "
        "the base it was written for (kvmple kernel series show)",
    )


def _write_patch(scratch: Path, patch: Patch) -> Path:
    path = scratch / f"{patch.index:04d}.patch"
    path.write_text(patch.text, encoding="utf-8", errors="surrogateescape")
    return path


# ------------------------------------------------------------------------ git trees


def _apply_git(
    tree: KernelTree, patches: list[Patch], target: Path, branch: str, check_only: bool
) -> list[PatchResult]:
    run(
        ["git", "-C", tree.path, "worktree", "add", "-q", "-b", branch, target, "HEAD"],
        timeout=600,
        what="git worktree add",
    )
    results: list[PatchResult] = []
    with tempfile.TemporaryDirectory(prefix="kvmple-am-") as scratch:
        for patch in patches:
            file = _write_patch(Path(scratch), patch)
            reverse = run(
                ["git", "-C", target, "apply", "--check", "-R", f"-p{patch.strip}", file],
                timeout=300,
                check=False,
            )
            if reverse.ok:
                results.append(
                    PatchResult(
                        patch.index,
                        patch.subject,
                        Status.already_applied,
                        "its reverse applies cleanly",
                        patch.origin,
                    )
                )
                continue
            am = run(
                ["git", "-C", target, "am", "-3", "--keep-cr", f"-p{patch.strip}", file],
                timeout=600,
                check=False,
                env={"GIT_COMMITTER_NAME": "kvmple", "GIT_COMMITTER_EMAIL": "kvmple@localhost"},
            )
            if am.ok:
                results.append(
                    PatchResult(patch.index, patch.subject, Status.applied, "", patch.origin)
                )
                continue
            run(["git", "-C", target, "am", "--abort"], timeout=120, check=False)
            # git am -3 without blob ids only says "could not build fake ancestor": ask
            # git apply, on the restored tree, which file and line fail
            probe = run(
                ["git", "-C", target, "apply", "--check", f"-p{patch.strip}", file],
                timeout=300,
                check=False,
            )
            failure = parse_git_am_failure(probe.stderr + am.stdout + am.stderr, patch.text)
            if not check_only:
                raise _fail(patch, failure)
            results.append(
                PatchResult(
                    patch.index, patch.subject, Status.failed, failure.describe(), patch.origin
                )
            )
    return results


# ------------------------------------------------------------------- quilt (no git)


def _copy_tree(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    linked = run(["cp", "-al", source, target], timeout=1800, check=False)
    if not linked.ok:  # another filesystem: a real copy
        shutil.rmtree(target, ignore_errors=True)
        run(["cp", "-a", source, target], timeout=3600, what="copying the tree")


def _apply_quilt(
    tree: KernelTree, patches: list[Patch], target: Path, check_only: bool
) -> list[PatchResult]:
    _copy_tree(tree.path, target)
    results: list[PatchResult] = []
    with tempfile.TemporaryDirectory(prefix="kvmple-quilt-") as scratch:
        files = {p.index: _write_patch(Path(scratch), p) for p in patches}
        # pop: take off, last to first, every patch whose reverse applies
        popped: set[int] = set()
        for patch in reversed(patches):
            probe = run_patch(
                target, files[patch.index], strip=patch.strip, reverse=True, dry_run=True
            )
            if probe.ok:
                run_patch(
                    target, files[patch.index], strip=patch.strip, reverse=True, dry_run=False
                )
                popped.add(patch.index)
        # push: in order; what was popped goes back on ("already applied")
        quilt_state: list[tuple[str, int, str, dict[str, bytes | None]]] = []
        for patch in patches:
            probe = run_patch(
                target, files[patch.index], strip=patch.strip, reverse=False, dry_run=True
            )
            if not probe.ok:
                failure = parse_patch_failure(probe.stdout + probe.stderr, patch.strip)
                if failure.reason == APPLIED_REASON:
                    # its first hunk is there reversed, but popping it failed: a later
                    # patch or a later upstream change touches the same lines
                    results.append(
                        PatchResult(
                            patch.index,
                            patch.subject,
                            Status.looks_applied,
                            f"{failure.file}: patch(1) finds it applied; not "
                            "cleanly reversible here (later changes overlap)",
                            patch.origin,
                        )
                    )
                    continue
                if not check_only:
                    raise _fail(patch, failure)
                results.append(
                    PatchResult(
                        patch.index, patch.subject, Status.failed, failure.describe(), patch.origin
                    )
                )
                continue
            backups = {f: _read(target / f) for f in touched_files(probe.stdout)}
            done = run_patch(
                target, files[patch.index], strip=patch.strip, reverse=False, dry_run=False
            )
            if not done.ok:  # cannot happen after a clean dry run, but never hide it
                raise _fail(patch, parse_patch_failure(done.stdout + done.stderr, patch.strip))
            if patch.index in popped:
                results.append(
                    PatchResult(
                        patch.index,
                        patch.subject,
                        Status.already_applied,
                        "its reverse applied; re-applied",
                        patch.origin,
                    )
                )
            else:
                results.append(
                    PatchResult(patch.index, patch.subject, Status.applied, "", patch.origin)
                )
                quilt_state.append((_quilt_name(patch), patch.strip, patch.text, backups))
    if quilt_state and not check_only and not (tree.path / "patches").exists():
        write_quilt_state(target, quilt_state)
    return results


def _quilt_name(patch: Patch) -> str:
    return patch.name if patch.name.endswith((".patch", ".diff")) else f"{patch.name}.patch"


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------------- cleanup


def _remove(tree: KernelTree, target: Path, branch: str | None) -> None:
    if tree.is_git:
        if target.exists():
            run(
                ["git", "-C", tree.path, "worktree", "remove", "--force", target],
                timeout=600,
                check=False,
            )
        run(["git", "-C", tree.path, "worktree", "prune"], timeout=120, check=False)
        if branch:
            run(["git", "-C", tree.path, "branch", "-q", "-D", branch], timeout=60, check=False)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)


def _write_record(target: Path, report: ApplyReport) -> None:
    temp = target / f"{RECORD}.tmp"
    temp.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(temp, target / RECORD)


def read_record(tree: Path) -> AppliedRecord | None:
    """What ``apply`` recorded in a tree it produced (for the build manifest); None when
    there is no record, or it is not a JSON object (as before it was typed). InputError
    (exit 3) naming the key when a key holds another type than apply writes."""
    path = tree / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return AppliedRecord.model_validate(data)
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise InputError(
            f"{path}: {key}: {msg}",
            hint="a record edited by hand or by another program: apply the series again",
        ) from exc
