"""The guest programs' pure parts, loaded from kvmple/guest/ exactly as shipped.

(Their AMQP and process behaviour is exercised against a real RabbitMQ in
tests/real/test_workloads_real.py.)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import io
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import kvmple
from kvmple.run import run
from kvmple.workloads.perftest_output import parse_qpid_full, parse_qpid_summary
from kvmple.workloads.programs import PROGRAMS, guest_dir


def load(name: str) -> ModuleType:
    path = guest_dir() / name
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


perftest = load("kvmple-perftest")
spin = load("kvmple-spin")


@pytest.mark.parametrize("name", PROGRAMS)
def test_programs_are_versioned_with_kvmple(name: str) -> None:
    assert load(name).VERSION == kvmple.__version__


@pytest.mark.parametrize("name", PROGRAMS)
def test_programs_use_only_stdlib_and_amqp(name: str) -> None:
    """The guest has python3 + python3-amqp only: no kvmple, no third-party imports."""
    source = (guest_dir() / name).read_text()
    assert source.startswith("#!/usr/bin/python3\n")
    allowed = set(sys.stdlib_module_names) | {"amqp"}
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        assert set(names) <= allowed, f"{name} imports {names}"


def opts(**overrides: Any) -> argparse.Namespace:
    parsed = perftest.build_parser().parse_args([])
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
    assert perftest.g(value) == text


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
    it = perftest.summarize(
        opts(count=10, size=16, nsubs=2), 1.0, PUBS, subs, {0: "q0", 1: "q0"}, CPU
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
    with pytest.raises(perftest.RunFailed, match=problem):
        perftest.summarize(opts(count=10, nsubs=2), 1.0, PUBS, subs, {0: "q0", 1: "q0"}, CPU)


def test_summarize_fanout_needs_every_message_at_every_subscriber() -> None:
    full = _seen(10, list(range(10)))
    subs = {0: _sub({"0": full}, 10), 1: _sub({"0": _seen(10, list(range(9)))}, 9)}
    with pytest.raises(perftest.RunFailed, match="1 lost"):
        perftest.summarize(
            opts(count=10, nsubs=2, mode="fanout"), 1.0, PUBS, subs, {0: "x", 1: "x"}, CPU
        )
    subs[1] = _sub({"0": full}, 10)
    it = perftest.summarize(
        opts(count=10, nsubs=2, mode="fanout"), 1.0, PUBS, subs, {0: "x", 1: "x"}, CPU
    )
    assert it["transfers"] == 30  # 10 sent + 2 x 10 received


def test_summarize_counts_unexpected_messages() -> None:
    sub = _sub({"0": _seen(10, list(range(10)))}, 10)
    sub["unexpected"] = 2
    with pytest.raises(perftest.RunFailed, match="2 unexpected"):
        perftest.summarize(opts(count=10), 1.0, PUBS, {0: sub}, {0: "q0"}, CPU)


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
    perftest.print_iteration(opts(size=16), it)
    perftest.print_iteration(opts(size=16), it)
    perftest.print_averages([it, it])
    report = parse_qpid_full(capsys.readouterr().out)
    assert len(report.iterations) == 2
    assert report.iterations[0].pub_rates == (14098.9, 13001.2)
    assert report.iterations[0].transfers == 40000 and report.iterations[0].size == 16
    assert report.averages is not None and report.averages.transfers_per_sec == 26335.7

    perftest.print_iteration(opts(size=16, summary=True), it)
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
    window = perftest.CpuWindow([])
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
