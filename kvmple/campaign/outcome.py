"""``kvmple run --json``: the campaign's outcome as one versioned JSON object for other
programs (fleet, CI scripts), so none has to read the human summary line. The document is
described key by key in docs/run-json.md; keys are only added within a schema version."""

from __future__ import annotations

from pathlib import Path

from kvmple import __version__
from kvmple.campaign.model import CampaignOutcome
from kvmple.config.jsonfile import JsonRecord
from kvmple.results.db import redact


class RunOutcome(JsonRecord):
    """What ``kvmple run`` (or ``--resume``) did. Counts are runs (one workload execution
    at one matrix point) unless named otherwise; seconds are host wall-clock seconds."""

    SCHEMA_VERSION = 1

    kvmple_version: str
    campaign_id: str
    planned: int  # runs in the plan (all of them, also those stored before a resume)
    ok: int  # runs stored ok by this invocation
    failed: int  # failed attempts by this invocation (a retried run counts once per attempt)
    skipped_adaptive: int  # runs left out because their cell was already precise enough
    resumed_from: int  # runs already stored before this invocation (--resume)
    boots: int  # guest boots (one per block)
    wall_seconds: float  # the whole invocation
    measure_seconds: float  # inside the timed windows only
    boot_seconds: float  # booting guests and preparing workloads, summed over blocks
    overhead_ratio: float | None  # wall / measure; None when nothing was measured
    log: Path | None  # the campaign log
    store: str | None  # the results store URL, password redacted; None: the default SQLite

    @classmethod
    def from_outcome(cls, outcome: CampaignOutcome) -> RunOutcome:
        measured = outcome.measure_seconds
        return cls(
            schema_version=cls.SCHEMA_VERSION,
            kvmple_version=__version__,
            campaign_id=outcome.campaign_id,
            planned=outcome.planned,
            ok=outcome.ok,
            failed=outcome.failed,
            skipped_adaptive=outcome.skipped_adaptive,
            resumed_from=outcome.resumed_from,
            boots=outcome.boots,
            wall_seconds=round(outcome.wall_seconds, 3),
            measure_seconds=round(measured, 3),
            boot_seconds=round(outcome.boot_seconds, 3),
            overhead_ratio=round(outcome.wall_seconds / measured, 3) if measured else None,
            log=outcome.log_path,
            store=redact(outcome.db_url) if outcome.db_url else None,
        )
