"""Real tier: guests restored from booted snapshots (kvmple.vm.snapshot) through
qemu:///system under TCG: every read-back as after a cold boot, each guest its own (port,
pins, genid, clock, randomness), and a smoke cell measured from a cold-booted and from a
restored guest that the campaign's statistics cannot tell apart.

The snapshots live in the shared test cache (/var/cache/kvmple-tests/snapshots): the first
run on a machine saves them (one cold boot per key), later runs restore them.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from kvmple.campaign.readiness import level_of
from kvmple.image import Image
from kvmple.results.stats import compare
from kvmple.run import run
from kvmple.vm import registry, snapcache
from kvmple.vm.lifecycle import Guest, boot_guests
from kvmple.vm.snapshot import Readiness
from kvmple.vm.spec import VMSpec
from kvmple.workloads import AmqpPerftest, ensure_programs

pytestmark = pytest.mark.real

URI = "qemu:///system"
READY_TIMEOUT = 900.0  # a cold boot with RabbitMQ took 6+ min at load 20 on this 2-core host
MESSAGES = 3000  # per run: a ~2 s window under TCG
RUNS = 6  # per side, alternating cold and restored so host-load drift hits both alike


def _spec(image: Image, role: str, pins: tuple[tuple[int, ...], ...], memory: int) -> VMSpec:
    return VMSpec(role, image, 2, memory, pins, (0, 1), "tcg", ("no_timer_check",), "snaptest")


def _boot(guest: Guest) -> dict[str, object]:
    boot = guest.readback["boot"]
    assert isinstance(boot, dict)
    return boot


def _live_genid(name: str) -> str:
    xml = run(["virsh", "-c", URI, "dumpxml", name], timeout=60).stdout
    return str(ET.fromstring(xml).findtext("genid"))


def test_two_guests_restored_from_one_snapshot_are_their_own(image: Image) -> None:
    specs = [_spec(image, "r1", ((0,), (1,)), 1024), _spec(image, "r2", ((1,), (0,)), 1024)]
    with boot_guests(specs, uri=URI, ready_timeout=READY_TIMEOUT, snapshots=True) as guests:
        boots = [_boot(g) for g in guests]
        print("boot:", boots, "timings:", [g.timings for g in guests])
        assert all(b["mode"] == "restored" for b in boots)
        assert boots[0]["snapshot"] == boots[1]["snapshot"]  # pins are not in the key
        assert snapcache.lookup(str(boots[0]["snapshot"])) is not None
        # placement as each spec asks (boot_guests read it back from the kernel already)
        assert guests[0].affinity() == {0: (0,), 1: (1,)}
        assert guests[1].affinity() == {0: (1,), 1: (0,)}
        assert guests[0].ssh_port != guests[1].ssh_port
        # the clock was stepped: within seconds of the host's, not minutes behind
        for guest in guests:
            before = time.time()
            stamp = float(guest.executor.run(["date", "+%s.%N"], timeout=60).stdout)
            after = time.time()
            assert before - 5 <= stamp <= after + 5, (guest.name, stamp, before, after)
        # fresh VM generation IDs, and the guest kernel's vmgenid driver is there to see them
        assert _live_genid(guests[0].name) != _live_genid(guests[1].name)
        assert all(b["vmgenid_driver"] for b in boots)
        draws = [
            g.executor.run(["sh", "-c", "head -c 32 /dev/urandom | od -An -tx1"], timeout=60)
            for g in guests
        ]
        assert draws[0].stdout != draws[1].stdout
        # nothing of one guest in the other: a file written in r1 is absent in r2
        guests[0].executor.run(["touch", "/root/kvmple-r1-was-here"], timeout=60)
        absent = guests[1].executor.run(
            ["test", "-e", "/root/kvmple-r1-was-here"], timeout=60, check=False
        )
        assert absent.returncode == 1
    assert registry.all_records() == []


def _perftest_readiness() -> Readiness:
    perftest = AmqpPerftest()

    def check(executor: object, timeout: float) -> None:
        ensure_programs(executor)  # type: ignore[arg-type]
        perftest.prepare(executor, timeout=timeout)  # type: ignore[arg-type]

    return Readiness(level_of("amqp-perftest"), "snaptest-1", check)


def test_a_cell_from_restored_guests_matches_cold_booted_ones(image: Image) -> None:
    """One smoke-like cell (amqp-perftest, size 8, no load) measured alternately in a cold
    booted and a restored guest pinned to the same CPUs; compare() must not tell them apart."""
    ready = {"cell": _perftest_readiness()}
    cold_spec = _spec(image, "cell", ((0,), (1,)), 1536)
    warm_spec = replace(cold_spec, campaign_id="snaptestwarm")
    params = {"count": MESSAGES, "size": 8, "npubs": 1, "nsubs": 1, "qt": 1, "mode": "shared"}
    perftest = AmqpPerftest()
    values: dict[str, list[float]] = {"cold": [], "restored": []}
    with (
        boot_guests(
            [warm_spec], uri=URI, ready_timeout=READY_TIMEOUT, snapshots=True, readiness=ready
        ) as (warm,),
        boot_guests(
            [cold_spec], uri=URI, ready_timeout=READY_TIMEOUT, snapshots=False, readiness=ready
        ) as (cold,),
    ):
        assert _boot(warm)["mode"] == "restored" and _boot(cold)["mode"] == "cold"
        for _ in range(RUNS):
            for side, guest in (("cold", cold), ("restored", warm)):
                m = perftest.measure(guest.executor, params, timeout=300)
                values[side].append(m.figures["transfers_per_sec"])
    result = compare(values["cold"], values["restored"])
    print(
        f"transfers/s cold {values['cold']} restored {values['restored']}: ratio "
        f"{result.ratio}, Mann-Whitney p={result.mannwhitney_p}, Welch p={result.welch_p}, "
        f"verdict {result.verdict} ({result.why})"
    )
    assert result.verdict not in ("improved", "regressed"), result.why
