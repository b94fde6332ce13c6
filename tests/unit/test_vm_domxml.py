"""Domain XML: the right content, and valid for libvirt's own schema (virt-xml-validate)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmple.run import run
from kvmple.vm.domxml import QEMU_NS, domain_xml
from tests.support import need_program
from tests.unit.test_vm_spec import FakeImage, make_spec

OVERLAY = Path("/var/lib/kvmple/guests/kvmple-c1-amqp/overlay.qcow2")
CONSOLE = Path("/var/lib/kvmple/guests/kvmple-c1-amqp/console.log")


def render(**overrides: object) -> ET.Element:
    xml = domain_xml(make_spec(**overrides), overlay=OVERLAY, console_log=CONSOLE, ssh_port=40022)
    return ET.fromstring(xml)


def validate(xml: str, tmp_path: Path) -> None:
    need_program("virt-xml-validate")
    need_program("xmllint")
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    result = run(["virt-xml-validate", str(path), "domain"], timeout=60, check=False)
    assert result.ok, result.stdout + result.stderr


@pytest.mark.parametrize("accelerator", ["tcg", "kvm"])
def test_validates_against_libvirt_schema(accelerator: str, tmp_path: Path) -> None:
    spec = make_spec(
        accelerator=accelerator,
        vcpus=4,
        vcpu_pins=((0,), (1,), (2, 3), (0, 1, 2, 3)),
        extra_kernel_args=("quiet", "x=<&>"),
    )
    validate(domain_xml(spec, overlay=OVERLAY, console_log=CONSOLE, ssh_port=2222), tmp_path)


def test_schema_validation_can_fail(tmp_path: Path) -> None:
    """The validation step is not a rubber stamp: a broken document is refused."""
    need_program("virt-xml-validate")
    broken = domain_xml(make_spec(), overlay=OVERLAY, console_log=CONSOLE, ssh_port=2222)
    broken = broken.replace("<vcpu ", "<vcpux ").replace("</vcpu>", "</vcpux>")
    path = tmp_path / "broken.xml"
    path.write_text(broken)
    assert not run(["virt-xml-validate", str(path), "domain"], timeout=60, check=False).ok


def test_domain_type_follows_accelerator() -> None:
    assert render(accelerator="tcg").get("type") == "qemu"
    assert render(accelerator="kvm").get("type") == "kvm"
    assert render(accelerator="kvm").find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert render(accelerator="tcg").find("cpu").get("mode") is None  # type: ignore[union-attr]


def test_pins_and_topology() -> None:
    dom = render(vcpus=3, vcpu_pins=((0,), (1,), (0, 1)), emulator_pins=(1,))
    pins = {p.get("vcpu"): p.get("cpuset") for p in dom.iter("vcpupin")}
    assert pins == {"0": "0", "1": "1", "2": "0-1"}
    assert dom.find("cputune/emulatorpin").get("cpuset") == "1"  # type: ignore[union-attr]
    assert dom.findtext("vcpu") == "3"
    assert dom.find("cpu/topology").get("cores") == "3"  # type: ignore[union-attr]


def test_direct_kernel_boot_overlay_console_no_balloon() -> None:
    dom = render(extra_kernel_args=("nosmt",))
    image = FakeImage()
    assert dom.findtext("name") == "kvmple-c1-amqp"
    assert dom.findtext("os/kernel") == str(image.kernel)
    assert dom.findtext("os/initrd") == str(image.initrd)
    assert dom.findtext("os/cmdline") == f"{image.cmdline} nosmt"
    disk = dom.find("devices/disk")
    assert disk is not None
    assert disk.find("source").get("file") == str(OVERLAY)  # type: ignore[union-attr]
    assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    assert str(image.qcow2) not in ET.tostring(dom, encoding="unicode")  # never the base image
    assert dom.find("devices/serial/source").get("path") == str(CONSOLE)  # type: ignore[union-attr]
    assert dom.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    assert dom.findtext("memory") == "1024"


def test_ssh_forward_is_loopback_only() -> None:
    dom = render()
    args = [a.get("value") for a in dom.iter(f"{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev == "user,id=kvmplenet0,hostfwd=tcp:127.0.0.1:40022-:22"
    assert args[args.index("-device") + 1].startswith("virtio-net-pci,netdev=kvmplenet0")


def test_special_characters_are_escaped() -> None:
    dom = render(extra_kernel_args=("a=<b>&'\"",))
    assert dom.findtext("os/cmdline", "").endswith("a=<b>&'\"")


def test_pin_count_mismatch_is_an_error() -> None:
    spec = make_spec(vcpus=2, vcpu_pins=((0,),))
    with pytest.raises(ValueError, match="2 vCPUs but 1 pin sets"):
        domain_xml(spec, overlay=OVERLAY, console_log=CONSOLE, ssh_port=2222)


def test_bad_port() -> None:
    with pytest.raises(ValueError):
        domain_xml(make_spec(), overlay=OVERLAY, console_log=CONSOLE, ssh_port=0)


def test_named_cpu_model_requires_its_features(tmp_path: Path) -> None:
    """A lab host: TCG with qemu64 + emulated AMD-V; libvirt must not compare with the host."""
    spec = make_spec(accelerator="tcg", cpu_model="qemu64", cpu_features=("svm", "npt"))
    xml = domain_xml(spec, overlay=OVERLAY, console_log=CONSOLE, ssh_port=2222)
    validate(xml, tmp_path)
    cpu = ET.fromstring(xml).find("cpu")
    assert cpu is not None
    assert (cpu.get("mode"), cpu.get("match"), cpu.get("check")) == ("custom", "exact", "none")
    assert cpu.findtext("model") == "qemu64"
    assert [(f.get("policy"), f.get("name")) for f in cpu.findall("feature")] == [
        ("require", "svm"),
        ("require", "npt"),
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"cpu_features": ("svm",)},
        {"cpu_model": "qemu64;rm"},
        {"cpu_model": "qemu64", "cpu_features": ("s v m",)},
    ],
)
def test_bad_cpu_model_or_features_refused(overrides: dict[str, object]) -> None:
    from kvmple.errors import ConfigError

    with pytest.raises(ConfigError):
        make_spec(**overrides)


def test_a_measured_guest_is_destroyed_on_reboot() -> None:
    assert render().findtext("on_reboot") == "destroy"
