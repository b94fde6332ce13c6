"""VM spec -> libvirt domain XML (pure: no I/O, tested against libvirt's own schema).

Choices, and why:

- Domain type ``kvm`` when the host's doctor says KVM works, else ``qemu`` (TCG). QEMU 7.2
  runs x86_64 guests on x86_64 hosts with multi-threaded TCG by default (measured here: one
  "CPU n/TCG" thread per vCPU; ``thread=single`` shows one "ALL CPUs/TCG" thread), and
  libvirt 9.0 has no XML for the TCG thread mode, so nothing is forced here; instead the
  lifecycle reads the vCPU threads back after start and fails if they are not one per vCPU.
- SSH forward: QEMU user-mode networking (slirp) with ``hostfwd=tcp:127.0.0.1:PORT-:22``
  through ``<qemu:commandline>``. libvirt 9.0's own ``<interface type='user'>`` accepts
  ``<portForward>`` only with the new passt backend (an extra package and an extra process
  per guest); slirp lives inside the QEMU process, so the forward dies with the guest and
  nothing can be left behind. The bind address is 127.0.0.1 only.
- QEMU runs as root for these domains with ``relabel='no'`` (static DAC label): the shared,
  read-only base image and the user's cache under /root are then never chowned by libvirt,
  and overlays under the (0700) state directory stay reachable.
- ``<genid/>``: so guests restored from one booted snapshot do not share RNG state.
- No balloon, serial console to a file, virtio disk (a per-VM qcow2 overlay) and virtio NIC.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from kvmple.qemu import netdev_args
from kvmple.vm.spec import VMSpec, format_cpulist

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
KVMPLE_NS = "https://kvmple.invalid/schemas/domain/1"

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("kvmple", KVMPLE_NS)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _cpu(domain: ET.Element, spec: VMSpec) -> None:
    """KVM: the host's CPU model (PLE experiments want the real thing); TCG: QEMU's default;
    a named model (a lab host's emulated AMD-V) with its features required, checked by QEMU
    alone (check='none': libvirt compares models with the host CPU, which under TCG is not
    what runs the guest)."""
    if spec.cpu_model is not None:
        cpu = _sub(domain, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", spec.cpu_model, fallback="forbid")
    else:
        attrs = {"mode": "host-passthrough", "check": "none"} if spec.accelerator == "kvm" else {}
        cpu = _sub(domain, "cpu", **attrs)
    _sub(cpu, "topology", sockets="1", dies="1", cores=str(spec.vcpus), threads="1")
    for feature in spec.cpu_features:
        _sub(cpu, "feature", policy="require", name=feature)


def domain_xml(spec: VMSpec, *, overlay: Path, console_log: Path, ssh_port: int) -> str:
    """Render ``spec`` as a libvirt domain definition.

    ``overlay`` is the per-VM qcow2 on top of the image, ``console_log`` receives the serial
    console, ``ssh_port`` is the 127.0.0.1 port forwarded to the guest's port 22.
    """
    if len(spec.vcpu_pins) != spec.vcpus:
        raise ValueError(
            f"{spec.domain_name}: {spec.vcpus} vCPUs but {len(spec.vcpu_pins)} pin sets"
        )
    domain = ET.Element("domain", {"type": "kvm" if spec.accelerator == "kvm" else "qemu"})
    _sub(domain, "name", spec.domain_name)
    # A VM generation ID: libvirt gives a restored domain a new one, and the guest kernel
    # (Linux >= 5.18 vmgenid driver) reseeds its RNG when it changes (kvmple.vm.snapshot).
    _sub(domain, "genid")
    _sub(domain, "title", f"kvmple {spec.campaign_id} {spec.role}")
    metadata = _sub(domain, "metadata")
    owner = ET.SubElement(metadata, f"{{{KVMPLE_NS}}}guest")
    owner.set("campaign", spec.campaign_id)
    owner.set("role", spec.role)
    owner.set("image", spec.image.name)
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus), placement="static")

    cputune = _sub(domain, "cputune")
    for index, pins in enumerate(spec.vcpu_pins):
        _sub(cputune, "vcpupin", vcpu=str(index), cpuset=format_cpulist(pins))
    if spec.emulator_pins:
        _sub(cputune, "emulatorpin", cpuset=format_cpulist(spec.emulator_pins))

    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", str(spec.image.kernel))
    _sub(os_el, "initrd", str(spec.image.initrd))
    _sub(os_el, "cmdline", spec.kernel_cmdline)

    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _cpu(domain, spec)

    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", spec.on_reboot)
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache="unsafe", discard="unmap")
    _sub(disk, "source", file=str(overlay))
    _sub(disk, "target", dev="vda", bus="virtio")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(console_log), append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="file")
    _sub(console, "source", path=str(console_log), append="off")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "memballoon", model="none")

    seclabel = _sub(domain, "seclabel", type="static", model="dac", relabel="no")
    _sub(seclabel, "label", "+0:+0")

    commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
    # the same user-mode NIC plain-QEMU guests get (kvmple.qemu), at a fixed PCI slot
    nic = netdev_args(ssh_port, netdev_id="kvmplenet0", device_extra="bus=pci.0,addr=0x1e")
    for arg in (*nic, *spec.qemu_args):
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": arg})

    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"
