"""A run's provenance as a typed value: where and how it ran. The campaign builds it
(kvmple.campaign.provenance), the store keeps its JSON form in ``RunRecord.provenance``
(the same keys as before it was typed, so stored runs need no migration), and the pooling
keys of kvmple.results.cells derive from the fields marked here, so a new identity field
cannot be forgotten by the pooling check.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

KnobReadBack = dict[str, JsonValue] | None
"""One knob as a block ran with it: its setting and the state read back (the knob's reading,
``to_json``), ``{"unavailable": why}``, or None (not read back)."""


def _pool(description: str, *, campaign: bool) -> Any:
    """A field runs must agree on to be pooled in a cell (``campaign``: across cells too)."""
    return Field(description=description, json_schema_extra={"pool": True, "campaign": campaign})


class HostProvenance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hostname: str | None = None
    cpu_model: str | None = None
    accelerator: str | None = Field(default=None, description="kvm or tcg")
    doctor_verdict: str | None = None
    kvm_module: str | None = Field(default=None, description="kvm_intel, kvm_amd or None")


class KernelProvenance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kernel_release: str | None = None
    cmdline: str | None = None


class GuestProvenance(BaseModel):
    """One guest role's configuration as booted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str
    vcpus: int
    memory_mib: int
    pin: list[list[int]] = Field(description="host CPUs per vCPU")
    emulator_pin: list[int]
    kernel_args: str
    accelerator: str


class ImageProvenance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    key: str = Field(description="content address of the image in the cache")
    kernel_release: str | None = None


class RunProvenance(BaseModel):
    """The provenance of one attempt of a planned run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: HostProvenance = _pool("the host that ran it", campaign=True)
    kernel: KernelProvenance = _pool("the host kernel", campaign=True)
    knobs: dict[str, KnobReadBack] = _pool(
        "knob -> value read back, or {'unavailable': why}", campaign=False
    )
    guest: dict[str, GuestProvenance] = _pool("guest role -> configuration", campaign=True)
    image: dict[str, ImageProvenance] = _pool("guest role -> image", campaign=True)
    affinity: dict[str, dict[str, list[int]]] = _pool(
        "guest role -> vCPU -> host CPUs read back", campaign=False
    )
    vcpu_threads: dict[str, JsonValue] = Field(
        description="guest role -> vCPU -> thread id read back (None: not read back)"
    )
    # not a pooling key: a restored guest and a cold-booted one measure the same cell (the
    # equivalence test of tests/real/test_snapshot_real.py checks that they do)
    boot: dict[str, JsonValue] | None = Field(
        default=None,
        description="guest role -> {'mode': 'restored'|'cold', 'snapshot': key or None, ...} "
        "(kvmple.vm.snapshot); None in runs stored before snapshots",
    )
    kvmple_version: str
    playbook_hash: str
    seed: int | None = None
    block: int = Field(ge=0, description="knob block index in the plan")
    position: int = Field(ge=0, description="position inside the block")
    attempt: int = Field(ge=1)
    params: dict[str, dict[str, JsonValue]] = Field(description="guest role -> workload parameters")
    overcommit: float

    def to_record(self) -> dict[str, JsonValue]:
        """The JSON form stored in ``RunRecord.provenance``."""
        return self.model_dump(mode="json")


def _marked(flag: str) -> tuple[str, ...]:
    return tuple(
        name
        for name, info in RunProvenance.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get(flag)
    )


POOL_KEYS: tuple[str, ...] = _marked("pool")
CAMPAIGN_KEYS: tuple[str, ...] = _marked("campaign")
