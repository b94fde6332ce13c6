"""The installation key (real ssh-keygen) and bring-your-own image checks (real qemu-img)."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

import pytest

from kvmple.errors import ConfigError, HostError
from kvmple.image import build, byo
from kvmple.keys import installation_key, key_dir
from kvmple.run import run
from tests.support import need_program


def test_installation_key_is_created_once_with_mode_0600() -> None:
    need_program("ssh-keygen")
    first = installation_key()
    assert first.private.parent == key_dir()
    assert first.private.stat().st_mode & 0o777 == 0o600
    assert first.public_line.startswith("ssh-ed25519 ")
    assert first.public.read_text().strip() == first.public_line
    again = installation_key()
    assert again == first
    # the pair belongs together: ssh-keygen derives the same public key from the private one
    derived = run(["ssh-keygen", "-y", "-f", first.private], timeout=30).stdout.split()[:2]
    assert derived == first.public_line.split()[:2]


def test_concurrent_first_use_agrees_on_one_key() -> None:
    need_program("ssh-keygen")
    lines: list[str] = []
    threads = [
        threading.Thread(target=lambda: lines.append(installation_key().public_line))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(lines)) == 1
    assert not [p for p in key_dir().iterdir() if p.name.startswith(".new-")]


def test_key_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMPLE_KEY_DIR", str(tmp_path / "keys"))
    assert installation_key().private == tmp_path / "keys" / "id_ed25519"


def test_key_readable_by_others_is_refused() -> None:
    key = installation_key()
    os.chmod(key.private, 0o644)
    with pytest.raises(HostError, match="readable by others"):
        installation_key()


def byo_files(tmp_path: Path) -> dict[str, Path]:
    need_program("qemu-img")
    files = {
        "qcow2": tmp_path / "disk.qcow2",
        "kernel": tmp_path / "vmlinuz",
        "initrd": tmp_path / "initrd.img",
        "host_keys": tmp_path / "host_keys.pub",
    }
    run(["qemu-img", "create", "-q", "-f", "qcow2", files["qcow2"], "64M"], timeout=60)
    kernel = bytearray(4096)
    kernel[0x202:0x206] = b"HdrS"
    files["kernel"].write_bytes(bytes(kernel))
    files["initrd"].write_bytes(gzip.compress(b"070701" + b"0" * 100))
    files["host_keys"].write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey root@mine\n")
    return files


def byo_recipe(tmp_path: Path, files: dict[str, Path]) -> Path:
    recipe = tmp_path / "mine.yaml"
    body = "".join(f"  {key}: {path.name}\n" for key, path in files.items())
    recipe.write_text(f"name: mine\ncmdline: [quiet]\nbring_your_own:\n{body}")
    return recipe


def test_bring_your_own_image_is_checked_and_used_as_is(tmp_path: Path) -> None:
    files = byo_files(tmp_path)
    image = build(byo_recipe(tmp_path, files))
    assert image.qcow2 == files["qcow2"] and image.kernel == files["kernel"]
    assert image.host_keys == ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey",)
    assert image.cmdline == "root=/dev/vda console=ttyS0 quiet"
    assert image.ssh_user == "root"
    assert image.manifest.bring_your_own is True
    assert build(byo_recipe(tmp_path, files)).key == image.key
    files["initrd"].write_bytes(gzip.compress(b"070701" + b"1" * 100))
    assert build(byo_recipe(tmp_path, files)).key != image.key  # the files are part of the key


def test_bring_your_own_raw_disk_is_refused(tmp_path: Path) -> None:
    files = byo_files(tmp_path)
    files["qcow2"].unlink()
    run(["qemu-img", "create", "-q", "-f", "raw", files["qcow2"], "64M"], timeout=60)
    with pytest.raises(ConfigError, match=r"bring_your_own\.qcow2: .* is a raw image"):
        build(byo_recipe(tmp_path, files))


def test_bring_your_own_swapped_kernel_and_initrd(tmp_path: Path) -> None:
    files = byo_files(tmp_path)
    files["kernel"], files["initrd"] = files["initrd"], files["kernel"]
    with pytest.raises(ConfigError, match=r"bring_your_own\.kernel: .* not an x86 kernel"):
        build(byo_recipe(tmp_path, files))


def test_bring_your_own_private_key_given_as_host_keys(tmp_path: Path) -> None:
    files = byo_files(tmp_path)
    files["host_keys"].write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n")
    with pytest.raises(ConfigError, match=r"bring_your_own\.host_keys: .*not an SSH public key"):
        build(byo_recipe(tmp_path, files))


def test_magic_numbers() -> None:
    assert byo.is_initrd(b"\x28\xb5\x2f\xfd rest")
    assert byo.is_initrd(b"070701...")
    assert not byo.is_initrd(b"MZ\x90\x00")
    assert not byo.is_bzimage(b"\x00" * 1024)
