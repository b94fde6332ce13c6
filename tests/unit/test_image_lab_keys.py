"""Recipe keys of lab host images: kvmple_venv (this checkout inside) and nested_images."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvmple.image import selfinstall
from kvmple.image.artifact import Image, ImageManifest
from kvmple.image.nested import install
from kvmple.image.recipe import Recipe, load_recipe
from tests.unit.test_image_recipe import error_of, write

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["debian12-labhost", "debian12-labinner"])
def test_shipped_lab_recipes_are_valid(name: str) -> None:
    recipe = load_recipe(ROOT / "guest-images" / f"{name}.yaml")
    assert recipe.name == name


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: x\nkvmple_venv: opt/venv\n", "absolute guest path"),
        ("name: x\nkvmple_venv: /opt/../venv\n", "'..'"),
        ("name: x\nnested_images: ['Bad Name']\n", "not an image recipe name"),
    ],
)
def test_bad_lab_keys(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error_of(write(tmp_path, text))


def test_source_digest_follows_the_package(tmp_path: Path) -> None:
    (tmp_path / "kvmple/sub").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "kvmple/a.py").write_text("x = 1\n")
    first = selfinstall.source_digest(tmp_path)
    (tmp_path / "kvmple/sub/__pycache__").mkdir()
    (tmp_path / "kvmple/sub/__pycache__/a.pyc").write_bytes(b"junk")
    assert selfinstall.source_digest(tmp_path) == first  # caches do not count
    (tmp_path / "kvmple/a.py").write_text("x = 2\n")
    assert selfinstall.source_digest(tmp_path) != first


def test_nested_image_and_its_byo_recipe_land_in_the_tree(tmp_path: Path) -> None:
    built = tmp_path / "built"
    built.mkdir()
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (built / name).write_bytes(name.encode())
    image = Image(
        name="inner", key="k" * 64, qcow2=built / "disk.qcow2", kernel=built / "vmlinuz",
        initrd=built / "initrd.img", cmdline="root=/dev/vda", ssh_user="root",
        host_keys=("ssh-ed25519 AAAA",), manifest=ImageManifest(name="img", key="k"),
    )  # fmt: skip
    recipe = Recipe(name="inner", cmdline=("quiet", "init=/sbin/kvmple-init"))
    tree = tmp_path / "tree"
    install(tree, [(recipe, image)])
    where = tree / "opt/kvmple/images/inner"
    assert (where / "vmlinuz").read_bytes() == b"vmlinuz"
    assert (where / "host_keys").read_text() == "ssh-ed25519 AAAA\n"
    byo = yaml.safe_load((tree / "opt/kvmple/guest-images/inner.yaml").read_text())
    assert byo["bring_your_own"]["qcow2"] == "/opt/kvmple/images/inner/disk.qcow2"
    assert byo["cmdline"][-1] == "init=/sbin/kvmple-init"
    # the recipe is valid once the files are where the lab host will see them
    Recipe.model_validate({**byo, "bring_your_own": None})


def test_new_recipe_keys_do_not_change_old_cache_keys() -> None:
    """Images cached before kvmple_venv/nested_images existed keep their keys."""
    from kvmple.image.cache import key_inputs

    plain = key_inputs(Recipe(name="x"), "http://m", "ssh-ed25519 AAAA")
    assert "kvmple_venv" not in plain["recipe"] and "nested_images" not in plain["recipe"]
    used = key_inputs(Recipe(name="x", nested_images=("y",)), "http://m", "ssh-ed25519 AAAA")
    assert used["recipe"]["nested_images"] == ["y"]


def test_dependencies_digest_ignores_tool_settings(tmp_path: Path) -> None:
    base = '[project]\nname = "k"\ndependencies = ["a>=1"]\n'
    (tmp_path / "pyproject.toml").write_text(base)
    first = selfinstall.dependencies_digest(tmp_path)
    (tmp_path / "pyproject.toml").write_text(base + '[tool.pytest.ini_options]\nmarkers = ["x"]\n')
    assert selfinstall.dependencies_digest(tmp_path) == first
    (tmp_path / "pyproject.toml").write_text(base.replace('"a>=1"', '"a>=1", "b"'))
    assert selfinstall.dependencies_digest(tmp_path) != first
