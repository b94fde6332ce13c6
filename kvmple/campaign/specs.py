"""The parts a playbook is made of: its guests, their workloads (with the workload axis) and
the matrix (host knob factors, axes), each validated as the playbook loads, against the
workload and knob registries, so a typo fails with its file, line and key instead of hours
into a campaign. :mod:`kvmple.campaign.playbook` puts them together.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kvmple.errors import KvmpleError
from kvmple.host import knobs
from kvmple.workloads import WORKLOADS, check_params

Scalar = int | float | str | bool

FROZEN = ConfigDict(frozen=True, extra="forbid")  # every part: immutable, no unknown keys


def _parse_cpus(value: object) -> tuple[int, ...]:
    """Accept 3, "0-3", "0,2", [0, 1] for a CPU list."""
    if isinstance(value, bool):
        raise ValueError("expected a CPU number or list")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list | tuple):
        out: list[int] = []
        for item in value:
            out.extend(_parse_cpus(item))
        return tuple(out)
    if isinstance(value, str):
        out = []
        for raw in value.split(","):
            part = raw.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = part.split("-", 1)
                if not (lo.strip().isdigit() and hi.strip().isdigit()) or int(lo) > int(hi):
                    raise ValueError(f"bad CPU range {part!r}")
                out.extend(range(int(lo), int(hi) + 1))
            elif part.isdigit():
                out.append(int(part))
            else:
                raise ValueError(f"bad CPU list {value!r} (use e.g. 0-3 or 0,2)")
        return tuple(out)
    raise ValueError("expected a CPU number, a list like [0, 1], or a string like '0-3'")


def _known_workload(name: str) -> str:
    """``name`` if the workload registry has it (ValueError naming the known ones), so a
    misspelt workload fails when the playbook loads, not hours later when its campaign starts."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(sorted(WORKLOADS))})")
    return name


class GuestSpec(BaseModel):
    """One guest of the experiment."""

    model_config = FROZEN

    image: str = Field(description="image recipe name in guest-images/ or a recipe path")
    vcpus: int = Field(gt=0, le=512, description="number of vCPUs")
    memory_mib: int = Field(default=1024, ge=128, description="guest memory in MiB")
    pin: tuple[tuple[int, ...], ...] = Field(
        description="host CPUs per vCPU: a list with one entry per vCPU (a CPU or CPU list); "
        "a single list like '0-3' with as many CPUs as vCPUs pins vCPU i to CPU i"
    )
    emulator_pin: tuple[int, ...] | None = Field(
        default=None,
        description="host CPUs for QEMU's emulator threads (default: the union of pin)",
    )
    keep_smt_siblings: bool = Field(
        default=False,
        description="require every pinned set to contain whole SMT sibling groups",
    )
    kernel_args: str = Field(default="", description="extra guest kernel command line")

    @field_validator("pin", mode="before")
    @classmethod
    def _pin(cls, value: object) -> tuple[tuple[int, ...], ...]:
        if isinstance(value, str | int):
            return tuple((cpu,) for cpu in _parse_cpus(value))
        if isinstance(value, list | tuple):
            if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return tuple((int(v),) for v in value)
            return tuple(_parse_cpus(v) for v in value)
        raise ValueError("expected a list of host CPUs, one per vCPU, or a range like '0-3'")

    @field_validator("emulator_pin", mode="before")
    @classmethod
    def _emulator(cls, value: object) -> tuple[int, ...] | None:
        return None if value is None else _parse_cpus(value)

    @model_validator(mode="after")
    def _pins_cover_vcpus(self) -> GuestSpec:
        if len(self.pin) != self.vcpus:
            raise ValueError(
                f"pin lists {len(self.pin)} entries for {self.vcpus} vCPUs: pin every vCPU"
            )
        return self

    @property
    def host_cpus(self) -> frozenset[int]:
        return frozenset(cpu for cpus in self.pin for cpu in cpus)


class WorkloadSpec(BaseModel):
    """What one guest runs during every measurement."""

    model_config = FROZEN

    name: str = Field(description="workload name (amqp-perftest, spin, hackbench)")
    role: Literal["measure", "load"] = Field(
        description="measure: its figures are the result; load: runs beside the measurement"
    )
    params: dict[str, Scalar] = Field(
        default_factory=dict, description="fixed parameters passed to the workload"
    )
    busy_vcpus: int | str | None = Field(
        default=None,
        description="vCPUs this workload keeps busy, for the overcommit figure: a number, "
        "'all', or the name of a parameter/axis holding the count (default: 'all' for a "
        "measured workload, its 'count' parameter for spin)",
    )

    _name = field_validator("name")(_known_workload)

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, Scalar], info: ValidationInfo) -> dict[str, Scalar]:
        if "name" in info.data:  # else the name's own error is the one to report
            check_params(info.data["name"], params)
        return params


class WorkloadVariant(BaseModel):
    """One value of the workload axis: the measured guest runs this workload instead."""

    model_config = FROZEN

    name: str = Field(description="workload name (dbench, sysbench-threads, hackbench, ...)")
    params: dict[str, Scalar] | None = Field(
        default=None,
        description="its parameters (default: the measured workload's params when it is the "
        "same workload, else none)",
    )

    _name = field_validator("name")(_known_workload)

    @field_validator("params")
    @classmethod
    def _known_params(
        cls, params: dict[str, Scalar] | None, info: ValidationInfo
    ) -> dict[str, Scalar] | None:
        if params is not None and "name" in info.data:
            check_params(info.data["name"], params)
        return params


class Axis(BaseModel):
    """A matrix axis varied between runs inside a group."""

    model_config = FROZEN

    values: tuple[Scalar, ...] = Field(min_length=1, description="the values to run")
    guest: str = Field(description="guest whose workload receives the value")
    param: str = Field(description="workload parameter the value is passed as")

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: tuple[Scalar, ...]) -> tuple[Scalar, ...]:
        if len(set(map(repr, values))) != len(values):
            raise ValueError("values must be distinct")
        return values


def check_axis(where: str, axis: Axis, workload: str, params: dict[str, Scalar]) -> None:
    """ValueError naming ``where`` unless each of the axis' values is a valid ``param`` of
    ``workload`` beside its fixed ``params``."""
    for value in axis.values:
        try:
            check_params(workload, {**params, axis.param: value})
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


class Factor(BaseModel):
    """A host knob factor: its settings define run groups (one knob change per group)."""

    model_config = FROZEN

    knob: str = Field(
        description="host knob: 'ple' (Pause-Loop Exiting), a KVM module parameter "
        "('kvm.halt_poll_ns', 'kvm_intel.ple_window', ...) or a /sys or /sys/kernel/debug path"
    )
    # before values: their validator checks them against it
    type: str | None = Field(
        default=None,
        description="a KVM module parameter's type (bool, int, uint, ushort, ulong, string) "
        "when kvmple does not know it; its values are checked against it",
    )
    values: tuple[str, ...] = Field(
        min_length=1, description="settings, e.g. 'on', 'off' for ple, numbers for parameters"
    )

    @field_validator("values", mode="before")
    @classmethod
    def _numbers_as_text(cls, values: object) -> object:
        # YAML reads halt_poll_ns: [0, 200000] as ints; sysfs and the plan key them as text
        if isinstance(values, list | tuple):
            if any(isinstance(v, bool) for v in values):
                # YAML 1.1 reads unquoted on/off/yes/no as booleans: say so, not "not a string"
                raise ValueError(
                    "YAML reads unquoted on/off/yes/no as true/false: quote the settings, "
                    'e.g. ["off", "on"]'
                )
            return tuple(
                str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values
            )
        return values

    @field_validator("knob")
    @classmethod
    def _known_knob(cls, name: str) -> str:
        try:
            knobs.get(name)
        except KvmpleError as exc:
            raise ValueError(f"{exc.message} ({exc.hint})" if exc.hint else exc.message) from None
        return name

    @field_validator("values")
    @classmethod
    def _settings(cls, values: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if "knob" in info.data:  # else the knob's own error is the one to report
            knobs.get(info.data["knob"]).check_settings(values, info.data.get("type"))
        return values
