"""Where a command runs: the local host or a guest over SSH, behind one small interface.

Workloads and checks are written against ``Executor`` so the same code runs on the host (fast
tests against a local broker) and in a guest (``kvmple.remote.SSHExecutor``). Both return
``kvmple.run.Result`` (fabric's Runner/Remote idea: one shape for local and remote).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from kvmple.run import Result, run, run_streaming


@runtime_checkable
class Executor(Protocol):
    """Run argv lists and move files on one machine."""

    @property
    def name(self) -> str:
        """Human label used in messages ("local", "guest amqp (127.0.0.1:2222)")."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> Result:
        """Run ``argv`` (quoted for the remote shell where there is one) and wait for it."""
        ...

    def stream(
        self,
        argv: Sequence[str],
        on_line: Callable[[str], str | None],
        timeout: float | None,
        *,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> Result:
        """Like ``run`` but hands every stdout line to ``on_line`` as it arrives; text it
        returns is written to the command's stdin, which stays open until the command ends."""
        ...

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy a local file to ``remote`` (absolute path), creating parent directories."""
        ...

    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to the local file ``local``."""
        ...


class LocalExecutor:
    """The host itself."""

    name = "local"

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> Result:
        return run(argv, timeout=timeout, check=check, input=input, env=env, what=what)

    def stream(
        self,
        argv: Sequence[str],
        on_line: Callable[[str], str | None],
        timeout: float | None,
        *,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> Result:
        return run_streaming(argv, on_line, timeout=timeout, check=check, env=env, what=what)

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        target = Path(remote)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
        os.chmod(target, mode)

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)
