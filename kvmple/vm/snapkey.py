"""The key of a booted snapshot: everything that shapes the state of a ready guest.

Two guests whose fields here are equal may be restored from one saved guest
(kvmple.vm.snapshot); anything else boots cold. Pins are left out on purpose: a restore
applies the playbook's own, and the vCPU threads are pinned by libvirt, not by the guest.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmple.vm.domxml import domain_xml

if TYPE_CHECKING:
    from kvmple.vm.spec import VMSpec


def key_fields(
    spec: VMSpec, level: str, level_version: str, versions: Mapping[str, int]
) -> dict[str, Any]:
    """Everything that shapes the state of ``spec``'s guest once ready (the snapshot key).

    The domain XML is hashed with this guest's name, paths, port and pins neutralised: it
    covers kernel, initrd, cmdline (services masked/enabled by kernel args), vCPUs, memory,
    CPU model and devices. Pins are not in the key: a restore applies the playbook's own.
    """
    image = spec.image
    image_key = getattr(image, "key", None) or _file_identity(Path(image.qcow2))
    neutral = replace(
        spec,
        campaign_id="snapshot",
        role="guest",
        vcpu_pins=tuple((0,) for _ in range(spec.vcpus)),
        emulator_pins=(0,),
    )
    shape = domain_xml(neutral, overlay=Path("/o"), console_log=Path("/c"), ssh_port=1)
    return {
        "image": image.name,
        "image_key": image_key,
        "kernel": _file_identity(Path(image.kernel)),
        "initrd": _file_identity(Path(image.initrd)),
        "cmdline": spec.kernel_cmdline,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "accelerator": spec.accelerator,
        "host_cpu": _host_cpu_model() if spec.accelerator == "kvm" else "qemu64 (TCG)",
        "qemu": versions.get("qemu"),
        "libvirt": versions.get("libvirt"),
        "domain_xml_sha256": hashlib.sha256(shape.encode()).hexdigest(),
        "readiness": level,
        "readiness_version": level_version,
    }


def _file_identity(path: Path) -> str:
    try:
        st = path.resolve().stat()
    except OSError:
        return f"{path}:missing"
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _host_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
