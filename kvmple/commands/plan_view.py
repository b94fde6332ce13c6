"""Human-readable description of a plan (what ``kvmple run --dry-run`` prints): rich
renderables, hence in commands/ (the only place that draws)."""

from __future__ import annotations

from collections import Counter

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kvmple.campaign.plan import Plan
from kvmple.campaign.playbook import Playbook


def _duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {sec:02d}s"


def describe_plan(playbook: Playbook, plan: Plan, show_runs: int = 12) -> RenderableType:
    """Guests, cells, blocks (knob changes and boots), the run order and the time estimate."""
    parts: list[RenderableType] = []
    head = Text.assemble(
        ("plan ", "bold"),
        (playbook.name, "bold cyan"),
        f": {len(plan.runs)} runs in {len(plan.cells)} cells x up to {playbook.repetitions} "
        f"repetitions, {len(plan.blocks)} guest boot(s), {plan.knob_changes} knob change(s), "
        f"seed {plan.seed}",
    )
    parts.append(head)
    if playbook.description:
        parts.append(Text(playbook.description, style="dim"))

    guests = Table(title="guests", title_justify="left", box=None, pad_edge=False)
    for column in ("role", "image", "vCPUs", "memory", "pinning (vCPU->host CPU)", "workload"):
        guests.add_column(column)
    for role, guest in playbook.guests.items():
        workload = playbook.workloads.get(role)
        pins = " ".join(f"{i}->{','.join(map(str, cpus))}" for i, cpus in enumerate(guest.pin))
        guests.add_row(
            role,
            guest.image,
            str(guest.vcpus),
            f"{guest.memory_mib} MiB",
            pins,
            f"{workload.name} ({workload.role})" if workload else "-",
        )
    parts.append(guests)

    cells = Table(title="cells", title_justify="left", box=None, pad_edge=False)
    keys = list(plan.cells[0].as_dict()) if plan.cells else []
    for key in (*keys, "overcommit", "runs"):
        cells.add_column(key, justify="right")
    runs_per_cell = Counter(run.cell.key for run in plan.runs)
    overcommit = {run.cell.key: run.overcommit for run in plan.runs}
    for cell in plan.cells:
        values = cell.as_dict()
        cells.add_row(
            *(str(values[k]) for k in keys),
            f"{overcommit[cell.key]:.2f}x",
            str(runs_per_cell[cell.key]),
        )
    parts.append(cells)

    blocks = Table(title="order", title_justify="left", box=None, pad_edge=False)
    for column in ("block", "host knobs", "boot guests", "runs", "first runs (seeded order)"):
        blocks.add_column(column)
    for index, block in enumerate(plan.blocks, 1):
        first = ", ".join(run.key for run in block.runs[:3])
        more = f", ... (+{len(block.runs) - 3})" if len(block.runs) > 3 else ""
        blocks.add_row(str(index), block.knob_key, "yes", str(len(block.runs)), first + more)
    parts.append(blocks)

    for knob, reason in plan.unavailable:
        parts.append(Text(f"factor {knob}: unavailable on this host ({reason})", style="yellow"))
    estimate = plan.estimate_seconds(
        playbook.estimate.boot_s, playbook.estimate.run_s, playbook.estimate.knob_s
    )
    parts.append(
        Text(
            f"estimated time: {_duration(estimate)} "
            f"({len(plan.blocks)} x {playbook.estimate.boot_s:g}s boot, "
            f"{len(plan.runs)} x {playbook.estimate.run_s:g}s per run, "
            f"{plan.knob_changes} x {playbook.estimate.knob_s:g}s knob change)"
        )
    )
    return Group(*parts)
