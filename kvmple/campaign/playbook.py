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

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvmple.campaign.specs import (
    FROZEN,
    Axis,
    Factor,
    GuestSpec,
    WorkloadSpec,
    WorkloadVariant,
    check_axis,
)
from kvmple.config import load_model, parse_model

PLAYBOOK_HINT = "see playbooks/smoke.yaml for a complete, commented example"


class Adaptive(BaseModel):
    """Stop a cell early once its mean is known well enough."""

    model_config = FROZEN

    ci_halfwidth_pct: float = Field(
        gt=0, description="stop when the 95% CI half-width <= this % of the mean"
    )
    min_runs: int = Field(default=5, ge=3, description="never stop before this many runs")


class Timeouts(BaseModel):
    model_config = FROZEN

    boot: float = Field(default=300, gt=0, description="seconds for guests to answer SSH")
    prepare: float = Field(default=300, gt=0, description="seconds for workload preparation")
    run: float = Field(default=600, gt=0, description="seconds for one measurement")


class Ordering(BaseModel):
    model_config = FROZEN

    seed: int = Field(default=1, description="seed of the run-order randomisation (recorded)")
    randomize: bool = Field(default=True, description="shuffle runs inside each group")
    interleave: int = Field(
        default=1,
        ge=1,
        description="split each group's repetitions into this many blocks and alternate "
        "groups block by block (ABAB) to cancel drift; 1 = one block per group",
    )


class Quiet(BaseModel):
    model_config = FROZEN

    max_foreign_load: float = Field(
        default=0.25, ge=0, description="CPUs' worth of load from other processes tolerated"
    )
    action: Literal["warn", "wait"] = Field(default="warn", description="warn, or wait for quiet")
    wait_max: float = Field(default=120, ge=0, description="seconds to wait for quiet at most")


class Estimate(BaseModel):
    """Rough durations for --dry-run's time estimate."""

    model_config = FROZEN

    boot_s: float = Field(default=90, ge=0, description="seconds to boot the guests once")
    run_s: float = Field(default=30, ge=0, description="seconds per run (setup + measurement)")
    knob_s: float = Field(default=10, ge=0, description="seconds per knob change")


class Playbook(BaseModel):
    """An experiment."""

    model_config = FROZEN

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="short name, used in ids")
    description: str = Field(default="", description="what the experiment reproduces or tests")
    reference: str | None = Field(
        default=None, description="published results to compare with (e.g. 'rfc-v7-amqp')"
    )
    guests: dict[str, GuestSpec] = Field(min_length=1, description="guests by role")
    workloads: dict[str, WorkloadSpec] = Field(description="workload per guest role")
    factors: tuple[Factor, ...] = Field(default=(), description="host knob factors")
    axes: dict[str, Axis] = Field(default_factory=dict, description="matrix axes")
    workload_axis: tuple[WorkloadVariant, ...] = Field(
        default=(),
        description="the measured guest's workload as an axis: one campaign per workload "
        "(their figures differ in unit and direction), each with the whole matrix",
    )
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
            workload = self.workloads[axis.guest]
            check_axis(f"axes.{name}", axis, workload.name, workload.params)
        knobs = [f.knob for f in self.factors]
        if len(set(knobs)) != len(knobs):
            raise ValueError("factors: each knob may appear once")
        overlap = set(self.axes) & set(knobs)
        if overlap:
            raise ValueError(f"{sorted(overlap)} is both a factor and an axis")
        self._check_workload_axis()
        return self

    def _check_workload_axis(self) -> None:
        names = [v.name for v in self.workload_axis]
        if not names:
            return
        if len(set(names)) != len(names):
            raise ValueError("workload_axis: each workload may appear once")
        measured = self.workloads[self.measured_role].name
        if measured not in names:
            raise ValueError(
                f"workload_axis: the measured workload {measured!r} must be one of {names}"
            )
        for name in names:
            if len(f"{self.name}-{name}") > 41:
                raise ValueError(f"workload_axis: name {self.name}-{name} is over 41 characters")
        base = self.workloads[self.measured_role]
        for index, variant in enumerate(self.workload_axis):
            params = variant.params
            if params is None:
                params = base.params if variant.name == base.name else {}
            for axis_name, axis in self.axes.items():
                if axis.guest == self.measured_role:  # the axis goes to each variant
                    where = f"workload_axis.{index} ({variant.name}): axes.{axis_name}"
                    check_axis(where, axis, variant.name, params)

    def variants(self) -> tuple[Playbook, ...]:
        """One playbook per value of ``workload_axis`` (named NAME-WORKLOAD, the measured
        workload replaced), or this playbook alone without the axis.
        Each becomes its own campaign: one primary metric, unit and direction per campaign."""
        if not self.workload_axis:
            return (self,)
        role = self.measured_role
        base = self.workloads[role]
        out = []
        for variant in self.workload_axis:
            params = variant.params
            if params is None:
                params = base.params if variant.name == base.name else {}
            spec = base.model_copy(update={"name": variant.name, "params": params})
            data = self.model_dump(mode="json")
            data.update(
                name=f"{self.name}-{variant.name}",
                workloads={**data["workloads"], role: spec.model_dump(mode="json")},
                workload_axis=[],
            )
            out.append(Playbook.model_validate(data))
        return tuple(out)

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


def variants(loaded: LoadedPlaybook) -> tuple[LoadedPlaybook, ...]:
    """``loaded`` split along its workload axis (:meth:`Playbook.variants`), each variant with
    its own YAML text (stored with its campaign, so ``--resume`` re-derives the same plan)."""
    if not loaded.playbook.workload_axis:
        return (loaded,)
    out = []
    for playbook in loaded.playbook.variants():
        data = playbook.model_dump(mode="json", exclude_defaults=True)
        text = f"# {playbook.name}: one workload of {loaded.source}\n" + yaml.safe_dump(
            data, sort_keys=False
        )
        out.append(LoadedPlaybook(playbook=playbook, text=text, source=loaded.source))
    return tuple(out)


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
