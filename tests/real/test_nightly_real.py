"""Real tier: two nights of a nightly job in a row on a real moving git kernel tree.

Night 1: fetch (the branch head) -> apply kvmple-selftest (git am into a worktree) -> build
(tinyconfig + kvm_guest.config + kvmple-boot, ccache) -> boot test under QEMU TCG (the
patched console line) -> install skipped (no VT-x: not verified on hardware) -> the
nightly-mini campaign through real libvirt/SSH/RabbitMQ -> "baseline recorded".
Re-running night 1 changes nothing. The tree moves by one commit; night 2 fetches the new
head, goes through every step again and compares its campaign with night 1's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmple.nightly.state import STEPS
from kvmple.results import open_store
from tests.real.nightly_tree import TARBALL, cached_git_tree, git, move_tree, reset_branch
from tests.support import need, need_program, need_root

pytestmark = [
    pytest.mark.real,
    pytest.mark.slow,
    pytest.mark.timeout(7200),
]

ROOT = Path(__file__).resolve().parents[2]
KVMPLE = [sys.executable, "-m", "kvmple.cli"]
SELFTEST_LINE = "kvmple-selftest: patched kernel reached kernel_init"
BRANCH = "nightly-test"


def _night(config: Path, night: str, log: Path) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = subprocess.run(
        [*KVMPLE, "nightly", str(config), "--night", night],
        capture_output=True,
        text=True,
        timeout=3600,  # a loaded 2-CPU host took >40 min for a cold build
        cwd=ROOT,
        check=False,
    )
    with log.open("a") as handle:
        handle.write(
            f"=== {night}: exit {done.returncode} after {time.monotonic() - started:.0f}s\n"
        )
        handle.write(done.stdout + done.stderr)
    return done


def _state(data: Path, night: str) -> dict:  # type: ignore[type-arg]
    return json.loads((data / "nightly" / "nightly-real" / night / "state.json").read_text())


def _timings(state: dict) -> str:  # type: ignore[type-arg]
    return ", ".join(f"{name} {step['seconds']}s" for name, step in state["steps"].items())


def test_two_nights_in_a_row_compare_the_second_with_the_first(
    shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_root()
    need(TARBALL.is_file(), f"{TARBALL} missing (apt-get install linux-source-6.1)")
    for program in ("git", "make", "gcc", "flex", "bison", "bc", "qemu-system-x86_64", "virsh"):
        need_program(program)
    need(
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "uri"], check=False, capture_output=True, timeout=30
        ).returncode
        == 0,
        "libvirtd is not answering on qemu:///system (scripts/setup-host.sh starts it)",
    )
    repo = cached_git_tree(shared_cache)
    base = reset_branch(repo, BRANCH)
    data = tmp_path / "data"
    monkeypatch.setenv("KVMPLE_DATA_DIR", str(data))
    monkeypatch.delenv("KVMPLE_HOSTNAME", raising=False)
    db = f"sqlite://{tmp_path / 'results.sqlite'}"
    sendmail = tmp_path / "fake-sendmail"
    sendmail.write_text(
        '#!/bin/sh\nn=$(ls "$(dirname "$0")"/mail-* 2>/dev/null | wc -l)\n'
        'cat > "$(dirname "$0")/mail-$n"\n'
    )
    sendmail.chmod(0o755)
    config = tmp_path / "nightly.yaml"
    config.write_text(
        "name: nightly-real\n"
        f"tree: {{path: {repo}, ref: {BRANCH}}}\n"
        "series: kvmple-selftest\n"
        f"kernel: {{boot_accel: tcg, expect_lines: ['{SELFTEST_LINE}']}}\n"
        f"playbook: {ROOT / 'playbooks' / 'nightly-mini.yaml'}\n"
        "allow_unavailable: true\n"
        f"store: {db}\n"
        "threshold: 2%\n"
        "notify:\n  junit: out/junit.xml\n  markdown: out/summary.md\n"
        "  email: {to: [kvm-lab@example.org], sendmail: fake-sendmail}\n"
    )
    log = tmp_path / "nights.log"

    # night 1: every step for real, then the baseline
    done = _night(config, "night-1", log)
    assert done.returncode == 0, log.read_text()[-4000:]
    one = _state(data, "night-1")
    print(f"\nnight 1: {_timings(one)}")
    steps = one["steps"]
    assert steps["fetch"]["outputs"]["commit"] == base
    assert steps["apply"]["outputs"]["counts"] == {"applied": 2}
    release = steps["build"]["outputs"]["release"]
    # kbuild appends "+" to a release built from a git tree not at a tag
    assert release.startswith("6.1.") and "-kvmple-selftest" in release
    assert steps["boot-test"]["outputs"]["release"] == release
    assert (Path(steps["build"]["outputs"]["kept"]) / "bzImage").is_file()  # the night's kernel
    assert steps["boot-test"]["outputs"]["accel"] == "tcg"
    assert steps["install"]["status"] == "skipped"
    assert "not verified on hardware / no VT-x host" in steps["install"]["detail"]
    assert steps["install"]["outputs"]["plan"]  # what it would have done
    assert steps["campaign"]["outputs"]["ok"] == 4  # 2 cells (PLE unavailable) x 2 runs
    assert steps["campaign"]["outputs"]["kernel_under_test"] == release
    assert one["verdict"] == "baseline recorded" and one["exit_code"] == 0
    junit = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    names = [case.get("name") for case in junit.iter("testcase")]
    assert names[:7] == [f"step {s}" for s in STEPS]  # pipeline order (state.json sorts keys)
    assert any(str(n).startswith("runs ") for n in names[7:])  # the campaign's cells
    assert "baseline recorded" in (tmp_path / "mail-0").read_text()
    assert not Path(steps["apply"]["outputs"]["worktree"]).exists()  # removed after the night

    # the same night again: idempotent
    with open_store(db) as store:
        campaigns = len(store.campaigns())
    done = _night(config, "night-1", log)
    assert done.returncode == 0 and "already finished" in done.stderr
    assert _state(data, "night-1") == one
    with open_store(db) as store:
        assert len(store.campaigns()) == campaigns
    assert not (tmp_path / "mail-1").exists()

    # the tree moves; night 2 validates the new head against night 1
    head = move_tree(repo, "nightly test: the tree moves")
    done = _night(config, "night-2", log)
    two = _state(data, "night-2")
    print(f"night 2: {_timings(two)}\nnight 2 verdict: {two['summary']}")
    codes = {"no change": 0, "improvement": 0, "regression": 20, "inconclusive": 21}
    assert two["verdict"] in codes, log.read_text()[-4000:]
    assert done.returncode == codes[two["verdict"]] == two["exit_code"]
    steps = two["steps"]
    assert steps["fetch"]["outputs"]["commit"] == head != base
    assert steps["build"]["outputs"]["release"] == release
    compare = steps["compare"]["outputs"]
    assert compare["baseline_night"] == "night-1"
    assert compare["baseline_campaign"] == one["steps"]["campaign"]["outputs"]["campaign_id"]
    assert compare["candidate"] == steps["campaign"]["outputs"]["campaign_id"]
    assert len(compare["cell_verdicts"]) == 2
    junit_two = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert len(list(junit_two.iter("testcase"))) == 7 + 2
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"**Verdict: {two['verdict']}**" in summary and compare["baseline_campaign"] in summary
    assert "kvmple/linux-nightly-real" not in git(repo, "branch", "--list")  # removed
