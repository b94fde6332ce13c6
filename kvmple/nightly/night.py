"""Run one night: load (or create) its state, run every step not yet finished, stop at the
first failure, then decide the verdict and deliver it. Re-running a finished night changes
nothing and returns the same verdict; ``retry`` runs its failed step again."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmple import events
from kvmple.errors import Interrupted, KvmpleError, UsageError
from kvmple.events import Note, Sink, Warn
from kvmple.nightly import verdict as verdicts
from kvmple.nightly.config import LoadedConfig
from kvmple.nightly.notify import compose, send, write_atomic
from kvmple.nightly.outputs import ApplyOutputs, CompareOutputs, FetchOutputs
from kvmple.nightly.state import (
    FINISHED,
    STEPS,
    NightState,
    check_night_id,
    default_night_id,
    jobs_dir,
    load,
    night_dir,
    save,
)
from kvmple.nightly.steps import (
    STEP_FUNCTIONS,
    RebootPending,
    Skip,
    StepContext,
    host_name,
    remove_worktree,
)
from kvmple.nightly.summary import render_junit, render_markdown


@dataclass(frozen=True)
class NightResult:
    state: NightState
    directory: Path
    verdict: verdicts.Verdict
    replayed: bool  # the night had already finished: nothing was run again
    reboot_pending: str | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.reboot_pending else self.verdict.exit_code


@contextlib.contextmanager
def _exclusive(directory: Path, job: str) -> Iterator[None]:
    """One night of a job at a time: a timer and a manual run must not interleave, and the
    nights of a job share its work area (worktree, build directory)."""
    with (directory / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"nightly job {job} is being run by another kvmple process",
                hint=f"wait for it, or look at {directory}",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_night(
    loaded: LoadedConfig,
    night: str | None = None,
    *,
    retry: bool = False,
    sink: Sink = events.discard,
) -> NightResult:
    """Run (or continue, or replay) one night of ``loaded``'s job, reporting each step (and
    what its campaign or kernel build reports) to ``sink``."""
    config = loaded.config
    night = check_night_id(night or default_night_id())
    directory = night_dir(config.name, night)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(jobs_dir(config.name), config.name):
        state = load(directory)
        if state is None:
            state = NightState(
                config=config.name,
                night=night,
                config_path=str(loaded.path),
                config_sha256=loaded.sha256,
                host=host_name(),
                created=time.time(),
            )
            for name in STEPS:
                state.step(name)
            save(state, directory)
        elif state.config_sha256 != loaded.sha256:
            raise UsageError(
                f"{loaded.path} changed since night {night} started "
                f"({state.config_sha256[:12]} -> {loaded.sha256[:12]})",
                hint="a night runs one config: give the changed config a new --night ID",
            )
        if state.verdict is not None and not retry:
            verdict = verdicts.Verdict(state.verdict, state.exit_code or 0, state.summary)
            return NightResult(state, directory, verdict, replayed=True)
        if retry:
            for name in STEPS:
                if state.step(name).status == "failed":
                    state.step(name).status = "pending"
            state.verdict = state.exit_code = None
            state.summary = ""
            save(state, directory)
        try:
            verdict = _run_steps(loaded, state, directory, sink)
        except RebootPending as pending:
            sink(Note(str(pending)))
            return NightResult(
                state,
                directory,
                verdicts.Verdict("reboot pending", 0, str(pending)),
                replayed=False,
                reboot_pending=str(pending),
            )
        _finish(loaded, state, directory, verdict, sink)
        return NightResult(state, directory, verdict, replayed=False)


def _run_steps(
    loaded: LoadedConfig, state: NightState, directory: Path, sink: Sink
) -> verdicts.Verdict:
    for name in STEPS:
        step = state.step(name)
        if step.status in FINISHED:
            sink(Note(f"{name}: {step.status} earlier ({step.detail})"))
            continue
        step.status = "running"
        step.started = time.time()
        step.ended = None
        step.attempts += 1
        step.outputs.setdefault("first_started", step.started)
        save(state, directory)
        context = StepContext(loaded, state, directory, directory / f"{name}.log", sink)
        context.log(f"== {name} (attempt {step.attempts}) of night {state.night}")
        sink(Note(f"{name}: running (log {context.log_path})"))
        try:
            detail, outputs = STEP_FUNCTIONS[name](context)
            step.status, step.detail = "done", detail
            step.outputs = {"first_started": step.first_started, **outputs.to_dict()}
        except Skip as skip:
            step.status, step.detail = "skipped", str(skip)
            kept = skip.outputs.to_dict() if skip.outputs else {}
            step.outputs = {"first_started": step.first_started, **kept}
        except RebootPending as pending:
            step.detail = str(pending)
            step.ended = time.time()
            save(state, directory)
            raise
        except KeyboardInterrupt:
            step.status, step.detail = "pending", "interrupted; the next run repeats this step"
            step.ended = time.time()
            save(state, directory)
            raise Interrupted(
                f"night {state.night} interrupted during {name}",
                hint=f"continue it with: kvmple nightly {loaded.path} --night {state.night}",
            ) from None
        except KvmpleError as exc:
            step.status, step.detail, step.hint = "failed", exc.message, exc.hint or ""
            step.exit_code = exc.exit_code
            step.ended = time.time()
            context.log(f"FAILED (exit {exc.exit_code}): {exc.message}\nhint: {exc.hint}")
            save(state, directory)
            sink(Warn(f"{name} failed: {exc.message}"))
            return verdicts.failed_step(name, exc.exit_code, exc.message)
        step.ended = time.time()
        context.log(f"== {name}: {step.status}: {step.detail}")
        sink(Note(f"{name}: {step.status}: {step.detail}"))
        save(state, directory)
    compare = state.need("compare", CompareOutputs)
    if not compare.baseline_campaign:
        return verdicts.first_night(compare.candidate)
    return verdicts.from_comparison(
        str(compare.outcome),
        list(compare.cell_verdicts),
        compare.baseline_campaign,
        compare.candidate,
    )


def _read(directory: Path, name: str | None) -> str:
    if not name:
        return ""
    path = directory / name
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _finish(
    loaded: LoadedConfig,
    state: NightState,
    directory: Path,
    verdict: verdicts.Verdict,
    sink: Sink,
) -> None:
    """Record the verdict, write the JUnit file and the markdown summary, notify."""
    config = loaded.config
    state.verdict, state.exit_code, state.summary = verdict.name, verdict.exit_code, verdict.summary
    state.finished = time.time()
    compare = state.outputs_of("compare", CompareOutputs)
    junit = render_junit(state, _read(directory, compare.junit_cases if compare else None) or None)
    markdown = render_markdown(state, _read(directory, compare.details if compare else None))
    outputs = [
        write_atomic(directory / "junit.xml", junit),
        write_atomic(directory / "summary.md", markdown),
    ]
    if config.notify.junit:
        outputs.append(write_atomic(config.notify.junit, junit))
    if config.notify.markdown:
        outputs.append(write_atomic(config.notify.markdown, markdown))
    email = config.notify.email
    if email is not None and (email.when == "always" or verdict.name in verdicts.PROBLEM_VERDICTS):
        subject = f"{config.name} night {state.night}: {verdict.name}"
        try:
            send(email, compose(email, subject, markdown, ("junit.xml", junit)))
            state.summary += f" (mailed to {', '.join(email.to)})"
        except KvmpleError as exc:  # a mail problem must not hide the verdict
            sink(Warn(f"notify: e-mail not sent: {exc.message}"))
            state.summary += f" (e-mail NOT sent: {exc.message})"
    apply = state.outputs_of("apply", ApplyOutputs)
    fetched = state.outputs_of("fetch", FetchOutputs)
    if (
        not config.keep_tree
        and apply is not None
        and apply.worktree is not None
        and fetched is not None
        and state.step("campaign").status == "done"
        and apply.worktree.exists()
    ):
        context = StepContext(loaded, state, directory, directory / "apply.log", sink)
        context.log("the night is over: removing the patched worktree (keep_tree: false)")
        remove_worktree(context, fetched.source, apply.worktree, apply.branch)
    save(state, directory)
    for path in outputs:
        os.chmod(path, 0o644)
