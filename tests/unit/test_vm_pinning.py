"""Pinning sanity checks against made-up host topologies, and the affinity comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.errors import ConfigError
from kvmple.vm.pinning import HostCPUs, check_pinning, compare_affinity, read_host_cpus
from tests.unit.test_vm_spec import make_spec

# 8 possible CPUs, 0-5 online, SMT pairs (0,4) (1,5) (2) (3)
HOST = HostCPUs(
    possible=frozenset(range(8)),
    online=frozenset(range(6)),
    sibling_groups=(frozenset({0, 4}), frozenset({1, 5}), frozenset({2}), frozenset({3})),
)


def test_good_pinning_passes() -> None:
    check_pinning(make_spec(vcpu_pins=((0,), (1,)), emulator_pins=(2,)), HOST)


def test_cpu_that_does_not_exist() -> None:
    with pytest.raises(ConfigError, match=r"vCPU 1 pins host CPU 9, which does not exist"):
        check_pinning(make_spec(vcpu_pins=((0,), (9,))), HOST)


def test_offline_cpu() -> None:
    with pytest.raises(ConfigError, match=r"host CPU 7, which is offline") as info:
        check_pinning(make_spec(vcpu_pins=((7,), (1,))), HOST)
    assert "cpu7/online" in (info.value.hint or "")


def test_emulator_pin_checked_too() -> None:
    with pytest.raises(ConfigError, match="the emulator thread pins host CPU 6"):
        check_pinning(make_spec(emulator_pins=(6,)), HOST)


def test_more_vcpus_than_pins() -> None:
    with pytest.raises(ConfigError, match="3 vCPUs but only 2 pinned"):
        check_pinning(make_spec(vcpus=3, vcpu_pins=((0,), (1,))), HOST)


def test_more_pins_than_vcpus() -> None:
    with pytest.raises(ConfigError, match="3 pin sets for 2 vCPUs"):
        check_pinning(make_spec(vcpus=2, vcpu_pins=((0,), (1,), (2,))), HOST)


def test_empty_pin_set() -> None:
    with pytest.raises(ConfigError, match="vCPU 0 has an empty pin set"):
        check_pinning(make_spec(vcpu_pins=((), (1,))), HOST)


def test_split_smt_siblings_only_when_asked() -> None:
    spec = make_spec(vcpu_pins=((0,), (1,)))  # uses 0 and 1 but not their siblings 4 and 5
    check_pinning(spec, HOST)
    with pytest.raises(ConfigError, match=r"split the SMT core 0,4"):
        check_pinning(spec, HOST, keep_smt_siblings=True)
    whole = make_spec(vcpu_pins=((0, 4), (1, 5)))
    check_pinning(whole, HOST, keep_smt_siblings=True)


def test_compare_affinity() -> None:
    spec = make_spec(vcpu_pins=((0,), (1,)))
    assert compare_affinity(spec, {0: (0,), 1: (1,)}) == []
    problems = compare_affinity(spec, {0: (0, 1), 2: (1,)})
    assert problems == [
        "vCPU 0: pinned to 0-1, spec says 0",
        "vCPU 1: no thread found",
        "unexpected vCPUs [2]",
    ]


def _fake_sysfs(root: Path, online: str, possible: str, siblings: dict[int, str]) -> None:
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True)
    (cpu / "online").write_text(online + "\n")
    (cpu / "possible").write_text(possible + "\n")
    for n, sib in siblings.items():
        topo = cpu / f"cpu{n}/topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(sib + "\n")


def test_read_host_cpus_from_a_fake_tree(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path, "0-2", "0-3", {0: "0,2", 1: "1", 2: "0,2"})
    host = read_host_cpus(tmp_path)
    assert host.possible == frozenset({0, 1, 2, 3})
    assert host.online == frozenset({0, 1, 2})
    assert set(host.sibling_groups) == {frozenset({0, 2}), frozenset({1})}


def test_read_host_cpus_of_this_host() -> None:
    host = read_host_cpus()
    assert host.online and host.online <= host.possible
