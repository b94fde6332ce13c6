"""Confounders of PLE results, detected in fake /proc, /sys and /etc trees."""

from __future__ import annotations

from pathlib import Path

from kvmple.host.confounders import (
    amd_without_pfthreshold,
    detect,
    halt_poll_ns,
    modprobe_options,
    qemu_cpu_pm,
)
from kvmple.host.cpuinfo import parse_cpuinfo


def _qemu(proc: Path, pid: int, *argv: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")


def test_qemu_with_cpu_pm_on_is_found(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _qemu(proc, 10, "/usr/bin/qemu-system-x86_64", "-overcommit", "mem-lock=off,cpu-pm=on")
    _qemu(proc, 11, "/usr/bin/qemu-system-x86_64", "-overcommit", "cpu-pm=off")
    _qemu(proc, 12, "/bin/sleep", "-overcommit", "cpu-pm=on")
    found = qemu_cpu_pm(proc)
    assert [c.where for c in found] == ["pid 10"]
    assert "PLE is off for it" in found[0].effect


def test_modprobe_options_for_ple_parameters(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "modprobe.d"
    conf.mkdir(parents=True)
    (conf / "tuned.conf").write_text(
        "# tuned realtime-virtual-host\noptions kvm_intel ple_gap=0 nested=1\n"
    )
    (conf / "amd.conf").write_text("options kvm-amd pause_filter_count=0  # off\n")
    (conf / "other.conf").write_text("options kvm_intel nested=1\nblacklist pcspkr\n")
    (conf / "notes.txt").write_text("options kvm_intel ple_gap=0\n")  # not a .conf: ignored
    found = modprobe_options(tmp_path)
    assert [(c.where, c.detail) for c in found] == [
        ("/etc/modprobe.d/amd.conf:1", "options kvm_amd pause_filter_count=0"),
        ("/etc/modprobe.d/tuned.conf:2", "options kvm_intel ple_gap=0"),
    ]


def test_halt_poll_ns_is_recorded(tmp_path: Path) -> None:
    params = tmp_path / "module" / "kvm" / "parameters"
    params.mkdir(parents=True)
    (params / "halt_poll_ns").write_text("200000\n")
    assert halt_poll_ns(tmp_path)[0].detail == "halt_poll_ns=200000"
    assert halt_poll_ns(tmp_path / "none") == []


def _cpu(flags: str) -> str:
    return f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\n"


def test_amd_pausefilter_without_pfthreshold_on_5_8_plus() -> None:
    without = parse_cpuinfo(_cpu("fpu svm npt pausefilter"))
    with_threshold = parse_cpuinfo(_cpu("fpu svm npt pausefilter pfthreshold"))
    assert amd_without_pfthreshold(without, "6.1.0-40-amd64")[0].kind == "amd-no-pfthreshold"
    assert amd_without_pfthreshold(without, "5.4.0") == []
    assert amd_without_pfthreshold(with_threshold, "6.1.0") == []
    assert amd_without_pfthreshold(parse_cpuinfo(_cpu("fpu svm")), "6.1.0") == []


def test_detect_gathers_everything(tmp_path: Path) -> None:
    _qemu(tmp_path / "proc", 10, "qemu-system-x86_64", "-overcommit", "cpu-pm=on")
    (tmp_path / "etc" / "modprobe.d").mkdir(parents=True)
    (tmp_path / "etc" / "modprobe.d" / "k.conf").write_text("options kvm_intel ple_window=8192\n")
    cpu = parse_cpuinfo(_cpu("svm pausefilter"))
    kinds = [c.kind for c in detect(cpu, "6.1.0", tmp_path / "proc", tmp_path / "sys", tmp_path)]
    assert kinds == ["amd-no-pfthreshold", "modprobe-options", "overcommit-cpu-pm"]


def test_ple_unavailable_on_amd_without_pfthreshold(tmp_path: Path) -> None:
    from kvmple.host import ple
    from tests.fixtures.fake_host import make_fake_host

    host = make_fake_host(tmp_path, "amd")
    assert ple.availability(host.seam())[1] is None  # EPYC: pausefilter + pfthreshold
    cpuinfo = host.proc_root / "cpuinfo"
    cpuinfo.write_text(cpuinfo.read_text().replace(" pfthreshold", ""))
    (host.proc_root / "sys/kernel").mkdir(parents=True)
    (host.proc_root / "sys/kernel/osrelease").write_text("6.1.0-40-amd64\n")
    reason = ple.availability(host.seam())[1]
    assert reason is not None and "disables PAUSE interception" in reason
    (host.proc_root / "sys/kernel/osrelease").write_text("5.4.0\n")
    assert ple.availability(host.seam())[1] is None
