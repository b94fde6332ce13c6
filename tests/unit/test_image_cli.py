"""`kvmple image ...` on bad input: one line, a hint, a distinct exit code, nothing left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmple import cli
from kvmple.image import cache
from tests.unit.test_image_cache import fake_complete_entry


def test_build_missing_recipe_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli.main(["image", "build", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith(f"kvmple: error: {tmp_path / 'nope.yaml'}: no such recipe file")
    assert "Traceback" not in err


def test_build_unknown_recipe_name(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["image", "build", "no-such-image"])
    err = capsys.readouterr().err
    assert code == 3
    assert "no image recipe named 'no-such-image'" in err and "hint:" in err


def test_build_invalid_recipe(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\npackages: [vim, 'a b']\n")
    code = cli.main(["image", "build", str(recipe)])
    err = capsys.readouterr().err.splitlines()
    assert code == 3
    assert err[0] == (f"kvmple: error: {recipe}:2: packages.1: not a Debian package name: 'a b'")
    assert cache.entries() == [] and not list(cache.images_dir().glob(".build-*"))


def test_list_empty_then_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["image", "list"]) == 0
    assert "no cached images" in capsys.readouterr().err
    fake_complete_entry("alpha", "a1" * 32)
    assert cli.main(["image", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["name"] == "alpha" and row["key"] == "a1" * 32
    assert cli.main(["image", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NAME", "KEY", "BUILT"]
    assert table[1].split()[:2] == ["alpha", "a1" * 8]


def test_rm(capsys: pytest.CaptureFixture[str]) -> None:
    directory = fake_complete_entry("alpha", "a1" * 32)
    assert cli.main(["image", "rm", "alpha"]) == 0
    assert not directory.exists()
    assert cli.main(["image", "rm", "alpha"]) == 2
    assert "no cached image matches 'alpha'" in capsys.readouterr().err


def test_list_and_rm_booted_snapshots(capsys: pytest.CaptureFixture[str]) -> None:
    from kvmple.vm import snapcache

    key = "ab12cd" + "0" * 58
    stage = snapcache.staging(key)
    (stage / snapcache.MEMORY).write_bytes(b"m" * 1000)
    (stage / snapcache.DISK).write_bytes(b"d")
    fields = {"image": "debian12-amqp", "vcpus": 2, "memory_mib": 1536, "readiness": "ssh+broker"}
    snapcache.publish(stage, key, fields)
    assert cli.main(["image", "list"]) == 0
    out = capsys.readouterr()
    assert "1 booted snapshot(s)" in out.err
    assert "snapshot ab12cd000000  debian12-amqp 2 vCPU 1536 MiB" in out.out
    assert cli.main(["image", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows if r.get("snapshot")] == [key]
    assert cli.main(["image", "rm", "ab12cd"]) == 0
    assert f"removed snapshot {key}" in capsys.readouterr().err
    assert snapcache.entries() == []
