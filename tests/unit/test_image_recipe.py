"""Recipe validation: every mistake is reported with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.errors import ConfigError
from kvmple.image.guestfiles import guest_dir
from kvmple.image.recipe import Recipe, load_recipe, size_mib

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    return info.value.message


def test_shipped_recipe_is_valid() -> None:
    recipe = load_recipe(ROOT / "guest-images" / "debian12-amqp.yaml")
    assert recipe.name == "debian12-amqp"
    assert recipe.suite == "bookworm"
    for package in ("openssh-server", "rabbitmq-server", "python3-amqp", "linux-image-amd64"):
        assert package in recipe.packages
    assert "apt-daily.timer" in recipe.services.mask
    assert not recipe.is_byo


def test_defaults() -> None:
    recipe = Recipe(name="x")
    assert (recipe.distribution, recipe.suite, recipe.disk_size) == ("debian", "bookworm", "4G")
    assert recipe.mirror is None and recipe.components == ("main",)


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nsuite: bookworm\npackagez: [vim]\n")
    assert error_of(path) == f"{path}:3: packagez: unknown key"


def test_missing_name(tmp_path: Path) -> None:
    path = write(tmp_path, "suite: bookworm\n")
    assert error_of(path) == f"{path}:1: name: required key is missing"


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("name: Bad Name\n", 1, "name", "lower-case letters"),
        ("name: a\npackages:\n  - vim\n  - 'no such'\n", 4, "packages.1", "not a Debian package"),
        ("name: a\ndisk_size: 4T\n", 2, "disk_size", "size like '4G'"),
        ("name: a\ndisk_size: 100M\n", 2, "disk_size", "at least 256M"),
        ("name: a\nsuite: Bookworm\n", 2, "suite", "lower-case word"),
        ("name: a\nmirror: ftp://x\n", 2, "mirror", "http://"),
        ("name: a\ndistribution: fedora\n", 2, "distribution", "'debian' or 'ubuntu'"),
        ("name: a\ncmdline: [root=/dev/sda]\n", 2, "cmdline.0", "sets root= and console="),
        ("name: a\ncmdline: ['a b']\n", 2, "cmdline.0", "without spaces"),
        ("name: a\nservices:\n  mask: [apt-daily]\n", 3, "services.mask.0", "not a systemd unit"),
        ("name: a\nservices:\n  enabel: [x.service]\n", 3, "services.enabel", "unknown key"),
        ("name: a\ninitramfs_modules: []\n", 2, "initramfs_modules", "at least one module"),
        ("name: a\ncomponents: []\n", 2, "components", "non-empty"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line}: {key}"), message
    assert fragment in message


def test_file_source_relative_to_recipe_and_missing(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hello\n")
    good = write(tmp_path, "name: a\nfiles:\n  - path: /etc/motd\n    source: motd\n")
    assert load_recipe(good).files[0].source == str(tmp_path / "motd")
    bad = write(
        tmp_path,
        "name: a\nfiles:\n  - path: /etc/motd\n    source: motd\n"
        "  - path: /etc/x\n    source: nothere\n",
        "bad.yaml",
    )
    message = error_of(bad)
    assert message.startswith(f"{bad}:6: files.1.source: no such file: {tmp_path / 'nothere'}")


def test_file_needs_exactly_one_origin_and_absolute_path(tmp_path: Path) -> None:
    both = write(tmp_path, "name: a\nfiles:\n  - path: /x\n    content: a\n    source: r.yaml\n")
    assert "exactly one of 'source' or 'content'" in error_of(both)
    relative = write(tmp_path, "name: a\nfiles:\n  - path: etc/x\n    content: a\n", "rel.yaml")
    assert "files.0.path: must be an absolute guest path" in error_of(relative)
    mode = write(
        tmp_path, "name: a\nfiles:\n  - path: /x\n    content: a\n    mode: rw\n", "m.yaml"
    )
    assert "files.0.mode: must be octal" in error_of(mode)


def test_missing_guest_program_is_a_recipe_error(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nguest_programs:\n  - kvmple-no-such-program\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3: guest_programs.0")
    assert "no guest program 'kvmple-no-such-program'" in message
    assert str(guest_dir()) in message


def test_existing_guest_programs_are_accepted(tmp_path: Path) -> None:
    shipped = sorted(p.name for p in guest_dir().glob("kvmple-*") if p.is_file())
    if not shipped:
        pytest.skip("no guest programs shipped yet (kvmple/guest/ belongs to the workloads)")
    path = write(tmp_path, f"name: a\nguest_programs: [{shipped[0]}]\n")
    assert load_recipe(path).guest_programs == (shipped[0],)


def test_bring_your_own_files_must_exist(tmp_path: Path) -> None:
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    path = write(
        tmp_path,
        "name: mine\nbring_your_own:\n  qcow2: disk.qcow2\n  kernel: vmlinuz\n"
        "  initrd: initrd.img\n  host_keys: keys.pub\n",
    )
    assert error_of(path).startswith(f"{path}:6: bring_your_own.host_keys: no such file")
    (tmp_path / "keys.pub").write_text("ssh-ed25519 AAAA\n")
    recipe = load_recipe(path)
    assert recipe.is_byo and recipe.bring_your_own is not None
    assert recipe.bring_your_own.kernel == str(tmp_path / "vmlinuz")


def test_bring_your_own_excludes_build_keys(tmp_path: Path) -> None:
    for name in ("d", "k", "i", "h"):
        (tmp_path / name).write_bytes(b"x")
    path = write(
        tmp_path,
        "name: mine\npackages: [vim]\nbring_your_own:\n  qcow2: d\n  kernel: k\n"
        "  initrd: i\n  host_keys: h\n",
    )
    assert "bring_your_own" in error_of(path)
    assert "packages" in error_of(path)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    assert "expected a mapping" in error_of(write(tmp_path, "- a\n- b\n"))
    assert "not valid YAML" in error_of(write(tmp_path, "name: [a\n", "y.yaml"))
    assert "no such file" in error_of(tmp_path / "absent.yaml")


def test_size_mib() -> None:
    assert size_mib("4G") == 4096
    assert size_mib("300M") == 300
    with pytest.raises(ValueError):
        size_mib("4")
