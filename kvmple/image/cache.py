"""The content-addressed image cache.

Layout under ``paths.cache_dir()/images``::

    <name>-<key16>/          one complete image (image.json written last marks completeness)
    .build-<name>-<key16>-<pid>/   a build in progress (never read as an image)
    .locks/<name>-<key16>.lock     flock held while that key is being built
    logs/                    logs of failed builds (the cache keeps no partial image)

The key is a SHA-256 over everything that changes the image's bytes: the recipe (with files
and guest programs replaced by their content hashes), the mirror, the builder's format
version and the installation's public key (it is baked into authorized_keys).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue

from kvmple import paths
from kvmple.errors import StoreError, UsageError
from kvmple.image import selfinstall
from kvmple.image.artifact import IMAGE_FILE, Image, load_image
from kvmple.image.guestfiles import shipped
from kvmple.image.recipe import Recipe
from kvmple.run import run

# Bump when the build/configure steps change what ends up in an image.
BUILDER_FORMAT = 4


def images_dir() -> Path:
    directory = paths.cache_dir() / "images"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_inputs(recipe: Recipe, mirror: str, public_key: str) -> dict[str, JsonValue]:
    """Everything the cache key covers, as plain JSON data (shown by 'image list -v')."""
    data = recipe.model_dump(mode="json")
    data["files"] = [
        {
            "path": spec.path,
            "mode": spec.mode,
            "sha256": hashlib.sha256(spec.content.encode()).hexdigest()
            if spec.content is not None
            else file_digest(Path(spec.source or "")),
        }
        for spec in recipe.files
    ]
    # every file the build copies for them (the package they import included), by path
    data["guest_programs"] = {
        spec.relative: file_digest(spec.source) for spec in shipped(recipe.guest_programs)
    }
    data.pop("description", None)  # words for humans do not change the image
    # keys added after images were cached count only when used: old keys stay valid
    for name, unset in (("kvmple_venv", None), ("nested_images", [])):
        if data.get(name) == unset:
            data.pop(name, None)
    if recipe.kvmple_venv is not None:  # kvmple's dependencies installed into the image
        data["kvmple_dependencies"] = selfinstall.dependencies_digest(selfinstall.checkout())
    return {
        "format": BUILDER_FORMAT,
        "recipe": data,
        "mirror": mirror,
        "authorized_key": [*public_key.split()[:2]],
    }


def cache_key(inputs: Mapping[str, JsonValue]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_name(name: str, key: str) -> str:
    return f"{name}-{key[:16]}"


def entry_dir(name: str, key: str) -> Path:
    return images_dir() / entry_name(name, key)


def lookup(name: str, key: str) -> Image | None:
    """The cached image for this key, if complete."""
    directory = entry_dir(name, key)
    if not (directory / IMAGE_FILE).is_file():
        return None
    return load_image(directory)


@contextmanager
def build_lock(name: str, key: str) -> Iterator[None]:
    """Serialise builds of one key (a second builder waits, then finds the cached image)."""
    locks = images_dir() / ".locks"
    locks.mkdir(exist_ok=True)
    with (locks / f"{entry_name(name, key)}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def staging(name: str, key: str) -> Iterator[Path]:
    """A fresh build directory that is removed on any exit unless published.

    Call under ``build_lock``: leftovers of killed builds of the same key are removed first.
    """
    prefix = f".build-{entry_name(name, key)}-"
    for stale in images_dir().glob(prefix + "*"):
        remove_tree(stale)
    directory = images_dir() / f"{prefix}{os.getpid()}"
    directory.mkdir()
    try:
        yield directory
    finally:
        if directory.exists():
            remove_tree(directory)


def mounts_under(directory: Path, mountinfo: str) -> list[Path]:
    """Mount points inside ``directory``, deepest first (pure; from /proc/self/mountinfo)."""
    inside = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = Path(fields[4].replace("\\040", " "))
            if point == directory or directory in point.parents:
                inside.append(point)
    return sorted(inside, key=lambda p: len(p.parts), reverse=True)


def remove_tree(directory: Path) -> None:
    """Delete a build tree; first detach anything a killed debootstrap left mounted in it
    (/proc, /sys), so deleting can never reach into a live file system."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
    except OSError:
        mountinfo = ""
    for point in mounts_under(directory.resolve(), mountinfo):
        run(["umount", "--lazy", point], timeout=60, check=False, what="umount")
    if mounts_under(directory.resolve(), Path("/proc/self/mountinfo").read_text()):
        raise StoreError(
            f"{directory} still has mounts inside; not deleting it",
            hint=f"unmount them (findmnt -R {directory}) and remove the directory",
        )
    shutil.rmtree(directory, ignore_errors=True)


def publish(staged: Path, name: str, key: str) -> Path:
    """Atomically move a complete build into place."""
    final = entry_dir(name, key)
    if final.exists():  # an incomplete leftover (no image.json): we hold the lock
        shutil.rmtree(final)
    os.replace(staged, final)
    return final


def failed_log_path(name: str, key: str, stamp: str) -> Path:
    logs = images_dir() / "logs"
    logs.mkdir(exist_ok=True)
    return logs / f"{entry_name(name, key)}-{stamp}.log"


@dataclass(frozen=True)
class Entry:
    """One cache directory, for listing."""

    directory: Path
    image: Image | None  # None: unreadable
    size_bytes: int


def entries() -> list[Entry]:
    """All complete images in the cache, by name then build time."""
    found: list[Entry] = []
    for directory in sorted(images_dir().iterdir()):
        if directory.name.startswith(".") or not (directory / IMAGE_FILE).is_file():
            continue
        try:
            image: Image | None = load_image(directory)
        except StoreError:
            image = None
        size = sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file())
        found.append(Entry(directory, image, size))
    return found


def select(ref: str) -> list[Entry]:
    """Entries matching an image name, a directory name, or a key prefix (>= 6 hex digits)."""
    matches = []
    for entry in entries():
        image = entry.image
        if entry.directory.name == ref or (
            image is not None
            and (image.name == ref or (len(ref) >= 6 and image.key.startswith(ref)))
        ):
            matches.append(entry)
    return matches


def remove(ref: str) -> list[Path]:
    """Remove the matching cached images; returns the removed directories."""
    matches = select(ref)
    if not matches:
        raise UsageError(
            f"no cached image matches {ref!r}",
            hint="'kvmple image list' shows names and keys",
        )
    removed = []
    for entry in matches:
        name = entry.image.name if entry.image else entry.directory.name
        key = entry.image.key if entry.image else entry.directory.name
        with build_lock(name, key):
            # rename first so a reader never sees a half-deleted image
            doomed = entry.directory.with_name(f".rm-{entry.directory.name}-{os.getpid()}")
            os.replace(entry.directory, doomed)
            shutil.rmtree(doomed)
        removed.append(entry.directory)
    return removed
