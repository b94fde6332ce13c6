"""``build(recipe)`` and ``resolve(ref)``: recipe -> cached image, every step accounted for.

A build runs in a staging directory inside the cache and is ``os.replace``d into place only
when complete; any failure (or Ctrl-C) removes the staging directory, so the cache never holds
a partial image. The build log is written under ``images/logs/`` while the build runs (so a
failure can name it) and moved beside the image on success.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pydantic import JsonValue

from kvmple import events, paths
from kvmple.errors import BuildError, ConfigError, HostError
from kvmple.events import Note, Progress, Sink
from kvmple.image import byo, cache, manifest, nested
from kvmple.image.artifact import IMAGE_FILE, Image, cmdline_for, host_key_lines, load_image
from kvmple.image.configure import CMDLINE, before_packages, configure, kernel_release
from kvmple.image.debootstrap import debootstrap
from kvmple.image.disk import copy_boot_files, make_disk
from kvmple.image.mirror import check_suite, default_mirror
from kvmple.image.recipe import Recipe, load_recipe
from kvmple.keys import installation_key
from kvmple.run import which

REQUIRED_PROGRAMS = ("debootstrap", "chroot", "mkfs.ext4", "qemu-img", "dpkg-query", "ssh-keygen")


def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up: ./guest-images, then the checkout's guest-images."""
    dirs = [Path.cwd() / "guest-images"]
    root = paths.project_root()
    if root is not None and (root / "guest-images") not in dirs:
        dirs.append(root / "guest-images")
    return dirs


def find_recipe(ref: str) -> Path:
    """A recipe path, or a name like 'debian12-amqp' looked up in the recipe directories."""
    candidate = Path(ref)
    try:
        exists = candidate.is_file()
    except OSError as exc:
        raise ConfigError(f"{ref}: cannot read the recipe: {exc.strerror}") from exc
    if ref.endswith((".yaml", ".yml")) or "/" in ref or exists:
        if not exists:
            raise ConfigError(f"{ref}: no such recipe file")
        return candidate
    for directory in recipe_dirs():
        for suffix in (".yaml", ".yml"):
            path = directory / f"{ref}{suffix}"
            if path.is_file():
                return path
    looked = ", ".join(str(d) for d in recipe_dirs())
    raise ConfigError(
        f"no image recipe named {ref!r} (looked in {looked})",
        hint="give a recipe file path, or see guest-images/ for the shipped recipes",
    )


def resolve(ref: str, *, sink: Sink = events.discard) -> Image:
    """The image for a recipe path or name, built if it is not cached yet (reporting the
    build to ``sink``)."""
    return build(find_recipe(ref), sink=sink)


def cached(recipe_path: Path) -> Image | None:
    """The cached image for this recipe as it is now, without building."""
    recipe = load_recipe(recipe_path)
    if recipe.is_byo:
        return byo.check(recipe, recipe_path)
    inputs = _key_inputs(recipe)
    return cache.lookup(recipe.name, cache.cache_key(inputs))


def build(recipe: Path, *, rebuild: bool = False, sink: Sink = events.discard) -> Image:
    """Build (or find in the cache) the image a recipe describes.

    A cache hit returns in well under a second, silently. Building needs root (debootstrap,
    chroot) and reports to ``sink``: a note at the start and the end, a transient progress
    display per step (debootstrap's packages as its status) and a note when each is done.
    """
    parsed = load_recipe(recipe)
    if parsed.is_byo:
        return byo.check(parsed, recipe)
    inputs = _key_inputs(parsed)
    key = cache.cache_key(inputs)
    if not rebuild and (hit := cache.lookup(parsed.name, key)) is not None:
        return hit
    _check_host()
    with cache.build_lock(parsed.name, key):
        if not rebuild and (hit := cache.lookup(parsed.name, key)) is not None:
            return hit  # built by someone else while we waited for the lock
        return _build(parsed, recipe, inputs, key, sink)


def _key_inputs(recipe: Recipe) -> dict[str, JsonValue]:
    mirror = recipe.mirror or default_mirror(recipe.suite, recipe.distribution)
    inputs = cache.key_inputs(recipe, mirror, installation_key().public_line)
    if recipe.nested_images:  # an image inside changes this one
        inputs["nested_images"] = {
            name: cache.cache_key(_key_inputs(load_recipe(find_recipe(name))))
            for name in recipe.nested_images
        }
    return inputs


def _check_host() -> None:
    if os.geteuid() != 0:
        raise HostError(
            "building an image needs root (debootstrap and chroot)",
            hint="run 'sudo kvmple image build ...', or use a bring_your_own recipe",
        )
    missing = [name for name in REQUIRED_PROGRAMS if which(name) is None]
    if missing:
        raise HostError(
            f"programs needed to build images are missing: {', '.join(missing)}",
            hint="run scripts/setup-host.sh (debootstrap, e2fsprogs, qemu-utils, openssh-client)",
        )


class _Steps:
    """Times each step and reports it: a transient progress display while it runs, then a
    note with its duration."""

    def __init__(self, name: str, sink: Sink) -> None:
        self.seconds: dict[str, float] = {}
        self.name = name
        self.sink = sink

    @contextmanager
    def step(self, label: str) -> Iterator[Callable[[str], None]]:
        start = time.monotonic()
        with events.progress(self.sink, f"{self.name}: {label}", transient=True):
            yield lambda status: self.sink(Progress(status=status))
        self.seconds[label] = time.monotonic() - start
        self.sink(Note(f"{self.name}: {label} done in {self.seconds[label]:.0f}s"))


def _build(
    recipe: Recipe, source: Path, inputs: dict[str, JsonValue], key: str, sink: Sink
) -> Image:
    started = time.monotonic()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    log = cache.failed_log_path(recipe.name, key, stamp)
    mirror = str(inputs["mirror"])
    steps = _Steps(recipe.name, sink)
    sink(Note(f"building image {recipe.name} ({key[:16]}) from {mirror}; log: {log}"))
    inner_recipes = [find_recipe(n) for n in recipe.nested_images]  # a typo fails now
    with cache.staging(recipe.name, key) as staged:
        tree = staged / "tree"
        with steps.step("debootstrap") as status:
            check_suite(mirror, recipe.suite)
            count = {"n": 0}

            def on_event(action: str, package: str) -> None:
                count["n"] += 1
                status(f"{action} {package} ({count['n']})")

            debootstrap(
                recipe,
                tree,
                mirror,
                log,
                on_event=on_event,
                between=lambda: before_packages(recipe, tree),
            )
        with steps.step("configure"):
            configure(recipe, tree, installation_key().public_line, log)
        if inner_recipes:
            # built (or found) only now: another process may be building them meanwhile
            with steps.step("nested images"):
                inner = [(load_recipe(p), build(p, sink=sink)) for p in inner_recipes]
                nested.install(tree, inner)
        with steps.step("manifest"):
            release = kernel_release(tree)
            packages = manifest.installed_packages(tree)
            key_files = manifest.host_key_files(tree)
            host_keys = host_key_lines("".join(p.read_text() for p in key_files))
            fingerprints = [manifest.fingerprint(p) for p in key_files]
        final = cache.entry_dir(recipe.name, key)
        with steps.step("disk"):
            copy_boot_files(tree, release, staged / "vmlinuz", staged / "initrd.img")
            make_disk(tree, recipe.disk_size, staged / "disk.qcow2", log)
            shutil.rmtree(tree)
        document = manifest.assemble(
            name=recipe.name,
            key=key,
            inputs=inputs,
            recipe_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
            packages=packages,
            kernel_release=release,
            host_key_fingerprints=fingerprints,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            build_seconds=time.monotonic() - started,
            step_seconds=steps.seconds,
            recipe_path=str(source.resolve()),
            disk_size=recipe.disk_size,
        )
        image = Image(
            name=recipe.name,
            key=key,
            qcow2=final / "disk.qcow2",
            kernel=final / "vmlinuz",
            initrd=final / "initrd.img",
            cmdline=cmdline_for((*CMDLINE, *recipe.cmdline)),
            ssh_user="root",
            host_keys=host_keys,
            manifest=document,
        )
        _write_json(staged / "manifest.json", document.document())
        shutil.move(log, staged / "build.log")
        _write_json(staged / IMAGE_FILE, image.to_json())  # last: marks the entry complete
        try:
            cache.publish(staged, recipe.name, key)
        except OSError as exc:
            raise BuildError(f"step publish failed: {exc}") from exc
    sink(Note(f"image {recipe.name} ready in {time.monotonic() - started:.0f}s: {final}"))
    return load_image(final)


def _write_json(path: Path, data: Mapping[str, JsonValue]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)
