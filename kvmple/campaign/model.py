"""The small records a campaign run passes around: options in, outcome out, host facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CampaignOptions:
    db_url: str | None = None
    allow_unavailable: bool = False


@dataclass
class CampaignOutcome:
    campaign_id: str
    planned: int
    ok: int = 0
    failed: int = 0
    skipped_adaptive: int = 0
    resumed_from: int = 0
    wall_seconds: float = 0.0
    measure_seconds: float = 0.0
    boots: int = 0
    boot_seconds: float = 0.0  # boot + workload preparation, summed over blocks
    log_path: Path | None = None
    db_url: str | None = None

    def summary(self) -> str:
        overhead = self.wall_seconds / self.measure_seconds if self.measure_seconds else 0.0
        parts = [
            f"campaign {self.campaign_id}: {self.ok} ok runs",
            f"{self.failed} failed attempts" if self.failed else "",
            f"{self.resumed_from} already stored" if self.resumed_from else "",
            f"{self.skipped_adaptive} skipped (precise enough)" if self.skipped_adaptive else "",
            f"{self.boots} guest boot(s)",
            f"wall {self.wall_seconds:.0f}s, measuring {self.measure_seconds:.0f}s "
            f"(overhead ratio {overhead:.2f})",
        ]
        return ", ".join(p for p in parts if p)


@dataclass
class HostFacts:
    """What the doctor found, reduced to what a campaign records and decides on."""

    accelerator: str
    verdict: str
    reason: str
    kvm_module: str | None
    # host knobs (kvmple.host.knobs.REGISTRY) this host cannot provide, each with why
    unavailable_knobs: dict[str, str] = field(default_factory=dict)
    # hostname, cpu_model, cpu_vendor, kernel_release, cmdline, doctor_verdict, accelerator,
    # kvm_module, ple_basis, machine (campaign/runner.py reads them; stored as the meta's host)
    facts: dict[str, str | None] = field(default_factory=dict)
    online_cpus: tuple[int, ...] = ()  # empty: unknown (then CPU pins are not checked)
    mem_available_mib: int | None = None  # None: unknown
