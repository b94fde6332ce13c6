"""``kvmple kernel ...`` through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.cli import main
from tests.unit.kernel_fake_tree import make_series, make_tree, snapshot


def test_series_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernel", "series", "list"]) == 0
    listing = capsys.readouterr().out
    assert "yield-to-ple-v7" in listing and "7 patches" in listing
    assert main(["kernel", "series", "show", "yield-to-ple-v7"]) == 0
    shown = capsys.readouterr().out
    assert "landed in  v2.6.39" in shown
    assert "sched: Add yield_to(task, preempt) functionality" in shown
    assert "d95f41220065 (verified)" in shown and "725e7580f7e5 (unverified)" in shown


def test_series_show_against_a_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_tree(tmp_path / "linux", (6, 1, 0))
    assert main(["kernel", "series", "show", "yield-to-ple-v7", "--tree", str(tree)]) == 0
    assert "IN TREE: tree 6.1.0 >= landed_in v2.6.39" in capsys.readouterr().out


def test_unknown_series_is_one_line_exit_10(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernel", "series", "show", "nope"]) == 10
    err = capsys.readouterr().err
    assert err.startswith("kvmple: error: unknown series 'nope'")
    assert "Traceback" not in err


def test_apply_failure_exit_code_and_tree_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series", broken=True)
    before = snapshot(tree)
    code = main(["kernel", "apply", "--tree", str(tree), "--series", str(folder)])
    assert code == 10
    err = capsys.readouterr().err
    assert "patch 2 0002-mark-preempt.patch" in err and "hunk #2" in err
    assert "tree was left as it was" in err
    assert snapshot(tree) == before


def test_apply_check_lists_every_patch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series", broken=True)
    code = main(["kernel", "apply", "--tree", str(tree), "--series", str(folder), "--check"])
    captured = capsys.readouterr()
    assert code == 10
    assert "[applied] sched: count yields" in captured.out
    assert "[does not apply] sched: mark preempt" in captured.out


def test_apply_yield_to_on_a_new_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "linux", (6, 1, 0))
    assert main(["kernel", "apply", "--tree", str(tree), "--series", "yield-to-ple-v7"]) == 0
    out = capsys.readouterr().out
    assert out.count("[already upstream]") == 7
    assert "already upstream in this tree: nothing to apply, nothing created" in out


def test_boot_test_without_a_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernel", "boot-test", "--build", str(tmp_path)]) == 9
    assert "no finished kernel build here" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("image", "why"),
    [("nope/bzImage", "is not an absolute path"), ("/no/bzImage", "does not exist")],
)
def test_boot_test_of_a_manifest_whose_image_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], image: str, why: str
) -> None:
    manifest = tmp_path / "kvmple-build.json"
    manifest.write_text(f'{{"release": "6.1.0", "image": "{image}", "image_sha256": "aa"}}')
    assert main(["kernel", "boot-test", "--build", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert f"{manifest}: image: {image} {why}" in err and "Traceback" not in err


def test_install_refuses_without_boot_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "kvmple-build.json").write_text(
        '{"release": "6.1.0", "image": "/x", "image_sha256": "aa", "config": "/c"}'
    )
    code = main(["kernel", "install", "--build", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 4
    assert "no passed boot test" in err or "must run as root" in err
