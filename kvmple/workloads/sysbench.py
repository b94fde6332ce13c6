"""sysbench 1.0 (Debian's sysbench) ``threads`` and ``mutex`` tests: the scheduler and
lock-contention micro-benchmarks that directed-yield and PV sched-yield work is measured
with. Both print the same report (sysbench's src/sysbench.c, report_cumulative)::

    General statistics:
        total time:                          2.0011s
        total number of events:              622

    Latency (ms):
             min:                                    0.57
             avg:                                   12.86
             max:                                  212.50
             95th percentile:                       24.38
             sum:                                 7999.39
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kvmple.errors import WorkloadError
from kvmple.workloads.base import Metric
from kvmple.workloads.oneshot import OneShotWorkload

_FIELDS = {
    "total_time": re.compile(r"^\s*total time:\s*([0-9.]+)s\s*$", re.MULTILINE),
    "events": re.compile(r"^\s*total number of events:\s*(\d+)\s*$", re.MULTILINE),
    "latency_avg": re.compile(r"^\s*avg:\s*([0-9.]+)\s*$", re.MULTILINE),
    "latency_max": re.compile(r"^\s*max:\s*([0-9.]+)\s*$", re.MULTILINE),
    "latency_p95": re.compile(r"^\s*95th percentile:\s*([0-9.]+)\s*$", re.MULTILINE),
}


@dataclass(frozen=True)
class SysbenchReport:
    """sysbench's cumulative report: seconds, an event count and latencies in ms."""

    total_time: float
    events: int
    latency_avg: float
    latency_max: float
    latency_p95: float

    @property
    def events_per_sec(self) -> float:
        return self.events / self.total_time if self.total_time > 0 else 0.0


def parse_sysbench(text: str, where: str = "sysbench output") -> SysbenchReport:
    """The report's figures; WorkloadError naming the first missing field."""
    values: dict[str, float] = {}
    for name, pattern in _FIELDS.items():
        found = pattern.findall(text)
        if len(found) != 1:
            raise WorkloadError(
                f"{where}: {'no' if not found else len(found)} {name.replace('_', ' ')!r} "
                f"field(s) in sysbench's report: {text.strip()[-200:]!r}",
                hint="is sysbench 1.0 installed and did the run finish?",
            )
        values[name] = float(found[0])
    return SysbenchReport(
        total_time=values["total_time"],
        events=int(values["events"]),
        latency_avg=values["latency_avg"],
        latency_max=values["latency_max"],
        latency_p95=values["latency_p95"],
    )


class SysbenchThreadsParams(BaseModel):
    """``sysbench threads`` options (sysbench's src/tests/threads)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int = Field(default=4, ge=1, le=1024, description="--threads")
    time: int = Field(default=10, ge=1, le=3600, description="--time: seconds")
    yields: int = Field(default=1000, ge=1, description="--thread-yields per event")
    locks: int = Field(default=8, ge=1, description="--thread-locks: mutexes shared")


class SysbenchMutexParams(BaseModel):
    """``sysbench mutex`` options (sysbench's src/tests/mutex): fixed work per thread."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int = Field(default=4, ge=1, le=1024, description="--threads")
    mutexes: int = Field(default=4096, ge=1, description="--mutex-num")
    locks: int = Field(default=50000, ge=1, description="--mutex-locks per thread")
    loops: int = Field(default=10000, ge=0, description="--mutex-loops outside the lock")


def _latencies(report: SysbenchReport) -> dict[str, float]:
    return {"latency_avg": report.latency_avg, "latency_p95": report.latency_p95}


class SysbenchThreads(OneShotWorkload[SysbenchThreadsParams]):
    """``sysbench threads``: events per second over ``time`` s (higher is better)."""

    name: ClassVar[str] = "sysbench-threads"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("events_per_sec", "events/s", True, "events / sysbench's total time"),
        Metric("latency_avg", "ms", False, "mean event latency"),
        Metric("latency_p95", "ms", False, "95th percentile event latency"),
    )
    primary: ClassVar[str] = "events_per_sec"
    params_model: ClassVar[type[BaseModel]] = SysbenchThreadsParams
    program: ClassVar[str] = "sysbench"
    package: ClassVar[str] = "sysbench"

    def argv(self, params: SysbenchThreadsParams) -> list[str]:
        return [
            "sysbench",
            "threads",
            f"--threads={params.threads}",
            f"--time={params.time}",
            f"--thread-yields={params.yields}",
            f"--thread-locks={params.locks}",
            "run",
        ]

    def parse(self, text: str, where: str) -> tuple[dict[str, float], tuple[str, ...]]:
        report = parse_sysbench(text, where)
        figures = {"events_per_sec": report.events_per_sec, **_latencies(report)}
        return {**figures, "time": report.total_time}, (f"{report.events} events",)


class SysbenchMutex(OneShotWorkload[SysbenchMutexParams]):
    """``sysbench mutex``: seconds for a fixed amount of locking (lower is better)."""

    name: ClassVar[str] = "sysbench-mutex"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("time", "s", False, "sysbench's total time for the fixed work"),
        Metric("latency_avg", "ms", False, "mean per-thread latency"),
        Metric("latency_p95", "ms", False, "95th percentile per-thread latency"),
    )
    primary: ClassVar[str] = "time"
    params_model: ClassVar[type[BaseModel]] = SysbenchMutexParams
    program: ClassVar[str] = "sysbench"
    package: ClassVar[str] = "sysbench"

    def argv(self, params: SysbenchMutexParams) -> list[str]:
        return [
            "sysbench",
            "mutex",
            f"--threads={params.threads}",
            f"--mutex-num={params.mutexes}",
            f"--mutex-locks={params.locks}",
            f"--mutex-loops={params.loops}",
            "run",
        ]

    def parse(self, text: str, where: str) -> tuple[dict[str, float], tuple[str, ...]]:
        report = parse_sysbench(text, where)
        return {"time": report.total_time, **_latencies(report)}, ()
