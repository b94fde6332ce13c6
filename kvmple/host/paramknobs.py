"""Knobs named by what they change rather than listed one by one: any parameter of the KVM
modules (``kvm.halt_poll_ns``, ``kvm_intel.ple_window``, ``kvm_amd.pause_filter_thresh``) and
any host sysfs/debugfs file by path (``/sys/kernel/debug/sched/...``, for features under
review such as the 2025 vCPU-debooster RFC's ``sched/vcpu_debooster_enabled``).

A module parameter whose sysfs file is writable (mode 0644, e.g. kvm's halt_poll_ns:
virt/kvm/kvm_main.c ``module_param(halt_poll_ns, uint, 0644)``) is written in place; a
read-only one (0444, e.g. kvm_intel's ple_gap) changes only by a module reload with options,
through the same checks and loader as the PLE switch (:func:`kvmple.host.ple.check_can_reload`,
``HostSeam.loader``). Every change is read back; a value that reads back differently is a
HostError and the driver (:func:`kvmple.host.knobs.applied`) restores what it touched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kvmple.errors import HostError
from kvmple.host import paramtypes, ple
from kvmple.host.knob import Knob
from kvmple.host.kvmmodule import read_module
from kvmple.host.seam import HostSeam

if TYPE_CHECKING:  # the lab host runs the host layer without pydantic (lab/bochs_media.py)
    from pydantic import JsonValue

KVM_MODULES = ("kvm", "kvm_intel", "kvm_amd")
MODULE_PARAM = re.compile(r"^(kvm|kvm_intel|kvm_amd)\.([a-z0-9_]+)$")
_SETTING = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
_BOOLS = {"y": "1", "n": "0", "yes": "1", "no": "0", "true": "1", "false": "0"}


def canonical(value: str) -> str:
    """How two parameter values compare: sysfs prints bools as Y/N, users write 1/0/Y/N."""
    text = value.strip()
    return _BOOLS.get(text.lower(), text)


def check_value(name: str, setting: object) -> str:
    """``setting`` as a string a sysfs file or modprobe takes (ValueError otherwise)."""
    text = str(setting) if isinstance(setting, int | str) and not isinstance(setting, bool) else ""
    if not _SETTING.match(text):
        raise ValueError(
            f"knob {name!r}: {setting!r} is not a value a kernel parameter takes "
            "(a number, Y/N or a short word)"
        )
    return text


@dataclass(frozen=True)
class ParamReading:
    """A parameter or file as read back: its path (relative to /sys) and text."""

    name: str
    path: str
    value: str
    writable: bool

    def to_json(self) -> dict[str, JsonValue]:
        return {"value": self.value, "path": f"/sys/{self.path}", "writable": self.writable}


def _read(seam: HostSeam, name: str, relative: str) -> ParamReading:
    path = seam.sys_root / relative
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise HostError(
            f"{name}: cannot read /sys/{relative}: {exc.strerror or exc}",
            hint="is the module loaded / the feature built into this kernel?",
        ) from None
    return ParamReading(name, relative, value, bool(path.stat().st_mode & 0o200))


def _write(seam: HostSeam, reading: ParamReading, value: str) -> ParamReading:
    if not seam.is_root():
        raise HostError(f"{reading.name}: writing /sys/{reading.path} needs root; nothing changed")
    try:
        (seam.sys_root / reading.path).write_text(value + "\n", encoding="utf-8")
    except OSError as exc:
        raise HostError(
            f"{reading.name}: the kernel refused {value!r} for /sys/{reading.path}: "
            f"{exc.strerror or exc}",
            hint="check the parameter's type and range (modinfo / the kernel source)",
        ) from None
    return _read(seam, reading.name, reading.path)


def _check_read_back(name: str, wanted: str, after: ParamReading) -> ParamReading:
    if canonical(after.value) != canonical(wanted):
        raise HostError(
            f"{name} was set to {wanted} but reads back {after.value}",
            hint="the kernel clamped or ignored it (check dmesg); the campaign restores it",
        )
    return after


class _SysFileKnob(Knob):
    """A knob that is one file under /sys (``relative`` to the seam's sys root): read, set
    (written, or :meth:`_change` of a subclass), read back and restored the same way."""

    settings: tuple[str, ...] = ()
    relative: str

    def check_setting(self, setting: object) -> str:
        return check_value(self.name, setting)

    def read(self, seam: HostSeam) -> ParamReading:
        reason = self.available(seam)
        if reason is not None:
            raise HostError(f"{self.name}: {reason}", hint=self.provider_hint)
        return _read(seam, self.name, self.relative)

    def apply(self, seam: HostSeam, setting: str) -> ParamReading:
        value = self.check_setting(setting)
        before = self.read(seam)
        if canonical(before.value) == canonical(value):
            return before
        return _check_read_back(self.name, value, self._change(seam, before, value))

    def restore(self, seam: HostSeam, before: object) -> ParamReading:
        if not isinstance(before, ParamReading):
            raise TypeError(f"not a parameter reading: {before!r}")
        return self.apply(seam, self._restore_value(before))

    def _change(self, seam: HostSeam, before: ParamReading, value: str) -> ParamReading:
        return _write(seam, before, value)

    def _restore_value(self, before: ParamReading) -> str:
        return before.value


class ModuleParamKnob(_SysFileKnob):
    """One parameter of kvm / kvm_intel / kvm_amd, named ``module.param``."""

    needs_kvm = True
    provider_hint = "use a host where 'kvmple doctor' says kvm"

    def __init__(self, name: str) -> None:
        match = MODULE_PARAM.match(name)
        if match is None:
            raise HostError(
                f"unknown host knob {name!r}",
                hint=f"a KVM module parameter is named MODULE.PARAM, MODULE one of "
                f"{', '.join(KVM_MODULES)} (e.g. kvm.halt_poll_ns)",
            )
        self.name = name
        self.title = name
        self.module, self.param = match.group(1), match.group(2)
        self.relative = f"module/{self.module}/parameters/{self.param}"
        self.change_note = "written in place or by a module reload, then read back"

    def check_settings(
        self, settings: Sequence[object], declared_type: str | None = None
    ) -> tuple[str, ...]:
        """Each setting as a value of the parameter's type (:mod:`kvmple.host.paramtypes`:
        what kvmple knows, else the factor's ``type:``, which is then required)."""
        try:
            kind = paramtypes.param_type(self.name, declared_type)
        except ValueError as exc:
            raise ValueError(f"knob {self.name!r}: {exc}") from None
        return tuple(
            paramtypes.check_typed(self.name, kind, self.check_setting(setting))
            for setting in settings
        )

    def available(self, seam: HostSeam) -> str | None:
        if not (seam.sys_root / "module" / self.module).is_dir():
            return f"the {self.module} module is not loaded"
        if not (seam.sys_root / self.relative).is_file():
            return f"{self.module} has no parameter {self.param} (this kernel's version?)"
        return None

    def without_kvm(self, seam: HostSeam, host_reason: str) -> str:
        """Why a TCG host cannot vary it, saying what it reads (it exists, has no effect)."""
        reading = self.read(seam)
        return (
            f"{self.name} reads {reading.value} here, but guests run under TCG, where KVM's "
            f"parameters have no effect ({host_reason})"
        )

    def _change(self, seam: HostSeam, before: ParamReading, value: str) -> ParamReading:
        """Written in place when the file is writable (0644), else a module reload."""
        return _write(seam, before, value) if before.writable else self._reload(seam, value)

    def _restore_value(self, before: ParamReading) -> str:
        return canonical(before.value)  # modprobe takes 1/0, sysfs prints Y/N

    def _reload(self, seam: HostSeam, value: str) -> ParamReading:
        """Reload the module with this parameter, keeping its PLE parameters as they are."""
        module = read_module(seam.sys_root, self.module)
        if module is None:
            raise HostError(f"{self.name}: the {self.module} module is not loaded")
        ple.check_can_reload(seam, module)
        options: dict[str, int] = {}
        if module.ple_spec is not None:
            for name in module.ple_spec.names:
                current = module.parameter(name)
                if current is not None and canonical(current).lstrip("-").isdigit():
                    options[name] = int(canonical(current))
        if not canonical(value).lstrip("-").isdigit():
            raise HostError(
                f"{self.name} is read-only at run time and {value!r} is not a number a "
                "module reload can pass",
                hint="give the value as a number (1/0 for Y/N)",
            )
        options[self.param] = int(canonical(value))
        seam.loader.reload(self.module, options)
        return _read(seam, self.name, self.relative)


class SysfsPathKnob(_SysFileKnob):
    """A host file under /sys (sysfs) or /sys/kernel/debug (debugfs), named by its path."""

    needs_kvm = False  # scheduler knobs shape how the host runs vCPU threads under TCG too
    provider_hint = "mount debugfs (mount -t debugfs none /sys/kernel/debug), or another kernel"

    def __init__(self, name: str) -> None:
        path = PurePosixPath(name)
        if not path.is_absolute() or ".." in path.parts or path.parts[:2] != ("/", "sys"):
            raise HostError(
                f"host knob {name!r} is not a path under /sys",
                hint="a path knob names a sysfs or debugfs file, e.g. "
                "/sys/kernel/debug/sched/vcpu_debooster_enabled",
            )
        self.name = name
        self.title = name
        self.relative = str(PurePosixPath(*path.parts[2:]))
        self.change_note = "written, then read back"

    def _resolved_inside(self, seam: HostSeam) -> bool:
        real = Path(os.path.realpath(seam.sys_root / self.relative))
        return real.is_relative_to(Path(os.path.realpath(seam.sys_root)))

    def available(self, seam: HostSeam) -> str | None:
        target = seam.sys_root / self.relative
        if not target.is_file():
            return "does not exist on this host"
        if not self._resolved_inside(seam):
            return "leads outside /sys through a link"
        if not target.stat().st_mode & 0o200:
            return "is read-only"
        return None

    def without_kvm(self, seam: HostSeam, host_reason: str) -> str:
        return host_reason
