"""JUnit XML for CI systems (the Jenkins/GitLab "junit-10" dialect): one test case per
cell comparison. A regressed comparison is a <failure>; an undecided one (too few runs, CI
too wide, cell missing) is <skipped> with the reason; a cell without successful runs is a
<failure> of its own test case."""

from __future__ import annotations

import datetime as dt
import socket
import xml.etree.ElementTree as ET

from kvmple.results.analysis import CampaignAnalysis
from kvmple.results.compare import CampaignComparison
from kvmple.results.stats import Comparison
from kvmple.results.tables import gain_cell, mean_ci, p_value


def _describe(comp: Comparison) -> str:
    return (
        f"change {gain_cell(comp)}; baseline {mean_ci(comp.baseline)}, candidate "
        f"{mean_ci(comp.candidate)}; Mann-Whitney p={p_value(comp.mannwhitney_p)}, "
        f"Welch p={p_value(comp.welch_p)}; verdict {comp.verdict}: {comp.why}"
    )


def _case(
    suite: ET.Element, classname: str, name: str, comp: Comparison | None, missing: str
) -> str:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if comp is None:
        ET.SubElement(case, "skipped", message=missing)
        return "skipped"
    if comp.verdict == "regressed":
        failure = ET.SubElement(case, "failure", message="regressed", type="regression")
        failure.text = _describe(comp)
        ET.SubElement(case, "system-out").text = _describe(comp)
        return "failure"
    if comp.verdict == "inconclusive":
        ET.SubElement(case, "skipped", message=f"inconclusive: {comp.why}")
        return "skipped"
    ET.SubElement(case, "system-out").text = _describe(comp)
    return "pass"


def _suite(root: ET.Element, name: str) -> ET.Element:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return ET.SubElement(
        root, "testsuite", name=name, timestamp=stamp, hostname=socket.gethostname(), time="0"
    )


def _finish(root: ET.Element, suite: ET.Element, outcomes: list[str]) -> str:
    counts = {k: str(outcomes.count(k)) for k in ("failure", "skipped")}
    suite.set("tests", str(len(outcomes)))
    suite.set("failures", counts["failure"])
    suite.set("errors", "0")
    suite.set("skipped", counts["skipped"])
    root.set("tests", str(len(outcomes)))
    root.set("failures", counts["failure"])
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def comparison_junit(cc: CampaignComparison) -> str:
    """One test case per cell: candidate vs baseline."""
    root = ET.Element("testsuites", name="kvmple compare")
    suite = _suite(root, f"kvmple.compare.{cc.baseline.id}.{cc.candidate.id}")
    classname = f"kvmple.compare.{cc.baseline.name}"
    outcomes = [_case(suite, classname, c.label, c.comparison, c.missing) for c in cc.cells]
    return _finish(root, suite, outcomes)


def report_junit(analysis: CampaignAnalysis) -> str:
    """One test case per cell (has successful runs?) and per within-campaign comparison
    (PLE on vs off per size and overcommit; overcommit costs are context, not tests)."""
    root = ET.Element("testsuites", name="kvmple report")
    suite = _suite(root, f"kvmple.report.{analysis.meta.id}")
    classname = f"kvmple.report.{analysis.meta.name}"
    outcomes = []
    for result in analysis.cells:
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=f"runs {result.label}", time="0"
        )
        if result.stats is None:
            failure = ET.SubElement(case, "failure", message="no successful run", type="no-data")
            failure.text = "; ".join(result.cell.failure_reasons())
            outcomes.append("failure")
        else:
            ET.SubElement(
                case, "system-out"
            ).text = f"{mean_ci(result.stats)}, n={result.stats.n}, failed={result.stats.n_failed}"
            outcomes.append("pass")
    for name, comp, missing in analysis.comparisons():
        if "PLE gain" in name:
            outcomes.append(_case(suite, classname, name, comp, missing))
    return _finish(root, suite, outcomes)


def junit_exit_code(xml_text: str) -> int:
    """The report's exit code: 20 (as compare's regression) if any test case failed, else 0.
    Skipped (undecided) cases do not fail a report; 'kvmple compare' is stricter (21)."""
    root = ET.fromstring(xml_text)
    return 20 if root.find(".//failure") is not None else 0
