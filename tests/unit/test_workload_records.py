"""The guest programs' JSON as the host reads it: kvmple-spin's status and the CPU split."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from pydantic import ValidationError

from kvmple.errors import WorkloadError
from kvmple.results.records import RunRecord
from kvmple.workloads.base import CpuSplit, LoopStatus, Measurement
from kvmple.workloads.spin import load_status

# kvmple-spin status as the guest program prints it
_STATUS = {
    "loops": [
        {
            "pid": 812,
            "cpu": 1,
            "running": True,
            "busy": 0.97,
            "affinity": [1],
            "last_cpu": 1,
            "share": 0.99,
        },
        {"pid": 813, "cpu": 2, "running": False, "busy": 0.0, "affinity": [2], "last_cpu": None},
    ],
    "sample_s": 1.0,
}


def test_spin_status_reads_back_as_load_status() -> None:
    status = load_status("spin", json.loads(json.dumps(_STATUS)))
    assert status.workload == "spin" and status.sample_s == 1.0
    assert status.loops == (
        LoopStatus(pid=812, cpu=1, running=True, busy=0.97, affinity=(1,), last_cpu=1, share=0.99),
        LoopStatus(pid=813, cpu=2, running=False, busy=0.0, affinity=(2,), last_cpu=None),
    )  # share absent (older kvmple-spin): 0.0


def test_spin_status_of_another_shape_names_the_key() -> None:
    loop = {**_STATUS["loops"][0], "affinity": "1"}
    with pytest.raises(WorkloadError, match=r"from the guest: loops\.0\.affinity"):
        load_status("spin", {**_STATUS, "loops": [loop]})
    with pytest.raises(WorkloadError, match="sample_s"):
        load_status("spin", {"loops": []})


def test_cpu_split_reads_its_stored_form() -> None:
    split = CpuSplit(window_s=10.0, ncpu=2, broker=0.5, clients=0.25, other=0.1, idle=0.15)
    measurement = Measurement(
        workload="w", params={}, figures={"x": 1.0}, primary="x", window_s=10.0, raw_output="",
        cpu=split,
    )  # fmt: skip
    stored = json.loads(json.dumps(measurement.to_json()))
    assert stored["cpu"]["broker_vcpus"] == 1.0  # derived keys are written, and ignored back
    assert CpuSplit.from_json(stored["cpu"]) == split
    with pytest.raises(ValidationError, match="ncpu"):
        CpuSplit.from_json({k: v for k, v in stored["cpu"].items() if k != "ncpu"})


def test_json_forms_are_json_values_a_run_record_stores_as_before() -> None:
    """The load status and measurement JSON hold lists, not asdict's tuples: RunRecord's
    JsonValue fields refuse tuples; the stored text is what json.dumps wrote of the tuples."""
    status = load_status("spin", json.loads(json.dumps(_STATUS)))
    measurement = Measurement(
        workload="w", params={"n": 2}, figures={"x": 1.0}, primary="x", window_s=1.0,
        raw_output="", iterations=({"x": 1.0},), notes=("a note",),
    )  # fmt: skip
    load, measured = status.to_json(), measurement.to_json()
    assert isinstance(load["loops"], list) and isinstance(measured["notes"], list)
    assert load["loops"][0]["affinity"] == [1]  # type: ignore[index,call-overload]
    record = RunRecord(
        campaign_id="c", run_key="k", cell={}, run_index=0, status="ok", started=0.0,
        ended=1.0, evidence={"load": {"spin": load}, "measurement": measured},
    )  # fmt: skip
    stored = json.loads(record.model_dump_json())["evidence"]
    assert stored == json.loads(json.dumps({"load": {"spin": asdict(status)}, "measurement": {
        **asdict(measurement), "value": 1.0}}))  # fmt: skip
