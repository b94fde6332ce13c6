"""Export campaigns (JSON: complete and re-importable; CSV: one row per run for
spreadsheets) and import JSON exports from other machines, merging without index files."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvmple.errors import UsageError
from kvmple.results.records import RECORD_VERSION, CampaignMeta, CellValue, RunRecord
from kvmple.results.store import Store

EXPORT_KIND: Literal["kvmple-results"] = "kvmple-results"


class ExportedCampaign(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    meta: CampaignMeta = Field(description="the campaign")
    runs: list[RunRecord] = Field(description="all its runs, failed ones included")


class ExportFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["kvmple-results"] = Field(description="marks a kvmple export")
    version: int = Field(description="record version of the export")
    campaigns: list[ExportedCampaign] = Field(description="exported campaigns")


def _selected(store: Store, refs: Sequence[str]) -> list[CampaignMeta]:
    return [store.resolve(r) for r in refs] if refs else store.campaigns()


def export_json(store: Store, refs: Sequence[str]) -> str:
    campaigns = [
        ExportedCampaign(meta=meta, runs=store.runs(meta.id)) for meta in _selected(store, refs)
    ]
    data = ExportFile(kind=EXPORT_KIND, version=RECORD_VERSION, campaigns=campaigns)
    return data.model_dump_json(indent=1) + "\n"


def export_csv(store: Store, refs: Sequence[str]) -> str:
    rows: list[dict[str, CellValue]] = []
    for meta in _selected(store, refs):
        for run in store.runs(meta.id):
            row: dict[str, CellValue] = {
                "campaign_id": run.campaign_id,
                "campaign_name": meta.name,
                "run_key": run.run_key,
                "run_index": run.run_index,
                "status": run.status,
                "reason": run.reason,
                "started": run.started,
                "ended": run.ended,
                "measure_seconds": run.measure_seconds,
            }
            row |= {f"cell.{k}": v for k, v in run.cell.items()}
            row |= {f"figures.{k}": v for k, v in run.figures.items()}
            rows.append(row)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def parse_export(text: str, source: str) -> ExportFile:
    """Validate an export file; UsageError naming the file and key on anything wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{source}:{exc.lineno}: not JSON: {exc.msg}",
            hint="import takes files written by 'kvmple results export --format json'",
        ) from exc
    if not isinstance(data, dict) or data.get("kind") != EXPORT_KIND:
        raise UsageError(
            f'{source}: not a kvmple results export (no "kind": "{EXPORT_KIND}")',
            hint="import takes files written by 'kvmple results export --format json'",
        )
    if isinstance(data.get("version"), int) and data["version"] > RECORD_VERSION:
        raise UsageError(
            f"{source}: export version {data['version']} is newer than this kvmple "
            f"({RECORD_VERSION})",
            hint="upgrade kvmple on this machine",
        )
    try:
        return ExportFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise UsageError(
            f"{source}: {key}: {first['msg']}", hint="the export file is damaged or hand-edited"
        ) from exc


def import_file(store: Store, path: Path) -> list[tuple[str, int, int]]:
    """Merge an export into the store: [(campaign id, runs added, identical runs skipped)].

    Every campaign is checked first, then each is merged in one transaction: a conflicting
    campaign (same id, another playbook) or run (same key, other content) stops the import
    before anything is written.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from exc
    export = parse_export(text, str(path))
    for c in export.campaigns:  # check every campaign before writing any
        store.plan_merge(c.meta, c.runs)
    return [(c.meta.id, *store.merge(c.meta, c.runs)) for c in export.campaigns]
