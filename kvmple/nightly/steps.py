"""The night's steps. Each takes the step context and returns ``(detail, outputs)``; it
raises a KvmpleError to fail the night (the error's exit code becomes the verdict's), or
``Skip`` to be recorded as skipped with a reason. Steps are restartable: a step that was
running when the host went down is simply run again."""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmple import paths
from kvmple.campaign.playbook import load_playbook
from kvmple.campaign.runner import CampaignOptions, run_campaign
from kvmple.errors import CampaignError, ConfigError, HostError, KvmpleError, PatchError
from kvmple.executor import LocalExecutor
from kvmple.host import doctor
from kvmple.kernel import install as kernel_install
from kvmple.kernel.apply import Status, apply_series
from kvmple.kernel.bootpass import load_pass, record_pass
from kvmple.kernel.boottest import boot_test
from kvmple.kernel.build import BUILTIN_FRAGMENT, BuildRequest, build_kernel, load_manifest
from kvmple.kernel.configs import BOOT_TEST_ALLOWED_TO_VANISH
from kvmple.kernel.install import kvmple_command
from kvmple.kernel.seriesinput import open_series
from kvmple.nightly.baseline import last_good_night
from kvmple.nightly.config import LoadedConfig, NightlyConfig
from kvmple.nightly.notify import write_atomic
from kvmple.nightly.resume import resume_steps, with_resume
from kvmple.nightly.state import NightState, previous_nights
from kvmple.results import open_store
from kvmple.results.compare import compare_campaigns
from kvmple.results.junit import comparison_junit, report_junit
from kvmple.results.report import load_analysis
from kvmple.results.tables import render_comparison_markdown, render_markdown
from kvmple.run import Result, failure, run

NOT_VERIFIED = "not verified on hardware"


class Skip(Exception):
    """The step does not apply here; the message says why (recorded as 'skipped', with
    ``outputs``: e.g. the install plan that would have run)."""

    def __init__(self, message: str, outputs: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.outputs = outputs or {}


class RebootPending(Exception):
    """The kernel was installed and the host reboots into it; the night continues after."""


@dataclass
class StepContext:
    loaded: LoadedConfig
    state: NightState
    directory: Path
    log_path: Path

    @property
    def config(self) -> NightlyConfig:
        return self.loaded.config

    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.log_path.open("a", encoding="utf-8") as handle:
            for line in text.rstrip("\n").splitlines() or [""]:
                handle.write(f"{stamp} {line}\n")

    def cmd(
        self,
        argv: Sequence[str | Path],
        *,
        timeout: float,
        what: str,
        check: bool = True,
        cwd: Path | None = None,
    ) -> Result:
        """Run a command, logging it and its output to the step log."""
        self.log("$ " + shlex.join(str(a) for a in argv))
        result = run(argv, timeout=timeout, what=what, check=False, cwd=cwd)
        for label, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            if text.strip():
                self.log(f"[{label}]\n{text}")
        self.log(f"[exit {result.returncode} after {result.duration:.1f}s]")
        if check and not result.ok:
            raise failure(result, what, hint=f"step log: {self.log_path}")
        return result


StepFunction = Callable[[StepContext], tuple[str, dict[str, Any]]]


def host_name() -> str:
    """The host's name as nights and campaigns record it (KVMPLE_HOSTNAME overrides)."""
    return os.environ.get("KVMPLE_HOSTNAME") or socket.gethostname()


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


def fetch(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    """Resolve the tree's ref to a commit and provide a checkout of exactly that commit.

    A local tree whose HEAD is that commit (and which has no uncommitted changes) is used in
    place (apply only adds a worktree beside it); otherwise a cached clone of the tree is
    checked out at the commit. A URL is always fetched into the cached clone.
    """
    tree = ctx.config.tree
    mirror = _mirror_dir(ctx.config)
    if tree.path is not None:
        if not (tree.path / ".git").exists():
            raise ConfigError(
                f"tree.path {tree.path}: not a git checkout",
                hint="nightly needs a git tree (git init && git add -A && git commit, or a URL)",
            )
        found = _git(
            ctx,
            tree.path,
            "rev-parse",
            "--verify",
            "--end-of-options",
            f"{tree.ref}^{{commit}}",
            what=f"resolving {tree.ref}",
            check=False,
        )
        if not found.ok:
            raise ConfigError(
                f"tree.ref {tree.ref!r} is not a commit in {tree.path}",
                hint=f"step log: {ctx.log_path}",
            )
        commit = found.stdout.strip()
        head = _git(ctx, tree.path, "rev-parse", "HEAD", what="git rev-parse HEAD").stdout.strip()
        dirty = _git(
            ctx, tree.path, "status", "--porcelain", "--untracked-files=no", what="git status"
        ).stdout.strip()
        if head == commit and not dirty:
            source = tree.path
        else:
            if not mirror.exists():
                mirror.parent.mkdir(parents=True, exist_ok=True)
                ctx.cmd(
                    [
                        "git",
                        "clone",
                        "--no-checkout",
                        "--shared",
                        "--",
                        str(tree.path),
                        str(mirror),
                    ],
                    timeout=3600,
                    what="git clone (cached copy of the tree)",
                )
            _git(ctx, mirror, "fetch", "--no-tags", "origin", timeout=3600, what="git fetch")
            source = _checkout(ctx, mirror, commit)
        origin = str(tree.path)
    else:
        assert tree.url is not None
        if not mirror.exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            ctx.cmd(
                ["git", "clone", "--no-checkout", "--", tree.url, str(mirror)],
                timeout=7200,
                what=f"git clone {tree.url}",
            )
        _git(
            ctx,
            mirror,
            "fetch",
            "--no-tags",
            "origin",
            "--end-of-options",
            tree.ref,
            timeout=7200,
            what=f"git fetch {tree.ref}",
        )
        commit = _git(
            ctx, mirror, "rev-parse", "FETCH_HEAD^{commit}", what="git rev-parse FETCH_HEAD"
        ).stdout.strip()
        source = _checkout(ctx, mirror, commit)
        origin = tree.url
    subject = _git(ctx, source, "log", "-1", "--format=%s", commit, what="git log").stdout.strip()
    outputs = {
        "tree": origin,
        "ref": tree.ref,
        "commit": commit,
        "subject": subject,
        "source": str(source),
    }
    return f"{tree.ref} = {commit[:12]} {subject}", outputs


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


def work_dir(config: NightlyConfig) -> Path:
    """The job's work area (patched worktree, build directory), reused night after night."""
    return paths.cache_dir() / "nightly" / "work" / config.name


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


def apply(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    source = Path(str(ctx.state.output("fetch", "source")))
    commit = str(ctx.state.output("fetch", "commit"))
    _same_commit(ctx, source, commit)
    if not ctx.config.series:
        return "no series configured: the tree is built as fetched", {"tree": str(source)}
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
    for result in report.results:
        ctx.log(
            f"  {result.index:3}. [{result.status.value}] {result.subject}"
            + (f" -- {result.detail}" if result.detail else "")
        )
    counts = ", ".join(f"{report.count(s)} {s.value}" for s in Status if report.count(s))
    outputs: dict[str, Any] = {
        "series": series.name,
        "method": report.method,
        "counts": {s.value: report.count(s) for s in Status if report.count(s)},
        "branch": report.branch,
        "worktree": str(report.target) if report.target else None,
        "tree": str(report.target or source),
    }
    if report.target is None:
        return f"{series.name}: {counts}; nothing to apply, the tree is built as fetched", outputs
    return f"{series.name}: {counts} ({report.method})", outputs


# ------------------------------------------------------------------------------- build


def build(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    spec = ctx.config.kernel
    if spec.fragments is None and spec.config == "tinyconfig":
        fragments: tuple[str, ...] = ("kvm_guest.config", BUILTIN_FRAGMENT)
        allowed = BOOT_TEST_ALLOWED_TO_VANISH | frozenset(spec.allow_vanish)
    else:
        fragments = tuple(spec.fragments or ())
        allowed = frozenset(spec.allow_vanish)
    tree = Path(str(ctx.state.output("apply", "tree")))
    out = work_dir(ctx.config) / "build"  # the same every night: ccache and make reuse it
    ctx.log(
        f"building {tree} into {out} (config {spec.config}, fragments {list(fragments)}); "
        f"full make output: {out / 'build.log'}"
    )
    try:
        manifest = build_kernel(
            BuildRequest(
                tree=tree,
                out=out,
                base=spec.config,
                fragments=fragments,
                allow_vanish=allowed,
                jobs=spec.jobs,
                ccache=spec.ccache,
                timeout=spec.build_timeout,
            )
        )
    except KvmpleError as exc:
        ctx.log(f"FAILED: {exc.message}\nhint: {exc.hint}")
        raise
    keys = ("release", "image", "image_sha256", "config_sha256", "seconds", "ccache", "log")
    outputs = {key: manifest.get(key) for key in keys} | {"out": str(out)}
    # the build directory is reused by the next night: keep this night's kernel with it
    kept = ctx.directory / "kernel"
    kept.mkdir(exist_ok=True)
    for path in (Path(str(manifest["image"])), out / ".config", out / "kvmple-build.json"):
        shutil.copyfile(path, kept / path.name)
    outputs["kept"] = str(kept)
    ctx.log(f"built {manifest['release']} in {manifest['seconds']} s")
    return (
        f"{manifest['release']} in {manifest['seconds']} s "
        f"(ccache {'on' if manifest['ccache'] else 'off'})"
    ), outputs


# --------------------------------------------------------------------------- boot-test


def boot(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    built = ctx.state.step("build").outputs
    spec = ctx.config.kernel
    out = Path(str(built["out"]))
    console = ctx.directory / "boot-console.log"
    ctx.log(f"boot test of {built['image']} (expect {built['release']}); console: {console}")
    try:
        result = boot_test(
            Path(str(built["image"])),
            str(built["release"]),
            log=console,
            timeout=spec.boot_timeout,
            accel=spec.boot_accel,
            expect_lines=spec.expect_lines,
        )
    except KvmpleError as exc:
        ctx.log(f"FAILED: {exc.message}\nhint: {exc.hint}")
        raise
    record_pass(out, result, str(built["image_sha256"]))
    ctx.log(f"passed: user space after {result.seconds_to_userspace} s ({result.accel})")
    outputs = {
        "release": result.release,
        "accel": result.accel,
        "seconds_to_userspace": result.seconds_to_userspace,
        "console": str(console),
    }
    return (
        f"user space runs {result.release} after {result.seconds_to_userspace} s ({result.accel})",
        outputs,
    )


# ----------------------------------------------------------------------------- install


def install(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    """Plan always (the kernel pipeline's planning decides what would be done); execute
    only on a hardware host with ``install.enabled`` (NOT VERIFIED ON HARDWARE)."""
    out = Path(str(ctx.state.output("build", "out")))
    release = str(ctx.state.output("build", "release"))
    outputs: dict[str, Any] = {"release": release}
    if ctx.state.step("install").outputs.get("installed") == release:
        if platform.release() == release:
            return f"running the installed kernel {release}", ctx.state.step("install").outputs
        raise HostError(
            f"kernel {release} was installed but the host runs {platform.release()} after "
            "the reboot (the one-shot boot entry fell back: the new kernel may not boot here)",
            hint="see the host's boot log; the night stops here",
        )
    facts = kernel_install.gather_host_facts()
    try:
        plan = kernel_install.plan_install(
            load_manifest(out),
            load_pass(out),
            facts,
            method=ctx.config.install.method,
            reboot=True,
        )
        resume = resume_steps(resume_command(ctx), ctx.state.night, has_systemd=facts.has_systemd)
        plan.steps = with_resume(plan.steps, resume)
        outputs["plan"] = [step.render() for step in plan.steps]
        ctx.log(
            "install plan:\n" + "\n".join(f"  {i}. {s}" for i, s in enumerate(outputs["plan"], 1))
        )
    except KvmpleError as exc:
        plan = None
        outputs["plan_refused"] = exc.message
        ctx.log(f"install planning refused: {exc.message}")
    report = doctor.diagnose(probe_kvm=False)
    if report.accelerator != "kvm":
        raise Skip(
            f"{NOT_VERIFIED} / no VT-x host ({report.reason}); the campaign "
            f"runs on the running kernel {platform.release()}",
            outputs,
        )
    if not ctx.config.install.enabled:
        raise Skip(
            f"install.enabled is false; the campaign runs on the running "
            f"kernel {platform.release()}",
            outputs,
        )
    if plan is None:
        raise HostError(f"cannot install {release}: {outputs['plan_refused']}")
    # NOT VERIFIED ON HARDWARE: install, then the reboot step ends this process.

    outputs["installed"] = release
    ctx.state.step("install").outputs = outputs  # recorded before the reboot happens
    kernel_install.execute(plan, LocalExecutor())
    raise RebootPending(f"installed {release}; rebooting, the night continues after the reboot")


def resume_command(ctx: StepContext) -> list[str]:
    """How a boot hook continues this night (the install plan's resume unit runs it)."""
    return [*kvmple_command(), "nightly", str(ctx.loaded.path), "--night", ctx.state.night]


# ---------------------------------------------------------------------------- campaign


def _find_started_campaign(store: Any, name: str, host: str, since: float) -> Any:
    """A campaign this step started before the host went down (same playbook name and host,
    created after the step began)."""
    found = [
        m
        for m in store.campaigns()
        if m.name == name and m.host.get("hostname") == host and m.created >= since - 1
    ]
    return max(found, key=lambda m: m.created) if found else None


def campaign(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    loaded = load_playbook(ctx.config.playbook)
    step = ctx.state.step("campaign")
    options = CampaignOptions(
        db_url=ctx.config.store, allow_unavailable=ctx.config.allow_unavailable
    )
    previous = None
    if step.attempts > 1:  # an earlier attempt may have stored a campaign before dying
        with open_store(ctx.config.store) as store:
            previous = _find_started_campaign(
                store, loaded.playbook.name, host_name(), float(step.outputs["first_started"])
            )
    if previous is not None and previous.status == "complete":
        ctx.log(f"campaign {previous.id} completed before the interruption")
        campaign_id = previous.id
        ok = planned = None
    else:
        if previous is not None:
            ctx.log(f"resuming campaign {previous.id} (started before the interruption)")
            outcome = run_campaign(None, options, resume_id=previous.id)
        else:
            ctx.log(f"running {ctx.config.playbook} (store {ctx.config.store or 'default'})")
            outcome = run_campaign(loaded, options)
        ctx.log(outcome.summary())
        campaign_id, ok, planned = outcome.campaign_id, outcome.ok, outcome.planned
    with open_store(ctx.config.store) as store:
        runs = store.runs(campaign_id)
    ok_runs = sum(1 for r in runs if r.status == "ok")
    outputs = {
        "campaign_id": campaign_id,
        "playbook": str(ctx.config.playbook),
        "playbook_sha256": loaded.sha256,
        "ok": ok_runs,
        "planned": planned,
        "new_ok": ok,
        "running_kernel": platform.release(),
        "kernel_under_test": ctx.state.output("build", "release"),
        "first_started": step.outputs["first_started"],
        "log": str(paths.data_dir() / "campaigns" / campaign_id / "campaign.log"),
    }
    if ok_runs == 0:
        raise CampaignError(
            f"campaign {campaign_id} stored no successful run", hint=f"see {outputs['log']}"
        )
    note = (
        ""
        if ctx.state.step("install").status == "done"
        else f" on the running kernel {platform.release()} (install skipped)"
    )
    return f"campaign {campaign_id}: {ok_runs} ok runs{note}", outputs


# ----------------------------------------------------------------------------- compare


def compare(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    """Compare the night's campaign with the baseline (or record it as the first one).
    Writes compare.md and compare.xml (or report.md / report.xml on a first night)."""
    measured = ctx.state.step("campaign").outputs
    candidate_id = str(measured["campaign_id"])
    policy = ctx.config.baseline
    baseline_night: str | None = None
    with open_store(ctx.config.store, create=False) as store:
        candidate = store.resolve(candidate_id)
        if policy.policy == "campaign":
            assert policy.campaign is not None
            baseline = store.resolve(policy.campaign)
        else:
            found = last_good_night(
                previous_nights(ctx.config.name, ctx.state.night),
                ctx.state.host,
                str(measured["playbook_sha256"]),
            )
            baseline = None
            if found is not None:
                baseline_night = found.night
                baseline = store.resolve(str(found.output("campaign", "campaign_id")))
        if baseline is None:
            analysis = load_analysis(store, candidate.id, threshold=ctx.config.threshold)
            write_atomic(ctx.directory / "report.md", render_markdown(analysis))
            write_atomic(ctx.directory / "report.xml", report_junit(analysis))
            ctx.log(
                f"no earlier good night of this host and playbook: {candidate.id} is the baseline"
            )
            return (
                f"first night of this host and playbook: {candidate.id} recorded as baseline",
                {
                    "baseline_campaign": None,
                    "candidate": candidate.id,
                    "outcome": None,
                    "details": "report.md",
                    "junit_cases": "report.xml",
                },
            )
        ctx.log(
            f"comparing {candidate.id} with baseline {baseline.id}"
            + (f" (night {baseline_night})" if baseline_night else "")
        )
        result = compare_campaigns(
            (baseline, store.runs(baseline.id)),
            (candidate, store.runs(candidate.id)),
            threshold=ctx.config.threshold,
        )
    markdown = render_comparison_markdown(result)
    write_atomic(ctx.directory / "compare.md", markdown)
    write_atomic(ctx.directory / "compare.xml", comparison_junit(result))
    ctx.log(markdown)
    verdicts = [cell.verdict for cell in result.cells]
    outputs = {
        "baseline_campaign": baseline.id,
        "baseline_night": baseline_night,
        "candidate": candidate.id,
        "outcome": result.outcome,
        "cell_verdicts": verdicts,
        "threshold": ctx.config.threshold,
        "differences": list(result.differences),
        "details": "compare.md",
        "junit_cases": "compare.xml",
    }
    return (
        f"{candidate.id} vs {baseline.id}: {result.outcome} "
        f"({len(verdicts)} cells at {ctx.config.threshold:.0%})"
    ), outputs


STEP_FUNCTIONS: dict[str, StepFunction] = {
    "fetch": fetch,
    "apply": apply,
    "build": build,
    "boot-test": boot,
    "install": install,
    "campaign": campaign,
    "compare": compare,
}
