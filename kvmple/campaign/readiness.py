"""What a campaign guest must reach before it counts as ready (and is saved as a snapshot).

A guest that runs a workload is ready once that workload's ``prepare`` has run in it: the
guest programs are shipped and, for amqp-perftest, the broker completed a real AMQP round
trip. A booted snapshot (kvmple.vm.snapshot) then holds a guest in exactly that state, and
its key carries the workload, its fixed params and the guest programs' digests, so a change
to any of them boots (and saves) afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kvmple.image.guestfiles import shipped
from kvmple.vm.snapshot import Readiness
from kvmple.workloads import PROGRAMS, ensure_programs, get_workload

if TYPE_CHECKING:
    from kvmple.campaign.specs import WorkloadSpec
    from kvmple.remote import SSHExecutor


def level_of(workload_name: str) -> str:
    """ "ssh+broker" for the AMQP workloads, "ssh+<name>" for others."""
    return "ssh+broker" if workload_name.startswith("amqp") else f"ssh+{workload_name}"


def readiness_for(
    workloads: Mapping[str, WorkloadSpec], *, prepare_timeout: float
) -> dict[str, Readiness]:
    """Per role, the readiness its workload asks (roles without one: SSH only)."""
    # the content of every file ensure_programs ships (the kvmple_guest package included)
    programs = {
        f.relative: hashlib.sha256(f.source.read_bytes()).hexdigest() for f in shipped(PROGRAMS)
    }
    result: dict[str, Readiness] = {}
    for role, spec in workloads.items():
        workload = get_workload(spec.name)
        params: dict[str, Any] = dict(spec.params)
        version = json.dumps(
            {"workload": spec.name, "params": params, "programs": programs}, sort_keys=True
        )

        def check(
            executor: SSHExecutor, _timeout: float, workload: Any = workload, params: Any = params
        ) -> None:
            ensure_programs(executor)
            workload.prepare(executor, timeout=prepare_timeout, params=params)

        result[role] = Readiness(
            level=level_of(spec.name),
            version=hashlib.sha256(version.encode()).hexdigest()[:16],
            check=check,
            label=f"preparing {spec.name}",
        )
    return result
