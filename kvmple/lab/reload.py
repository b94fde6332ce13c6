"""A KVM module reload with read-back, on a lab host, through the PLE switch's own path.

``kvmple ple on|off`` changes PLE by reloading kvm_intel/kvm_amd: ``ple.check_can_reload``
(root, not built in, no VM running, refcnt 0), ``seam.loader.reload`` (``modprobe -r`` +
``modprobe MODULE k=v``), then a read-back from /sys/module/MODULE/parameters. On an
``amd`` lab host PLE itself is absent (TCG has no pause filter), so this drives the same
chain with a parameter TCG's SVM honours: ``nested`` (kvm_amd reads it back as given; 1 is
the default) -- and puts the previous values back afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kvmple.errors import HostError, UsageError
from kvmple.host import ple
from kvmple.host.kvmmodule import KvmModule, find_kvm_module
from kvmple.host.seam import HostSeam


@dataclass(frozen=True)
class Reload:
    """One reload: ``before``/``asked``/``after`` are parameter values as sysfs shows them."""

    module: str
    before: dict[str, str]
    asked: dict[str, int]
    after: dict[str, str]

    def to_json(self) -> dict[str, object]:
        return {
            "module": self.module,
            "before": self.before,
            "asked": self.asked,
            "after": self.after,
        }


def kvm_vendor_module(seam: HostSeam) -> KvmModule:
    """kvm_amd or kvm_intel; HostError when neither is loaded."""
    module = find_kvm_module(seam.sys_root)
    if module is None or module.ple_spec is None:
        found = module.name if module is not None else "none"
        raise HostError(
            f"no kvm_amd/kvm_intel module loaded (found: {found}); nothing changed",
            hint="on a lab host: 'modprobe kvm_amd'; run 'kvmple doctor'",
        )
    return module


def reload_with(seam: HostSeam, values: Mapping[str, int]) -> Reload:
    """Reload the KVM vendor module with ``values`` and read them back.

    HostError (nothing changed) when a VM runs or the module cannot be reloaded; HostError
    when sysfs reads back something else than asked (the module stays loaded).
    """
    module = kvm_vendor_module(seam)
    unknown = sorted(name for name in values if module.parameter(name) is None)
    if unknown:
        raise UsageError(
            f"{module.name} has no parameter {', '.join(unknown)}",
            hint="its parameters: " + ", ".join(name for name, _ in module.parameters),
        )
    before = {name: str(module.parameter(name)) for name in values}
    ple.check_can_reload(seam, module)
    seam.loader.reload(module.name, dict(values))
    reloaded = kvm_vendor_module(seam)
    after = {name: str(reloaded.parameter(name)) for name in values}
    differ = [f"{n} asked {v} read {after[n]}" for n, v in values.items() if after[n] != str(v)]
    if differ:
        raise HostError(
            f"{module.name} reloaded but reads back differently: {'; '.join(differ)}",
            hint="the kernel ignored or clamped the values (check dmesg)",
        )
    return Reload(module.name, before, dict(values), after)
