"""Measured workloads that are one command in the guest: run it, parse its report.

hackbench, dbench and sysbench all work this way: their start-up is part of what they time
(nothing to stage before the window), they print one report at the end and leave nothing
behind. A subclass gives the program name, the argv for its parameters and a parser that
turns the report into figures; this class does the running, the timeout and failure wording
and the ``Measurement`` they all return.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel

from kvmple.errors import CommandTimeout, WorkloadError
from kvmple.executor import Executor
from kvmple.workloads.base import Measurement, Metric, Params, parse_params
from kvmple.workloads.programs import GUEST_BIN

PM = TypeVar("PM", bound=BaseModel)


class OneShotWorkload(Generic[PM]):
    """Base of measured workloads that are a single command with a final report.

    Subclasses (``OneShotWorkload[TheirParams]``) set ``name``, ``metrics``, ``primary``,
    ``params_model`` (TheirParams), ``program`` (the executable, for the presence check) and
    ``package`` (the Debian package that has it), and implement :meth:`argv` and :meth:`parse`.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "measure"
    metrics: ClassVar[tuple[Metric, ...]]
    primary: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    program: ClassVar[str]
    package: ClassVar[str]

    def __init__(self, *, bin_dir: str = GUEST_BIN) -> None:
        self.bin_dir = bin_dir  # uniform constructor; these programs come from Debian

    def argv(self, params: PM) -> list[str]:
        """The command for validated ``params`` (an instance of ``params_model``)."""
        raise NotImplementedError

    def parse(self, text: str, where: str) -> tuple[dict[str, float], tuple[str, ...]]:
        """(figures by metric name, notes) from the program's output; WorkloadError if none."""
        raise NotImplementedError

    def window_s(self, figures: Mapping[str, float], params: PM) -> float:
        """How long the measured window was, in seconds (default: the 'time' figure)."""
        return float(figures.get("time", 0.0))

    def prepare(
        self,
        executor: Executor,
        *,
        timeout: float,
        params: Params | None = None,
    ) -> None:
        """WorkloadError unless ``program`` is on the machine's PATH."""
        found = executor.run(
            ["sh", "-c", 'command -v "$1"', "sh", self.program],
            timeout=min(timeout, 60),
            check=False,
            what=f"{self.name}: look for {self.program}",
        )
        if not found.ok:
            raise WorkloadError(
                f"{self.program} is not installed on {executor.name}",
                hint=f"install Debian's {self.package} package (the debian12-amqp image has it)",
            )

    def measure(
        self,
        executor: Executor,
        params: Params,
        *,
        timeout: float,
        before_window: Callable[[], None] | None = None,
        after_window: Callable[[], None] | None = None,
    ) -> Measurement:
        """Run the command once; WorkloadError on a timeout, a failure or no report."""
        # params_model is the subclass's PM (a ClassVar cannot name the type variable)
        p = cast(PM, parse_params(self.params_model, params, where=f"workload {self.name} params"))
        if before_window is not None:
            before_window()  # start-up is part of what the program times: nothing to stage
        try:
            result = executor.run(self.argv(p), timeout=timeout, check=False, what=self.name)
        except CommandTimeout as exc:
            raise WorkloadError(
                f"{self.name} on {executor.name} did not finish within {timeout:g}s",
                hint="ask for less work in its params, or a longer run timeout",
            ) from exc
        finally:
            if after_window is not None:
                after_window()
        if not result.ok:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise WorkloadError(
                f"{self.name} failed on {executor.name} (exit {result.returncode}): {tail[0]}"
            )
        figures, notes = self.parse(result.stdout, f"{self.name} output on {executor.name}")
        return Measurement(
            workload=self.name,
            params=p.model_dump(),
            figures=figures,
            primary=self.primary,
            window_s=self.window_s(figures, p),
            raw_output=result.stdout,
            iterations=(dict(figures),),
            notes=notes,
        )

    def between_runs(self, executor: Executor, params: Params) -> None:
        """Nothing to remove: each run cleans up after itself."""
