"""Kernel configs: parsing ``.config``/fragments and checking that fragment options survived.

``make olddefconfig`` silently drops an option whose dependencies are not met (asking for
CONFIG_KVM_INTEL=y without CONFIG_KVM, or CONFIG_SCSI_VIRTIO=y without SCSI). kvmple compares
every option of every fragment with the final .config and fails on anything that vanished,
except options defined only for another architecture (multi-arch fragments such as
kernel/configs/kvm_guest.config ask for CONFIG_S390_GUEST) and options the caller
explicitly allows to vanish; both are reported, never hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# What the boot gate needs on top of tinyconfig + kvm_guest.config: 64-bit, printk, a
# serial console, an initramfs, ELF and #! binaries, devtmpfs, /proc and /sys.
BOOT_TEST_FRAGMENT = """\
# kvmple boot-test fragment: on top of tinyconfig + kvm_guest.config
CONFIG_64BIT=y
CONFIG_PRINTK=y
CONFIG_TTY=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
"""

# What ``boot-test --image`` needs on top of tinyconfig + kvm_guest.config + kvmple-boot: the
# image's root and network drivers built in (its modules are for its own kernel), and what
# systemd (Debian 12's 252) and its user space need of the kernel (systemd's README lists
# the required options), plus AF_PACKET for the image's DHCP client and initrd
# decompressors for an --initrd.
IMAGE_BOOT_FRAGMENT = """\
# kvmple image-boot fragment: on top of tinyconfig + kvm_guest.config + kvmple-boot
# root and network of the guest image, built in
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_BLK=y
CONFIG_VIRTIO_NET=y
CONFIG_EXT4_FS=y
CONFIG_PACKET=y
CONFIG_UNIX=y
# systemd
CONFIG_MULTIUSER=y
CONFIG_CGROUPS=y
CONFIG_INOTIFY_USER=y
CONFIG_SIGNALFD=y
CONFIG_TIMERFD=y
CONFIG_EPOLL=y
CONFIG_EVENTFD=y
CONFIG_FHANDLE=y
CONFIG_FUTEX=y
CONFIG_POSIX_TIMERS=y
CONFIG_FILE_LOCKING=y
CONFIG_SHMEM=y
CONFIG_TMPFS=y
CONFIG_TMPFS_POSIX_ACL=y
CONFIG_TMPFS_XATTR=y
CONFIG_AUTOFS_FS=y
CONFIG_PROC_SYSCTL=y
CONFIG_SECCOMP=y
CONFIG_NAMESPACES=y
CONFIG_SYSVIPC=y
CONFIG_ADVISE_SYSCALLS=y
CONFIG_UNIX98_PTYS=y
# an --initrd (Debian's are zstd)
CONFIG_RD_GZIP=y
CONFIG_RD_ZSTD=y
"""

# The VT-x lab host's kernel (kvmple lab up intel), on top of tinyconfig: booted by Bochs
# from a GRUB ISO with a busybox + Python initramfs. KVM built in and kvm_intel a module, so
# kvmple's PLE switch can reload it with parameters; tracing with hist triggers (kvm:kvm_exit
# counted by exit reason) and debugfs (per-VM KVM statistics); ACPI so that power-off ends
# Bochs; an LZ4 image because Bochs spent 184 s decompressing an XZ one (host-notes.md).
LAB_INTEL_FRAGMENT = """\
# kvmple lab-intel fragment: on top of tinyconfig
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_PRINTK=y
CONFIG_PRINTK_TIME=y
CONFIG_TTY=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_PROC_FS=y
CONFIG_PROC_SYSCTL=y
CONFIG_SYSFS=y
CONFIG_MULTIUSER=y
CONFIG_NET=y
CONFIG_UNIX=y
CONFIG_FUTEX=y
CONFIG_EPOLL=y
CONFIG_EVENTFD=y
CONFIG_POSIX_TIMERS=y
CONFIG_SHMEM=y
CONFIG_TMPFS=y
CONFIG_FILE_LOCKING=y
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_HIGH_RES_TIMERS=y
CONFIG_CPU_SUP_INTEL=y
CONFIG_PCI=y
CONFIG_ACPI=y
CONFIG_VIRTUALIZATION=y
CONFIG_KVM=y
CONFIG_KVM_INTEL=m
CONFIG_DEBUG_FS=y
CONFIG_FTRACE=y
CONFIG_HIST_TRIGGERS=y
CONFIG_KERNEL_LZ4=y
"""

# The AMD-V lab host's own kernel (kvmple lab install-kernel), on top of tinyconfig +
# kvm_guest.config + kvmple-boot + kvmple-image (Debian 12's systemd and root, built in, so
# a kexec needs no initramfs). x86_64 defconfig was the first choice, but it compiled ~0.5
# files/s here at load ~5 (over an hour for ~2500 files); this is a fraction of it. Added:
# SMP, ACPI, KVM and kvm_amd as modules (so 'lab reload-module' still reloads kvm_amd),
# what libvirt and QEMU use (cgroup v2 controllers, seccomp filters, AIO), tracing with hist
# triggers (the kvm:kvm_exit evidence), kexec, and a LOCALVERSION so 'uname -r' tells it
# from Debian's 6.1.0-N-amd64.
LAB_AMD_FRAGMENT = """\
# kvmple lab-amd fragment: on top of tinyconfig + kvm_guest.config + kvmple-boot + kvmple-image
CONFIG_LOCALVERSION="-kvmple-lab"
# CONFIG_LOCALVERSION_AUTO is not set
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_PRINTK_TIME=y
CONFIG_HIGH_RES_TIMERS=y
CONFIG_CPU_SUP_AMD=y
CONFIG_ACPI=y
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_VIRTUALIZATION=y
CONFIG_KVM=m
CONFIG_KVM_AMD=m
CONFIG_CGROUP_SCHED=y
CONFIG_CPUSETS=y
CONFIG_CGROUP_CPUACCT=y
CONFIG_CGROUP_PIDS=y
CONFIG_MEMCG=y
CONFIG_BPF_SYSCALL=y
CONFIG_CGROUP_BPF=y
CONFIG_SECCOMP_FILTER=y
CONFIG_AIO=y
CONFIG_IPV6=y
CONFIG_DEBUG_FS=y
CONFIG_FTRACE=y
CONFIG_HIST_TRIGGERS=y
CONFIG_KEXEC=y
"""

# kvm_guest.config asks for these, but tinyconfig has no SCSI and no DRM: the boot gate does
# not need them, so the minimal preset allows them to vanish (and reports that they did).
BOOT_TEST_ALLOWED_TO_VANISH = frozenset({"SCSI_LOWLEVEL", "SCSI_VIRTIO", "DRM_VIRTIO_GPU"})

_SET = re.compile(r"^CONFIG_(\w+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_(\w+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Symbol (without CONFIG_) -> value ('y', 'm', '"str"', '123', or 'n' for unset)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _SET.match(line):
            values[match.group(1)] = match.group(2)
        elif match := _UNSET.match(line):
            values[match.group(1)] = "n"
    return values


_DEFINE = re.compile(r"^\s*(?:menu)?config\s+(\w+)\s*$", re.M)


def kconfig_symbols(tree: Path) -> dict[str, set[str]]:
    """Symbol -> where it is defined: '' for generic code, else the arch/<name> it lives in."""
    symbols: dict[str, set[str]] = {}
    for path in tree.rglob("Kconfig*"):
        if not path.is_file():
            continue
        relative = path.relative_to(tree).parts
        arch = relative[1] if relative[0] == "arch" and len(relative) > 2 else ""
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in _DEFINE.findall(text):
            symbols.setdefault(name, set()).add(arch)
    return symbols


def kconfig_value(text: str, written: str | None = None) -> tuple[str, object]:
    """A config value as Kconfig compares it: ``(kind, value)``.

    Rules (scripts/kconfig/confdata.c and symbol.c): ``# CONFIG_X is not set``, ``=n``, an
    empty value and absence are all "n" for bool/tristate; a string is compared after its
    quotes and backslash escapes are undone; numbers compare by value, and a value is hex
    when either side is written ``0x...`` (Kconfig writes a hex symbol with ``0x`` even when
    the fragment left it out), so ``written`` is the other side of the comparison.
    """
    value = text.strip()
    if value in ("", "n"):
        return ("tristate", "n")
    if value in ("y", "m"):
        return ("tristate", value)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return ("string", re.sub(r"\\(.)", r"\1", value[1:-1]))
    hex_side = value.lower().startswith(("0x", "-0x")) or (
        written is not None and written.strip().lower().startswith(("0x", "-0x"))
    )
    try:
        return ("number", int(value, 16) if hex_side else int(value, 10))
    except ValueError:
        return ("raw", value)


def same_config_value(wanted: str, got: str) -> bool:
    """Whether a fragment's ``wanted`` value and the final config's ``got`` are the same to
    Kconfig (see kconfig_value)."""
    return kconfig_value(wanted, got) == kconfig_value(got, wanted)


@dataclass(frozen=True)
class Mismatch:
    symbol: str
    wanted: str
    got: str
    fragment: str

    def describe(self) -> str:
        got = "not set" if self.got == "n" else self.got
        return f"CONFIG_{self.symbol}={self.wanted} (from {self.fragment}) is {got}"


@dataclass(frozen=True)
class BuiltIn(Mismatch):
    """A tristate asked ``=m`` that Kconfig built in because CONFIG_MODULES is not set (Kconfig
    treats every tristate as bool then: scripts/kconfig/symbol.c, ``modules_sym``)."""

    def describe(self) -> str:
        return (
            f"CONFIG_{self.symbol} asked =m (from {self.fragment}), built in (=y) because "
            "CONFIG_MODULES is not set"
        )


@dataclass
class FragmentCheck:
    vanished: list[Mismatch] = field(default_factory=list)
    other_arch: list[Mismatch] = field(default_factory=list)
    allowed: list[Mismatch] = field(default_factory=list)
    built_in: list[Mismatch] = field(default_factory=list)
    checked: int = 0


def check_fragments(
    fragments: dict[str, dict[str, str]],
    final: dict[str, str],
    symbols: dict[str, set[str]],
    arch: str,
    allowed: frozenset[str] | set[str] = frozenset(),
) -> FragmentCheck:
    """Compare every fragment option with the final config by Kconfig's rules (pure).

    Fragments are merged in order, so an option a later fragment sets again is checked
    against that later value. ``=m`` built in as ``=y`` without CONFIG_MODULES is accepted
    and listed in ``built_in``; values compare as Kconfig does (same_config_value).
    """
    effective: dict[str, tuple[str, str]] = {}
    for name, options in fragments.items():
        for symbol, wanted in options.items():
            effective[symbol] = (wanted, name)
    modules = kconfig_value(final.get("MODULES", "n")) != ("tristate", "n")
    result = FragmentCheck()
    for symbol, (wanted, name) in effective.items():
        result.checked += 1
        got = final.get(symbol, "n")
        if same_config_value(wanted, got):
            continue
        if not modules and wanted.strip() == "m" and got.strip() == "y":
            result.built_in.append(BuiltIn(symbol, wanted, got, name))
            continue
        mismatch = Mismatch(symbol, wanted, got, name)
        where = symbols.get(symbol, set())
        if where and "" not in where and arch not in where:
            result.other_arch.append(mismatch)
        elif symbol in allowed:
            result.allowed.append(mismatch)
        else:
            result.vanished.append(mismatch)
    return result
