"""kvmple-perftest's AMQP side: connections, the message header, queues, a probe.

Uses python3-amqp (py-amqp), imported only where a connection is made so that --help,
--version and option errors work in a guest without it.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from .protocol import QUEUE_PREFIX, PerftestExit

HEADER = struct.Struct(">II")  # publisher id, sequence number
END_PUBLISHER = 0xFFFFFFFF  # publisher id of the end-of-iteration marker
FANOUT_EXCHANGE = f"{QUEUE_PREFIX}.fanout"
NAIVE_QUEUE = f"{QUEUE_PREFIX}.naive"

# Connect + AMQP handshake. Generous: with 2 busy loops on the same host CPUs a TCG guest's
# broker once took over 10 s to answer a handshake (nightly CI); a refused port still fails
# at once.
CONNECT_TIMEOUT = 60.0


class RunFailed(Exception):
    """The run failed for a stated reason (exit PerftestExit.FAILED)."""

    exit_code = PerftestExit.FAILED


class RunTimeout(RunFailed):
    """A client or the broker did not finish in time (exit PerftestExit.TIMEOUT)."""

    exit_code = PerftestExit.TIMEOUT


def describe(exc: BaseException) -> str:
    """One line for an exception: its type name, then its text unless that already says it."""
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def queue_name(index: int) -> str:
    return f"{QUEUE_PREFIX}.q{index}"


def connect(opts: argparse.Namespace, timeout: float = CONNECT_TIMEOUT) -> Any:
    """An open amqp.Connection to ``opts.broker``; RunFailed when it refuses or keeps
    resetting the handshake for ``timeout`` seconds."""
    import amqp  # late, so --help/--version/option errors work without it

    deadline = time.monotonic() + timeout
    while True:
        conn = amqp.Connection(
            host=opts.broker,
            userid=opts.user,
            password=opts.password,
            connect_timeout=max(1.0, deadline - time.monotonic()),
            read_timeout=None,
            write_timeout=None,
            # py-amqp sets TCP_USER_TIMEOUT to 1 s by default: a broker that stops reading for
            # over a second (RabbitMQ's flow control, or a vCPU starved by the very overcommit
            # we measure) then kills the connection with ETIMEDOUT. 0 restores the kernel default.
            socket_settings={socket.TCP_USER_TIMEOUT: 0},
        )
        try:
            conn.connect()
            return conn
        except (ConnectionResetError, BrokenPipeError) as exc:
            # RabbitMQ resets a connection whose handshake outlived its handshake_timeout
            # (10 s by default; a user's own image may keep it): a starved broker, not a
            # wrong address, so try again while the connect timeout lasts.
            if time.monotonic() + 0.5 >= deadline:
                raise RunFailed(
                    f"broker {opts.broker} reset every AMQP handshake for {timeout:.0f} s: "
                    f"{describe(exc)}"
                ) from None
            time.sleep(0.5)
        except (OSError, amqp.exceptions.AMQPError) as exc:
            raise RunFailed(
                f"broker {opts.broker} refused the AMQP connection: {describe(exc)}"
            ) from None


@contextlib.contextmanager
def batched_writes(conn: Any, batch: int) -> Iterator[Callable[[], None]]:
    """Collect the frames of ``batch`` publishes into one socket write (flush()).

    python-amqp writes every message with its own sendall(); syscalls are what a TCG guest
    pays most for, and a client that burns its vCPU on them becomes the bottleneck. Frames
    stay in order; everything is flushed before the synchronous round trip that ends the run.
    """
    transport = conn.transport
    direct = transport._write
    pending = bytearray()

    def collect(data: bytes) -> None:
        pending.extend(data)

    def flush() -> None:
        if pending:
            direct(bytes(pending))
            pending.clear()

    transport._write = collect if batch > 1 else direct
    try:
        yield flush
        flush()
    finally:
        transport._write = direct


def read_in_chunks(conn: Any) -> None:
    """Let python-amqp's reader take up to 64 KiB per recv() instead of one per frame part.

    Its _read(n) keeps whatever arrives beyond n for the next frame, so this only saves
    syscalls (two per frame, six per message, otherwise).
    """
    sock = conn.transport.sock
    conn.transport._quick_recv = lambda n: sock.recv(max(n, 65536))


def declare(opts: argparse.Namespace) -> None:
    """Fresh queues (declared and purged) or the fanout exchange, before clients start."""
    conn = connect(opts)
    try:
        ch = conn.channel()
        if opts.mode == "fanout":
            ch.exchange_declare(FANOUT_EXCHANGE, "fanout", durable=False, auto_delete=False)
        else:
            for q in range(opts.qt):
                ch.queue_declare(queue_name(q), durable=False, auto_delete=False)
                ch.queue_purge(queue_name(q))
    finally:
        conn.close()


def delete_all(opts: argparse.Namespace, qt: int) -> int:
    """Delete this program's queues/exchange (idempotent); returns messages dropped."""
    conn = connect(opts)
    dropped = 0
    try:
        ch = conn.channel()
        for name in [queue_name(q) for q in range(qt)] + [NAIVE_QUEUE]:
            dropped += ch.queue_delete(name) or 0
        ch.exchange_delete(FANOUT_EXCHANGE)
    finally:
        conn.close()
    return dropped


def message(body: bytes) -> Any:
    """An amqp.Message carrying ``body``."""
    import amqp  # see connect

    return amqp.Message(body)


def send_end_markers(opts: argparse.Namespace, ch: Any, per_target: dict[str, int]) -> None:
    """End-of-iteration markers: queued behind every data message of that queue/exchange.

    ``ch`` is a channel opened before the window: a new connection's handshake with a broker
    starved by the load took seconds (14 s once at overcommit 2.0 under TCG), all of it
    spent with the load still running."""
    import amqp  # see connect

    body = bytearray(opts.size)
    HEADER.pack_into(body, 0, END_PUBLISHER, 0)
    for target, n in per_target.items():
        for _ in range(n):
            if opts.mode == "fanout":
                ch.basic_publish(amqp.Message(bytes(body)), exchange=target, routing_key="")
            else:
                ch.basic_publish(amqp.Message(bytes(body)), exchange="", routing_key=target)


def probe(opts: argparse.Namespace) -> None:
    """A real AMQP round trip: connect, declare a private queue, publish, get it back."""
    import amqp  # see connect

    conn = connect(opts, timeout=5.0)
    try:
        ch = conn.channel()
        name = ch.queue_declare("", exclusive=True, auto_delete=True).queue
        ch.basic_publish(amqp.Message(b"probe"), exchange="", routing_key=name)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            got = ch.basic_get(name, no_ack=True)
            if got is not None and got.body == b"probe":
                print(f"broker {opts.broker} accepts AMQP")
                return
            time.sleep(0.05)
        raise RunFailed(f"broker {opts.broker} accepted a message but never delivered it")
    finally:
        with contextlib.suppress(Exception):  # the failure that brought us here is reported
            conn.close()
