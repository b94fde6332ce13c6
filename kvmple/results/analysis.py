"""From a campaign's stored runs to everything a report shows: per-cell statistics, the
RFC-shaped tables (PLE gain, overcommit cost), the "vs RFC" lines, evidence and provenance
summaries, and warnings. Pure: the store is read by the caller."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import JsonValue

from kvmple.errors import StoreError
from kvmple.results.cells import Cell, check_pooling, group_cells
from kvmple.results.evidence import RunEvidence, ple_label_warning
from kvmple.results.records import CampaignMeta, CellValue, RunRecord
from kvmple.results.rfc import (
    PLE_ROWS,
    RfcKey,
    is_rfc_shaped,
    rfc_figures,
    rfc_key,
    same_overcommit,
)
from kvmple.results.stats import RESAMPLES, CellStats, Comparison, compare, describe

LOWER_IS_BETTER_HINTS = ("latency", "seconds", "_ms", "_us", "time", "duration")


def higher_is_better(meta: CampaignMeta) -> bool:
    """The metric's direction: notes['higher_is_better'] if given, else from its name."""
    given = meta.notes.get("higher_is_better")
    if isinstance(given, bool):
        return given
    name = meta.primary_metric.lower()
    return not any(hint in name for hint in LOWER_IS_BETTER_HINTS)


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    stats: CellStats | None  # None: no ok run in this cell
    evidence: dict[str, str]
    kvm: tuple[RunEvidence, ...] = ()  # the ok runs' KVM evidence (older records have none)

    @property
    def label(self) -> str:
        return self.cell.label


@dataclass(frozen=True)
class RfcTable:
    """One RFC-shaped table: a message size (and any extra axes), rows by PLE setting."""

    title: str
    size: CellValue
    columns: tuple[float, ...]  # overcommit factors
    spinners: tuple[CellValue | None, ...]  # the spinner count behind each column, if known
    rows: tuple[tuple[str, tuple[CellResult | None, ...]], ...]  # (off|on|unavailable, cells)
    gains: tuple[Comparison | None, ...]  # PLE on vs off per column (empty without both rows)
    costs: tuple[tuple[str, tuple[Comparison | None, ...]], ...]  # row -> vs first column


@dataclass(frozen=True)
class VsRfc:
    """One of our ratios next to the RFC's published one."""

    size: CellValue
    what: str
    ours: Comparison | None
    rfc: float
    note: str = ""

    @property
    def agrees(self) -> bool | None:
        """Whether the RFC's figure lies inside our ratio's CI (None: no CI)."""
        if self.ours is None or self.ours.ratio_ci_low is None or self.ours.ratio_ci_high is None:
            return None
        return self.ours.ratio_ci_low <= self.rfc <= self.ours.ratio_ci_high


@dataclass(frozen=True)
class CampaignAnalysis:
    meta: CampaignMeta
    higher_is_better: bool
    cells: tuple[CellResult, ...]
    tables: tuple[RfcTable, ...]
    vs_rfc: tuple[VsRfc, ...]
    warnings: tuple[str, ...]
    provenance: dict[str, str]
    ple_unavailable: str | None
    n_runs: int
    n_failed: int
    rfc_source: str = field(default="")
    threshold: float = 0.02

    @property
    def rfc_shaped(self) -> bool:
        return bool(self.tables)

    def comparisons(self) -> list[tuple[str, Comparison | None, str]]:
        """Every within-campaign comparison as (name, comparison, why-missing)."""
        found: list[tuple[str, Comparison | None, str]] = []
        for table in self.tables:
            gains: Sequence[Comparison | None] = table.gains or [None] * len(table.columns)
            missing = "no data" if table.gains else f"PLE unavailable: {self.ple_unavailable}"
            if not table.gains and not self.ple_unavailable:
                missing = "no PLE on/off pair in this campaign"
            for column, gain in zip(table.columns, gains, strict=True):
                found.append((f"{table.title}: PLE gain at {column:g}x", gain, missing))
            for row, costs in table.costs:
                for column, cost in zip(table.columns[1:], costs[1:], strict=True):
                    name = f"{table.title}: {_row_label(row)} cost {column:g}x vs "
                    found.append((name + f"{table.columns[0]:g}x", cost, "no data"))
        return found


def _row_label(row: str) -> str:
    return {"off": "no PLE", "on": "PLE", "unavailable": "PLE unavailable"}[row]


def _flatten(prefix: str, value: JsonValue, out: dict[str, list[JsonValue]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.setdefault(prefix, []).append(value)


def summarise_evidence(runs: Sequence[RunRecord]) -> dict[str, str]:
    """Evidence counters per cell: numbers as the mean per run, text as its distinct values."""
    seen: dict[str, list[JsonValue]] = {}
    for run in runs:
        _flatten("", run.evidence, seen)
    summary = {}
    for key, values in sorted(seen.items()):
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(values):
            mean = sum(numbers) / len(numbers)
            summary[key] = f"{mean:,.1f} per run (n={len(numbers)})"
        else:
            distinct = sorted({str(v) for v in values})
            summary[key] = "; ".join(distinct[:3]) + (" ..." if len(distinct) > 3 else "")
    return summary


def summarise_provenance(meta: CampaignMeta, runs: Sequence[RunRecord]) -> dict[str, str]:
    """Campaign host facts, then each run provenance key: its value if all runs agree."""
    summary = {f"host.{k}": json.dumps(v, default=str).strip('"') for k, v in meta.host.items()}
    keys = sorted({k for r in runs for k in r.provenance})
    for key in keys:
        values = {json.dumps(r.provenance.get(key), sort_keys=True, default=str) for r in runs}
        if len(values) == 1:
            text = next(iter(values))
            summary[key] = text if len(text) <= 200 else text[:197] + "..."
        else:
            summary[key] = f"{len(values)} distinct values across runs"
    return summary


def _ple_unavailable(meta: CampaignMeta, runs: Sequence[RunRecord]) -> str | None:
    if not any(str(r.cell.get("ple", "")).lower() == "unavailable" for r in runs):
        return None
    notes = meta.notes.get("unavailable")
    if isinstance(notes, dict) and notes.get("ple"):
        return str(notes["ple"])
    for run in runs:
        reason = run.evidence.get("unavailable") or run.provenance.get("ple_unavailable")
        if reason:
            return str(reason)
    return "no reason recorded"


def _compare(
    base: CellResult | None, cand: CellResult | None, hib: bool, threshold: float, resamples: int
) -> Comparison | None:
    if base is None or cand is None or base.stats is None or cand.stats is None:
        return None
    return compare(
        base.cell.values,
        cand.cell.values,
        threshold=threshold,
        higher_is_better=hib,
        resamples=resamples,
        described=(base.stats, cand.stats),
    )


def _tables(
    results: Sequence[CellResult], hib: bool, threshold: float, resamples: int
) -> list[RfcTable]:
    placed: dict[tuple[tuple[str, CellValue], ...], dict[tuple[str, float], CellResult]] = {}
    spinners: dict[tuple[tuple[str, CellValue], ...], dict[float, CellValue]] = {}
    for result in results:
        key: RfcKey = rfc_key(result.cell.cell)
        placed.setdefault(key.group, {})[(key.row, key.overcommit)] = result
        if "spinners" in result.cell.cell:
            spinners.setdefault(key.group, {})[key.overcommit] = result.cell.cell["spinners"]
    tables = []
    for group, where in placed.items():
        columns = tuple(sorted({oc for _, oc in where}))
        rows = tuple(
            (row, tuple(where.get((row, oc)) for oc in columns))
            for row in PLE_ROWS
            if any((row, oc) in where for oc in columns)
        )
        by_row = dict(rows)
        gains: tuple[Comparison | None, ...] = ()
        if "off" in by_row and "on" in by_row:
            gains = tuple(
                _compare(off, on, hib, threshold, resamples)
                for off, on in zip(by_row["off"], by_row["on"], strict=True)
            )
        # the first column is the reference (ratio 1 by definition): not computed
        costs = tuple(
            (
                row,
                (None, *(_compare(cells[0], c, hib, threshold, resamples) for c in cells[1:])),
            )
            for row, cells in rows
        )
        size = dict(group)["size"]
        extra = ", ".join(f"{k}={v}" for k, v in group if k != "size")
        title = f"size {size}" + (f" ({extra})" if extra else "")
        tables.append(
            RfcTable(
                title=title,
                size=size,
                columns=columns,
                spinners=tuple(spinners.get(group, {}).get(oc) for oc in columns),
                rows=rows,
                gains=gains,
                costs=costs,
            )
        )
    return tables


def _vs_rfc(tables: Sequence[RfcTable], ple_reason: str | None) -> list[VsRfc]:
    rfc = rfc_figures()
    lines: list[VsRfc] = []
    for table in tables:
        if not isinstance(table.size, int) or not any(r.size == table.size for r in rfc.results):
            continue
        size = table.size
        base = table.columns[0]
        if not same_overcommit(base, 1.0):
            continue
        for row, costs in table.costs:
            rfc_ple = row == "on"
            note = "no PLE here: compared with the RFC's no-PLE row" if row == "unavailable" else ""
            for column, cost in zip(table.columns[1:], costs[1:], strict=True):
                published = rfc.cost(size, rfc_ple, column)
                if published is not None:
                    what = f"{_row_label(row)}: throughput {column:g}x / 1x"
                    lines.append(VsRfc(size, what, cost, published, note))
        for i, column in enumerate(table.columns):
            published = rfc.gain(size, column)
            if published is None:
                continue
            gain = table.gains[i] if table.gains else None
            note = "" if table.gains else ("PLE unavailable here" if ple_reason else "no PLE row")
            lines.append(
                VsRfc(size, f"PLE gain at {column:g}x (PLE / no PLE)", gain, published, note)
            )
    return lines


def analyse(
    meta: CampaignMeta,
    runs: Sequence[RunRecord],
    *,
    allow_mixed: bool = False,
    threshold: float = 0.02,
    resamples: int = RESAMPLES,
) -> CampaignAnalysis:
    """Everything the reports show for one campaign. StoreError when there is nothing to
    report (no runs, or no successful run); MixedProvenance when runs are not comparable."""
    if not runs:
        raise StoreError(
            f"campaign {meta.id} has no runs stored yet",
            hint="wait for the campaign to store runs, or continue it with 'kvmple run --resume'",
        )
    cells = group_cells(meta, runs)
    if not any(c.values for c in cells):
        first = next((r for c in cells for r in c.failure_reasons()), "")
        raise StoreError(
            f"campaign {meta.id} has no successful runs ({len(runs)} failed; first: {first})",
            hint="see the failures with 'kvmple results export --format json " + meta.id + "'",
        )
    warnings = check_pooling(meta, cells, allow_mixed=allow_mixed)
    hib = higher_is_better(meta)
    results = tuple(
        CellResult(
            cell=c,
            stats=describe(c.values, n_failed=len(c.failed_runs), resamples=resamples)
            if c.values
            else None,
            evidence=summarise_evidence(c.ok_runs),
            kvm=tuple(r.kvm for r in c.ok_runs if r.kvm is not None),
        )
        for c in cells
    )
    for r in results:
        if r.stats is None:
            warnings.append(
                f"cell {r.label} has no successful run ({len(r.cell.failed_runs)} failed)"
            )
    for r in results:
        labelled = ple_label_warning(r.label, r.cell.cell.get("ple"), r.kvm)
        if labelled:
            warnings.append(labelled)
    ple_reason = _ple_unavailable(meta, runs)
    tables: list[RfcTable] = []
    vs: list[VsRfc] = []
    if is_rfc_shaped([c.cell for c in cells]):
        tables = _tables(results, hib, threshold, resamples)
        reference = meta.notes.get("reference")
        if hib and (
            reference == "rfc-v7-amqp"
            or (reference is None and meta.primary_metric in {"transfers_per_sec", "throughput"})
        ):
            vs = _vs_rfc(tables, ple_reason)
    return CampaignAnalysis(
        meta=meta,
        higher_is_better=hib,
        cells=results,
        tables=tuple(tables),
        vs_rfc=tuple(vs),
        warnings=tuple(warnings),
        provenance=summarise_provenance(meta, runs),
        ple_unavailable=ple_reason,
        n_runs=len(runs),
        n_failed=sum(len(c.failed_runs) for c in cells),
        rfc_source=rfc_figures().source if vs else "",
        threshold=threshold,
    )
