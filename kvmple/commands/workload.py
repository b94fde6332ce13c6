"""``kvmple workload list|parse|run``: the workloads, their log parsers, and local runs.

- ``workload list``: registered workloads and what they measure.
- ``workload parse amqp-perftest FILE``: what a saved qpid-perftest / kvmple-perftest log
  holds, as JSON (so old qpid-perftest logs can be brought along); ``hackbench FILE`` too.
- ``workload run NAME [-p key=value ...]``: run one workload against this host (the local
  RabbitMQ for amqp-perftest), e.g. to try parameters before a campaign.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import JsonValue

from kvmple import ui
from kvmple.errors import InputError, UsageError, WorkloadError
from kvmple.executor import LocalExecutor
from kvmple.workloads import (
    WORKLOADS,
    MeasuredWorkload,
    Metric,
    Workload,
    get_workload,
    parse_params,
)
from kvmple.workloads.hackbench import parse_hackbench
from kvmple.workloads.perftest_output import FORMATS, RESULT_TAG, parse_any
from kvmple.workloads.programs import guest_dir
from kvmple.workloads.spin import SpinLoops

PARSERS = ("amqp-perftest", "hackbench")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "workload",
        help="list workloads, parse their saved output, run one on this host",
        description="Workloads: list them, parse saved logs to JSON, run one locally.",
    )
    actions = parser.add_subparsers(dest="workload_action", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="registered workloads and their metrics")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_list)

    parse = actions.add_parser("parse", help="print what a saved workload log holds, as JSON")
    parse.add_argument("workload", choices=PARSERS, help="whose output the file is")
    parse.add_argument("file", type=Path, help="the saved output ('-' for stdin)")
    parse.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="perftest output format (default: recognise it)",
    )
    parse.set_defaults(handler=_parse)

    run = actions.add_parser("run", help="run one workload against this host")
    run.add_argument("workload", choices=sorted(WORKLOADS))
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a workload parameter (repeatable), e.g. -p npubs=2 -p size=16",
    )
    run.add_argument("--timeout", type=float, default=600, help="seconds for the run")
    run.add_argument(
        "--seconds", type=float, default=5, help="spin: how long the loops run before stopping"
    )
    run.add_argument("--json", action="store_true", help="machine-readable output")
    run.set_defaults(handler=_run)


def _list(args: argparse.Namespace) -> int:
    listed = [(name, get_workload(name)) for name in sorted(WORKLOADS)]
    if args.json:
        rows = [
            {
                "name": name,
                "kind": workload.kind,
                "metrics": [
                    {"name": m.name, "unit": m.unit, "higher_is_better": m.higher_is_better}
                    for m in _metrics(workload)
                ],
                "params": sorted(workload.params_model.model_fields),
            }
            for name, workload in listed
        ]
        ui.out.print(json.dumps(rows, indent=2), markup=False)
        return 0
    for name, workload in listed:
        described = (
            ", ".join(
                f"{m.name} [{m.unit}, {'higher' if m.higher_is_better else 'lower'} is better]"
                for m in _metrics(workload)
            )
            or "(load: keeps vCPUs busy)"
        )
        ui.out.print(f"{name:<14} {workload.kind:<8} {described}", markup=False)
        params = ", ".join(sorted(workload.params_model.model_fields))
        ui.out.print(f"{'':<24}params: {params}", markup=False)
    return 0


def _metrics(workload: Workload) -> tuple[Metric, ...]:
    return workload.metrics if isinstance(workload, MeasuredWorkload) else ()


def _read(path: Path) -> str:
    if str(path) == "-":
        import sys

        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _parse(args: argparse.Namespace) -> int:
    text = _read(args.file)
    where = str(args.file)
    data: dict[str, JsonValue]
    if args.workload == "hackbench":
        if args.format != "auto":
            raise UsageError("--format applies to amqp-perftest logs only")
        if "Time:" not in text:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            raise InputError(
                f"{where}: not a hackbench log; "
                + (f"its first line is {lines[0][:80]!r}" if lines else "it is empty"),
                hint="looked for hackbench's 'Running in ... mode with N groups' and 'Time: S'",
            )
        data = {"source": "hackbench", "time": parse_hackbench(text, where)}
    else:
        data = parse_any(text, args.format, where).to_json()
    ui.out.print(json.dumps(data, indent=2, default=str), markup=False)
    return 0


def _params(pairs: list[str]) -> dict[str, JsonValue]:
    params: dict[str, JsonValue] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-p {pair!r}: expected KEY=VALUE", hint="e.g. -p npubs=2")
        # YAML scalars: 2 -> int, 1.5 -> float, true -> bool, [0,1] -> list, else a string.
        params[key.strip()] = yaml.safe_load(value) if value else ""
    return params


def _run(args: argparse.Namespace) -> int:
    executor = LocalExecutor()
    raw = _params(args.param)
    if args.workload == "spin":
        # on this host, never stop services unless asked to (-p stop_services=[...])
        raw.setdefault("stop_services", [])
    # On this host the programs run straight from the installed package (nothing copied).
    workload = get_workload(args.workload, bin_dir=str(guest_dir()))
    params = parse_params(workload.params_model, raw, where=f"-p for {args.workload}")
    workload.prepare(executor, timeout=min(args.timeout, 120), params=params)
    if isinstance(workload, SpinLoops):  # the load workload: held here, then read back
        with workload.running(executor, params) as status:
            time.sleep(max(0.0, args.seconds))
            final = workload.status(executor)
        data = {"verified": status.to_json(), "before_stop": final.to_json()}
        ui.out.print(json.dumps(data, indent=2), markup=False)
        return 0
    if not isinstance(workload, MeasuredWorkload):
        raise UsageError(f"workload {args.workload} has no figures to measure here")
    try:
        measurement = workload.measure(executor, params, timeout=args.timeout)
    finally:
        if args.workload == "amqp-perftest":
            try:
                workload.between_runs(executor, params)
            except WorkloadError as exc:
                ui.warn(str(exc))
    if args.json:
        ui.out.print(json.dumps(measurement.to_json(), indent=2, default=str), markup=False)
        return 0
    human = [
        line
        for line in measurement.raw_output.splitlines()
        if not line.startswith(RESULT_TAG + " ")
    ]
    ui.out.print("\n".join(human).rstrip(), markup=False)
    figures = ", ".join(f"{k}={v:.6g}" for k, v in measurement.figures.items())
    ui.err.print(f"{args.workload}: {figures}", markup=False)
    if measurement.cpu is not None:
        cpu = measurement.cpu
        ui.err.print(
            f"guest CPU split: broker {cpu.broker:.0%}, clients {cpu.clients:.0%}, "
            f"other {cpu.other:.0%}, idle {cpu.idle:.0%} of {cpu.ncpu} CPUs",
            markup=False,
        )
    return 0
