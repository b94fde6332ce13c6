"""What a guest gets for kvmple's guest programs: the executables and the kvmple_guest package.

The image step (configure._guest_programs), the image cache key and the run-time copy
(ensure_programs) all use kvmple.image.guestfiles.shipped; here the list is built, copied
into a tree as the image step does, and the copied programs run from there with nothing but
the standard library (``python -S``: no site-packages, so no kvmple and no amqp).
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from kvmple.executor import LocalExecutor
from kvmple.guest.kvmple_guest import protocol
from kvmple.image import cache, configure
from kvmple.image.guestfiles import (
    GUEST_BIN,
    MODULE_MODE,
    PACKAGE,
    PROGRAM_MODE,
    guest_dir,
    programs,
    shipped,
)
from kvmple.image.recipe import Recipe
from kvmple.run import run
from kvmple.workloads.programs import PROGRAMS, ensure_programs

MODULES = sorted(p.name for p in (guest_dir() / PACKAGE).glob("*.py"))


def test_the_programs_and_their_modules() -> None:
    assert programs() == PROGRAMS == ("kvmple-perftest", "kvmple-spin")
    assert {"__init__.py", "protocol.py", "spin.py", "perftest.py"} <= set(MODULES)
    files = shipped(["kvmple-spin"])
    assert [f.relative for f in files] == [f"{PACKAGE}/{m}" for m in MODULES] + ["kvmple-spin"]
    assert {f.mode for f in files if f.relative.startswith(PACKAGE)} == {MODULE_MODE}
    assert files[-1].mode == PROGRAM_MODE
    for spec in files:
        assert spec.source == guest_dir() / spec.relative and spec.source.is_file()
    both = [f.relative for f in shipped([*PROGRAMS, "kvmple-spin"])]
    assert both[-2:] == list(PROGRAMS) and len(both) == len(set(both))  # package once
    assert shipped([]) == []
    with pytest.raises(KeyError, match="kvmple-nope"):
        shipped(["kvmple-spin", "kvmple-nope"])


def test_no_cache_file_is_shipped(tmp_path: Path) -> None:
    """Running the programs on the host leaves __pycache__ next to them: never shipped."""
    stray = guest_dir() / PACKAGE / "__pycache__"
    existed = stray.exists()
    stray.mkdir(exist_ok=True)
    try:
        assert not [f for f in shipped(PROGRAMS) if "__pycache__" in f.relative]
    finally:
        if not existed:
            stray.rmdir()


def _copy_as_the_image_step(tmp_path: Path, names: tuple[str, ...]) -> Path:
    tree = tmp_path / "tree"
    configure._guest_programs(Recipe(name="x", guest_programs=names), tree)
    return tree / GUEST_BIN.lstrip("/")


def test_image_step_copies_the_list_and_the_copy_runs_alone(tmp_path: Path) -> None:
    bin_dir = _copy_as_the_image_step(tmp_path, PROGRAMS)
    found = sorted(str(p.relative_to(bin_dir)) for p in bin_dir.rglob("*") if p.is_file())
    assert found == sorted(f.relative for f in shipped(PROGRAMS))
    for spec in shipped(PROGRAMS):
        copied = bin_dir / spec.relative
        assert copied.read_bytes() == spec.source.read_bytes()
        assert copied.stat().st_mode & 0o777 == spec.mode
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    for name in PROGRAMS:
        result = run(
            [sys.executable, "-S", str(bin_dir / name), "--version"],
            timeout=60,
            check=False,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{name} {protocol.VERSION}"
    # a real run of the copy, stdlib only: kvmple-spin's status over an empty state file
    state = tmp_path / "spin.json"
    result = run(
        [
            sys.executable,
            "-S",
            str(bin_dir / "kvmple-spin"),
            f"--state={state}",
            "status",
            "--sample=0.01",
        ],
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == protocol.SpinExit.OK, result.stderr
    assert '"loops": []' in result.stdout


def test_perftest_copy_fails_like_the_original(tmp_path: Path) -> None:
    """Bad options: exit USAGE and one argparse line; no amqp needed to say so."""
    bin_dir = _copy_as_the_image_step(tmp_path, ("kvmple-perftest",))
    result = run(
        [sys.executable, "-S", str(bin_dir / "kvmple-perftest"), "--count", "-1"],
        timeout=60,
        check=False,
    )
    assert result.returncode == protocol.PerftestExit.USAGE
    assert "Traceback" not in result.stderr
    assert "kvmple-perftest: error: argument --count" in result.stderr


def test_cache_key_covers_every_shipped_file() -> None:
    recipe = Recipe(name="x", guest_programs=("kvmple-spin",))
    inputs = cache.key_inputs(recipe, "http://m", "ssh-ed25519 AAAA")
    covered = inputs["recipe"]["guest_programs"]
    assert sorted(covered) == sorted(f.relative for f in shipped(["kvmple-spin"]))
    assert covered[f"{PACKAGE}/protocol.py"] == cache.file_digest(
        guest_dir() / PACKAGE / "protocol.py"
    )
    without = cache.key_inputs(Recipe(name="x"), "http://m", "ssh-ed25519 AAAA")
    assert without["recipe"]["guest_programs"] == {}


def test_run_time_copy_follows_the_package(tmp_path: Path) -> None:
    """A changed module counts for every program that imports it."""
    executor = LocalExecutor()
    bin_dir = str(tmp_path / "bin")
    assert ensure_programs(executor, bin_dir=bin_dir) == list(PROGRAMS)
    assert ensure_programs(executor, bin_dir=bin_dir) == []
    (Path(bin_dir) / PACKAGE / "protocol.py").write_text("stale\n")
    assert ensure_programs(executor, ["kvmple-spin"], bin_dir=bin_dir) == ["kvmple-spin"]
    assert ensure_programs(executor, bin_dir=bin_dir) == []
    (Path(bin_dir) / PACKAGE / "spin.py").unlink()
    assert ensure_programs(executor, bin_dir=bin_dir) == list(PROGRAMS)


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


@pytest.mark.parametrize("relative", [f.relative for f in shipped(PROGRAMS)])
def test_guest_code_uses_only_stdlib_amqp_and_its_own_package(relative: str) -> None:
    """The guest has python3 + python3-amqp only: no kvmple, no third-party imports; the
    package imports itself relatively (it is ``kvmple_guest`` in a guest)."""
    source = (guest_dir() / relative).read_text()
    allowed = set(sys.stdlib_module_names) | {"amqp"}
    for level, name in _imports(ast.parse(source)):
        top = name.split(".")[0]
        if relative.startswith(PACKAGE):
            assert level == 1 or top in allowed, f"{relative} imports {name}"
        else:
            assert source.startswith("#!/usr/bin/python3\n")
            assert top in allowed | {PACKAGE}, f"{relative} imports {name}"
