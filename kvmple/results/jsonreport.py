"""Reports as JSON for scripts: the same figures as the tables, machine-readable, with no
NaN anywhere (missing quantities are null)."""

from __future__ import annotations

import json
from dataclasses import asdict

from kvmple.results.analysis import CampaignAnalysis
from kvmple.results.compare import CampaignComparison
from kvmple.results.evidence import summarise_confounders, summarise_exits, summarise_yield
from kvmple.results.records import RECORD_VERSION
from kvmple.results.stats import CellStats, Comparison, runs_needed


def _stats(s: CellStats | None) -> dict[str, object] | None:
    if s is None:
        return None
    data = asdict(s)
    data["halfwidth_pct"] = s.halfwidth_pct
    return data


def _runs_needed(s: CellStats | None, change: float) -> int | None:
    return None if s is None or s.cv is None else runs_needed(s.cv, change, n_limit=10_000)


def _comparison(c: Comparison | None) -> dict[str, object] | None:
    if c is None:
        return None
    return {
        "ratio": c.ratio,
        "ratio_ci": [c.ratio_ci_low, c.ratio_ci_high],
        "change_pct": c.change_pct,
        "mannwhitney_p": c.mannwhitney_p,
        "welch_p": c.welch_p,
        "cohens_d": c.cohens_d,
        "threshold": c.threshold,
        "verdict": c.verdict,
        "why": c.why,
        "baseline": _stats(c.baseline),
        "candidate": _stats(c.candidate),
    }


def analysis_dict(a: CampaignAnalysis) -> dict[str, object]:
    return {
        "kind": "kvmple-report",
        "version": RECORD_VERSION,
        "campaign": a.meta.model_dump(exclude={"playbook_text"}),
        "higher_is_better": a.higher_is_better,
        "threshold": a.threshold,
        "runs": a.n_runs,
        "failed": a.n_failed,
        "warnings": list(a.warnings),
        "ple_unavailable": a.ple_unavailable,
        "cells": [
            {
                "cell": r.cell.cell,
                "stats": _stats(r.stats),
                "runs_per_side_to_detect_threshold": _runs_needed(r.stats, a.threshold),
                "failures": r.cell.failure_reasons(),
                "evidence": r.evidence,
                "kvm_evidence": {
                    "runs": len(r.kvm),
                    "exits": summarise_exits(r.kvm),
                    "directed_yield": summarise_yield(r.kvm),
                    "confounders": summarise_confounders(r.kvm),
                },
            }
            for r in a.cells
        ],
        "comparisons": [
            {"name": name, "comparison": _comparison(c), "missing": None if c else why}
            for name, c, why in a.comparisons()
        ],
        "vs_rfc": [
            {
                "size": v.size,
                "ratio": v.what,
                "ours": _comparison(v.ours),
                "rfc": v.rfc,
                "rfc_in_our_ci": v.agrees,
                "note": v.note,
            }
            for v in a.vs_rfc
        ],
        "rfc_source": a.rfc_source or None,
        "provenance": a.provenance,
    }


def comparison_dict(cc: CampaignComparison) -> dict[str, object]:
    return {
        "kind": "kvmple-compare",
        "version": RECORD_VERSION,
        "baseline": cc.baseline.id,
        "candidate": cc.candidate.id,
        "threshold": cc.threshold,
        "outcome": cc.outcome,
        "exit_code": cc.exit_code,
        "differences": list(cc.differences),
        "warnings": list(cc.warnings),
        "cells": [
            {"cell": c.label, "comparison": _comparison(c.comparison), "missing": c.missing or None}
            for c in cc.cells
        ],
    }


def dumps(data: dict[str, object]) -> str:
    # allow_nan=False: a NaN that slipped through is a bug, never output
    return json.dumps(data, indent=2, allow_nan=False, default=str) + "\n"
