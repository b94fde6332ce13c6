"""Group runs into matrix cells, and refuse to pool runs that are not comparable.

Runs are pooled into a cell only if their provenance agrees on the identity fields
(``POOL_KEYS``: host, kernel, knob values, guest configuration, image, vCPU affinity). Inside
a cell every one of them must agree; across the cells of one campaign the host, kernel,
guest and image must agree too (knobs and affinity legitimately differ between cells),
except for fields that are themselves a matrix axis (a "kernel" axis varies by design).
Mixed runs raise ``MixedProvenance`` unless the caller explicitly allows pooling, in which
case the report carries a warning: never pooled silently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from kvmple.errors import StoreError
from kvmple.results.provenance import CAMPAIGN_KEYS, POOL_KEYS
from kvmple.results.records import CampaignMeta, CellValue, RunRecord, cell_label

# POOL_KEYS, CAMPAIGN_KEYS: derived from the fields kvmple.results.provenance marks

CellKey = tuple[tuple[str, CellValue], ...]


class MixedProvenance(StoreError):
    """Runs that differ in host, kernel, knobs or guest configuration would be pooled."""


@dataclass(frozen=True)
class Cell:
    """The runs of one matrix cell: ``values`` from ok runs, failures kept with reasons."""

    key: CellKey
    cell: dict[str, CellValue]
    values: tuple[float, ...]
    ok_runs: tuple[RunRecord, ...]
    failed_runs: tuple[RunRecord, ...]

    @property
    def label(self) -> str:
        return cell_label(self.cell)

    def failure_reasons(self) -> list[str]:
        return [f"{r.run_key}: {r.reason or 'no reason recorded'}" for r in self.failed_runs]


def cell_key(cell: dict[str, CellValue]) -> CellKey:
    return tuple(sorted(cell.items()))


def _ordered(cell: dict[str, CellValue], axes: Sequence[str]) -> dict[str, CellValue]:
    """The cell with its axes in playbook order (then any others, sorted)."""
    keys = [a for a in axes if a in cell] + sorted(k for k in cell if k not in axes)
    return {k: cell[k] for k in keys}


def _sort_value(value: CellValue, axis_values: list[CellValue]) -> tuple[int, str]:
    return (axis_values.index(value) if value in axis_values else len(axis_values), str(value))


def group_cells(meta: CampaignMeta, runs: Sequence[RunRecord]) -> list[Cell]:
    """Runs grouped by cell, cells in playbook axis order. An ok run without the primary
    metric counts as failed (with that reason): a number that is not there is not pooled."""
    metric = meta.primary_metric
    grouped: dict[CellKey, tuple[list[RunRecord], list[RunRecord]]] = {}
    cells: dict[CellKey, dict[str, CellValue]] = {}
    for run in runs:
        key = cell_key(run.cell)
        cells.setdefault(key, run.cell)
        ok, failed = grouped.setdefault(key, ([], []))
        if run.status == "ok" and metric in run.figures:
            ok.append(run)
        elif run.status == "ok":
            failed.append(run.model_copy(update={"reason": f"ok run without figure {metric!r}"}))
        else:
            failed.append(run)
    axes = list(meta.axes)

    def order(key: CellKey) -> tuple[tuple[int, str], ...]:
        cell = cells[key]
        ranks = [_sort_value(cell[a], list(meta.axes[a])) for a in axes if a in cell]
        ranks.append((0, str(key)))
        return tuple(ranks)

    result = []
    for key in sorted(grouped, key=order):
        ok, failed = grouped[key]
        result.append(
            Cell(
                key=key,
                cell=_ordered(cells[key], axes),
                values=tuple(float(r.figures[metric]) for r in ok),
                ok_runs=tuple(ok),
                failed_runs=tuple(failed),
            )
        )
    return result


def _fingerprint(run: RunRecord, keys: Sequence[str]) -> str:
    return json.dumps({k: run.provenance.get(k) for k in keys}, sort_keys=True, default=str)


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _differences(runs: Sequence[RunRecord], keys: Sequence[str]) -> list[str]:
    found = []
    for key in keys:
        seen: dict[str, str] = {}
        for run in runs:
            seen.setdefault(_short(run.provenance.get(key)), run.run_key)
        if len(seen) > 1:
            variants = " vs ".join(f"{v} (run {k})" for v, k in list(seen.items())[:2])
            found.append(f"{key}: {variants}")
    return found


def check_pooling(meta: CampaignMeta, cells: Sequence[Cell], *, allow_mixed: bool) -> list[str]:
    """Refuse (or, with ``allow_mixed``, warn about) runs whose provenance differs.

    Returns the warnings to print with the report (empty when everything is comparable).
    """
    problems: list[str] = []
    for cell in cells:
        if len({_fingerprint(r, POOL_KEYS) for r in cell.ok_runs}) > 1:
            diff = "; ".join(_differences(cell.ok_runs, POOL_KEYS))
            problems.append(f"cell {cell.label} mixes runs with different {diff}")
    campaign_keys = [k for k in CAMPAIGN_KEYS if k not in meta.axes]
    every = [r for c in cells for r in c.ok_runs]
    if not problems and len({_fingerprint(r, campaign_keys) for r in every}) > 1:
        diff = "; ".join(_differences(every, campaign_keys))
        problems.append(f"campaign {meta.id} mixes cells run with different {diff}")
    if problems and not allow_mixed:
        raise MixedProvenance(
            problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            hint="such runs are not comparable; split them into separate campaigns and use "
            "'kvmple compare', or pass --pool-anyway to pool them with a warning",
        )
    return [f"POOLED DESPITE DIFFERENT PROVENANCE: {p}" for p in problems]
