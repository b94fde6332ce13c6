"""How a campaign counts failed attempts: stored under unique "@failN" keys across
invocations, but limited per invocation, so a resume gets a fresh retry; and that the clean-up
between runs happens after a failed run only (a successful one leaves nothing behind).

Drives execute._one_run with a real SQLite store and a workload that always fails; guests
and images are plain records (booting real ones is the real tier's job).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kvmple.campaign import execute
from kvmple.campaign.frame import BlockWorkloads
from kvmple.campaign.kvmevidence import TCG_NO_KVM
from kvmple.campaign.model import CampaignOutcome, HostFacts
from kvmple.campaign.plan import build_plan
from kvmple.campaign.playbook import load_playbook
from kvmple.campaign.provenance import BlockFacts
from kvmple.errors import CampaignError, WorkloadError
from kvmple.events import Recorder
from kvmple.executor import LocalExecutor
from kvmple.image.artifact import ImageManifest
from kvmple.results import CampaignMeta, RunRecord, open_store
from kvmple.results.evidence import Unavailable
from kvmple.workloads import get_workload

SMOKE = Path(__file__).resolve().parents[2] / "playbooks" / "smoke.yaml"


class AlwaysFails:
    def __init__(self) -> None:
        self.cleanups = 0

    def between_runs(self, executor: Any, params: Any) -> None:
        self.cleanups += 1

    def measure(
        self, executor: Any, params: Any, timeout: float, before_window: Any, after_window: Any
    ) -> Any:
        raise WorkloadError("perftest failed on guest amqp: publisher 0: broker went quiet")


class FailsOnce(AlwaysFails):
    def measure(
        self, executor: Any, params: Any, timeout: float, before_window: Any, after_window: Any
    ) -> Any:
        if self.cleanups == 0:
            super().measure(executor, params, timeout, before_window, after_window)
        before_window()
        after_window()
        return SimpleNamespace(
            figures={"transfers_per_sec": 1000.0}, raw_output="", window_s=2.0, cpu=None
        )


def _context(tmp_path: Path, store: Any, meta: CampaignMeta, sink: Recorder) -> Any:
    loaded = load_playbook(SMOKE)
    host = HostFacts(
        accelerator="tcg",
        verdict="tcg",
        reason="test",
        kvm_module=None,
        unavailable_knobs={"ple": "test"},
    )
    failures = execute.stored_failures(store.runs(meta.id))
    image = SimpleNamespace(
        name="debian12-amqp", key="k", manifest=ImageManifest(name="debian12-amqp", key="k")
    )
    return execute._Context(
        store,
        meta,
        loaded.playbook,
        host,
        {role: image for role in loaded.playbook.guests},
        CampaignOutcome(campaign_id=meta.id, planned=1, log_path=tmp_path / "campaign.log"),
        set(),
        failures,
        {},
        sink,
    )


class RecordingLoad:
    """A load workload that records when it is readied, started and stopped."""

    def __init__(self, events: list[str], problems: tuple[str, ...] = ()) -> None:
        self.events = events
        self.found = list(problems)

    def held(self, executor: Any, params: Any, *, timeout: float) -> Any:
        self.events.append("load readied")
        events = self.events

        class Held:
            def start(self) -> None:
                events.append("load start")

            def stop(self) -> Any:
                events.append("load stop")
                return SimpleNamespace(to_json=lambda: {"loops": []})

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc_info: Any) -> None:
                events.append("load released")

        return Held()

    def problems(self, status: Any, params: Any) -> list[str]:
        return self.found


class FramedMeasure:
    """A measured workload that starts up, opens its window, winds down (or fails inside)."""

    def __init__(self, events: list[str], fail_in_window: bool = False) -> None:
        self.events = events
        self.fail_in_window = fail_in_window

    def between_runs(self, executor: Any, params: Any) -> None:
        self.events.append("clean-up")

    def measure(
        self, executor: Any, params: Any, timeout: float, before_window: Any, after_window: Any
    ) -> Any:
        self.events.append("clients up")
        before_window()
        self.events.append("window")
        if self.fail_in_window:
            raise WorkloadError("subscriber 0: connection reset")
        after_window()
        self.events.append("wind down")
        return SimpleNamespace(
            figures={"transfers_per_sec": 1000.0}, raw_output="", window_s=2.0, cpu=None
        )


def _attempt(ctx: Any, run: Any, workload: Any = None, load: Any = None) -> bool:
    guests = {
        role: SimpleNamespace(executor=LocalExecutor(), readback={}) for role in ctx.playbook.guests
    }
    workloads = BlockWorkloads(
        measured=workload or AlwaysFails(), loads={} if load is None else {"spin": load}
    )
    facts = BlockFacts(knobs={}, affinity={}, threads={})
    return bool(
        execute._one_run(
            ctx,
            block_index=0,
            position=0,
            run=run,
            guests=guests,
            workloads=workloads,
            block_facts=facts,
            shared=frozenset({0}),
        )
    )


def _meta() -> CampaignMeta:
    return CampaignMeta(
        id="smoke-attempts",
        name="smoke",
        playbook_hash="0" * 64,
        playbook_text="",
        created=time.time(),
        status="running",
        kvmple_version="test",
        primary_metric="transfers_per_sec",
    )


def test_a_resume_retries_a_run_that_failed_before_and_keys_stay_unique(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'results.db'}")
    playbook = load_playbook(SMOKE).playbook
    run = build_plan(playbook, {"ple": "test host"}).runs[0]
    meta = _meta()
    store.create_campaign(meta)
    # A previous invocation stored one failed attempt, then was interrupted.
    store.add_run(
        RunRecord(
            campaign_id=meta.id,
            run_key=f"{run.key}@fail1",
            cell={},
            run_index=0,
            status="failed",
            reason="earlier",
            started=1.0,
            ended=2.0,
        )
    )
    shown = Recorder()
    ctx = _context(tmp_path, store, meta, shown)
    assert _attempt(ctx, run) is False  # first try of this invocation: queued again
    with pytest.raises(WorkloadError, match=r"failed 2 times, last: .*broker went quiet"):
        _attempt(ctx, run)
    # each failed attempt is reported to the person watching, as a warning
    warnings = [m for m in shown.messages() if m.startswith("warning: run ")]
    assert len(warnings) == 2 and all("broker went quiet" in m for m in warnings)
    keys = sorted(r.run_key for r in store.runs(meta.id))
    assert keys == [f"{run.key}@fail1", f"{run.key}@fail2", f"{run.key}@fail3"]
    stored = {r.run_key: r for r in store.runs(meta.id)}
    assert stored[f"{run.key}@fail3"].provenance["attempt"] == 3
    assert "broker went quiet" in stored[f"{run.key}@fail3"].reason


def test_clean_up_follows_a_failed_run_only_and_phases_are_recorded(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'results.db'}")
    playbook = load_playbook(SMOKE).playbook
    run = build_plan(playbook, {"ple": "test host"}).runs[0]
    meta = _meta()
    store.create_campaign(meta)
    workload = FailsOnce()
    ctx = _context(tmp_path, store, meta, Recorder())
    assert _attempt(ctx, run, workload) is False
    assert workload.cleanups == 1  # the failed run's leftovers are removed
    assert _attempt(ctx, run, workload) is True
    assert workload.cleanups == 1  # a successful run leaves nothing: no extra round trip
    ok = next(r for r in store.runs(meta.id) if r.status == "ok")
    assert set(ok.evidence["phases_s"]) == {"quiet_wait", "kvm_evidence", "measure_call"}
    # the run's KVM evidence is stored typed, each part unavailable under TCG with the reason
    assert ok.kvm is not None and isinstance(ok.kvm.exits, Unavailable)
    assert "TCG" in ok.kvm.exits.unavailable
    assert set(ok.kvm.directed_yield) == set(playbook.guests)
    assert all(
        isinstance(y, Unavailable) and y.unavailable == TCG_NO_KVM
        for y in ok.kvm.directed_yield.values()
    )
    assert "kvm_exits" not in ok.evidence  # stored once, in the typed record
    failed = next(r for r in store.runs(meta.id) if r.status == "failed")
    assert failed.kvm is None  # it failed before its window opened: nothing was collected
    assert "window_seconds" in ok.evidence  # host evidence covers the timed window
    # the quietness reading (0.5 s, taken while the clients start) is in before the window
    assert ok.evidence["quiet_before"]["foreign_cpus"] >= 0
    assert ok.evidence["phases_s"]["quiet_wait"] >= 0.3


@pytest.mark.parametrize("fails", [False, True])
def test_the_load_runs_only_around_the_timed_window(tmp_path: Path, fails: bool) -> None:
    """Clients start before the load; the load stops as soon as the window ends, or when the
    run fails inside it (and the clean-up then runs without the load)."""
    store = open_store(f"sqlite:///{tmp_path / 'results.db'}")
    run = build_plan(load_playbook(SMOKE).playbook, {"ple": "test host"}).runs[0]
    meta = _meta()
    store.create_campaign(meta)
    events: list[str] = []
    ctx = _context(tmp_path, store, meta, Recorder())
    ok = _attempt(ctx, run, FramedMeasure(events, fail_in_window=fails), RecordingLoad(events))
    assert ok is not fails
    # the load's program is readied before the clients start, so the go is one word
    framed = ["load readied", "clients up", "load start", "window"]
    if fails:
        assert events == [*framed, "load stop", "load released", "clean-up"]
    else:
        assert events == [*framed, "load stop", "wind down", "load released"]
        record = next(r for r in store.runs(meta.id) if r.status == "ok")
        assert {"load_start", "load_stop"} <= set(record.evidence["phases_s"])
        assert record.evidence["load"]["spin"] == {"loops": []}
        # the stored evidence keeps the keys (and their order) it had as a free dict
        assert list(record.evidence) == [
            "phases_s",
            "quiet_before",
            "load",
            "window_seconds",
            "host_cpu",
        ]


def test_a_load_that_did_not_run_as_asked_fails_the_run(tmp_path: Path) -> None:
    """The loads are judged on how they ran over the window: figures measured under a load
    that was starved or died are not stored as a result."""
    store = open_store(f"sqlite:///{tmp_path / 'results.db'}")
    run = build_plan(load_playbook(SMOKE).playbook, {"ple": "test host"}).runs[0]
    meta = _meta()
    store.create_campaign(meta)
    events: list[str] = []
    load = RecordingLoad(events, ("loop 10 (vCPU 0) got 41% of its vCPU's time (< 60%)",))
    ctx = _context(tmp_path, store, meta, Recorder())
    assert _attempt(ctx, run, FramedMeasure(events), load) is False
    (failed,) = store.runs(meta.id)
    assert failed.status == "failed" and not failed.figures
    assert "did not run as asked during the window: spin: loop 10 (vCPU 0) got 41%" in (
        failed.reason
    )
    assert failed.evidence["load"]["spin"] == {"loops": []}  # what it did is kept
    assert events[-2:] == ["load released", "clean-up"]


def test_workloads_of_the_wrong_kind_for_their_guest_are_refused() -> None:
    """A load workload cannot be measured, a measured one cannot be held as a load: the
    block names the guests instead of failing inside a run."""
    spin, hackbench = get_workload("spin"), get_workload("hackbench")
    block = BlockWorkloads.of({"amqp": hackbench, "spin": spin}, "amqp")
    assert block.measured is hackbench and dict(block.loads) == {"spin": spin}
    with pytest.raises(CampaignError, match=r"wrong kind for their guest: amqp: spin, spin: hack"):
        BlockWorkloads.of({"amqp": spin, "spin": hackbench}, "amqp")
