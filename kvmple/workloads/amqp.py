"""The AMQP perftest workload: RabbitMQ in the guest, kvmple-perftest (or qpid-perftest).

``prepare`` ships the guest programs and waits until the broker really accepts AMQP (a real
publish/get round trip, not "service active"), starting the systemd unit if the guest has
one. ``measure`` runs one perftest with ``--machine`` and returns a ``Measurement`` with the
figures, the CPU split broker vs clients and the raw output; any failure (bad options, broker
refusing or dying, a hung client, lost or duplicated messages, a timeout) raises
``WorkloadError`` with the program's own reason. With ``before_window`` the clients start
first and the callback (a campaign starts the other guest's load there) runs just before the
timed window; ``after_window`` (the load stops) runs as soon as the window is over. A run
that succeeds deletes its own queues; ``between_runs`` deletes whatever a failed run left,
so runs never leak into each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from kvmple.errors import CommandError, CommandTimeout, InputError, WorkloadError
from kvmple.executor import Executor
from kvmple.guest.kvmple_guest import protocol
from kvmple.run import Result
from kvmple.workloads.base import CpuSplit, Measurement, Metric, Params, parse_params
from kvmple.workloads.perftest_output import machine_record, parse_perftest
from kvmple.workloads.programs import GUEST_BIN, ensure_programs, program_argv

PROGRAM = protocol.PERFTEST


class PerftestParams(BaseModel):
    """Parameters of one perftest run (qpid-perftest's option names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    npubs: int = Field(default=1, ge=1, le=64, description="publishers per queue (processes)")
    nsubs: int = Field(default=1, ge=1, le=64, description="subscribers per queue (processes)")
    count: int = Field(default=5000, ge=1, description="messages per publisher")
    size: int = Field(default=16, ge=8, description="message size in bytes (>= 8: id + seq)")
    qt: int = Field(default=1, ge=1, le=64, description="queues (shared mode)")
    iterations: int = Field(default=1, ge=1, description="iterations in one run")
    mode: Literal["shared", "fanout"] = Field(default="shared", description="test mode")
    engine: Literal["kvmple", "qpid", "naive"] = Field(
        default="kvmple",
        description="kvmple-perftest; qpid = the guest's own qpid-perftest; naive = the "
        "single-connection python-amqp baseline",
    )
    broker: str = Field(default="127.0.0.1:5672", description="host:port of the broker")
    client_timeout: float = Field(
        default=0,
        ge=0,
        description="seconds per iteration before the clients give up "
        "(0: derived from the run timeout)",
    )

    def argv(self) -> list[str]:
        """The perftest options these parameters stand for."""
        return [
            f"--npubs={self.npubs}",
            f"--nsubs={self.nsubs}",
            f"--count={self.count}",
            f"--size={self.size}",
            f"--qt={self.qt}",
            f"--iterations={self.iterations}",
            f"--mode={self.mode}",
        ]


class AmqpPerftest:
    """The measured workload of the RFC: AMQP throughput in transfers/sec."""

    name: ClassVar[str] = "amqp-perftest"
    kind: ClassVar[str] = "measure"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("transfers_per_sec", "transfers/s", True, "sends + receives per second"),
        Metric("pubs_per_sec", "msgs/s", True, "mean publisher rate"),
        Metric("subs_per_sec", "msgs/s", True, "mean subscriber rate"),
        Metric("mbytes_per_sec", "MiB/s", True, "transfers/sec x size"),
    )
    primary: ClassVar[str] = "transfers_per_sec"
    params_model: ClassVar[type[BaseModel]] = PerftestParams

    def __init__(self, *, bin_dir: str = GUEST_BIN) -> None:
        self.bin_dir = bin_dir

    def _argv(self, *args: str) -> list[str]:
        return program_argv(PROGRAM, *args, bin_dir=self.bin_dir)

    def prepare(
        self,
        executor: Executor,
        *,
        timeout: float,
        params: Params | None = None,
    ) -> None:
        p = parse_params(PerftestParams, params or {}, where=f"workload {self.name} params")
        ensure_programs(executor, bin_dir=self.bin_dir)
        wait_for_broker(executor, self._argv(f"--broker={p.broker}", "--probe"), timeout=timeout)

    def measure(
        self,
        executor: Executor,
        params: Params,
        *,
        timeout: float,
        before_window: Callable[[], None] | None = None,
        after_window: Callable[[], None] | None = None,
    ) -> Measurement:
        p = parse_params(PerftestParams, params, where=f"workload {self.name} params")
        # The clients give up first (with the reason); the executor's timeout is the backstop.
        client_timeout = p.client_timeout or max(5.0, (timeout - 10) / p.iterations)
        common = [f"--broker={p.broker}", f"--timeout={client_timeout:g}", "--machine"]
        staged = False
        if p.engine == "qpid":
            qpid = ["qpid-perftest", *p.argv(), f"--broker={p.broker.split(':')[0]}"]
            argv = self._argv(*common, "--external", "--", *qpid)
        elif p.engine == "naive":
            argv = self._argv(
                *common,
                "--naive",
                f"--count={p.count}",
                f"--size={p.size}",
                f"--iterations={p.iterations}",
            )
        else:
            if before_window is not None:
                staged = True
                common.append("--wait-go")
            argv = self._argv(*common, *p.argv())
        try:
            if not staged:
                if before_window is not None:
                    before_window()  # engines without a ready point start after the load
                result = executor.run(argv, timeout=timeout, check=False, what="perftest")
                if after_window is not None:
                    after_window()
            else:
                assert before_window is not None
                signal = _GoSignal(before_window, after_window)
                result = executor.stream(
                    argv, signal.on_line, timeout=timeout, check=False, what="perftest"
                )
        except CommandTimeout as exc:
            raise WorkloadError(
                f"perftest on {executor.name} did not finish within {timeout:g}s: {exc.message}",
                hint="the broker or a client hung; a timed-out run has no figures",
            ) from exc
        return measurement_from_result(self.name, p, result, executor.name)

    def between_runs(self, executor: Executor, params: Params) -> None:
        p = parse_params(PerftestParams, params, where=f"workload {self.name} params")
        result = executor.run(
            self._argv(f"--broker={p.broker}", "--cleanup", f"--qt={p.qt}"),
            timeout=120,
            check=False,
            what="perftest cleanup",
        )
        if not result.ok:
            raise WorkloadError(
                f"could not delete the perftest queues on {executor.name}: {_reason(result)}",
                hint="is the broker still running?",
            )


class _GoSignal:
    """Frames the timed window of a perftest run with --wait-go. When the program says its
    clients are ready, run ``before_window`` (the other guest's busy loops start and are
    verified), then answer "go" on its stdin; when it says the window is over, run
    ``after_window`` (the loops stop). If ``before_window`` fails, the executor closes the
    program's stdin, which calls the run off (the program cleans up and exits), and the
    error propagates.

    Client start-up and wind-down (interpreter, forks, connections, queue deletion) thus
    happen without the load, as they would on a host where the perftest is long running;
    under TCG they took up to ~10 s per run on starved vCPUs, outside any timed window."""

    def __init__(
        self, before_window: Callable[[], None], after_window: Callable[[], None] | None
    ) -> None:
        self.before_window = before_window
        self.after_window = after_window
        self.seen: set[str] = set()

    def on_line(self, line: str) -> str | None:
        line = line.strip()
        if line not in (protocol.READY_LINE, protocol.WINDOW_END_LINE) or line in self.seen:
            return None
        self.seen.add(line)
        if line == protocol.READY_LINE:
            self.before_window()
            return f"{protocol.GO_WORD}\n"
        if self.after_window is not None:
            self.after_window()
        return None


def _reason(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or [f"exit {result.returncode}, no message"])[-1].strip()


def measurement_from_result(
    workload: str, p: PerftestParams, result: Result, where: str
) -> Measurement:
    """Turn the perftest's output into a Measurement, or raise WorkloadError with the reason."""
    if result.returncode == protocol.PerftestExit.USAGE:
        raise WorkloadError(f"perftest rejected its options: {_reason(result)}")
    if result.returncode == protocol.PerftestExit.TIMEOUT:
        raise WorkloadError(f"perftest timed out on {where}: {_reason(result)}")
    if not result.ok:
        raise WorkloadError(f"perftest failed on {where}: {_reason(result)}")
    try:
        report = parse_perftest(result.stdout, where=f"perftest output on {where}")
    except InputError as exc:  # our own run printed no known report: the workload failed
        raise WorkloadError(exc.message, hint=exc.hint) from None
    record = machine_record(result.stdout)
    cpu: CpuSplit | None = None
    notes: tuple[str, ...]
    if p.engine == "qpid":
        cpu = CpuSplit.from_json(record["cpu"]) if record and record.get("cpu") else None
        notes = ("qpid-perftest's own figures; CPU split measured around its whole run",)
    else:
        cpus = [it.cpu for it in report.iterations if it.cpu is not None]
        cpu = _mean_cpu(cpus) if cpus else None
        notes = ()
    if report.warnings:
        notes += report.warnings
    n = len(report.iterations)
    pubs = [it.pubs_per_sec for it in report.iterations if it.pubs_per_sec is not None]
    figures = {
        "transfers_per_sec": report.transfers_per_sec,
        "subs_per_sec": sum(it.subs_per_sec for it in report.iterations) / n,
        "mbytes_per_sec": sum(it.mbytes_per_sec for it in report.iterations) / n,
    }
    if len(pubs) == n:
        figures["pubs_per_sec"] = sum(pubs) / n
    seconds = [it.seconds for it in report.iterations if it.seconds is not None]
    window = sum(seconds) if seconds else (cpu.window_s if cpu else result.duration)
    return Measurement(
        workload=workload,
        params=p.model_dump(),
        figures=figures,
        primary="transfers_per_sec",
        window_s=window,
        raw_output=result.stdout,
        iterations=tuple(
            {
                k: v
                for k, v in {
                    "transfers_per_sec": it.transfers_per_sec,
                    "pubs_per_sec": it.pubs_per_sec,
                    "subs_per_sec": it.subs_per_sec,
                    "mbytes_per_sec": it.mbytes_per_sec,
                    "seconds": it.seconds,
                }.items()
                if v is not None
            }
            for it in report.iterations
        ),
        cpu=cpu,
        notes=notes,
    )


def _mean_cpu(splits: list[CpuSplit]) -> CpuSplit:
    """Window-weighted mean of per-iteration CPU splits."""
    total = sum(s.window_s for s in splits) or 1.0

    def w(attr: str) -> float:
        return round(sum(float(getattr(s, attr)) * s.window_s for s in splits) / total, 4)

    return CpuSplit(
        window_s=sum(s.window_s for s in splits),
        ncpu=splits[0].ncpu,
        broker=w("broker"),
        clients=w("clients"),
        other=w("other"),
        idle=w("idle"),
    )


def wait_for_broker(executor: Executor, probe: list[str], *, timeout: float) -> float:
    """Probe until the broker completes a real AMQP round trip; returns seconds waited.

    If the first probe fails and the machine has a rabbitmq-server systemd unit, that unit is
    started and waited for: ``systemctl start`` returns when RabbitMQ tells systemd it is
    ready (Type=notify), so a guest whose broker is still starting costs one waiting command
    instead of a probe (an interpreter start) every 2 s competing with the broker for its
    vCPUs; a guest whose broker is not enabled still comes up.
    """
    start = time.monotonic()
    deadline = start + timeout
    tried_unit = False
    last = "no probe ran"
    while True:
        remaining = deadline - time.monotonic()
        try:
            result = executor.run(
                probe, timeout=max(5.0, min(30.0, remaining)), check=False, what="broker probe"
            )
            if result.ok:
                return time.monotonic() - start
            last = _reason(result)
        except CommandTimeout as exc:
            last = exc.message
        if not tried_unit:
            tried_unit = True
            if _start_unit(executor, timeout=max(5.0, deadline - time.monotonic())):
                continue  # it reports ready: probe again at once
        if time.monotonic() >= deadline:
            raise WorkloadError(
                f"the AMQP broker on {executor.name} did not accept connections within "
                f"{timeout:g}s: {last}",
                hint="check the broker's log (journalctl -u rabbitmq-server in a guest; "
                "scripts/test-rabbitmq.sh on a test host)",
            )
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _start_unit(executor: Executor, *, timeout: float) -> bool:
    """Start rabbitmq-server and wait until systemd has it active; False if there is no
    such unit (or no systemd: a test host), it failed, or it took longer than ``timeout``."""
    try:
        probe = executor.run(
            ["systemctl", "cat", "rabbitmq-server.service"],
            timeout=30,
            check=False,
            what="looking for the rabbitmq-server unit",
        )
        if not probe.ok:
            return False
        started = executor.run(
            ["systemctl", "start", "rabbitmq-server.service"],
            timeout=timeout,
            check=False,
            what="starting rabbitmq-server",
        )
        return started.ok
    except CommandError:
        return False  # no systemd here, or it took too long: keep probing until the deadline
