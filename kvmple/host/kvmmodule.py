"""Which KVM module drives /dev/kvm, and the PLE parameters of the two that have them.

Facts (../shared/reference/yield-to-ple-series.md): kvm_intel's ple_* parameters are
``uint``, kvm_amd's pause_filter_* are ``ushort``; both are read-only (0444) at run time,
so changing them means reloading the module with options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UINT_MAX = 2**32 - 1
USHORT_MAX = 2**16 - 1


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: int
    maximum: int


@dataclass(frozen=True)
class PleModuleSpec:
    """A KVM vendor module that implements pause-loop exiting."""

    module: str
    vendor: str
    cpu_flag: str
    switch: str  # the parameter whose 0 disables PLE
    params: tuple[ParamSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, int]:
        return {p.name: p.default for p in self.params}


KVM_INTEL = PleModuleSpec(
    module="kvm_intel",
    vendor="intel",
    cpu_flag="ple (in 'vmx flags')",
    switch="ple_gap",
    params=(
        ParamSpec("ple_gap", 128, UINT_MAX),
        ParamSpec("ple_window", 4096, UINT_MAX),
        ParamSpec("ple_window_grow", 2, UINT_MAX),
        ParamSpec("ple_window_shrink", 0, UINT_MAX),
        ParamSpec("ple_window_max", UINT_MAX, UINT_MAX),
    ),
)

KVM_AMD = PleModuleSpec(
    module="kvm_amd",
    vendor="amd",
    cpu_flag="pausefilter",
    switch="pause_filter_count",
    params=(
        ParamSpec("pause_filter_thresh", 128, USHORT_MAX),
        ParamSpec("pause_filter_count", 3000, USHORT_MAX),
        ParamSpec("pause_filter_count_grow", 2, USHORT_MAX),
        ParamSpec("pause_filter_count_shrink", 0, USHORT_MAX),
        ParamSpec("pause_filter_count_max", USHORT_MAX, USHORT_MAX),
    ),
)

PLE_MODULES = {spec.module: spec for spec in (KVM_INTEL, KVM_AMD)}


@dataclass(frozen=True)
class KvmModule:
    """The loaded KVM vendor module as sysfs shows it."""

    name: str
    builtin: bool  # no /sys/module/NAME/initstate: compiled in, cannot be reloaded
    refcnt: int | None
    parameters: tuple[tuple[str, str], ...]  # every readable parameter, sorted by name

    @property
    def ple_spec(self) -> PleModuleSpec | None:
        return PLE_MODULES.get(self.name)

    def parameter(self, name: str) -> str | None:
        return dict(self.parameters).get(name)

    def to_json(self) -> dict[str, object]:
        spec = self.ple_spec
        ple: dict[str, str] | None = None
        if spec is not None:
            ple = {n: v for n, v in self.parameters if n in spec.names}
        return {
            "name": self.name,
            "builtin": self.builtin,
            "refcnt": self.refcnt,
            "ple_parameters": ple,
            "parameters": dict(self.parameters),
        }


def _read_parameters(module_dir: Path) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    params = module_dir / "parameters"
    if params.is_dir():
        for entry in sorted(params.iterdir()):
            try:
                found.append((entry.name, entry.read_text().strip()))
            except OSError:
                continue  # write-only or vanished parameter
    return tuple(found)


def read_module(sys_root: Path, name: str) -> KvmModule | None:
    """Describe module ``name`` if sysfs has it (loaded or built in)."""
    module_dir = sys_root / "module" / name
    if not module_dir.is_dir():
        return None
    refcnt: int | None = None
    try:
        refcnt = int((module_dir / "refcnt").read_text().strip())
    except (OSError, ValueError):
        refcnt = None
    return KvmModule(
        name=name,
        builtin=not (module_dir / "initstate").exists(),
        refcnt=refcnt,
        parameters=_read_parameters(module_dir),
    )


def find_kvm_module(sys_root: Path) -> KvmModule | None:
    """The KVM vendor module: kvm_intel, kvm_amd, or another ``kvm_*`` such as kvm_pvm."""
    modules = sys_root / "module"
    for name in ("kvm_intel", "kvm_amd"):
        if (modules / name).is_dir():
            return read_module(sys_root, name)
    if modules.is_dir():
        for entry in sorted(modules.glob("kvm_*")):
            return read_module(sys_root, entry.name)
    return None
