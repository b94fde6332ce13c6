"""What surrounds one run's timed window (:class:`RunFrame`) and the wall time of its phases
(:class:`PhaseClock`): the quietness check, the load workloads held around the window, host
evidence over the window."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import JsonValue

from kvmple.campaign import evidence, kvmevidence, quiet
from kvmple.campaign.model import HostFacts
from kvmple.campaign.plan import PlannedRun
from kvmple.campaign.playbook import Playbook
from kvmple.errors import CampaignError, GuestError, WorkloadError
from kvmple.results.evidence import ConfounderFinding, RunEvidence, Unavailable
from kvmple.vm.lifecycle import Guest
from kvmple.workloads import HeldLoad, LoadStatus, LoadWorkload, MeasuredWorkload, Workload
from kvmple.workloads.base import ExcInfo

log = logging.getLogger("kvmple.campaign")


class PhaseClock:
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


@dataclass(frozen=True)
class BlockWorkloads:
    """A block's workloads, prepared in their guests: the measured one (in the playbook's
    measured role) and the load workloads by guest role, in playbook order."""

    measured: MeasuredWorkload
    loads: Mapping[str, LoadWorkload] = field(default_factory=dict)

    @classmethod
    def of(cls, workloads: Mapping[str, Workload], measured_role: str) -> BlockWorkloads:
        """Narrow the registry's workloads by role; CampaignError when the measured role's
        workload measures nothing or another role's is not a load (no figures were stored)."""
        measured = workloads[measured_role]
        others = {role: w for role, w in workloads.items() if role != measured_role}
        loads = {role: w for role, w in others.items() if isinstance(w, LoadWorkload)}
        wrong = [f"{role}: {w.name}" for role, w in others.items() if role not in loads]
        if not isinstance(measured, MeasuredWorkload) or wrong:
            if not isinstance(measured, MeasuredWorkload):
                wrong.insert(0, f"{measured_role}: {measured.name}")
            raise CampaignError(
                f"workloads of the wrong kind for their guest: {', '.join(wrong)}",
                hint="the measured guest runs a measured workload, the others load workloads "
                "(`kvmple workload list` shows each kind)",
            )
        return cls(measured, loads)


class RunFrame:
    """What surrounds one run's timed window: the quietness check (taken while the measured
    workload's clients start: their CPU time is QEMU's and ours, not foreign), the load
    workloads (readied at once, started just before the window, stopped as soon as it ends
    and judged on how they ran over it), host evidence over the window, and the wall time of
    each phase. ``with frame:`` stops whatever is still running however the run ends."""

    def __init__(
        self,
        host: HostFacts,
        playbook: Playbook,
        run: PlannedRun,
        *,
        guests: dict[str, Guest],
        workloads: BlockWorkloads,
        shared: frozenset[int],
    ) -> None:
        self.run = run
        self.shared = shared
        self.exits = evidence.exit_evidence_source(host.accelerator, host.kvm_module)
        self.yields = kvmevidence.YieldReader(host.accelerator, qemu_pid_by_role(guests))
        self.kvm: RunEvidence | None = None  # set when the window closes
        self._confounders: tuple[ConfounderFinding, ...] | Unavailable = Unavailable(
            unavailable="the window never opened"
        )
        self.clock = PhaseClock()
        self.quiet_before: quiet.Quietness | None = None
        self.load_status: dict[str, LoadStatus] = {}  # guest role -> how its load ran
        self.window: evidence.Window | None = None  # host evidence over the timed window
        self.guest_cpu: JsonValue = None  # the measured guest's CPU split (stored if any)
        self.loads_started = False
        self.loads_stopped = False
        self.load_problems: list[str] = []
        self._held = contextlib.ExitStack()  # every load stopped on leaving the frame
        self._timed = contextlib.ExitStack()  # ends evidence collection
        self._collected: list[evidence.Window] = []  # filled in when _timed closes
        own = [*qemu_pids(guests), os.getpid()]
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvmple-quiet")
        self._quiet = pool.submit(quiet.measure, shared, own, window=0.5)
        pool.shutdown(wait=False)  # the reading finishes on its own in 0.5 s
        # The loads' programs start now, in parallel with the measured workload's start-up,
        # so before_window only has to give them the word.
        limit = playbook.timeouts.run + 60
        self._loads: dict[str, tuple[LoadWorkload, HeldLoad]] = {}
        try:
            for role, workload in workloads.loads.items():
                held = workload.held(guests[role].executor, run.params_for(role), timeout=limit)
                self._loads[role] = (workload, self._held.enter_context(held))
        except BaseException:
            self._held.close()
            raise

    def start_loads(self) -> None:
        """before_window: note the quietness, start the loads, start evidence."""
        with self.clock.phase("quiet_wait"):
            self.quiet_before = self._quiet.result()
        with self.clock.phase("kvm_evidence"):
            self._confounders = kvmevidence.find_confounders()
            self.yields.start()
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
                self.load_status[role] = status
                found = workload.problems(status, self.run.params_for(role))
                self.load_problems += [f"{role}: {problem}" for problem in found]
        for window in self._collected:
            exits = "the window never closed" if window.kvm_exits is None else window.kvm_exits
            self.kvm = kvmevidence.run_evidence(exits, self.yields.finish(), self._confounders)
            self.window = window
        self._collected.clear()

    def evidence(self) -> dict[str, JsonValue]:
        """The stored ``RunRecord.evidence``: phases_s (phase -> seconds), quiet_before
        ({"foreign_cpus": CPUs}), load (role -> LoadStatus JSON), window_seconds, host_cpu
        (evidence.cpu_shares) and guest_cpu, each only once it is known (the exit counts
        are stored typed, in ``RunRecord.kvm``)."""
        found: dict[str, JsonValue] = {"phases_s": {**self.clock.seconds}}
        if self.quiet_before is not None:
            found["quiet_before"] = {"foreign_cpus": self.quiet_before.foreign_cpus}
        if self.load_status:
            found["load"] = {role: s.to_json() for role, s in self.load_status.items()}
        if self.window is not None and self.window.seconds is not None:
            found["window_seconds"] = self.window.seconds
            found["host_cpu"] = self.window.host_cpu
        if self.guest_cpu is not None:
            found["guest_cpu"] = self.guest_cpu
        return found

    def check_loads(self) -> None:
        """A run whose load did not run as asked over its window has no valid figures."""
        if self.load_problems:
            raise WorkloadError(
                f"the load did not run as asked during the window: {'; '.join(self.load_problems)}",
                hint="something else competed for those vCPUs (other guest services; under "
                "TCG a busy host), or min_busy is too strict for this machine",
            )

    def __enter__(self) -> RunFrame:
        return self

    def __exit__(self, *exc_info: *ExcInfo) -> None:
        try:
            self.stop_loads()
        except (WorkloadError, GuestError) as error:
            if exc_info[0] is None:
                raise
            log.warning("stopping the loads after a failed run: %s", error.message)
        finally:
            self._held.__exit__(*exc_info)


def qemu_pid_by_role(guests: dict[str, Guest]) -> dict[str, int | None]:
    """Guest role -> its QEMU's pid as read back at boot (None: not read back)."""
    found: dict[str, int | None] = {}
    for role, guest in guests.items():
        pid = guest.readback.get("qemu_pid")
        found[role] = pid if isinstance(pid, int) else None
    return found


def qemu_pids(guests: dict[str, Guest]) -> list[int]:
    return [pid for pid in qemu_pid_by_role(guests).values() if pid is not None]


@dataclass
class Attempt:
    """What one attempt of a run came to (figures only when ``status`` is "ok")."""

    status: str = "failed"
    reason: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    raw: str = ""
    window: float = 0.0
    evidence: dict[str, JsonValue] = field(default_factory=dict)
    kvm: RunEvidence | None = None  # None: the window never opened
    guest_error: GuestError | None = None


def measure_run(
    host: HostFacts,
    playbook: Playbook,
    run: PlannedRun,
    *,
    guests: dict[str, Guest],
    workloads: BlockWorkloads,
    shared: frozenset[int],
) -> Attempt:
    """The measured workload's window inside its frame (loads, evidence); a WorkloadError
    or GuestError becomes a failed attempt (after the workload's clean-up)."""
    measured_role = playbook.measured_role
    measured = workloads.measured
    executor = guests[measured_role].executor
    frame = RunFrame(host, playbook, run, guests=guests, workloads=workloads, shared=shared)
    outcome = Attempt()
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
        outcome.figures = {k: float(v) for k, v in measurement.figures.items()}
        outcome.raw = measurement.raw_output
        outcome.window = measurement.window_s
        if measurement.cpu is not None:
            frame.guest_cpu = measurement.to_json()["cpu"]
        outcome.status = "ok"
    except WorkloadError as exc:
        outcome.reason = exc.message
        try:
            measured.between_runs(executor, run.params_for(measured_role))
        except WorkloadError as cleanup:
            outcome.reason += f" (and the clean-up after it failed: {cleanup.message})"
    except GuestError as exc:
        outcome.reason = exc.message
        outcome.guest_error = exc
    outcome.kvm = frame.kvm  # failed attempts keep theirs too
    outcome.evidence = frame.evidence()
    return outcome
