"""``kvmple report --hosts``: campaigns of several hosts side by side, on a real SQLite
store filled with synthetic campaigns (one per host, one host 20% slower)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.errors import UsageError
from kvmple.results import open_store
from kvmple.results.hosts import pick_campaigns, render_hosts
from kvmple.results.store import sqlite_url
from tests.fixtures.synthetic import synthetic_campaign


def _store(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "fleet.sqlite")
    with open_store(url) as store:
        for index, (campaign, host, scale) in enumerate(
            [("old-intel", "intel-1", 1.0), ("intel", "intel-1", 1.0), ("amd", "amd-1", 0.8)]
        ):
            meta, runs = synthetic_campaign(
                campaign,
                runs_per_cell=10,
                sizes=(16,),
                ple=("off",),
                scale=scale,
                cv=0.01,
                seed=index + 1,
            )
            meta = meta.model_copy(
                update={
                    "host": {"hostname": host, "cpu_model": f"{host} cpu"},
                    "created": meta.created + index,
                }
            )
            store.create_campaign(meta)
            store.add_runs(runs)
    return url


def test_hosts_side_by_side_with_ratios(tmp_path: Path) -> None:
    url = _store(tmp_path)
    with open_store(url) as store:
        text = render_hosts(store, ["intel", "amd"])
    lines = text.splitlines()
    assert lines[0] == "hosts side by side: synthetic-rfc"
    header = lines[1].split("  ")
    assert [h.strip() for h in header if h.strip()] == [
        "cell",
        "intel-1",
        "amd-1",
        "amd-1 / intel-1",
    ]
    rows = [line for line in lines if line.startswith("ple=")]
    assert len(rows) == 3  # overcommit 1.0 / 1.5 / 2.0 at size 16
    for row in rows:
        assert "-20." in row or "-19." in row or "-21." in row  # amd is 20% slower
    assert "intel-1: campaign intel; cpu intel-1 cpu" in text


def test_default_is_the_newest_campaign_of_each_host(tmp_path: Path) -> None:
    url = _store(tmp_path)
    with open_store(url) as store:
        assert [m.id for m in pick_campaigns(store, [])] == ["intel", "amd"]
        with pytest.raises(UsageError, match="at least two hosts"):
            pick_campaigns(store, ["intel"])
        with pytest.raises(UsageError, match="named twice"):
            pick_campaigns(store, ["intel", "intel"])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _store(tmp_path)
    assert main(["report", "--hosts", "--db", url, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### hosts side by side") and "| amd-1 / intel-1 |" in out
    assert main(["report", "--hosts", "intel", "--db", url]) == 2
    assert main(["report", "intel", "amd", "--db", url]) == 2  # several need --hosts
    assert main(["report", "--hosts", "intel", "amd", "--db", url, "--format", "html"]) == 2
