"""Module boundaries, checked on the source (avocado's modules-boundaries idea).

- only kvmple/vm/libvirt_backend.py imports libvirt
- only kvmple/remote.py imports paramiko; nothing imports fabric or invoke
- only kvmple/kernel/mailseries.py imports b4
- only kvmple/run.py imports subprocess (the one local-process chokepoint)
- run.py and errors.py import nothing of kvmple but errors (and run.py the pump), pump.py
  nothing of kvmple
- nobody passes shell=True, calls os.system/os.popen, or uses yaml.load without SafeLoader
- the layers of ../shared/ARCHITECTURE.md hold: each package imports only from its own layer
  or the layers below (TYPE_CHECKING imports included), with no import cycle between
  packages or between modules
- imports inside functions only in kvmple/commands/ (start-up time); elsewhere at the top or
  under TYPE_CHECKING, and nothing imports by name at run time except cli.py's
  COMMAND_MODULES, which this test reads and checks like any other import
- nothing in kvmple imports the tests (fixtures live in tests/fixtures/)
- only commands/ (and cli.py) draw: nothing else imports kvmple.ui or rich; the library
  reports through kvmple.events and commands/ hands it a ui.Renderer
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "kvmple").rglob("*.py"))

ONLY = {
    "libvirt": {"kvmple/vm/libvirt_backend.py"},
    "paramiko": {"kvmple/remote.py"},
    # fabric/invoke are not dependencies (kvmple.pump is the one loop): nobody imports them
    "fabric": set(),
    "invoke": set(),
    # kvmple-perftest --external runs qpid-perftest in the guest, where kvmple.run is not
    "subprocess": {"kvmple/run.py", "kvmple/guest/kvmple_guest/perftest.py"},
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
            assert name in {"kvmple.errors", "kvmple.pump"}, f"{rel} must not import {name}"
        if rel == "kvmple/pump.py":
            assert top != "kvmple", f"{rel} must not import {name}"


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


# --- layers, cycles and lazy imports ---------------------------------------------------------

# ../shared/ARCHITECTURE.md, bottom to top. A unit is a package under kvmple/ or a module
# directly in it; each may import its own layer and the layers below.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "foundation",
        frozenset(
            {
                "__init__",
                "errors",
                "pump",
                "run",
                "paths",
                "fsutil",
                "executor",
                "remote",
                "sshchannel",
            }
            | {"keys", "ui", "events", "qemu", "qemuopts", "config", "console"}
        ),
    ),
    ("host", frozenset({"host"})),
    ("resources", frozenset({"image", "kernel", "vm"})),
    ("workloads", frozenset({"workloads", "guest"})),
    ("engine", frozenset({"campaign", "results"})),
    ("front ends", frozenset({"nightly", "fleet", "lab"})),
    ("commands", frozenset({"commands", "cli"})),
)
LEVEL = {unit: level for level, (_, units) in enumerate(LAYERS) for unit in units}

# Lazy imports that stay, each with its reason.
LAZY_ALLOWED: dict[tuple[str, str], str] = {
    # an optional dependency (kvmple[postgres]) that costs ~1 s to import: only a
    # postgresql:// store pays for it
    ("kvmple/results/db.py", "psycopg"): "optional dependency, imported on use",
    # the guest's python3-amqp: kvmple-perftest's --help, --version and option errors work
    # in a guest without it
    ("kvmple/guest/kvmple_guest/perftest_amqp.py", "amqp"): "guest dependency, imported on use",
}
MODULE_CYCLES_ALLOWED: set[frozenset[str]] = set()


@dataclass(frozen=True)
class Import:
    module: str  # what is imported: "kvmple.vm.spec", "os", or "kvmple.vm.spec.VMSpec"
    line: int
    in_function: bool
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SOURCES}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_targets(call: ast.Call, tree: ast.Module) -> list[str] | None:
    """Modules an ``importlib.import_module(...)`` call loads (None: not such a call).

    Understood: a string constant, and the form cli.py uses (an f-string
    "kvmple.commands.{name}" over a loop variable of a module-level tuple of string
    constants); anything else is unreadable here, hence refused by test_imports_are_visible.
    """
    func = call.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr == "import_module"
        and isinstance(func.value, ast.Name)
        and func.value.id == "importlib"
    ) and not (isinstance(func, ast.Name) and func.id == "__import__"):
        return None
    arg = call.args[0] if call.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if not isinstance(arg, ast.JoinedStr) or len(arg.values) != 2:
        return []
    prefix, value = arg.values
    if not (isinstance(prefix, ast.Constant) and isinstance(value, ast.FormattedValue)):
        return []
    if not isinstance(value.value, ast.Name):
        return []
    for loop in ast.walk(tree):
        if (
            isinstance(loop, ast.For)
            and isinstance(loop.target, ast.Name)
            and loop.target.id == value.value.id
            and isinstance(loop.iter, ast.Name)
        ):
            names = _constant_tuple(tree, loop.iter.id)
            if names is not None:
                return [f"{prefix.value}{name}" for name in names]
    return []


def _constant_tuple(tree: ast.Module, name: str) -> list[str] | None:
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id == name and isinstance(value, ast.Tuple):
            items = [e.value for e in value.elts if isinstance(e, ast.Constant)]
            if len(items) == len(value.elts) and all(isinstance(i, str) for i in items):
                return [str(i) for i in items]
    return None


def _scan(tree: ast.Module) -> Iterator[Import]:
    """Every import of a module, with where it happens (dynamic ones as cli.py does them)."""

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            func = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            tc = type_checking or (isinstance(child, ast.If) and _is_type_checking(child))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(alias.name, child.lineno, func, tc)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # one entry per name: "from kvmple.image import cache" imports a module
                for alias in child.names:
                    yield Import(f"{child.module}.{alias.name}", child.lineno, func, tc)
            elif isinstance(child, ast.Call):
                targets = _dynamic_targets(child, tree)
                for target in targets or ():
                    yield Import(target, child.lineno, func, tc)
            yield from visit(child, func, tc)

    yield from visit(tree, False, False)


def _kvmple_module(name: str) -> str | None:
    """The kvmple module ``name`` is or names an attribute of (None: not kvmple's)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _edges(
    runtime_only: bool = True,
) -> dict[str, dict[str, tuple[str, int]]]:
    """Module -> imported kvmple module -> (file, line) of one such import."""
    graph: dict[str, dict[str, tuple[str, int]]] = {}
    for module, path in MODULES.items():
        out = graph.setdefault(module, {})
        for imp in _scan(_tree(path)):
            target = _kvmple_module(imp.module)
            if target is None or target == module or (runtime_only and imp.type_checking):
                continue
            out.setdefault(target, (_rel(path), imp.line))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in MODULES}
    assert units <= set(LEVEL), f"add to LAYERS: {sorted(units - set(LEVEL))}"


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_layers(path: Path) -> None:
    """Import only from the same layer or below (TYPE_CHECKING imports too: a type from
    above is a dependency on above)."""
    source = _unit(_module_name(path))
    for imp in _scan(_tree(path)):
        if imp.module.split(".")[0] == "tests":
            pytest.fail(f"{_rel(path)}:{imp.line}: imports the tests ({imp.module})")
        target = _kvmple_module(imp.module)
        if target is None:
            continue
        unit = _unit(target)
        assert LEVEL[unit] <= LEVEL[source], (
            f"{_rel(path)}:{imp.line}: {source} ({LAYERS[LEVEL[source]][0]}) imports "
            f"{imp.module} ({LAYERS[LEVEL[unit]][0]}): layers import only downward"
        )


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_lazy_imports_only_in_commands(path: Path) -> None:
    rel = _rel(path)
    if rel.startswith("kvmple/commands/") or rel == "kvmple/cli.py":
        return
    for imp in _scan(_tree(path)):
        if imp.in_function and (rel, imp.module) not in LAZY_ALLOWED:
            top = _kvmple_module(imp.module) or imp.module
            if (rel, top) in LAZY_ALLOWED:
                continue
            pytest.fail(
                f"{rel}:{imp.line}: imports {imp.module} inside a function: import it at the "
                "top (or under TYPE_CHECKING); a lazy import that breaks a cycle hides a "
                "layering problem to fix"
            )


def test_lazy_allow_list_is_current() -> None:
    """Each allowed lazy import still exists (a fixed one leaves the list)."""
    lazy = {
        (_rel(path), _kvmple_module(imp.module) or imp.module)
        for path in SOURCES
        for imp in _scan(_tree(path))
        if imp.in_function
    }
    assert set(LAZY_ALLOWED) <= lazy, sorted(set(LAZY_ALLOWED) - lazy)


def test_no_cycle_between_packages() -> None:
    units: dict[str, set[str]] = {}
    where: dict[tuple[str, str], tuple[str, int]] = {}
    # cli.py is the dispatcher of commands/ (the in-lab program commands/lab_inner.py calls
    # it as a user would): one front-end package, not two
    merged = {"cli": "commands"}
    for module, targets in _edges().items():
        for target, place in targets.items():
            a, b = _unit(module), _unit(target)
            a, b = merged.get(a, a), merged.get(b, b)
            if a != b:
                units.setdefault(a, set()).add(b)
                where.setdefault((a, b), place)
    problems = []
    for cycle in _cycles(units):
        hops = [f"{a}->{b} ({where[a, b][0]}:{where[a, b][1]})" for a in cycle for b in units[a]]
        problems.append(", ".join(hop for hop in hops if hop.split("->")[1].split()[0] in cycle))
    assert not problems, "import cycles between packages: " + "; ".join(problems)


def test_no_cycle_between_modules() -> None:
    """Lazy imports count: one inside a function is still a cycle, only a hidden one.

    ``from kvmple.image import cache`` depends on kvmple.image.cache, not on the package's
    ``__init__`` (Python runs that first for every import in the package)."""
    graph = {m: set(targets) for m, targets in _edges().items()}
    cycles = [c for c in _cycles(graph) if c not in MODULE_CYCLES_ALLOWED]
    assert not cycles, f"import cycles between modules: {[sorted(c) for c in cycles]}"


def test_imports_are_visible() -> None:
    """No import by name at run time except cli.py's COMMAND_MODULES, which the other tests
    read; each of those modules exists and every command module (one with register()) is
    listed."""
    for path in SOURCES:
        tree = _tree(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                targets = _dynamic_targets(node, tree)
                assert targets is None or targets, (
                    f"{_rel(path)}:{node.lineno}: an import this test cannot read"
                )
                allowed = (_rel(path), targets[0] if targets else "") in LAZY_ALLOWED
                if targets and _rel(path) != "kvmple/cli.py" and not allowed:
                    pytest.fail(f"{_rel(path)}:{node.lineno}: import by name outside cli.py")
    cli = [imp.module for imp in _scan(_tree(ROOT / "kvmple/cli.py")) if "commands." in imp.module]
    commands = {  # a module of commands/ with register() is a subcommand; others are helpers
        _module_name(p)
        for p in SOURCES
        if p.parent.name == "commands" and "def register(" in p.read_text()
    }
    assert set(cli) == commands


def test_layer_checker_catches_upward_imports_and_cycles() -> None:
    tree = ast.parse(
        "from kvmple.vm.spec import VMSpec\n"
        "def f():\n    import kvmple.campaign.plan\n"
        "COMMAND_MODULES = ('run',)\n"
        "for name in COMMAND_MODULES:\n    importlib.import_module(f'kvmple.commands.{name}')\n"
    )
    found = {(i.module, i.in_function) for i in _scan(tree)}
    assert ("kvmple.vm.spec.VMSpec", False) in found
    assert ("kvmple.campaign.plan", True) in found
    assert ("kvmple.commands.run", False) in found
    assert _kvmple_module("kvmple.vm.spec.VMSpec") == "kvmple.vm.spec"
    assert LEVEL[_unit("kvmple.vm.spec")] > LEVEL[_unit("kvmple.host.vms")]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_domain_prefix_is_one_value() -> None:
    """host/vms.py keeps its own copy of the prefix so the host layer need not import vm/."""
    from kvmple.host.vms import KVMPLE_PREFIX
    from kvmple.vm.spec import DOMAIN_PREFIX

    assert KVMPLE_PREFIX == DOMAIN_PREFIX


# --- the library reports, the front end draws ---------------------------------------------

DRAWS = ("kvmple.ui", "rich")


def _draws(rel: str) -> bool:
    return rel.startswith("kvmple/commands/") or rel in {"kvmple/cli.py", "kvmple/ui.py"}


def _drawing_imports(tree: ast.Module) -> list[Import]:
    return [
        imp
        for imp in _scan(tree)
        if any(imp.module == d or imp.module.startswith(f"{d}.") for d in DRAWS)
    ]


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_only_commands_draw(path: Path) -> None:
    """kvmple.ui and rich are for commands/: engine code emits kvmple.events instead."""
    rel = _rel(path)
    if _draws(rel):
        return
    for imp in _drawing_imports(_tree(path)):
        pytest.fail(
            f"{rel}:{imp.line}: imports {imp.module}: only commands/ draws; emit "
            "kvmple.events (Note, Warn, progress) to a sink the command passes in"
        )


def test_drawing_checker_sees_every_form() -> None:
    tree = ast.parse("from kvmple import ui\nimport kvmple.ui\nfrom kvmple.ui import warn\n")
    assert [i.module for i in _drawing_imports(tree)] == [
        "kvmple.ui",
        "kvmple.ui",
        "kvmple.ui.warn",
    ]
    assert not _drawing_imports(ast.parse("from kvmple import events\n"))
