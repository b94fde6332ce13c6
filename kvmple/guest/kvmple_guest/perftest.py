"""kvmple-perftest: an AMQP 0-9-1 throughput test modelled on Qpid's qpid-perftest.

Runs inside a guest that has only python3 and python3-amqp (stdlib + amqp, no venv).
Publishers and subscribers are separate processes (so they can run on different vCPUs).
Every message carries (publisher id, sequence number); subscribers count every message and
the run FAILS if any is missing or duplicated. Output has qpid-perftest's shape (full report,
or with -s one tab-separated line: pubs/sec subs/sec transfers/sec Mbytes/sec; transfers count
sends and receives); --machine adds one "KVMPLE-PERFTEST {json}" line for kvmple, including
the guest CPU split between the broker and the clients during the measurement window.

Other modes: --probe (does the broker really accept AMQP?), --cleanup (delete what earlier
runs left), --naive (the single-connection baseline), --external -- CMD (run e.g. the real
qpid-perftest and measure the CPU split around it).

Exit codes (protocol.PerftestExit): 0 ok, 1 run failed (reason on stderr), 2 bad options,
3 timed out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from .perftest_amqp import (
    HEADER,
    NAIVE_QUEUE,
    RunFailed,
    RunTimeout,
    connect,
    declare,
    delete_all,
    describe,
    message,
    probe,
)
from .perftest_controller import run_iteration
from .perftest_cpu import CpuWindow
from .perftest_options import build_parser
from .perftest_report import machine_line, machine_record, print_averages, print_iteration
from .protocol import ERROR_PREFIX, QUEUE_PREFIX, IterationRecord, PerftestExit

STARTED = time.monotonic()  # after the imports: interpreter start-up is not in it


def naive(opts: argparse.Namespace) -> IterationRecord:
    """The baseline: one process, one connection; publish --count, then consume them all."""
    conn = connect(opts)
    try:
        pub = conn.channel()
        sub = conn.channel()
        pub.queue_declare(NAIVE_QUEUE, durable=False, auto_delete=False)
        pub.queue_purge(NAIVE_QUEUE)
        seen = bytearray(opts.count)
        state = {"received": 0}

        def on_message(msg: Any) -> None:
            _, seq = HEADER.unpack_from(msg.body, 0)
            if seq < opts.count:
                seen[seq] += 1
            state["received"] += 1

        tag = sub.basic_consume(NAIVE_QUEUE, callback=on_message, no_ack=True)
        cpu = CpuWindow([])
        t0 = time.monotonic()
        body = bytearray(opts.size)
        deadline = t0 + opts.timeout
        for seq in range(opts.count):
            HEADER.pack_into(body, 0, 0, seq)
            pub.basic_publish(message(bytes(body)), exchange="", routing_key=NAIVE_QUEUE)
        while state["received"] < opts.count:
            if time.monotonic() > deadline:
                raise RunTimeout(
                    f"timed out after {opts.timeout:g}s: received {state['received']} of "
                    f"{opts.count} messages"
                )
            try:
                conn.drain_events(timeout=1.0)
            except TimeoutError:  # socket.timeout
                pass
        seconds = time.monotonic() - t0
        cpu_split = cpu.finish()
        sub.basic_cancel(tag)
        pub.queue_delete(NAIVE_QUEUE)
    finally:
        conn.close()
    if seen.count(1) != opts.count:
        raise RunFailed(
            f"message check failed: {seen.count(0)} lost, "
            f"{opts.count - seen.count(0) - seen.count(1)} duplicated"
        )
    rate = opts.count / seconds
    return {
        "transfers": 2 * opts.count,
        "sent": opts.count,
        "received": opts.count,
        "seconds": seconds,
        "pub_rates": [rate],
        "sub_rates": [rate],
        "pubs_per_sec": rate,
        "subs_per_sec": rate,
        "transfers_per_sec": 2 * opts.count / seconds,
        "mbytes_per_sec": 2 * opts.count / seconds * opts.size / (1024 * 1024),
        "lost": 0,
        "duplicated": 0,
        "cpu": cpu_split,
    }


def external(opts: argparse.Namespace) -> int:
    """Run another perftest (qpid-perftest) unchanged and measure the CPU split around it."""
    if not opts.command:
        raise RunFailed("--external needs a command after --")
    try:
        proc = subprocess.Popen(opts.command, stdout=subprocess.PIPE, text=True)
    except OSError as exc:
        raise RunFailed(f"cannot run {opts.command[0]}: {describe(exc)}") from None
    cpu = CpuWindow([proc.pid])
    try:
        output, _ = proc.communicate(timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RunTimeout(f"{opts.command[0]} did not finish within {opts.timeout:g}s") from None
    cpu_split = cpu.finish()
    sys.stdout.write(output)
    if opts.machine:
        record = machine_record(opts, "external", [])
        record["command"] = opts.command
        record["exit"] = proc.returncode
        record["cpu"] = cpu_split
        machine_line(record)
    return PerftestExit.OK if proc.returncode == 0 else PerftestExit.FAILED


def measure(opts: argparse.Namespace) -> None:
    """--iterations runs (kvmple's engine or --naive), printed as they end."""
    iterations: list[IterationRecord] = []
    phases = {"declare_s": 0.0, "cleanup_s": 0.0}
    mark = time.monotonic()
    if not opts.naive:
        declare(opts)
    phases["declare_s"] = round(time.monotonic() - mark, 6)
    try:
        for _ in range(opts.iterations):
            last = len(iterations) == opts.iterations - 1
            it = naive(opts) if opts.naive else run_iteration(opts, last)
            iterations.append(it)
            print_iteration(opts, it)
            sys.stdout.flush()
    finally:
        mark = time.monotonic()
        if not opts.naive:
            try:
                delete_all(opts, opts.qt)
            except RunFailed:
                pass  # the broker is gone; the run already failed for that reason
        phases["cleanup_s"] = round(time.monotonic() - mark, 6)
    if opts.iterations > 1:
        print_averages(iterations)
    if opts.machine:
        phases["started_to_end_s"] = round(time.monotonic() - STARTED, 6)
        record = machine_record(opts, "naive" if opts.naive else "kvmple", iterations)
        record["phases_s"] = phases
        machine_line(record)


def main(argv: list[str] | None = None) -> int:
    """Run as the command line says; returns a PerftestExit code (bad options: SystemExit 2)."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    opts.staged = opts.wait_go
    if opts.command and not opts.external:
        parser.error(f"unrecognized arguments: {' '.join(opts.command)}")
    try:
        if opts.probe:
            probe(opts)
            return PerftestExit.OK
        if opts.cleanup:
            dropped = delete_all(opts, max(opts.qt, 16))
            print(f"deleted {QUEUE_PREFIX} queues ({dropped} messages dropped)")
            return PerftestExit.OK
        if opts.external:
            return external(opts)
        measure(opts)
        return PerftestExit.OK
    except RunFailed as exc:  # RunTimeout included, with its own code
        print(f"{ERROR_PREFIX} {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{ERROR_PREFIX} interrupted", file=sys.stderr)
        return PerftestExit.INTERRUPTED
    except Exception as exc:  # broker died mid-run and the like: one line, no traceback
        print(f"{ERROR_PREFIX} {describe(exc)}", file=sys.stderr)
        return PerftestExit.FAILED
