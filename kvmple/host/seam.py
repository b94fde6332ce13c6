"""The one injectable seam between kvmple's host logic and the machine: sysfs and procfs
roots, the module loader and the running-VM lister.

The real loader (``modprobe -r`` then ``modprobe MODULE k=v...``) is verified on two
emulated lab hosts, not on hardware: on an emulated AMD-V host (QEMU TCG, ``kvmple lab up
amd``: kvm_amd reloaded with ``nested=0/1``, read back, refused while a VM runs) and on a real
kvm_intel with PLE inside the Bochs lab host (``kvmple lab verify-ple``). Unit tests drive the
same logic with tests/fixtures/fake_host.py, whose loader rewrites a fake sysfs tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kvmple.errors import CommandError, HostError
from kvmple.host.vms import RunningVm, SystemVmLister
from kvmple.run import run

RELOAD_NOT_VERIFIED = (
    "reload path verified on an emulated VT-x CPU with PLE (Bochs) and on an emulated AMD-V "
    "host (QEMU TCG), not on hardware"
)


class ModuleLoader(Protocol):
    def reload(self, module: str, options: Mapping[str, int]) -> None:
        """Unload ``module`` and load it again with ``options``; raise HostError/CommandError."""


class VmLister(Protocol):
    def running(self) -> tuple[RunningVm, ...]:
        """Every VM running now (libvirt domains of the known URIs, /dev/kvm holders)."""


@dataclass(frozen=True)
class HostSeam:
    """Where host facts come from and how module parameters are changed."""

    sys_root: Path
    proc_root: Path
    loader: ModuleLoader
    vms: VmLister
    is_root: Callable[[], bool] = field(default=lambda: os.geteuid() == 0)

    def module_parameters_dir(self, module: str) -> Path:
        return self.sys_root / "module" / module / "parameters"


class ModprobeLoader:
    """Reload a module with ``modprobe`` (verified under Bochs: kvmple lab verify-ple)."""

    timeout = 120.0

    def reload(self, module: str, options: Mapping[str, int]) -> None:
        unload = run(["modprobe", "-r", module], timeout=self.timeout, check=False)
        if not unload.ok:
            detail = (unload.stderr or unload.stdout).strip().splitlines()
            reason = detail[-1] if detail else f"exit {unload.returncode}"
            if "in use" in reason:
                raise HostError(
                    f"module {module} is in use, nothing changed: {reason}",
                    hint="stop every VM and process using KVM, then try again",
                )
            raise HostError(
                f"cannot unload {module}, nothing changed: {reason}",
                hint="is it built into the kernel? then PLE knobs cannot be changed at run time",
            )
        argv = ["modprobe", module, *(f"{k}={v}" for k, v in options.items())]
        loaded = run(argv, timeout=self.timeout, check=False)
        if loaded.ok:
            return
        # The module is out: put it back with its defaults so KVM keeps working.
        back = run(["modprobe", module], timeout=self.timeout, check=False)
        state = "reloaded with its defaults" if back.ok else "NOT loaded now"
        raise CommandError(
            f"loading {module} with the new options failed ({state}): {loaded.command} -- "
            f"{loaded.stderr.strip()}",
            hint="check 'dmesg'; 'kvmple ple restore' puts the saved originals back",
        )


def real_seam() -> HostSeam:
    """The seam of the machine kvmple runs on."""
    proc = Path("/proc")
    return HostSeam(
        sys_root=Path("/sys"), proc_root=proc, loader=ModprobeLoader(), vms=SystemVmLister(proc)
    )
