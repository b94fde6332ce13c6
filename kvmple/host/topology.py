"""CPU topology from sysfs: online CPUs, SMT sibling groups, NUMA nodes, isolated CPUs and
cpufreq governors (what pinning and overcommit decisions need)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kvmple.errors import HostError


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse a kernel cpulist such as ``"0-3,8,10-11"`` (empty text = no CPUs).

    Raises ValueError on anything else.
    """
    cpus: set[int] = set()
    for raw in text.strip().split(","):
        part = raw.strip()
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ValueError(f"not a cpulist: {text.strip()!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"not a cpulist (range {part} runs backwards): {text.strip()!r}")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


@dataclass(frozen=True)
class NumaNode:
    node: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Topology:
    """The host's CPUs as the scheduler sees them."""

    online: tuple[int, ...]
    smt_siblings: tuple[tuple[int, ...], ...]
    numa_nodes: tuple[NumaNode, ...]
    isolated: tuple[int, ...]
    governors: tuple[tuple[int, str], ...]

    @property
    def smt_active(self) -> bool:
        """True when some core runs more than one online hardware thread."""
        return any(len(group) > 1 for group in self.smt_siblings)

    def to_json(self) -> dict[str, object]:
        return {
            "online_cpus": list(self.online),
            "smt_sibling_groups": [list(group) for group in self.smt_siblings],
            "smt_active": self.smt_active,
            "numa_nodes": [{"node": n.node, "cpus": list(n.cpus)} for n in self.numa_nodes],
            "isolated_cpus": list(self.isolated),
            "cpufreq_governors": {str(cpu): gov for cpu, gov in self.governors},
        }


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cpulist(path: Path) -> tuple[int, ...] | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return parse_cpulist(text)
    except ValueError as exc:
        raise HostError(f"{path}: {exc}", hint="unexpected sysfs content") from exc


def isolcpus_from_cmdline(cmdline: str) -> tuple[int, ...]:
    """CPUs named by ``isolcpus=[flags,]LIST`` on a kernel command line."""
    for word in cmdline.split():
        if word.startswith("isolcpus="):
            parts = word.removeprefix("isolcpus=").split(",")
            # leading flag words ("domain", "managed_irq", "nohz") precede the list
            while parts and parts[0] and not parts[0][0].isdigit():
                parts.pop(0)
            try:
                return parse_cpulist(",".join(parts))
            except ValueError:
                return ()
    return ()


def read_topology(root: Path = Path("/")) -> Topology:
    """Read the topology under ``root`` (``/`` on a real host, a fake tree in tests)."""
    cpu_dir = root / "sys/devices/system/cpu"
    online = _cpulist(cpu_dir / "online")
    if online is None:
        raise HostError(f"cannot read {cpu_dir / 'online'}", hint="is /sys mounted?")
    groups: set[tuple[int, ...]] = set()
    governors: list[tuple[int, str]] = []
    for cpu in online:
        topo = cpu_dir / f"cpu{cpu}" / "topology"
        siblings = _cpulist(topo / "core_cpus_list") or _cpulist(topo / "thread_siblings_list")
        groups.add(tuple(c for c in (siblings or (cpu,)) if c in online) or (cpu,))
        governor = _read(cpu_dir / f"cpu{cpu}" / "cpufreq" / "scaling_governor")
        if governor is not None:
            governors.append((cpu, governor.strip()))
    nodes: list[NumaNode] = []
    node_dir = root / "sys/devices/system/node"
    if node_dir.is_dir():
        for entry in sorted(node_dir.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
            nodes.append(NumaNode(int(entry.name[4:]), _cpulist(entry / "cpulist") or ()))
    if not nodes:  # kernel without NUMA: one node holding every CPU
        nodes.append(NumaNode(0, online))
    isolated = _cpulist(cpu_dir / "isolated")
    if isolated is None:
        isolated = isolcpus_from_cmdline(_read(root / "proc/cmdline") or "")
    return Topology(
        online=online,
        smt_siblings=tuple(sorted(groups)),
        numa_nodes=tuple(nodes),
        isolated=isolated,
        governors=tuple(governors),
    )


def read_mem_available_mib(proc_root: Path = Path("/proc")) -> int | None:
    """MemAvailable from /proc/meminfo in MiB (None when unreadable: then unknown, not 0).
    MemAvailable is the kernel's estimate of memory a new workload can get without swapping
    (Documentation/filesystems/proc.rst)."""
    try:
        text = (proc_root / "meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemAvailable" and rest.split():
            return int(rest.split()[0]) // 1024  # kB
    return None
