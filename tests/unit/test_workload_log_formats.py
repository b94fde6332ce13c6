"""`workload parse`: formats decided on their whole structure, unknown logs refused as input
errors (exit 3), and RabbitMQ PerfTest logs (issue 18, kind 7). Samples follow
rabbitmq-perf-test's PrintlnStats.java (< 2.19) and metrics/*MetricsFormatter.java (2.19+)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kvmple import cli
from kvmple.errors import InputError, WorkloadError
from kvmple.workloads.perftest_output import detect_format, parse_any, parse_perftest

CASE = Path(__file__).resolve().parents[1] / "data" / "cases" / "perftest-unknown-format-message"

# 2.19+: "time 1.000 s" (no colon), latency in µs (nanosecond collection)
RABBIT_NEW = """\
id: test-110102-316, time 1.000 s, sent: 13722 msg/s, received: 11486 msg/s, \
min/median/75th/95th/99th consumer latency: 2357/9543/12143/16298/20123 µs
id: test-110102-316, time 2.000 s, sent: 16100 msg/s, received: 16080 msg/s, \
min/median/75th/95th/99th consumer latency: 3010/8800/10000/12000/15000 µs
id: test-110102-316, time 3.001 s, sent: 15400 msg/s, received: 15650 msg/s, \
min/median/75th/95th/99th consumer latency: 2900/8000/9100/11000/13500 µs
test stopped (Reached time limit)
id: test-110102-316, sending rate avg: 15089 msg/s
id: test-110102-316, receiving rate avg: 14405 msg/s
id: test-110102-316, consumer latency min/median/75th/95th/99th 2357/8800/10000/12000/20123 µs
"""

# before 2.19: "time: 1.000s", --use-millis, confirms on
RABBIT_OLD_MS = """\
id: test-153402-719, time: 1.000s, sent: 8046 msg/s, confirmed: 7990 msg/s, nacked: 0 msg/s, \
received: 7950 msg/s, min/median/75th/95th/99th consumer latency: 1/5/7/11/14 ms, \
confirm latency: 0/3/4/6/9 ms
id: test-153402-719, time: 2.000s, sent: 9102 msg/s, confirmed: 9100 msg/s, nacked: 0 msg/s, \
received: 9088 msg/s, min/median/75th/95th/99th consumer latency: 1/4/6/9/12 ms, \
confirm latency: 0/2/3/5/8 ms
id: test-153402-719, sending rate avg: 8570 msg/s
id: test-153402-719, receiving rate avg: 8516 msg/s
"""

# -mf compact (2.19+): header, aligned rows, summary without the id
RABBIT_COMPACT = """\
time          sent     received       consumer latency
1.000s   13722 msg/s  11486 msg/s  2357/9543/12143/16298/20123 µs
2.000s   16100 msg/s  16080 msg/s  3010/8800/10000/12000/15000 µs
3.000s   15400 msg/s  15650 msg/s   2900/8000/9100/11000/13500 µs
sending rate avg: 15089 msg/s
receiving rate avg: 14405 msg/s
consumer latency min/median/75th/95th/99th 2357/8800/10000/12000/20123 µs
"""

# -o FILE: CSV, no summary
RABBIT_CSV = (
    "id,time (s),published (msg/s),returned (msg/s),confirmed (msg/s),nacked (msg/s),"
    "received (msg/s),min consumer latency (µs),median consumer latency (µs),"
    "75th p. consumer latency (µs),95th p. consumer latency (µs),99th p. consumer latency (µs),"
    "min confirm latency (µs),median confirm latency (µs),75th p. confirm latency (µs),"
    "95th p. confirm latency (µs),99th p. confirm latency (µs)\n"
    "test-1,1.000,13722,,,,11486,2357,9543,12143,16298,20123,,,,,\n"
    "test-1,2.000,16100,,,,16080,3010,8800,10000,12000,15000,,,,,\n"
)


def test_case_qpid_dotnet_log_is_refused_as_unrecognised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case perftest-unknown-format-message: Qpid .NET's PerfTest ("Total: N transfers")."""
    log = tmp_path / "perftest.log"
    shutil.copy(CASE / "perftest.log", log)
    assert cli.main(["workload", "parse", "amqp-perftest", str(log)]) == 3
    err = capsys.readouterr().err
    assert "not a perftest log kvmple recognises" in err
    assert "'Total: 2000000 transfers of 1024 bytes in 21.5738463 seconds.'" in err
    assert "no 'Total transfers/sec:' line" not in err
    assert "looked for" in err


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world\n",
        "Total transfers/sec: 5\n",  # the substring alone is not qpid-perftest's report
        "time,rate\n1,200\n2,210\n",  # some other tool's CSV
        "sent: 100 msg/s\n",  # a fragment, not a PerfTest line
        "Publish transfers/sec: 46528.3\nSubscribe transfers/sec:  46511.7\n",  # Qpid .NET
    ],
)
def test_unrecognised_logs_are_input_errors(text: str) -> None:
    assert detect_format(text) is None
    with pytest.raises(InputError, match="not a perftest log kvmple recognises"):
        parse_any(text)
    with pytest.raises(InputError):
        parse_perftest(text)


def test_detection_uses_the_whole_format_not_a_substring() -> None:
    """A qpid-perftest -s log whose warning mentions 'Total transfers/sec:' stays -s."""
    text = "WARNING: Total transfers/sec: counts both directions\n106.19\t106.04\t212.23\t0.0016\n"
    assert detect_format(text) == "qpid-summary"
    assert parse_any(text).transfers_per_sec == pytest.approx(212.23)


def test_hackbench_parse_of_another_log_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "x.log"
    log.write_text("Total: 5 transfers\n")
    assert cli.main(["workload", "parse", "hackbench", str(log)]) == 3
    assert "not a hackbench log" in capsys.readouterr().err


def test_guest_run_with_an_unknown_report_is_still_a_workload_failure() -> None:
    from kvmple.run import Result
    from kvmple.workloads.amqp import PerftestParams, measurement_from_result

    result = Result(("perftest",), 0, "hello\n", "", 0.1)
    with pytest.raises(WorkloadError, match="not a perftest log"):
        measurement_from_result("amqp-perftest", PerftestParams(), result, "g")


def test_rabbitmq_default_format_2_19() -> None:
    assert detect_format(RABBIT_NEW) == "rabbitmq"
    report = parse_any(RABBIT_NEW)
    data = report.to_json()
    assert data["source"] == "rabbitmq-perf-test"
    assert data["transfers_per_sec"] == 15089 + 14405
    assert data["basis"] == "summary: sending rate avg + receiving rate avg"
    assert len(data["samples"]) == 3
    assert data["samples"][0]["sent_per_sec"] == 13722
    assert data["consumer_latency"] == {
        "min": 2357,
        "median": 8800,
        "p75": 10000,
        "p95": 12000,
        "p99": 20123,
        "unit": "µs",
    }


def test_rabbitmq_old_format_with_colon_ms_and_confirms() -> None:
    report = parse_any(RABBIT_OLD_MS).to_json()
    assert report["transfers_per_sec"] == 8570 + 8516
    first = report["samples"][0]
    assert (first["time_s"], first["sent_per_sec"], first["received_per_sec"]) == (1.0, 8046, 7950)
    assert first["consumer_latency"]["unit"] == "ms" and first["consumer_latency"]["p99"] == 14
    assert first["confirm_latency"] == {
        "min": 0,
        "median": 3,
        "p75": 4,
        "p95": 6,
        "p99": 9,
        "unit": "ms",
    }


def test_rabbitmq_cut_off_log_uses_the_samples_and_says_so() -> None:
    cut = RABBIT_NEW.split("test stopped", maxsplit=1)[0]
    report = parse_any(cut).to_json()
    assert report["transfers_per_sec"] == pytest.approx(
        ((13722 + 11486) + (16100 + 16080) + (15400 + 15650)) / 3
    )
    assert report["basis"].startswith("mean of 3 per-interval samples")


def test_rabbitmq_compact_format() -> None:
    assert detect_format(RABBIT_COMPACT) == "rabbitmq-compact"
    report = parse_any(RABBIT_COMPACT).to_json()
    assert report["source"] == "rabbitmq-perf-test -mf compact"
    assert report["transfers_per_sec"] == 15089 + 14405
    assert [s["received_per_sec"] for s in report["samples"]] == [11486, 16080, 15650]
    assert report["samples"][2]["consumer_latency"]["median"] == 8000


def test_rabbitmq_csv_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "perf.csv"
    log.write_text(RABBIT_CSV)
    assert cli.main(["workload", "parse", "amqp-perftest", str(log)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "rabbitmq-perf-test -o CSV"
    assert data["transfers_per_sec"] == pytest.approx(((13722 + 11486) + (16100 + 16080)) / 2)
    assert data["samples"][1]["consumer_latency"]["unit"] == "µs"
    assert data["samples"][1]["confirm_latency"] is None


def test_rabbitmq_producer_only_has_no_transfers() -> None:
    text = "id: t, time 1.000 s, sent: 500 msg/s\nid: t, sending rate avg: 500 msg/s\n"
    assert detect_format(text) == "rabbitmq"
    with pytest.raises(WorkloadError, match="without figures for both directions"):
        parse_any(text)


def test_explicit_rabbitmq_format_on_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "p.log"
    log.write_text(RABBIT_COMPACT)
    assert (
        cli.main(["workload", "parse", "amqp-perftest", str(log), "--format", "rabbitmq-compact"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["transfers_per_sec"] == 29494


def test_rabbitmq_legacy_metrics_keep_min_avg_max_with_the_unit() -> None:
    text = (
        "id: test-1, time: 1.000s, sent: 9000 msg/s, received: 8990 msg/s, "
        "min/avg/max latency: 310/2004/9870 µs \n"
        "id: test-1, sending rate avg: 9000 msg/s\nid: test-1, receiving rate avg: 8990 msg/s\n"
    )
    report = parse_any(text).to_json()
    assert report["transfers_per_sec"] == 17990
    assert report["samples"][0]["min_avg_max_latency"] == [310, 2004, 9870, "µs"]  # JSON form
    assert report["samples"][0]["consumer_latency"] is None


def test_a_forced_format_that_does_not_fit_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "perftest.log"
    shutil.copy(CASE / "perftest.log", log)
    assert cli.main(["workload", "parse", "amqp-perftest", str(log), "--format", "qpid"]) == 3
    err = capsys.readouterr().err
    assert "no qpid-perftest report found (looked for 'Total N transfers of S bytes" in err
