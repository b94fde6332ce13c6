"""Module boundaries, checked on the source (avocado's modules-boundaries idea).

- only kvmple/vm/libvirt_backend.py imports libvirt
- only kvmple/remote.py imports fabric or paramiko
- only kvmple/kernel/mailseries.py imports b4
- only kvmple/run.py imports subprocess (the one local-process chokepoint)
- run.py and errors.py import nothing of kvmple but errors
- nobody passes shell=True, calls os.system/os.popen, or uses yaml.load without SafeLoader
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "kvmple").rglob("*.py"))

ONLY = {
    "libvirt": {"kvmple/vm/libvirt_backend.py"},
    "fabric": {"kvmple/remote.py"},
    "paramiko": {"kvmple/remote.py"},
    "invoke": {"kvmple/remote.py"},
    "subprocess": {"kvmple/run.py"},
    "b4": {"kvmple/kernel/mailseries.py"},
}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_sources_found() -> None:
    assert len(SOURCES) > 5


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_module_boundaries(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = _rel(path)
    for name in _imports(tree):
        top = name.split(".")[0]
        allowed = ONLY.get(top)
        assert allowed is None or rel in allowed, (
            f"{rel} imports {name}; only {sorted(allowed)} may"
        )
        if rel in {"kvmple/run.py", "kvmple/errors.py"} and top == "kvmple":
            assert name == "kvmple.errors", f"{rel} must not import {name}"


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_shell(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell":
                assert isinstance(kw.value, ast.Constant) and kw.value.value is False, (
                    f"{_rel(path)}:{node.lineno}: shell= must not be used"
                )
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            dotted = f"{func.value.id}.{func.attr}"
            assert dotted not in {"os.system", "os.popen", "yaml.load", "yaml.unsafe_load"}, (
                f"{_rel(path)}:{node.lineno}: {dotted} is forbidden"
            )


def test_boundary_checker_catches_violations(tmp_path: Path) -> None:
    bad = "import subprocess\nsubprocess.run('ls', shell=True)\nimport os\nos.system('ls')\n"
    tree = ast.parse(bad)
    assert "subprocess" in _imports(tree)
    shell_calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and any(k.arg == "shell" for k in n.keywords)
    ]
    assert shell_calls
