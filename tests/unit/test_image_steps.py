"""Pure parts of the build steps: mirror choice, debootstrap command and log reading,
manifest assembly, configuration file contents, and the Image record."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from kvmple.errors import BuildError
from kvmple.image import debootstrap, manifest, mirror
from kvmple.image.artifact import Image, ImageManifest, cmdline_for, host_key_lines, load_image
from kvmple.image.configure import _lock_password, guest_path, hosts_file, write
from kvmple.image.recipe import Recipe

HOST_DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def test_deb822_sources() -> None:
    sources = mirror.parse_deb822_sources(HOST_DEB822)
    assert sources == [
        ("http://deb.debian.org/debian", ["bookworm", "bookworm-updates"]),
        ("http://deb.debian.org/debian-security", ["bookworm-security"]),
    ]
    assert mirror.choose_mirror(sources, "bookworm", "debian") == "http://deb.debian.org/debian"


def test_deb822_skips_deb_src_and_disabled() -> None:
    text = (
        "Types: deb-src\nURIs: http://src/debian\nSuites: bookworm\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off/debian\nSuites: bookworm\n\n"
        "Types: deb deb-src\nURIs: http://lab-mirror/debian/\nSuites: bookworm\n"
    )
    sources = mirror.parse_deb822_sources(text)
    assert mirror.choose_mirror(sources, "bookworm", "debian") == "http://lab-mirror/debian"


def test_one_line_sources_with_options() -> None:
    text = (
        "# comment\n"
        "deb-src http://src/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://lab/debian bookworm main contrib\n"
        "deb http://lab/debian-security bookworm-security main\n"
    )
    sources = mirror.parse_one_line_sources(text)
    assert sources == [
        ("http://lab/debian", ["bookworm"]),
        ("http://lab/debian-security", ["bookworm-security"]),
    ]


def test_mirror_falls_back_to_the_distributions_public_mirror() -> None:
    ubuntu_host = [("http://archive.ubuntu.com/ubuntu", ["jammy", "jammy-updates"])]
    assert mirror.choose_mirror(ubuntu_host, "bookworm", "debian") == mirror.FALLBACK["debian"]
    assert mirror.choose_mirror([], "noble", "ubuntu") == "http://archive.ubuntu.com/ubuntu"


def test_host_sources_reads_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://one/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(HOST_DEB822)
    (tmp_path / "sources.list.d" / "extra.list").write_text("deb http://three/x trixie main\n")
    found = [uri for uri, _ in mirror.host_sources(tmp_path)]
    assert found == [
        "http://one/debian",
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
        "http://three/x",
    ]


def test_check_suite_on_a_file_mirror(tmp_path: Path) -> None:
    (tmp_path / "dists" / "bookworm").mkdir(parents=True)
    (tmp_path / "dists" / "bookworm" / "Release").write_text("Suite: stable\n")
    mirror.check_suite(f"file://{tmp_path}", "bookworm")
    with pytest.raises(BuildError, match="suite 'bookwrm' not found on mirror"):
        mirror.check_suite(f"file://{tmp_path}", "bookwrm")


def test_check_suite_unreachable_mirror() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BuildError, match=r"step debootstrap: mirror .* unreachable") as info:
        mirror.check_suite(f"http://127.0.0.1:{port}/debian", "bookworm", timeout=5)
    assert info.value.hint and "mirror" in info.value.hint


def test_debootstrap_argv() -> None:
    recipe = Recipe(name="a", packages=("vim", "procps"), components=("main", "contrib"))
    argv = debootstrap.argv(recipe, Path("/t/tree"), "http://m/debian", Path("/c"))
    assert argv == [
        "debootstrap",
        "--foreign",
        "--variant=minbase",
        "--components=main,contrib",
        "--cache-dir=/c",
        "--include=vim,procps",
        "bookworm",
        "/t/tree",
        "http://m/debian",
    ]
    assert "--include" not in " ".join(
        debootstrap.argv(Recipe(name="a"), Path("/t"), "m", Path("/c"))
    )


def test_debootstrap_progress_events() -> None:
    assert debootstrap.progress_event("I: Unpacking rabbitmq-server...") == (
        "Unpacking",
        "rabbitmq-server",
    )
    assert debootstrap.progress_event("I: Retrieving libc6 2.36-9") == ("Retrieving", "libc6")
    assert debootstrap.progress_event("I: Base system installed successfully.") is None


def test_debootstrap_failure_explanations() -> None:
    missing = "I: Resolving dependencies\nE: Couldn't find these debs: nosuchpkg otherpkg\n"
    assert debootstrap.explain_failure(missing) == "unknown package(s): nosuchpkg otherpkg"
    release = "I: Retrieving InRelease\nE: Failed getting release file http://m/dists/x/Release\n"
    assert debootstrap.explain_failure(release) == (
        "Failed getting release file http://m/dists/x/Release"
    )
    assert debootstrap.explain_failure("W: Failure trying to run: chroot x\n") == (
        "Failure trying to run: chroot x"
    )
    assert debootstrap.explain_failure("") == "no output"


def test_parse_packages() -> None:
    output = (
        "rabbitmq-server\t3.10.8-1.1\tinstall ok installed\n"
        "removed\t1.0\tdeinstall ok config-files\n"
        "python3\t3.11.2-1+b1\tinstall ok installed\n"
    )
    assert manifest.parse_packages(output) == {
        "rabbitmq-server": "3.10.8-1.1",
        "python3": "3.11.2-1+b1",
    }


def test_manifest_assembly() -> None:
    document = manifest.assemble(
        name="img",
        key="k" * 64,
        inputs={"mirror": "http://m/debian", "recipe": {"suite": "bookworm"}},
        recipe_sha256="r" * 64,
        packages={"b": "2", "a": "1"},
        kernel_release="6.1.0-50-amd64",
        host_key_fingerprints=["ED25519 SHA256:abc"],
        built_at="2026-11-27T10:00:00Z",
        build_seconds=158.04,
        step_seconds={"debootstrap": 126.01},
        recipe_path="/r/img.yaml",
        disk_size="4G",
    ).document()
    assert document["packages"] == {"a": "1", "b": "2"}
    assert list(document["packages"]) == ["a", "b"]
    assert document["package_count"] == 2
    assert document["mirror"] == "http://m/debian" and document["suite"] == "bookworm"
    assert document["build_seconds"] == 158.0
    assert document["kernel_release"] == "6.1.0-50-amd64"
    assert document["recipe_path"] == "/r/img.yaml" and document["disk_size"] == "4G"
    assert sorted(document) == sorted(_STORED_MANIFEST)  # the keys manifest.json always had
    json.dumps(document)  # serialisable as is


# manifest.json as kvmple wrote it before ImageManifest existed (a dict, sort_keys)
_STORED_MANIFEST = {
    "build_seconds": 158.0,
    "built_at": "2026-11-27T10:00:00Z",
    "disk_size": "4G",
    "format": 1,
    "host_key_fingerprints": ["ED25519 SHA256:abc"],
    "key": "k" * 64,
    "key_inputs": {"format": 3, "mirror": "http://m/debian", "recipe": {"suite": "bookworm"}},
    "kernel_release": "6.1.0-50-amd64",
    "kvmple_version": "0.1.0",
    "mirror": "http://m/debian",
    "name": "img",
    "package_count": 2,
    "packages": {"a": "1", "b": "2"},
    "recipe_path": "/r/img.yaml",
    "recipe_sha256": "r" * 64,
    "step_seconds": {"debootstrap": 126.0},
    "suite": "bookworm",
}


def test_stored_manifests_read_back_unchanged() -> None:
    built = ImageManifest.model_validate_json(json.dumps(_STORED_MANIFEST))
    assert built.kernel_release == "6.1.0-50-amd64" and built.packages["a"] == "1"
    assert built.document() == _STORED_MANIFEST  # the same keys and values, nothing added
    brought = {
        "name": "byo",
        "key": "b" * 64,
        "bring_your_own": True,
        "checked_at": "2026-11-27T10:00:00Z",
        "files": {"qcow2": {"path": "/i/d.qcow2", "size": 4096, "mtime_ns": 1}},
        "host_keys": ["ssh-ed25519 AAAA"],
    }
    assert ImageManifest.model_validate_json(json.dumps(brought)).document() == brought


def test_hosts_file_has_localhost() -> None:
    text = hosts_file("kvmple-guest")
    assert "127.0.0.1\tlocalhost\n" in text
    assert "127.0.1.1\tkvmple-guest\n" in text


def test_root_password_is_locked_not_changed() -> None:
    assert _lock_password("root::19000:0:99999:7:::") == "root:*:19000:0:99999:7:::"
    assert _lock_password("root:$6$hash:1::::::") == "root:$6$hash:1::::::"
    assert _lock_password("daemon::1::::::") == "daemon::1::::::"


def test_guest_paths_stay_in_the_tree(tmp_path: Path) -> None:
    assert guest_path(tmp_path, "/etc/hosts") == tmp_path / "etc" / "hosts"
    with pytest.raises(BuildError):
        guest_path(tmp_path, "/etc/../../x")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    write(tmp_path, "/etc/resolv.conf", "nameserver 10.0.2.3\n")
    assert not (tmp_path / "etc" / "resolv.conf").is_symlink()
    write(tmp_path, "/opt/kvmple/bin/x", b"#!/bin/sh\n", 0o755)
    assert (tmp_path / "opt" / "kvmple" / "bin" / "x").stat().st_mode & 0o777 == 0o755


def test_host_key_lines() -> None:
    text = "# pinned\nssh-ed25519 AAAAC3 root@guest\n\necdsa-sha2-nistp256 AAAAE2\n"
    assert host_key_lines(text) == ("ssh-ed25519 AAAAC3", "ecdsa-sha2-nistp256 AAAAE2")
    with pytest.raises(ValueError, match="not an SSH public key"):
        host_key_lines("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="no SSH public key"):
        host_key_lines("# nothing\n")


def test_image_record_round_trip(tmp_path: Path) -> None:
    image = Image(
        name="img",
        key="k" * 64,
        qcow2=tmp_path / "disk.qcow2",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        cmdline=cmdline_for(("net.ifnames=0", "quiet")),
        ssh_user="root",
        host_keys=("ssh-ed25519 AAAA",),
        manifest=ImageManifest(name="img", key="k" * 64, packages={"a": "1"}),
    )
    assert image.cmdline == "root=/dev/vda console=ttyS0 net.ifnames=0 quiet"
    assert image.known_hosts("127.0.0.1", 2222) == "[127.0.0.1]:2222 ssh-ed25519 AAAA\n"
    assert image.known_hosts("guest", 22) == "guest ssh-ed25519 AAAA\n"
    (tmp_path / "image.json").write_text(json.dumps(image.to_json()))
    (tmp_path / "manifest.json").write_text(json.dumps(image.manifest.document()))
    assert load_image(tmp_path) == image
    assert load_image(tmp_path).manifest == image.manifest
    # a cache directory moved elsewhere reads its own files, not the ones it was built with
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)
    again = load_image(moved)
    assert (again.qcow2, again.kernel, again.initrd) == (
        moved / "disk.qcow2",
        moved / "vmlinuz",
        moved / "initrd.img",
    )


def test_disk_too_small_is_a_clear_build_error(tmp_path: Path) -> None:
    from kvmple.image.disk import make_disk
    from tests.support import need_program

    need_program("mkfs.ext4")
    need_program("qemu-img")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(6 * 1024 * 1024))
    log = tmp_path / "build.log"
    with pytest.raises(BuildError, match="disk_size is too small") as info:
        make_disk(tree, "4M", tmp_path / "disk.qcow2", log)
    assert info.value.hint is not None and str(log) in info.value.hint
    assert not (tmp_path / "disk.raw").exists() and not (tmp_path / "disk.qcow2").exists()


def test_disk_from_a_tree(tmp_path: Path) -> None:
    from kvmple.image.disk import make_disk
    from kvmple.run import run
    from tests.support import need_program

    need_program("mkfs.ext4")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("kvmple-guest\n")
    make_disk(tree, "16M", tmp_path / "disk.qcow2", tmp_path / "build.log")
    info = json.loads(
        run(["qemu-img", "info", "--output=json", tmp_path / "disk.qcow2"], timeout=60).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 * 1024 * 1024
    assert not (tmp_path / "disk.raw").exists()


def test_probe_qemu_argv(tmp_path: Path) -> None:
    from kvmple.image.probe import qemu_argv

    image = Image(
        name="img",
        key="k" * 64,
        qcow2=tmp_path / "disk.qcow2",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        cmdline="root=/dev/vda console=ttyS0",
        ssh_user="root",
        host_keys=("ssh-ed25519 AAAA",),
        manifest=ImageManifest(name="img", key="k" * 64),
    )
    argv = qemu_argv(
        image,
        tmp_path / "overlay.qcow2",
        tmp_path / "console.log",
        2222,
        cpus=2,
        memory_mib=2048,
        accel="tcg,thread=multi",
    )
    joined = " ".join(argv)
    assert f"file={tmp_path / 'overlay.qcow2'},if=virtio" in joined  # never the cached disk
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined  # the forwarded port is loopback only
    assert argv[argv.index("-append") + 1] == "root=/dev/vda console=ttyS0"
