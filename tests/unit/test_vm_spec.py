"""VMSpec validation and the command-line guest spec parser (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmple.errors import ConfigError, UsageError
from kvmple.vm.spec import (
    VMSpec,
    domain_name,
    expand_pins,
    format_cpulist,
    parse_cpulist,
    parse_spec_arg,
)


@dataclass(frozen=True)
class FakeImage:
    name: str = "img"
    qcow2: Path = Path("/nonexistent/disk.qcow2")
    kernel: Path = Path("/nonexistent/vmlinuz")
    initrd: Path = Path("/nonexistent/initrd.img")
    cmdline: str = "root=/dev/vda console=ttyS0"
    ssh_user: str = "root"
    host_keys: tuple[str, ...] = ()


def make_spec(**overrides: object) -> VMSpec:
    fields: dict[str, object] = {
        "role": "amqp",
        "image": FakeImage(),
        "vcpus": 2,
        "memory_mib": 1024,
        "vcpu_pins": ((0,), (1,)),
        "emulator_pins": (0, 1),
        "accelerator": "tcg",
        "extra_kernel_args": (),
        "campaign_id": "c1",
    }
    fields.update(overrides)
    return VMSpec(**fields)  # type: ignore[arg-type]


def test_domain_name_carries_prefix_campaign_and_role() -> None:
    assert make_spec().domain_name == "kvmple-c1-amqp" == domain_name("c1", "amqp")


def test_kernel_cmdline_appends_extra_args() -> None:
    spec = make_spec(extra_kernel_args=("nosmt", "mitigations=off"))
    assert spec.kernel_cmdline == "root=/dev/vda console=ttyS0 nosmt mitigations=off"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"role": "Bad Role"}, "role 'Bad Role'"),
        ({"campaign_id": "../x"}, "campaign id"),
        ({"vcpus": 0}, "vcpus must be >= 1"),
        ({"memory_mib": 64}, "memory_mib"),
        ({"accelerator": "hvf"}, "accelerator"),
        ({"extra_kernel_args": ("a b",)}, "has spaces"),
    ],
)
def test_invalid_specs_are_refused(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        make_spec(**overrides)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", (0,)), ("0-3", (0, 1, 2, 3)), ("3,1,1", (1, 3)), ("0-1, 4 ,6-7", (0, 1, 4, 6, 7))],
)
def test_parse_cpulist(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-1", "1;2"])
def test_parse_cpulist_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpulist(text)


def test_format_cpulist_compresses_runs() -> None:
    assert format_cpulist([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"


def test_expand_pins() -> None:
    assert expand_pins([(0, 1)], 3) == ((0, 1), (0, 1), (0, 1))
    assert expand_pins([(0,), (1,)], 2) == ((0,), (1,))


def test_parse_spec_arg_full() -> None:
    parsed = parse_spec_arg(
        "a=debian12-amqp,vcpus=4,mem=2048,pins=0/1/2-3/3,emulator=0,append=x+y=1"
    )
    assert parsed.role == "a"
    assert parsed.image == "debian12-amqp"
    assert parsed.vcpus == 4
    assert parsed.memory_mib == 2048
    assert parsed.vcpu_pins == ((0,), (1,), (2, 3), (3,))
    assert parsed.emulator_pins == (0,)
    assert parsed.extra_kernel_args == ("x", "y=1")


def test_parse_spec_arg_defaults() -> None:
    parsed = parse_spec_arg("b=guest-images/x.yaml")
    assert (parsed.vcpus, parsed.memory_mib, parsed.vcpu_pins, parsed.emulator_pins) == (
        2,
        1024,
        None,
        None,
    )


@pytest.mark.parametrize(
    "text", ["noequals", "a=", "a=img,cpus=2", "a=img,vcpus=two", "a=img,pins=0/x", "a=img,vcpus"]
)
def test_parse_spec_arg_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_spec_arg(text)
