"""Is the host quiet? Load from processes other than kvmple's own guests distorts an
overcommit benchmark, so the runner checks before each block and between runs.

Foreign load = CPU time spent on the host CPUs during a short window, minus the CPU time of
the processes kvmple owns (the guests' QEMU processes), in CPUs' worth.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kvmple.campaign.evidence import read_cpu_times

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _process_jiffies(pid: int, proc: Path) -> int:
    """utime + stime of a process (all its threads), 0 if it is gone."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    # after the comm field: state is fields[0]; utime/stime are stat fields 14/15 (1-based)
    return int(fields[11]) + int(fields[12])


def _busy(times: dict[int, dict[str, int]], cpus: Iterable[int]) -> int:
    return sum(
        sum(v for k, v in times[c].items() if k not in ("idle", "iowait"))
        for c in cpus
        if c in times
    )


@dataclass(frozen=True)
class Quietness:
    foreign_cpus: float  # CPUs' worth of load not from kvmple's processes
    window: float

    def describe(self) -> str:
        return f"{self.foreign_cpus:.2f} CPUs of foreign load over {self.window:.1f}s"


def measure(
    cpus: frozenset[int] | None,
    own_pids: Iterable[int] = (),
    window: float = 1.0,
    proc: Path = Path("/proc"),
    sleep: Callable[[float], None] = time.sleep,
) -> Quietness:
    """Foreign load on ``cpus`` (all CPUs if None) over ``window`` seconds."""
    pids = list(own_pids)
    before = read_cpu_times(proc)
    own_before = sum(_process_jiffies(p, proc) for p in pids)
    start = time.monotonic()
    sleep(window)
    after = read_cpu_times(proc)
    own_after = sum(_process_jiffies(p, proc) for p in pids)
    elapsed = max(time.monotonic() - start, 1e-3)
    selected = cpus if cpus is not None else frozenset(after)
    busy = _busy(after, selected) - _busy(before, selected)
    own = own_after - own_before
    # Our processes may also have run on CPUs outside the selection; never go negative.
    foreign = max(0, busy - own) / _CLK_TCK / elapsed
    return Quietness(foreign_cpus=round(foreign, 3), window=round(elapsed, 2))
