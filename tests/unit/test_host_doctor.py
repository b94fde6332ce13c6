"""The doctor's verdict (pure) for every kind of host, its JSON document, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmple import cli
from kvmple.host.cpuinfo import parse_cpuinfo
from kvmple.host.doctor import Verdict, decide
from kvmple.host.kvmmodule import find_kvm_module
from kvmple.host.kvmprobe import BootProbe, ProbeOutcome
from kvmple.host.ple import availability
from kvmple.host.virt import LibvirtInfo, QemuInfo
from kvmple.host.vms import RunningVm
from tests.fixtures.fake_host import cpuinfo_text, make_fake_host

QEMU = QemuInfo("/usr/bin/qemu-system-x86_64", "7.2.22", None)
LIBVIRT = LibvirtInfo("qemu:///system", True, ("qemu", "kvm"), None)
TCG_OK = ProbeOutcome("tcg", "passed", 0.4, "PGLD", "booted")
KVM_OK = ProbeOutcome("kvm", "passed", 0.1, "PGLD", "booted")
KVM_STUCK = ProbeOutcome(
    "kvm", "timeout", 10.0, "PGL", "no exit within 10 s: it reached 64-bit long mode but ..."
)


def _probe(kvm: ProbeOutcome, tcg: ProbeOutcome = TCG_OK) -> BootProbe:
    return BootProbe(kvm, tcg, "6.1.0", "7.2.22", "kvm_intel")


def _decide(
    tmp_path: Path,
    kind: str,
    probe: BootProbe | None,
    *,
    qemu: QemuInfo = QEMU,
    libvirt: LibvirtInfo = LIBVIRT,
    vms: tuple[RunningVm, ...] = (),
    dev_kvm: bool = True,
) -> Verdict:
    host = make_fake_host(tmp_path, kind)  # type: ignore[arg-type]
    _, reason = availability(host.seam())
    return decide(
        cpu=parse_cpuinfo(cpuinfo_text(kind)),  # type: ignore[arg-type]
        module=find_kvm_module(host.sys_root),
        dev_kvm=dev_kvm,
        probe=probe,
        ple_reason=reason,
        qemu=qemu,
        libvirt=libvirt,
        vms=vms,
    )


@pytest.mark.parametrize("kind", ["intel", "amd"])
def test_kvm_plus_ple(tmp_path: Path, kind: str) -> None:
    v = _decide(tmp_path, kind, _probe(KVM_OK))
    assert (v.verdict, v.accelerator, v.ple_available, v.can_run) == ("kvm+ple", "kvm", True, True)
    assert "pause-loop exiting" in v.reason
    assert "not on hardware" in v.advice


@pytest.mark.parametrize(
    ("kind", "why"), [("intel-nople", "lacks ple"), ("amd-nople", "pausefilter")]
)
def test_kvm_without_ple_says_why(tmp_path: Path, kind: str, why: str) -> None:
    v = _decide(tmp_path, kind, _probe(KVM_OK))
    assert (v.verdict, v.accelerator, v.ple_available) == ("kvm", "kvm", False)
    assert why in v.reason
    assert "recorded as unavailable" in v.advice


def test_pvm_host_is_tcg_with_the_reasons(tmp_path: Path) -> None:
    v = _decide(tmp_path, "pvm", _probe(KVM_STUCK))
    assert (v.verdict, v.accelerator, v.ple_available, v.can_run) == ("tcg", "tcg", False, True)
    assert "neither VT-x (vmx) nor AMD-V (svm)" in v.reason
    assert "kvm_pvm" in v.reason
    assert "KVM cannot boot an ordinary guest" in v.reason
    assert "long mode" in v.reason
    assert "TCG control passed" in v.reason
    assert "-accel tcg" in v.advice


def test_vmx_host_whose_kvm_hangs_is_tcg(tmp_path: Path) -> None:
    # the probe, not the flags, decides: a VT-x host whose KVM cannot boot is tcg
    v = _decide(tmp_path, "intel", _probe(KVM_STUCK))
    assert v.verdict == "tcg"
    assert "neither" not in v.reason
    assert "cannot boot an ordinary guest" in v.reason


def test_missing_dev_kvm(tmp_path: Path) -> None:
    skipped = ProbeOutcome("kvm", "skipped", 0.0, "", "/dev/kvm does not exist")
    v = _decide(tmp_path, "intel", _probe(skipped), dev_kvm=False)
    assert v.verdict == "tcg"
    assert "/dev/kvm does not exist" in v.reason


def test_without_probe_the_accelerator_is_a_flagged_guess(tmp_path: Path) -> None:
    v = _decide(tmp_path, "intel", None)
    assert v.verdict == "kvm+ple"
    assert any("probe was not run" in w for w in v.warnings)
    assert _decide(tmp_path / "p", "pvm", None).verdict == "tcg"


def test_no_qemu_means_cannot_run(tmp_path: Path) -> None:
    v = _decide(tmp_path, "pvm", None, qemu=QemuInfo(None, None, "qemu-system-x86_64 not found"))
    assert not v.can_run
    assert "QEMU is not usable: qemu-system-x86_64 not found" in v.problems[0]
    assert v.advice.startswith("fix first:")


def test_libvirt_unreachable_means_cannot_run(tmp_path: Path) -> None:
    down = LibvirtInfo("qemu:///system", False, (), "Failed to connect socket")
    v = _decide(tmp_path, "intel", _probe(KVM_OK), libvirt=down)
    assert not v.can_run
    assert "libvirt qemu:///system is unreachable: Failed to connect socket" in v.problems


def test_broken_tcg_control_is_a_problem(tmp_path: Path) -> None:
    broken = ProbeOutcome("tcg", "failed", 0.1, "", "QEMU exited with status 1")
    v = _decide(tmp_path, "pvm", _probe(KVM_STUCK, broken))
    assert not v.can_run
    assert "TCG control also failed" in v.reason


def test_foreign_vms_are_warned_about(tmp_path: Path) -> None:
    vms = (
        RunningVm("kvmple-a", "libvirt qemu:///system", 1, False, ""),
        RunningVm("prod-db", "libvirt qemu:///system", 2, True, ""),
    )
    v = _decide(tmp_path, "intel", _probe(KVM_OK), vms=vms)
    assert len(v.warnings) == 1
    assert "prod-db" in v.warnings[0]
    assert "kvmple-a" not in v.warnings[0]


def test_kvm_without_libvirt_kvm_domain_type_is_warned(tmp_path: Path) -> None:
    only_qemu = LibvirtInfo("qemu:///system", True, ("qemu",), None)
    v = _decide(tmp_path, "intel", _probe(KVM_OK), libvirt=only_qemu)
    assert any("no 'kvm' domain type" in w for w in v.warnings)


# --- the documented JSON schema ---------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs/doctor-json.md"
# objects whose keys are data (parameter names, CPU numbers), not schema
OPEN_OBJECTS = (
    "kvm.module.parameters",
    "kvm.module.ple_parameters",
    "ple.values",
    "topology.cpufreq_governors",
    "kvm.boot_probe.cache_key",
    "kvm.boot_probe.kvm",
    "kvm.boot_probe.tcg_control",
)


def documented_keys() -> set[str]:
    """The dotted key paths of the top-level table of docs/doctor-json.md."""
    text = DOC.read_text().split("## Probe outcome")[0]
    return {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}


def flatten_keys(doc: object, prefix: str = "") -> set[str]:
    """Dotted key paths of a doctor document, not descending into data-keyed objects."""
    keys: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{prefix}.{key}" if prefix else key
            keys.add(path)
            if path not in OPEN_OBJECTS:
                keys |= flatten_keys(value, path)
    return keys


def test_doctor_cli_without_qemu_exits_4_with_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no qemu-system-x86_64, no virsh
    assert cli.main(["doctor", "--json"]) == 4
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["can_run"] is False
    assert doc["qemu"]["binary"] is None
    assert doc["kvm"]["boot_probe"] is None
    assert "kvmple cannot run on this host" in captured.err
    assert "hint: scripts/setup-host.sh" in captured.err
    # every key carried is documented; every documented key is carried (the probe and
    # module subtrees are null here; tests/real checks them on a full document)
    carried = flatten_keys(doc)
    documented = documented_keys()
    assert carried - documented == set()
    optional = ("kvm.boot_probe.", "kvm.module.")
    assert {k for k in documented - carried if not k.startswith(optional)} == set()


def test_doctor_help_lists_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--help"])
    out = capsys.readouterr().out
    assert "--json" in out and "--no-probe" in out and "--reprobe" in out
