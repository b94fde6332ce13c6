"""The content-addressed image cache: keys, atomic publication, locking, list and rm."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from kvmple.errors import HostError, UsageError
from kvmple.events import Progress, ProgressEnded, ProgressStarted, Recorder
from kvmple.image import build, builder, cache
from kvmple.image.artifact import IMAGE_FILE, Image, ImageManifest
from kvmple.image.recipe import Recipe, load_recipe
from kvmple.keys import installation_key

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample kvmple@host"


def key_of(recipe: Recipe, mirror: str = "http://m/debian", public: str = KEY) -> str:
    return cache.cache_key(cache.key_inputs(recipe, mirror, public))


def test_key_is_stable_and_covers_inputs() -> None:
    base = Recipe(name="a", packages=("vim",))
    assert key_of(base) == key_of(Recipe(name="a", packages=("vim",)))
    assert len(key_of(base)) == 64
    changed = {
        key_of(Recipe(name="a", packages=("vim", "procps"))),
        key_of(Recipe(name="b", packages=("vim",))),
        key_of(Recipe(name="a", packages=("vim",), suite="trixie")),
        key_of(Recipe(name="a", packages=("vim",), cmdline=("quiet",))),
        key_of(base, mirror="http://other/debian"),
        key_of(base, public="ssh-ed25519 AAAAother kvmple@host"),
    }
    assert key_of(base) not in changed
    assert len(changed) == 6


def test_key_ignores_description_and_key_comment() -> None:
    base = Recipe(name="a")
    assert key_of(base) == key_of(Recipe(name="a", description="words for humans"))
    assert key_of(base) == key_of(base, public=KEY.replace("kvmple@host", "other@comment"))


def test_key_covers_file_content_not_location(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    for directory in ("one", "two"):
        (tmp_path / directory / "motd").write_text("hello\n")
        (tmp_path / directory / "r.yaml").write_text(
            "name: a\nfiles:\n  - path: /etc/motd\n    source: motd\n"
        )
    first = load_recipe(tmp_path / "one" / "r.yaml")
    second = load_recipe(tmp_path / "two" / "r.yaml")
    assert key_of(first) == key_of(second)
    (tmp_path / "two" / "motd").write_text("changed\n")
    assert key_of(first) != key_of(load_recipe(tmp_path / "two" / "r.yaml"))


def fake_complete_entry(name: str, key: str) -> Path:
    """A complete cache entry as a build leaves it (files are placeholders)."""
    with cache.staging(name, key) as staged:
        for part in ("disk.qcow2", "vmlinuz", "initrd.img"):
            (staged / part).write_bytes(b"x" * 4096)
        final = cache.entry_dir(name, key)
        image = Image(
            name=name,
            key=key,
            qcow2=final / "disk.qcow2",
            kernel=final / "vmlinuz",
            initrd=final / "initrd.img",
            cmdline="root=/dev/vda console=ttyS0",
            ssh_user="root",
            host_keys=("ssh-ed25519 AAAAhost",),
            manifest=ImageManifest(name=name, key=key),
        )
        stored = {"built_at": "now", "name": name, "key": key}
        (staged / "manifest.json").write_text(json.dumps(stored))
        (staged / IMAGE_FILE).write_text(json.dumps(image.to_json()))
        return cache.publish(staged, name, key)


def test_publish_lookup_and_staging_cleanup() -> None:
    key = "ab" * 32
    assert cache.lookup("img", key) is None
    directory = fake_complete_entry("img", key)
    assert directory == cache.images_dir() / f"img-{key[:16]}"
    found = cache.lookup("img", key)
    assert found is not None and found.qcow2 == directory / "disk.qcow2"
    assert found.manifest.document() == {"built_at": "now", "name": "img", "key": key}
    assert not list(cache.images_dir().glob(".build-*"))


def test_failed_build_leaves_nothing() -> None:
    key = "cd" * 32
    with pytest.raises(RuntimeError), cache.staging("img", key) as staged:
        (staged / "disk.qcow2").write_bytes(b"half")
        raise RuntimeError("step failed")
    assert cache.lookup("img", key) is None
    assert [p.name for p in cache.images_dir().iterdir()] == []


def test_stale_staging_dirs_of_the_same_key_are_removed() -> None:
    key = "ef" * 32
    stale = cache.images_dir() / f".build-img-{key[:16]}-99999"
    stale.mkdir()
    (stale / "junk").write_text("x")
    other = cache.images_dir() / ".build-other-0000000000000000-1"
    other.mkdir()
    with cache.staging("img", key):
        assert not stale.exists()
        assert other.exists()  # another key's build is none of our business


def test_incomplete_entry_is_not_an_image() -> None:
    key = "12" * 32
    cache.entry_dir("img", key).mkdir(parents=True)
    assert cache.lookup("img", key) is None
    assert cache.entries() == []


def test_build_lock_serialises_builders() -> None:
    events: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with cache.build_lock("img", "34" * 32):
            events.append("first in")
            inside.set()
            time.sleep(0.3)
            events.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    with cache.build_lock("img", "34" * 32):
        events.append("second in")
    thread.join()
    assert events == ["first in", "first out", "second in"]


def test_entries_select_and_remove() -> None:
    first = fake_complete_entry("alpha", "a1" * 32)
    fake_complete_entry("alpha", "a2" * 32)
    fake_complete_entry("beta", "b1" * 32)
    names = [(e.image.name if e.image else "?") for e in cache.entries()]
    assert names == ["alpha", "alpha", "beta"]
    assert all(e.size_bytes >= 3 * 4096 for e in cache.entries())
    assert [e.directory for e in cache.select(first.name)] == [first]
    assert len(cache.select("a2a2a2")) == 1
    assert cache.select("a2a2") == []  # too short to be a key prefix
    removed = cache.remove("alpha")
    assert len(removed) == 2 and not first.exists()
    assert [e.image.name for e in cache.entries() if e.image] == ["beta"]
    with pytest.raises(UsageError, match="no cached image matches 'alpha'"):
        cache.remove("alpha")


def test_unreadable_entry_is_listed_and_removable() -> None:
    directory = fake_complete_entry("gamma", "c1" * 32)
    (directory / IMAGE_FILE).write_text("{not json")
    [entry] = cache.entries()
    assert entry.image is None
    cache.remove(directory.name)
    assert not directory.exists()


def test_build_returns_cached_image_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: tiny\nmirror: http://mirror.invalid/debian\n")
    inputs = cache.key_inputs(
        load_recipe(recipe), "http://mirror.invalid/debian", installation_key().public_line
    )
    key = cache.cache_key(inputs)
    directory = fake_complete_entry("tiny", key)
    monkeypatch.setattr(builder.os, "geteuid", lambda: 1000)  # a cache hit needs no root
    shown = Recorder()
    image = build(recipe, sink=shown)
    assert image.key == key and image.qcow2 == directory / "disk.qcow2"
    assert shown == []  # a hit is silent


def test_build_steps_report_a_transient_display_then_their_duration() -> None:
    shown = Recorder()
    steps = builder._Steps("tiny", shown)
    with steps.step("debootstrap") as status:
        status("Unpacking libc6 (1)")
    assert shown[:3] == [
        ProgressStarted("tiny: debootstrap", transient=True),
        Progress(status="Unpacking libc6 (1)"),
        ProgressEnded(),
    ]
    assert shown.messages() == [f"tiny: debootstrap done in {steps.seconds['debootstrap']:.0f}s"]


def test_build_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: tiny\nmirror: http://mirror.invalid/debian\n")
    monkeypatch.setattr(builder.os, "geteuid", lambda: 1000)
    with pytest.raises(HostError, match="needs root"):
        build(recipe)
    assert cache.entries() == []


def test_mounts_under_a_build_tree_deepest_first() -> None:
    mountinfo = (
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "40 22 0:5 / /c/images/.build-x/tree/proc rw - proc proc rw\n"
        "41 40 0:6 / /c/images/.build-x/tree/proc/sys/fs/binfmt_misc rw - binfmt_misc b rw\n"
        "42 22 0:7 / /c/images/.build-xy/tree/sys rw - sysfs sysfs rw\n"
    )
    assert cache.mounts_under(Path("/c/images/.build-x"), mountinfo) == [
        Path("/c/images/.build-x/tree/proc/sys/fs/binfmt_misc"),
        Path("/c/images/.build-x/tree/proc"),
    ]
    assert cache.mounts_under(Path("/elsewhere"), mountinfo) == []
