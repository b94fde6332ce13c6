"""kvmple-perftest's client processes: publishers and subscribers (forked by the controller).

Each reports to the controller over a multiprocessing queue as ``(kind, index, payload)``:
"pub-ready"/"sub-ready" once connected, "pub-done"/"sub-done" with its figures, or "error"
with the reason. Every message carries (publisher id, sequence number); subscribers count
each one per publisher, so the controller can tell lost from duplicated messages.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from .perftest_amqp import (
    END_PUBLISHER,
    HEADER,
    batched_writes,
    connect,
    describe,
    message,
    read_in_chunks,
)


def parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def publisher_main(
    opts: argparse.Namespace,
    index: int,
    *,
    routing: tuple[str, str],
    results: Any,
    start: Any,
    leave: Any,
    parent: int,
) -> None:
    """One publisher process: wait for start, send --count messages, sync, report."""
    try:
        conn = connect(opts)
        ch = conn.channel()
        exchange, key = routing
        body = bytearray(opts.size)
        msg = message(b"")
        results.put(("pub-ready", index, None))
        while not start.wait(0.5):
            if parent_gone(parent):
                return
        t_start = time.monotonic()
        with batched_writes(conn, opts.batch) as flush:
            for seq in range(opts.count):
                HEADER.pack_into(body, 0, index, seq)
                msg.body = bytes(body)
                ch.basic_publish(msg, exchange=exchange, routing_key=key)
                if seq % opts.batch == opts.batch - 1:
                    flush()
                    if seq % 4096 == 4095 and parent_gone(parent):
                        return
        # A synchronous round trip on the same channel: the broker has processed (routed)
        # every publish before it answers (qpid-perftest's session.sync()).
        if exchange:
            ch.exchange_declare(exchange, "fanout", passive=True)
        else:
            ch.queue_declare(key, passive=True)
        t_end = time.monotonic()
        results.put(("pub-done", index, {"start": t_start, "end": t_end, "sent": opts.count}))
        leave.wait(opts.timeout)
        conn.close()
    except BaseException as exc:  # report every failure to the controller
        results.put(("error", index, f"publisher {index}: {describe(exc)}"))
        raise SystemExit(1) from None


def subscriber_main(
    opts: argparse.Namespace,
    index: int,
    *,
    source: str,
    pub_ids: list[int],
    results: Any,
    progress: Any,
    leave: Any,
    parent: int,
) -> None:
    """One subscriber process: count every message per publisher until the end marker."""
    try:
        conn = connect(opts)
        ch = conn.channel()
        if opts.mode == "fanout":
            name = ch.queue_declare("", exclusive=True, auto_delete=True).queue
            ch.queue_bind(name, exchange=source)
        else:
            name = source
        seen = {pid: bytearray(opts.count) for pid in pub_ids}
        state: dict[str, Any] = {
            "received": 0,
            "unexpected": 0,
            "first": None,
            "last": None,
            "end": False,
        }

        def on_message(message: Any) -> None:
            body = message.body
            pub, seq = HEADER.unpack_from(body, 0)
            if pub == END_PUBLISHER:
                state["end"] = True
                return
            counts = seen.get(pub)
            if counts is None or seq >= opts.count or len(body) != opts.size:
                state["unexpected"] += 1
                return
            if counts[seq] < 255:
                counts[seq] += 1
            now = time.monotonic()
            if state["first"] is None:
                state["first"] = now
            state["last"] = now
            state["received"] += 1
            if state["received"] % 1024 == 0:
                progress[index] = state["received"]

        ch.basic_consume(name, callback=on_message, no_ack=True)
        read_in_chunks(conn)
        results.put(("sub-ready", index, None))
        while not state["end"]:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:  # socket.timeout
                if parent_gone(parent):
                    return
        progress[index] = state["received"]
        report = {
            "received": state["received"],
            "unexpected": state["unexpected"],
            "first": state["first"],
            "last": state["last"],
            "seen": {str(pid): bytes(counts) for pid, counts in seen.items()},
        }
        results.put(("sub-done", index, report))
        leave.wait(opts.timeout)
        conn.close()
    except BaseException as exc:
        results.put(("error", index, f"subscriber {index}: {describe(exc)}"))
        raise SystemExit(1) from None
