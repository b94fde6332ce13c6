"""kvmple-perftest's controller: one iteration of forked clients, timed and checked.

Subscribers start first, then publishers; once all are connected (and, with --wait-go,
once the caller said GO_WORD) the window opens, publishers send, end markers queue up
behind the data, and the window closes when the last subscriber saw its marker. Every
message must have arrived exactly once, or the run fails.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import select
import sys
import time
from typing import Any

from .perftest_amqp import (
    FANOUT_EXCHANGE,
    RunFailed,
    RunTimeout,
    connect,
    queue_name,
    send_end_markers,
)
from .perftest_clients import publisher_main, subscriber_main
from .perftest_cpu import CpuWindow
from .protocol import GO_WORD, READY_LINE, WINDOW_END_LINE, CpuRecord, IterationRecord

Reports = dict[int, dict[str, Any]]  # client index -> what it reported


def wait_for_go(children: list[Any], deadline: float) -> float:
    """Say the clients are ready, then wait for the caller's word on stdin (--wait-go);
    returns the seconds waited. A blocking read on the open SSH channel wakes the moment the
    word arrives (a starved guest took seconds to run a separate command that wrote a file)."""
    print(READY_LINE, flush=True)
    since = time.monotonic()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.2)
        if ready:
            word = sys.stdin.readline().strip()
            if word == GO_WORD:
                return time.monotonic() - since
            raise RunFailed(
                "the caller called the run off before its window: " + (word or "its input ended")
            )
        dead = [p for p in children if not p.is_alive()]
        if dead:
            raise RunFailed(f"a client exited while waiting for the go (exit {dead[0].exitcode})")
        if time.monotonic() > deadline:
            raise RunTimeout(f"no {GO_WORD} on stdin before the timeout")


def wait_for(
    results: Any,
    children: list[Any],
    wanted: dict[str, int],
    *,
    deadline: float,
    progress: Any,
    phase: str,
    partial: bool = False,
) -> dict[str, Reports]:
    """Collect messages of the wanted kinds; fail on a client error, death or the deadline."""
    got: dict[str, Reports] = {kind: {} for kind in wanted}
    while any(len(got[k]) < n for k, n in wanted.items()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if partial:
                return got
            raise_timeout_phase(phase, progress)
        try:
            kind, index, payload = results.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            dead = [p for p in children if p.exitcode not in (None, 0)]
            if dead:
                # Give its error message a moment to arrive; else report the bare death.
                try:
                    kind, index, payload = results.get(timeout=1.0)
                except queue.Empty:
                    raise RunFailed(
                        f"a client process died (exit {dead[0].exitcode}) during {phase}"
                    ) from None
            else:
                continue
        if kind == "error":
            raise RunFailed(str(payload))
        if kind in got:
            got[kind][index] = payload
    return got


def raise_timeout_phase(phase: str, progress: Any) -> None:
    received = sum(progress)
    raise RunTimeout(
        f"timed out waiting for clients to {phase} (subscribers had received {received} "
        f"messages); the broker may be down or a client hung"
    )


def raise_timeout(opts: argparse.Namespace, progress: Any, phase: str) -> None:
    received = sum(progress)
    raise RunTimeout(
        f"timed out after {opts.timeout:g}s waiting for subscribers to {phase}: they had "
        f"received {received} messages; the broker may be down or a client hung"
    )


class _Clients:
    """The forked clients of one iteration and the shared objects they report through."""

    def __init__(self, opts: argparse.Namespace) -> None:
        ctx = multiprocessing.get_context("fork")
        self.results = ctx.Queue()
        self.start = ctx.Event()
        self.leave = ctx.Event()
        nqueues = 1 if opts.mode == "fanout" else opts.qt
        self.total_pubs = opts.npubs * nqueues
        self.total_subs = opts.nsubs * nqueues
        self.progress = ctx.Array("q", self.total_subs, lock=False)
        parent = os.getpid()
        self.pubs: list[Any] = []
        self.subs: list[Any] = []
        self.sub_queue: dict[int, str] = {}  # subscriber index -> its queue or exchange
        for q in range(nqueues):
            ids = list(range(q * opts.npubs, (q + 1) * opts.npubs))
            all_ids = list(range(self.total_pubs)) if opts.mode == "fanout" else ids
            target = FANOUT_EXCHANGE if opts.mode == "fanout" else queue_name(q)
            routing = (FANOUT_EXCHANGE, "") if opts.mode == "fanout" else ("", queue_name(q))
            for i in range(opts.nsubs):
                index = q * opts.nsubs + i
                self.sub_queue[index] = target
                sub_args = {
                    "source": target,
                    "pub_ids": all_ids,
                    "results": self.results,
                    "progress": self.progress,
                    "leave": self.leave,
                    "parent": parent,
                }
                self.subs.append(
                    ctx.Process(
                        target=subscriber_main, args=(opts, index), kwargs=sub_args, daemon=True
                    )
                )
            for pid in ids:
                pub_args = {
                    "routing": routing,
                    "results": self.results,
                    "start": self.start,
                    "leave": self.leave,
                    "parent": parent,
                }
                self.pubs.append(
                    ctx.Process(
                        target=publisher_main, args=(opts, pid), kwargs=pub_args, daemon=True
                    )
                )
        self.children = self.subs + self.pubs

    def wait(
        self, wanted: dict[str, int], deadline: float, phase: str, partial: bool = False
    ) -> dict[str, Reports]:
        return wait_for(
            self.results,
            self.children,
            wanted,
            deadline=deadline,
            progress=self.progress,
            phase=phase,
            partial=partial,
        )

    def end(self) -> None:
        self.start.set()
        self.leave.set()
        for proc in self.children:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _receive_all(
    opts: argparse.Namespace, clients: _Clients, marker_ch: Any, deadline: float
) -> Reports:
    """Send the end markers and wait until every subscriber saw one and reported."""
    expected_ends: dict[str, int] = {}
    for target in clients.sub_queue.values():
        expected_ends[target] = expected_ends.get(target, 0) + 1
    if opts.mode == "fanout":
        expected_ends = {FANOUT_EXCHANGE: 1}
    send_end_markers(opts, marker_ch, expected_ends)
    sub_reports: Reports = {}
    resend_at = time.monotonic() + 5.0
    while len(sub_reports) < clients.total_subs:
        # In shared mode the broker round-robins markers; if one subscriber took two,
        # another still waits: send it one more (markers after the data cost nothing).
        step = min(deadline, resend_at)
        got = clients.wait(
            {"sub-done": clients.total_subs - len(sub_reports)}, step, "receive", partial=True
        )
        sub_reports.update(got["sub-done"])
        if len(sub_reports) < clients.total_subs and time.monotonic() >= deadline:
            raise_timeout(opts, clients.progress, "receive")
        if len(sub_reports) < clients.total_subs and time.monotonic() >= resend_at:
            missing: dict[str, int] = {}
            for index, target in clients.sub_queue.items():
                if index not in sub_reports:
                    missing[target] = missing.get(target, 0) + 1
            if opts.mode == "shared":
                send_end_markers(opts, marker_ch, missing)
            resend_at = time.monotonic() + 5.0
    return sub_reports


def run_iteration(opts: argparse.Namespace, last: bool = True) -> IterationRecord:
    """One iteration: its figures, the CPU split over its window and where the time went."""
    clients = _Clients(opts)
    began = time.monotonic()
    deadline = began + opts.timeout
    marker = None  # the controller's connection for the end markers
    try:
        for proc in clients.subs:
            proc.start()
        clients.wait({"sub-ready": clients.total_subs}, deadline, "ready")
        for proc in clients.pubs:
            proc.start()
        clients.wait({"pub-ready": clients.total_pubs}, deadline, "ready")
        marker = connect(opts)
        marker_ch = marker.channel()
        waited = 0.0
        if opts.wait_go:
            waited = wait_for_go(clients.children, deadline)
            opts.wait_go = False  # later iterations start at once: the load is already on

        cpu = CpuWindow([p.pid for p in clients.children])
        t0 = time.monotonic()
        clients.start.set()
        pub_reports = clients.wait({"pub-done": clients.total_pubs}, deadline, "send")["pub-done"]
        # Every data message is now routed; the end markers queue up behind them.
        sub_reports = _receive_all(opts, clients, marker_ch, deadline)
        cpu_split = cpu.finish()
        if getattr(opts, "staged", False) and last:
            print(WINDOW_END_LINE, flush=True)  # kvmple may stop the other guest's load now
        clients.leave.set()
        marker.close()
        marker = None
    finally:
        if marker is not None:
            marker.collect()  # a failed run: drop the connection without the close handshake
        clients.end()

    it = summarize(
        opts, t0, pub_reports, sub_reports, sub_queue=clients.sub_queue, cpu_split=cpu_split
    )
    # Where the time around the window went (kvmple's campaign overhead breakdown).
    it["setup_s"] = round(t0 - began - waited, 6)
    it["go_wait_s"] = round(waited, 6)
    it["drain_s"] = round(time.monotonic() - t0 - it["seconds"], 6)
    return it


def _message_check(
    opts: argparse.Namespace, sub_reports: Reports, sub_queue: dict[int, str]
) -> None:
    """RunFailed unless every message arrived exactly once (per queue, or per subscriber in
    fanout) and nothing unexpected came."""
    lost = duplicated = unexpected = 0
    first_problem = None
    if opts.mode == "fanout":
        groups = [[index] for index in sub_reports]
    else:
        by_queue: dict[str, list[int]] = {}
        for index, target in sub_queue.items():
            by_queue.setdefault(target, []).append(index)
        groups = list(by_queue.values())
    for members in groups:
        pub_ids = sub_reports[members[0]]["seen"].keys()
        for pub in pub_ids:
            # Per-message counts (0/1/2...) of each subscriber, summed without carries:
            # each count is < 256 and there are fewer than 256 subscribers per queue.
            total = sum(int.from_bytes(sub_reports[m]["seen"][pub], "big") for m in members)
            counts = total.to_bytes(opts.count, "big")
            missing = counts.count(0)
            doubled = opts.count - missing - counts.count(1)
            lost += missing
            duplicated += doubled
            if (missing or doubled) and first_problem is None:
                if missing:
                    seq = counts.index(0)
                    first_problem = f"publisher {pub} message {seq} never arrived"
                else:
                    seq = next(i for i, c in enumerate(counts) if c > 1)
                    first_problem = f"publisher {pub} message {seq} arrived {counts[seq]} times"
    for report in sub_reports.values():
        unexpected += report["unexpected"]
    if lost or duplicated or unexpected:
        raise RunFailed(
            f"message check failed: {lost} lost, {duplicated} duplicated, {unexpected} "
            f"unexpected ({first_problem or 'messages of unknown origin or size'})"
        )


def summarize(
    opts: argparse.Namespace,
    t0: float,
    pub_reports: Reports,
    sub_reports: Reports,
    *,
    sub_queue: dict[int, str],
    cpu_split: CpuRecord,
) -> IterationRecord:
    """The iteration's figures from its clients' reports, after the message check."""
    _message_check(opts, sub_reports, sub_queue)
    last = max(r["last"] for r in sub_reports.values() if r["last"] is not None)
    seconds = last - t0
    if seconds <= 0:
        raise RunFailed("test completed in zero seconds; try a larger --count")
    pub_rates = [r["sent"] / (r["end"] - r["start"]) for r in pub_reports.values()]
    sub_rates = [
        r["received"] / (r["last"] - t0) if r["last"] else 0.0 for r in sub_reports.values()
    ]
    sent = sum(r["sent"] for r in pub_reports.values())
    received = sum(r["received"] for r in sub_reports.values())
    transfers = sent + received
    txrate = transfers / seconds
    return {
        "transfers": transfers,
        "sent": sent,
        "received": received,
        "seconds": seconds,
        "pub_rates": pub_rates,
        "sub_rates": sub_rates,
        "pubs_per_sec": sum(pub_rates) / len(pub_rates),
        "subs_per_sec": sum(sub_rates) / len(sub_rates),
        "transfers_per_sec": txrate,
        "mbytes_per_sec": txrate * opts.size / (1024 * 1024),
        "lost": 0,
        "duplicated": 0,
        "cpu": cpu_split,
    }
