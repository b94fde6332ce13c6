"""Execute a campaign's plan: per block, set the host knobs, boot the guests once, prepare
the workloads, then run and store every run (failed attempts retried at the back of the
queue, guests rebooted when one dies).

Every resource (PLE setting, guests, load workloads) is a context manager on one ExitStack,
entered knobs first so guests are gone before the knobs are restored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kvmple import __version__, ui
from kvmple.campaign import evidence, quiet
from kvmple.campaign.model import CampaignOutcome, HostFacts
from kvmple.campaign.plan import UNAVAILABLE, Block, Plan, PlannedRun
from kvmple.campaign.playbook import Playbook
from kvmple.campaign.readiness import readiness_for
from kvmple.errors import CampaignError, GuestError, WorkloadError
from kvmple.host import knobs, vmknobs
from kvmple.host.seam import real_seam
from kvmple.image import resolve
from kvmple.results import CampaignMeta, RunRecord, Store
from kvmple.results.stats import enough_runs
from kvmple.vm import gc, registry
from kvmple.vm.lifecycle import boot_guests
from kvmple.vm.spec import VMSpec, domain_name
from kvmple.workloads import get_workload

log = logging.getLogger("kvmple.campaign")

# Per planned run and invocation: a failed attempt is stored, then retried once. A resume
# starts the count afresh (whoever resumes has usually fixed something), while the stored
# "@failN" keys keep numbering across invocations so no attempt overwrites another.
MAX_ATTEMPTS = 2
MAX_BLOCK_BOOTS = 3  # guests that die mid-block are rebooted at most this often


def stored_failures(stored: Sequence[RunRecord]) -> dict[str, int]:
    """Failed attempts already stored, per planned run key ("<key>@failN" records)."""
    failures: dict[str, int] = {}
    for record in stored:
        if record.status == "failed":
            base = record.run_key.split("@", 1)[0]
            failures[base] = failures.get(base, 0) + 1
    return failures


class _PhaseClock:
    """Wall time per phase of one run (stored with its evidence; bench/campaign.py sums them to
    show where the overhead is)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - start
            self.seconds[name] = round(self.seconds.get(name, 0.0) + spent, 3)


def execute(
    store: Store,
    *,
    meta: CampaignMeta,
    playbook: Playbook,
    plan: Plan,
    host: HostFacts,
    outcome: CampaignOutcome,
) -> None:
    stored = store.runs(meta.id)
    done = {r.run_key for r in stored if r.status == "ok"}
    failures = stored_failures(stored)
    outcome.resumed_from = len(done)
    values: dict[str, list[float]] = {}
    for record in stored:
        if record.status == "ok" and meta.primary_metric in record.figures:
            values.setdefault(_cell_key(record.cell), []).append(
                record.figures[meta.primary_metric]
            )

    _reap_crashed_guests(meta.id)

    images = {role: resolve(guest.image) for role, guest in playbook.guests.items()}
    remaining = sum(1 for r in plan.runs if r.key not in done)
    if remaining == 0:
        return
    with ui.progress() as bar:
        task = bar.add_task(playbook.name, total=len(plan.runs), status="", completed=len(done))
        context = _Context(
            store, meta, playbook, host, images, outcome, done, failures, values, bar, task
        )
        for index, block in enumerate(plan.blocks):
            if all(r.key in done for r in block.runs):
                continue
            _run_block(context, index, block)


def _reap_crashed_guests(campaign_id: str) -> None:
    """Guests of this campaign left by a killed kvmple (SIGKILL, host crash) are reaped before
    resuming, so the same domain names can be booted again. Live owners are left alone."""
    prefix = domain_name(campaign_id, "")
    report = gc.GcReport()
    for record in registry.all_records():
        if record.domain.startswith(prefix) and not record.owner_alive:
            gc.reap(record, report)
    if report.removed_domains:
        ui.note(f"reaped guests of the interrupted run: {', '.join(report.removed_domains)}")
        log.info("reaped leftovers: %s", report.removed_domains)


def _cell_key(cell: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in cell.items() if k != "overcommit")


@dataclass
class _Context:
    store: Store
    meta: CampaignMeta
    playbook: Playbook
    host: HostFacts
    images: dict[str, Any]
    outcome: CampaignOutcome
    done: set[str]
    failures: dict[str, int]  # stored failed attempts per run key, all invocations
    values: dict[str, list[float]]
    bar: Any
    task: Any
    tries: dict[str, int] = field(default_factory=dict)  # this invocation


def _specs(ctx: _Context, block: Block) -> list[Any]:
    per_vm = vmknobs.qemu_args(_settings(block))
    specs = []
    for role, guest in ctx.playbook.guests.items():
        emulator = guest.emulator_pin or tuple(sorted(guest.host_cpus))
        specs.append(
            VMSpec(
                role=role,
                image=ctx.images[role],
                vcpus=guest.vcpus,
                memory_mib=guest.memory_mib,
                vcpu_pins=guest.pin,
                emulator_pins=emulator,
                accelerator="kvm" if ctx.host.accelerator == "kvm" else "tcg",
                extra_kernel_args=tuple(guest.kernel_args.split()),
                campaign_id=ctx.meta.id,
                qemu_args=per_vm,
            )
        )
    return specs


def _settings(block: Block) -> list[tuple[str, str]]:
    """The block's knob settings this host provides (unavailable ones are only recorded)."""
    return [(knob, value) for knob, value in block.knobs if value != UNAVAILABLE]


@contextlib.contextmanager
def _knobs(ctx: _Context, block: Block) -> Iterator[dict[str, Any]]:
    """Apply the block's host knob settings; yield the values read back."""
    read_back: dict[str, Any] = {}
    settings = []
    for knob, value in block.knobs:
        if value == UNAVAILABLE:
            reason = ctx.meta.notes.get("unavailable", {}).get(knob, "unavailable")
            read_back[knob] = {"unavailable": reason}
        else:
            settings.append((knob, value))
            read_back[knob] = None  # keeps the block's knob order in the provenance
    with knobs.applied(settings, real_seam(), announce=_announce) as applied:
        read_back.update({name: setting.to_json() for name, setting in applied.items()})
        yield read_back


def _announce(knob: knobs.Knob, setting: str) -> None:
    note = f" ({knob.change_note})" if knob.change_note else ""
    ui.note(f"host: {knob.title} {setting}{note}")


def _wait_for_quiet(ctx: _Context, cpus: frozenset[int], own_pids: Sequence[int]) -> dict[str, Any]:
    policy = ctx.playbook.quiet
    deadline = time.monotonic() + policy.wait_max
    while True:
        reading = quiet.measure(cpus, own_pids, window=1.0)
        if reading.foreign_cpus <= policy.max_foreign_load:
            return {"foreign_cpus": reading.foreign_cpus, "quiet": True}
        if policy.action == "warn" or time.monotonic() >= deadline:
            ui.warn(f"host not quiet: {reading.describe()} (limit {policy.max_foreign_load})")
            log.warning("host not quiet: %s", reading.describe())
            return {"foreign_cpus": reading.foreign_cpus, "quiet": False}
        ctx.bar.update(ctx.task, status=f"waiting for quiet: {reading.describe()}")
        time.sleep(2)


def _run_block(ctx: _Context, index: int, block: Block) -> None:
    """Run a block's missing runs; guests that fail to boot or die mid-block are rebooted
    (at most MAX_BLOCK_BOOTS boots), the runs already stored are never repeated."""
    boots = 0
    last_error = ""
    while any(r.key not in ctx.done for r in block.runs):
        boots += 1
        if boots > MAX_BLOCK_BOOTS:
            raise CampaignError(
                f"block {index + 1} ({block.knob_key}): guests failed {MAX_BLOCK_BOOTS} times, "
                f"last: {last_error}",
                hint=f"see the campaign log {ctx.outcome.log_path}",
            )
        try:
            _boot_and_run(ctx, index, block)
        except GuestError as exc:
            # The failed attempt (if a run was going) is stored; reboot and carry on.
            last_error = exc.message
            ui.warn(f"{exc.message}; rebooting the guests of this block")
            log.warning("guest failure, rebooting block: %s", exc.message)


def _boot_and_run(ctx: _Context, index: int, block: Block) -> None:
    playbook = ctx.playbook
    shared = playbook.guests[playbook.measured_role].host_cpus
    keep_smt = any(g.keep_smt_siblings for g in playbook.guests.values())
    with contextlib.ExitStack() as stack:
        knobs = stack.enter_context(_knobs(ctx, block))
        _wait_for_quiet(ctx, shared, ())
        ctx.bar.update(ctx.task, description=f"{block.knob_key}: booting guests")
        log.info("block %d (%s): booting guests", index + 1, block.knob_key)
        ctx.bar.console.print(f"block {index + 1} ({block.knob_key}): booting guests")
        boot_start = time.monotonic()
        guests = stack.enter_context(
            boot_guests(
                _specs(ctx, block),
                ready_timeout=playbook.timeouts.boot,
                keep_smt_siblings=keep_smt,
                readiness=readiness_for(
                    playbook.workloads, prepare_timeout=playbook.timeouts.prepare
                ),
            )
        )
        ctx.outcome.boots += 1
        by_role = {g.spec.role: g for g in guests}
        per_vm = vmknobs.check_guests(_settings(block), [g.name for g in guests])
        knobs.update({name: setting.to_json() for name, setting in per_vm.items()})
        booted = time.monotonic()
        workloads = _prepare(ctx, by_role)
        ctx.outcome.boot_seconds += time.monotonic() - boot_start
        log.info(
            "block %d: guests ready in %.1fs (boot %.1fs: %s; workloads prepared in %.1fs)",
            index + 1,
            time.monotonic() - boot_start,
            booted - boot_start,
            ", ".join(
                f"{role} SSH at {g.timings.get('ssh_ready_s', 0):.1f}s"
                for role, g in by_role.items()
            ),
            time.monotonic() - booted,
        )
        block_facts = {
            "knobs": knobs,
            "affinity": {
                role: {str(k): list(v) for k, v in g.affinity().items()}
                for role, g in by_role.items()
            },
            "threads": {role: g.readback.get("vcpu_threads") for role, g in by_role.items()},
            # restored from which booted snapshot, or booted cold (kvmple.vm.snapshot)
            "boot": {role: g.readback.get("boot") for role, g in by_role.items()},
        }
        # Failed attempts go to the back of the queue and are retried with the same guests
        # (at most MAX_ATTEMPTS per run: _one_run raises past that).
        queue = [(pos, r) for pos, r in enumerate(block.runs) if r.key not in ctx.done]
        while queue:
            position, run = queue.pop(0)
            if _precise_enough(ctx, run):
                ctx.done.add(run.key)
                ctx.outcome.skipped_adaptive += 1
                ctx.bar.advance(ctx.task)
                continue
            if not _one_run(
                ctx,
                block_index=index,
                position=position,
                run=run,
                guests=by_role,
                workloads=workloads,
                block_facts=block_facts,
                shared=shared,
            ):
                queue.append((position, run))


def _prepare(ctx: _Context, guests: dict[str, Any]) -> dict[str, Any]:
    """The workloads by role. Their ``prepare`` (guest programs shipped, broker answering)
    already ran inside boot_guests as each guest's readiness (kvmple.campaign.readiness),
    before a booted snapshot was saved or after one was restored: not run a second time."""
    del guests  # ready already
    return {role: get_workload(spec.name) for role, spec in ctx.playbook.workloads.items()}


def _precise_enough(ctx: _Context, run: PlannedRun) -> bool:
    adaptive = ctx.playbook.adaptive
    if adaptive is None:
        return False

    values = ctx.values.get(_cell_key(run.cell.as_dict()), [])
    return enough_runs(
        values, adaptive.ci_halfwidth_pct, adaptive.min_runs, ctx.playbook.repetitions
    )


def _guest_facts(ctx: _Context) -> dict[str, Any]:
    return {
        role: {
            "image": g.image,
            "vcpus": g.vcpus,
            "memory_mib": g.memory_mib,
            "pin": [list(p) for p in g.pin],
            "emulator_pin": list(g.emulator_pin or sorted(g.host_cpus)),
            "kernel_args": g.kernel_args,
            "accelerator": ctx.host.accelerator,
        }
        for role, g in ctx.playbook.guests.items()
    }


def _one_run(
    ctx: _Context,
    *,
    block_index: int,
    position: int,
    run: PlannedRun,
    guests: dict[str, Any],
    workloads: dict[str, Any],
    block_facts: dict[str, Any],
    shared: frozenset[int],
) -> bool:
    """Run once and store the record; True when it succeeded."""
    playbook = ctx.playbook
    measured_role = playbook.measured_role
    cell = {**run.cell.as_dict(), "overcommit": run.overcommit}
    label = " ".join(f"{k}={v}" for k, v in cell.items())
    attempt = ctx.failures.get(run.key, 0) + 1
    ctx.bar.update(ctx.task, description=label)
    provenance: dict[str, Any] = {
        "host": {
            k: ctx.host.facts.get(k)
            for k in ("hostname", "cpu_model", "accelerator", "doctor_verdict", "kvm_module")
        },
        "kernel": {k: ctx.host.facts.get(k) for k in ("kernel_release", "cmdline")},
        "knobs": block_facts["knobs"],
        "guest": _guest_facts(ctx),
        "image": {
            role: {
                "name": img.name,
                "key": img.key,
                "kernel_release": img.manifest.get("kernel_release"),
            }
            for role, img in ctx.images.items()
        },
        "affinity": block_facts["affinity"],
        "vcpu_threads": block_facts["threads"],
        "boot": block_facts.get("boot"),
        "kvmple_version": __version__,
        "playbook_hash": ctx.meta.playbook_hash,
        "seed": playbook.order.seed,
        "block": block_index,
        "position": position,
        "attempt": attempt,
        "params": {role: run.params_for(role) for role in playbook.workloads},
        "overcommit": run.overcommit,
    }
    started = time.time()
    measured = workloads[measured_role]
    executor = guests[measured_role].executor
    frame = _RunFrame(ctx, run, guests, workloads, shared)
    status, reason, figures, raw, window = "failed", "", {}, "", 0.0
    guest_error: GuestError | None = None
    try:
        with frame:
            with frame.clock.phase("measure_call"):
                measurement = measured.measure(
                    executor,
                    run.params_for(measured_role),
                    timeout=playbook.timeouts.run,
                    before_window=frame.start_loads,
                    after_window=frame.stop_loads,
                )
            if not frame.loads_started:  # it ignored before_window: measured without load
                raise CampaignError(
                    f"workload {playbook.workloads[measured_role].name} never started the "
                    "load (it must call before_window)",
                    hint="a bug in that workload's measure(); no figures were stored",
                )
        frame.check_loads()
        figures = {k: float(v) for k, v in measurement.figures.items()}
        raw = measurement.raw_output
        window = measurement.window_s
        if measurement.cpu is not None:
            frame.evidence["guest_cpu"] = measurement.to_json()["cpu"]
        status = "ok"
    except WorkloadError as exc:
        reason = exc.message
        try:
            measured.between_runs(executor, run.params_for(measured_role))
        except WorkloadError as cleanup:
            reason += f" (and the clean-up after it failed: {cleanup.message})"
    except GuestError as exc:
        reason = exc.message
        guest_error = exc
    ended = time.time()
    key = run.key if status == "ok" else f"{run.key}@fail{attempt}"
    record = RunRecord(
        campaign_id=ctx.meta.id,
        run_key=key,
        cell=cell,
        run_index=run.repetition,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        figures=figures,
        raw=raw,
        started=started,
        ended=ended,
        measure_seconds=window,
        provenance=provenance,
        evidence=frame.evidence,
    )
    ctx.store.add_run(record)
    if status == "ok":
        ctx.done.add(run.key)
        ctx.outcome.ok += 1
        ctx.outcome.measure_seconds += window
        primary = ctx.meta.primary_metric
        ctx.values.setdefault(_cell_key(cell), []).append(figures.get(primary, 0.0))
        shown = f"{figures.get(primary, 0):,.0f} {ctx.meta.metric_unit}".strip()
        log.info("run %s ok: %s", run.key, shown)
        ctx.bar.console.print(
            f"  run {ctx.outcome.ok + ctx.outcome.resumed_from:>3}/"
            f"{ctx.outcome.planned}  {label}  rep {run.repetition}: {shown}"
        )
        ctx.bar.update(ctx.task, advance=1, status=f"last: {shown}")
        return True
    else:
        ctx.failures[run.key] = attempt
        ctx.tries[run.key] = tries = ctx.tries.get(run.key, 0) + 1
        ctx.outcome.failed += 1
        log.warning("run %s failed (attempt %d): %s", run.key, attempt, reason)
        ui.warn(f"run {label} failed: {reason}")
        if guest_error is not None:
            raise guest_error
        if tries >= MAX_ATTEMPTS:
            raise WorkloadError(
                f"run {label} failed {tries} times, last: {reason}",
                hint=f"see the campaign log {ctx.outcome.log_path}",
            )
        return False


class _RunFrame:
    """What surrounds one run's timed window: the quietness check (taken while the measured
    workload's clients start: their CPU time is QEMU's and ours, not foreign), the load
    workloads (readied at once, started just before the window, stopped as soon as it ends
    and judged on how they ran over it), host evidence over the window, and the wall time of
    each phase. ``with frame:`` stops whatever is still running however the run ends."""

    def __init__(
        self,
        ctx: _Context,
        run: PlannedRun,
        guests: dict[str, Any],
        workloads: dict[str, Any],
        shared: frozenset[int],
    ) -> None:
        self.run = run
        self.shared = shared
        self.exits = evidence.exit_evidence_source(ctx.host.accelerator, ctx.host.kvm_module)
        self.clock = _PhaseClock()
        self.evidence: dict[str, Any] = {"phases_s": self.clock.seconds}
        self.loads_started = False
        self.loads_stopped = False
        self.load_problems: list[str] = []
        self._held = contextlib.ExitStack()  # every load stopped on leaving the frame
        self._timed = contextlib.ExitStack()  # ends evidence collection
        self._collected: list[dict[str, Any]] = []  # filled in when _timed closes
        own = [*_qemu_pids(guests), os.getpid()]
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvmple-quiet")
        self._quiet = pool.submit(quiet.measure, shared, own, window=0.5)
        pool.shutdown(wait=False)  # the reading finishes on its own in 0.5 s
        # The loads' programs start now, in parallel with the measured workload's start-up,
        # so before_window only has to give them the word.
        limit = ctx.playbook.timeouts.run + 60
        self._loads: dict[str, tuple[Any, Any]] = {}
        try:
            for role, workload in workloads.items():
                if role != ctx.playbook.measured_role:
                    held = workload.held(guests[role].executor, run.params_for(role), timeout=limit)
                    self._loads[role] = (workload, self._held.enter_context(held))
        except BaseException:
            self._held.close()
            raise

    def start_loads(self) -> None:
        """before_window: note the quietness, start the loads, start evidence."""
        with self.clock.phase("quiet_wait"):
            quietness = self._quiet.result()
        self.evidence["quiet_before"] = {"foreign_cpus": quietness.foreign_cpus}
        for _, held in self._loads.values():
            with self.clock.phase("load_start"):
                held.start()
        self._collected.append(self._timed.enter_context(evidence.collect(self.shared, self.exits)))
        self.loads_started = True

    def stop_loads(self) -> None:
        """after_window: evidence ends, the loads stop and report how they ran (judged by
        check_loads); the measured workload winds down meanwhile."""
        self._timed.close()
        if self.loads_started and not self.loads_stopped:
            self.loads_stopped = True
            for role, (workload, held) in self._loads.items():
                with self.clock.phase("load_stop"):
                    status = held.stop()
                self.evidence.setdefault("load", {})[role] = status.to_json()
                found = workload.problems(status, self.run.params_for(role))
                self.load_problems += [f"{role}: {problem}" for problem in found]
        for found in self._collected:
            self.evidence.update(found)
        self._collected.clear()

    def check_loads(self) -> None:
        """A run whose load did not run as asked over its window has no valid figures."""
        if self.load_problems:
            raise WorkloadError(
                f"the load did not run as asked during the window: {'; '.join(self.load_problems)}",
                hint="something else competed for those vCPUs (other guest services; under "
                "TCG a busy host), or min_busy is too strict for this machine",
            )

    def __enter__(self) -> _RunFrame:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.stop_loads()
        except (WorkloadError, GuestError) as error:
            if exc_info[0] is None:
                raise
            log.warning("stopping the loads after a failed run: %s", error.message)
        finally:
            self._held.__exit__(*exc_info)


def _qemu_pids(guests: dict[str, Any]) -> list[int]:
    pids = []
    for guest in guests.values():
        pid = guest.readback.get("qemu_pid")
        if isinstance(pid, int):
            pids.append(pid)
    return pids
