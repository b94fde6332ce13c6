"""The night's human and machine summaries (pure): a markdown page and a JUnit XML file with
one test case per step plus the comparison's (or first night's report's) test cases."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from kvmple.errors import StoreError
from kvmple.nightly.outputs import BuildOutputs, CampaignOutputs, CompareOutputs, FetchOutputs
from kvmple.nightly.state import STEPS, NightState


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(state: NightState, details: str = "") -> str:
    """Verdict, step table, then ``details`` (the comparison or first-night report)."""
    lines = [
        f"# kvmple nightly {state.config}, night {state.night}",
        "",
        f"**Verdict: {state.verdict or 'unfinished'}** (exit code {state.exit_code})",
        "",
        state.summary,
        "",
        f"- host: {state.host}",
        f"- config: {state.config_path} (sha256 {state.config_sha256[:12]})",
        f"- started: {_when(state.created)}; finished: {_when(state.finished)}",
    ]
    lines += _outputs_lines(state)
    lines += ["", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for name in STEPS:
        step = state.step(name)
        seconds = "" if step.seconds is None else f"{step.seconds:g}"
        lines.append(f"| {name} | {step.status} | {seconds} | {_md(step.detail)} |")
    if details:
        lines += ["", details.rstrip()]
    return "\n".join(lines) + "\n"


def render_junit(state: NightState, extra_cases_xml: str | None = None) -> str:
    """One <testcase> per step (failed -> <failure>, skipped -> <skipped>), then the test cases
    of ``extra_cases_xml`` (a results JUnit document) in the same suite."""
    root = ET.Element("testsuites", name=f"kvmple nightly {state.config}")
    suite = ET.SubElement(
        root,
        "testsuite",
        name=f"kvmple.nightly.{state.config}.{state.night}",
        timestamp=_when(state.created).removesuffix(" UTC").replace(" ", "T"),
        hostname=state.host,
    )
    classname = f"kvmple.nightly.{state.config}"
    total = failures = skipped = 0
    seconds_total = 0.0
    for name in STEPS:
        step = state.step(name)
        seconds = step.seconds or 0.0
        seconds_total += seconds
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=f"step {name}", time=f"{seconds:g}"
        )
        total += 1
        if step.status == "failed":
            failure = ET.SubElement(case, "failure", message=step.detail[:200], type=name)
            failure.text = step.detail + (f"\nhint: {step.hint}" if step.hint else "")
            failures += 1
        elif step.status in ("skipped", "pending", "running"):
            reason = step.detail if step.status == "skipped" else f"not reached ({step.status})"
            ET.SubElement(case, "skipped", message=reason)
            skipped += 1
        else:
            ET.SubElement(case, "system-out").text = step.detail
    if extra_cases_xml:
        for case in ET.fromstring(extra_cases_xml).iter("testcase"):
            suite.append(case)
            total += 1
            if case.find("failure") is not None:
                failures += 1
            elif case.find("skipped") is not None:
                skipped += 1
    for element in (root, suite):
        element.set("tests", str(total))
        element.set("failures", str(failures))
        element.set("errors", "0")
        element.set("time", f"{seconds_total:g}")
    suite.set("skipped", str(skipped))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _outputs_lines(state: NightState) -> list[str]:
    """The night's facts from the step outputs: tree, kernel, campaign, baseline. A night
    whose state.json holds outputs of another shape shows what it can."""
    lines: list[str] = []
    try:
        fetch = state.outputs_of("fetch", FetchOutputs)
        build = state.outputs_of("build", BuildOutputs)
        campaign = state.outputs_of("campaign", CampaignOutputs)
        compare = state.outputs_of("compare", CompareOutputs)
    except StoreError as exc:
        return [f"- step outputs unreadable: {_md(exc.message)}"]
    if fetch is not None:
        lines.append(
            f"- tree: {fetch.tree} {fetch.ref} = {fetch.commit[:12]} ({_md(fetch.subject)})"
        )
    if build is not None:
        lines.append(f"- kernel built: {build.release}")
    if campaign is not None:
        lines.append(
            f"- campaign: {campaign.campaign_id} ({campaign.ok} ok runs, on "
            f"running kernel {campaign.running_kernel})"
        )
    if compare is not None and compare.baseline_campaign:
        night = compare.baseline_night
        lines.append(
            f"- baseline: {compare.baseline_campaign}"
            + (f" (night {night})" if night else " (named in the config)")
        )
    return lines
