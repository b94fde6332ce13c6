"""kvmple-perftest's command line (qpid-perftest's option names, plus kvmple's own)."""

from __future__ import annotations

import argparse

from .perftest_amqp import HEADER
from .protocol import GO_WORD, PERFTEST, READY_LINE, RESULT_TAG, VERSION, WINDOW_END_LINE


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def message_size(text: str) -> int:
    value = positive_int(text)
    if value < HEADER.size:
        raise argparse.ArgumentTypeError(
            f"must be at least {HEADER.size} bytes (publisher id + sequence number), got {value}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser; a bad option exits with PerftestExit.USAGE (argparse's 2)."""
    p = argparse.ArgumentParser(
        prog=PERFTEST,
        description="AMQP throughput test modelled on qpid-perftest (kvmple guest program).",
    )
    p.add_argument("--version", action="version", version=f"{PERFTEST} {VERSION}")
    p.add_argument("--broker", default="127.0.0.1:5672", help="host:port of the AMQP broker")
    p.add_argument("--user", default="guest")
    p.add_argument("--password", default="guest")
    p.add_argument("--npubs", type=positive_int, default=1, help="publishers (per queue)")
    p.add_argument("--nsubs", type=positive_int, default=1, help="subscribers (per queue)")
    p.add_argument("--count", type=positive_int, default=500000, help="messages per publisher")
    p.add_argument("--size", type=message_size, default=1024, help="message size in bytes")
    p.add_argument("--qt", type=positive_int, default=1, help="queues (shared mode)")
    p.add_argument("--iterations", type=positive_int, default=1)
    p.add_argument("--mode", choices=("shared", "fanout"), default="shared")
    p.add_argument(
        "-s",
        "--summary",
        action="store_true",
        help="summary output: pubs/sec subs/sec transfers/sec Mbytes/sec",
    )
    p.add_argument("--timeout", type=positive_float, default=600.0, help="seconds per iteration")
    p.add_argument(
        "--batch",
        type=positive_int,
        default=64,
        help="publishes per socket write (1: python-amqp's own one write per message)",
    )
    p.add_argument("--machine", action="store_true", help=f"also print a {RESULT_TAG} JSON line")
    p.add_argument(
        "--wait-go",
        action="store_true",
        help=f"once every client is connected and ready, print {READY_LINE} and wait for a "
        f"line on stdin: '{GO_WORD}' starts the timed window, anything else (or end of input) "
        "calls the run off (kvmple starts the other guest's load in between); after the last "
        f"window print {WINDOW_END_LINE} (kvmple stops the load while the clients wind down)",
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument("--probe", action="store_true", help="check the broker accepts AMQP")
    action.add_argument("--cleanup", action="store_true", help="delete queues of earlier runs")
    action.add_argument("--naive", action="store_true", help="single-connection baseline")
    action.add_argument(
        "--external",
        action="store_true",
        help="run the command after -- (e.g. qpid-perftest) and measure the CPU split",
    )
    p.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    return p
