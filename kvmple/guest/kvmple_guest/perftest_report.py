"""kvmple-perftest's output: qpid-perftest's shapes, and the machine-readable record.

The human report is what qpid-perftest (qpid-cpp src/tests/qpid-perftest.cpp) prints, so
kvmple's qpid parsers read both; ``machine_line`` prints the protocol's RESULT_TAG record.
"""

from __future__ import annotations

import argparse
import json

from .protocol import RECORD_FORMAT, RESULT_TAG, VERSION, IterationRecord, PerftestRecord


def g(value: float) -> str:
    """C++ ostream's default rendering of a double (what qpid-perftest prints)."""
    return format(value, "g")


def summary(it: IterationRecord) -> tuple[float, float, float, float]:
    """qpid-perftest -s's four figures: pubs/sec subs/sec transfers/sec Mbytes/sec."""
    return (it["pubs_per_sec"], it["subs_per_sec"], it["transfers_per_sec"], it["mbytes_per_sec"])


def print_stats(values: list[float]) -> None:
    for v in values:
        print(g(v))
    mean = sum(values) / len(values)
    line = f"Average: {g(mean)}"
    if len(values) > 1:
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        line += f" (std.dev. {g(var**0.5)})"
    print(line)


def print_iteration(opts: argparse.Namespace, it: IterationRecord) -> None:
    if opts.summary:
        print("\t".join(g(v) for v in summary(it)))
        return
    print()
    print(f"Total {it['transfers']} transfers of {opts.size} bytes in {g(it['seconds'])} seconds.")
    print()
    print("Publish transfers/sec:    ")
    print_stats(it["pub_rates"])
    print()
    print("Subscribe transfers/sec:  ")
    print_stats(it["sub_rates"])
    print()
    print(f"Total transfers/sec:      {g(it['transfers_per_sec'])}")
    print(f"Total Mbytes/sec: {g(it['mbytes_per_sec'])}")


def print_averages(iterations: list[IterationRecord]) -> None:
    n = len(iterations)
    figures = [summary(it) for it in iterations]
    print("Averages: ")
    print("\t".join(g(sum(f[k] for f in figures) / n) for k in range(4)))


def machine_record(
    opts: argparse.Namespace, engine: str, iterations: list[IterationRecord]
) -> PerftestRecord:
    """The RESULT_TAG record of a run (the caller adds the engine's optional keys)."""
    return {
        "format": RECORD_FORMAT,
        "version": VERSION,
        "engine": engine,
        "params": {
            "npubs": opts.npubs,
            "nsubs": opts.nsubs,
            "count": opts.count,
            "size": opts.size,
            "qt": opts.qt,
            "iterations": opts.iterations,
            "mode": opts.mode,
        },
        "iterations": iterations,
    }


def machine_line(record: PerftestRecord) -> None:
    print(f"{RESULT_TAG} {json.dumps(record, sort_keys=True)}", flush=True)
