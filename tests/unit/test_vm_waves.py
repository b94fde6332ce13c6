"""Which guests boot together: overcommitted guests boot one after another."""

from __future__ import annotations

from kvmple.vm.lifecycle import boot_waves
from tests.unit.test_vm_spec import make_spec


def _roles(waves: list[list[object]]) -> list[list[str]]:
    return [[spec.role for spec in wave] for wave in waves]  # type: ignore[attr-defined]


def test_guests_sharing_their_cpus_boot_one_after_another() -> None:
    # the RFC setup on 2 CPUs: two 2-vCPU guests pinned to host CPUs 0-1
    specs = [make_spec(role="amqp"), make_spec(role="spin")]
    assert _roles(boot_waves(specs)) == [["amqp"], ["spin"]]


def test_guests_on_separate_cpus_boot_in_parallel() -> None:
    specs = [
        make_spec(role="a", vcpu_pins=((0,), (1,))),
        make_spec(role="b", vcpu_pins=((2,), (3,))),
        make_spec(role="c", vcpus=1, vcpu_pins=((4, 5),)),
    ]
    assert _roles(boot_waves(specs)) == [["a", "b", "c"]]


def test_a_wave_closes_when_the_next_guest_would_overcommit_it() -> None:
    specs = [
        make_spec(role="a", vcpus=1, vcpu_pins=((0, 1),)),
        make_spec(role="b", vcpus=1, vcpu_pins=((0, 1),)),  # 2 vCPUs on 2 CPUs: fits
        make_spec(role="c", vcpus=1, vcpu_pins=((1,),)),  # a third vCPU on CPUs 0-1: next wave
        make_spec(role="d", vcpus=1, vcpu_pins=((2,),)),
    ]
    assert _roles(boot_waves(specs)) == [["a", "b"], ["c", "d"]]
