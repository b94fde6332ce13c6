"""The night's steps. Each takes the step context and returns ``(detail, outputs)``; it
raises a KvmpleError to fail the night (the error's exit code becomes the verdict's), or
``Skip`` to be recorded as skipped with a reason. Steps are restartable: a step that was
running when the host went down is simply run again."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from kvmple import paths
from kvmple.errors import ConfigError, KvmpleError, PatchError
from kvmple.kernel.apply import Status, apply_series
from kvmple.kernel.seriesinput import open_series
from kvmple.nightly.campaign_steps import campaign, compare
from kvmple.nightly.config import NightlyConfig
from kvmple.nightly.context import (
    NOT_VERIFIED,
    RebootPending,
    Skip,
    StepContext,
    StepFunction,
    host_name,
    work_dir,
)
from kvmple.nightly.kernel_steps import boot, build, install
from kvmple.nightly.outputs import ApplyOutputs, FetchOutputs
from kvmple.run import Result

__all__ = [
    "NOT_VERIFIED",
    "STEP_FUNCTIONS",
    "RebootPending",
    "Skip",
    "StepContext",
    "StepFunction",
    "host_name",
    "remove_worktree",
    "work_dir",
]


# ------------------------------------------------------------------------------- fetch


def _git(
    ctx: StepContext,
    repo: Path,
    *args: str,
    timeout: float = 600,
    what: str = "git",
    check: bool = True,
) -> Result:
    return ctx.cmd(["git", "-C", str(repo), *args], timeout=timeout, what=what, check=check)


def _mirror_dir(config: NightlyConfig) -> Path:
    where = str(config.tree.url or config.tree.path)
    digest = hashlib.sha256(where.encode()).hexdigest()[:10]
    return paths.cache_dir() / "nightly" / "trees" / f"{config.name}-{digest}"


def fetch(ctx: StepContext) -> tuple[str, FetchOutputs]:
    """Resolve the tree's ref to a commit and provide a checkout of exactly that commit.

    A local tree whose HEAD is that commit (and which has no uncommitted changes) is used in
    place (apply only adds a worktree beside it); otherwise a cached clone of the tree is
    checked out at the commit. A URL is always fetched into the cached clone.
    """
    tree = ctx.config.tree
    if tree.path is not None:
        commit, source = _fetch_local(ctx, tree.path)
        origin = str(tree.path)
    else:
        assert tree.url is not None
        commit, source = _fetch_url(ctx, tree.url)
        origin = tree.url
    subject = _git(ctx, source, "log", "-1", "--format=%s", commit, what="git log").stdout.strip()
    outputs = FetchOutputs(tree=origin, ref=tree.ref, commit=commit, subject=subject, source=source)
    return f"{tree.ref} = {commit[:12]} {subject}", outputs


def _fetch_local(ctx: StepContext, path: Path) -> tuple[str, Path]:
    """(commit, checkout) for a local tree: the tree itself when it is clean at the commit,
    else the cached clone checked out at it."""
    ref = ctx.config.tree.ref
    if not (path / ".git").exists():
        raise ConfigError(
            f"tree.path {path}: not a git checkout",
            hint="nightly needs a git tree (git init && git add -A && git commit, or a URL)",
        )
    found = _git(
        ctx,
        path,
        "rev-parse",
        "--verify",
        "--end-of-options",
        f"{ref}^{{commit}}",
        what=f"resolving {ref}",
        check=False,
    )
    if not found.ok:
        raise ConfigError(
            f"tree.ref {ref!r} is not a commit in {path}",
            hint=f"step log: {ctx.log_path}",
        )
    commit = found.stdout.strip()
    head = _git(ctx, path, "rev-parse", "HEAD", what="git rev-parse HEAD").stdout.strip()
    dirty = _git(
        ctx, path, "status", "--porcelain", "--untracked-files=no", what="git status"
    ).stdout.strip()
    if head == commit and not dirty:
        return commit, path
    mirror = _mirror_dir(ctx.config)
    if not mirror.exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        ctx.cmd(
            ["git", "clone", "--no-checkout", "--shared", "--", str(path), str(mirror)],
            timeout=3600,
            what="git clone (cached copy of the tree)",
        )
    _git(ctx, mirror, "fetch", "--no-tags", "origin", timeout=3600, what="git fetch")
    return commit, _checkout(ctx, mirror, commit)


def _fetch_url(ctx: StepContext, url: str) -> tuple[str, Path]:
    """(commit, checkout) for a URL: fetched into the cached clone, checked out there."""
    ref = ctx.config.tree.ref
    mirror = _mirror_dir(ctx.config)
    if not mirror.exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        ctx.cmd(
            ["git", "clone", "--no-checkout", "--", url, str(mirror)],
            timeout=7200,
            what=f"git clone {url}",
        )
    _git(
        ctx,
        mirror,
        "fetch",
        "--no-tags",
        "origin",
        "--end-of-options",
        ref,
        timeout=7200,
        what=f"git fetch {ref}",
    )
    commit = _git(
        ctx, mirror, "rev-parse", "FETCH_HEAD^{commit}", what="git rev-parse FETCH_HEAD"
    ).stdout.strip()
    return commit, _checkout(ctx, mirror, commit)


def _checkout(ctx: StepContext, mirror: Path, commit: str) -> Path:
    _git(ctx, mirror, "checkout", "-q", "-f", "--detach", commit, timeout=3600, what="git checkout")
    return mirror


# ------------------------------------------------------------------------------- apply


def _same_commit(ctx: StepContext, source: Path, commit: str) -> None:
    head = _git(ctx, source, "rev-parse", "HEAD", what="git rev-parse HEAD").stdout.strip()
    if head != commit:
        raise PatchError(
            f"{source} moved since this night's fetch (HEAD {head[:12]}, fetched {commit[:12]})",
            hint="start a new night (--night NEW-ID) to validate the new head",
        )


def _branch_exists(ctx: StepContext, source: Path, branch: str) -> bool:
    found = _git(
        ctx,
        source,
        "rev-parse",
        "--verify",
        "-q",
        f"refs/heads/{branch}",
        check=False,
        what="git rev-parse",
    )
    return found.ok


def remove_worktree(ctx: StepContext, source: Path, target: Path, branch: str | None) -> None:
    """Remove a worktree (and its branch) that apply created for this night."""
    if target.exists():
        _git(
            ctx,
            source,
            "worktree",
            "remove",
            "--force",
            str(target),
            check=False,
            what="git worktree remove",
        )
        shutil.rmtree(target, ignore_errors=True)
    _git(ctx, source, "worktree", "prune", check=False, what="git worktree prune")
    if branch:
        _git(ctx, source, "branch", "-q", "-D", branch, check=False, what="git branch -D")


def apply(ctx: StepContext) -> tuple[str, ApplyOutputs]:
    fetched = ctx.state.need("fetch", FetchOutputs)
    source, commit = fetched.source, fetched.commit
    _same_commit(ctx, source, commit)
    if not ctx.config.series:
        return "no series configured: the tree is built as fetched", ApplyOutputs(tree=source)
    # One worktree path per job, the same every night (apply names the branch after the
    # folder): the build then sees the same paths every night, so ccache hits.
    into = work_dir(ctx.config) / f"linux-{ctx.config.name}"
    if into.exists() or _branch_exists(ctx, source, f"kvmple/{into.name}"):
        ctx.log(f"removing an earlier night's (or attempt's) worktree {into}")
        remove_worktree(ctx, source, into, f"kvmple/{into.name}")
    opened = open_series(ctx.config.series, revision=ctx.config.series_revision)
    series, folder = opened.series, opened.folder
    ctx.log(
        f"applying {series.name} ({len(series.patches)} patches) to {source} at "
        f"{commit[:12]} into {into}"
    )
    try:
        report = apply_series(
            series,
            folder,
            source,
            into=into,
            source=ctx.config.series_from or opened.source,
            revision=ctx.config.series_revision,
        )
    except KvmpleError as exc:
        ctx.log(f"FAILED: {exc.message}\nhint: {exc.hint}")
        raise
    for line in report.dropped:
        ctx.log(f"  dropped: {line}")
    for result in report.results:
        ctx.log(
            f"  {result.index:3}. [{result.status.value}] {result.subject}"
            + (f" -- {result.detail}" if result.detail else "")
        )
    counts = ", ".join(f"{report.count(s)} {s.value}" for s in Status if report.count(s))
    outputs = ApplyOutputs(
        series=series.name,
        method=report.method,
        counts={s.value: report.count(s) for s in Status if report.count(s)},
        branch=report.branch,
        revision=report.revision,
        dropped=tuple(report.dropped),
        worktree=report.target,
        tree=report.target or source,
    )
    if report.target is None:
        return f"{series.name}: {counts}; nothing to apply, the tree is built as fetched", outputs
    return f"{series.name}: {counts} ({report.method})", outputs


# ------------------------------------------------------------------------------- build


STEP_FUNCTIONS: dict[str, StepFunction] = {
    "fetch": fetch,
    "apply": apply,
    "build": build,
    "boot-test": boot,
    "install": install,
    "campaign": campaign,
    "compare": compare,
}
