"""Install kvmple itself (this checkout) into an image, offline: the recipe key ``kvmple_venv``.

Guests have no network, so the wheels are built on the host (``pip wheel`` of the checkout:
kvmple plus every dependency; libvirt-python compiles against the host's libvirt-dev, and
host and image are the same Debian release, so the same Python ABI and libvirt soname) into
a content-addressed wheelhouse under ``cache_dir()/wheelhouse/``. The build then creates the
venv inside the tree (``chroot python3 -m venv``) and installs from the copied wheels with
``pip --no-index``. The image's cache key covers ``dependencies_digest`` (pyproject's deps),
not kvmple's own source: rebuilding a lab host image (~15 min) for every commit would be
too slow, so ``kvmple lab up`` installs the current checkout's kvmple wheel (``kvmple_wheel``,
pure Python, no dependencies) into the running machine instead. Measured here: the
wheelhouse (87 MiB, 37 wheels) takes ~9 s with a warm pip cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path

from kvmple import paths
from kvmple.errors import BuildError
from kvmple.run import run, run_logged

WHEEL_DIR_IN_TREE = "/tmp/kvmple-wheels"
# What the installed package is made of: a change here must change the image.
_SOURCE_GLOBS = ("pyproject.toml", "kvmple/**/*")


def checkout() -> Path:
    """The source checkout kvmple runs from; BuildError when kvmple is installed elsewhere."""
    root = paths.project_root()
    if root is None:
        raise BuildError(
            "recipe key kvmple_venv needs kvmple's source checkout (pyproject.toml not found)",
            hint="run 'kvmple image build' from a checkout (pip install -e .)",
        )
    return root


def source_digest(root: Path) -> str:
    """sha256 over the relative paths and contents of the package sources (no caches)."""
    digest = hashlib.sha256()
    files = sorted(
        {p for pattern in _SOURCE_GLOBS for p in root.glob(pattern) if p.is_file()}
        - {p for p in root.glob("kvmple/**/*") if "__pycache__" in p.parts}
    )
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def dependencies_digest(root: Path) -> str:
    """sha256 of pyproject.toml's [project] dependencies and requires-python: what decides
    the set baked into an image (a changed tool setting or marker does not rebuild it)."""
    with (root / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle).get("project", {})
    wanted = {k: project.get(k) for k in ("dependencies", "requires-python")}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def kvmple_wheel(directory: Path) -> Path:
    """Build the checkout's own wheel (no dependencies) into ``directory``; its path."""
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", directory, checkout()],
        timeout=300,
        what="building kvmple's wheel (pip wheel --no-deps)",
    )  # fmt: skip
    wheels = sorted(directory.glob("kvmple-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"pip wheel left {len(wheels)} kvmple wheels in {directory}")
    return wheels[0]


def wheelhouse(log: Path) -> Path:
    """Wheels of the checkout and all its dependencies (built once per source digest)."""
    root = checkout()
    target = paths.cache_dir() / "wheelhouse" / source_digest(root)[:24]
    if (target / ".complete").is_file():
        return target
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        run_logged(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", staging, root],
            log=log,
            timeout=1800,
            what="building kvmple's wheelhouse on the host (pip wheel)",
            hint=f"full log: {log}; libvirt-python needs libvirt-dev, pkg-config and gcc",
        )
        (staging / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def install(tree: Path, venv: str, log: Path) -> None:
    """Create ``venv`` in the tree and install kvmple into it from the wheelhouse, offline;
    link ``/usr/local/bin/kvmple`` to it."""
    wheels = wheelhouse(log)
    inside = tree / WHEEL_DIR_IN_TREE.lstrip("/")
    shutil.rmtree(inside, ignore_errors=True)
    shutil.copytree(wheels, inside)
    try:
        run_logged(
            ["chroot", tree, "python3", "-m", "venv", venv],
            log=log,
            timeout=300,
            what="creating kvmple's venv in the image",
            hint="the recipe must install python3-venv",
        )
        run_logged(
            ["chroot", tree, f"{venv}/bin/pip", "install", "--no-index", "--no-cache-dir",
             "--disable-pip-version-check", "--find-links", WHEEL_DIR_IN_TREE, "kvmple"],
            log=log,
            timeout=900,
            what="installing kvmple into the image's venv (pip --no-index)",
        )  # fmt: skip
    finally:
        shutil.rmtree(inside, ignore_errors=True)
    link = tree / "usr/local/bin/kvmple"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"{venv}/bin/kvmple")
