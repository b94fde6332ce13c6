"""Lab hosts without a VM: the reload chain on a fake sysfs, the lab spec, the records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from kvmple.errors import GuestError, HostError, UsageError
from kvmple.host.vms import RunningVm
from kvmple.lab import amd
from kvmple.lab.model import LAB_CAMPAIGN, LabHost, entries, save
from kvmple.lab.reload import reload_with
from kvmple.vm import registry
from kvmple.vm.domxml import domain_xml
from tests.fixtures.fake_host import make_fake_host
from tests.unit.test_vm_spec import FakeImage


def _amd_host(tmp_path: Path):  # type: ignore[no-untyped-def]
    host = make_fake_host(tmp_path, "amd-nople")
    (host.sys_root / "module/kvm_amd/parameters/nested").write_text("1\n")
    return host


def test_reload_reads_back_what_was_asked(tmp_path: Path) -> None:
    host = _amd_host(tmp_path)
    result = reload_with(host.seam(), {"nested": 0})
    assert (result.before, result.after) == ({"nested": "1"}, {"nested": "0"})
    assert host.loader.calls == [("kvm_amd", {"nested": 0})]


def test_reload_refused_while_a_vm_runs(tmp_path: Path) -> None:
    host = _amd_host(tmp_path)
    host.vms.vms.append(RunningVm("inner", "libvirt qemu:///system", 42, True, "qemu"))
    with pytest.raises(HostError, match="VM\\(s\\) running, nothing changed"):
        reload_with(host.seam(), {"nested": 0})
    assert host.loader.calls == []
    assert host.param("kvm_amd", "nested") == "1"


def test_reload_read_back_mismatch_is_an_error(tmp_path: Path) -> None:
    host = _amd_host(tmp_path)
    host.loader.clamp = {"nested": 1}
    with pytest.raises(HostError, match="nested asked 0 read 1"):
        reload_with(host.seam(), {"nested": 0})


def test_reload_unknown_parameter(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no parameter bogus"):
        reload_with(_amd_host(tmp_path).seam(), {"bogus": 1})


def test_lab_spec_has_emulated_amd_v() -> None:
    spec = amd.lab_spec(amd.AmdOptions(name="t1", cpus=2), FakeImage())
    assert (spec.accelerator, spec.cpu_model) == ("tcg", "qemu64")
    assert "svm" in spec.cpu_features and spec.domain_name == "kvmple-lab-t1"
    xml = domain_xml(spec, overlay=Path("/o"), console_log=Path("/c"), ssh_port=2222)
    assert '<feature policy="require" name="svm" />' in xml
    # a reset (a kexec'd kernel that panics) boots QEMU's -kernel again: the fallback
    assert "<on_reboot>restart</on_reboot>" in xml
    assert amd.AmdOptions().cpu.startswith("qemu64,+svm,+npt,+vgif,+svme-addr-chk,")


def test_stall_in_console_tail_is_named() -> None:
    spec = amd.lab_spec(amd.AmdOptions(name="t2"), FakeImage())
    plain = GuestError("guest x did not answer SSH; console tail:\nRun /init")
    assert amd._explain(plain, spec) is plain
    stalled = GuestError("did not answer; console tail:\nrcu: INFO: rcu_sched self-detected stall")
    assert "stalled while booting" in amd._explain(stalled, spec).message


def _claim_lab_record() -> registry.GuestRecord:
    """The guest record of lab host "a" (SSH port 40022; its `lab up` not alive), claimed in
    the current KVMPLE_STATE_DIR with its run directory."""
    record = registry.GuestRecord(
        domain="kvmple-lab-a", uri="qemu:///system", role="a", campaign_id=LAB_CAMPAIGN,
        image="debian12-labhost", run_dir=str(registry.guests_dir() / "kvmple-lab-a"),
        ssh_port=40022, ssh_user="root", ssh_key="/k", host_keys=("ssh-ed25519 AAAA",),
        owner_pid=0, owner_start=None, detached=True, created=1.0,
    )  # fmt: skip
    registry.claim(record)
    Path(record.run_dir).mkdir()
    return record


def test_lab_records_list_and_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMPLE_STATE_DIR", str(tmp_path))
    record = _claim_lab_record()
    assert [e.state for e in entries(set())] == ["stopped"]
    assert [e.state for e in entries({"kvmple-lab-a"})] == ["orphaned"]
    save(record, LabHost("a", "amd", record.domain, 2, 3072, "qemu64,+svm", "img", 1.0, 99.0))
    (entry,) = entries({"kvmple-lab-a"})
    row = entry.to_json()
    assert (row["state"], row["kind"], row["cpus"], row["ssh_port"]) == ("running", "amd", 2, 40022)
    assert (row["boot"], row["snapshot"]) == ("cold", None)
    json.dumps(row)
    registry.forget(record)  # the lab record goes with the guest's run directory
    assert entries({"kvmple-lab-a"}) == []


def test_the_lab_record_says_whether_the_lab_host_was_restored() -> None:
    """lab.json carries how the lab host started; one written before snapshots (no "boot",
    no "snapshot") still reads, as booted cold."""
    old = LabHost("a", "amd", "kvmple-lab-a", 2, 3072, "qemu64,+svm", "img", 1.0, 99.0).to_json()
    del old["boot"], old["snapshot"]
    assert (LabHost.from_json(old).boot, LabHost.from_json(old).snapshot) == ("cold", None)
    restored = LabHost.from_json({**old, "boot": "restored", "snapshot": "ab" * 32})
    assert LabHost.from_json(json.loads(json.dumps(restored.to_json()))) == restored
    with pytest.raises(ValidationError):
        LabHost.from_json({**old, "boot": "warm"})


def test_kvm_readiness_waits_for_kvm_amd_and_names_it_when_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lab host's readiness check, run on this host with its check command replaced:
    failing, it ends with one line naming kvm_amd; passing, it returns. Its level is in the
    snapshot key, so a saved lab host always had kvm_amd loaded."""
    from kvmple.executor import LocalExecutor

    monkeypatch.setattr(amd, "KVM_READY_CHECK", ("false",))
    with pytest.raises(GuestError, match="SSH answers but kvm_amd is not loaded"):
        amd.kvm_ready(LocalExecutor(), 0.0)  # type: ignore[arg-type]
    monkeypatch.setattr(amd, "KVM_READY_CHECK", ("true",))
    amd.kvm_ready(LocalExecutor(), 0.0)  # type: ignore[arg-type]
    assert amd.KVM_READINESS.level == "ssh+kvm_amd"


@pytest.mark.parametrize(
    "case",
    [(set(), "stopped", "then 'kvmple lab up'"), ({"kvmple-lab-a"}, "orphaned", "died before")],
)
def test_lab_ssh_to_a_lab_host_that_is_not_running_says_so_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: tuple[set[str], str, str],
) -> None:
    """Exit 7 with its state and what to do, before any SSH attempt (its record's owner,
    `lab up`, is not alive: a running domain without a lab record is orphaned)."""
    running, state, hint = case
    from kvmple import cli
    from kvmple.commands import lab

    monkeypatch.setenv("KVMPLE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(lab, "_running", lambda: running)
    record = _claim_lab_record()
    assert cli.main(["lab", "ssh", "a", "--", "true"]) == 7
    err = capsys.readouterr().err
    assert f"lab host a is {state}: nothing answers SSH there" in err and hint in err
    assert "Traceback" not in err
    registry.forget(record)


def test_cold_boot_is_refused_for_a_bochs_lab_host(capsys: pytest.CaptureFixture[str]) -> None:
    from kvmple import cli

    assert cli.main(["lab", "up", "intel", "--cold-boot"]) == 2
    assert "--cold-boot is for amd lab hosts" in capsys.readouterr().err


def test_lab_up_refuses_a_name_whose_domain_exists(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A domain kvmple-lab-NAME that exists (started elsewhere, another state directory) is
    refused before any image build or boot: exit 2, one line naming the domain."""
    from contextlib import contextmanager

    from kvmple import cli
    from kvmple.vm import libvirt_backend

    class _Lv:
        def exists(self, name: str) -> bool:
            return name == "kvmple-lab-taken"

    @contextmanager
    def fake_connect(uri: str):  # type: ignore[no-untyped-def]
        yield _Lv()

    monkeypatch.setattr(libvirt_backend, "connect", fake_connect)
    assert cli.main(["lab", "up", "amd", "--name", "taken"]) == 2
    err = capsys.readouterr().err
    assert "lab host name 'taken' is taken: the domain kvmple-lab-taken exists" in err
    assert "booting" not in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["../x", "Lab_1", "a" * 41])
def test_a_bad_lab_host_name_is_a_usage_error_before_anything_runs(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 like any bad argument value (README), before images are built or libvirt asked:
    it names the lab host's domain and files."""
    from kvmple import image
    from kvmple.cli import main

    def never(*args: object) -> object:
        raise AssertionError("nothing may run for a bad --name")

    monkeypatch.setattr(image, "resolve", never)
    monkeypatch.setattr(amd, "up", never)
    for kind in ("amd", "intel"):
        assert main(["lab", "up", kind, "--name", name]) == 2
        err = capsys.readouterr().err
        assert f"--name: lab host name {name!r} is not a valid name part" in err
