"""What a guest should look like: a typed, frozen VM spec and the small parsers around it.

The spec is pure data. ``domxml`` turns it into libvirt XML, ``pinning`` checks it against the
host's CPUs, ``lifecycle`` boots it. The image is anything shaped like ``kvmple.image.Image``
(see ``GuestImage``) so this module does not depend on how images are built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from kvmple.errors import ConfigError, UsageError

Accelerator = Literal["kvm", "tcg"]

DOMAIN_PREFIX = "kvmple-"

# Roles and campaign ids end up in domain names, file names and libvirt XML: keep them tame.
_NAME_PART = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# QEMU CPU model and feature names ("EPYC-Rome", "svme-addr-chk", "Skylake-Server-v4")
_CPU_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class GuestImage(Protocol):
    """The fields of ``kvmple.image.Image`` the VM layer uses."""

    @property
    def name(self) -> str: ...
    @property
    def qcow2(self) -> Path: ...
    @property
    def kernel(self) -> Path: ...
    @property
    def initrd(self) -> Path: ...
    @property
    def cmdline(self) -> str: ...
    @property
    def ssh_user(self) -> str: ...
    @property
    def host_keys(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class VMSpec:
    """One guest of a campaign.

    ``vcpu_pins[i]`` is the set of host CPUs vCPU ``i`` may run on (one tuple per vCPU);
    ``emulator_pins`` the host CPUs of QEMU's other threads (I/O, main loop).
    """

    role: str
    image: GuestImage
    vcpus: int
    memory_mib: int
    vcpu_pins: tuple[tuple[int, ...], ...]
    emulator_pins: tuple[int, ...]
    accelerator: Accelerator
    extra_kernel_args: tuple[str, ...] = ()
    campaign_id: str = "manual"
    # per-VM knob settings as QEMU arguments (kvmple.host.vmknobs: -overcommit cpu-pm=on)
    qemu_args: tuple[str, ...] = ()
    # A named QEMU CPU model with required features (e.g. a lab host's emulated AMD-V:
    # "qemu64" + ("svm", "npt")); None: host-passthrough under KVM, QEMU's default under TCG.
    cpu_model: str | None = None
    cpu_features: tuple[str, ...] = ()
    # What a guest reset does: "destroy" ends a measured guest (a reboot is a fault there);
    # "restart" resets a lab host in place, so QEMU boots its -kernel again: the fallback of
    # a kexec'd kernel that panics (kvmple.lab.kernel).
    on_reboot: Literal["destroy", "restart"] = "destroy"

    def __post_init__(self) -> None:
        check_name_part("role", self.role)
        check_name_part("campaign id", self.campaign_id)
        if self.vcpus < 1:
            raise ConfigError(f"guest {self.role}: vcpus must be >= 1, got {self.vcpus}")
        if self.memory_mib < 128:
            raise ConfigError(
                f"guest {self.role}: memory_mib must be >= 128, got {self.memory_mib}",
                hint="a Debian guest with RabbitMQ needs about 1024 MiB",
            )
        if self.accelerator not in ("kvm", "tcg"):
            raise ConfigError(f"guest {self.role}: accelerator must be kvm or tcg")
        self._check_cpu()
        for arg in self.extra_kernel_args:
            if not arg or any(c.isspace() for c in arg):
                raise ConfigError(
                    f"guest {self.role}: extra kernel argument {arg!r} is empty or has spaces",
                    hint="give one argument per list item, e.g. ['nosmt', 'mitigations=off']",
                )

    def _check_cpu(self) -> None:
        if self.cpu_model is not None and not _CPU_WORD.match(self.cpu_model):
            raise ConfigError(f"guest {self.role}: CPU model {self.cpu_model!r} is not a name")
        if self.cpu_features and self.cpu_model is None:
            raise ConfigError(f"guest {self.role}: CPU features need a CPU model")
        for feature in self.cpu_features:
            if not _CPU_WORD.match(feature):
                raise ConfigError(f"guest {self.role}: CPU feature {feature!r} is not a name")

    @property
    def domain_name(self) -> str:
        return domain_name(self.campaign_id, self.role)

    @property
    def kernel_cmdline(self) -> str:
        return " ".join([self.image.cmdline, *self.extra_kernel_args]).strip()


def domain_name(campaign_id: str, role: str) -> str:
    return f"{DOMAIN_PREFIX}{campaign_id}-{role}"


def check_name_part(what: str, value: str) -> None:
    if not _NAME_PART.match(value):
        raise ConfigError(
            f"{what} {value!r} is not a valid name part",
            hint="use 1-40 characters: lower-case letters, digits and '-', starting alnum",
        )


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse a kernel-style CPU list ("0-3,6,8-9") into sorted unique CPU numbers."""
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        raise ValueError("empty CPU list")
    for raw in text.split(","):
        part = raw.strip()
        if re.fullmatch(r"\d+", part):
            cpus.add(int(part))
        elif m := re.fullmatch(r"(\d+)-(\d+)", part):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"range {part!r} runs backwards")
            cpus.update(range(lo, hi + 1))
        else:
            raise ValueError(f"{part!r} is not a CPU number or range")
    return tuple(sorted(cpus))


def format_cpulist(cpus: Sequence[int]) -> str:
    """The inverse of parse_cpulist, compressing runs: (0, 1, 2, 5) -> "0-2,5"."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def expand_pins(pins: Sequence[Sequence[int]], vcpus: int) -> tuple[tuple[int, ...], ...]:
    """One pin set for all vCPUs is repeated; otherwise there must be one per vCPU."""
    if len(pins) == 1:
        return tuple(tuple(pins[0]) for _ in range(vcpus))
    return tuple(tuple(p) for p in pins)


@dataclass(frozen=True)
class SpecArgs:
    """A human's guest description from the command line, before the image is resolved."""

    role: str
    image: str
    vcpus: int
    memory_mib: int
    vcpu_pins: tuple[tuple[int, ...], ...] | None
    emulator_pins: tuple[int, ...] | None
    extra_kernel_args: tuple[str, ...]


def parse_spec_arg(text: str) -> SpecArgs:
    """Parse ``ROLE=IMAGE[,vcpus=N][,mem=MiB][,pins=0/1][,emulator=0-1][,append=a+b]``.

    ``pins`` lists one CPU list per vCPU separated by '/' ("0/1": vCPU0 on 0, vCPU1 on 1);
    a single CPU list applies to every vCPU ("0-1").
    """
    role, sep, rest = text.partition("=")
    if not sep or not rest:
        raise UsageError(
            f"guest spec {text!r} must look like ROLE=IMAGE[,vcpus=N,...]",
            hint="example: amqp=debian12-amqp,vcpus=2,pins=0/1,mem=1024",
        )
    image, *options = rest.split(",")
    values: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in {"vcpus", "mem", "pins", "emulator", "append"}:
            raise UsageError(
                f"guest spec {text!r}: unknown option {option!r}",
                hint="options: vcpus=N, mem=MiB, pins=0/1, emulator=0-1, append=arg+arg",
            )
        values[key] = value
    try:
        vcpus = int(values.get("vcpus", "2"))
        memory = int(values.get("mem", "1024"))
        pins = (
            tuple(parse_cpulist(p) for p in values["pins"].split("/")) if "pins" in values else None
        )
        emulator = parse_cpulist(values["emulator"]) if "emulator" in values else None
    except ValueError as exc:
        raise UsageError(f"guest spec {text!r}: {exc}") from exc
    append = tuple(a for a in values.get("append", "").split("+") if a)
    return SpecArgs(role, image, vcpus, memory, pins, emulator, append)
