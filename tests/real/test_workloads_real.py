"""Real tier of the workloads: the real programs against a real RabbitMQ.

Part 1 (host, seconds): kvmple-perftest, kvmple-spin and hackbench through LocalExecutor
against the host RabbitMQ that scripts/test-rabbitmq.sh starts on 127.0.0.1, including the
faults: broker refusing, broker dropping every connection mid-run, a hung client, lost
messages, bad options.

Part 2 (guests, minutes): the issue's "Done when": the perftest (sizes 8 and 16) in one TCG
guest and 0/1/2 busy loops in a second guest pinned to the same host CPUs 0-1; real figures
parsed, and the throughput drop with loops running shown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmple.errors import WorkloadError
from kvmple.executor import LocalExecutor
from kvmple.run import run, which
from kvmple.workloads import (
    AmqpPerftest,
    Dbench,
    Hackbench,
    SpinLoops,
    SysbenchMutex,
    SysbenchThreads,
)
from kvmple.workloads.perftest_output import machine_record
from kvmple.workloads.programs import guest_dir
from tests.support import need, need_program, need_root

pytestmark = pytest.mark.real

BIN = str(guest_dir())  # on the host the programs run straight from the package


def _amqp_ok() -> bool:
    result = run(["/usr/bin/python3", f"{BIN}/kvmple-perftest", "--probe"], timeout=30, check=False)
    return result.ok


@pytest.fixture(scope="module")
def broker() -> str:
    need_root()
    need(Path("/usr/bin/python3").exists(), "system python3 missing")
    need_program("rabbitmq-server")
    if not _amqp_ok():
        script = Path(__file__).resolve().parents[2] / "scripts" / "test-rabbitmq.sh"
        run(["bash", str(script)], timeout=180, check=False)
    need(
        _amqp_ok(), "host RabbitMQ not accepting AMQP on 127.0.0.1:5672 (scripts/test-rabbitmq.sh)"
    )
    return "127.0.0.1:5672"


def _queues() -> list[str]:
    result = run(["rabbitmqctl", "list_queues", "-q", "name"], timeout=60)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _perftest_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if f"{BIN}/kvmple-perftest".encode() in cmdline:
                pids.add(int(entry))
    return pids


# ------------------------------------------------------------------------- host: perftest


@pytest.mark.parametrize("size", [8, 16])
def test_perftest_on_host_counts_every_message(broker: str, size: int) -> None:
    workload = AmqpPerftest(bin_dir=BIN)
    executor = LocalExecutor()
    workload.prepare(executor, timeout=60)
    params = {"npubs": 2, "nsubs": 2, "count": 4000, "size": size, "iterations": 2}
    m = workload.measure(executor, params, timeout=120)
    workload.between_runs(executor, params)
    assert m.primary == "transfers_per_sec"
    assert m.value > 0 and len(m.iterations) == 2
    for it in m.iterations:
        # transfers/sec * seconds = sends + receives = 2 publishers x 4000 x 2
        assert it["transfers_per_sec"] * it["seconds"] == pytest.approx(16000, rel=1e-6)
    assert m.figures["mbytes_per_sec"] == pytest.approx(m.value * size / 1048576, rel=1e-6)
    assert m.cpu is not None and m.cpu.broker > 0 and m.cpu.clients > 0
    total = m.cpu.broker + m.cpu.clients + m.cpu.other + m.cpu.idle
    assert total == pytest.approx(1.0, abs=0.02)
    assert not [q for q in _queues() if q.startswith("kvmple-perftest")]
    assert not _perftest_pids()


def test_perftest_fanout_and_qt_on_host(broker: str) -> None:
    workload = AmqpPerftest(bin_dir=BIN)
    executor = LocalExecutor()
    fanout = workload.measure(
        executor,
        {"npubs": 1, "nsubs": 3, "count": 2000, "size": 16, "mode": "fanout"},
        timeout=120,
    )
    assert fanout.value * fanout.window_s == pytest.approx(2000 + 3 * 2000, rel=1e-6)
    queues = workload.measure(
        executor, {"npubs": 1, "nsubs": 1, "count": 2000, "size": 8, "qt": 3}, timeout=120
    )
    assert queues.value * queues.window_s == pytest.approx(3 * 2 * 2000, rel=1e-6)
    workload.between_runs(executor, {"qt": 3})
    assert not [q for q in _queues() if q.startswith("kvmple-perftest")]


def test_naive_baseline_on_host(broker: str) -> None:
    m = AmqpPerftest(bin_dir=BIN).measure(
        LocalExecutor(), {"engine": "naive", "count": 3000, "size": 16}, timeout=120
    )
    assert m.value * m.window_s == pytest.approx(6000, rel=1e-6)


def test_broker_refusing_connections_is_a_failed_run(broker: str) -> None:
    workload = AmqpPerftest(bin_dir=BIN)
    with pytest.raises(WorkloadError, match=r"did not accept connections within 3s.*refused"):
        workload.prepare(LocalExecutor(), timeout=3, params={"broker": "127.0.0.1:9"})
    with pytest.raises(WorkloadError, match=r"perftest failed on local: .*refused the AMQP"):
        workload.measure(LocalExecutor(), {"broker": "127.0.0.1:9", "count": 10}, timeout=30)


def test_bad_options_reach_the_program_as_a_clear_error(broker: str) -> None:
    result = run(
        ["/usr/bin/python3", f"{BIN}/kvmple-perftest", "--nsubs", "0"], timeout=30, check=False
    )
    assert result.returncode == 2
    assert "argument --nsubs: must be at least 1" in result.stderr


def _in_background(
    target: object, *args: object, **kwargs: object
) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            outcome["value"] = target(*args, **kwargs)  # type: ignore[operator]
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def _wait_for_clients(n: int, timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _perftest_pids()
        if len(pids) >= n:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"perftest clients did not appear (saw {_perftest_pids()})")


def test_hung_client_times_out_with_the_reason(broker: str) -> None:
    workload = AmqpPerftest(bin_dir=BIN)
    params = {"count": 2_000_000, "size": 16, "client_timeout": 6}
    thread, outcome = _in_background(workload.measure, LocalExecutor(), params, timeout=60)
    pids = _wait_for_clients(3)  # controller + publisher + subscriber
    time.sleep(1.0)
    stopped = []
    for pid in pids:
        if Path(f"/proc/{pid}/status").exists() and os.getppid() != pid:
            status = Path(f"/proc/{pid}/status").read_text()
            ppid = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
            if ppid in pids:  # a client process (its parent is the controller)
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
    assert stopped
    thread.join(60)
    error = outcome.get("error")
    assert isinstance(error, WorkloadError), outcome
    assert "timed out" in error.message and "hung" in error.message
    deadline = time.monotonic() + 15
    while _perftest_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _perftest_pids()  # the controller killed its stopped clients
    AmqpPerftest(bin_dir=BIN).between_runs(LocalExecutor(), {})


def test_broker_dropping_connections_mid_run_is_a_failed_run(broker: str) -> None:
    workload = AmqpPerftest(bin_dir=BIN)
    params = {"count": 2_000_000, "size": 16, "client_timeout": 60}
    thread, outcome = _in_background(workload.measure, LocalExecutor(), params, timeout=90)
    _wait_for_clients(3)
    time.sleep(1.0)
    run(["rabbitmqctl", "close_all_connections", "kvmple test: broker going away"], timeout=60)
    thread.join(90)
    error = outcome.get("error")
    assert isinstance(error, WorkloadError), outcome
    assert "perftest failed on local" in error.message
    assert "broker going away" in error.message or "Connection" in error.message
    AmqpPerftest(bin_dir=BIN).between_runs(LocalExecutor(), {})


def _broker_pids() -> list[int]:
    result = run(["pgrep", "-u", "rabbitmq", "-f", "beam"], timeout=10, check=False)
    return [int(pid) for pid in result.stdout.split()]


def test_broker_stalling_mid_run_is_survived(broker: str) -> None:
    """A broker that stops reading for seconds (a starved vCPU under the very overcommit we
    measure) must slow the run down, not kill it: py-amqp's default TCP_USER_TIMEOUT of 1 s
    turned such a stall into 'publisher 0: TimeoutError: [Errno 110]' (CI, spinners=2)."""
    workload = AmqpPerftest(bin_dir=BIN)
    params = {"count": 400_000, "size": 16, "client_timeout": 120}
    thread, outcome = _in_background(workload.measure, LocalExecutor(), params, timeout=180)
    _wait_for_clients(3)
    time.sleep(1.0)
    beams = _broker_pids()
    assert beams, "no RabbitMQ beam process to stall"
    try:
        for pid in beams:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(4.0)
    finally:
        for pid in beams:
            os.kill(pid, signal.SIGCONT)
    thread.join(180)
    assert "error" not in outcome, outcome.get("error")
    measurement = outcome["value"]
    assert measurement.value * measurement.window_s == pytest.approx(2 * 400_000, rel=1e-6)  # type: ignore[attr-defined]
    AmqpPerftest(bin_dir=BIN).between_runs(LocalExecutor(), {})


class _ResettingFront:
    """A TCP front for the broker that resets its first ``resets`` connections once the client
    has sent its protocol header (what RabbitMQ does when a handshake outlives its
    handshake_timeout), then forwards every later connection to the real broker."""

    def __init__(self, upstream: str, resets: int) -> None:
        import socket

        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.resets_left = resets
        self.reset_count = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import struct

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.resets_left > 0:
                self.resets_left -= 1
                self.reset_count += 1
                client.recv(8)  # b"AMQP\x00\x00\x09\x01"
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # linger 0: RST, the client sees ECONNRESET
                continue
            upstream = socket.create_connection(self.upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: object, dst: object) -> None:
        try:
            while data := src.recv(65536):  # type: ignore[attr-defined]
                dst.sendall(data)  # type: ignore[attr-defined]
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(2)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.listener.close()


def test_handshake_reset_by_a_starved_broker_is_retried(broker: str) -> None:
    """RabbitMQ resets a connection whose handshake took over handshake_timeout (10 s by
    default): in CI a broker starved by 2 busy loops did that, and the run failed with
    'Connection reset by peer'. The client now retries a reset within its connect timeout."""
    front = _ResettingFront(broker, resets=2)
    try:
        params = {"count": 2000, "size": 8, "broker": front.address}
        measurement = AmqpPerftest(bin_dir=BIN).measure(LocalExecutor(), params, timeout=120)
    finally:
        front.close()
    assert front.reset_count == 2
    assert measurement.value * measurement.window_s == pytest.approx(2 * 2000, rel=1e-6)


def test_before_window_runs_once_the_clients_are_ready(broker: str) -> None:
    """The campaign starts the other guest's load in before_window: by then the perftest's
    controller, publisher and subscriber are up, and the timed window starts after it."""
    seen: list[set[int]] = []
    ended: list[set[int]] = []

    def before_window() -> None:
        seen.append(_perftest_pids())
        time.sleep(1.0)  # a load starting and being verified

    def after_window() -> None:
        assert seen, "after_window before before_window"
        ended.append(_perftest_pids())

    params = {"count": 2000, "size": 8}
    measurement = AmqpPerftest(bin_dir=BIN).measure(
        LocalExecutor(), params, timeout=120, before_window=before_window, after_window=after_window
    )
    assert len(seen) == 1 and len(seen[0]) >= 3  # controller + publisher + subscriber
    assert len(ended) == 1 and ended[0]  # called while the perftest still winds down
    assert measurement.value * measurement.window_s == pytest.approx(2 * 2000, rel=1e-6)
    assert measurement.window_s < 1.0  # the 1 s wait is not in the window
    iteration = (machine_record(measurement.raw_output) or {})["iterations"][0]
    assert iteration["go_wait_s"] >= 1.0
    assert not _perftest_pids()
    assert not [q for q in _queues() if q.startswith("kvmple-perftest")]


def test_a_failing_before_window_calls_the_run_off(broker: str) -> None:
    """A load that does not start (spin verify failing, say): its error propagates, and the
    waiting perftest stops at once and cleans up instead of waiting out its timeout."""

    def before_window() -> None:
        raise WorkloadError("spin: loop 1 is not running")

    started = time.monotonic()
    with pytest.raises(WorkloadError, match="loop 1 is not running"):
        AmqpPerftest(bin_dir=BIN).measure(
            LocalExecutor(), {"count": 2000, "size": 8}, timeout=120, before_window=before_window
        )
    deadline = time.monotonic() + 20
    while _perftest_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _perftest_pids()
    assert time.monotonic() - started < 30  # not the 110 s client timeout


def test_perftest_wait_go_stop_or_end_of_input_calls_the_run_off(broker: str) -> None:
    argv = ["/usr/bin/python3", f"{BIN}/kvmple-perftest", "--count=100", "--wait-go"]
    for answer, reason in (("stop\n", "stop"), ("", "its input ended")):
        result = run(argv, input=answer, timeout=60, check=False)
        assert result.returncode == 1
        assert "KVMPLE-PERFTEST-READY" in result.stdout
        assert f"called the run off before its window: {reason}" in result.stderr
    assert not [q for q in _queues() if q.startswith("kvmple-perftest")]


def test_lost_messages_fail_the_run(broker: str) -> None:
    """A foreign consumer on the perftest's queue takes messages: the count check fails."""
    import_amqp = run(["/usr/bin/python3", "-c", "import amqp"], timeout=30, check=False)
    need(import_amqp.ok, "python3-amqp missing")
    thief_code = (
        "import amqp, time\n"
        "c = amqp.Connection(host='127.0.0.1:5672'); c.connect(); ch = c.channel()\n"
        "ch.queue_declare('kvmple-perftest.q0', durable=False, auto_delete=False)\n"
        "ch.basic_consume('kvmple-perftest.q0', callback=lambda m: None, no_ack=True)\n"
        "print('ready', flush=True)\n"
        "end = time.time() + 40\n"
        "while time.time() < end:\n"
        "    try: c.drain_events(timeout=1)\n"
        "    except Exception as e:\n"
        "        if 'timed out' not in str(e): break\n"
    )
    from kvmple.run import background

    with background(["/usr/bin/python3", "-c", thief_code]) as thief:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "kvmple-perftest.q0" not in _queues():
            time.sleep(0.2)
        assert thief.poll() is None
        with pytest.raises(WorkloadError, match=r"message check failed: \d+ lost"):
            AmqpPerftest(bin_dir=BIN).measure(
                LocalExecutor(), {"count": 3000, "size": 16, "client_timeout": 30}, timeout=60
            )
    AmqpPerftest(bin_dir=BIN).between_runs(LocalExecutor(), {})


# ------------------------------------------------------------------------- host: spin, hackbench


@pytest.fixture
def spin(tmp_path: Path) -> Iterator[SpinLoops]:
    loops = SpinLoops(bin_dir=BIN, state_file=str(tmp_path / "spin.json"))
    yield loops
    loops.stop(LocalExecutor())


@pytest.mark.parametrize("count", [0, 1, 2])
def test_spin_loops_on_host(spin: SpinLoops, count: int) -> None:
    executor = LocalExecutor()
    # The host's 2 CPUs are shared with other jobs (load 8 was seen), so "busy" is only
    # checked to be measurable here; in a guest (part 2) the loops own their vCPUs and the
    # default 60% share applies.
    params = {"count": count, "min_busy": 0.01, "sample_s": 1.0}
    spin.start(executor, params)
    status = spin.verify(executor)
    assert [loop.affinity for loop in status.loops] == [(cpu,) for cpu in range(count)]
    assert all(loop.running for loop in status.loops)
    pids = [loop.pid for loop in status.loops]
    with pytest.raises(WorkloadError, match="already running") if count else _nothing():
        spin.start(executor, params)
    spin.stop(executor)
    assert not [pid for pid in pids if _running(pid)]
    spin.stop(executor)  # idempotent


@pytest.mark.parametrize("count", [0, 2])
def test_held_spin_loops_on_host(spin: SpinLoops, count: int) -> None:
    """The campaign's way: readied, started and stopped by words on one open command; the
    status covers the loops' whole lifetime and they are gone (and reaped) after stop."""
    executor = LocalExecutor()
    params = {"count": count, "min_busy": 0.01}
    with spin.held(executor, params, timeout=60) as held:
        held.start()
        time.sleep(1.0)
        status = held.stop()
        assert held.stop() is status  # idempotent
    assert [loop.affinity for loop in status.loops] == [(cpu,) for cpu in range(count)]
    assert all(loop.running and loop.busy > 0 for loop in status.loops)
    assert status.sample_s >= 1.0 if count else True
    assert spin.problems(status, params) == []
    assert spin.problems(status, {**params, "count": count + 1})  # one loop short
    assert not [loop.pid for loop in status.loops if _running(loop.pid)]
    assert not Path(spin.state_file).exists()


def test_held_spin_called_off_or_abandoned_leaves_nothing(spin: SpinLoops) -> None:
    executor = LocalExecutor()
    # called off before the word: nothing ever ran
    with spin.held(executor, {"count": 1}, timeout=60) as held:
        pass
    assert held.stop().loops == ()
    # its controller gone (the command killed, as a timeout or a dead SSH channel does):
    # the loops die with the holding program
    held = spin.held(executor, {"count": 2}, timeout=3)
    held.start()
    pids = [loop["pid"] for loop in json.loads(Path(spin.state_file).read_text())["loops"]]
    assert all(_running(pid) for pid in pids)
    # idle-class tasks in their guest: its sshd and the holder preempt them at once
    assert {os.sched_getscheduler(pid) for pid in pids} == {os.SCHED_IDLE}
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _running(pid)]
    with pytest.raises(WorkloadError, match="kvmple-spin hold"):
        held.stop()  # it was stopped by its timeout, not asked: said so, not hidden


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie stays until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_hackbench_on_host() -> None:
    need(which("hackbench") is not None, "hackbench (rt-tests) not installed")
    bench = Hackbench()
    bench.prepare(LocalExecutor(), timeout=30)
    m = bench.measure(LocalExecutor(), {"groups": 2, "loops": 50}, timeout=120)
    assert 0 < m.value < 60 and m.figures == {"time": m.value}
    assert m.notes and "groups" in m.notes[0]


@pytest.mark.parametrize(
    ("workload", "params"),
    [
        (Dbench(), {"clients": 2, "time": 2, "directory": "/var/tmp/kvmple-dbench-test"}),
        (SysbenchThreads(), {"threads": 2, "time": 1}),
        (SysbenchMutex(), {"threads": 2, "locks": 2000, "loops": 100}),
    ],
)
def test_dbench_and_sysbench_on_host(workload: Any, params: dict[str, Any]) -> None:
    need(which(workload.program) is not None, f"{workload.package} not installed")
    workload.prepare(LocalExecutor(), timeout=30, params=params)
    m = workload.measure(LocalExecutor(), params, timeout=120)
    assert m.value > 0 and m.window_s > 0 and set(m.figures) >= {m.primary}
    workload.between_runs(LocalExecutor(), params)


# ------------------------------------------------------------------------- guests (TCG)

URI = "qemu:///system"
READY_TIMEOUT = 420.0  # TCG on a busy 2-core host; alone a guest answers in ~30 s
BROKER_TIMEOUT = 300.0  # RabbitMQ in a TCG guest: ~60-80 s alone, minutes on a busy host
PINS = ((0,), (1,))  # vCPU i -> host CPU i, in both guests: the overcommit


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, object]]:
    """Two 2-vCPU debian12-amqp guests pinned to host CPUs 0-1 (the RFC's setup at 2 CPUs)."""
    need_root()
    need_program("virsh")
    need(
        run(["virsh", "-c", URI, "uri"], timeout=30, check=False).ok,
        "libvirtd does not answer on qemu:///system (scripts/setup-host.sh starts it)",
    )
    need(len(os.sched_getaffinity(0)) >= 2, "needs host CPUs 0 and 1")
    # module-scoped: set the shared image cache and installation key by hand
    saved = {k: os.environ.get(k) for k in ("KVMPLE_CACHE_DIR", "KVMPLE_KEY_DIR")}
    os.environ["KVMPLE_CACHE_DIR"] = "/var/cache/kvmple-tests"
    os.environ["KVMPLE_KEY_DIR"] = "/var/cache/kvmple-tests/ssh"
    try:
        from kvmple.image import resolve
        from kvmple.vm.lifecycle import boot_guests
        from kvmple.vm.spec import VMSpec

        image = resolve("debian12-amqp")
        specs = [
            VMSpec(
                role=role,
                image=image,
                vcpus=2,
                memory_mib=memory,
                vcpu_pins=PINS,
                emulator_pins=(0, 1),
                accelerator="tcg",
                campaign_id="wltest",
                # a starved TCG vCPU can fail the boot-time IO-APIC timer check (seen here:
                # "Kernel panic - IO-APIC + timer doesn't work!"); skip that check
                extra_kernel_args=("no_timer_check",),
            )
            for role, memory in (("amqp", 1536), ("spin", 1024))
        ]
        with boot_guests(specs, uri=URI, ready_timeout=READY_TIMEOUT) as booted:
            yield booted[0], booted[1]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_perftest_in_guest_drops_with_busy_loops_in_the_other_guest(
    guests: tuple[object, object],
) -> None:
    """The issue's "Done when": sizes 8 and 16 against 0/1/2 loops, real figures, the drop."""
    from kvmple.workloads.programs import PROGRAMS, ensure_programs

    amqp_guest, spin_guest = guests
    amqp = amqp_guest.executor  # type: ignore[attr-defined]
    other = spin_guest.executor  # type: ignore[attr-defined]

    # Programs are shipped at run time (and are then current: nothing to copy again).
    ensure_programs(amqp)
    assert ensure_programs(amqp) == []
    perftest = AmqpPerftest()
    perftest.prepare(amqp, timeout=BROKER_TIMEOUT)
    loops = SpinLoops()
    loops.prepare(other, timeout=120)  # also stops RabbitMQ there: only the loops run
    idle_broker = other.run(["systemctl", "is-active", "rabbitmq-server"], timeout=30, check=False)
    assert idle_broker.stdout.strip() != "active"
    assert set(ensure_programs(other, PROGRAMS)) <= {"kvmple-perftest"}

    results: dict[tuple[int, int], list[float]] = {}
    splits = []
    busy: list[tuple[float, float]] = []
    # Framed as a campaign frames a run: the loops are held by one command, started once the
    # clients are ready and stopped when the window ends, and read back over that window.
    # A first version started the loops once per count, sampled them for 1 s and measured
    # 1,500-message windows: in CI a 2-loop round showed 51%/45% shares and no throughput
    # drop. Here the loops only have to run, pinned (min_busy 0.05): shares of 7-100% of
    # wall time were read over these short windows. Likely cause (to confirm): libvirt puts
    # each guest in its own cgroup with equal CPU weight, so the host splits its 2 CPUs per
    # guest, not per vCPU thread; the busy amqp guest then gets its half. The campaign test
    # judges the share at the default 60% over 18 longer windows.
    messages = 3000
    judged = {"min_busy": 0.05}
    for count in (0, 1, 2):
        for size in (8, 16):
            params = {"npubs": 1, "nsubs": 1, "count": messages, "size": size}
            with loops.held(other, {"count": count}, timeout=400) as held:
                m = perftest.measure(
                    amqp, params, timeout=300, before_window=held.start, after_window=held.stop
                )
            status = held.stop()
            assert loops.problems(status, {"count": count, **judged}) == []
            assert [loop.cpu for loop in status.loops] == list(range(count))
            busy.extend((loop.share, loop.busy) for loop in status.loops)
            assert m.value > 0 and m.cpu is not None and m.cpu.broker > 0
            assert m.value * m.window_s == pytest.approx(2 * messages, rel=1e-6)
            results.setdefault((count, size), []).append(m.value)
            splits.append((count, size, m.cpu))
        left = other.run(["pgrep", "-c", "-f", "kvmple-spin"], timeout=30, check=False)
        assert left.stdout.strip() in ("", "0")  # stopped cleanly

    mean = {key: sum(v) / len(v) for key, v in results.items()}
    report = {f"loops={c} size={s}": round(v) for (c, s), v in sorted(mean.items())}
    print("transfers/s by setting:", report)
    for c, s, cpu in splits:
        print(
            f"  loops={c} size={s}: broker {cpu.broker:.0%} clients {cpu.clients:.0%} "
            f"idle {cpu.idle:.0%}"
        )
    print(
        "busy loops (share of their vCPU, of wall time):",
        [(round(a, 2), round(b, 2)) for a, b in busy],
    )
    for size in (8, 16):
        drop = mean[(2, size)] / mean[(0, size)]
        print(f"size {size}: 2 loops / 0 loops = {drop:.2f} (RFC at 2x, no PLE: ~0.47)")
    # Judged on both sizes together (2 runs per setting): single TCG runs on a shared
    # 2-core host vary by up to 2x, the effect of 2 loops on 2 host CPUs is ~0.3-0.5x.
    by_loops = {c: sum(results[(c, 8)] + results[(c, 16)]) / 2 for c in (0, 1, 2)}
    overall = by_loops[2] / by_loops[0]
    print(f"both sizes: 1 loop / 0 = {by_loops[1] / by_loops[0]:.2f}, 2 loops / 0 = {overall:.2f}")
    assert overall < 0.85, f"no throughput drop with 2 busy loops: {overall:.2f}"

    queues = amqp.run(["rabbitmqctl", "list_queues", "-q", "name"], timeout=180)
    assert "kvmple-perftest" not in queues.stdout  # nothing leaks between runs


def test_dbench_and_sysbench_in_a_tcg_guest(guests: tuple[object, object]) -> None:
    """The modern directed-yield workloads run in the image's guest, figures parsed."""
    guest = guests[1].executor  # type: ignore[attr-defined]
    cases: list[tuple[Any, dict[str, Any]]] = [
        (Dbench(), {"clients": 2, "time": 3}),
        (SysbenchThreads(), {"threads": 2, "time": 2}),
        (SysbenchMutex(), {"threads": 2, "locks": 2000, "loops": 100}),
    ]
    for workload, params in cases:
        workload.prepare(guest, timeout=60, params=params)
        m = workload.measure(guest, params, timeout=180)
        print(f"{workload.name} in a TCG guest: {m.primary} = {m.value:g}")
        assert m.value > 0 and m.workload == workload.name
        workload.between_runs(guest, params)
