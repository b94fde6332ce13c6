"""Perftest and hackbench output parsers, on samples in the exact formats the tools print.

qpid-perftest samples follow qpid-cpp's src/tests/qpid-perftest.cpp (Controller::run and
Stats::print): numbers in C++ ostream default notation (%g, 6 significant digits), trailing
spaces after "Publish transfers/sec:" / "Subscribe transfers/sec:" / "Averages:", and, in
later versions, progress characters (publisher number per 100 sent, "s" per 100 received)
written to stdout without newlines.
"""

from __future__ import annotations

import json

import pytest

from kvmple.errors import WorkloadError
from kvmple.workloads.hackbench import parse_hackbench
from kvmple.workloads.perftest_output import (
    parse_kvmple,
    parse_perftest,
    parse_qpid_full,
    parse_qpid_summary,
)

# qpid-perftest of the 2011 era (queues "sub_ready" etc.), one publisher and subscriber,
# --count 500000 --size 8: 1,000,000 transfers in 4.46825 s = 223801 transfers/s.
QPID_FULL_2011 = """\
Processing 1 messages from sub_ready . done.
Sending start 1 times to pub_start
Processing 1 messages from pub_done . done.
Processing 1 messages from sub_done . done.

Total 1000000 transfers of 8 bytes in 4.46825 seconds.

Publish transfers/sec:    
112014
Average: 112014

Subscribe transfers/sec:  
111905
Average: 111905

Total transfers/sec:      223801
Total Mbytes/sec: 1.70746
"""  # noqa: W291 (qpid-perftest prints those trailing spaces)

# Later qpid-perftest (base-name queues, progress characters), --npubs 2 --nsubs 2
# --count 200 --iterations 2: progress digits/"s" interleave with the controller's dots.
QPID_FULL_PROGRESS_2_ITERATIONS = """\
Processing 2 messages from qpid-perftest_sub_ready .. done.
Sending start 2 times to qpid-perftest_pub_start
Processing 2 messages from qpid-perftest_pub_done 0101ss.s.s done.
Processing 2 messages from qpid-perftest_sub_done .. done.

Total 800 transfers of 16 bytes in 0.0834 seconds.

Publish transfers/sec:    
5012.6
4987.1
Average: 4999.85 (std.dev. 18.0312)

Subscribe transfers/sec:  
4810.3
4798.7
Average: 4804.5 (std.dev. 8.20244)

Total transfers/sec:      9592.33
Total Mbytes/sec: 0.146367
Sending start 2 times to qpid-perftest_pub_start
Sending next 2 times to qpid-perftest_sub_iteration
Processing 2 messages from qpid-perftest_pub_done 1010s.ss.s done.
Processing 2 messages from qpid-perftest_sub_done .. done.

Total 800 transfers of 16 bytes in 0.0801 seconds.

Publish transfers/sec:    
5102.2
5099.9
Average: 5101.05 (std.dev. 1.62635)

Subscribe transfers/sec:  
4999.9
5010.1
Average: 5005 (std.dev. 7.2125)

Total transfers/sec:      9987.52
Total Mbytes/sec: 0.152398
Averages: 
5050.45	4904.75	9789.92	0.149383
"""  # noqa: W291

# qpid-perftest -s, 3 iterations, large rates in %g exponent notation.
QPID_SUMMARY_3 = """\
1.02345e+06	998765	2.00123e+06	30.5363
1.01e+06	1.0001e+06	2.0102e+06	30.6732
987654	976543	1.96421e+06	29.9715
Averages: 
1.00704e+06	991803	1.99188e+06	30.3937
"""  # noqa: W291

# qpid-perftest -s (later version), one publisher, --count 500: the publisher's "0" and the
# subscriber's "s" (every 100 messages) are glued in front of the summary line.
QPID_SUMMARY_GLUED = "0s0s0s0s0s1234.5\t1100.2\t2200.4\t0.0335755\n"
QPID_SUMMARY_GLUED_ZEROS = "0s0s0s0s0s00987.25\t1100.2\t2200.4\t0.0335755\n"
QPID_SUMMARY_AMBIGUOUS = "0101ss0101ss01011234.5\t1100.2\t2200.4\t0.0335755\n"

KVMPLE_MACHINE = (
    "12576.5\t9595.39\t37229.1\t0.568071\n"
    'KVMPLE-PERFTEST {"engine": "kvmple", "format": 1, "iterations": [{"cpu": {"broker": '
    '0.61, "broker_found": true, "clients": 0.35, "idle": 0.01, "ncpu": 2, "other": 0.03, '
    '"total_jiffies": 303, "window_s": 1.52}, "duplicated": 0, "lost": 0, "mbytes_per_sec": '
    '0.568071, "pub_rates": [12576.5], "pubs_per_sec": 12576.5, "received": 20000, '
    '"seconds": 1.07, "sent": 20000, "sub_rates": [9595.39], "subs_per_sec": 9595.39, '
    '"transfers": 40000, "transfers_per_sec": 37229.1}], "params": {"count": 20000, '
    '"iterations": 1, "mode": "shared", "npubs": 1, "nsubs": 1, "qt": 1, "size": 16}, '
    '"version": "0.1.0"}\n'
)


def test_full_report_2011() -> None:
    report = parse_qpid_full(QPID_FULL_2011)
    assert report.source == "qpid-perftest"
    (it,) = report.iterations
    assert it.transfers_per_sec == 223801
    assert it.mbytes_per_sec == 1.70746
    assert it.pubs_per_sec == 112014 and it.subs_per_sec == 111905
    assert (it.transfers, it.size, it.seconds) == (1000000, 8, 4.46825)
    assert it.pub_rates == (112014.0,) and it.sub_rates == (111905.0,)
    assert report.averages is None
    assert report.transfers_per_sec == 223801


def test_full_report_many_iterations_with_progress_characters() -> None:
    report = parse_qpid_full(QPID_FULL_PROGRESS_2_ITERATIONS)
    assert [it.transfers_per_sec for it in report.iterations] == [9592.33, 9987.52]
    assert report.iterations[0].pub_rates == (5012.6, 4987.1)
    assert report.iterations[1].sub_rates == (4999.9, 5010.1)
    assert report.iterations[1].subs_per_sec == 5005
    assert report.averages is not None
    assert report.averages.transfers_per_sec == 9789.92
    assert report.transfers_per_sec == pytest.approx((9592.33 + 9987.52) / 2)


def test_summary_many_iterations_exponent_notation() -> None:
    report = parse_qpid_summary(QPID_SUMMARY_3)
    assert report.source == "qpid-perftest -s"
    assert [it.transfers_per_sec for it in report.iterations] == [2.00123e6, 2.0102e6, 1.96421e6]
    assert report.iterations[0].pubs_per_sec == 1.02345e6
    assert report.averages is not None and report.averages.mbytes_per_sec == 30.3937
    assert report.warnings == ()


@pytest.mark.parametrize(
    ("text", "pubs"),
    [(QPID_SUMMARY_GLUED, 1234.5), (QPID_SUMMARY_GLUED_ZEROS, 987.25)],
)
def test_summary_strips_glued_progress_characters(text: str, pubs: float) -> None:
    report = parse_qpid_summary(text)
    (it,) = report.iterations
    assert it.pubs_per_sec == pubs
    assert it.transfers_per_sec == 2200.4
    assert report.warnings == ("progress characters stripped from a summary line",)


def test_summary_ambiguous_progress_is_reported_not_guessed() -> None:
    report = parse_qpid_summary(QPID_SUMMARY_AMBIGUOUS)
    (it,) = report.iterations
    assert it.pubs_per_sec is None  # "0101...1234.5": which digits are progress is unknowable
    assert it.transfers_per_sec == 2200.4  # the primary figure is unaffected
    assert "unreadable" in report.warnings[0]


def test_kvmple_machine_line() -> None:
    report = parse_kvmple(KVMPLE_MACHINE)
    (it,) = report.iterations
    assert report.source == "kvmple-perftest"
    assert it.transfers_per_sec == 37229.1 and it.size == 16
    assert it.cpu is not None and it.cpu.broker == 0.61 and it.cpu.broker_vcpus == 1.22
    assert report.params == {
        "count": 20000,
        "iterations": 1,
        "mode": "shared",
        "npubs": 1,
        "nsubs": 1,
        "qt": 1,
        "size": 16,
    }


@pytest.mark.parametrize(
    ("text", "source"),
    [
        (QPID_FULL_2011, "qpid-perftest"),
        (QPID_SUMMARY_3, "qpid-perftest -s"),
        (KVMPLE_MACHINE, "kvmple-perftest"),
    ],
)
def test_auto_detects_the_format(text: str, source: str) -> None:
    assert parse_perftest(text).source == source


def test_external_record_parses_the_wrapped_output() -> None:
    wrapped = QPID_FULL_2011 + (
        'KVMPLE-PERFTEST {"command": ["qpid-perftest"], "cpu": {"broker": 0.5, "clients": '
        '0.4, "idle": 0.05, "ncpu": 2, "other": 0.05, "window_s": 4.5}, "engine": "external", '
        '"exit": 0, "format": 1, "iterations": [], "params": {}, "version": "0.1.0"}\n'
    )
    report = parse_perftest(wrapped)
    assert report.source == "qpid-perftest"
    assert report.transfers_per_sec == 223801


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "Processing 1 messages from sub_ready . done.\nController exception: "
            "Connection refused\n",
            "Controller exception",
        ),
        (
            "SubscribeThread exception: Sequence error: expected  n==5 but got 7\n",
            "SubscribeThread exception",
        ),
        ("kvmple-perftest: error: message check failed: 3 lost\n", "3 lost"),
        (QPID_FULL_2011.split("Total transfers/sec", maxsplit=1)[0], "incomplete"),
        ("Total 10 transfers of 8 bytes in 0 seconds.\n", "incomplete"),
    ],
)
def test_failed_or_cut_runs_never_yield_figures(text: str, needle: str) -> None:
    with pytest.raises(WorkloadError, match=needle):
        parse_perftest(text)


def test_infinite_rate_is_a_failed_run() -> None:
    text = QPID_FULL_2011.replace("223801", "inf")
    with pytest.raises(WorkloadError, match="too short"):
        parse_qpid_full(text)


def test_summary_rejects_a_non_number() -> None:
    with pytest.raises(WorkloadError, match="transfers/sec is not a number"):
        parse_qpid_summary("1\t2\tthree\t4\n")


def test_kvmple_line_of_unknown_format_or_missing_fields() -> None:
    with pytest.raises(WorkloadError, match="format 2"):
        parse_kvmple('KVMPLE-PERFTEST {"format": 2}\n')
    with pytest.raises(WorkloadError, match="lacks a field"):
        parse_kvmple('KVMPLE-PERFTEST {"format": 1, "iterations": [{}], "params": {}}\n')
    with pytest.raises(WorkloadError, match="unreadable"):
        parse_kvmple("KVMPLE-PERFTEST {not json\n")


def test_to_json_is_serialisable() -> None:
    data = parse_perftest(KVMPLE_MACHINE).to_json()
    again = json.loads(json.dumps(data))
    assert again["transfers_per_sec"] == 37229.1
    assert again["iterations"][0]["cpu"]["broker"] == 0.61


HACKBENCH = """\
Running in process mode with 10 groups using 40 file descriptors each (== 400 tasks)
Each sender will pass 100 messages of 100 bytes
Time: 0.448
"""


def test_hackbench_time() -> None:
    assert parse_hackbench(HACKBENCH) == 0.448


@pytest.mark.parametrize("text", ["", "Running in process mode\n", HACKBENCH + "Time: 0.5\n"])
def test_hackbench_without_exactly_one_time_fails(text: str) -> None:
    with pytest.raises(WorkloadError):
        parse_hackbench(text)
