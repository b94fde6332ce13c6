"""The one QEMU command-line builder (mkosi qemu.py's shape: one place decides every flag).

Every guest kvmple boots with plain QEMU (image check, ``kernel boot-test`` with and without
``--image``, the doctor's KVM probe, lab hosts) gets its argv from ``command_line(QemuConfig)``;
libvirt guests get the overlapping pieces (user-mode NIC with the SSH forward, CPU model) from
``netdev_args`` and ``cpu_arg``. Pure functions apart from ``find_qemu``.

Choices, and why:

- ``-accel``: ``kvm``; or ``tcg,thread=multi`` when there is more than one vCPU (one host
  thread per vCPU; QEMU 7.2's default for x86-on-x86, said explicitly), plain ``tcg`` for one.
  A caller may pass any other QEMU ``-accel`` value unchanged (``kvmple image check --accel``).
- ``-nodefaults -display none``: no firmware-default devices, nothing but what is asked for.
- ``-no-reboot``: a guest's reboot (``panic=-1`` on a panic, ``reboot -f``) ends QEMU at once.
- Networking is QEMU user mode (slirp, inside the QEMU process: it dies with the guest) with
  ``hostfwd`` bound to 127.0.0.1 only.
- ``-name NAME,debug-threads=on`` names QEMU's threads ("CPU 0/TCG", "CPU 0/KVM"), which is
  how kvmple finds the vCPU threads of a guest (vm/threads.py).

Source of the flags: qemu-system-x86_64(1), QEMU 7.2 (Debian 12).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kvmple.errors import HostError
from kvmple.qemuopts import escape_qemu_value

QEMU = "qemu-system-x86_64"
Accelerator = Literal["kvm", "tcg"]
DEBUG_EXIT = "isa-debug-exit,iobase=0xf4,iosize=0x04"


def find_qemu(program: str = QEMU) -> str:
    """The path of ``program``; HostError (exit 4) when it is not installed."""
    path = shutil.which(program)
    if path is None:
        raise HostError(
            f"{program} not found",
            hint="install it: apt-get install qemu-system-x86 (or run scripts/setup-host.sh)",
        )
    return path


def accel_arg(accel: str, cpus: int) -> str:
    """QEMU's ``-accel`` value for ``accel`` ("kvm", "tcg" or any raw -accel value, passed
    through) and ``cpus`` vCPUs (pure)."""
    if accel == "tcg":
        return "tcg,thread=multi" if cpus > 1 else "tcg"
    return accel


def cpu_arg(model: str, features: Sequence[str] = ()) -> str:
    """``-cpu`` value: a model with +/- features, e.g. ("qemu64", ("+svm", "+npt")) ->
    "qemu64,+svm,+npt" (pure). A feature without a sign is enabled."""
    flags = [f if f[:1] in "+-" else f"+{f}" for f in features]
    return ",".join([model, *flags])


def netdev_args(
    ssh_port: int, *, netdev_id: str = "net0", device_extra: str = "", guest_port: int = 22
) -> list[str]:
    """A user-mode virtio NIC forwarding 127.0.0.1:``ssh_port`` (only) to the guest's
    ``guest_port``; ``device_extra`` is appended to the -device value (e.g. a PCI address)."""
    if not 1 <= ssh_port <= 65535:
        raise ValueError(f"ssh_port {ssh_port} out of range")
    device = f"virtio-net-pci,netdev={netdev_id}" + (f",{device_extra}" if device_extra else "")
    return [
        "-netdev",
        f"user,id={netdev_id},hostfwd=tcp:127.0.0.1:{ssh_port}-:{guest_port}",
        "-device",
        device,
    ]


@dataclass(frozen=True)
class DirectBoot:
    """What QEMU boots directly (-kernel/-initrd/-append): an image's own kernel, or a built
    kernel under test, possibly without an initrd."""

    kernel: Path
    initrd: Path | None
    cmdline: str


@dataclass(frozen=True)
class Drive:
    """A disk on virtio-blk; ``cache=unsafe``: the overlays are throw-away."""

    path: Path
    format: str = "qcow2"

    def arg(self) -> str:
        # QEMU splits options on ","; a comma in the path is written ",," (qemuopts)
        return (
            f"file={escape_qemu_value(str(self.path))},if=virtio,format={self.format},cache=unsafe"
        )


@dataclass(frozen=True)
class QemuConfig:
    """One plain-QEMU guest. ``serial``: a file for the console, or "stdio"."""

    accel: str
    memory_mib: int
    serial: Path | Literal["stdio"]
    cpus: int = 1
    binary: str = QEMU
    boot: DirectBoot | None = None
    drives: tuple[Drive, ...] = ()
    ssh_port: int | None = None
    machine: str | None = None
    cpu_model: str | None = None
    cpu_features: tuple[str, ...] = ()
    name: str | None = None
    debug_exit: bool = False
    isolated: bool = False  # -no-user-config -monitor none: nothing from the environment
    extra: tuple[str, ...] = ()  # appended as given


def command_line(config: QemuConfig) -> list[str]:
    """The QEMU command line for ``config`` (pure)."""
    args = [config.binary, "-accel", accel_arg(config.accel, config.cpus)]
    if config.machine:
        args += ["-machine", config.machine]
    if config.cpu_model:
        args += ["-cpu", cpu_arg(config.cpu_model, config.cpu_features)]
    if config.name:
        args += ["-name", f"{config.name},debug-threads=on"]
    args += ["-m", str(config.memory_mib), "-smp", str(config.cpus), "-nodefaults"]
    if config.isolated:
        args += ["-no-user-config"]
    args += ["-display", "none"]
    if config.isolated:
        args += ["-monitor", "none"]
    serial = "stdio" if config.serial == "stdio" else f"file:{config.serial}"
    args += ["-serial", serial, "-no-reboot"]
    if config.boot is not None:
        args += ["-kernel", str(config.boot.kernel)]
        if config.boot.initrd is not None:
            args += ["-initrd", str(config.boot.initrd)]
        if config.boot.cmdline:
            args += ["-append", config.boot.cmdline]
    for drive in config.drives:
        args += ["-drive", drive.arg()]
    if config.ssh_port is not None:
        args += netdev_args(config.ssh_port)
    if config.debug_exit:
        args += ["-device", DEBUG_EXIT]
    return [*args, *config.extra]


def die_with_owner(argv: list[str]) -> list[str]:
    """``argv`` run through setpriv(1) with ``--pdeathsig KILL``: the kernel kills QEMU when
    the thread that started it dies, by any signal (SIGKILL, the OOM killer), so a plain-QEMU
    guest never outlives its kvmple process. Start it from the thread that waits for it.
    setpriv is util-linux (essential on Debian)."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *argv]
