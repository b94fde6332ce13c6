"""Fleet inventory validation and the pure parts of the fan-out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmple.errors import ConfigError, InputError
from kvmple.fleet.fanout import read_outcomes, remote_argv, resumable_campaign
from kvmple.fleet.inventory import FleetHost, load_inventory

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExample1"
GOOD = f"""\
store: postgresql://k:k@db.example/kvmple
hosts:
  intel-1:
    address: 10.0.0.1
    host_keys: ["{KEY}"]
    key: keys/lab
    env: {{KVMPLE_DATA_DIR: /srv/kvmple}}
    labels: {{cpu: intel}}
  amd-1:
    address: 10.0.0.2
    port: 2222
    host_keys: ["{KEY}"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_good_inventory(tmp_path: Path) -> None:
    inventory = load_inventory(_write(tmp_path, GOOD))
    assert list(inventory.hosts) == ["intel-1", "amd-1"]
    intel = inventory.hosts["intel-1"]
    assert intel.key == tmp_path / "keys" / "lab"
    assert intel.port == 22 and intel.user == "root" and intel.kvmple == ("kvmple",)
    assert inventory.hosts["amd-1"].key is None  # the installation key
    assert inventory.store == "postgresql://k:k@db.example/kvmple"


def test_example_inventory_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "nightly" / "fleet.yaml"
    assert set(load_inventory(path).hosts) == {"intel-1", "amd-1"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('    host_keys: ["' + KEY + '"]\n    key: keys/lab', "    key: keys/lab"), "host_keys"),
        (("KVMPLE_DATA_DIR", "BAD-NAME"), "not an environment variable name"),
        (("  amd-1:", "  amd 1:"), "host name"),
        (("port: 2222", "port: 99999"), "port"),
        (("store:", "stor:"), "unknown key"),
    ],
)
def test_bad_inventories(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as caught:
        load_inventory(_write(tmp_path, text))
    assert message in caught.value.message and "fleet.yaml" in caught.value.message


def test_workdir_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        FleetHost(address="h", host_keys=(KEY,), workdir="tmp")


def test_remote_argv() -> None:
    host = FleetHost(address="h", host_keys=(KEY,), kvmple=("/opt/k/bin/kvmple",))
    assert remote_argv(host, "/w/p.yaml", "postgresql://x/y", True) == [
        "/opt/k/bin/kvmple",
        "run",
        "/w/p.yaml",
        "--no-report",
        "--json",
        "--db",
        "postgresql://x/y",
        "--allow-unavailable",
    ]
    assert remote_argv(host, "/w/p.yaml", None, False) == [
        "/opt/k/bin/kvmple",
        "run",
        "/w/p.yaml",
        "--no-report",
        "--json",
    ]


# recorded from 'kvmple run --resume ID --json' (kvmple 0.1.0, engine stubbed): one line each
RECORDED = Path(__file__).parents[1] / "fixtures" / "run_json_lines.jsonl"


def test_campaigns_are_read_from_the_recorded_json_lines() -> None:
    text = RECORDED.read_text()
    runs = read_outcomes(text, "alpha")
    assert [r.campaign_id for r in runs] == [
        "smoke-20261129-195501-3f2a",
        "smoke-20261129-201733-9c01",
    ]
    first, resumed = runs
    assert (first.planned, first.ok, first.failed, first.resumed_from) == (12, 12, 0, 0)
    assert first.store == "postgresql://kvmple:***@db.example/kvmple"
    assert (resumed.ok, resumed.failed, resumed.resumed_from) == (10, 1, 2)
    assert resumed.overhead_ratio == 2.5 and resumed.store is None
    assert read_outcomes("\n" + text.splitlines()[0] + "\n\n", "alpha")[0] == first
    assert read_outcomes("", "alpha") == []  # a campaign that failed prints no document


def test_a_line_that_is_no_outcome_document_is_named() -> None:
    human = "campaign smoke-1: 4 ok runs, 1 guest boot(s)"
    with pytest.raises(InputError, match=r"^alpha, stdout line 1: not valid JSON"):
        read_outcomes(human, "alpha")
    line = json.loads(RECORDED.read_text().splitlines()[0])
    del line["campaign_id"]
    with pytest.raises(InputError, match=r"stdout line 2: campaign_id: required key is missing"):
        read_outcomes("\n" + json.dumps(line), "alpha")
    newer = json.dumps({**line, "schema_version": 2})
    with pytest.raises(InputError, match="schema_version 2 is newer"):
        read_outcomes(newer, "alpha")


def test_a_failed_campaign_is_found_by_its_resume_hint() -> None:
    err = "kvmple: error: boom\n  hint: stored runs are kept: kvmple run --resume smoke-1 continues"
    assert resumable_campaign(err) == "smoke-1"
    assert resumable_campaign("kvmple: error: no such file") is None


def test_what_kvmple_run_json_prints_today_is_read_like_the_recording(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recording stays current: today's 'kvmple run --json' (engine stubbed) prints
    documents with the same keys, and the fleet reads the id from stdout alone."""
    from kvmple.campaign import runner
    from kvmple.campaign.model import CampaignOutcome
    from kvmple.campaign.outcome import RunOutcome
    from kvmple.cli import main

    outcome = CampaignOutcome("smoke-20261129-1", planned=4, ok=4, boots=1)
    monkeypatch.setattr(runner, "run_campaign", lambda *a, **k: outcome)
    monkeypatch.setattr(runner, "campaign_report", lambda *a: None)
    assert main(["run", "--resume", "smoke-20261129-1", "--json"]) == 0
    captured = capsys.readouterr()
    assert read_outcomes(captured.out, "local") == [RunOutcome.from_outcome(outcome)]
    recorded = json.loads(RECORDED.read_text().splitlines()[0])
    assert list(json.loads(captured.out)) == list(recorded)
