"""kvmple-perftest's CPU accounting: who used the guest's CPUs during a window.

Sources (proc(5)): /proc/PID/stat fields 14 and 15 (utime, stime: scheduler run time of all
threads), /proc/PID/comm (to find the broker), /proc/uptime's second field (idle time).
"""

from __future__ import annotations

import os
import time

from .protocol import CpuRecord

BROKER_COMMS = ("beam.smp", "erl_child_setup", "epmd", "inet_gethost")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def idle_seconds() -> float:
    """Idle time of all CPUs together since boot (/proc/uptime's second field).

    Clock-based on NO_HZ kernels, unlike /proc/stat's tick samples, which undercount badly in
    a TCG guest whose vCPU threads the host deschedules (ticks are lost, clocks are not).
    """
    with open("/proc/uptime") as f:
        return float(f.read().split()[1])


def process_jiffies(pid: int) -> int | None:
    """utime+stime of one process (all its threads); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15 of proc(5)


def broker_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in BROKER_COMMS:
            pids.append(int(entry))
    return pids


def _snapshot(pids: list[int]) -> dict[int, int]:
    found = {pid: process_jiffies(pid) for pid in pids}
    return {pid: j for pid, j in found.items() if j is not None}


def _used(start: dict[int, int]) -> int:
    """CPU jiffies used since ``start`` by the processes that were there then."""
    total = 0
    for pid, before in start.items():
        now = process_jiffies(pid)
        if now is not None and now >= before:  # gone, or a reused pid: not counted
            total += now - before
    return total


def own_jiffies() -> int:
    t = os.times()
    return round((t.user + t.system) * CLK_TCK)


class CpuWindow:
    """Guest CPU time split over a window: broker processes, our clients, the rest, idle.

    Fractions of the window's CPU capacity (online CPUs x wall time), so they sum to ~1.
    Process times come from /proc/PID/stat (scheduler run time), idle from /proc/uptime.
    """

    def __init__(self, client_pids: list[int]) -> None:
        self.ncpu = os.sysconf("SC_NPROCESSORS_ONLN")
        brokers = broker_pids()
        self.broker_found = bool(brokers)
        self.brokers0 = _snapshot(brokers)
        self.clients0 = _snapshot(list(client_pids))
        self.own0 = own_jiffies()
        self.idle0 = idle_seconds()
        self.t0 = time.monotonic()

    def finish(self) -> CpuRecord:
        window = max(1e-6, time.monotonic() - self.t0)
        idle = max(0.0, idle_seconds() - self.idle0)
        broker = _used(self.brokers0) / CLK_TCK
        clients = (_used(self.clients0) + own_jiffies() - self.own0) / CLK_TCK
        capacity = self.ncpu * window
        shares = {
            "broker": min(1.0, broker / capacity),
            "clients": min(1.0, clients / capacity),
            "idle": min(1.0, idle / capacity),
        }
        other = max(0.0, 1.0 - sum(shares.values()))
        return {
            "window_s": round(window, 6),
            "ncpu": self.ncpu,
            "broker_s": round(broker, 3),
            "clients_s": round(clients, 3),
            "idle_s": round(idle, 3),
            "broker_found": self.broker_found,
            "broker": round(shares["broker"], 4),
            "clients": round(shares["clients"], 4),
            "idle": round(shares["idle"], 4),
            "other": round(other, 4),
        }
