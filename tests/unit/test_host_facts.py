"""CPU facts, cpulists and topology: pure parsers and the fake sysfs trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.errors import HostError
from kvmple.host.cpuinfo import parse_cpuinfo, read_cpuinfo
from kvmple.host.kvmmodule import find_kvm_module
from kvmple.host.topology import isolcpus_from_cmdline, parse_cpulist, read_topology
from tests.fixtures.fake_host import cpuinfo_text, make_fake_host


@pytest.mark.parametrize(
    ("kind", "vendor", "ext", "ple"),
    [
        ("intel", "GenuineIntel", "vmx", True),
        ("intel-nople", "GenuineIntel", "vmx", False),
        ("amd", "AuthenticAMD", "svm", True),
        ("amd-nople", "AuthenticAMD", "svm", False),
        ("pvm", "AuthenticAMD", None, False),
    ],
)
def test_cpuinfo_per_kind(kind: str, vendor: str, ext: str | None, ple: bool) -> None:
    cpu = parse_cpuinfo(cpuinfo_text(kind))  # type: ignore[arg-type]
    assert cpu.vendor == vendor
    assert cpu.virt_extension == ext
    assert cpu.ple_flag is ple
    assert cpu.under_hypervisor


def test_intel_ple_is_read_from_vmx_flags_not_flags() -> None:
    # 'ple' in the plain flags line must not count: Intel lists it under "vmx flags".
    text = "vendor_id\t: GenuineIntel\nflags\t\t: vmx ple\nvmx flags\t: vnmi ept\n"
    assert not parse_cpuinfo(text).ple_flag


def test_only_first_processor_block_is_used() -> None:
    text = cpuinfo_text("amd", cpus=2).replace("AMD EPYC 7302", "first", 1)
    assert parse_cpuinfo(text).model_name == "first"


def test_this_hosts_cpuinfo_parses() -> None:
    cpu = read_cpuinfo(Path("/proc"))
    assert cpu.vendor != "unknown"
    assert cpu.flags


def test_missing_cpuinfo_is_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="cpuinfo"):
        read_cpuinfo(tmp_path)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0", (0,)),
        ("0-3", (0, 1, 2, 3)),
        ("0-1,4,6-7\n", (0, 1, 4, 6, 7)),
        ("3,1,2", (1, 2, 3)),
        ("", ()),
        ("\n", ()),
    ],
)
def test_parse_cpulist(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["a", "1-", "3-1", "0,,x", "1-2-3"])
def test_parse_cpulist_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="cpulist"):
        parse_cpulist(text)


@pytest.mark.parametrize(
    ("cmdline", "cpus"),
    [
        ("ro isolcpus=2-3 quiet", (2, 3)),
        ("isolcpus=domain,managed_irq,1,5-6", (1, 5, 6)),
        ("ro quiet", ()),
        ("isolcpus=nohz,bogus", ()),
    ],
)
def test_isolcpus_from_cmdline(cmdline: str, cpus: tuple[int, ...]) -> None:
    assert isolcpus_from_cmdline(cmdline) == cpus


def test_topology_of_fake_smt_host(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "intel", cpus=4, smt=True)
    topo = read_topology(host.root)
    assert topo.online == (0, 1, 2, 3)
    assert topo.smt_siblings == ((0, 2), (1, 3))
    assert topo.smt_active
    assert [(n.node, n.cpus) for n in topo.numa_nodes] == [(0, (0, 1, 2, 3))]
    assert topo.isolated == (2, 3)  # no sysfs 'isolated': from isolcpus= on the cmdline
    assert dict(topo.governors) == dict.fromkeys(range(4), "performance")
    doc = topo.to_json()
    assert doc["smt_sibling_groups"] == [[0, 2], [1, 3]]
    assert doc["cpufreq_governors"] == dict.fromkeys(["0", "1", "2", "3"], "performance")


def test_topology_prefers_sysfs_isolated_and_handles_no_numa(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "amd", cpus=2, smt=False)
    (host.sys_root / "devices/system/cpu/isolated").write_text("1\n")
    for node in (host.sys_root / "devices/system/node").iterdir():
        for f in node.iterdir():
            f.unlink()
        node.rmdir()
    topo = read_topology(host.root)
    assert topo.isolated == (1,)
    assert topo.smt_siblings == ((0,), (1,))
    assert not topo.smt_active
    assert [(n.node, n.cpus) for n in topo.numa_nodes] == [(0, (0, 1))]


def test_topology_without_sysfs_is_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="online"):
        read_topology(tmp_path)


def test_topology_of_this_host() -> None:
    topo = read_topology()
    assert topo.online
    assert sorted(c for group in topo.smt_siblings for c in group) == list(topo.online)


@pytest.mark.parametrize(
    ("kind", "name", "builtin"),
    [("intel", "kvm_intel", False), ("amd", "kvm_amd", False), ("pvm", "kvm_pvm", True)],
)
def test_find_kvm_module(tmp_path: Path, kind: str, name: str, builtin: bool) -> None:
    host = make_fake_host(tmp_path, kind)  # type: ignore[arg-type]
    module = find_kvm_module(host.sys_root)
    assert module is not None
    assert module.name == name
    assert module.builtin is builtin
    assert (module.ple_spec is None) is (kind == "pvm")


def test_no_kvm_module(tmp_path: Path) -> None:
    (tmp_path / "module/kvm").mkdir(parents=True)
    assert find_kvm_module(tmp_path) is None
