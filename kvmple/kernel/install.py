"""Host install of a built, boot-tested kernel: a plan of small steps, then its execution.

The plan is built from gathered host facts (pure function, unit-tested) and executed through
an ``Executor``. The steps follow Debian's conventions: /boot/vmlinuz-R, /lib/modules/R,
update-initramfs, update-grub, a one-shot ``grub-reboot`` entry (a hang or a failed boot
falls back to the default kernel on the next power cycle) or a ``kexec`` load (one-shot by
nature; ``panic=N`` is appended so a kernel that panics resets into the machine's own boot
path), and a resume hook (a systemd unit bound to the new release, or an @reboot cron entry)
so ``kvmple run --resume ID`` continues the campaign after the reboot.

The kexec path (install, one-shot boot, resume, fallback on a panic) is verified on an
emulated AMD-V host (QEMU TCG) by hand, through ``kvmple lab install-kernel``
(kvmple.lab.kernel); its lab test (about 25 min) is not in CI yet. The grub-reboot path is
NOT VERIFIED ON HARDWARE (this project's machines have no VT-x and must not replace their
own kernel).
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kvmple.errors import HostError
from kvmple.executor import Executor
from kvmple.run import which

if TYPE_CHECKING:  # the plan is pure: it only reads the two records
    from kvmple.kernel.bootpass import BootPass
    from kvmple.kernel.manifest import BuildManifest

NOT_VERIFIED = "not verified on hardware"
VERIFIED_EMULATED = "verified on an emulated AMD-V host (QEMU TCG)"
# kexec'd kernels get panic=N: a panic then resets the machine, whose own boot path (QEMU's
# -kernel, the firmware's default entry) starts the previous kernel: the one-shot fallback
KEXEC_PANIC_S = 10


@dataclass(frozen=True)
class HostFacts:
    euid: int
    has_grub_reboot: bool
    grub_default_saved: bool
    has_kexec: bool
    has_systemd: bool
    initramfs_tool: str | None  # "update-initramfs" | "dracut" | None
    distributor: str = "Debian GNU/Linux"
    # Debian's kexec-tools with LOAD_KEXEC=true (/etc/default/kexec, its debconf default)
    # loads /vmlinuz at every shutdown: over the kernel kvmple loaded, and every reboot kexecs
    kexec_load_at_shutdown: bool = False


def gather_host_facts() -> HostFacts:
    """Read the facts the plan depends on (the only I/O of planning)."""
    grub_default = Path("/etc/default/grub")
    text = grub_default.read_text(errors="replace") if grub_default.is_file() else ""
    saved = any(line.strip().replace('"', "") == "GRUB_DEFAULT=saved" for line in text.splitlines())
    tool = next((t for t in ("update-initramfs", "dracut") if which(t)), None)
    kexec_default = Path("/etc/default/kexec")
    kexec_text = kexec_default.read_text(errors="replace") if kexec_default.is_file() else ""
    return HostFacts(
        euid=os.geteuid(),
        has_grub_reboot=which("grub-reboot") is not None,
        grub_default_saved=saved,
        has_kexec=which("kexec") is not None,
        has_systemd=Path("/run/systemd/system").is_dir(),
        initramfs_tool=tool,
        kexec_load_at_shutdown=any(
            line.strip().replace('"', "") == "LOAD_KEXEC=true" for line in kexec_text.splitlines()
        ),
    )


@dataclass(frozen=True)
class Step:
    description: str
    argv: tuple[str, ...] = ()
    write_path: str | None = None
    content: str = ""
    mode: int = 0o644

    def render(self) -> str:
        if self.write_path:
            return f"{self.description}: write {self.write_path}"
        return f"{self.description}: {shlex.join(self.argv)}"


@dataclass
class InstallPlan:
    release: str
    method: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def resume_unit(
    campaign: str, release: str, kvmple: Sequence[str], workdir: str | None = None
) -> str:
    """A systemd unit that resumes ``campaign`` once, only when ``release`` is running
    (systemd.unit(5): ConditionKernelVersion=; a fallback boot leaves it inactive)."""
    command = shlex.join([*kvmple, "run", "--resume", campaign])
    where = f"WorkingDirectory={workdir}\n" if workdir else ""
    return (
        "[Unit]\n"
        f"Description=kvmple: resume campaign {campaign} on kernel {release}\n"
        "After=network-online.target libvirtd.service\n"
        "Wants=network-online.target\n"
        f"ConditionKernelVersion={release}\n\n"
        f"[Service]\nType=oneshot\n{where}"
        "ExecStartPre=/bin/systemctl disable kvmple-resume.service\n"
        f"ExecStart={command}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def plan_install(
    manifest: BuildManifest,
    boot_pass: BootPass | None,
    facts: HostFacts,
    *,
    method: str = "auto",
    reboot: bool = False,
    campaign: str | None = None,
    kvmple: Sequence[str] = ("kvmple",),
    append: Sequence[str] = (),
    initramfs: bool = True,
    workdir: str | None = None,
) -> InstallPlan:
    """The install steps for a build (pure). HostError without root, without a passed boot
    test of exactly this image, or when the install method cannot work here.

    ``append``: kernel parameters added to the kexec'd command line; ``initramfs`` False:
    no initramfs (the kernel has its root drivers built in); ``workdir``: the resume unit's
    working directory (where the campaign's playbook paths resolve)."""
    if facts.euid != 0:
        raise HostError(
            "kvmple kernel install must run as root", hint="run it with sudo on the host under test"
        )
    release = manifest.release
    if boot_pass is None or boot_pass.image_sha256 != manifest.image_sha256:
        raise HostError(
            f"no passed boot test for this image ({release})",
            hint="run 'kvmple kernel boot-test' on this build first: it is the safety gate",
        )
    method = _choose_method(method, facts)
    if append and method != "kexec":
        raise HostError("extra kernel parameters (--append) need --method kexec")
    plan = InstallPlan(
        release, method, notes=[VERIFIED_EMULATED if method == "kexec" else NOT_VERIFIED]
    )
    if not initramfs:
        facts = replace(facts, initramfs_tool=None)
    _add_files(plan, manifest, facts)
    _add_boot_entry(plan, facts, append)
    if campaign:
        _add_resume(plan, campaign, facts, kvmple, workdir)
    if reboot:
        verb = "kexec" if method == "kexec" else "reboot"
        plan.steps.append(Step(f"{verb} now", ("systemctl", verb)))
    return plan


def _choose_method(method: str, facts: HostFacts) -> str:
    """grub-reboot or kexec ("auto": grub-reboot where it exists); HostError if unusable."""
    if method == "auto":
        method = "grub-reboot" if facts.has_grub_reboot else "kexec"
    if method == "grub-reboot" and not facts.has_grub_reboot:
        raise HostError("grub-reboot not found", hint="install grub2-common or use --method kexec")
    if method == "grub-reboot" and not facts.grub_default_saved:
        raise HostError(
            "grub-reboot needs GRUB_DEFAULT=saved in /etc/default/grub",
            hint="set it and run update-grub, or use --method kexec",
        )
    if method == "kexec" and not facts.has_kexec:
        raise HostError("kexec not found", hint="apt-get install kexec-tools")
    if method == "kexec" and facts.kexec_load_at_shutdown:
        raise HostError(
            "LOAD_KEXEC=true in /etc/default/kexec: kexec-tools would load /vmlinuz at shutdown "
            "over the new kernel, and every reboot would be a kexec (no fallback)",
            hint="set LOAD_KEXEC=false there (dpkg-reconfigure kexec-tools)",
        )
    if method not in ("grub-reboot", "kexec"):
        raise HostError(f"unknown install method {method!r}", hint="grub-reboot or kexec")
    return method


def _add_files(plan: InstallPlan, manifest: BuildManifest, facts: HostFacts) -> None:
    """Kernel, config, modules (indexed) and the initramfs, under /boot and /lib/modules."""
    release, add = plan.release, plan.steps.append
    vmlinuz = f"/boot/vmlinuz-{release}"
    add(Step("install the kernel", ("install", "-m", "0644", str(manifest.image), vmlinuz)))
    add(
        Step(
            "install its config",
            ("install", "-m", "0644", str(manifest.require_config()), f"/boot/config-{release}"),
        )
    )
    modules = manifest.modules
    if modules:
        add(
            Step(
                "install the modules",
                ("cp", "-a", f"{modules}/lib/modules/{release}", "/lib/modules/"),
            )
        )
        add(Step("index the modules", ("depmod", "-a", release)))
    if facts.initramfs_tool == "update-initramfs":
        add(Step("build the initramfs", ("update-initramfs", "-c", "-k", release)))
    elif facts.initramfs_tool == "dracut":
        add(
            Step(
                "build the initramfs", ("dracut", "--force", f"/boot/initrd.img-{release}", release)
            )
        )
    else:
        plan.notes.append("no initramfs tool: the kernel must have its root drivers built in")


def _add_boot_entry(plan: InstallPlan, facts: HostFacts, append: Sequence[str] = ()) -> None:
    """Boot the new kernel once: a one-shot GRUB entry, or a loaded kexec image."""
    release, add = plan.release, plan.steps.append
    if plan.method == "grub-reboot":
        add(Step("add the boot entry", ("update-grub",)))
        entry = (
            f"Advanced options for {facts.distributor}>{facts.distributor}, with Linux {release}"
        )
        add(Step("boot it once (the default entry stays)", ("grub-reboot", entry)))
    else:
        # kexec-tools appends --append to the reused command line (kexec/arch/i386)
        extra = " ".join([f"panic={KEXEC_PANIC_S}", *append])
        load = ["kexec", "-l", f"/boot/vmlinuz-{release}", "--reuse-cmdline", f"--append={extra}"]
        if facts.initramfs_tool:
            load.append(f"--initrd=/boot/initrd.img-{release}")
        add(Step("load it for a one-shot kexec", tuple(load)))


def _add_resume(
    plan: InstallPlan,
    campaign: str,
    facts: HostFacts,
    kvmple: Sequence[str],
    workdir: str | None = None,
) -> None:
    """Resume ``campaign`` after the reboot: a systemd unit, or an @reboot cron line."""
    add = plan.steps.append
    if facts.has_systemd:
        add(
            Step(
                "resume the campaign after the reboot",
                write_path="/etc/systemd/system/kvmple-resume.service",
                content=resume_unit(campaign, plan.release, kvmple, workdir),
            )
        )
        add(Step("enable the resume unit", ("systemctl", "enable", "kvmple-resume.service")))
    else:
        line = shlex.join([*kvmple, "run", "--resume", campaign])
        add(
            Step(
                "resume the campaign after the reboot",
                write_path="/etc/cron.d/kvmple-resume",
                content=f"@reboot root rm -f /etc/cron.d/kvmple-resume; {line}\n",
            )
        )


def execute(plan: InstallPlan, executor: Executor, timeout: float = 900.0) -> None:
    """Run the plan's steps in order (HostError/CommandError from the failing step)."""
    for step in plan.steps:
        if step.write_path:
            with tempfile.NamedTemporaryFile("w", delete=False, prefix="kvmple-") as handle:
                handle.write(step.content)
            try:
                executor.put(Path(handle.name), step.write_path, step.mode)
            finally:
                os.unlink(handle.name)
        else:
            executor.run(list(step.argv), timeout=timeout, what=step.description)


def kvmple_command() -> list[str]:
    """How the resume hook should call kvmple: this interpreter and module."""
    return [sys.executable, "-m", "kvmple.cli"]
