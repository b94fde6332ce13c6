"""The KVM evidence of one run (kvmple.results.evidence.RunEvidence): confounders found when
the window opens, directed-yield statistics per guest read before and after it, and the
exit counts of kvmple.campaign.evidence.collect, each a value or "unavailable: why".

Kept apart from kvmple.campaign.evidence, which the Bochs lab host ships without pydantic.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path

from kvmple.campaign.evidence import CountedExits
from kvmple.errors import HostError
from kvmple.host import confounders, kvmstats
from kvmple.host.cpuinfo import read_cpuinfo
from kvmple.results.evidence import (
    ConfounderFinding,
    ExitCounts,
    RunEvidence,
    Unavailable,
    YieldCounts,
)

TCG_NO_KVM = "guests run under QEMU TCG: no KVM VM, so no KVM statistics"


def exits_record(counted: CountedExits | str) -> ExitCounts | Unavailable:
    """ExitCounter.counts() as a typed value, or the reason it could not count."""
    if isinstance(counted, str):
        return Unavailable(unavailable=counted)
    return ExitCounts.model_validate(dict(counted))


def find_confounders(
    proc_root: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    etc_root: Path = Path("/"),
    release: str | None = None,
) -> tuple[ConfounderFinding, ...] | Unavailable:
    """Every confounder on the host now (kvmple.host.confounders.detect), or why not."""
    try:
        cpu = read_cpuinfo(proc_root)
        found = confounders.detect(
            cpu, release or platform.release(), proc_root, sys_root, etc_root
        )
    except HostError as exc:
        return Unavailable(unavailable=f"cannot read the host's confounders: {exc.message}")
    except OSError as exc:
        return Unavailable(unavailable=f"cannot read the host's confounders: {exc}")
    return tuple(ConfounderFinding(**c.to_json()) for c in found)


class YieldReader:
    """Directed-yield statistics of each guest's QEMU over a window: ``start()`` before,
    ``finish()`` after (a guest without a QEMU pid, or under TCG, is unavailable)."""

    def __init__(
        self,
        accelerator: str,
        qemu_pids: Mapping[str, int | None],
        debugfs: Path = kvmstats.DEBUGFS,
    ) -> None:
        self.accelerator = accelerator
        self.pids = dict(qemu_pids)
        self.debugfs = debugfs
        self._before: dict[str, tuple[Path, dict[str, int]] | str] = {}

    def _read(self, pid: int | None) -> tuple[Path, dict[str, int]] | str:
        if self.accelerator != "kvm":
            return TCG_NO_KVM
        if pid is None:
            return "the guest's QEMU pid was not read back"
        return kvmstats.read_yield(pid, self.debugfs)

    def start(self) -> None:
        self._before = {role: self._read(pid) for role, pid in self.pids.items()}

    def finish(self) -> dict[str, YieldCounts | Unavailable]:
        result: dict[str, YieldCounts | Unavailable] = {}
        for role, pid in self.pids.items():
            before = self._before.get(role, "the window never started")
            after = self._read(pid) if not isinstance(before, str) else before
            if isinstance(before, str) or isinstance(after, str):
                result[role] = Unavailable(unavailable=str(after))
                continue
            if after[0] != before[0]:
                result[role] = Unavailable(unavailable="the guest's VM changed during the window")
                continue
            delta = {k: after[1][k] - before[1][k] for k in kvmstats.YIELD_STATS}
            result[role] = YieldCounts(
                attempted=delta["directed_yield_attempted"],
                successful=delta["directed_yield_successful"],
                source=str(after[0]),
            )
        return result


def run_evidence(
    exits: CountedExits | str,
    directed_yield: dict[str, YieldCounts | Unavailable],
    found: tuple[ConfounderFinding, ...] | Unavailable,
) -> RunEvidence:
    """The run's RunEvidence from its three parts."""
    return RunEvidence(exits=exits_record(exits), directed_yield=directed_yield, confounders=found)
