"""The KVM evidence stored with every run, so a report can say whether the mechanism under
test fired: VM exits by reason (PAUSE among them), KVM's directed-yield statistics per guest,
and the PLE confounders found on the host. Each part is either a value or
``Unavailable`` with the reason ("guests run under QEMU TCG: ..."), never a guessed zero.

Sources: exits from kvm:kvm_exit hist triggers (kvmple.campaign.evidence.ExitCounter);
directed_yield_attempted/successful from the VM's debugfs directory (Linux 5.13+,
virt/kvm/kvm_main.c; in 6.1 they count the PV sched_yield hypercall, x86.c kvm_sched_yield);
confounders from kvmple.host.confounders.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field


class Unavailable(BaseModel):
    """A part of the evidence this run could not have, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unavailable: str = Field(min_length=1, description="why, e.g. 'guests run under QEMU TCG'")


class ExitCounts(BaseModel):
    """VM exits counted over the run's window (all guests on the host's KVM module)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exits: int = Field(ge=0, description="every kvm_exit event")
    pause_exits: int = Field(ge=0, description="exits for PAUSE (VMX reason 40, SVM 0x77)")
    ple_window_updates: int = Field(ge=0, description="kvm_ple_window_update events")
    exits_by_reason: dict[str, int] = Field(default_factory=dict, description="reason -> exits")
    pause_exits_by_thread: dict[str, int] = Field(
        default_factory=dict, description="vCPU thread id -> PAUSE exits"
    )
    method: str = Field(description="how they were counted")


class YieldCounts(BaseModel):
    """One guest's directed-yield statistics: the change over the run's window (summed over
    its vCPUs by KVM's VM-level debugfs files)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempted: int = Field(ge=0, description="directed_yield_attempted delta")
    successful: int = Field(ge=0, description="directed_yield_successful delta")
    source: str = Field(description="where they were read, e.g. /sys/kernel/debug/kvm/123-11")


class ConfounderFinding(BaseModel):
    """One PLE confounder found on the host when the run started (kvmple.host.confounders)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    where: str
    detail: str
    effect: str


class RunEvidence(BaseModel):
    """What KVM did during one run's window, and what could falsify its PLE label."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exits: ExitCounts | Unavailable
    directed_yield: dict[str, YieldCounts | Unavailable] = Field(
        default_factory=dict, description="guest role -> its directed-yield deltas"
    )
    confounders: tuple[ConfounderFinding, ...] | Unavailable = ()


def _mean(values: Sequence[int]) -> float:
    return sum(values) / len(values)


def _reasons(parts: Sequence[Unavailable]) -> str:
    distinct = sorted({p.unavailable for p in parts})
    return "unavailable: " + "; ".join(distinct)


def summarise_exits(records: Sequence[RunEvidence]) -> str:
    """Mean PAUSE exits / exits / PLE window updates per run, or why unavailable (or
    'not recorded' when no run has evidence)."""
    counted = [r.exits for r in records if isinstance(r.exits, ExitCounts)]
    missing = [r.exits for r in records if isinstance(r.exits, Unavailable)]
    if not counted:
        return _reasons(missing) if missing else "not recorded"
    text = (
        f"{_mean([c.pause_exits for c in counted]):,.1f} PAUSE / "
        f"{_mean([c.exits for c in counted]):,.1f} exits, "
        f"{_mean([c.ple_window_updates for c in counted]):,.1f} window updates per run"
    )
    return text + (f" ({len(missing)} run(s) unavailable)" if missing else "")


def summarise_yield(records: Sequence[RunEvidence]) -> str:
    """Mean directed_yield attempted/successful per run, summed over the guests."""
    sums: list[tuple[int, int]] = []
    missing: list[Unavailable] = []
    for record in records:
        counts = [c for c in record.directed_yield.values() if isinstance(c, YieldCounts)]
        missing += [c for c in record.directed_yield.values() if isinstance(c, Unavailable)]
        if counts:
            sums.append((sum(c.attempted for c in counts), sum(c.successful for c in counts)))
    if not sums:
        return _reasons(missing) if missing else "not recorded"
    text = (
        f"{_mean([a for a, _ in sums]):,.1f} attempted / "
        f"{_mean([s for _, s in sums]):,.1f} successful per run"
    )
    return text + (" (some guests unavailable)" if missing else "")


def summarise_confounders(records: Sequence[RunEvidence]) -> str:
    """The distinct confounder findings (kind: detail), 'none found', or why unavailable."""
    found = [r.confounders for r in records if not isinstance(r.confounders, Unavailable)]
    missing = [r.confounders for r in records if isinstance(r.confounders, Unavailable)]
    if not found:
        return _reasons(missing) if missing else "not recorded"
    distinct = sorted({f"{c.kind}: {c.detail}" for findings in found for c in findings})
    return "; ".join(distinct) if distinct else "none found"


# Confounders that switch PLE off for a guest whatever the module parameters say
# (kvmple.host.confounders): a cell labelled "PLE on" with them is labelled, never trusted.
PLE_DEFEATING = ("overcommit-cpu-pm", "amd-no-pfthreshold")


def ple_label_warning(label: str, ple: object, records: Sequence[RunEvidence]) -> str | None:
    """A warning when a cell labelled PLE on had a PLE-defeating confounder during its runs."""
    if str(ple).lower() not in ("on", "true"):
        return None
    kinds = sorted(
        {
            c.kind
            for r in records
            if not isinstance(r.confounders, Unavailable)
            for c in r.confounders
            if c.kind in PLE_DEFEATING
        }
    )
    if not kinds:
        return None
    return (
        f"cell {label} is labelled PLE on, but {', '.join(kinds)} was found on the host during "
        "its runs: PLE did not apply to (some of) its guests (see the evidence table)"
    )
