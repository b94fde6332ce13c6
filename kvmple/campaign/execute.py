"""Execute a campaign's plan: per block, set the host knobs, boot the guests once, prepare
the workloads, then run and store every run (failed attempts retried at the back of the
queue, guests rebooted when one dies).

Every resource (PLE setting, guests, load workloads) is a context manager on one ExitStack,
entered knobs first so guests are gone before the knobs are restored.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import JsonValue

from kvmple import events
from kvmple.campaign import quiet
from kvmple.campaign.frame import Attempt, BlockWorkloads, measure_run
from kvmple.campaign.model import CampaignOutcome, HostFacts
from kvmple.campaign.plan import UNAVAILABLE, Block, Plan, PlannedRun
from kvmple.campaign.playbook import Playbook
from kvmple.campaign.provenance import BlockFacts, run_provenance
from kvmple.campaign.readiness import readiness_for
from kvmple.errors import CampaignError, GuestError, WorkloadError
from kvmple.events import Note, Progress, Sink, Warn
from kvmple.host import knobs, pvknobs, vmknobs
from kvmple.host.seam import real_seam
from kvmple.image import Image, resolve
from kvmple.results import CampaignMeta, RunRecord, Store
from kvmple.results.provenance import KnobReadBack
from kvmple.results.records import CellValue
from kvmple.results.stats import enough_runs
from kvmple.vm import gc, registry
from kvmple.vm.lifecycle import Guest, boot_guests
from kvmple.vm.spec import VMSpec, domain_name
from kvmple.workloads import get_workload
from kvmple.workloads.base import json_ready

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


def execute(
    store: Store,
    *,
    meta: CampaignMeta,
    playbook: Playbook,
    plan: Plan,
    host: HostFacts,
    outcome: CampaignOutcome,
    sink: Sink = events.discard,
) -> None:
    """Run the plan's missing runs, block by block, reporting to ``sink`` (one progress
    display over all planned runs; a note per block and per stored run, a warning per
    failed run). Raises CampaignError, GuestError, WorkloadError as the blocks do."""
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

    _reap_crashed_guests(meta.id, sink)

    images = {role: resolve(guest.image, sink=sink) for role, guest in playbook.guests.items()}
    remaining = sum(1 for r in plan.runs if r.key not in done)
    if remaining == 0:
        return
    with events.progress(sink, playbook.name, total=len(plan.runs), done=len(done)):
        context = _Context(
            store, meta, playbook, host, images, outcome, done, failures, values, sink
        )
        for index, block in enumerate(plan.blocks):
            if all(r.key in done for r in block.runs):
                continue
            _run_block(context, index, block)


def _reap_crashed_guests(campaign_id: str, sink: Sink) -> None:
    """Guests of this campaign left by a killed kvmple (SIGKILL, host crash) are reaped before
    resuming, so the same domain names can be booted again. Live owners are left alone."""
    prefix = domain_name(campaign_id, "")
    report = gc.GcReport()
    for record in registry.all_records():
        if record.domain.startswith(prefix) and not record.owner_alive:
            gc.reap(record, report)
    if report.removed_domains:
        sink(Note(f"reaped guests of the interrupted run: {', '.join(report.removed_domains)}"))
        log.info("reaped leftovers: %s", report.removed_domains)


def _cell_key(cell: Mapping[str, CellValue]) -> str:
    return ",".join(f"{k}={v}" for k, v in cell.items() if k != "overcommit")


@dataclass
class _Context:
    store: Store
    meta: CampaignMeta
    playbook: Playbook
    host: HostFacts
    images: dict[str, Image]
    outcome: CampaignOutcome
    done: set[str]
    failures: dict[str, int]  # stored failed attempts per run key, all invocations
    values: dict[str, list[float]]
    sink: Sink
    tries: dict[str, int] = field(default_factory=dict)  # this invocation


def _specs(ctx: _Context, block: Block) -> list[VMSpec]:
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
def _knobs(ctx: _Context, block: Block) -> Iterator[dict[str, KnobReadBack]]:
    """Apply the block's host knob settings; yield the values read back."""
    read_back: dict[str, KnobReadBack] = {}
    settings = []
    for knob, value in block.knobs:
        if value == UNAVAILABLE:
            reason = ctx.meta.unavailable().get(knob, "unavailable")
            read_back[knob] = {"unavailable": reason}
        else:
            settings.append((knob, value))
            read_back[knob] = None  # keeps the block's knob order in the provenance
    with knobs.applied(settings, real_seam(), announce=_announcer(ctx.sink)) as applied:
        read_back.update({name: setting.to_json() for name, setting in applied.items()})
        yield read_back


def _announcer(sink: Sink) -> Callable[[knobs.Knob, str], None]:
    def announce(knob: knobs.Knob, setting: str) -> None:
        note = f" ({knob.change_note})" if knob.change_note else ""
        sink(Note(f"host: {knob.title} {setting}{note}"))

    return announce


def _wait_for_quiet(
    ctx: _Context, cpus: frozenset[int], own_pids: Sequence[int]
) -> quiet.Quietness:
    """The first reading within the playbook's quiet policy, or the last one (warned) when
    the policy only warns or its wait ran out."""
    policy = ctx.playbook.quiet
    deadline = time.monotonic() + policy.wait_max
    while True:
        reading = quiet.measure(cpus, own_pids, window=1.0)
        if reading.foreign_cpus <= policy.max_foreign_load:
            return reading
        if policy.action == "warn" or time.monotonic() >= deadline:
            ctx.sink(
                Warn(f"host not quiet: {reading.describe()} (limit {policy.max_foreign_load})")
            )
            log.warning("host not quiet: %s", reading.describe())
            return reading
        ctx.sink(Progress(status=f"waiting for quiet: {reading.describe()}"))
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
            ctx.sink(Warn(f"{exc.message}; rebooting the guests of this block"))
            log.warning("guest failure, rebooting block: %s", exc.message)


def _boot_and_run(ctx: _Context, index: int, block: Block) -> None:
    playbook = ctx.playbook
    shared = playbook.guests[playbook.measured_role].host_cpus
    keep_smt = any(g.keep_smt_siblings for g in playbook.guests.values())
    with contextlib.ExitStack() as stack:
        knobs = stack.enter_context(_knobs(ctx, block))
        _wait_for_quiet(ctx, shared, ())
        ctx.sink(Progress(label=f"{block.knob_key}: booting guests"))
        log.info("block %d (%s): booting guests", index + 1, block.knob_key)
        ctx.sink(Note(f"block {index + 1} ({block.knob_key}): booting guests"))
        boot_start = time.monotonic()
        guests = stack.enter_context(
            boot_guests(
                _specs(ctx, block),
                ready_timeout=playbook.timeouts.boot,
                keep_smt_siblings=keep_smt,
                sink=ctx.sink,
                readiness=readiness_for(
                    playbook.workloads, prepare_timeout=playbook.timeouts.prepare
                ),
            )
        )
        ctx.outcome.boots += 1
        by_role = {g.spec.role: g for g in guests}
        knobs.update(_per_vm_read_back(block, guests))
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
        block_facts = BlockFacts(
            knobs=knobs,
            affinity={
                role: {str(k): list(v) for k, v in g.affinity().items()}
                for role, g in by_role.items()
            },
            threads={role: _vcpu_threads(g) for role, g in by_role.items()},
            # restored from which booted snapshot, or booted cold (kvmple.vm.snapshot)
            boot={role: _boot_origin(g) for role, g in by_role.items()},
        )
        # Failed attempts go to the back of the queue and are retried with the same guests
        # (at most MAX_ATTEMPTS per run: _one_run raises past that).
        queue = [(pos, r) for pos, r in enumerate(block.runs) if r.key not in ctx.done]
        while queue:
            position, run = queue.pop(0)
            if _precise_enough(ctx, run):
                ctx.done.add(run.key)
                ctx.outcome.skipped_adaptive += 1
                ctx.sink(Progress(advance=1))
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


def _boot_origin(guest: Guest) -> JsonValue:
    """How the guest started (readback["boot"]: restored from which snapshot, or cold)."""
    boot = guest.readback.get("boot")
    return json_ready(boot) if isinstance(boot, dict) else None


def _vcpu_threads(guest: Guest) -> JsonValue:
    """vCPU -> thread id as read back at boot (None: not read back)."""
    threads = guest.readback.get("vcpu_threads")
    if not isinstance(threads, dict):
        return None
    return {str(vcpu): tid for vcpu, tid in threads.items() if isinstance(tid, int)}


def _per_vm_read_back(block: Block, guests: Sequence[Guest]) -> dict[str, KnobReadBack]:
    """Per-VM knob settings read back from each guest's QEMU command line and, for PV
    features, from inside each guest (HostError when a guest differs from its label)."""
    per_vm = vmknobs.check_guests(_settings(block), [g.name for g in guests])
    in_guest = pvknobs.check_in_guests(_settings(block), {g.name: g.executor for g in guests})
    return {
        name: {**setting.to_json(), **(in_guest[name].to_json() if name in in_guest else {})}
        for name, setting in per_vm.items()
    }


def _prepare(ctx: _Context, guests: dict[str, Guest]) -> BlockWorkloads:
    """Each guest's workload, checked for its role (CampaignError). Their ``prepare`` (guest
    programs shipped, broker answering) already ran inside boot_guests as each guest's
    readiness (kvmple.campaign.readiness), before a booted snapshot was saved or after one
    was restored: not run a second time."""
    del guests  # ready already
    found = {role: get_workload(spec.name) for role, spec in ctx.playbook.workloads.items()}
    return BlockWorkloads.of(found, ctx.playbook.measured_role)


def _precise_enough(ctx: _Context, run: PlannedRun) -> bool:
    adaptive = ctx.playbook.adaptive
    if adaptive is None:
        return False

    values = ctx.values.get(_cell_key(run.cell.as_dict()), [])
    return enough_runs(
        values, adaptive.ci_halfwidth_pct, adaptive.min_runs, ctx.playbook.repetitions
    )


def _one_run(
    ctx: _Context,
    *,
    block_index: int,
    position: int,
    run: PlannedRun,
    guests: dict[str, Guest],
    workloads: BlockWorkloads,
    block_facts: BlockFacts,
    shared: frozenset[int],
) -> bool:
    """Run once and store the record; True when it succeeded, False when it failed and may
    be retried (GuestError when the guests died, WorkloadError past MAX_ATTEMPTS)."""
    cell = {**run.cell.as_dict(), "overcommit": run.overcommit}
    label = " ".join(f"{k}={v}" for k, v in cell.items())
    attempt = ctx.failures.get(run.key, 0) + 1
    ctx.sink(Progress(label=label))
    provenance = run_provenance(
        ctx.host,
        ctx.playbook,
        ctx.meta,
        ctx.images,
        run,
        block_facts=block_facts,
        block_index=block_index,
        position=position,
        attempt=attempt,
    )
    started = time.time()
    outcome = measure_run(
        ctx.host, ctx.playbook, run, guests=guests, workloads=workloads, shared=shared
    )
    ended = time.time()
    ctx.store.add_run(
        RunRecord(
            campaign_id=ctx.meta.id,
            run_key=run.key if outcome.status == "ok" else f"{run.key}@fail{attempt}",
            cell=cell,
            run_index=run.repetition,
            status=outcome.status,  # type: ignore[arg-type]
            reason=outcome.reason,
            figures=outcome.figures,
            raw=outcome.raw,
            started=started,
            ended=ended,
            measure_seconds=outcome.window,
            provenance=provenance.to_record(),
            evidence=outcome.evidence,
            kvm=outcome.kvm,
        )
    )
    if outcome.status == "ok":
        _count_ok(ctx, run, cell, label, outcome)
        return True
    return _count_failure(ctx, run, label, attempt, outcome)


def _count_ok(
    ctx: _Context, run: PlannedRun, cell: Mapping[str, CellValue], label: str, outcome: Attempt
) -> None:
    ctx.done.add(run.key)
    ctx.outcome.ok += 1
    ctx.outcome.measure_seconds += outcome.window
    primary = ctx.meta.primary_metric
    ctx.values.setdefault(_cell_key(cell), []).append(outcome.figures.get(primary, 0.0))
    shown = f"{outcome.figures.get(primary, 0):,.0f} {ctx.meta.metric_unit}".strip()
    log.info("run %s ok: %s", run.key, shown)
    ctx.sink(
        Note(
            f"  run {ctx.outcome.ok + ctx.outcome.resumed_from:>3}/"
            f"{ctx.outcome.planned}  {label}  rep {run.repetition}: {shown}"
        )
    )
    ctx.sink(Progress(advance=1, status=f"last: {shown}"))


def _count_failure(
    ctx: _Context, run: PlannedRun, label: str, attempt: int, outcome: Attempt
) -> bool:
    """The retry policy: False (queue it again) until MAX_ATTEMPTS in this invocation, then
    WorkloadError; a dead guest's GuestError propagates (the block reboots its guests)."""
    ctx.failures[run.key] = attempt
    ctx.tries[run.key] = tries = ctx.tries.get(run.key, 0) + 1
    ctx.outcome.failed += 1
    log.warning("run %s failed (attempt %d): %s", run.key, attempt, outcome.reason)
    ctx.sink(Warn(f"run {label} failed: {outcome.reason}"))
    if outcome.guest_error is not None:
        raise outcome.guest_error
    if tries >= MAX_ATTEMPTS:
        raise WorkloadError(
            f"run {label} failed {tries} times, last: {outcome.reason}",
            hint=f"see the campaign log {ctx.outcome.log_path}",
        )
    return False
