"""The install step. On a host without VT-x it is skipped with the reason and the plan it
would run is recorded; the hardware path (install, reboot, continue the night) is exercised
against a fake doctor verdict and a recording executor: NOT VERIFIED ON HARDWARE."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kvmple.errors import HostError
from kvmple.kernel import install as install_mod
from kvmple.kernel.bootpass import record_pass
from kvmple.kernel.boottest import BootResult
from kvmple.kernel.install import HostFacts, Step
from kvmple.nightly import kernel_steps, steps
from kvmple.nightly.config import LoadedConfig, NightlyConfig
from kvmple.nightly.outputs import BuildOutputs, InstallOutputs
from kvmple.nightly.resume import UNIT, resume_steps, resume_unit, with_resume
from kvmple.nightly.state import NightState
from kvmple.nightly.steps import RebootPending, Skip, StepContext

RELEASE = "6.1.0-kvmple-test"


def _context(tmp_path: Path, enabled: bool) -> StepContext:
    out = tmp_path / "build"
    out.mkdir()
    image = out / "bzImage"
    image.write_bytes(b"kernel")
    manifest = {
        "release": RELEASE,
        "image": str(image),
        "image_sha256": "abc",
        "config": str(out / ".config"),
        "modules": None,
    }
    (out / "kvmple-build.json").write_text(json.dumps(manifest))
    record_pass(out, BootResult(True, RELEASE, RELEASE, 3.0, 7.0, "tcg", "log"), "abc")
    config = NightlyConfig.model_validate(
        {
            "name": "job",
            "tree": {"path": "/srv/linux"},
            "playbook": "/p.yaml",
            "install": {"enabled": enabled},
        }
    )
    loaded = LoadedConfig(config=config, path=tmp_path / "job.yaml", sha256="0" * 64)
    state = NightState("job", "n1", str(loaded.path), loaded.sha256, "host", time.time())
    built = BuildOutputs(release=RELEASE, image=image, image_sha256="abc", out=out)
    state.step("build").outputs = built.to_dict()
    return StepContext(loaded, state, tmp_path, tmp_path / "install.log")


@pytest.fixture
def facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        install_mod,
        "gather_host_facts",
        lambda: HostFacts(
            euid=0,
            has_grub_reboot=True,
            grub_default_saved=True,
            has_kexec=True,
            has_systemd=True,
            initramfs_tool="update-initramfs",
        ),
    )


def _doctor(monkeypatch: pytest.MonkeyPatch, accelerator: str) -> None:
    from kvmple.host import doctor

    report = SimpleNamespace(accelerator=accelerator, reason=f"{accelerator} (fake verdict)")
    monkeypatch.setattr(doctor, "diagnose", lambda probe_kvm=True: report)


def test_resume_steps_go_before_the_reboot() -> None:
    argv = ["/usr/bin/python3", "-m", "kvmple.cli", "nightly", "/etc/k.yaml", "--night", "n1"]
    plan = [Step("install", ("install", "a", "b")), Step("reboot now", ("systemctl", "reboot"))]
    merged = with_resume(plan, resume_steps(argv, "n1", has_systemd=True))
    assert [s.description for s in merged] == [
        "install",
        "continue the night after the reboot",
        "enable the resume unit",
        "reboot now",
    ]
    unit = resume_unit(argv, "n1")
    assert "ExecStart=/usr/bin/python3 -m kvmple.cli nightly /etc/k.yaml --night n1" in unit
    assert f"ExecStartPre=/bin/systemctl disable {UNIT}" in unit
    cron = resume_steps(argv, "n1", has_systemd=False)
    assert cron[0].write_path == "/etc/cron.d/kvmple-nightly-resume"
    assert cron[0].content.startswith("@reboot root rm -f /etc/cron.d/kvmple-nightly-resume; ")
    assert with_resume([], cron) == cron


def test_no_vtx_host_skips_with_reason_and_records_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts: None
) -> None:
    _doctor(monkeypatch, "tcg")
    ctx = _context(tmp_path, enabled=True)
    with pytest.raises(Skip) as caught:
        steps.install(ctx)
    assert "not verified on hardware / no VT-x host" in str(caught.value)
    skipped = caught.value.outputs
    assert isinstance(skipped, InstallOutputs)
    plan = "\n".join(skipped.plan)  # what it would have done
    assert f"/boot/vmlinuz-{RELEASE}" in plan and UNIT in plan and "systemctl reboot" in plan
    assert "install plan" in ctx.log_path.read_text()


def test_disabled_install_is_skipped_even_on_a_kvm_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts: None
) -> None:
    _doctor(monkeypatch, "kvm")
    with pytest.raises(Skip, match=r"install\.enabled is false"):
        steps.install(_context(tmp_path, enabled=False))


def test_hardware_path_installs_reboots_and_checks_the_kernel_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts: None
) -> None:
    """NOT VERIFIED ON HARDWARE: the executor only records."""
    _doctor(monkeypatch, "kvm")
    ran: list[Any] = []
    monkeypatch.setattr(install_mod, "execute", lambda plan, executor: ran.append(plan))
    ctx = _context(tmp_path, enabled=True)
    with pytest.raises(RebootPending, match=f"installed {RELEASE}"):
        steps.install(ctx)
    (plan,) = ran
    assert plan.steps[-1].argv == ("systemctl", "reboot")
    assert any(s.write_path and UNIT in s.write_path for s in plan.steps)
    assert ctx.state.step("install").outputs["installed"] == RELEASE
    # after the reboot: the old kernel came back (the one-shot entry fell back)
    monkeypatch.setattr(kernel_steps.platform, "release", lambda: "6.1.0-old")
    with pytest.raises(HostError, match="fell back"):
        steps.install(ctx)
    # after the reboot: the new kernel runs
    monkeypatch.setattr(kernel_steps.platform, "release", lambda: RELEASE)
    detail, outputs = steps.install(ctx)
    assert detail == f"running the installed kernel {RELEASE}"
    assert outputs.installed == RELEASE
