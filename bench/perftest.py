#!/usr/bin/env python3
"""Bench: kvmple-perftest at its best npubs/nsubs vs the naive single-connection baseline.

Issue 5's target: in one 2-vCPU guest (TCG here), kvmple-perftest with its best publisher /
subscriber split moves >= 2x the transfers/s of a naive single-connection python-amqp
publisher+subscriber (~1,400 transfers/s at 16 bytes measured under TCG on a quiet host).
Prints every figure measured in this one run, the ratio, and the guest CPU split between
the broker and the clients (the clients must not be the bottleneck).

    bench/perftest.py                 # boots one debian12-amqp guest (root, libvirt, TCG)
    bench/perftest.py --host          # against the host's RabbitMQ instead (no guest)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import JsonValue

from kvmple.executor import Executor, LocalExecutor
from kvmple.workloads import AmqpPerftest, Measurement
from kvmple.workloads.programs import GUEST_BIN, guest_dir


@contextmanager
def guest_executor(ready_timeout: float) -> Iterator[Executor]:
    os.environ.setdefault("KVMPLE_CACHE_DIR", "/var/cache/kvmple-tests")
    os.environ.setdefault("KVMPLE_KEY_DIR", "/var/cache/kvmple-tests/ssh")
    from kvmple.image import resolve
    from kvmple.vm.lifecycle import boot_guests
    from kvmple.vm.spec import VMSpec

    spec = VMSpec(
        role="amqp",
        image=resolve("debian12-amqp"),
        vcpus=2,
        memory_mib=1536,
        vcpu_pins=((0,), (1,)),
        emulator_pins=(0, 1),
        accelerator="tcg",
        campaign_id="benchperf",
        extra_kernel_args=("no_timer_check",),
    )
    start = time.monotonic()
    with boot_guests([spec], ready_timeout=ready_timeout) as (guest,):
        print(f"guest ready after {time.monotonic() - start:.0f} s", flush=True)
        yield guest.executor


@contextmanager
def local_executor() -> Iterator[Executor]:
    yield LocalExecutor()


def cpu_text(m: Measurement) -> str:
    if m.cpu is None:
        return "-"
    c = m.cpu
    return (
        f"broker {c.broker:.0%} ({c.broker_vcpus:.2f} vCPU), clients {c.clients:.0%} "
        f"({c.clients_vcpus:.2f} vCPU), other {c.other:.0%}, idle {c.idle:.0%}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", action="store_true", help="use the host's RabbitMQ")
    parser.add_argument("--count", type=int, default=0, help="messages per publisher")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument(
        "--grid", default="1x1,2x1,1x2,2x2,3x3", help="npubs x nsubs settings to try"
    )
    parser.add_argument("--ready-timeout", type=float, default=420)
    args = parser.parse_args()
    count = args.count or (20000 if args.host else 2000)
    grid = [tuple(int(n) for n in item.split("x")) for item in args.grid.split(",")]

    workload = AmqpPerftest(bin_dir=str(guest_dir()) if args.host else GUEST_BIN)
    where = (
        "host (no guest: TCG guests here run this ~27x slower)"
        if args.host
        else ("one 2-vCPU TCG guest pinned to host CPUs 0-1")
    )
    machine = local_executor() if args.host else guest_executor(args.ready_timeout)
    with machine as executor:
        start = time.monotonic()
        workload.prepare(executor, timeout=300)
        print(f"broker accepting AMQP after {time.monotonic() - start:.0f} s", flush=True)
        print(f"\nkvmple-perftest bench on {where}: --count {count} --size {args.size}\n")

        def run(params: dict[str, JsonValue]) -> Measurement:
            m = workload.measure(
                executor, {"count": count, "size": args.size, **params}, timeout=900
            )
            workload.between_runs(executor, params)
            return m

        naive = run({"engine": "naive"})
        print(
            f"  naive (1 process, 1 connection) : {naive.value:10.0f} transfers/s  "
            f"[{cpu_text(naive)}]",
            flush=True,
        )
        tried = []
        for npubs, nsubs in grid:
            m = run({"npubs": npubs, "nsubs": nsubs})
            tried.append(((npubs, nsubs), m))
            print(
                f"  kvmple npubs={npubs} nsubs={nsubs}        : {m.value:10.0f} transfers/s  "
                f"[{cpu_text(m)}]",
                flush=True,
            )
    (best_pn, best) = max(tried, key=lambda item: item[1].value)
    ratio = best.value / naive.value
    print()
    print(f"naive single-connection baseline : {naive.value:.0f} transfers/s")
    print(
        f"kvmple-perftest best (npubs={best_pn[0]} nsubs={best_pn[1]}) : "
        f"{best.value:.0f} transfers/s"
    )
    print(
        f"ratio best / naive               : {ratio:.2f}x  (goal >= 2x: "
        f"{'met' if ratio >= 2 else 'NOT met'})"
    )
    print(f"CPU split at best                : {cpu_text(best)}")
    print(f"CPU split naive                  : {cpu_text(naive)}")
    return 0


if __name__ == "__main__":
    from kvmple.cli import unwind_on_sigterm

    unwind_on_sigterm()  # SIGTERM cleans up the guests like Ctrl-C
    sys.exit(main())
