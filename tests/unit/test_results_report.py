"""Reports and comparisons: RFC table shape, PLE unavailable, vs RFC, provenance pooling,
empty cells, generic campaigns, JSON/JUnit/HTML, and the commands' exit codes."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.errors import StoreError, UsageError
from kvmple.results.analysis import analyse
from kvmple.results.cells import MixedProvenance
from kvmple.results.compare import EXIT_INCONCLUSIVE, EXIT_REGRESSION, compare_campaigns
from kvmple.results.html import render_html
from kvmple.results.jsonreport import analysis_dict, dumps
from kvmple.results.junit import junit_exit_code, report_junit
from kvmple.results.records import CampaignMeta, RunRecord
from kvmple.results.report import render
from kvmple.results.rfc import rfc_figures
from kvmple.results.stats import runs_needed
from kvmple.results.store import open_store, sqlite_url
from kvmple.results.tables import render_markdown, render_text
from tests.fixtures.synthetic import synthetic_campaign

FAST = 2000  # bootstrap resamples in unit tests (the default 10,000 is benched)


def test_shipped_rfc_figures() -> None:
    rfc = rfc_figures()
    assert "directed yield for Pause Loop Exiting" in rfc.source
    assert len(rfc.results) == 12 and rfc.repetitions == 30
    assert rfc.gain(16, 2.0) == pytest.approx(132945 / 105299)
    assert rfc.cost(8, False, 2.0) == pytest.approx(0.469, abs=0.001)
    assert rfc.cost(16, False, 2.0) == pytest.approx(0.473, abs=0.001)


def test_rfc_table_shape_and_vs_rfc() -> None:
    meta, runs = synthetic_campaign("rfc", runs_per_cell=12, cv=0.01, seed=5)
    a = analyse(meta, runs, resamples=FAST)
    assert [t.title for t in a.tables] == ["size 8", "size 16"]
    table = a.tables[0]
    assert table.columns == (1.0, 1.5, 2.0) and table.spinners == (0, 2, 4)
    assert [row for row, _ in table.rows] == ["off", "on"]
    gains = [g.ratio for g in table.gains if g]
    assert gains == pytest.approx([rfc_figures().gain(8, oc) for oc in (1.0, 1.5, 2.0)], rel=0.02)
    assert table.gains[2] is not None and table.gains[2].verdict == "improved"
    text = render_text(a)
    size8 = text.split("synthetic-rfc: size 8")[1].split("synthetic-rfc: size 16")[0]
    lines = size8.strip().splitlines()
    assert "1x overcommit (0 spinners)" in lines[0] and "2x overcommit (4 spinners)" in lines[0]
    assert [line.split("  ")[0] for line in lines[2:7]] == [
        "no PLE",
        "PLE",
        "PLE gain",
        "no PLE vs 1x",
        "PLE vs 1x",
    ]
    assert re.search(r"no PLE\s+2\d\d,\d{3} \(±[\d,]+\)", size8)
    assert "vs RFC" in text and "RFC in our CI" in text
    # synthetic data drawn around the RFC's means reproduces its ratios within our CIs
    assert sum(1 for v in a.vs_rfc if v.agrees) >= len(a.vs_rfc) - 2
    assert len(a.vs_rfc) == 14
    md = render_markdown(a)
    assert "| no PLE |" in md and "### vs RFC" in md


def test_ple_unavailable_one_row_and_cost_pattern() -> None:
    meta, runs = synthetic_campaign(
        "tcg", ple=("unavailable",), runs_per_cell=3, scale=0.01, cv=0.03
    )
    a = analyse(meta, runs, resamples=FAST)
    assert a.ple_unavailable == "synthetic: no PLE"
    for table in a.tables:
        assert [row for row, _ in table.rows] == ["unavailable"]
        assert table.gains == ()
        costs = dict(table.costs)["unavailable"]
        assert costs[2] is not None and costs[2].ratio == pytest.approx(0.47, abs=0.06)
    text = render_text(a)
    assert "PLE unavailable  " in text and "PLE unavailable vs 1x" in text
    assert "PLE gain" not in text.split("per cell")[0]
    assert "PLE unavailable: synthetic: no PLE" in text
    gains = [v for v in a.vs_rfc if "gain" in v.what]
    assert gains and all(v.ours is None and v.agrees is None for v in gains)
    junit = report_junit(a)
    root = ET.fromstring(junit)
    assert len(root.findall(".//testcase")) == 12
    assert len(root.findall(".//skipped")) == 6 and junit_exit_code(junit) == 0


def test_mixed_provenance_never_pooled_silently() -> None:
    meta, runs = synthetic_campaign("mix", runs_per_cell=4)
    changed = [
        r.model_copy(update={"provenance": {"host": {"hostname": "synthetic"}, "kernel": "6.9"}})
        if i == 3
        else r
        for i, r in enumerate(runs)
    ]
    with pytest.raises(MixedProvenance, match="mixes runs with different kernel") as info:
        analyse(meta, changed, resamples=FAST)
    assert "--pool-anyway" in (info.value.hint or "")
    a = analyse(meta, changed, allow_mixed=True, resamples=FAST)
    assert a.warnings and "POOLED DESPITE DIFFERENT PROVENANCE" in a.warnings[0]
    assert "WARNING: POOLED DESPITE" in render_text(a)
    # knobs legitimately differ between cells (PLE on vs off), not inside one
    knobs = [
        r.model_copy(
            update={"provenance": {"knobs": {"ple_gap": 128 if r.cell["ple"] == "on" else 0}}}
        )
        for r in runs
    ]
    assert analyse(meta, knobs, resamples=FAST).warnings == ()
    # ...but a host kernel that changed between cells of one campaign is caught
    kernels = [
        r.model_copy(update={"provenance": {"kernel": "a" if r.cell["size"] == 8 else "b"}})
        for r in runs
    ]
    with pytest.raises(MixedProvenance, match="mixes cells run with different kernel"):
        analyse(meta, kernels, resamples=FAST)


def test_empty_cells_and_no_runs() -> None:
    meta, runs = synthetic_campaign("empty", runs_per_cell=3)
    with pytest.raises(StoreError, match="has no runs stored yet"):
        analyse(meta, [], resamples=FAST)
    failed = [r.model_copy(update={"status": "failed", "reason": "broker died"}) for r in runs]
    with pytest.raises(StoreError, match=r"no successful runs.*broker died"):
        analyse(meta, failed, resamples=FAST)
    # one cell entirely failed: reported as such, never NaN
    first = runs[0].cell
    partly = [
        r.model_copy(update={"status": "failed", "reason": "guest hung"}) if r.cell == first else r
        for r in runs
    ]
    a = analyse(meta, partly, resamples=FAST)
    assert any("has no successful run" in w for w in a.warnings)
    text = render_text(a) + render_markdown(a) + dumps(analysis_dict(a)) + render_html(a)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert "no data" in render_text(a)
    assert "guest hung" in render_text(a)
    junit = report_junit(a)
    assert junit_exit_code(junit) == 20
    assert "no successful run" in junit
    # an ok run without the primary metric is not pooled
    missing = [runs[0].model_copy(update={"figures": {}}), *runs[1:]]
    b = analyse(meta, missing, resamples=FAST)
    assert "without figure 'transfers_per_sec'" in render_text(b)


def _generic() -> tuple[CampaignMeta, list[RunRecord]]:
    meta = CampaignMeta(
        id="gen",
        name="hackbench",
        playbook_hash="0" * 64,
        playbook_text="x: 1\n",
        created=1.0e9,
        status="complete",
        kvmple_version="0.1.0",
        axes={"groups": [4, 8]},
        primary_metric="seconds",
        metric_unit="s",
    )
    runs = [
        RunRecord(
            campaign_id="gen",
            run_key=f"{g}-{i}",
            cell={"groups": g},
            run_index=i,
            status="ok",
            figures={"seconds": g * (1 + 0.01 * i)},
            started=i,
            ended=i + 1,
        )
        for g in (8, 4)
        for i in range(5)
    ]
    return meta, runs


def test_generic_campaign_gets_per_cell_table() -> None:
    meta, runs = _generic()
    a = analyse(meta, runs, resamples=FAST)
    assert not a.rfc_shaped and a.vs_rfc == () and a.higher_is_better is False
    assert [c.label for c in a.cells] == ["groups=4", "groups=8"]  # playbook axis order
    text = render_text(a)
    assert "seconds per cell" in text and "vs RFC" not in text
    assert "<img" in render_html(a)


def test_json_and_html_outputs() -> None:
    meta, runs = synthetic_campaign("j", runs_per_cell=4, failed_every=9)
    a = analyse(meta, runs, resamples=FAST)
    data = json.loads(render(a, "json"))
    assert data["kind"] == "kvmple-report" and len(data["cells"]) == 12
    assert data["cells"][0]["stats"]["n"] >= 3
    first = data["cells"][0]
    # the power hint: runs per side to detect the threshold (2%) at the cell's noise
    assert first["runs_per_side_to_detect_threshold"] == runs_needed(first["stats"]["cv"], 0.02)
    assert "runs/side for 2%" in render(a, "text")
    assert all(c["comparison"] for c in data["comparisons"] if "PLE gain" in c["name"])
    page = render(a, "html")
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.split("<body>")[0]
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "Provenance" in page and "Evidence" in page and "synthetic failure" in page
    with pytest.raises(UsageError, match="unknown report format"):
        render(a, "pdf")


def test_compare_campaigns_verdicts_and_mismatches() -> None:
    base = synthetic_campaign("base", runs_per_cell=10, cv=0.01, seed=1)
    same = synthetic_campaign("same", runs_per_cell=10, cv=0.01, seed=2)
    result = compare_campaigns(base, same, threshold=0.05, resamples=FAST)
    assert result.outcome == "ok" and result.exit_code == 0
    slower_meta, slower_runs = synthetic_campaign("slow", runs_per_cell=10, cv=0.01, seed=3)
    slower_runs = [
        r.model_copy(
            update={"figures": {"transfers_per_sec": r.figures["transfers_per_sec"] * 0.9}}
        )
        for r in slower_runs
    ]
    worse = compare_campaigns(base, (slower_meta, slower_runs), resamples=FAST)
    assert worse.outcome == "regression" and worse.exit_code == EXIT_REGRESSION
    assert {c.verdict for c in worse.cells} == {"regressed"}
    few = synthetic_campaign("few", runs_per_cell=1, seed=4)  # one run: no CI
    unsure = compare_campaigns(base, few, resamples=FAST)
    assert unsure.exit_code == EXIT_INCONCLUSIVE
    assert {c.comparison.why for c in unsure.cells if c.comparison} == {
        "too few runs for a confidence interval"
    }
    tcg = synthetic_campaign("tcg", ple=("unavailable",), runs_per_cell=3)
    with pytest.raises(UsageError, match="no cell in common"):
        compare_campaigns(base, tcg, resamples=FAST)
    with pytest.raises(UsageError, match="compared with itself"):
        compare_campaigns(base, base, resamples=FAST)
    gen = _generic()
    with pytest.raises(UsageError, match="measure different figures"):
        compare_campaigns(base, gen, resamples=FAST)
    # partly overlapping: the missing cells are named and make it inconclusive
    half = synthetic_campaign("half", runs_per_cell=10, cv=0.01, sizes=(8,), seed=6)
    partial = compare_campaigns(base, half, threshold=0.05, resamples=FAST)
    assert sum(1 for c in partial.cells if c.missing == "only in base") == 6
    assert partial.outcome == "inconclusive"


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "r.sqlite")
    with open_store(url) as store:
        for cid, kw in (
            ("base", {"seed": 1}),
            ("cand", {"seed": 2}),
            ("tcg", {"ple": ("unavailable",), "runs_per_cell": 3, "scale": 0.01}),
        ):
            meta, runs = synthetic_campaign(
                cid, cv=0.01, runs_per_cell=kw.pop("runs_per_cell", 8), **kw
            )  # type: ignore[arg-type]
            store.create_campaign(meta)
            store.add_runs(runs)
        meta, runs = synthetic_campaign("slow", runs_per_cell=8, cv=0.01, seed=3)
        store.create_campaign(meta)
        store.add_runs(
            [
                r.model_copy(
                    update={"figures": {"transfers_per_sec": r.figures["transfers_per_sec"] * 0.8}}
                )
                for r in runs
            ]
        )
    return url


def test_cli_report_and_compare(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["results", "list", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "base" in listing and "tcg" in listing and " 96 " in listing
    assert main(["report", "--db", db]) == 0  # latest: slow
    assert "campaign slow" in capsys.readouterr().out
    assert main(["report", "tcg", "--db", db, "--format", "markdown"]) == 0
    assert "| PLE unavailable |" in capsys.readouterr().out
    assert main(["report", "tcg", "--db", db, "--format", "html"]) == 0
    html_path = Path(capsys.readouterr().out.strip())
    assert html_path.name == "tcg.html" and html_path.read_text().startswith("<!DOCTYPE")
    out = tmp_path / "r.xml"
    assert main(["report", "base", "--db", db, "--format", "junit", "-o", str(out)]) == 0
    ET.parse(out)
    assert main(["compare", "base", "cand", "--db", db, "--threshold", "5%"]) == 0
    assert "outcome: OK" in capsys.readouterr().out
    assert main(["compare", "base", "slow", "--db", db]) == EXIT_REGRESSION
    assert "outcome: REGRESSION" in capsys.readouterr().out
    assert main(["compare", "base", "slow", "--db", db, "--format", "junit"]) == 20
    assert len(ET.fromstring(capsys.readouterr().out).findall(".//failure")) == 12
    assert main(["compare", "base", "tcg", "--db", db]) == 2
    assert "no cell in common" in capsys.readouterr().err
    assert main(["report", "nope", "--db", db]) == 11
    err = capsys.readouterr().err
    assert "no campaign 'nope'" in err and "Traceback" not in err
    assert main(["compare", "base", "cand", "--db", db, "--threshold", "two"]) == 2
    assert main(["compare", "base", "cand", "--db", db, "--threshold", "150%"]) == 2
    export = tmp_path / "e.json"
    assert main(["results", "export", "base", "--db", db, "-o", str(export)]) == 0
    new_db = sqlite_url(tmp_path / "new.sqlite")
    assert main(["results", "import", str(export), "--db", new_db]) == 0
    assert "96 run(s) added" in capsys.readouterr().err
    assert main(["results", "export", "--format", "csv", "--db", new_db]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 97
    assert main(["report", "--db", sqlite_url(tmp_path / "absent.sqlite")]) == 11
