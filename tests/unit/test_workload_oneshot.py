"""dbench and sysbench: parsers on the exact output Debian 12's programs print (captured on
this host: dbench 4.00, sysbench 1.0.20), argv, and a run turned into a Measurement or a
WorkloadError through the shared one-command workload base."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.errors import CommandTimeout, WorkloadError
from kvmple.run import Result
from kvmple.workloads import Dbench, MeasuredWorkload, SysbenchMutex, SysbenchThreads
from kvmple.workloads.dbench import DbenchParams, parse_dbench
from kvmple.workloads.sysbench import SysbenchThreadsParams, parse_sysbench

DATA = Path(__file__).resolve().parents[1] / "data" / "workloads"


def _text(name: str) -> str:
    return (DATA / name).read_text()


def test_dbench_final_line() -> None:
    figures = parse_dbench(_text("dbench-4.00.txt"))
    assert figures == {"throughput": 59.4054, "max_latency": 18.357, "clients": 1.0}


def test_dbench_per_second_lines_are_not_the_figure() -> None:
    progress = "   1      7785    59.41 MB/sec  execute   1 sec  latency 18.357 ms\n"
    with pytest.raises(WorkloadError, match=r"no 'Throughput \.\.\. MB/sec' line"):
        parse_dbench(progress)


def test_sysbench_threads_report() -> None:
    report = parse_sysbench(_text("sysbench-1.0.20-threads.txt"))
    assert report.events > 0 and report.total_time > 0
    assert report.events_per_sec == pytest.approx(report.events / report.total_time)
    assert report.latency_avg <= report.latency_p95 or report.latency_p95 <= report.latency_max


def test_sysbench_without_latency_block_names_the_field() -> None:
    text = "General statistics:\n    total time:  1.0s\n    total number of events:  5\n"
    with pytest.raises(WorkloadError, match="'latency avg'"):
        parse_sysbench(text)


def test_argv_carry_every_parameter() -> None:
    assert DbenchParams(clients=3, time=5).argv() == [
        "dbench",
        "--timelimit=5",
        "--loadfile=/usr/share/dbench/client.txt",
        "--directory=/var/tmp/kvmple-dbench",
        "3",
    ]
    argv = SysbenchThreads().argv(SysbenchThreadsParams(threads=8, time=3))
    assert argv[:2] == ["sysbench", "threads"] and "--threads=8" in argv and argv[-1] == "run"


class Replies:
    """An executor that answers every command with one Result (or raises)."""

    name = "guest a"

    def __init__(self, result: Result | Exception) -> None:
        self.result = result
        self.argv: list[list[str]] = []

    def run(self, argv: list[str], **kwargs: object) -> Result:
        self.argv.append(list(argv))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def _result(code: int, out: str) -> Result:
    return Result(("x",), code, out, "boom\n" if code else "", 0.1, "guest a")


@pytest.mark.parametrize("workload", [Dbench(), SysbenchThreads(), SysbenchMutex()])
def test_they_are_measured_workloads(workload: MeasuredWorkload) -> None:
    assert isinstance(workload, MeasuredWorkload)
    assert workload.primary in {m.name for m in workload.metrics}


def test_mutex_measurement_is_lower_is_better_time() -> None:
    executor = Replies(_result(0, _text("sysbench-1.0.20-mutex.txt")))
    calls: list[str] = []
    measured = SysbenchMutex().measure(
        executor,  # type: ignore[arg-type]
        {"threads": 2},
        timeout=60,
        before_window=lambda: calls.append("before"),
        after_window=lambda: calls.append("after"),
    )
    assert calls == ["before", "after"]
    assert measured.primary == "time" and measured.value == measured.window_s > 0
    assert not next(m for m in SysbenchMutex.metrics if m.name == "time").higher_is_better
    assert "--mutex-num=4096" in executor.argv[0]


def test_a_failed_run_is_a_workload_error_with_its_last_line() -> None:
    with pytest.raises(WorkloadError, match=r"dbench failed on guest a \(exit 1\): boom"):
        Dbench().measure(Replies(_result(1, "")), {}, timeout=60)  # type: ignore[arg-type]


def test_a_hung_run_still_calls_after_window() -> None:
    calls: list[str] = []
    with pytest.raises(WorkloadError, match="did not finish within 5s"):
        SysbenchThreads().measure(
            Replies(CommandTimeout("sysbench timed out")),  # type: ignore[arg-type]
            {},
            timeout=5,
            after_window=lambda: calls.append("after"),
        )
    assert calls == ["after"]


def test_missing_program_names_the_package() -> None:
    with pytest.raises(WorkloadError, match="dbench is not installed") as info:
        Dbench().prepare(Replies(_result(1, "")), timeout=10)  # type: ignore[arg-type]
    assert "dbench package" in (info.value.hint or "")
