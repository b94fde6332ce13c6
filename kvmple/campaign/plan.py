"""Expand a playbook into an ordered plan of runs. Pure: no I/O, fully determined by the
playbook, its seed and which host factors are unavailable.

Ordering cuts overhead and bias (issue 6): runs are grouped by host-knob setting (one module
reload per group), guests boot once per block and are reused across its runs, runs inside a
block are shuffled with a recorded seed, and groups may be interleaved block by block (ABAB)
to cancel drift.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from fractions import Fraction

from kvmple.campaign.playbook import Playbook
from kvmple.campaign.specs import Scalar

UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: factor settings plus axis values, in playbook order."""

    values: tuple[tuple[str, Scalar], ...]

    @property
    def key(self) -> str:
        return ",".join(f"{name}={value}" for name, value in self.values)

    def as_dict(self) -> dict[str, Scalar]:
        return dict(self.values)


@dataclass(frozen=True)
class PlannedRun:
    cell: Cell
    repetition: int  # 0-based index of this run within its cell
    overcommit: float
    workload_params: tuple[tuple[str, tuple[tuple[str, Scalar], ...]], ...]

    @property
    def key(self) -> str:
        """Stable identity, unique within a campaign: resume skips runs whose key is stored."""
        return f"{self.cell.key}#{self.repetition}"

    def params_for(self, role: str) -> dict[str, Scalar]:
        return dict(dict(self.workload_params).get(role, ()))


@dataclass(frozen=True)
class Block:
    """Consecutive runs with one knob setting and one boot of the guests."""

    knobs: tuple[tuple[str, str], ...]
    runs: tuple[PlannedRun, ...]

    @property
    def knob_key(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.knobs) or "(no knobs)"


@dataclass(frozen=True)
class Plan:
    blocks: tuple[Block, ...]
    seed: int
    unavailable: tuple[tuple[str, str], ...]  # knob -> reason
    cells: tuple[Cell, ...]  # in matrix order (factors, then axes, as the playbook lists them)

    @property
    def runs(self) -> tuple[PlannedRun, ...]:
        return tuple(run for block in self.blocks for run in block.runs)

    @property
    def knob_changes(self) -> int:
        changes, current = 0, None
        for block in self.blocks:
            if block.knobs and block.knobs != current:
                changes += 1
            current = block.knobs
        return changes

    def estimate_seconds(self, boot_s: float, run_s: float, knob_s: float) -> float:
        return len(self.blocks) * boot_s + self.knob_changes * knob_s + len(self.runs) * run_s


def busy_vcpus(playbook: Playbook, role: str, params: dict[str, Scalar]) -> int:
    """vCPUs the workload of ``role`` keeps busy with these parameters."""
    guest = playbook.guests[role]
    workload = playbook.workloads.get(role)
    if workload is None:
        return 0
    rule = workload.busy_vcpus
    if rule is None:
        rule = "count" if workload.name == "spin" else "all"
    if rule == "all":
        return guest.vcpus
    if isinstance(rule, int):
        return min(rule, guest.vcpus)
    value = params.get(rule)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return min(int(value), guest.vcpus)


def overcommit(playbook: Playbook, params: dict[str, dict[str, Scalar]]) -> float:
    """(busy vCPUs pinned onto the measured guest's host CPUs) / (those host CPUs)."""
    shared = playbook.guests[playbook.measured_role].host_cpus
    busy = 0
    for role, guest in playbook.guests.items():
        if not guest.host_cpus & shared:
            continue
        count = busy_vcpus(playbook, role, params.get(role, {}))
        # only vCPUs pinned onto the shared CPUs add to their load
        on_shared = sum(1 for cpus in guest.pin[:count] if set(cpus) & shared)
        busy += on_shared if count else 0
    return float(Fraction(busy, len(shared)))


def _workload_params(
    playbook: Playbook, axis_values: dict[str, Scalar]
) -> dict[str, dict[str, Scalar]]:
    params = {role: dict(w.params) for role, w in playbook.workloads.items()}
    for name, axis in playbook.axes.items():
        params.setdefault(axis.guest, {})[axis.param] = axis_values[name]
    return params


def _chunks(total: int, parts: int) -> list[range]:
    parts = max(1, min(parts, total))
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def build_plan(playbook: Playbook, unavailable: dict[str, str] | None = None) -> Plan:
    """Expand ``playbook`` into blocks of runs.

    ``unavailable`` maps knobs the host cannot provide to the reason; such a factor collapses
    into one setting recorded as "unavailable" instead of being faked.
    """
    unavailable = unavailable or {}
    factor_settings: list[list[tuple[str, str]]] = []
    for factor in playbook.factors:
        if factor.knob in unavailable:
            factor_settings.append([(factor.knob, UNAVAILABLE)])
        else:
            factor_settings.append([(factor.knob, v) for v in factor.values])
    groups = [tuple(combo) for combo in itertools.product(*factor_settings)]

    axis_names = list(playbook.axes)
    axis_points = list(itertools.product(*(playbook.axes[n].values for n in axis_names)))
    reps = _chunks(playbook.repetitions, playbook.order.interleave)

    blocks: list[Block] = []
    cells: dict[str, Cell] = {}
    for block_index, rep_range in enumerate(reps):
        for group in groups:
            runs: list[PlannedRun] = []
            for point in axis_points:
                axis_values = dict(zip(axis_names, point, strict=True))
                params = _workload_params(playbook, axis_values)
                cell = Cell(values=(*group, *axis_values.items()))
                cells.setdefault(cell.key, cell)
                frozen_params = tuple(
                    (role, tuple(sorted(p.items()))) for role, p in sorted(params.items())
                )
                oc = overcommit(playbook, params)
                runs.extend(PlannedRun(cell, rep, oc, frozen_params) for rep in rep_range)
            if playbook.order.randomize:
                rng = random.Random(f"{playbook.order.seed}/{block_index}/{group}")
                rng.shuffle(runs)
            blocks.append(Block(knobs=group, runs=tuple(runs)))
    return Plan(
        blocks=tuple(blocks),
        seed=playbook.order.seed,
        unavailable=tuple(sorted(unavailable.items())),
        cells=tuple(cells.values()),
    )
