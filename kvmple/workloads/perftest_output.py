"""Parsers for AMQP perftest output: Qpid's qpid-perftest and kvmple-perftest (pure functions).

qpid-perftest (qpid-cpp src/tests/qpid-perftest.cpp) prints, per iteration, either a full
report::

    Total 1000000 transfers of 8 bytes in 4.46825 seconds.

    Publish transfers/sec:
    112014
    Average: 112014

    Subscribe transfers/sec:
    111905
    Average: 111905

    Total transfers/sec:      223801
    Total Mbytes/sec: 1.70746

or, with ``-s``, one tab-separated line ``pubs/sec subs/sec transfers/sec Mbytes/sec``; with
``--iterations`` > 1 it ends with ``Averages:`` and one more tab-separated line. Numbers are
C++ ostream defaults (``%g``, 6 significant digits: ``1.23457e+06``). Later qpid-cpp versions
also print progress characters without newlines to stdout (a publisher's number every 100
messages sent, ``s`` every 100 received), which can end up glued to the front of a summary
line; they are stripped where that is unambiguous and reported otherwise.

kvmple-perftest prints the same shapes and, with ``--machine``, one ``KVMPLE-PERFTEST {json}``
line with every figure and the CPU split per iteration (its keys: the TypedDicts of
kvmple.guest.kvmple_guest.protocol, which the program itself builds the line from).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, cast

from pydantic import JsonValue

from kvmple.errors import InputError, WorkloadError
from kvmple.guest.kvmple_guest import protocol
from kvmple.workloads.base import CpuSplit, json_ready
from kvmple.workloads.rabbitmq_perftest import (
    SOURCES as RABBITMQ_FORMATS,
)
from kvmple.workloads.rabbitmq_perftest import (
    RabbitPerfTestReport,
    detect_rabbitmq,
    parse_rabbitmq,
)

RESULT_TAG = protocol.RESULT_TAG
QPID_FORMATS = ("qpid", "qpid-summary", "kvmple")
FORMATS = ("auto", *QPID_FORMATS, *RABBITMQ_FORMATS)
LOOKED_FOR = (
    "a KVMPLE-PERFTEST line (kvmple-perftest --machine); qpid-perftest's report ('Total N "
    "transfers of S bytes in T seconds.' then 'Total transfers/sec:'); qpid-perftest -s lines "
    "(4 tab-separated numbers); RabbitMQ PerfTest lines ('time ... s, sent: N msg/s, "
    "received: N msg/s' or 'sending rate avg: N msg/s'), its -mf compact table or its -o CSV"
)

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"
_TOTAL = re.compile(rf"^Total (\d+) transfers of (\d+) bytes in ({_NUM}) seconds\.\s*$")
_VALUE = re.compile(rf"^({_NUM})\s*$")
_AVERAGE = re.compile(rf"^Average: ({_NUM})(?: \(std\.dev\. ({_NUM})\))?\s*$")
_TXRATE = re.compile(rf"^Total transfers/sec:\s+({_NUM})\s*$")
_MBYTES = re.compile(rf"^Total Mbytes/sec:\s+({_NUM})\s*$")
# A number exactly as C++'s default ostream (%g, precision 6) renders it.
_G_FIXED = re.compile(r"^-?(?:0|[1-9]\d*)(?:\.\d*[1-9])?$")
_G_EXP = re.compile(r"^-?[1-9](?:\.\d*[1-9])?e[-+]\d\d+$")
_FAILURES = (
    "Controller exception:",
    "PublishThread exception:",
    "SubscribeThread exception:",
    "Sequence error",
    protocol.ERROR_PREFIX,
)


@dataclass(frozen=True)
class PerftestIteration:
    """The figures of one iteration (transfers count both sends and receives)."""

    transfers_per_sec: float
    mbytes_per_sec: float
    subs_per_sec: float
    pubs_per_sec: float | None  # None only when progress output made it ambiguous
    transfers: int | None = None  # full report / kvmple only
    size: int | None = None
    seconds: float | None = None
    pub_rates: tuple[float, ...] = ()
    sub_rates: tuple[float, ...] = ()
    cpu: CpuSplit | None = None


@dataclass(frozen=True)
class PerftestReport:
    """Everything a perftest log holds."""

    source: str  # "qpid-perftest", "qpid-perftest -s", "kvmple-perftest"
    iterations: tuple[PerftestIteration, ...]
    averages: PerftestIteration | None = None  # as printed by the tool (iterations > 1)
    warnings: tuple[str, ...] = ()
    params: dict[str, JsonValue] | None = None

    @property
    def transfers_per_sec(self) -> float:
        """Mean over iterations of the total transfers/sec."""
        return sum(it.transfers_per_sec for it in self.iterations) / len(self.iterations)

    def to_json(self) -> dict[str, JsonValue]:
        data = asdict(self)
        data["transfers_per_sec"] = self.transfers_per_sec
        return json_ready(data)


def _number(text: str, what: str, where: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WorkloadError(
            f"{where}: {what} is {text}: the perftest run was too short to time",
            hint="use a larger --count",
        )
    return value


def _check_failures(text: str, where: str) -> None:
    for line in text.splitlines():
        for marker in _FAILURES:
            if marker in line:
                raise WorkloadError(
                    f"{where}: the perftest run failed: {line.strip()[:300]}",
                    hint="a failed run has no figures; see the full output",
                )


def parse_qpid_full(text: str, where: str = "perftest output") -> PerftestReport:
    """Parse qpid-perftest's full report (one block per iteration, optional Averages)."""
    _check_failures(text, where)
    lines = [line.rstrip("\r") for line in text.splitlines()]
    iterations: list[PerftestIteration] = []
    averages: PerftestIteration | None = None
    current: dict[str, Any] | None = None
    collecting: list[float] | None = None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if m := _TOTAL.match(line):
            current = {
                "transfers": int(m.group(1)),
                "size": int(m.group(2)),
                "seconds": _number(m.group(3), "the time", where),
            }
            collecting = None
        elif current is not None and line.startswith("Publish transfers/sec:"):
            collecting = current.setdefault("pub_rates", [])
        elif current is not None and line.startswith("Subscribe transfers/sec:"):
            collecting = current.setdefault("sub_rates", [])
        elif current is not None and collecting is not None and (m := _VALUE.match(line)):
            collecting.append(_number(m.group(1), "a client rate", where))
        elif current is not None and (m := _AVERAGE.match(line)):
            key = "pub_mean" if "sub_rates" not in current else "sub_mean"
            current[key] = _number(m.group(1), "an average", where)
            collecting = None
        elif current is not None and (m := _TXRATE.match(line)):
            current["txrate"] = _number(m.group(1), "Total transfers/sec", where)
        elif current is not None and (m := _MBYTES.match(line)):
            if "txrate" not in current or "sub_mean" not in current:
                raise WorkloadError(f"{where}: incomplete iteration report before: {line}")
            iterations.append(
                PerftestIteration(
                    transfers_per_sec=current["txrate"],
                    mbytes_per_sec=_number(m.group(1), "Total Mbytes/sec", where),
                    subs_per_sec=current["sub_mean"],
                    pubs_per_sec=current["pub_mean"],
                    transfers=current["transfers"],
                    size=current["size"],
                    seconds=current["seconds"],
                    pub_rates=tuple(current.get("pub_rates", ())),
                    sub_rates=tuple(current.get("sub_rates", ())),
                )
            )
            current = None
        elif line.startswith("Averages:") and i + 1 < len(lines):
            averages, _ = _summary_line(lines[i + 1], where)
            i += 1
        i += 1
    if current is not None:
        raise WorkloadError(
            f"{where}: the last iteration's report is incomplete (output cut off?)",
            hint="a run that did not finish has no figures",
        )
    if not iterations:
        raise InputError(
            f"{where}: no qpid-perftest report found (looked for 'Total N transfers of S bytes "
            "in T seconds.' followed by the rates, 'Total transfers/sec:' and 'Total "
            "Mbytes/sec:')",
            hint="is this the output of qpid-perftest or kvmple-perftest?",
        )
    return PerftestReport("qpid-perftest", tuple(iterations), averages)


def _is_g(text: str) -> bool:
    if _G_EXP.match(text):
        return True
    if not _G_FIXED.match(text):
        return False
    digits = text.lstrip("-").replace(".", "").lstrip("0")
    return len(digits) <= 6


def _first_field(text: str) -> tuple[float | None, str | None]:
    """pubs/sec from the first field, without any progress characters glued to its front."""
    field = text.strip()
    if _is_g(field):
        return float(field), None
    tail = field.rsplit("s", 1)[-1] if "s" in field else field
    if (_is_g(tail) and not tail.startswith("0")) or tail == "0":
        return float(tail), "progress characters stripped from a summary line"
    stripped = tail.lstrip("0")
    if stripped.startswith("."):
        stripped = "0" + stripped
    if set(tail[: len(tail) - len(stripped)]) <= {"0"} and _is_g(stripped) and stripped:
        # Only publisher 0's digits ("0") precede it: a %g number never starts with 0.
        return float(stripped), "progress characters stripped from a summary line"
    return None, f"pubs/sec unreadable: progress characters glued to {field[-24:]!r}"


def _summary_line(line: str, where: str) -> tuple[PerftestIteration, str | None]:
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 4:
        raise WorkloadError(f"{where}: not a summary line (4 tab-separated numbers): {line!r}")
    rest = []
    for name, value in zip(("subs/sec", "transfers/sec", "Mbytes/sec"), fields[1:], strict=True):
        if not _VALUE.match(value.strip()):
            raise WorkloadError(f"{where}: {name} is not a number in summary line {line!r}")
        rest.append(_number(value.strip(), name, where))
    pubs, warning = _first_field(fields[0])
    return (
        PerftestIteration(
            transfers_per_sec=rest[1],
            mbytes_per_sec=rest[2],
            subs_per_sec=rest[0],
            pubs_per_sec=pubs,
        ),
        warning,
    )


def parse_qpid_summary(text: str, where: str = "perftest output") -> PerftestReport:
    """Parse qpid-perftest -s output: one tab-separated line per iteration (+ Averages)."""
    _check_failures(text, where)
    iterations: list[PerftestIteration] = []
    averages: PerftestIteration | None = None
    warnings: list[str] = []
    after_averages = False
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.strip().startswith("Averages:"):
            after_averages = True
            continue
        if line.count("\t") != 3:
            continue  # WARNING: lines, progress characters, blank lines
        iteration, warning = _summary_line(line, where)
        if warning:
            warnings.append(warning)
        if after_averages:
            averages = iteration
            after_averages = False
        else:
            iterations.append(iteration)
    if not iterations:
        raise InputError(
            f"{where}: no qpid-perftest -s summary line found (4 tab-separated numbers)",
            hint="is this the output of qpid-perftest -s?",
        )
    return PerftestReport("qpid-perftest -s", tuple(iterations), averages, tuple(warnings))


def parse_kvmple(text: str, where: str = "perftest output") -> PerftestReport:
    """Parse kvmple-perftest's machine-readable line (the last KVMPLE-PERFTEST line)."""
    _check_failures(text, where)
    record: protocol.PerftestRecord | None = None
    for line in text.splitlines():
        if line.startswith(RESULT_TAG + " "):
            try:
                record = cast(protocol.PerftestRecord, json.loads(line[len(RESULT_TAG) + 1 :]))
            except ValueError as exc:
                raise WorkloadError(f"{where}: unreadable {RESULT_TAG} line: {exc}") from None
    if record is None:
        raise InputError(f"{where}: no {RESULT_TAG} line (was --machine given?)")
    if record.get("format") != protocol.RECORD_FORMAT:
        raise WorkloadError(
            f"{where}: {RESULT_TAG} format {record.get('format')!r} is not supported",
            hint="the guest program and kvmple are from different versions",
        )
    iterations = []
    try:
        for it in record["iterations"]:
            iterations.append(
                PerftestIteration(
                    transfers_per_sec=float(it["transfers_per_sec"]),
                    mbytes_per_sec=float(it["mbytes_per_sec"]),
                    subs_per_sec=float(it["subs_per_sec"]),
                    pubs_per_sec=float(it["pubs_per_sec"]),
                    transfers=int(it["transfers"]),
                    size=int(record["params"]["size"]),
                    seconds=float(it["seconds"]),
                    pub_rates=tuple(float(v) for v in it["pub_rates"]),
                    sub_rates=tuple(float(v) for v in it["sub_rates"]),
                    cpu=CpuSplit.from_json(it["cpu"]) if it.get("cpu") else None,
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkloadError(f"{where}: {RESULT_TAG} line lacks a field: {exc}") from None
    if not iterations:
        raise WorkloadError(f"{where}: {RESULT_TAG} line has no iterations")
    params = cast(dict[str, JsonValue] | None, record.get("params"))
    return PerftestReport(protocol.PERFTEST, tuple(iterations), params=params)


def machine_record(text: str) -> protocol.PerftestRecord | None:
    """The last KVMPLE-PERFTEST record in ``text`` (None if there is none; its keys are
    not checked: see parse_kvmple)."""
    found = None
    for line in text.splitlines():
        if line.startswith(RESULT_TAG + " "):
            try:
                found = cast(protocol.PerftestRecord, json.loads(line[len(RESULT_TAG) + 1 :]))
            except ValueError:
                found = None
    return found


def _is_summary_line(line: str) -> bool:
    fields = line.rstrip("\r").split("\t")
    return len(fields) == 4 and all(_VALUE.match(f.strip()) for f in fields[1:])


def detect_format(text: str) -> str | None:
    """The log format (a FORMATS value other than "auto"), decided on the structure each
    format has as a whole, not on one substring; None when none fits."""
    if f"\n{RESULT_TAG} " in f"\n{text}":
        return "kvmple"
    lines = [line.strip() for line in text.splitlines()]
    if any(_TOTAL.match(line) for line in lines):
        return "qpid"  # its report starts so; a cut-off report is then "incomplete"
    if any(_is_summary_line(line) for line in text.splitlines()):
        return "qpid-summary"
    return detect_rabbitmq(text)


def unrecognised(text: str, where: str) -> InputError:
    """The refusal for a log in no known format: what was looked for, what the file is."""
    lines = [line for line in text.splitlines() if line.strip()]
    shape = (
        f"it has {len(lines)} non-empty line(s), the first {lines[0].strip()[:80]!r}"
        if lines
        else "it is empty"
    )
    return InputError(
        f"{where}: not a perftest log kvmple recognises; {shape}",
        hint=f"looked for {LOOKED_FOR}; --format names one to force it",
    )


def parse_perftest(text: str, fmt: str = "auto", where: str = "perftest output") -> PerftestReport:
    """Parse a qpid-perftest / kvmple-perftest log; ``fmt`` is one of QPID_FORMATS or "auto".

    Raises WorkloadError for a failed or cut-off run, InputError when "auto" finds no
    qpid/kvmple format (see parse_any for RabbitMQ PerfTest logs).
    """
    if fmt == "auto":
        _check_failures(text, where)
        detected = detect_format(text)
        if detected not in QPID_FORMATS:
            raise unrecognised(text, where)
        fmt = detected or "auto"
    if fmt == "kvmple":
        record = machine_record(text)
        if record is not None and record.get("engine") == "external":
            return parse_perftest(_without_tag(text), "auto", where)
        return parse_kvmple(text, where)
    if fmt == "qpid":
        return parse_qpid_full(text, where)
    if fmt == "qpid-summary":
        return parse_qpid_summary(text, where)
    raise WorkloadError(f"unknown perftest output format {fmt!r}", hint=f"one of {FORMATS}")


def parse_any(
    text: str, fmt: str = "auto", where: str = "perftest output"
) -> PerftestReport | RabbitPerfTestReport:
    """Any supported AMQP perftest log (qpid, kvmple, RabbitMQ PerfTest in its 3 formats)."""
    if fmt == "auto":
        _check_failures(text, where)
        fmt = detect_format(text) or ""
        if not fmt:
            raise unrecognised(text, where)
    if fmt in RABBITMQ_FORMATS:
        return parse_rabbitmq(text, fmt, where)
    return parse_perftest(text, fmt, where)


def _without_tag(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(RESULT_TAG + " "))
