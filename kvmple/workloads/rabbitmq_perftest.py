"""RabbitMQ PerfTest logs (rabbitmq-perf-test, the AMQP benchmark most users run today).

Shapes, from rabbitmq-perf-test's PrintlnStats.java (before 2.19) and metrics/*Formatter.java
(2.19 on); rates are ``%d`` (``%1.1f`` under 10, ``%1.2f`` under 1), latencies are
min/median/75th/95th/99th in ``ms`` (``--use-millis``) or ``µs``:

- default, per interval: ``id: test-1, time 1.000 s, sent: 13722 msg/s, received: 11486
  msg/s, min/median/75th/95th/99th consumer latency: 2357/9543/12143/16298/20123 µs`` (one line)
  (before 2.19: ``time: 1.000s``; older still: ``min/avg/max latency: a/b/c µs``)
- summary: ``id: test-1, sending rate avg: 15089 msg/s``, ``... receiving rate avg: ...``,
  ``... consumer latency min/median/75th/95th/99th 2357/9543/12143/16298/20123 µs``
- compact (``-mf compact``): a ``time  sent  received  consumer latency`` header, rows
  ``1.000s  13722 msg/s  11486 msg/s  2357/9543/12143/16298/20123 µs``, the summary without
  ``id:``
- CSV (``-o FILE``): header ``id,time (s),published (msg/s),...,received (msg/s),min consumer
  latency (µs),...``, one row per interval, no summary.

kvmple maps sent + received onto transfers/s (as qpid-perftest counts both directions); the
whole-run figure is the summary's sending + receiving averages, else (CSV, cut-off log) the
mean of the per-interval samples, and the report says which. Latencies keep their unit.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass

from pydantic import JsonValue

from kvmple.errors import WorkloadError
from kvmple.workloads.base import json_ready

SOURCES = {
    "rabbitmq": "rabbitmq-perf-test",
    "rabbitmq-compact": "rabbitmq-perf-test -mf compact",
    "rabbitmq-csv": "rabbitmq-perf-test -o CSV",
}
_RATE = r"(\d+(?:\.\d+)?) msg/s"
_LAT = r"(\d+)/(\d+)/(\d+)/(\d+)/(\d+) (ms|µs|us)"
_ID = r"(?:id: [^,]*, )?"
DEFAULT_LINE = re.compile(
    rf"^{_ID}time:? ?(\d+(?:\.\d+)?) ?s, .*?\bsent: {_RATE}.*?\breceived: {_RATE}"
)
_SENT_ONLY = re.compile(rf"^{_ID}time:? ?(\d+(?:\.\d+)?) ?s, .*?\b(sent|received): {_RATE}")
_CONSUMER = re.compile(rf"consumer latency: {_LAT}")
_CONFIRM = re.compile(rf"confirm latency: {_LAT}")
_LEGACY = re.compile(r"min/avg/max latency: (\d+)/(\d+)/(\d+) (ms|µs|us)")
_SUM_SENT = re.compile(rf"^{_ID}sending rate avg: {_RATE}\s*$")
_SUM_RECV = re.compile(rf"^{_ID}receiving rate avg: {_RATE}\s*$")
_SUM_LAT = re.compile(rf"^{_ID}(consumer|confirm) latency min/median/75th/95th/99th {_LAT}\s*$")
COMPACT_HEADER = re.compile(r"^time\s+(sent|received)\b.*$")
_COMPACT_ROW = re.compile(r"^(\d+(?:\.\d+)?)s\s+(.*)$")
CSV_HEADER = "id,time (s),published (msg/s),"


@dataclass(frozen=True)
class Latency:
    """min/median/75th/95th/99th as PerfTest printed them, with their unit."""

    min: int
    median: int
    p75: int
    p95: int
    p99: int
    unit: str  # "ms" or "µs"


@dataclass(frozen=True)
class RateSample:
    """One reporting interval."""

    time_s: float
    sent_per_sec: float | None
    received_per_sec: float | None
    consumer_latency: Latency | None = None
    confirm_latency: Latency | None = None
    # PerfTest before percentiles (--legacy-metrics): "min/avg/max latency: a/b/c µs"
    min_avg_max_latency: tuple[int, int, int, str] | None = None


@dataclass(frozen=True)
class RabbitPerfTestReport:
    source: str
    samples: tuple[RateSample, ...]
    sending_rate_avg: float | None  # the summary lines (msg/s)
    receiving_rate_avg: float | None
    consumer_latency: Latency | None = None  # summary, whole run
    confirm_latency: Latency | None = None
    basis: str = ""  # where transfers_per_sec comes from

    @property
    def transfers_per_sec(self) -> float:
        """sent + received msg/s for the whole run (see ``basis``)."""
        if self.sending_rate_avg is not None and self.receiving_rate_avg is not None:
            return self.sending_rate_avg + self.receiving_rate_avg
        total = [(s.sent_per_sec or 0.0) + (s.received_per_sec or 0.0) for s in self.samples]
        return sum(total) / len(total)

    def to_json(self) -> dict[str, JsonValue]:
        data = asdict(self)
        data["transfers_per_sec"] = self.transfers_per_sec
        return json_ready(data)


def _latency(match: re.Match[str] | None, first: int = 1) -> Latency | None:
    if match is None:
        return None
    return _five([match.group(first + i) for i in range(5)], match.group(first + 5))


def _five(values: list[str], unit: str) -> Latency:
    low, median, p75, p95, p99 = (int(v) for v in values)
    return Latency(low, median, p75, p95, p99, unit.replace("us", "µs"))


def _summary(lines: list[str]) -> tuple[float | None, float | None, dict[str, Latency]]:
    sent = received = None
    latencies: dict[str, Latency] = {}
    for line in lines:
        if m := _SUM_SENT.match(line):
            sent = float(m.group(1))
        elif m := _SUM_RECV.match(line):
            received = float(m.group(1))
        elif m := _SUM_LAT.match(line):
            latency = _latency(m, 2)
            assert latency is not None
            latencies[m.group(1)] = latency
    return sent, received, latencies


def _default_samples(lines: list[str]) -> list[RateSample]:
    samples: list[RateSample] = []
    for line in lines:
        m = DEFAULT_LINE.match(line)
        if m is None:
            continue
        legacy = _LEGACY.search(line)
        samples.append(
            RateSample(
                float(m.group(1)),
                float(m.group(2)),
                float(m.group(3)),
                _latency(_CONSUMER.search(line)),
                _latency(_CONFIRM.search(line)),
                (
                    (int(legacy[1]), int(legacy[2]), int(legacy[3]), legacy[4].replace("us", "µs"))
                    if legacy
                    else None
                ),
            )
        )
    return samples


def _compact_samples(lines: list[str]) -> list[RateSample]:
    header = next((line for line in lines if COMPACT_HEADER.match(line)), "")
    columns = re.findall(r"sent|returned|confirmed|nacked|received", header)
    samples: list[RateSample] = []
    for line in lines:
        m = _COMPACT_ROW.match(line)
        if m is None:
            continue
        rates = [float(r) for r in re.findall(_RATE, m.group(2))]
        if len(rates) != len(columns):
            continue
        by_name = dict(zip(columns, rates, strict=True))
        latencies = list(re.finditer(_LAT, m.group(2)))
        consumer = _latency(latencies[0]) if latencies and "received" in columns else None
        confirm = _latency(latencies[-1]) if "confirmed" in columns and latencies else None
        samples.append(
            RateSample(
                float(m.group(1)), by_name.get("sent"), by_name.get("received"), consumer, confirm
            )
        )
    return samples


def _csv_samples(text: str, where: str) -> list[RateSample]:
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], [r for r in rows[1:] if r]
    unit = "ms" if "(ms)" in ",".join(header) else "µs"
    samples: list[RateSample] = []
    for number, row in enumerate(body, 2):
        if len(row) < 12:
            raise WorkloadError(f"{where}:{number}: a CSV row with {len(row)} fields, not 17")

        consumer = _five(row[7:12], unit) if all(row[7:12]) else None
        confirm = _five(row[12:17], unit) if len(row) >= 17 and all(row[12:17]) else None
        sent, received = (float(v) if v else None for v in (row[2], row[6]))
        samples.append(RateSample(float(row[1]), sent, received, consumer, confirm))
    return samples


def parse_rabbitmq(text: str, fmt: str, where: str = "perftest output") -> RabbitPerfTestReport:
    """Parse a RabbitMQ PerfTest log of format ``fmt`` (a key of SOURCES).

    Raises WorkloadError when the log has neither a summary nor a per-interval sample with
    both rates (a run cut off before its first report has no figures).
    """
    lines = [line.rstrip("\r") for line in text.splitlines()]
    if fmt == "rabbitmq-csv":
        samples = _csv_samples(text, where)
        sent = received = None
        latencies: dict[str, Latency] = {}
    else:
        samples = _compact_samples(lines) if fmt == "rabbitmq-compact" else _default_samples(lines)
        sent, received, latencies = _summary(lines)
    complete = [s for s in samples if s.sent_per_sec is not None and s.received_per_sec is not None]
    if sent is not None and received is not None:
        basis = "summary: sending rate avg + receiving rate avg"
    elif complete:
        basis = f"mean of {len(complete)} per-interval samples (sent + received): no summary"
        samples = complete
    else:
        raise WorkloadError(
            f"{where}: a RabbitMQ PerfTest log without figures for both directions (no "
            "'sending/receiving rate avg' summary, no interval with sent and received)",
            hint="transfers/s needs producers and consumers (-x and -y above 0) and a "
            "finished first interval",
        )
    return RabbitPerfTestReport(
        SOURCES[fmt],
        tuple(samples),
        sent,
        received,
        latencies.get("consumer"),
        latencies.get("confirm"),
        basis,
    )


def detect_rabbitmq(text: str) -> str | None:
    """Which RabbitMQ PerfTest format ``text`` is in, judged on its lines' structure."""
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith(CSV_HEADER):
        return "rabbitmq-csv"
    if any(COMPACT_HEADER.match(line) for line in lines) and any(
        _COMPACT_ROW.match(line) and "msg/s" in line for line in lines
    ):
        return "rabbitmq-compact"
    if any(_SENT_ONLY.match(line) for line in lines) or any(
        _SUM_SENT.match(line) or _SUM_RECV.match(line) for line in lines
    ):
        return "rabbitmq"
    return None
