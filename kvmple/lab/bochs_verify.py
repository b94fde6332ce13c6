"""``kvmple lab up intel`` and ``kvmple lab verify-ple NAME``: the Bochs VT-x lab host and
the PLE verification it runs.

The lab host has no network: it runs the verification (kvmple.commands.lab_inner) by itself
once kvm_intel is loaded, prints one ``KVMPLE-LAB-RESULT <json>`` line on its serial
console and powers off. ``up`` returns when kvm_intel is loaded; ``verify-ple`` waits for
the result, judges it (judge(), pure) and ends the lab host. Figures from Bochs are those
of an emulated CPU, never hardware figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from kvmple import events, paths
from kvmple.config.jsonfile import first_error
from kvmple.errors import GuestError
from kvmple.events import Sink
from kvmple.fsutil import write_atomic
from kvmple.lab import bochs_media, bochs_run
from kvmple.lab.protocol import RESULT_MARK
from kvmple.lab.result import LabCounts, LabResult, LabSetting, LabStep

EMULATED = "emulated VT-x with PLE (Bochs): counts and times are not hardware figures"
STAGE_FILE = "stages.json"
UP_TIMEOUT = 1800.0  # start -> kvm_intel loaded: 242 s with an XZ kernel, idle host; x5 loaded
VERIFY_TIMEOUT = 1800.0  # kvm_intel loaded -> result (a loaded host slows Bochs ~5x)


@dataclass(frozen=True)
class LabUp:
    """A Bochs lab host that reached ``kvm_intel`` loaded; ``stages_s``: seconds from Bochs
    start to each console marker; ``prepare_s``: kernel/initramfs/ISO (cached after once)."""

    host: bochs_run.BochsHost
    prepare_s: float
    stages_s: dict[str, float]
    iso: str


def up_intel(
    name: str, cpus: int = 1, timeout: float = UP_TIMEOUT, *, sink: Sink = events.discard
) -> LabUp:
    """Build (or take from the cache) the media, start Bochs, wait for kvm_intel loaded;
    a kernel build on the way reports to ``sink``.

    Raises BuildError/HostError for the media, GuestError (console tail) when the lab host
    stops or stalls; on any failure Bochs is killed and its files removed.
    """
    begin = time.monotonic()
    kernel = bochs_media.lab_kernel(sink=sink)
    initramfs = bochs_media.build_initramfs(kernel)
    iso = bochs_media.build_iso(kernel, initramfs)
    prepare = round(time.monotonic() - begin, 1)
    host = bochs_run.start(name, iso, cpus)
    stages: dict[str, float] = {}
    try:
        deadline = time.monotonic() + timeout
        for stage in ("Linux version", "userspace", "kvm_intel-loaded"):
            marker = stage if stage == "Linux version" else f"{bochs_media.STAGE_MARK} {stage}"
            left = max(1.0, deadline - time.monotonic())
            stages[stage] = bochs_run.wait_for(host, marker, left)
        write_atomic(Path(host.run_dir) / STAGE_FILE, json.dumps(stages) + "\n")
        host = bochs_run.detach(host)
    except BaseException:
        bochs_run.stop(host)
        raise
    return LabUp(host, prepare, stages, str(iso))


def parse_result(console: str) -> LabResult | None:
    """The in-lab result document from the console text (None while it has not come).
    GuestError when the line is not JSON or not of LabResult's shape (the key named)."""
    for line in console.splitlines():
        start = line.find(RESULT_MARK)
        if start < 0:
            continue
        try:
            doc = json.loads(line[start + len(RESULT_MARK) :].strip())
        except ValueError as exc:
            raise GuestError(
                f"the lab host's result line is not JSON ({exc})",
                hint="kernel messages may have interleaved with it; see the console log",
            ) from exc
        if not isinstance(doc, dict):
            return None
        try:
            return LabResult.model_validate(doc)
        except ValidationError as exc:
            key, msg = first_error(exc)
            raise GuestError(
                f"the lab host's result line: {key}: {msg}",
                hint="the lab host runs another kvmple than this one? see the console log",
            ) from exc
    return None


@dataclass
class Judgement:
    problems: list[str] = field(default_factory=list)

    def require(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


def judge(doc: LabResult) -> list[str]:
    """What contradicts the expected PLE behaviour (empty: verified). Pure.

    Expected: 'ple' in the vmx flags; every kvmple command exits 0; with PLE on (module
    defaults, and after ``ple on``) ple_gap > 0, PAUSE exits > 0 and window updates > 0;
    after ``ple off`` ple_gap reads back 0 and exactly 0 PAUSE exits and 0 updates are
    counted; after ``restore`` the values read back equal the initial ones.
    """
    j = Judgement()
    if doc.error is not None:
        return [f"the in-lab verification failed: {doc.error}"]
    j.require(bool(doc.vmx_ple_flag), "the emulated CPU's vmx flags lack 'ple'")
    for step in doc.steps:
        j.require(step.exit_code == 0, f"'{step.command}' exited {step.exit_code}")
    settings = doc.settings
    j.require(len(settings) == 3, f"{len(settings)} settings measured, expected 3")
    for setting in settings:
        name = setting.setting if setting.setting is not None else "?"
        if setting.error is not None:
            j.problems.append(f"{name}: {setting.error}")
            continue
        gap = (setting.ple or {}).get("ple_gap")
        counts = setting.counts or LabCounts()
        pause, updates = counts.pause_exits, counts.ple_window_updates
        if name == "off":
            j.require(gap == 0, f"off: ple_gap read back {gap}, expected 0")
            j.require(pause == 0, f"off: {pause} PAUSE exits counted, expected exactly 0")
            j.require(updates == 0, f"off: {updates} PLE window updates, expected 0")
        else:
            j.require(bool(gap), f"{name}: ple_gap read back {gap}, expected > 0")
            j.require(bool(pause), f"{name}: {pause} PAUSE exits counted, expected > 0")
            j.require(bool(updates), f"{name}: {updates} PLE window updates, expected > 0")
    j.require(
        doc.final == doc.initial,
        f"after restore: {doc.final} != initial {doc.initial}",
    )
    return j.problems


class YieldStats(BaseModel):
    """The two-vCPU run's record in the report (see _yield_stats)."""

    model_config = ConfigDict(frozen=True)

    setting: str | None
    error: str | None
    directed_yield_attempted: JsonValue
    directed_yield_successful: JsonValue
    note: str
    preemption_reported: JsonValue
    counts: LabCounts | None
    kvm_stats: dict[str, JsonValue]


class VerifyReport(BaseModel):
    """What ``lab verify-ple`` reports (``--json`` prints ``to_json()``): ``verified`` and
    ``problems`` (judge()), the in-lab steps and settings as the lab host sent them,
    ``stages_s`` (seconds from Bochs start to each stage), the kept ``console_log``."""

    model_config = ConfigDict(frozen=True)

    name: str
    verified: bool
    problems: list[str]
    emulated: str
    cpus: int
    stages_s: dict[str, float]
    kernel: str | None
    initial: dict[str, int] | None
    final: dict[str, int] | None
    steps: list[LabStep]
    settings: list[LabSetting]
    directed_yield: YieldStats | None
    console_log: str

    def to_json(self) -> dict[str, JsonValue]:
        """The report as a JSON object; the lab host's parts with exactly the keys it sent."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


def verify_ple(name: str, timeout: float = VERIFY_TIMEOUT) -> VerifyReport:
    """Wait for lab host ``name``'s verification, judge it, end the lab host.

    Returns the report. GuestError when the result never comes (console tail in the
    message) or is malformed. The lab host is stopped either way.
    """
    host = bochs_run.load(name)
    try:
        # "done" follows the result line, so the line is complete when it shows
        verdict_s = bochs_run.wait_for(host, f"{bochs_media.STAGE_MARK} done", timeout)
        doc = parse_result(bochs_run.console(host)) or LabResult(error="no result line")
        log = _keep_console(host)
        stages = _stages(host)
    finally:
        bochs_run.stop(host)
    stages["verdict"] = verdict_s
    problems = judge(doc)
    return VerifyReport(
        name=name,
        verified=not problems,
        problems=problems,
        emulated=EMULATED,
        cpus=host.cpus,
        stages_s=stages,
        kernel=doc.kernel,
        initial=doc.initial,
        final=doc.final,
        steps=doc.steps,
        settings=doc.settings,
        directed_yield=_yield_stats(doc.yield_),
        console_log=str(log),
    )


def _yield_stats(entry: LabSetting | None) -> YieldStats | None:
    """The two-vCPU run (spinner + preempted holder): KVM's statistics and the counts;
    recorded, not judged. directed_yield_attempted/successful count only the paravirtual
    sched_yield hypercall (arch/x86/kvm/x86.c kvm_sched_yield), not PLE's kvm_vcpu_on_spin ->
    yield_to, so they read 0 here; preemption_reported shows the holder being preempted."""
    if entry is None or not entry.model_fields_set | set(entry.model_extra or {}):
        return None  # absent or an empty object: nothing was recorded
    stats = entry.spin.kvm_stats if entry.spin is not None else {}
    return YieldStats(
        setting=entry.setting,
        error=entry.error,
        directed_yield_attempted=stats.get("directed_yield_attempted"),
        directed_yield_successful=stats.get("directed_yield_successful"),
        note="directed_yield_* count the PV sched_yield hypercall (x86.c kvm_sched_yield), "
        "not PLE's kvm_vcpu_on_spin -> yield_to, which has no KVM statistic in 6.1",
        preemption_reported=stats.get("preemption_reported"),
        counts=entry.counts,
        kvm_stats=stats,
    )


def _stages(host: bochs_run.BochsHost) -> dict[str, float]:
    try:
        data = json.loads((Path(host.run_dir) / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()}


def _keep_console(host: bochs_run.BochsHost) -> Path:
    directory = paths.data_dir() / "lab"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{host.name}-{time.strftime('%Y%m%d-%H%M%S')}.console.log"
    write_atomic(path, bochs_run.console(host))
    return path
