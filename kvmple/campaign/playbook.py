"""The playbook: a typed, validated description of one experiment.

A playbook names the guests (image, vCPUs, memory, pinning), the workload each guest runs,
the host knob factors (PLE on/off: changing them needs a module reload, so they define the
run *groups*), the matrix axes varied between runs inside a group (spinner count, message
size), repetitions, timeouts and ordering. It is parsed once at the CLI edge; everything
below sees only these frozen objects.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvmple.config import load_model, parse_model
from kvmple.errors import KvmpleError
from kvmple.host import knobs

Scalar = int | float | str | bool

_FROZEN = ConfigDict(frozen=True, extra="forbid")

PLAYBOOK_HINT = "see playbooks/smoke.yaml for a complete, commented example"


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


class GuestSpec(BaseModel):
    """One guest of the experiment."""

    model_config = _FROZEN

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

    model_config = _FROZEN

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


class Axis(BaseModel):
    """A matrix axis varied between runs inside a group."""

    model_config = _FROZEN

    values: tuple[Scalar, ...] = Field(min_length=1, description="the values to run")
    guest: str = Field(description="guest whose workload receives the value")
    param: str = Field(description="workload parameter the value is passed as")

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: tuple[Scalar, ...]) -> tuple[Scalar, ...]:
        if len(set(map(repr, values))) != len(values):
            raise ValueError("values must be distinct")
        return values


class Factor(BaseModel):
    """A host knob factor: its settings define run groups (one knob change per group)."""

    model_config = _FROZEN

    knob: str = Field(
        description="host knob: 'ple' (Pause-Loop Exiting), a KVM module parameter "
        "('kvm.halt_poll_ns', 'kvm_intel.ple_window', ...) or a /sys or /sys/kernel/debug path"
    )
    values: tuple[str, ...] = Field(
        min_length=1, description="settings, e.g. 'on', 'off' for ple, numbers for parameters"
    )

    @field_validator("values", mode="before")
    @classmethod
    def _numbers_as_text(cls, values: object) -> object:
        # YAML reads halt_poll_ns: [0, 200000] as ints; sysfs and the plan key them as text
        if isinstance(values, list | tuple):
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

    @model_validator(mode="after")
    def _settings(self) -> Factor:
        knob = knobs.get(self.knob)
        for value in self.values:
            knob.check_setting(value)
        return self


class Adaptive(BaseModel):
    """Stop a cell early once its mean is known well enough."""

    model_config = _FROZEN

    ci_halfwidth_pct: float = Field(
        gt=0, description="stop when the 95% CI half-width <= this % of the mean"
    )
    min_runs: int = Field(default=5, ge=3, description="never stop before this many runs")


class Timeouts(BaseModel):
    model_config = _FROZEN

    boot: float = Field(default=300, gt=0, description="seconds for guests to answer SSH")
    prepare: float = Field(default=300, gt=0, description="seconds for workload preparation")
    run: float = Field(default=600, gt=0, description="seconds for one measurement")


class Ordering(BaseModel):
    model_config = _FROZEN

    seed: int = Field(default=1, description="seed of the run-order randomisation (recorded)")
    randomize: bool = Field(default=True, description="shuffle runs inside each group")
    interleave: int = Field(
        default=1,
        ge=1,
        description="split each group's repetitions into this many blocks and alternate "
        "groups block by block (ABAB) to cancel drift; 1 = one block per group",
    )


class Quiet(BaseModel):
    model_config = _FROZEN

    max_foreign_load: float = Field(
        default=0.25, ge=0, description="CPUs' worth of load from other processes tolerated"
    )
    action: Literal["warn", "wait"] = Field(default="warn", description="warn, or wait for quiet")
    wait_max: float = Field(default=120, ge=0, description="seconds to wait for quiet at most")


class Estimate(BaseModel):
    """Rough durations for --dry-run's time estimate."""

    model_config = _FROZEN

    boot_s: float = Field(default=90, ge=0, description="seconds to boot the guests once")
    run_s: float = Field(default=30, ge=0, description="seconds per run (setup + measurement)")
    knob_s: float = Field(default=10, ge=0, description="seconds per knob change")


class Playbook(BaseModel):
    """An experiment."""

    model_config = _FROZEN

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="short name, used in ids")
    description: str = Field(default="", description="what the experiment reproduces or tests")
    reference: str | None = Field(
        default=None, description="published results to compare with (e.g. 'rfc-v7-amqp')"
    )
    guests: dict[str, GuestSpec] = Field(min_length=1, description="guests by role")
    workloads: dict[str, WorkloadSpec] = Field(description="workload per guest role")
    factors: tuple[Factor, ...] = Field(default=(), description="host knob factors")
    axes: dict[str, Axis] = Field(default_factory=dict, description="matrix axes")
    repetitions: int = Field(gt=0, le=10000, description="runs per cell (maximum if adaptive)")
    adaptive: Adaptive | None = Field(default=None, description="stop cells early when precise")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="timeouts in seconds")
    order: Ordering = Field(default_factory=Ordering, description="run ordering")
    quiet: Quiet = Field(default_factory=Quiet, description="host quietness check")
    estimate: Estimate = Field(default_factory=Estimate, description="dry-run estimates")

    @field_validator("guests")
    @classmethod
    def _role_names(cls, guests: dict[str, GuestSpec]) -> dict[str, GuestSpec]:
        for role in guests:
            if not role.replace("-", "").isalnum() or not role.islower():
                raise ValueError(f"guest role {role!r}: use lower-case letters, digits and '-'")
        return guests

    @model_validator(mode="after")
    def _consistent(self) -> Playbook:
        for role in self.workloads:
            if role not in self.guests:
                raise ValueError(f"workloads.{role}: no guest with that role")
        measured = [r for r, w in self.workloads.items() if w.role == "measure"]
        if len(measured) != 1:
            raise ValueError(
                f"exactly one workload must have role 'measure' (found {len(measured)})"
            )
        for name, axis in self.axes.items():
            if axis.guest not in self.workloads:
                raise ValueError(f"axes.{name}.guest: {axis.guest!r} runs no workload")
        knobs = [f.knob for f in self.factors]
        if len(set(knobs)) != len(knobs):
            raise ValueError("factors: each knob may appear once")
        overlap = set(self.axes) & set(knobs)
        if overlap:
            raise ValueError(f"{sorted(overlap)} is both a factor and an axis")
        return self

    @property
    def measured_role(self) -> str:
        return next(r for r, w in self.workloads.items() if w.role == "measure")


class LoadedPlaybook(BaseModel):
    """A playbook with the text it was parsed from (stored with every campaign)."""

    model_config = ConfigDict(frozen=True)

    playbook: Playbook
    text: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_playbook(path: Path) -> LoadedPlaybook:
    """Read and validate a playbook file."""
    playbook = load_model(Playbook, path, hint=PLAYBOOK_HINT)
    return LoadedPlaybook(
        playbook=playbook, text=path.read_text(encoding="utf-8"), source=str(path)
    )


def parse_playbook(text: str, source: str) -> LoadedPlaybook:
    """Validate playbook text (e.g. as stored with a campaign, for --resume)."""
    playbook = parse_model(Playbook, text, source, hint=PLAYBOOK_HINT)
    return LoadedPlaybook(playbook=playbook, text=text, source=source)
