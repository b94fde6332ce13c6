"""The night's verdict (pure): from the step that failed, or from the comparison with the
baseline. Each verdict has its exit code, so timers, cron and CI can act on it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvmple.results.compare import EXIT_INCONCLUSIVE, EXIT_OK, EXIT_REGRESSION

FAILED_STEP_VERDICT = {
    "fetch": "fetch failed",
    "apply": "apply failed",
    "build": "build failed",
    "boot-test": "boot failed",
    "install": "install failed",
    "campaign": "campaign failed",
    "compare": "compare failed",
}
BASELINE_RECORDED = "baseline recorded"
# a night that produced a campaign and showed no regression can be the next one's baseline
GOOD_VERDICTS = frozenset({BASELINE_RECORDED, "no change", "improvement", "inconclusive"})
PROBLEM_VERDICTS = frozenset({*FAILED_STEP_VERDICT.values(), "regression", "inconclusive"})


@dataclass(frozen=True)
class Verdict:
    name: str
    exit_code: int
    summary: str


def failed_step(step: str, exit_code: int, message: str) -> Verdict:
    """A failed step stops the night: its verdict carries the step's error code."""
    name = FAILED_STEP_VERDICT.get(step, f"{step} failed")
    return Verdict(name, exit_code or 1, f"{name}: {message}")


def first_night(campaign_id: str) -> Verdict:
    return Verdict(
        BASELINE_RECORDED,
        EXIT_OK,
        f"baseline recorded: campaign {campaign_id} is the first of this host and playbook",
    )


def from_comparison(
    outcome: str, cell_verdicts: Iterable[str], baseline: str, candidate: str
) -> Verdict:
    """``outcome`` is CampaignComparison.outcome (ok | regression | inconclusive)."""
    verdicts = list(cell_verdicts)
    counts = ", ".join(
        f"{verdicts.count(v)} {v}"
        for v in ("regressed", "improved", "no significant change", "inconclusive")
        if verdicts.count(v)
    )
    against = f"{candidate} vs baseline {baseline}: {counts or 'no cells'}"
    if outcome == "regression":
        return Verdict("regression", EXIT_REGRESSION, f"regression: {against}")
    if outcome == "inconclusive":
        return Verdict("inconclusive", EXIT_INCONCLUSIVE, f"inconclusive: {against}")
    if "improved" in verdicts:
        return Verdict("improvement", EXIT_OK, f"improvement: {against}")
    return Verdict("no change", EXIT_OK, f"no change: {against}")
