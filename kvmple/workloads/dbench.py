"""dbench (Debian's dbench 4.0): the file-system/scheduler load that vCPU-scheduling work
reports over over-subscribed VMs (e.g. Wanpeng Li's 2025 "semantics-aware vCPU scheduling"
RFC). Its final line is the figure::

    Throughput 130.124 MB/sec  2 clients  2 procs  max_latency=70.212 ms
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kvmple.errors import WorkloadError
from kvmple.executor import Executor
from kvmple.workloads.base import Metric, Params, parse_params
from kvmple.workloads.oneshot import OneShotWorkload

_THROUGHPUT = re.compile(
    r"^Throughput\s+([0-9.]+)\s+MB/sec\s+(\d+)\s+clients\s+(\d+)\s+procs"
    r"\s+max_latency=([0-9.]+)\s+ms\s*$",
    re.MULTILINE,
)


class DbenchParams(BaseModel):
    """dbench 4.0's options (man 1 dbench)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clients: int = Field(default=4, ge=1, le=1024, description="number of simulated clients")
    time: int = Field(default=10, ge=1, le=3600, description="-t: run time in seconds")
    loadfile: str = Field(
        default="/usr/share/dbench/client.txt", description="-c: the NetBench load file"
    )
    directory: str = Field(
        default="/var/tmp/kvmple-dbench", description="-D: where the clients work"
    )

    def argv(self) -> list[str]:
        return [
            "dbench",
            f"--timelimit={self.time}",
            f"--loadfile={self.loadfile}",
            f"--directory={self.directory}",
            str(self.clients),
        ]


def parse_dbench(text: str, where: str = "dbench output") -> dict[str, float]:
    """``{"throughput": MB/s, "max_latency": ms, "clients": n}`` from the final line;
    WorkloadError when there is not exactly one."""
    found = _THROUGHPUT.findall(text)
    if len(found) != 1:
        what = "no 'Throughput ... MB/sec' line" if not found else f"{len(found)} such lines"
        raise WorkloadError(
            f"{where}: {what}: {text.strip()[-200:]!r}",
            hint="is dbench installed, its load file present, and did the run finish?",
        )
    mbps, clients, _procs, latency = found[0]
    return {"throughput": float(mbps), "max_latency": float(latency), "clients": float(clients)}


class Dbench(OneShotWorkload[DbenchParams]):
    """dbench: file-system throughput in MB/s over ``time`` seconds (higher is better)."""

    name: ClassVar[str] = "dbench"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("throughput", "MB/s", True, "dbench's final 'Throughput' over the run"),
        Metric("max_latency", "ms", False, "the slowest operation dbench saw"),
    )
    primary: ClassVar[str] = "throughput"
    params_model: ClassVar[type[BaseModel]] = DbenchParams
    program: ClassVar[str] = "dbench"
    package: ClassVar[str] = "dbench"

    def argv(self, params: DbenchParams) -> list[str]:
        return params.argv()

    def parse(self, text: str, where: str) -> tuple[dict[str, float], tuple[str, ...]]:
        figures = parse_dbench(text, where)
        clients = int(figures.pop("clients"))
        return figures, (f"{clients} clients",)

    def window_s(self, figures: Mapping[str, float], params: DbenchParams) -> float:
        return float(params.time)

    def prepare(
        self,
        executor: Executor,
        *,
        timeout: float,
        params: Params | None = None,
    ) -> None:
        """dbench present and its working directory created (dbench does not create it)."""
        super().prepare(executor, timeout=timeout, params=params)
        p = parse_params(DbenchParams, params or {}, where=f"workload {self.name} params")
        executor.run(["mkdir", "-p", p.directory], timeout=min(timeout, 60), what="dbench dir")

    def between_runs(self, executor: Executor, params: Params) -> None:
        """Remove the client trees a killed run left (dbench's own cleanup did not run)."""
        p = parse_params(DbenchParams, params, where=f"workload {self.name} params")
        executor.run(
            ["rm", "-rf", "--one-file-system", f"{p.directory}/clients"],
            timeout=120,
            what="dbench clean-up",
        )
