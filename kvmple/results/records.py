"""The two records a campaign leaves: its metadata and one record per run.

Both are frozen, validated, self-describing (``RECORD_VERSION`` travels with exports) and
JSON-serialisable, so a store row, an export file and an import all share one shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from kvmple.results.evidence import RunEvidence

# 2: RunRecord.kvm (exits, directed yield, confounders); version-1 records read as kvm=None
RECORD_VERSION = 2

CampaignStatus = Literal["running", "interrupted", "complete", "failed"]
CAMPAIGN_STATUSES: tuple[str, ...] = ("running", "interrupted", "complete", "failed")
CellValue = str | int | float | bool


class CampaignMeta(BaseModel):
    """What a campaign is: its playbook, its host, its axes and what it measures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, description="campaign id, unique in a store")
    name: str = Field(description="playbook name")
    playbook_hash: str = Field(description="sha256 of the playbook text")
    playbook_text: str = Field(description="the playbook exactly as run")
    created: float = Field(description="creation time, seconds since the epoch")
    status: CampaignStatus = Field(description="running|interrupted|complete|failed")
    host: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="cpu model, kernel release, cmdline, doctor verdict, accelerator, hostname",
    )
    kvmple_version: str = Field(description="kvmple version that ran the campaign")
    seed: int | None = Field(default=None, description="seed of the run-order randomisation")
    axes: dict[str, list[CellValue]] = Field(
        default_factory=dict, description="matrix axis -> its values, in playbook order"
    )
    primary_metric: str = Field(description="figure the reports are about, e.g. transfers_per_sec")
    metric_unit: str = Field(default="", description="unit of the primary metric")
    notes: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="free-form notes, e.g. {'unavailable': {'ple': 'TCG host has no PLE'}}",
    )

    def unavailable(self) -> dict[str, str]:
        """``notes["unavailable"]``: knob -> why this host could not provide it (empty when
        none was; a value that is not text is shown as stored)."""
        found = self.notes.get("unavailable")
        if not isinstance(found, dict):
            return {}
        return {knob: why if isinstance(why, str) else str(why) for knob, why in found.items()}


class RunRecord(BaseModel):
    """One measured run with everything needed to judge whether it may be pooled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    campaign_id: str = Field(min_length=1, description="campaign this run belongs to")
    run_key: str = Field(min_length=1, description="unique per campaign; resumes rely on it")
    cell: dict[str, CellValue] = Field(description="matrix cell, e.g. {'ple': 'off', 'size': 8}")
    run_index: int = Field(ge=0, description="repetition number inside the cell")
    status: Literal["ok", "failed"] = Field(description="failed runs are kept, never pooled")
    reason: str = Field(default="", description="why the run failed (empty when ok)")
    figures: dict[str, float] = Field(default_factory=dict, description="measured figures")
    raw: str = Field(default="", description="raw workload output")
    started: float = Field(description="start time, seconds since the epoch")
    ended: float = Field(description="end time, seconds since the epoch")
    measure_seconds: float = Field(default=0.0, ge=0, description="measurement window length")
    provenance: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="host, kernel, knobs read back, vCPU affinity read back, image manifest",
    )
    evidence: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="host CPU shares, phase times, loads, quietness of the window",
    )
    kvm: RunEvidence | None = Field(
        default=None,
        description="exits by reason, directed yield per guest, confounders (None: stored "
        "by a kvmple before record version 2)",
    )


def cell_label(cell: dict[str, CellValue]) -> str:
    """A stable, human-readable name of a cell: ``ple=off size=8 overcommit=1.5``."""
    return " ".join(f"{k}={_fmt(v)}" for k, v in cell.items())


def _fmt(value: CellValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)
