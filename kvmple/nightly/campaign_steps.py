"""The night's measuring steps: run the campaign on the new kernel, compare it with the
last good night's."""

from __future__ import annotations

import platform

from kvmple import paths
from kvmple.campaign.playbook import load_playbook
from kvmple.campaign.runner import CampaignOptions, run_campaign
from kvmple.errors import CampaignError
from kvmple.nightly.baseline import last_good_night
from kvmple.nightly.context import StepContext, host_name
from kvmple.nightly.notify import write_atomic
from kvmple.nightly.outputs import BuildOutputs, CampaignOutputs, CompareOutputs
from kvmple.nightly.state import previous_nights
from kvmple.results import CampaignMeta, Store, open_store
from kvmple.results.compare import compare_campaigns
from kvmple.results.junit import comparison_junit, report_junit
from kvmple.results.report import load_analysis
from kvmple.results.tables import render_comparison_markdown, render_markdown

# ---------------------------------------------------------------------------- campaign


def find_started_campaign(store: Store, name: str, host: str, since: float) -> CampaignMeta | None:
    """A campaign this step started before the host went down (same playbook name and host,
    created after the step began)."""
    found = [
        m
        for m in store.campaigns()
        if m.name == name and m.host.get("hostname") == host and m.created >= since - 1
    ]
    return max(found, key=lambda m: m.created) if found else None


def campaign(ctx: StepContext) -> tuple[str, CampaignOutputs]:
    loaded = load_playbook(ctx.config.playbook)
    step = ctx.state.step("campaign")
    options = CampaignOptions(
        db_url=ctx.config.store, allow_unavailable=ctx.config.allow_unavailable
    )
    previous = None
    if step.attempts > 1:  # an earlier attempt may have stored a campaign before dying
        with open_store(ctx.config.store) as store:
            previous = find_started_campaign(
                store, loaded.playbook.name, host_name(), step.first_started or 0.0
            )
    if previous is not None and previous.status == "complete":
        ctx.log(f"campaign {previous.id} completed before the interruption")
        campaign_id = previous.id
        ok = planned = None
    else:
        if previous is not None:
            ctx.log(f"resuming campaign {previous.id} (started before the interruption)")
            outcome = run_campaign(None, options, resume_id=previous.id, sink=ctx.sink)
        else:
            ctx.log(f"running {ctx.config.playbook} (store {ctx.config.store or 'default'})")
            outcome = run_campaign(loaded, options, sink=ctx.sink)
        ctx.log(outcome.summary())
        campaign_id, ok, planned = outcome.campaign_id, outcome.ok, outcome.planned
    with open_store(ctx.config.store) as store:
        runs = store.runs(campaign_id)
    ok_runs = sum(1 for r in runs if r.status == "ok")
    built = ctx.state.outputs_of("build", BuildOutputs)
    outputs = CampaignOutputs(
        campaign_id=campaign_id,
        playbook=str(ctx.config.playbook),
        playbook_sha256=loaded.sha256,
        ok=ok_runs,
        planned=planned,
        new_ok=ok,
        running_kernel=platform.release(),
        kernel_under_test=built.release if built else None,
        first_started=step.first_started,
        log=paths.data_dir() / "campaigns" / campaign_id / "campaign.log",
    )
    if ok_runs == 0:
        raise CampaignError(
            f"campaign {campaign_id} stored no successful run", hint=f"see {outputs.log}"
        )
    note = (
        ""
        if ctx.state.step("install").status == "done"
        else f" on the running kernel {platform.release()} (install skipped)"
    )
    return f"campaign {campaign_id}: {ok_runs} ok runs{note}", outputs


# ----------------------------------------------------------------------------- compare


def compare(ctx: StepContext) -> tuple[str, CompareOutputs]:
    """Compare the night's campaign with the baseline (or record it as the first one).
    Writes compare.md and compare.xml (or report.md / report.xml on a first night)."""
    measured = ctx.state.need("campaign", CampaignOutputs)
    candidate_id = measured.campaign_id
    policy = ctx.config.baseline
    baseline_night: str | None = None
    with open_store(ctx.config.store, create=False) as store:
        candidate = store.resolve(candidate_id)
        if policy.policy == "campaign":
            assert policy.campaign is not None
            baseline = store.resolve(policy.campaign)
        else:
            found = last_good_night(
                previous_nights(ctx.config.name, ctx.state.night),
                ctx.state.host,
                measured.playbook_sha256,
            )
            baseline = None
            if found is not None:
                baseline_night = found.night
                baseline = store.resolve(found.need("campaign", CampaignOutputs).campaign_id)
        if baseline is None:
            analysis = load_analysis(store, candidate.id, threshold=ctx.config.threshold)
            write_atomic(ctx.directory / "report.md", render_markdown(analysis))
            write_atomic(ctx.directory / "report.xml", report_junit(analysis))
            ctx.log(
                f"no earlier good night of this host and playbook: {candidate.id} is the baseline"
            )
            return (
                f"first night of this host and playbook: {candidate.id} recorded as baseline",
                CompareOutputs(
                    baseline_campaign=None,
                    candidate=candidate.id,
                    outcome=None,
                    details="report.md",
                    junit_cases="report.xml",
                ),
            )
        ctx.log(
            f"comparing {candidate.id} with baseline {baseline.id}"
            + (f" (night {baseline_night})" if baseline_night else "")
        )
        result = compare_campaigns(
            (baseline, store.runs(baseline.id)),
            (candidate, store.runs(candidate.id)),
            threshold=ctx.config.threshold,
        )
    markdown = render_comparison_markdown(result)
    write_atomic(ctx.directory / "compare.md", markdown)
    write_atomic(ctx.directory / "compare.xml", comparison_junit(result))
    ctx.log(markdown)
    verdicts = [cell.verdict for cell in result.cells]
    outputs = CompareOutputs(
        baseline_campaign=baseline.id,
        baseline_night=baseline_night,
        candidate=candidate.id,
        outcome=result.outcome,
        cell_verdicts=tuple(verdicts),
        threshold=ctx.config.threshold,
        differences=tuple(result.differences),
        details="compare.md",
        junit_cases="compare.xml",
    )
    return (
        f"{candidate.id} vs {baseline.id}: {result.outcome} "
        f"({len(verdicts)} cells at {ctx.config.threshold:.0%})"
    ), outputs
