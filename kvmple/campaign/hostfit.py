"""Does this host fit a playbook? Checked before anything is created.

Every requirement the host does not meet is listed at once (``kvmple run --dry-run`` shows
them; a real run refuses before it creates a campaign): pinned CPUs the host does not have
online, guest memory beyond the host's MemAvailable, and knob factors (PLE, ...) the host
cannot provide.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmple.campaign.model import HostFacts
from kvmple.campaign.playbook import Playbook
from kvmple.host import knobs
from kvmple.vm.spec import format_cpulist


@dataclass(frozen=True)
class Unmet:
    """One requirement the host does not meet."""

    requirement: str  # "pinned CPUs" | "memory" | a factor's knob title ("PLE", ...)
    detail: str
    factor: bool = False  # a knob factor: --allow-unavailable records it as unavailable

    def describe(self) -> str:
        return f"{self.requirement}: {self.detail}"


def host_fit(playbook: Playbook, host: HostFacts) -> list[Unmet]:
    """Every requirement of ``playbook`` this host does not meet (pure; empty: it fits).

    The guests of a block run at the same time, so their memory adds up; QEMU's own
    overhead comes on top and is not counted (the check errs on the side of running).
    """
    unmet: list[Unmet] = []
    online = frozenset(host.online_cpus)
    if online:
        for role, guest in playbook.guests.items():
            wanted = guest.host_cpus | frozenset(guest.emulator_pin or ())
            missing = sorted(wanted - online)
            if missing:
                unmet.append(
                    Unmet(
                        "pinned CPUs",
                        f"guest {role!r} pins CPU(s) {format_cpulist(missing)}, which this host "
                        f"does not have (online: {format_cpulist(sorted(online))})",
                    )
                )
    need = sum(g.memory_mib for g in playbook.guests.values())
    if host.mem_available_mib is not None and need > host.mem_available_mib:
        parts = ", ".join(f"{r} {g.memory_mib}" for r, g in playbook.guests.items())
        unmet.append(
            Unmet(
                "memory",
                f"the guests need {need} MiB together ({parts}); this host has "
                f"{host.mem_available_mib} MiB available (MemAvailable)",
            )
        )
    for factor in playbook.factors:
        reason = host.unavailable_knobs.get(factor.knob)
        if reason is not None:
            unmet.append(Unmet(knobs.get(factor.knob).title, reason, factor=True))
    return unmet
