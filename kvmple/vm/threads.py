"""The kernel's view of a running QEMU: its vCPU threads and their CPU affinity.

libvirt names QEMU's threads (``debug-threads=on``): "CPU 0/TCG", "CPU 1/KVM", ... With
multi-threaded TCG or KVM each vCPU has its own thread; single-threaded TCG runs every vCPU
in one "ALL CPUs/TCG" thread, where per-vCPU pinning means nothing, so that is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kvmple.errors import GuestError

_VCPU_THREAD = re.compile(r"^CPU (\d+)/(TCG|KVM)$")
_SINGLE_TCG = "ALL CPUs/TCG"


def qemu_pid(domain: str, run_dir: Path = Path("/run/libvirt/qemu")) -> int | None:
    """The QEMU process of a qemu:///system domain, from libvirt's pid file."""
    try:
        return int((run_dir / f"{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def vcpu_threads(pid: int, proc: Path = Path("/proc")) -> dict[int, int]:
    """vCPU index -> thread id of QEMU process ``pid``."""
    threads: dict[int, int] = {}
    for task in (proc / str(pid) / "task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        if comm == _SINGLE_TCG:
            raise GuestError(
                f"QEMU {pid} runs single-threaded TCG: all vCPUs share one host thread, so "
                "per-vCPU pinning is meaningless",
                hint="multi-threaded TCG is QEMU's default for x86_64 on x86_64; check the "
                "QEMU build and -accel options",
            )
        if match := _VCPU_THREAD.match(comm):
            threads[int(match.group(1))] = int(task.name)
    return threads


def thread_affinity(tids: dict[int, int]) -> dict[int, tuple[int, ...]]:
    """vCPU index -> the host CPUs its thread may run on (sched_getaffinity)."""
    result: dict[int, tuple[int, ...]] = {}
    for vcpu, tid in sorted(tids.items()):
        try:
            result[vcpu] = tuple(sorted(os.sched_getaffinity(tid)))
        except ProcessLookupError as exc:
            raise GuestError(f"vCPU {vcpu} thread {tid} vanished (guest died?)") from exc
    return result
