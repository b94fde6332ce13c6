"""The small interface every workload implements, and the typed figures it returns.

Two kinds of workload exist:

- a *measured* workload (the AMQP perftest, hackbench) runs once per run and returns a
  ``Measurement``: typed figures named by its ``metrics``, the raw output, how long the
  measurement window was and, where it applies, the guest CPU split broker vs clients;
- a *load* workload (the busy loops) is held around the measured one's timed window:
  readied while the measured workload starts up, started just before its window, stopped
  as soon as it ends, and judged on how it ran over that window.

All of them talk to a machine only through ``kvmple.executor.Executor``, so the same code runs
against the host (``LocalExecutor``) and in a guest (``kvmple.remote.SSHExecutor``).
Parameters are frozen pydantic models (``params_model``) so a playbook's ``params:`` mapping
is validated once, with the offending key named, before anything runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

from kvmple.config.jsonfile import first_error
from kvmple.errors import ConfigError
from kvmple.executor import Executor

# what a context manager's __exit__ receives (type, value, traceback; all None without one)
ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]

# A workload's ``params:``: the playbook's mapping (JSON/YAML values), or its validated model.
Params = Mapping[str, JsonValue] | BaseModel


@dataclass(frozen=True)
class Metric:
    """One figure a workload measures."""

    name: str
    unit: str
    higher_is_better: bool
    description: str = ""


@dataclass(frozen=True)
class CpuSplit:
    """Where the measured guest's CPU time went during the measurement window.

    Fractions of all the guest's CPU time in the window (all vCPUs, from /proc in the guest),
    so they sum to ~1: ``broker`` (RabbitMQ's Erlang VM), ``clients`` (the perftest's
    processes), ``other`` (kernel threads, sshd, ...) and ``idle``.
    """

    window_s: float
    ncpu: int
    broker: float
    clients: float
    other: float
    idle: float

    @property
    def broker_vcpus(self) -> float:
        """The broker's share expressed in vCPUs (1.0 = one vCPU fully busy)."""
        return self.broker * self.ncpu

    @property
    def clients_vcpus(self) -> float:
        return self.clients * self.ncpu

    @classmethod
    def from_json(cls, data: object) -> CpuSplit:
        """Validate a guest program's ``cpu`` object (unknown keys, such as the derived
        broker_vcpus, ignored); pydantic's ValidationError names a missing or bad key."""
        return _CPU_SPLIT.validate_python(data)


_CPU_SPLIT: TypeAdapter[CpuSplit] = TypeAdapter(CpuSplit)


@dataclass(frozen=True)
class Measurement:
    """What one measured run produced: never made up; a failed run raises instead."""

    workload: str
    params: dict[str, JsonValue]
    figures: dict[str, float]
    primary: str
    window_s: float
    raw_output: str
    iterations: tuple[dict[str, float], ...] = ()
    cpu: CpuSplit | None = None
    started_at: float = field(default_factory=time.time)
    notes: tuple[str, ...] = ()

    @property
    def value(self) -> float:
        """The primary figure (what campaigns compare)."""
        return self.figures[self.primary]

    def to_json(self) -> dict[str, JsonValue]:
        """The stored run's ``measurement`` object: the fields, ``value`` and the CPU split's
        derived vCPU counts."""
        data = asdict(self)
        data["value"] = self.value
        if self.cpu is not None:
            data["cpu"]["broker_vcpus"] = round(self.cpu.broker_vcpus, 4)
            data["cpu"]["clients_vcpus"] = round(self.cpu.clients_vcpus, 4)
        return json_ready(data)


@dataclass(frozen=True)
class LoopStatus:
    """One busy loop as read back from the guest's /proc."""

    pid: int
    cpu: int
    running: bool
    busy: float  # CPU time / wall time over the sample (low when the host starves the vCPU)
    affinity: tuple[int, ...]
    last_cpu: int | None
    share: float = 0.0  # CPU time / time its vCPU accounted (~1.0: the vCPU is the loop's)


@dataclass(frozen=True)
class LoadStatus:
    """A load workload's state as verified in the guest."""

    workload: str
    loops: tuple[LoopStatus, ...]
    sample_s: float

    def to_json(self) -> dict[str, JsonValue]:
        return json_ready(asdict(self))


def json_ready(data: Mapping[str, object]) -> dict[str, JsonValue]:
    """``asdict``'s output as JSON values: its tuples become lists (the stored records'
    JsonValue fields refuse tuples; json.dumps wrote them as lists anyway). TypeError for a
    value JSON has no form for."""
    return {key: _json_value(value) for key, value in data.items()}


def _json_value(value: object) -> JsonValue:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple | list):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    raise TypeError(f"no JSON form for {type(value).__name__}: {value!r}")


P = TypeVar("P", bound=BaseModel)


def parse_params(model: type[P], params: Params, *, where: str) -> P:
    """Validate a ``params:`` mapping into the workload's model; ConfigError names the key."""
    if isinstance(params, model):
        return params
    data = params.model_dump() if isinstance(params, BaseModel) else dict(params)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        key, msg = first_error(exc, "(params)")
        raise ConfigError(
            f"{where}: {key}: {msg}",
            hint=f"valid parameters: {', '.join(model.model_fields)}",
        ) from None


@runtime_checkable
class MeasuredWorkload(Protocol):
    """A workload that runs once per run and returns figures."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "measure"
    metrics: ClassVar[tuple[Metric, ...]]
    primary: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]

    def prepare(
        self,
        executor: Executor,
        *,
        timeout: float,
        params: Params | None = None,
    ) -> None:
        """Programs present and current, services (the broker) really answering."""
        ...

    def measure(
        self,
        executor: Executor,
        params: Params,
        *,
        timeout: float,
        before_window: Callable[[], None] | None = None,
        after_window: Callable[[], None] | None = None,
    ) -> Measurement:
        """One measured run; raises WorkloadError (with the reason) instead of bad figures.

        ``before_window`` runs once, after the workload's own start-up and just before its
        timed window (or first, if the workload has no such point); if it raises, the run is
        called off and the error propagates. ``after_window`` runs once the timed window is
        over (or last). A run that succeeds leaves nothing behind that could leak into the
        next one."""
        ...

    def between_runs(self, executor: Executor, params: Params) -> None:
        """Remove what a failed or interrupted run may have left (queues, files); campaigns
        call it after such a run, not after every run (a guest round trip each under TCG)."""
        ...


@runtime_checkable
class HeldLoad(Protocol):
    """One run's load, readied (its program started, waiting) but not yet running.

    ``with`` guarantees it is stopped however the run ends."""

    def start(self) -> None:
        """Start the load; returns once it runs."""
        ...

    def stop(self) -> LoadStatus:
        """Stop it; how it ran over the time it ran (idempotent)."""
        ...

    def __enter__(self) -> HeldLoad: ...

    def __exit__(self, *exc_info: *ExcInfo) -> None: ...


@runtime_checkable
class LoadWorkload(Protocol):
    """A workload that keeps vCPUs busy while another one is measured."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "load"
    params_model: ClassVar[type[BaseModel]]

    def prepare(
        self,
        executor: Executor,
        *,
        timeout: float,
        params: Params | None = None,
    ) -> None: ...

    def held(self, executor: Executor, params: Params, *, timeout: float) -> HeldLoad:
        """Ready the load of one run (nothing runs yet); it never outlives ``timeout``."""
        ...

    def problems(self, status: LoadStatus, params: Params) -> list[str]:
        """What was wrong with how the load ran (empty: it ran as asked)."""
        ...
