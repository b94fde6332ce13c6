"""PLE control against fake Intel, AMD, no-PLE, kvm_pvm and busy-module trees.

The fake loader stands in for modprobe at the one seam that needs VT-x/AMD-V hardware; the
rest (checks, saving originals, read-back, restore, the CLI) is the real code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from kvmple import cli
from kvmple.errors import HostError, UsageError
from kvmple.host import ple, ple_state
from kvmple.host.kvmmodule import KVM_AMD, KVM_INTEL
from kvmple.host.vms import RunningVm
from tests.fixtures.fake_host import FakeHost, make_fake_host


@pytest.fixture
def intel(tmp_path: Path) -> FakeHost:
    return make_fake_host(tmp_path, "intel")


@pytest.fixture
def amd(tmp_path: Path) -> FakeHost:
    return make_fake_host(tmp_path, "amd")


def _snapshot(host: FakeHost) -> dict[str, str]:
    params = sorted(host.sys_root.glob("module/*/parameters/*"))
    return {str(p.relative_to(host.root)): p.read_text() for p in params}


def test_intel_status_reads_sysfs(intel: FakeHost) -> None:
    knobs = ple.read_knobs(intel.seam())
    assert knobs.module == "kvm_intel"
    assert knobs.values == KVM_INTEL.defaults()
    assert knobs.enabled
    assert knobs.to_json()["switch"] == "ple_gap"


def test_intel_off_then_on_round_trip(intel: FakeHost) -> None:
    seam = intel.seam()
    off = ple.set_mode(seam, "off")
    assert not off.enabled
    assert intel.param("kvm_intel", "ple_gap") == "0"
    assert intel.param("kvm_intel", "ple_window") == "4096"  # the others are kept
    assert intel.loader.calls == [("kvm_intel", {**KVM_INTEL.defaults(), "ple_gap": 0})]
    saved = ple_state.load()
    assert saved is not None
    assert saved.module == "kvm_intel"
    assert saved.values == KVM_INTEL.defaults()
    on = ple.set_mode(seam, "on")
    assert on.enabled
    assert on.values == KVM_INTEL.defaults()
    assert ple_state.load() is None  # back at the originals: nothing left to restore


def test_amd_off_zeroes_pause_filter_count(amd: FakeHost) -> None:
    knobs = ple.set_mode(amd.seam(), "off")
    assert knobs.module == "kvm_amd"
    assert amd.param("kvm_amd", "pause_filter_count") == "0"
    assert amd.param("kvm_amd", "pause_filter_thresh") == "128"


def test_on_prefers_saved_originals_over_defaults(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "intel", values={"ple_gap": 64, "ple_window": 8192})
    seam = host.seam()
    ple.set_mode(seam, "off")
    ple.apply(seam, {"ple_window": 100})
    knobs = ple.set_mode(seam, "on")
    assert knobs.values["ple_gap"] == 64
    assert knobs.values["ple_window"] == 8192


def test_on_uses_default_switch_when_host_started_with_ple_off(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "amd", values={"pause_filter_count": 0})
    knobs = ple.set_mode(host.seam(), "on")
    assert knobs.values["pause_filter_count"] == 3000
    saved = ple_state.load()
    assert saved is not None and saved.values["pause_filter_count"] == 0
    restored = ple.restore(host.seam())
    assert restored is not None and restored.values["pause_filter_count"] == 0
    assert ple_state.load() is None


def test_set_values_and_restore(intel: FakeHost) -> None:
    seam = intel.seam()
    knobs = ple.apply(seam, ple.parse_assignments(KVM_INTEL, ["ple_window=70000", "ple_gap=41"]))
    assert knobs.values["ple_window"] == 70000  # uint on Intel: above ushort is fine
    assert knobs.values["ple_gap"] == 41
    restored = ple.restore(seam)
    assert restored is not None and restored.values == KVM_INTEL.defaults()
    assert ple.restore(seam) is None  # nothing saved any more


def test_no_reload_when_values_already_in_place(intel: FakeHost) -> None:
    knobs = ple.set_mode(intel.seam(), "on")
    assert knobs.enabled
    assert intel.loader.calls == []
    assert ple_state.load() is None


def test_originals_are_saved_before_the_reload(intel: FakeHost) -> None:
    class Crash(Exception):
        pass

    class CrashingLoader:
        def reload(self, module: str, options: Mapping[str, int]) -> None:
            assert ple_state.load() is not None, "originals must exist before the reload"
            raise Crash

    seam = intel.seam()
    seam = type(seam)(seam.sys_root, seam.proc_root, CrashingLoader(), seam.vms, seam.is_root)
    with pytest.raises(Crash):
        ple.set_mode(seam, "off")
    saved = ple_state.load()
    assert saved is not None and saved.values == KVM_INTEL.defaults()
    record = json.loads(ple_state.originals_path().read_text())
    assert record["schema_version"] == 1
    assert not list(ple_state.originals_path().parent.glob(".*.tmp"))


def test_originals_are_never_overwritten(intel: FakeHost) -> None:
    seam = intel.seam()
    ple.apply(seam, {"ple_gap": 5})
    ple.apply(seam, {"ple_gap": 6})
    saved = ple_state.load()
    assert saved is not None and saved.values["ple_gap"] == 128


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["ple_gapx=1"], "unknown kvm_intel parameter 'ple_gapx'"),
        (["pause_filter_count=1"], "unknown kvm_intel parameter"),
        (["ple_gap=abc"], "not an integer"),
        (["ple_gap=1.5"], "not an integer"),
        (["ple_gap=-1"], "out of range 0..4294967295"),
        (["ple_gap=4294967296"], "out of range"),
        (["ple_gap"], "not KEY=VALUE"),
        (["=3"], "not KEY=VALUE"),
        ([], "no KEY=VALUE"),
    ],
)
def test_bad_intel_assignments(intel: FakeHost, words: list[str], message: str) -> None:
    before = _snapshot(intel)
    with pytest.raises(UsageError, match=message):
        ple.parse_assignments(KVM_INTEL, words)
    assert _snapshot(intel) == before


@pytest.mark.parametrize("value", ["65536", "70000", "-1"])
def test_amd_values_are_ushort(amd: FakeHost, value: str) -> None:
    with pytest.raises(UsageError, match=r"out of range 0\.\.65535 for kvm_amd"):
        ple.parse_assignments(KVM_AMD, [f"pause_filter_thresh={value}"])
    assert ple.parse_assignments(KVM_AMD, ["pause_filter_thresh=65535"]) == {
        "pause_filter_thresh": 65535
    }


def test_apply_validates_before_touching_anything(amd: FakeHost) -> None:
    before = _snapshot(amd)
    with pytest.raises(UsageError):
        ple.apply(amd.seam(), {"pause_filter_count": 70000})
    with pytest.raises(UsageError):
        ple.apply(amd.seam(), {"ple_gap": 0})
    assert _snapshot(amd) == before
    assert amd.loader.calls == []
    assert ple_state.load() is None


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("intel-nople", "lacks ple"),
        ("amd-nople", "lacks pausefilter"),
        ("pvm", "kvm_pvm, which has no pause-loop-exiting parameters"),
    ],
)
def test_no_ple_hosts_refuse_and_change_nothing(tmp_path: Path, kind: str, reason: str) -> None:
    host = make_fake_host(tmp_path, kind)  # type: ignore[arg-type]
    seam = host.seam()
    _, why = ple.availability(seam)
    assert why is not None and reason in why
    before = _snapshot(host)
    for action in (
        lambda: ple.set_mode(seam, "off"),
        lambda: ple.set_mode(seam, "on"),
        lambda: ple.apply(seam, {"ple_gap": 1}),
        lambda: ple.read_knobs(seam),
    ):
        with pytest.raises(HostError, match="PLE is not available") as info:
            action()
        assert reason in info.value.message
        assert info.value.exit_code == 4
    assert _snapshot(host) == before
    assert host.loader.calls == []
    assert ple_state.load() is None


def test_no_kvm_module_at_all(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "intel")
    for path in sorted((host.sys_root / "module/kvm_intel").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (host.sys_root / "module/kvm_intel").rmdir()
    with pytest.raises(HostError, match="no KVM module is loaded"):
        ple.set_mode(host.seam(), "off")


def _refused(host: FakeHost, match: str) -> None:
    before = _snapshot(host)
    with pytest.raises(HostError, match=match) as info:
        ple.set_mode(host.seam(), "off")
    assert "nothing changed" in info.value.message or "cannot change" in info.value.message
    assert _snapshot(host) == before
    assert host.loader.calls == []
    assert ple_state.load() is None


def test_not_root_is_refused(intel: FakeHost) -> None:
    intel.root_user = False
    _refused(intel, "run as root")


def test_running_libvirt_domain_is_refused_and_named(intel: FakeHost) -> None:
    intel.vms.vms.append(RunningVm("web1", "libvirt qemu:///system", 4242, True, "qemu..."))
    _refused(intel, r"1 VM\(s\) running, nothing changed: web1 \(pid 4242, holds /dev/kvm\)")


def test_process_holding_dev_kvm_is_refused(intel: FakeHost) -> None:
    intel.vms.vms.append(RunningVm("firecracker[77]", "process", 77, True, "firecracker"))
    _refused(intel, r"firecracker\[77\]")


def test_tcg_process_does_not_block_reload(intel: FakeHost) -> None:
    intel.vms.vms.append(RunningVm("qemu-system-x86_64[9]", "process", 9, False, "qemu"))
    assert not ple.set_mode(intel.seam(), "off").enabled


def test_busy_module_refcnt_is_refused(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "intel", refcnt=2)
    _refused(host, r"in use \(refcnt 2\)")


def test_builtin_module_is_refused(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "amd", builtin=True)
    before = _snapshot(host)
    with pytest.raises(HostError, match="built into the kernel"):
        ple.set_mode(host.seam(), "off")
    assert _snapshot(host) == before


def test_loader_reports_module_in_use(intel: FakeHost) -> None:
    intel.loader.in_use = True
    before = _snapshot(intel)
    with pytest.raises(HostError, match="in use, nothing changed"):
        ple.set_mode(intel.seam(), "off")
    assert _snapshot(intel) == before


def test_read_back_mismatch_fails_loudly(intel: FakeHost) -> None:
    intel.loader.clamp = {"ple_window": 1000}
    with pytest.raises(HostError, match="ple_window wanted 4096 got 1000") as info:
        ple.set_mode(intel.seam(), "off")
    assert "kvmple ple restore" in (info.value.hint or "")
    saved = ple_state.load()  # the originals stay for 'restore'
    assert saved is not None and saved.values == KVM_INTEL.defaults()


def test_restore_refuses_originals_of_another_module(intel: FakeHost) -> None:
    ple_state.save_if_absent("kvm_amd", KVM_AMD.defaults())
    with pytest.raises(HostError, match="saved originals are for kvm_amd"):
        ple.restore(intel.seam())


def test_ple_setting_restores_on_exit_and_on_error(intel: FakeHost) -> None:
    seam = intel.seam()
    with ple.ple_setting(seam, "off") as knobs:
        assert not knobs.enabled
        assert intel.param("kvm_intel", "ple_gap") == "0"
    assert intel.param("kvm_intel", "ple_gap") == "128"
    assert ple_state.load() is None
    with pytest.raises(RuntimeError), ple.ple_setting(seam, "off"):
        raise RuntimeError("campaign failed")
    assert intel.param("kvm_intel", "ple_gap") == "128"
    assert len(intel.loader.calls) == 4


def test_ple_setting_raises_where_no_ple(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "pvm")
    with pytest.raises(HostError, match="not available"), ple.ple_setting(host.seam(), "on"):
        pytest.fail("must not enter")


# --- the CLI on a fake host -------------------------------------------------------------------


@pytest.fixture
def cli_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHost:
    host = make_fake_host(tmp_path, "intel")
    monkeypatch.setattr("kvmple.commands.ple.make_seam", host.seam)
    return host


def test_cli_off_on_restore(cli_host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ple", "off"]) == 0
    out = capsys.readouterr().out
    assert "PLE off: kvm_intel ple_gap=0" in out
    assert "reload path verified on an emulated VT-x CPU with PLE (Bochs)" in out
    assert cli.main(["ple", "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["enabled"] is False
    assert doc["saved_originals"]["ple_gap"] == 128
    assert cli.main(["ple", "restore"]) == 0
    assert cli_host.param("kvm_intel", "ple_gap") == "128"
    assert cli.main(["ple", "restore"]) == 0
    assert "nothing to restore" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["ple", "set", "ple_gap=abc"], 2, "is not an integer"),
        (["ple", "set", "bogus=1"], 2, "unknown kvm_intel parameter 'bogus'"),
        (["ple", "set", "ple_gap=99999999999"], 2, "out of range"),
    ],
)
def test_cli_bad_input(
    cli_host: FakeHost,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    before = _snapshot(cli_host)
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 2  # one line plus the hint, no traceback
    assert _snapshot(cli_host) == before


def test_cli_refusals_exit_4(cli_host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    cli_host.root_user = False
    assert cli.main(["ple", "off"]) == 4
    assert "run as root" in capsys.readouterr().err
    cli_host.root_user = True
    cli_host.vms.vms.append(RunningVm("db", "libvirt qemu:///system", None, False, ""))
    assert cli.main(["ple", "on"]) == 0  # already on: nothing to do, nothing refused
    assert cli.main(["ple", "off"]) == 4
    assert "db (libvirt qemu:///system)" in capsys.readouterr().err


def test_cli_status_on_pvm_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = make_fake_host(tmp_path, "pvm")
    monkeypatch.setattr("kvmple.commands.ple.make_seam", host.seam)
    assert cli.main(["ple", "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "available": False,
        "module": "kvm_pvm",
        "reason": doc["reason"],
        "basis": "sysfs: /sys/module/kvm_pvm",
    }
    assert "kvm_pvm" in doc["reason"]
    assert cli.main(["ple", "off"]) == 4
