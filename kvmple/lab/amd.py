"""``amd`` lab hosts: QEMU TCG emulating an AMD-V machine, booted through the guest runtime.

QEMU's TCG implements SVM with NPT, VGIF and SVME_ADDR_CHK (target/i386/cpu.c,
TCG_SVM_FEATURES) but no pause filter, so inside, Debian's kernel loads a real kvm_amd
(/dev/kvm, nested paging) with pause_filter_count/thresh forced to 0: KVM yes, PLE no.
The CPU model is ``qemu64`` with those features required (host-notes: fastest here, while
``EPYC,+svm`` hung in 2 of 15 runs with RCU stalls). The lab host is a libvirt ``type='qemu'``
domain recorded like every guest, detached once ready so it outlives ``lab up``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvmple import events
from kvmple.errors import GuestError, KvmpleError
from kvmple.events import Sink
from kvmple.image.selfinstall import kvmple_wheel
from kvmple.keys import KEY_NAME, installation_key
from kvmple.lab.model import LAB_CAMPAIGN, LabHost, save
from kvmple.vm.lifecycle import Guest, boot_guests, detach
from kvmple.vm.pinning import read_host_cpus
from kvmple.vm.snapshot import Readiness
from kvmple.vm.spec import VMSpec

if TYPE_CHECKING:
    from kvmple.remote import SSHExecutor
    from kvmple.vm.spec import GuestImage

RECIPE = "debian12-labhost"
CPU_MODEL = "qemu64"
# What TCG's SVM offers (TCG_SVM_FEATURES); without npt kvm_amd runs shadow paging. Then
# x86-64-v2, which qemu64 lacks: numpy 2.x wheels require it and python died by a signal
# on 'import numpy' inside a lab host without it (kvmple run's report).
CPU_FEATURES = ("svm", "npt", "vgif", "svme-addr-chk", "ssse3", "sse4.1", "sse4.2", "popcnt")
# Console lines of a lab host that hangs rather than boots slowly (host-notes: seen with EPYC).
STALL_MARKERS = ("self-detected stall", "rcu_sched detected stall", "soft lockup", "hard LOCKUP")
# kvmple's default key directory for root inside the lab host (paths.state_dir() / "ssh")
LAB_VENV = "/opt/kvmple/venv"  # the recipe's kvmple_venv
LAB_KEY_DIR = "/root/.local/state/kvmple/ssh"
KVM_READY_CHECK = ("test", "-c", "/dev/kvm", "-a", "-d", "/sys/module/kvm_amd")


@dataclass(frozen=True)
class AmdOptions:
    """``lab up amd``'s choices. ``ready_timeout_s`` bounds start -> SSH + kvm_amd;
    ``snapshots`` as boot_guests takes it (a restored lab host is ready in seconds)."""

    name: str = "amd"
    cpus: int = 2
    memory_mib: int = 3072
    cpu_model: str = CPU_MODEL
    cpu_features: tuple[str, ...] = CPU_FEATURES
    ready_timeout_s: float = 900.0
    snapshots: bool | None = None  # None: kvmple.vm.snapshot.wanted (False: --cold-boot)

    @property
    def cpu(self) -> str:
        return ",".join([self.cpu_model, *(f"+{f}" for f in self.cpu_features)])


def lab_spec(options: AmdOptions, image: GuestImage) -> VMSpec:
    """The lab host as a guest: every vCPU may run on every host CPU (it is a whole machine,
    not a measured guest), TCG, the AMD-V CPU model."""
    online = tuple(sorted(read_host_cpus().online))
    return VMSpec(
        role=options.name,
        image=image,
        vcpus=options.cpus,
        memory_mib=options.memory_mib,
        vcpu_pins=tuple(online for _ in range(options.cpus)),
        emulator_pins=online,
        accelerator="tcg",
        campaign_id=LAB_CAMPAIGN,
        cpu_model=options.cpu_model,
        cpu_features=options.cpu_features,
        on_reboot="restart",  # a reset boots QEMU's -kernel again (kexec fallback)
    )


def kvm_ready(executor: SSHExecutor, timeout: float) -> None:
    """A lab host's readiness beyond SSH: /dev/kvm exists and kvm_amd is loaded
    (modules-load.d loads it at boot). Checked before its snapshot is saved and again after
    every restore. GuestError with the kernel's kvm lines after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not executor.run(list(KVM_READY_CHECK), timeout=60, check=False).ok:
        if time.monotonic() > deadline:
            modules = executor.run(["dmesg"], timeout=60, check=False).stdout
            kvm_lines = [ln for ln in modules.splitlines() if "kvm" in ln.lower() or "SVM" in ln]
            raise GuestError(
                f"{executor.name}: SSH answers but kvm_amd is not loaded (/dev/kvm missing); "
                f"kernel log: {'; '.join(kvm_lines[-5:]) or 'no kvm lines'}",
                hint="the CPU model must offer svm (lab up amd --cpu-model qemu64)",
            )
        time.sleep(2.0)


# part of the lab host's snapshot key: a saved lab host always has kvm_amd loaded
KVM_READINESS = Readiness(
    level="ssh+kvm_amd", version="1", check=kvm_ready, label="waiting for kvm_amd"
)


def share_key(guest: Guest) -> None:
    """Give the lab host this installation's SSH key: the guests baked into its image
    (nested_images) authorize it, so kvmple inside the lab host reaches them."""
    key = installation_key()
    guest.executor.run(["mkdir", "-p", "-m", "700", LAB_KEY_DIR], timeout=60)
    guest.executor.put(key.private, f"{LAB_KEY_DIR}/{KEY_NAME}", 0o600)
    guest.executor.put(key.public, f"{LAB_KEY_DIR}/{KEY_NAME}.pub", 0o644)


def install_kvmple(guest: Guest, wheel: Path) -> None:
    """Install this checkout's kvmple (no dependencies: the image has them) into the lab
    host's venv, so the kvmple inside is the one running here."""
    remote = f"/tmp/{wheel.name}"
    guest.executor.put(wheel, remote)
    guest.executor.run(
        [f"{LAB_VENV}/bin/pip", "install", "--quiet", "--no-deps", "--no-index",
         "--force-reinstall", "--disable-pip-version-check", remote],
        timeout=600,
        what="installing kvmple into the lab host",
    )  # fmt: skip
    guest.executor.run(["rm", "-f", remote], timeout=60)


def up(options: AmdOptions, image: GuestImage, *, sink: Sink = events.discard) -> LabHost:
    """Boot the lab host, wait for SSH and kvm_amd, record it and leave it running.

    GuestError (exit 7) when it never answers (with the console tail, naming a stall when
    the console shows one) or QEMU refuses the CPU model; nothing is left behind then (a
    clean-up problem on the way is a Warn to ``sink``).
    """
    spec = lab_spec(options, image)
    with tempfile.TemporaryDirectory(prefix="kvmple-lab-wheel-") as scratch:
        wheel = kvmple_wheel(Path(scratch))  # before booting: a broken checkout fails early
        return _boot(options, spec, image, wheel, sink)


def _boot(options: AmdOptions, spec: VMSpec, image: GuestImage, wheel: Path, sink: Sink) -> LabHost:
    start = time.monotonic()
    try:
        with boot_guests(
            [spec],
            ready_timeout=options.ready_timeout_s,
            snapshots=options.snapshots,
            readiness={spec.role: KVM_READINESS},
            sink=sink,
        ) as (guest,):
            share_key(guest)
            install_kvmple(guest, wheel)
            host = LabHost(
                name=options.name,
                kind="amd",
                domain=guest.name,
                cpus=options.cpus,
                memory_mib=options.memory_mib,
                cpu=options.cpu,
                image=image.name,
                created=time.time(),
                ready_s=round(time.monotonic() - start, 1),
                boot="restored" if guest.snapshot else "cold",
                snapshot=guest.snapshot,
            )
            save(guest.record, host)
            detach([guest])
            return host
    except GuestError as exc:
        raise _explain(exc, spec) from exc


def _explain(exc: KvmpleError, spec: VMSpec) -> KvmpleError:
    """Name a stall when the console tail in the message shows one (the run directory with
    the full console log is gone by now: nothing is left behind)."""
    stall = next(
        (ln for ln in exc.message.splitlines() if any(m in ln for m in STALL_MARKERS)), None
    )
    if stall is None:
        return exc
    return GuestError(
        f"lab host {spec.role} stalled while booting (emulated CPU hung: {stall.strip()})",
        hint="TCG on a loaded host; retry, or use fewer --cpus",
    )
