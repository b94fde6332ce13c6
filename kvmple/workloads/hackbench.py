"""hackbench (Debian's rt-tests): the scheduler benchmark later directed-yield work used.

Proves the workload interface is general: a measured workload with its own parameters, its
own output parser and a lower-is-better metric. hackbench prints::

    Running in process mode with 10 groups using 40 file descriptors each (== 400 tasks)
    Each sender will pass 100 messages of 100 bytes
    Time: 0.448
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kvmple.errors import CommandTimeout, WorkloadError
from kvmple.executor import Executor
from kvmple.workloads.base import Measurement, Metric, parse_params
from kvmple.workloads.programs import GUEST_BIN

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


class Hackbench:
    """hackbench: seconds for all groups to pass their messages (lower is better)."""

    name: ClassVar[str] = "hackbench"
    kind: ClassVar[str] = "measure"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("time", "s", False, "hackbench's 'Time:' for the whole run"),
    )
    primary: ClassVar[str] = "time"
    params_model: ClassVar[type[BaseModel]] = HackbenchParams

    def __init__(self, *, bin_dir: str = GUEST_BIN) -> None:
        self.bin_dir = bin_dir  # uniform constructor; hackbench comes from rt-tests

    def prepare(
        self,
        executor: Executor,
        *,
        timeout: float,
        params: Mapping[str, Any] | BaseModel | None = None,
    ) -> None:
        result = executor.run(
            ["hackbench", "--help"], timeout=min(timeout, 60), check=False, what="hackbench"
        )
        if "hackbench" not in (result.stdout + result.stderr):
            raise WorkloadError(
                f"hackbench is not usable on {executor.name}",
                hint="install Debian's rt-tests package (the debian12-amqp image has it)",
            )

    def measure(
        self,
        executor: Executor,
        params: Mapping[str, Any] | BaseModel,
        *,
        timeout: float,
        before_window: Callable[[], None] | None = None,
        after_window: Callable[[], None] | None = None,
    ) -> Measurement:
        p = parse_params(HackbenchParams, params, where=f"workload {self.name} params")
        if before_window is not None:
            before_window()  # hackbench's start-up is part of what it times: nothing to stage
        try:
            result = executor.run(p.argv(), timeout=timeout, check=False, what="hackbench")
        except CommandTimeout as exc:
            raise WorkloadError(
                f"hackbench on {executor.name} did not finish within {timeout:g}s",
                hint="use fewer --loops/--groups, or a longer run timeout",
            ) from exc
        if after_window is not None:
            after_window()
        if not result.ok:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise WorkloadError(
                f"hackbench failed on {executor.name} (exit {result.returncode}): {tail[0]}"
            )
        seconds = parse_hackbench(result.stdout, where=f"hackbench output on {executor.name}")
        mode = _MODE.search(result.stdout)
        notes = (mode.group(0),) if mode else ()
        return Measurement(
            workload=self.name,
            params=p.model_dump(),
            figures={"time": seconds},
            primary="time",
            window_s=seconds,
            raw_output=result.stdout,
            iterations=({"time": seconds},),
            notes=notes,
        )

    def between_runs(self, executor: Executor, params: Mapping[str, Any] | BaseModel) -> None:
        """hackbench leaves nothing behind."""
