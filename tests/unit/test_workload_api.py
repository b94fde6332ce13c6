"""The workload interface: registry, parameter validation, program shipping, spin checks,
and turning a perftest's exit into a Measurement or a WorkloadError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmple.errors import ConfigError, WorkloadError
from kvmple.executor import LocalExecutor
from kvmple.run import Result
from kvmple.workloads import (
    WORKLOADS,
    AmqpPerftest,
    Hackbench,
    LoadStatus,
    LoadWorkload,
    LoopStatus,
    MeasuredWorkload,
    PerftestParams,
    SpinLoops,
    ensure_programs,
    get_workload,
    parse_params,
)
from kvmple.workloads.amqp import measurement_from_result, wait_for_broker
from kvmple.workloads.programs import PROGRAMS, program_argv
from kvmple.workloads.spin import SpinParams, check_loops


def test_registry_names_and_kinds() -> None:
    assert set(WORKLOADS) == {
        "amqp-perftest",
        "dbench",
        "hackbench",
        "spin",
        "sysbench-mutex",
        "sysbench-threads",
    }
    assert isinstance(get_workload("amqp-perftest"), MeasuredWorkload)
    assert isinstance(get_workload("hackbench"), MeasuredWorkload)
    assert isinstance(get_workload("spin"), LoadWorkload)
    for name in WORKLOADS:
        workload = get_workload(name, bin_dir="/tmp/x")
        assert workload.name == name
        if workload.kind == "measure":
            assert workload.primary in {m.name for m in workload.metrics}


def test_unknown_workload() -> None:
    with pytest.raises(ConfigError, match="unknown workload 'ebizzy'") as info:
        get_workload("ebizzy")
    assert "amqp-perftest" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        (PerftestParams, {"size": 0}, "size: Input should be greater than or equal to 8"),
        (PerftestParams, {"count": -5}, "count: Input should be greater than or equal to 1"),
        (PerftestParams, {"npubs": "two"}, "npubs: Input should be a valid integer"),
        (PerftestParams, {"mode": "topic"}, "mode: Input should be 'shared' or 'fanout'"),
        (PerftestParams, {"sizes": 8}, "sizes: Extra inputs are not permitted"),
        (SpinParams, {"count": -1}, "count: Input should be greater than or equal to 0"),
    ],
)
def test_bad_params_name_the_key(model: type, params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_params(model, params, where="playbook workloads.amqp.params")
    assert str(info.value).startswith("playbook workloads.amqp.params: ")


def test_params_pass_through_and_argv() -> None:
    p = parse_params(PerftestParams, {"npubs": 2, "size": 8}, where="x")
    assert parse_params(PerftestParams, p, where="x") is p
    assert "--npubs=2" in p.argv() and "--size=8" in p.argv() and "--mode=shared" in p.argv()
    assert SpinParams().count == 0  # zero loops is a valid setting


def test_ensure_programs_copies_only_what_differs(tmp_path: Path) -> None:
    executor = LocalExecutor()
    bin_dir = str(tmp_path / "opt" / "kvmple" / "bin")
    assert sorted(ensure_programs(executor, bin_dir=bin_dir)) == sorted(PROGRAMS)
    for name in PROGRAMS:
        assert (Path(bin_dir) / name).stat().st_mode & 0o777 == 0o755
    assert ensure_programs(executor, bin_dir=bin_dir) == []
    (Path(bin_dir) / "kvmple-spin").write_text("stale\n")
    assert ensure_programs(executor, bin_dir=bin_dir) == ["kvmple-spin"]
    assert program_argv("kvmple-spin", "stop", bin_dir=bin_dir) == [
        "/usr/bin/python3",
        f"{bin_dir}/kvmple-spin",
        "stop",
    ]


def test_unknown_program() -> None:
    with pytest.raises(WorkloadError, match="no guest program"):
        ensure_programs(LocalExecutor(), ["kvmple-nope"], bin_dir="/tmp")


def loop(
    pid: int,
    cpu: int,
    busy: float = 0.99,
    affinity: tuple[int, ...] | None = None,
    running: bool = True,
) -> LoopStatus:
    return LoopStatus(
        pid, cpu, running, busy, affinity if affinity is not None else (cpu,), cpu, share=busy
    )


def test_check_loops() -> None:
    ok = LoadStatus("spin", (loop(10, 0), loop(11, 1)), 1.0)
    assert check_loops(ok, expected=2, min_busy=0.85) == []
    assert check_loops(LoadStatus("spin", (), 1.0), expected=0, min_busy=0.85) == []
    bad = LoadStatus(
        "spin",
        (loop(10, 0, busy=0.4), loop(11, 1, affinity=(0, 1)), loop(12, 2, running=False)),
        1.0,
    )
    problems = check_loops(bad, expected=2, min_busy=0.85)
    assert problems == [
        "3 loops recorded, 2 expected",
        "loop 10 (vCPU 0) got 40% of its vCPU's time (< 85%; 40% of wall time)",
        "loop 11 (vCPU 1) is pinned to [0, 1], not [1]",
        "loop 12 (vCPU 2) is not running",
    ]


def test_spin_cpus_must_match_count() -> None:
    with pytest.raises(WorkloadError, match="cpus lists 1 vCPUs for 2 loops"):
        SpinLoops(bin_dir="/nonexistent").start(LocalExecutor(), {"count": 2, "cpus": [0]})


def _result(code: int, stdout: str = "", stderr: str = "") -> Result:
    return Result(("kvmple-perftest",), code, stdout, stderr, 1.0, "guest amqp")


MACHINE = (
    'KVMPLE-PERFTEST {"engine": "kvmple", "format": 1, "iterations": [{"cpu": {"broker": 0.6, '
    '"clients": 0.3, "idle": 0.05, "ncpu": 2, "other": 0.05, "window_s": 2.0}, '
    '"mbytes_per_sec": 0.05, "pub_rates": [1500.0], "pubs_per_sec": 1500.0, "seconds": 2.0, '
    '"sub_rates": [1400.0], "subs_per_sec": 1400.0, "transfers": 6000, '
    '"transfers_per_sec": 3000.0}, {"cpu": {"broker": 0.5, "clients": 0.4, "idle": 0.05, '
    '"ncpu": 2, "other": 0.05, "window_s": 2.0}, "mbytes_per_sec": 0.04, "pub_rates": '
    '[1300.0], "pubs_per_sec": 1300.0, "seconds": 2.0, "sub_rates": [1200.0], '
    '"subs_per_sec": 1200.0, "transfers": 5000, "transfers_per_sec": 2500.0}], '
    '"params": {"size": 16}, "version": "0.1.0"}\n'
)


def test_measurement_from_a_good_run() -> None:
    p = PerftestParams(iterations=2, size=16)
    m = measurement_from_result("amqp-perftest", p, _result(0, MACHINE), "guest amqp")
    assert m.value == m.figures["transfers_per_sec"] == 2750.0
    assert m.figures["pubs_per_sec"] == 1400.0
    assert m.window_s == 4.0
    assert len(m.iterations) == 2
    assert m.cpu is not None
    assert m.cpu.broker == 0.55 and m.cpu.clients == 0.35
    assert m.cpu.broker_vcpus == pytest.approx(1.1)
    data = json.loads(json.dumps(m.to_json()))
    assert data["value"] == 2750.0 and data["cpu"]["broker_vcpus"] == 1.1


@pytest.mark.parametrize(
    ("code", "stderr", "message"),
    [
        (
            2,
            "usage: ...\nkvmple-perftest: error: argument --size: must be at least 8 bytes",
            "rejected its options: kvmple-perftest: error: argument --size",
        ),
        (
            3,
            "kvmple-perftest: error: timed out after 30s waiting for subscribers",
            "timed out on guest amqp: .*timed out after 30s",
        ),
        (
            1,
            "kvmple-perftest: error: broker 127.0.0.1:5672 refused the AMQP connection",
            "failed on guest amqp: .*refused",
        ),
        (1, "kvmple-perftest: error: message check failed: 12 lost, 0 duplicated", "12 lost"),
        (137, "", "failed on guest amqp: exit 137, no message"),
    ],
)
def test_failed_runs_raise_with_the_reason(code: int, stderr: str, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        measurement_from_result(
            "amqp-perftest", PerftestParams(), _result(code, "", stderr), "guest amqp"
        )


def test_a_zero_exit_without_figures_is_still_a_failure() -> None:
    with pytest.raises(WorkloadError, match="not a perftest log kvmple recognises; it is empty"):
        measurement_from_result("amqp-perftest", PerftestParams(), _result(0, "\n"), "g")


def test_hackbench_is_measured_and_lower_is_better() -> None:
    (metric,) = Hackbench.metrics
    assert metric.name == "time" and not metric.higher_is_better
    assert AmqpPerftest.metrics[0].higher_is_better


class StatusReplies:
    """An executor answering 'kvmple-spin status' with the given shares, one reply per call."""

    name = "guest spin"

    def __init__(self, *shares: float, affinity: list[int] | None = None) -> None:
        self.shares = list(shares)
        self.affinity = affinity
        self.samples: list[str] = []

    def run(self, argv: list[str], **kwargs: object) -> Result:
        sample = next(a for a in argv if a.startswith("--sample="))
        self.samples.append(sample.split("=", 1)[1])
        share = self.shares.pop(0)
        loop = {
            "pid": 10,
            "cpu": 0,
            "running": True,
            "busy": share,
            "share": share,
            "affinity": self.affinity or [0],
            "last_cpu": 0,
        }
        reply = json.dumps({"sample_s": 1.0, "loops": [loop]})
        return Result(tuple(argv), 0, reply + "\n", "", 0.1, self.name)


def test_spin_verify_judges_a_short_share_on_a_second_longer_sample() -> None:
    spin = SpinLoops(bin_dir="/opt/kvmple/bin")
    params = {"count": 1, "sample_s": 1.0}
    dip = StatusReplies(0.53, 0.97)
    assert spin.verify(dip, params).loops[0].share == 0.97  # type: ignore[arg-type]
    assert dip.samples == ["1", "2"]
    starved = StatusReplies(0.53, 0.41)
    with pytest.raises(WorkloadError, match=r"got 41% of its vCPU's time"):
        spin.verify(starved, params)  # type: ignore[arg-type]
    # a loop pinned wrongly is not a dip: no second sample
    wrong = StatusReplies(0.99, affinity=[0, 1])
    with pytest.raises(WorkloadError, match=r"pinned to \[0, 1\]"):
        spin.verify(wrong, params)  # type: ignore[arg-type]
    assert wrong.samples == ["1"]


class BrokerStarting:
    """A guest whose broker is still starting: probes fail until systemctl start returns."""

    name = "guest amqp"

    def __init__(self, *, unit: bool = True) -> None:
        self.unit = unit
        self.calls: list[str] = []
        self.ready = False

    def run(self, argv: list[str], **kwargs: object) -> Result:
        command = " ".join(argv[:2]) if argv[0] == "systemctl" else "probe"
        self.calls.append(command)
        if command == "systemctl cat":
            code = 0 if self.unit else 1
        elif command == "systemctl start":
            self.ready, code = True, 0
        else:
            code = 0 if self.ready else 1
        return Result(tuple(argv), code, "", "" if code == 0 else "refused", 0.1, self.name)


def test_a_starting_broker_is_waited_for_by_systemd_not_by_polling() -> None:
    guest = BrokerStarting()
    waited = wait_for_broker(guest, ["probe"], timeout=30)  # type: ignore[arg-type]
    assert guest.calls == ["probe", "systemctl cat", "systemctl start", "probe"]
    assert waited < 1.0  # no 2 s poll sleep once systemd says it is ready


def test_a_broker_that_never_answers_is_named_with_the_reason() -> None:
    guest = BrokerStarting(unit=False)
    with pytest.raises(WorkloadError, match=r"did not accept connections within 0.1s: .*refused"):
        wait_for_broker(guest, ["probe"], timeout=0.1)  # type: ignore[arg-type]
