"""hackbench (Debian's rt-tests): the scheduler benchmark later directed-yield work used.

Proves the workload interface is general: a measured workload with its own parameters, its
own output parser and a lower-is-better metric. hackbench prints::

    Running in process mode with 10 groups using 40 file descriptors each (== 400 tasks)
    Each sender will pass 100 messages of 100 bytes
    Time: 0.448
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kvmple.errors import WorkloadError
from kvmple.workloads.base import Metric
from kvmple.workloads.oneshot import OneShotWorkload

_TIME = re.compile(r"^Time:\s*([0-9]+(?:\.[0-9]+)?)\s*$", re.MULTILINE)
_MODE = re.compile(r"^Running in (process|threaded) mode with (\d+) groups", re.MULTILINE)


class HackbenchParams(BaseModel):
    """hackbench's options (rt-tests 2.x names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    groups: int = Field(default=4, ge=1, le=1000, description="-g: groups of senders/receivers")
    loops: int = Field(default=100, ge=1, description="-l: messages each sender sends")
    fds: int = Field(default=20, ge=1, le=1000, description="-f: file descriptors per group side")
    datasize: int = Field(default=100, ge=1, description="-s: bytes per message")
    threads: bool = Field(default=False, description="-T: threads instead of processes")
    pipe: bool = Field(default=False, description="-p: pipes instead of socketpairs")

    def argv(self) -> list[str]:
        argv = [
            "hackbench",
            f"--groups={self.groups}",
            f"--loops={self.loops}",
            f"--fds={self.fds}",
            f"--datasize={self.datasize}",
        ]
        if self.threads:
            argv.append("--threads")
        if self.pipe:
            argv.append("--pipe")
        return argv


def parse_hackbench(text: str, where: str = "hackbench output") -> float:
    """The 'Time: X' figure in seconds; WorkloadError when there is none."""
    found = _TIME.findall(text)
    if not found:
        raise WorkloadError(
            f"{where}: no 'Time:' line: {text.strip()[-200:]!r}",
            hint="is rt-tests (hackbench) installed and did the run finish?",
        )
    if len(found) > 1:
        raise WorkloadError(f"{where}: {len(found)} 'Time:' lines; expected one run's output")
    return float(found[0])


class Hackbench(OneShotWorkload[HackbenchParams]):
    """hackbench: seconds for all groups to pass their messages (lower is better)."""

    name: ClassVar[str] = "hackbench"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("time", "s", False, "hackbench's 'Time:' for the whole run"),
    )
    primary: ClassVar[str] = "time"
    params_model: ClassVar[type[BaseModel]] = HackbenchParams
    program: ClassVar[str] = "hackbench"
    package: ClassVar[str] = "rt-tests"

    def argv(self, params: HackbenchParams) -> list[str]:
        return params.argv()

    def parse(self, text: str, where: str) -> tuple[dict[str, float], tuple[str, ...]]:
        mode = _MODE.search(text)
        return {"time": parse_hackbench(text, where)}, ((mode.group(0),) if mode else ())
