"""A run's provenance (kvmple.results.provenance.RunProvenance): where and how it ran,
stored with it (results pool runs whose provenance keys match; see kvmple.results.cells)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import JsonValue

from kvmple import __version__
from kvmple.campaign.model import HostFacts
from kvmple.campaign.plan import PlannedRun
from kvmple.campaign.playbook import Playbook
from kvmple.image.artifact import Image
from kvmple.results import CampaignMeta
from kvmple.results.provenance import (
    GuestProvenance,
    HostProvenance,
    ImageProvenance,
    KernelProvenance,
    KnobReadBack,
    RunProvenance,
)


@dataclass(frozen=True)
class BlockFacts:
    """What a block's guests and host knobs read back once booted, stored with each of its
    runs: ``knobs`` knob -> :data:`KnobReadBack` (in the block's knob order), ``affinity``
    guest role -> vCPU -> host CPUs, ``threads`` guest role -> vCPU -> thread id (None:
    not read back)."""

    knobs: dict[str, KnobReadBack]
    affinity: dict[str, dict[str, list[int]]]
    threads: dict[str, JsonValue]
    # guest role -> how it started (kvmple.vm.snapshot: restored from which key, or cold)
    boot: dict[str, JsonValue] | None = None


def guest_facts(host: HostFacts, playbook: Playbook) -> dict[str, GuestProvenance]:
    """Per guest role: image, vCPUs, memory (MiB), pinning, kernel arguments, accelerator."""
    return {
        role: GuestProvenance(
            image=g.image,
            vcpus=g.vcpus,
            memory_mib=g.memory_mib,
            pin=[list(p) for p in g.pin],
            emulator_pin=list(g.emulator_pin or sorted(g.host_cpus)),
            kernel_args=g.kernel_args,
            accelerator=host.accelerator,
        )
        for role, g in playbook.guests.items()
    }


def run_provenance(
    host: HostFacts,
    playbook: Playbook,
    meta: CampaignMeta,
    images: Mapping[str, Image],
    run: PlannedRun,
    *,
    block_facts: BlockFacts,
    block_index: int,
    position: int,
    attempt: int,
) -> RunProvenance:
    """The provenance of one attempt of ``run`` (block_facts: the knobs read back,
    the vCPU affinity and threads of the block's guests). pydantic's ValidationError when a
    fact has the wrong shape (a bug: nothing is stored)."""
    facts = host.facts
    return RunProvenance(
        host=HostProvenance(
            hostname=facts.get("hostname"),
            cpu_model=facts.get("cpu_model"),
            accelerator=facts.get("accelerator"),
            doctor_verdict=facts.get("doctor_verdict"),
            kvm_module=facts.get("kvm_module"),
        ),
        kernel=KernelProvenance(
            kernel_release=facts.get("kernel_release"), cmdline=facts.get("cmdline")
        ),
        knobs=block_facts.knobs,
        guest=guest_facts(host, playbook),
        image={
            role: ImageProvenance(
                name=img.name, key=img.key, kernel_release=img.manifest.kernel_release
            )
            for role, img in images.items()
        },
        affinity=block_facts.affinity,
        vcpu_threads=block_facts.threads,
        boot=block_facts.boot,
        kvmple_version=__version__,
        playbook_hash=meta.playbook_hash,
        seed=playbook.order.seed,
        block=block_index,
        position=position,
        attempt=attempt,
        params={
            role: {key: value for key, value in run.params_for(role).items()}
            for role in playbook.workloads
        },
        overcommit=run.overcommit,
    )
