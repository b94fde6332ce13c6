"""What every night step gets: the step context (config, state, log, commands run and
logged), and the two ways a step ends other than success: ``Skip`` and ``RebootPending``."""

from __future__ import annotations

import os
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmple import events, paths
from kvmple.events import Sink
from kvmple.nightly.config import LoadedConfig, NightlyConfig
from kvmple.nightly.outputs import StepOutputs
from kvmple.nightly.state import NightState
from kvmple.run import Result, failure, run

NOT_VERIFIED = "not verified on hardware"


class Skip(Exception):
    """The step does not apply here; the message says why (recorded as 'skipped', with
    ``outputs``: e.g. the install plan that would have run)."""

    def __init__(self, message: str, outputs: StepOutputs | None = None) -> None:
        super().__init__(message)
        self.outputs = outputs


class RebootPending(Exception):
    """The kernel was installed and the host reboots into it; the night continues after."""


@dataclass
class StepContext:
    loaded: LoadedConfig
    state: NightState
    directory: Path
    log_path: Path
    sink: Sink = events.discard  # what the step's engine calls report (campaign, build)

    @property
    def config(self) -> NightlyConfig:
        return self.loaded.config

    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.log_path.open("a", encoding="utf-8") as handle:
            for line in text.rstrip("\n").splitlines() or [""]:
                handle.write(f"{stamp} {line}\n")

    def cmd(
        self,
        argv: Sequence[str | Path],
        *,
        timeout: float,
        what: str,
        check: bool = True,
        cwd: Path | None = None,
    ) -> Result:
        """Run a command, logging it and its output to the step log."""
        self.log("$ " + shlex.join(str(a) for a in argv))
        result = run(argv, timeout=timeout, what=what, check=False, cwd=cwd)
        for label, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            if text.strip():
                self.log(f"[{label}]\n{text}")
        self.log(f"[exit {result.returncode} after {result.duration:.1f}s]")
        if check and not result.ok:
            raise failure(result, what, hint=f"step log: {self.log_path}")
        return result


# a step returns (detail line, its outputs)
StepFunction = Callable[[StepContext], tuple[str, StepOutputs]]


def host_name() -> str:
    """The host's name as nights and campaigns record it (KVMPLE_HOSTNAME overrides)."""
    return os.environ.get("KVMPLE_HOSTNAME") or socket.gethostname()


def work_dir(config: NightlyConfig) -> Path:
    """The job's work area (patched worktree, build directory), reused night after night."""
    return paths.cache_dir() / "nightly" / "work" / config.name
