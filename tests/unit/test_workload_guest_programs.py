"""The guest programs' pure parts, run here on the host (kvmple_guest is plain Python).

(Their AMQP and process behaviour is exercised against a real RabbitMQ in
tests/real/test_workloads_real.py; the shipped layout in test_guest_shipping.py.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import kvmple
from kvmple.errors import WorkloadError
from kvmple.executor import LocalExecutor
from kvmple.guest.kvmple_guest import perftest, perftest_cpu, protocol, spin
from kvmple.guest.kvmple_guest.perftest_amqp import RunFailed
from kvmple.guest.kvmple_guest.perftest_controller import summarize
from kvmple.guest.kvmple_guest.perftest_options import build_parser
from kvmple.guest.kvmple_guest.perftest_report import (
    g,
    machine_line,
    machine_record,
    print_averages,
    print_iteration,
)
from kvmple.run import run
from kvmple.workloads.perftest_output import machine_record as host_machine_record
from kvmple.workloads.perftest_output import parse_perftest, parse_qpid_full, parse_qpid_summary
from kvmple.workloads.programs import guest_dir
from kvmple.workloads.spin import SpinLoops, load_status


def test_programs_are_versioned_with_kvmple() -> None:
    assert protocol.VERSION == kvmple.__version__


def opts(**overrides: Any) -> argparse.Namespace:
    parsed = build_parser().parse_args([])
    for key, value in overrides.items():
        setattr(parsed, key, value)
    return parsed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "0"], "--count: must be at least 1"),
        (["--npubs", "-2"], "--npubs: must be at least 1"),
        (["--size", "4"], "at least 8 bytes"),
        (["--size", "ten"], "not a whole number"),
        (["--mode", "topic"], "invalid choice"),
        (["--timeout", "0"], "greater than 0"),
        (["--bogus"], "unrecognized arguments"),
        (["--probe", "--cleanup"], "not allowed with"),
    ],
)
def test_perftest_rejects_bad_options(argv: list[str], message: str) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        perftest.main(argv)
    assert exit_info.value.code == 2
    assert message in stderr.getvalue()


def test_perftest_command_line_exit_code_and_one_line() -> None:
    """As a process: exit 2 and a usage error, no traceback (what the host driver sees)."""
    result = run(
        [sys.executable, str(guest_dir() / "kvmple-perftest"), "--count", "-1"],
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "kvmple-perftest: error: argument --count" in result.stderr


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (223801.2, "223801"),
        (1.70746, "1.70746"),
        (1234567.0, "1.23457e+06"),
        (0.0001, "0.0001"),
        (5005.0, "5005"),
        (18.03122, "18.0312"),
    ],
)
def test_numbers_print_like_cpp_ostream(value: float, text: str) -> None:
    assert g(value) == text


def _seen(count: int, received: list[int]) -> bytes:
    counts = bytearray(count)
    for seq in received:
        counts[seq] += 1
    return bytes(counts)


def _sub(seen: dict[str, bytes], received: int, last: float = 2.0) -> dict[str, Any]:
    return {"received": received, "unexpected": 0, "first": 1.0, "last": last, "seen": seen}


PUBS = {0: {"start": 1.0, "end": 1.5, "sent": 10}}
CPU = {"broker": 0.5, "clients": 0.3, "other": 0.1, "idle": 0.1, "ncpu": 2, "window_s": 1.0}


def test_summarize_shared_mode_splits_across_subscribers() -> None:
    subs = {
        0: _sub({"0": _seen(10, [0, 2, 4, 6, 8])}, 5),
        1: _sub({"0": _seen(10, [1, 3, 5, 7, 9])}, 5, last=3.0),
    }
    it = summarize(
        opts(count=10, size=16, nsubs=2),
        1.0,
        PUBS,
        subs,
        sub_queue={0: "q0", 1: "q0"},
        cpu_split=CPU,
    )
    assert it["transfers"] == 20
    assert it["seconds"] == 2.0  # last message of the slowest subscriber - start
    assert it["transfers_per_sec"] == 10.0
    assert it["pub_rates"] == [20.0]
    assert it["sub_rates"] == [5.0, 2.5]
    assert it["mbytes_per_sec"] == pytest.approx(10.0 * 16 / 1048576)


@pytest.mark.parametrize(
    ("received", "problem"),
    [
        ([[0, 2, 4, 6, 8], [1, 3, 5, 7]], "1 lost, 0 duplicated"),
        ([[0, 2, 4, 6, 8], [1, 3, 5, 7, 9, 9]], "0 lost, 1 duplicated"),
        ([[0, 2, 4, 6, 8, 1], [1, 3, 5, 7, 9]], "publisher 0 message 1 arrived 2 times"),
        ([[0, 2, 4, 6], [1, 3, 5, 7, 9]], "publisher 0 message 8 never arrived"),
    ],
)
def test_summarize_fails_on_lost_or_duplicated_messages(
    received: list[list[int]], problem: str
) -> None:
    subs = {i: _sub({"0": _seen(10, r)}, len(r)) for i, r in enumerate(received)}
    with pytest.raises(RunFailed, match=problem):
        summarize(
            opts(count=10, nsubs=2), 1.0, PUBS, subs, sub_queue={0: "q0", 1: "q0"}, cpu_split=CPU
        )


def test_summarize_fanout_needs_every_message_at_every_subscriber() -> None:
    full = _seen(10, list(range(10)))
    subs = {0: _sub({"0": full}, 10), 1: _sub({"0": _seen(10, list(range(9)))}, 9)}
    with pytest.raises(RunFailed, match="1 lost"):
        summarize(
            opts(count=10, nsubs=2, mode="fanout"),
            1.0,
            PUBS,
            subs,
            sub_queue={0: "x", 1: "x"},
            cpu_split=CPU,
        )
    subs[1] = _sub({"0": full}, 10)
    it = summarize(
        opts(count=10, nsubs=2, mode="fanout"),
        1.0,
        PUBS,
        subs,
        sub_queue={0: "x", 1: "x"},
        cpu_split=CPU,
    )
    assert it["transfers"] == 30  # 10 sent + 2 x 10 received


def test_summarize_counts_unexpected_messages() -> None:
    sub = _sub({"0": _seen(10, list(range(10)))}, 10)
    sub["unexpected"] = 2
    with pytest.raises(RunFailed, match="2 unexpected"):
        summarize(opts(count=10), 1.0, PUBS, {0: sub}, sub_queue={0: "q0"}, cpu_split=CPU)


def test_printed_report_parses_as_qpid_perftest_output(capsys: pytest.CaptureFixture[str]) -> None:
    """kvmple-perftest prints qpid-perftest's shapes: the qpid parsers read them back."""
    it = {
        "transfers": 40000,
        "seconds": 1.51885,
        "pub_rates": [14098.9, 13001.2],
        "sub_rates": [13167.9],
        "pubs_per_sec": 13550.05,
        "subs_per_sec": 13167.9,
        "transfers_per_sec": 26335.7,
        "mbytes_per_sec": 0.401852,
    }
    print_iteration(opts(size=16), it)
    print_iteration(opts(size=16), it)
    print_averages([it, it])
    report = parse_qpid_full(capsys.readouterr().out)
    assert len(report.iterations) == 2
    assert report.iterations[0].pub_rates == (14098.9, 13001.2)
    assert report.iterations[0].transfers == 40000 and report.iterations[0].size == 16
    assert report.averages is not None and report.averages.transfers_per_sec == 26335.7

    print_iteration(opts(size=16, summary=True), it)
    summary = parse_qpid_summary(capsys.readouterr().out)
    assert summary.iterations[0].pubs_per_sec == 13550.0  # %g: 6 significant digits
    assert summary.iterations[0].transfers_per_sec == 26335.7


def test_spin_rejects_bad_requests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "spin.json")
    assert spin.main(["--state", state, "start", "-1"]) == 1
    assert "cannot be negative" in capsys.readouterr().err
    assert spin.main(["--state", state, "start", "100000"]) == 1
    assert "vCPUs (one each)" in capsys.readouterr().err
    assert spin.main(["--state", state, "start", "1", "--cpus", "0,1"]) == 1
    assert "names 2 CPUs for 1 loops" in capsys.readouterr().err
    assert spin.main(["--state", state, "status", "--sample", "0"]) == 1
    assert "--sample must be greater than 0" in capsys.readouterr().err
    (tmp_path / "spin.json").write_text("{broken")
    assert spin.main(["--state", state, "stop"]) == 1
    assert "unreadable state file" in capsys.readouterr().err


def test_spin_never_counts_a_reused_pid(tmp_path: Path) -> None:
    """A recorded pid whose start time differs (pid reuse) is not 'our' loop."""
    me = {"pid": 1, "cpu": 0, "start": -5}
    assert not spin.alive(me)


def test_cpu_window_splits_capacity_between_clients_and_the_rest() -> None:
    """Fractions of (online CPUs x wall time): a busy client shows up, and they sum to 1."""
    window = perftest_cpu.CpuWindow([])
    end = time.monotonic() + 0.3
    cpu_end = time.process_time() + 0.3
    # This process is the "client": its CPU time must be counted. Spin until it really had
    # 0.3 s of CPU, not just 0.3 s of wall time (on a host busy with TCG guests it may get
    # almost none of that: seen as clients_s == 0).
    while time.monotonic() < end or time.process_time() < cpu_end:
        pass
    split = window.finish()
    assert split["ncpu"] >= 1 and split["window_s"] >= 0.3
    assert split["clients_s"] > 0 and split["clients"] > 0
    total = split["broker"] + split["clients"] + split["other"] + split["idle"]
    # "other" is the remainder, so the total is 1 unless idle + measured use overshoot the
    # capacity (rounding of jiffies): never by much.
    assert 0.999 <= total <= 1.1
    for key in ("broker", "clients", "other", "idle"):
        assert 0.0 <= split[key] <= 1.0


# --- the protocol, both ends: what the guest side prints, the host side reads -----------------


def _iteration() -> Any:
    subs = {0: _sub({"0": _seen(10, list(range(10)))}, 10)}
    cpu = perftest_cpu.CpuWindow([]).finish()
    it = summarize(opts(count=10, size=16), 1.0, PUBS, subs, sub_queue={0: "q0"}, cpu_split=cpu)
    it.update(setup_s=0.5, go_wait_s=0.25, drain_s=0.1)
    return it


def test_machine_line_is_read_by_the_host_parser(capsys: pytest.CaptureFixture[str]) -> None:
    it = _iteration()
    record = machine_record(opts(count=10, size=16), "kvmple", [it, it])
    record["phases_s"] = {"declare_s": 0.1}
    print_iteration(opts(size=16), it)
    machine_line(record)
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(protocol.RESULT_TAG + " {")
    report = parse_perftest(out)
    assert report.source == protocol.PERFTEST and len(report.iterations) == 2
    assert report.iterations[0].transfers_per_sec == it["transfers_per_sec"]
    assert report.iterations[0].size == 16 and report.params is not None
    assert report.params["count"] == 10
    cpu = report.iterations[0].cpu
    assert cpu is not None and cpu.ncpu == it["cpu"]["ncpu"]
    assert host_machine_record(out) == json.loads(json.dumps(record))


def test_another_record_format_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    record = machine_record(opts(), "kvmple", [_iteration()])
    record["format"] = protocol.RECORD_FORMAT + 1
    machine_line(record)
    with pytest.raises(WorkloadError, match="format 2 is not supported"):
        parse_perftest(capsys.readouterr().out)


def test_failure_line_is_what_the_host_looks_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert perftest.main(["--external", "--timeout=5"]) == protocol.PerftestExit.FAILED
    err = capsys.readouterr().err
    assert err.startswith(protocol.ERROR_PREFIX + " --external needs a command")
    with pytest.raises(WorkloadError, match="the perftest run failed"):
        parse_perftest(err)


def test_spin_status_is_read_by_the_host(tmp_path: Path) -> None:
    """This test process stands in for a loop: alive, pinned as it is, its CPU counted."""
    me = os.getpid()
    start = spin.start_time(me)
    assert start is not None
    loop: protocol.SpinLoop = {"pid": me, "cpu": min(os.sched_getaffinity(0)), "start": start}
    fields = spin.stat_fields(me)
    assert fields is not None
    report = spin.loops_report([loop], {me: int(fields[11]) + int(fields[12])}, {}, 0.0)
    status = load_status("spin", json.loads(json.dumps(report)))
    assert [(lp.pid, lp.running) for lp in status.loops] == [(me, True)]
    assert status.loops[0].affinity == tuple(sorted(os.sched_getaffinity(me)))
    gone = spin.loops_report([{**loop, "start": start - 1}], {me: 0}, {}, 0.0)
    assert not load_status("spin", gone).loops[0].running


def test_spin_hold_speaks_with_the_host_driver(tmp_path: Path) -> None:
    """The host's HeldLoops drives the real program through its words (zero loops)."""
    loops = SpinLoops(bin_dir=str(guest_dir()), state_file=str(tmp_path / "spin.json"))
    with loops.held(LocalExecutor(), {"count": 0}, timeout=60) as held:
        held.start()
        status = held.stop()
    assert status.loops == () and status.sample_s >= 0
    called_off = loops.held(LocalExecutor(), {"count": 0}, timeout=60)
    assert called_off.stop().loops == ()  # never started: "off" instead of "start"
