"""Pinning sanity checks: a spec's vCPU and emulator pins against the host's CPUs (pure).

Errors are ConfigErrors naming the guest, the vCPU and the CPU, with what to change. The
host's CPUs come from ``read_host_cpus`` (sysfs), kept apart so the checks are tested with
made-up topologies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmple.errors import ConfigError
from kvmple.host.topology import read_topology
from kvmple.vm.spec import VMSpec, format_cpulist, parse_cpulist


@dataclass(frozen=True)
class HostCPUs:
    """What pinning needs to know about the host: which CPUs exist, are online, share a core."""

    possible: frozenset[int]
    online: frozenset[int]
    sibling_groups: tuple[frozenset[int], ...]


def read_host_cpus(root: Path = Path("/")) -> HostCPUs:
    """The host's CPUs: online CPUs and SMT groups from kvmple.host.topology, plus the
    ``possible`` list (so a CPU that exists but is offline gets its own message)."""
    topology = read_topology(root)
    possible_file = root / "sys/devices/system/cpu/possible"
    try:
        possible = frozenset(parse_cpulist(possible_file.read_text()))
    except (OSError, ValueError):
        possible = frozenset(topology.online)
    return HostCPUs(
        possible=possible | frozenset(topology.online),
        online=frozenset(topology.online),
        sibling_groups=tuple(frozenset(g) for g in topology.smt_siblings),
    )


def _check_cpu(spec: VMSpec, where: str, cpu: int, host: HostCPUs) -> None:
    if cpu not in host.possible:
        raise ConfigError(
            f"guest {spec.role}: {where} pins host CPU {cpu}, which does not exist "
            f"(host CPUs: {format_cpulist(sorted(host.possible))})",
            hint="pin to CPUs this host has ('kvmple doctor' lists them)",
        )
    if cpu not in host.online:
        raise ConfigError(
            f"guest {spec.role}: {where} pins host CPU {cpu}, which is offline "
            f"(online: {format_cpulist(sorted(host.online))})",
            hint=f"bring it online (echo 1 > /sys/devices/system/cpu/cpu{cpu}/online) "
            "or pin elsewhere",
        )


def check_pinning(spec: VMSpec, host: HostCPUs, *, keep_smt_siblings: bool = False) -> None:
    """Raise ConfigError unless ``spec``'s pins are usable on ``host``.

    With ``keep_smt_siblings`` the guest's CPUs must be whole cores: no host CPU of the guest
    may have an SMT sibling outside the guest's set (a split core shares caches and pipeline
    with whatever else runs there, which the playbook asked to avoid).
    """
    if len(spec.vcpu_pins) < spec.vcpus:
        raise ConfigError(
            f"guest {spec.role}: {spec.vcpus} vCPUs but only {len(spec.vcpu_pins)} pinned",
            hint="give one CPU list per vCPU, or one list for all of them",
        )
    if len(spec.vcpu_pins) > spec.vcpus:
        raise ConfigError(
            f"guest {spec.role}: {len(spec.vcpu_pins)} pin sets for {spec.vcpus} vCPUs",
            hint="give one CPU list per vCPU, or one list for all of them",
        )
    used: set[int] = set()
    for index, pins in enumerate(spec.vcpu_pins):
        if not pins:
            raise ConfigError(f"guest {spec.role}: vCPU {index} has an empty pin set")
        for cpu in pins:
            _check_cpu(spec, f"vCPU {index}", cpu, host)
        used.update(pins)
    for cpu in spec.emulator_pins:
        _check_cpu(spec, "the emulator thread", cpu, host)
    if keep_smt_siblings:
        for group in host.sibling_groups:
            inside = group & used
            if inside and inside != group:
                raise ConfigError(
                    f"guest {spec.role}: pins split the SMT core "
                    f"{format_cpulist(sorted(group))} (uses {format_cpulist(sorted(inside))} "
                    "only)",
                    hint="pin whole cores, or allow split siblings in the playbook",
                )


def compare_affinity(spec: VMSpec, actual: dict[int, tuple[int, ...]]) -> list[str]:
    """Differences between the spec's pins and the affinity read back (empty: all good)."""
    problems = []
    for index, wanted in enumerate(spec.vcpu_pins):
        got = actual.get(index)
        if got is None:
            problems.append(f"vCPU {index}: no thread found")
        elif sorted(got) != sorted(wanted):
            problems.append(
                f"vCPU {index}: pinned to {format_cpulist(got) or 'nothing'}, "
                f"spec says {format_cpulist(wanted)}"
            )
    extra = sorted(set(actual) - set(range(spec.vcpus)))
    if extra:
        problems.append(f"unexpected vCPUs {extra}")
    return problems


def summarize(pins: Sequence[Sequence[int]]) -> str:
    return "/".join(format_cpulist(p) for p in pins)
