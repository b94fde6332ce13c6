"""Campaign A (baseline) vs campaign B (candidate), cell by cell: e.g. the host kernel
without and with the patch series. Each shared cell gets a ratio with a bootstrap CI, both
tests, the effect size and a verdict; the whole comparison gets an outcome and exit code:

    0   no cell regressed and every cell was decided (EXIT_OK)
    20  at least one cell regressed beyond the threshold (EXIT_REGRESSION)
    21  no regression shown, but some cell could not be decided: too few runs, a CI too
        wide to rule out a threshold-sized loss, or a cell missing on one side
        (EXIT_INCONCLUSIVE)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kvmple.errors import UsageError
from kvmple.results.analysis import higher_is_better
from kvmple.results.cells import Cell, check_pooling, group_cells
from kvmple.results.records import CampaignMeta, RunRecord
from kvmple.results.stats import RESAMPLES, Comparison, compare

EXIT_OK = 0
EXIT_REGRESSION = 20
EXIT_INCONCLUSIVE = 21

Outcome = Literal["ok", "regression", "inconclusive"]


@dataclass(frozen=True)
class CellComparison:
    label: str
    comparison: Comparison | None
    missing: str  # why there is no comparison ("" when there is one)

    @property
    def verdict(self) -> str:
        return self.comparison.verdict if self.comparison else "inconclusive"


@dataclass(frozen=True)
class CampaignComparison:
    baseline: CampaignMeta
    candidate: CampaignMeta
    threshold: float
    cells: tuple[CellComparison, ...]
    differences: tuple[str, ...]  # what differs between the two campaigns' hosts
    warnings: tuple[str, ...]

    @property
    def outcome(self) -> Outcome:
        verdicts = {c.verdict for c in self.cells}
        if "regressed" in verdicts:
            return "regression"
        if "inconclusive" in verdicts:
            return "inconclusive"
        return "ok"

    @property
    def exit_code(self) -> int:
        return {"ok": EXIT_OK, "regression": EXIT_REGRESSION, "inconclusive": EXIT_INCONCLUSIVE}[
            self.outcome
        ]


def host_differences(a: CampaignMeta, b: CampaignMeta) -> list[str]:
    """Host facts that differ between two campaigns (the thing under test, usually)."""
    diffs = []
    for key in sorted(set(a.host) | set(b.host)):
        va, vb = a.host.get(key), b.host.get(key)
        if va != vb:
            diffs.append(f"host.{key}: {va!s} -> {vb!s}")
    if a.playbook_hash != b.playbook_hash:
        diffs.append(f"playbook: {a.playbook_hash[:12]} -> {b.playbook_hash[:12]}")
    return diffs


def _cells(meta: CampaignMeta, runs: Sequence[RunRecord], allow_mixed: bool) -> list[Cell]:
    if not runs:
        raise UsageError(
            f"campaign {meta.id} has no runs to compare",
            hint="compare campaigns that stored runs ('kvmple results list' shows counts)",
        )
    cells = group_cells(meta, runs)
    return cells


def compare_campaigns(
    baseline: tuple[CampaignMeta, Sequence[RunRecord]],
    candidate: tuple[CampaignMeta, Sequence[RunRecord]],
    *,
    threshold: float = 0.02,
    allow_mixed: bool = False,
    resamples: int = RESAMPLES,
) -> CampaignComparison:
    """Compare two campaigns cell by cell. UsageError when they cannot be compared at all
    (same campaign, different metrics, no cell in common)."""
    (meta_a, runs_a), (meta_b, runs_b) = baseline, candidate
    if meta_a.id == meta_b.id:
        raise UsageError(
            f"campaign {meta_a.id} compared with itself",
            hint="pass the baseline campaign, then the candidate campaign",
        )
    if meta_a.primary_metric != meta_b.primary_metric:
        raise UsageError(
            f"campaigns measure different figures: {meta_a.id} {meta_a.primary_metric!r}, "
            f"{meta_b.id} {meta_b.primary_metric!r}",
            hint="compare campaigns of the same playbook shape",
        )
    cells_a, cells_b = _cells(meta_a, runs_a, allow_mixed), _cells(meta_b, runs_b, allow_mixed)
    warnings = check_pooling(meta_a, cells_a, allow_mixed=allow_mixed)
    warnings += check_pooling(meta_b, cells_b, allow_mixed=allow_mixed)
    by_key_b = {c.key: c for c in cells_b}
    common = [c for c in cells_a if c.key in by_key_b]
    if not common:
        raise UsageError(
            f"campaigns {meta_a.id} and {meta_b.id} have no cell in common "
            f"(e.g. {cells_a[0].label!r} vs {cells_b[0].label!r})",
            hint="compare campaigns run from the same playbook (same axes and values)",
        )
    hib = higher_is_better(meta_a)
    results = []
    keys_a = {c.key for c in cells_a}
    for cell_a in cells_a:
        cell_b = by_key_b.get(cell_a.key)
        if cell_b is None:
            results.append(CellComparison(cell_a.label, None, f"only in {meta_a.id}"))
            continue
        if not cell_a.values or not cell_b.values:
            empty = meta_a.id if not cell_a.values else meta_b.id
            results.append(CellComparison(cell_a.label, None, f"no successful run in {empty}"))
            continue
        comparison = compare(
            cell_a.values,
            cell_b.values,
            threshold=threshold,
            higher_is_better=hib,
            n_failed=(len(cell_a.failed_runs), len(cell_b.failed_runs)),
            resamples=resamples,
        )
        results.append(CellComparison(cell_a.label, comparison, ""))
    for cell_b in cells_b:
        if cell_b.key not in keys_a:
            results.append(CellComparison(cell_b.label, None, f"only in {meta_b.id}"))
    return CampaignComparison(
        baseline=meta_a,
        candidate=meta_b,
        threshold=threshold,
        cells=tuple(results),
        differences=tuple(host_differences(meta_a, meta_b)),
        warnings=tuple(warnings),
    )
