"""The night's state machine on a small real git tree: real fetch and apply (git worktree,
git am), real compare against a real SQLite store, real notification files and a fake
sendmail program; the kernel build, boot test and campaign are replaced by stand-ins
(the real tier runs them for real: tests/real/test_nightly_real.py)."""

from __future__ import annotations

import itertools
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.errors import Interrupted, UsageError
from kvmple.events import Recorder
from kvmple.nightly import campaign_steps
from kvmple.nightly import steps as steps_mod
from kvmple.nightly.config import load_config
from kvmple.nightly.night import _exclusive, run_night
from kvmple.nightly.outputs import (
    ApplyOutputs,
    BootOutputs,
    BuildOutputs,
    CampaignOutputs,
    FetchOutputs,
)
from kvmple.nightly.state import jobs_dir, load, night_dir, save
from kvmple.nightly.steps import StepContext
from kvmple.results import open_store
from tests.fixtures.synthetic import synthetic_campaign
from tests.unit.kernel_fake_tree import git, make_git_tree, make_series

_ids = itertools.count(1)


class StandIns:
    """Build/boot/campaign stand-ins; the campaign stores a synthetic campaign for real."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.calls: list[str] = []
        self.scale = 1.0
        self.interrupt_build = False

    def build(self, ctx: StepContext) -> tuple[str, BuildOutputs]:
        self.calls.append("build")
        if self.interrupt_build:
            raise KeyboardInterrupt
        tree = ctx.state.need("apply", ApplyOutputs).tree
        assert (tree / "Makefile").is_file()
        out = ctx.directory / "build"
        return "stand-in build", BuildOutputs(
            release="6.1.0-fake", image=out / "bzImage", image_sha256="ab" * 32, out=out
        )

    def boot(self, ctx: StepContext) -> tuple[str, BootOutputs]:
        self.calls.append("boot-test")
        return "stand-in boot", BootOutputs(
            release="6.1.0-fake", accel="tcg", seconds_to_userspace=1.0, console=Path("c.log")
        )

    def campaign(self, ctx: StepContext) -> tuple[str, CampaignOutputs]:
        self.calls.append("campaign")
        meta, runs = synthetic_campaign(
            f"synthetic-{next(_ids)}",
            runs_per_cell=8,
            sizes=(16,),
            scale=self.scale,
            cv=0.01,
            seed=next(_ids),
        )
        with open_store(self.db) as store:
            store.create_campaign(meta)
            store.add_runs(runs)
        outputs = CampaignOutputs(
            campaign_id=meta.id,
            playbook="stand-in.yaml",
            playbook_sha256=meta.playbook_hash,
            ok=len(runs),
            running_kernel="6.1.0-host",
            log=ctx.directory / "campaign.log",
        )
        return f"campaign {meta.id}", outputs


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path, StandIns]]:
    tree = make_git_tree(tmp_path / "linux")
    make_series(tree, tmp_path / "series")
    db = f"sqlite://{tmp_path / 'results.sqlite'}"
    sendmail = tmp_path / "fake-sendmail"
    sendmail.write_text(
        '#!/bin/sh\nn=$(ls "$(dirname "$0")"/mail-* 2>/dev/null | wc -l)\n'
        'echo "$@" > "$(dirname "$0")/args-$n"\ncat > "$(dirname "$0")/mail-$n"\n'
    )
    sendmail.chmod(sendmail.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "nightly.yaml"
    config.write_text(
        "name: unit-job\n"
        "tree: {path: linux, ref: main}\n"
        "series: series\n"
        "playbook: playbook.yaml\n"
        f"store: {db}\n"
        "threshold: 2%\n"
        "notify:\n  junit: out/junit.xml\n  markdown: out/summary.md\n"
        "  email: {to: [lab@example.org], sendmail: fake-sendmail}\n"
    )
    stand_ins = StandIns(db)
    monkeypatch.setitem(steps_mod.STEP_FUNCTIONS, "build", stand_ins.build)
    monkeypatch.setitem(steps_mod.STEP_FUNCTIONS, "boot-test", stand_ins.boot)
    monkeypatch.setitem(steps_mod.STEP_FUNCTIONS, "campaign", stand_ins.campaign)
    monkeypatch.setenv("KVMPLE_HOSTNAME", "unit-host")
    yield config, tree, stand_ins


def test_two_nights_baseline_then_compare_and_idempotent_replay(
    job: tuple[Path, Path, StandIns], tmp_path: Path
) -> None:
    config, tree, stand_ins = job
    loaded = load_config(config)
    first = run_night(loaded, "night-1")
    assert (first.verdict.name, first.exit_code) == ("baseline recorded", 0)
    state = first.state
    assert [state.step(s).status for s in ("fetch", "apply", "build", "boot-test")] == ["done"] * 4
    assert state.step("install").status == "skipped"
    assert "campaign runs on the running kernel" in state.step("install").detail
    assert state.step("compare").status == "done"
    commit_1 = state.need("fetch", FetchOutputs).commit
    assert commit_1 == git(tree, "rev-parse", "HEAD").strip()
    assert state.step("apply").outputs["counts"] == {"applied": 2}
    # the patched worktree is removed at the end; the user's tree never changes
    assert not Path(state.step("apply").outputs["worktree"]).exists()
    assert git(tree, "status", "--porcelain").strip() == ""
    assert "kvmple/" not in git(tree, "branch", "--list")
    directory = first.directory
    for name in ("state.json", "junit.xml", "summary.md", "fetch.log", "apply.log", "report.md"):
        assert (directory / name).is_file(), name
    assert (tmp_path / "out" / "junit.xml").read_text() == (directory / "junit.xml").read_text()
    assert "baseline recorded" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "args-0").read_text().split() == ["-t", "-oi"]
    assert (
        "Subject: [kvmple nightly] unit-job night night-1: baseline recorded"
        in (tmp_path / "mail-0").read_text()
    )

    # the same night again: nothing runs, nothing is mailed, same verdict
    calls = list(stand_ins.calls)
    again = run_night(loaded, "night-1")
    assert again.replayed and again.verdict.name == "baseline recorded"
    assert stand_ins.calls == calls
    assert not (tmp_path / "mail-1").exists()

    # the tree moves; night 2 fetches the new head and compares with night 1 (slower: -20%)
    (tree / "README").write_text("moved\n")
    git(tree, "add", "README")
    git(tree, "commit", "-q", "-m", "move the tree")
    stand_ins.scale = 0.8
    second = run_night(loaded, "night-2")
    assert second.state.need("fetch", FetchOutputs).commit != commit_1
    compare = second.state.step("compare").outputs
    assert compare["baseline_night"] == "night-1"
    assert compare["baseline_campaign"] == state.need("campaign", CampaignOutputs).campaign_id
    assert (second.verdict.name, second.exit_code) == ("regression", 20)
    junit = (second.directory / "junit.xml").read_text()
    assert "<failure" in junit and "step compare" in junit
    assert "regression" in (tmp_path / "mail-1").read_text()

    # night 3 (back to normal) compares with night 1, the last GOOD night, not night 2
    stand_ins.scale = 1.0
    third = run_night(loaded, "night-3")
    assert third.state.step("compare").outputs["baseline_night"] == "night-1"
    assert third.verdict.name in ("no change", "improvement", "inconclusive")


def test_apply_failure_stops_the_night_with_its_verdict(
    job: tuple[Path, Path, StandIns], tmp_path: Path
) -> None:
    config, tree, stand_ins = job
    make_series(tree, tmp_path / "series", broken=True)
    shown = Recorder()
    result = run_night(load_config(config), "bad", sink=shown)
    assert (result.verdict.name, result.exit_code) == ("apply failed", 10)
    # the person watching sees each step start and end, and the failure once, as a warning
    messages = shown.messages()
    assert messages[0].startswith("fetch: running (log ") and messages[1].startswith("fetch: done")
    assert [m for m in messages if m.startswith("warning:")] == [
        f"warning: apply failed: {result.state.step('apply').detail}"
    ]
    assert not any(m.startswith("build") for m in messages)
    state = result.state
    assert state.step("apply").status == "failed"
    assert "mark preempt" in state.step("apply").detail
    assert [state.step(s).status for s in ("build", "campaign", "compare")] == ["pending"] * 3
    assert stand_ins.calls == []
    assert git(tree, "status", "--porcelain").strip() == ""
    assert "kvmple/" not in git(tree, "branch", "--list")
    assert 'failures="1"' in (result.directory / "junit.xml").read_text()
    # replaying it gives the same verdict; --retry runs the failed step again (still broken)
    assert run_night(load_config(config), "bad").replayed
    retried = run_night(load_config(config), "bad", retry=True)
    assert retried.state.step("apply").attempts == 2 and retried.exit_code == 10


def test_interrupted_night_continues_where_it_stopped(job: tuple[Path, Path, StandIns]) -> None:
    config, _, stand_ins = job
    loaded = load_config(config)
    stand_ins.interrupt_build = True
    with pytest.raises(Interrupted) as caught:
        run_night(loaded, "n")
    assert "--night n" in str(caught.value.hint)
    state = load(night_dir("unit-job", "n"))
    assert state is not None and state.step("build").status == "pending"
    assert state.step("apply").status == "done"
    # a host crash mid-campaign: the state says "running"
    stand_ins.interrupt_build = False
    state.step("campaign").status = "running"
    state.step("campaign").attempts = 1
    state.step("campaign").outputs = {"first_started": 1.0}
    save(state, night_dir("unit-job", "n"))
    result = run_night(loaded, "n")
    assert result.verdict.name == "baseline recorded"
    assert result.state.step("fetch").attempts == 1  # not repeated
    assert result.state.step("apply").attempts == 1
    assert result.state.step("build").attempts == 2
    assert result.state.step("campaign").attempts == 2


def test_changed_config_and_concurrent_runs_are_refused(job: tuple[Path, Path, StandIns]) -> None:
    config, _, _ = job
    run_night(load_config(config), "n")
    config.write_text(config.read_text().replace("threshold: 2%", "threshold: 3%"))
    with pytest.raises(UsageError, match="changed since night n started"):
        run_night(load_config(config), "n")
    with (
        _exclusive(jobs_dir("unit-job"), "unit-job"),
        pytest.raises(UsageError, match="another kvmple process"),
    ):
        run_night(load_config(config), "m")


def test_fetch_variants(job: tuple[Path, Path, StandIns], tmp_path: Path) -> None:
    config, tree, _ = job
    base = git(tree, "rev-parse", "HEAD").strip()
    git(tree, "checkout", "-q", "-b", "other")
    (tree / "README").write_text("other\n")
    git(tree, "add", "README")
    git(tree, "commit", "-q", "-m", "other head")
    # ref main is not the checked-out HEAD: a cached clone is checked out at main
    result = run_night(load_config(config), "f1")
    source = result.state.need("fetch", FetchOutputs).source
    assert result.state.need("fetch", FetchOutputs).commit == base and source != tree
    assert git(source, "rev-parse", "HEAD").strip() == base
    assert result.verdict.name == "baseline recorded"
    # a git URL
    url_config = tmp_path / "url.yaml"
    url_config.write_text(
        config.read_text()
        .replace("name: unit-job", "name: url-job")
        .replace("tree: {path: linux, ref: main}", f"tree: {{url: 'file://{tree}', ref: other}}")
    )
    result = run_night(load_config(url_config), "u1")
    assert (
        result.state.need("fetch", FetchOutputs).commit == git(tree, "rev-parse", "other").strip()
    )
    # an unknown ref fails the fetch step
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        config.read_text()
        .replace("name: unit-job", "name: bad-job")
        .replace("ref: main", "ref: no-such-branch")
    )
    result = run_night(load_config(bad), "b1")
    assert result.verdict.name == "fetch failed" and result.exit_code == 3
    assert "no-such-branch" in result.state.step("fetch").detail


def test_cli_status_and_exit_code(
    job: tuple[Path, Path, StandIns], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = job
    assert main(["nightly", str(config), "--night", "c", "--status"]) == 0
    assert "has not started" in capsys.readouterr().out
    assert main(["nightly", str(config), "--night", "c"]) == 0
    out = capsys.readouterr().out
    assert "verdict: baseline recorded" in out and "install" in out
    assert main(["nightly", str(config), "--night", "c", "--status"]) == 0
    assert "baseline recorded" in capsys.readouterr().out
    assert main(["nightly", str(config), "--night", "../x"]) == 2


def test_a_campaign_cut_short_is_found_for_resuming(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path / 'r.sqlite'}"
    with open_store(db) as store:
        for campaign, host, created in (
            ("older", "h1", 100.0),
            ("other-host", "h2", 205.0),
            ("mine", "h1", 201.0),
        ):
            meta, _ = synthetic_campaign(campaign, runs_per_cell=1)
            meta = meta.model_copy(
                update={"host": {"hostname": host}, "created": created, "name": "mini"}
            )
            store.create_campaign(meta)
        found = campaign_steps.find_started_campaign(store, "mini", "h1", since=200.0)
        assert found is not None and found.id == "mine"
        assert campaign_steps.find_started_campaign(store, "mini", "h1", since=300.0) is None
        assert campaign_steps.find_started_campaign(store, "other", "h1", since=0.0) is None
