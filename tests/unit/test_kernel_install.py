"""Install planning against fake host facts and a recording executor.

Not verified on hardware: nothing here touches /boot, grub or kexec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from kvmple.errors import HostError
from kvmple.kernel.bootpass import BootPass
from kvmple.kernel.install import HostFacts, execute, plan_install, resume_unit
from kvmple.kernel.manifest import BuildManifest
from kvmple.run import Result

MANIFEST = BuildManifest(
    release="6.1.192-kvmple-selftest",
    image=Path("/cache/out/arch/x86/boot/bzImage"),
    image_sha256="ab" * 32,
    config=Path("/cache/out/.config"),
    modules=Path("/cache/out/modules-install"),
)
PASSED = BootPass(passed=True, image_sha256="ab" * 32)
DEBIAN = HostFacts(
    euid=0,
    has_grub_reboot=True,
    grub_default_saved=True,
    has_kexec=True,
    has_systemd=True,
    initramfs_tool="update-initramfs",
)


def test_refuses_without_root() -> None:
    with pytest.raises(HostError, match="must run as root"):
        plan_install(MANIFEST, PASSED, replace(DEBIAN, euid=1000))


@pytest.mark.parametrize("record", [None, BootPass(passed=True, image_sha256="cd" * 32)])
def test_refuses_without_a_boot_test_of_this_image(record: BootPass | None) -> None:
    with pytest.raises(HostError, match="no passed boot test") as caught:
        plan_install(MANIFEST, record, DEBIAN)
    assert "boot-test" in (caught.value.hint or "")


def test_grub_reboot_plan() -> None:
    plan = plan_install(
        MANIFEST, PASSED, DEBIAN, reboot=True, campaign="c42", kvmple=("/usr/bin/kvmple",)
    )
    assert plan.method == "grub-reboot" and "not verified on hardware" in plan.notes
    argvs = [s.argv for s in plan.steps if s.argv]
    release = "6.1.192-kvmple-selftest"
    assert argvs[0] == ("install", "-m", "0644", str(MANIFEST.image), f"/boot/vmlinuz-{release}")
    assert ("depmod", "-a", release) in argvs
    assert ("update-initramfs", "-c", "-k", release) in argvs
    grub = next(a for a in argvs if a[0] == "grub-reboot")
    assert grub[1].endswith(f"with Linux {release}")
    unit = next(s for s in plan.steps if s.write_path)
    assert unit.write_path == "/etc/systemd/system/kvmple-resume.service"
    assert f"ConditionKernelVersion={release}" in unit.content
    assert "ExecStart=/usr/bin/kvmple run --resume c42" in unit.content
    assert argvs[-1] == ("systemctl", "reboot")
    # order matters: files in place before the one-shot entry, the entry before the reboot
    order = [a[0] for a in argvs]
    assert order.index("update-initramfs") < order.index("grub-reboot") < order.index("systemctl")


def test_grub_needs_saved_default() -> None:
    with pytest.raises(HostError, match="GRUB_DEFAULT=saved"):
        plan_install(
            MANIFEST, PASSED, replace(DEBIAN, grub_default_saved=False), method="grub-reboot"
        )


def test_kexec_plan_without_systemd_uses_cron() -> None:
    facts = replace(DEBIAN, has_grub_reboot=False, has_systemd=False, initramfs_tool=None)
    plan = plan_install(
        MANIFEST.model_copy(update={"modules": None}), PASSED, facts, campaign="c1", reboot=True
    )
    assert plan.method == "kexec"
    load = next(s.argv for s in plan.steps if s.argv and s.argv[0] == "kexec")
    assert "--reuse-cmdline" in load and not any(a.startswith("--initrd") for a in load)
    cron = next(s for s in plan.steps if s.write_path)
    assert cron.write_path == "/etc/cron.d/kvmple-resume"
    assert cron.content.startswith("@reboot root rm -f /etc/cron.d/kvmple-resume;")
    assert plan.steps[-1].argv == ("systemctl", "kexec")
    assert any("root drivers built in" in note for note in plan.notes)


def test_no_one_shot_method_available() -> None:
    with pytest.raises(HostError, match="kexec not found"):
        plan_install(MANIFEST, PASSED, replace(DEBIAN, has_grub_reboot=False, has_kexec=False))


class RecordingExecutor:
    """A fake at the one narrow seam: records what would run on the host."""

    name = "fake-host"

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.files: dict[str, tuple[str, int]] = {}

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> Result:
        self.calls.append(tuple(argv))
        return Result(tuple(argv), 0, "", "", 0.0, self.name)

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        self.files[remote] = (local.read_text(), mode)

    def get(self, remote: str, local: Path) -> None:
        raise AssertionError("not used")


def test_execute_runs_every_step_in_order() -> None:
    plan = plan_install(MANIFEST, PASSED, DEBIAN, campaign="c7")
    fake = RecordingExecutor()
    execute(plan, fake)
    assert fake.calls == [s.argv for s in plan.steps if s.argv]
    assert fake.files["/etc/systemd/system/kvmple-resume.service"][0] == resume_unit(
        "c7", "6.1.192-kvmple-selftest", ("kvmple",)
    )


def test_kexec_plan_appends_panic_and_can_skip_the_initramfs() -> None:
    """A kexec'd kernel that panics must reset (the fallback); extra parameters follow."""
    plan = plan_install(
        MANIFEST,
        PASSED,
        DEBIAN,
        method="kexec",
        reboot=True,
        append=("init=/x",),
        initramfs=False,
        campaign="c9",
        workdir="/opt/kvmple",
    )
    assert plan.notes[0] == "verified on an emulated AMD-V host (QEMU TCG)"
    argvs = [s.argv for s in plan.steps if s.argv]
    load = next(a for a in argvs if a[0] == "kexec")
    assert "--append=panic=10 init=/x" in load
    assert not any(a.startswith("--initrd") for a in load)
    assert not any(a[0] == "update-initramfs" for a in argvs)
    unit = next(s for s in plan.steps if s.write_path)
    assert "WorkingDirectory=/opt/kvmple\n" in unit.content
    assert argvs[-1] == ("systemctl", "kexec")


def test_append_needs_kexec() -> None:
    with pytest.raises(HostError, match="need --method kexec"):
        plan_install(MANIFEST, PASSED, DEBIAN, method="grub-reboot", append=("quiet",))


def test_kexec_refused_while_kexec_tools_loads_at_shutdown() -> None:
    with pytest.raises(HostError, match="LOAD_KEXEC=true") as caught:
        plan_install(MANIFEST, PASSED, replace(DEBIAN, kexec_load_at_shutdown=True), method="kexec")
    assert "LOAD_KEXEC=false" in (caught.value.hint or "")
