"""Night state files, verdicts, the baseline choice, JUnit/markdown summaries, e-mail."""

from __future__ import annotations

import email
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmple.errors import StoreError, UsageError
from kvmple.nightly import verdict as verdicts
from kvmple.nightly.baseline import last_good_night
from kvmple.nightly.config import Email
from kvmple.nightly.notify import compose, write_atomic
from kvmple.nightly.state import (
    STEPS,
    NightState,
    check_night_id,
    default_night_id,
    load,
    night_dir,
    previous_nights,
    save,
)
from kvmple.nightly.summary import render_junit, render_markdown


def _night(
    night: str,
    created: float,
    verdict: str | None,
    *,
    host: str = "lab-1",
    sha: str = "p1",
    campaign: str | None = "c",
) -> NightState:
    state = NightState("job", night, "/etc/job.yaml", "ab" * 32, host, created)
    for name in STEPS:
        state.step(name)
    state.verdict = verdict
    if campaign:
        state.step("campaign").outputs = {  # as earlier kvmple versions stored it
            "campaign_id": f"{campaign}-{night}",
            "playbook": "/etc/p.yaml",
            "playbook_sha256": sha,
            "ok": 8,
            "planned": 8,
            "new_ok": 8,
            "running_kernel": "6.1.0",
            "kernel_under_test": None,
            "first_started": created,
            "log": f"/var/lib/kvmple/campaigns/{campaign}-{night}/campaign.log",
        }
    return state


def test_state_round_trip_is_atomic(tmp_path: Path) -> None:
    state = _night("n1", 100.0, None)
    state.step("fetch").status = "done"
    state.step("fetch").started, state.step("fetch").ended = 100.0, 102.5
    save(state, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["steps"]["fetch"]["seconds"] == 2.5
    again = load(tmp_path)
    assert again is not None and again.step("fetch").status == "done"
    assert again.step("fetch").seconds == 2.5
    assert load(tmp_path / "nothing") is None


def test_damaged_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable night state"):
        load(tmp_path)
    (tmp_path / "state.json").write_text('{"what": 1}')
    with pytest.raises(StoreError, match="not a kvmple night state"):
        load(tmp_path)
    save(_night("n1", 100.0, None), tmp_path)
    data = json.loads((tmp_path / "state.json").read_text())
    data["steps"]["fetch"]["status"] = "finished"  # not a step status
    (tmp_path / "state.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match=r"not a kvmple night state \(steps\.fetch\.status: "):
        load(tmp_path)


def test_saved_state_keeps_its_stored_form(tmp_path: Path) -> None:
    """state.json as written before the state was validated on reading loads, and is written
    back with the same keys and values (each step's seconds included)."""
    stored = {
        "config": "job",
        "night": "n1",
        "config_path": "/etc/job.yaml",
        "config_sha256": "ab" * 32,
        "host": "lab-1",
        "created": 100.0,
        "steps": {
            "fetch": {
                "status": "done",
                "started": 100.0,
                "ended": 102.5,
                "detail": "abc",
                "hint": "",
                "exit_code": 0,
                "outputs": {"first_started": 100.0, "commit": "c" * 40, "tree": "/src"},
                "attempts": 1,
                "seconds": 2.5,
            }
        },
        "verdict": None,
        "exit_code": None,
        "summary": "",
        "finished": None,
    }
    (tmp_path / "state.json").write_text(json.dumps(stored))
    state = load(tmp_path)
    assert state is not None and state.step("fetch").first_started == 100.0
    assert state.to_json() == stored
    save(state, tmp_path)
    assert json.loads((tmp_path / "state.json").read_text()) == stored


def test_night_ids() -> None:
    assert default_night_id(0) == "1970-01-01"
    assert check_night_id("2026-11-27") == "2026-11-27"
    for bad in ("../x", "", "a/b", "..", "-rf"):
        with pytest.raises(UsageError):
            check_night_id(bad)
    assert night_dir("job", "n1").parts[-3:] == ("nightly", "job", "n1")


def test_previous_nights_newest_first_and_skip_damaged() -> None:
    for night, created in (("a", 1.0), ("b", 3.0), ("c", 2.0)):
        save(_night(night, created, "no change"), night_dir("job", night))
    night_dir("job", "broken").mkdir()
    (night_dir("job", "broken") / "state.json").write_text("garbage")
    assert [n.night for n in previous_nights("job", before="c")] == ["b", "a"]
    assert previous_nights("other-job", before="x") == []


def test_last_good_night_same_host_and_playbook() -> None:
    nights = [
        _night("n5", 5, "regression"),
        _night("n4", 4, "build failed", campaign=None),
        _night("n3", 3, "no change", host="lab-2"),
        _night("n2", 2, "no change", sha="other-playbook"),
        _night("n1", 1, "baseline recorded"),
    ]
    found = last_good_night(nights, "lab-1", "p1")
    assert found is not None and found.night == "n1"
    assert last_good_night(nights, "lab-9", "p1") is None
    assert last_good_night([_night("n6", 6, "inconclusive")], "lab-1", "p1") is not None


@pytest.mark.parametrize(
    ("outcome", "cells", "name", "code"),
    [
        ("regression", ["regressed", "improved"], "regression", 20),
        ("inconclusive", ["inconclusive", "no significant change"], "inconclusive", 21),
        ("ok", ["improved", "no significant change"], "improvement", 0),
        ("ok", ["no significant change"], "no change", 0),
    ],
)
def test_verdict_from_comparison(outcome: str, cells: list[str], name: str, code: int) -> None:
    verdict = verdicts.from_comparison(outcome, cells, "base-1", "cand-2")
    assert (verdict.name, verdict.exit_code) == (name, code)
    assert "cand-2 vs baseline base-1" in verdict.summary


def test_failed_step_verdicts_carry_the_error_code() -> None:
    assert verdicts.failed_step("apply", 10, "patch 2 does not apply").name == "apply failed"
    assert verdicts.failed_step("build", 9, "x").exit_code == 9
    assert verdicts.failed_step("boot-test", 7, "x").name == "boot failed"
    assert verdicts.first_night("c1").name == "baseline recorded"
    assert verdicts.first_night("c1").exit_code == 0


def test_junit_has_a_case_per_step_plus_the_comparison_cases() -> None:
    state = _night("n2", 10.0, "regression")
    state.step("fetch").status = "done"
    state.step("install").status = "skipped"
    state.step("install").detail = "skipped: not verified on hardware / no VT-x host"
    state.step("build").status = "failed"
    state.step("build").detail = "kernel build step 'make' failed"
    extra = (
        '<testsuites><testsuite name="x"><testcase classname="c" name="cell a">'
        '<failure message="regressed"/></testcase><testcase classname="c" name="cell b"/>'
        "</testsuite></testsuites>"
    )
    root = ET.fromstring(render_junit(state, extra))
    suite = root.find("testsuite")
    assert suite is not None
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names == [f"step {s}" for s in STEPS] + ["cell a", "cell b"]
    assert suite.get("tests") == str(len(STEPS) + 2)
    assert suite.get("failures") == "2"  # build + the regressed cell
    # install skipped + apply/boot-test/campaign/compare not reached
    assert suite.get("skipped") == str(len(STEPS) - 2)
    install = suite.find("testcase[@name='step install']/skipped")
    assert install is not None and "not verified on hardware" in str(install.get("message"))


def test_markdown_summary_names_verdict_steps_and_details() -> None:
    state = _night("n2", 10.0, "no change")
    state.exit_code, state.summary = 0, "no change: cand vs baseline base"
    state.step("fetch").outputs = {
        "tree": "/srv/linux",
        "ref": "main",
        "commit": "a" * 40,
        "subject": "a | b",
        "source": "/srv/linux",
    }
    text = render_markdown(state, "### comparison table\n")
    assert "**Verdict: no change** (exit code 0)" in text
    assert "| fetch | pending |" in text
    assert "a \\| b" in text
    assert text.rstrip().endswith("### comparison table")


def test_email_message_is_well_formed() -> None:
    settings = Email(to=("a@example.org", "b@example.org"), sender="k@example.org")
    raw = compose(settings, "job night n1: regression", "body text\n", ("junit.xml", "<x/>"))
    message = email.message_from_string(raw)
    assert message["To"] == "a@example.org, b@example.org"
    assert message["Subject"] == "[kvmple nightly] job night n1: regression"
    parts = list(message.walk())
    assert any(p.get_filename() == "junit.xml" for p in parts)


def test_write_atomic_leaves_no_temp_and_is_readable(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "deep" / "out.md", "hello\n")
    assert path.read_text() == "hello\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["out.md"]
