"""Workloads: what runs inside the guests, behind one small interface (see base.py).

Registry: ``get_workload(name)`` returns a fresh workload object. Adding a workload = one
module here + one entry in ``WORKLOADS`` (+ its guest program, if any, in kvmple/guest/ and
the image recipe's ``guest_programs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import BaseModel, ValidationError

from kvmple.errors import ConfigError
from kvmple.workloads.amqp import AmqpPerftest, PerftestParams
from kvmple.workloads.base import (
    CpuSplit,
    HeldLoad,
    LoadStatus,
    LoadWorkload,
    LoopStatus,
    MeasuredWorkload,
    Measurement,
    Metric,
    parse_params,
)
from kvmple.workloads.dbench import Dbench, DbenchParams
from kvmple.workloads.hackbench import Hackbench, HackbenchParams
from kvmple.workloads.programs import GUEST_BIN, PROGRAMS, ensure_programs
from kvmple.workloads.spin import SpinLoops, SpinParams
from kvmple.workloads.sysbench import SysbenchMutex, SysbenchThreads

Workload = MeasuredWorkload | LoadWorkload

# name -> the workload's class (called with options such as ``bin_dir=``)
WORKLOADS: dict[str, Callable[..., Workload]] = {
    AmqpPerftest.name: AmqpPerftest,
    Dbench.name: Dbench,
    Hackbench.name: Hackbench,
    SpinLoops.name: SpinLoops,
    SysbenchMutex.name: SysbenchMutex,
    SysbenchThreads.name: SysbenchThreads,
}


def check_params(name: str, params: Mapping[str, object]) -> None:
    """ValueError naming the first key of ``params`` that workload ``name`` refuses (an
    unknown parameter or a bad value), with the parameters it has; for playbook validation
    (a KeyError for an unknown workload: check the name first)."""
    model: type[BaseModel] = WORKLOADS[name].params_model  # type: ignore[attr-defined]
    try:
        model.model_validate(dict(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(params)"
        problem = (
            f"not a parameter of {name}" if first["type"] == "extra_forbidden" else first["msg"]
        )
        raise ValueError(
            f"{key}: {problem} (parameters of {name}: {', '.join(model.model_fields)})"
        ) from None


def get_workload(name: str, **options: str) -> Workload:
    """A new workload object by registry name (options: e.g. ``bin_dir=``); ConfigError for
    an unknown name. Narrow it with ``isinstance`` (the protocols are runtime-checkable) or
    ask for the kind needed with :func:`measured_workload`."""
    try:
        factory = WORKLOADS[name]
    except KeyError:
        raise ConfigError(
            f"unknown workload {name!r}", hint=f"known workloads: {', '.join(sorted(WORKLOADS))}"
        ) from None
    return factory(**options)


def measured_workload(name: str, **options: str) -> MeasuredWorkload:
    """A new measured workload by registry name; ConfigError for an unknown name or a load
    workload (e.g. spin), which has no figures to measure."""
    workload = get_workload(name, **options)
    if not isinstance(workload, MeasuredWorkload):
        raise ConfigError(
            f"workload {name!r} is a load workload: it has no figures to measure",
            hint="`kvmple workload list` shows each workload's kind",
        )
    return workload


__all__ = [
    "GUEST_BIN",
    "PROGRAMS",
    "WORKLOADS",
    "AmqpPerftest",
    "CpuSplit",
    "Dbench",
    "DbenchParams",
    "Hackbench",
    "HackbenchParams",
    "HeldLoad",
    "LoadStatus",
    "LoadWorkload",
    "LoopStatus",
    "MeasuredWorkload",
    "Measurement",
    "Metric",
    "PerftestParams",
    "SpinLoops",
    "SpinParams",
    "SysbenchMutex",
    "SysbenchThreads",
    "Workload",
    "check_params",
    "ensure_programs",
    "get_workload",
    "measured_workload",
    "parse_params",
]
