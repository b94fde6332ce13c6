"""Real tier: build debian12-amqp (warm from the shared cache, or cold), boot it under QEMU
(TCG here), log in over SSH with the pinned host key, and see RabbitMQ move messages.
The cold paths kept cheap here are the failures: they must leave nothing in the cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from kvmple.errors import BuildError
from kvmple.image import build, byo, cache
from kvmple.image.probe import booted, wait_amqp, wait_ssh
from kvmple.remote import HostKeyMismatch, SSHExecutor
from kvmple.run import run
from tests.support import need, need_program, need_root

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "guest-images" / "debian12-amqp.yaml"
# Generous: CI shares this 2-core machine with other guests; the bench reports real figures.
SSH_TIMEOUT = 600
AMQP_TIMEOUT = 900

ROUND_TRIP = """\
import amqp
with amqp.Connection("127.0.0.1") as connection:
    channel = connection.channel()
    channel.queue_declare("kvmple-image-test", auto_delete=False)
    for n in range(100):
        channel.basic_publish(amqp.Message(str(n)), routing_key="kvmple-image-test")
    got = [channel.basic_get("kvmple-image-test", no_ack=True).body for _ in range(100)]
    channel.queue_delete("kvmple-image-test")
print(len(got), got[0], got[-1])
"""


def prerequisites() -> None:
    need_root()
    for program in ("debootstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "ssh"):
        need_program(program)


def test_debian12_amqp_builds_boots_and_serves_amqp(shared_cache: Path, tmp_path: Path) -> None:
    prerequisites()
    image = build(RECIPE)
    packages = image.manifest.packages
    for package in ("openssh-server", "rabbitmq-server", "python3-amqp", "rt-tests", "procps"):
        assert package in packages, package
    assert byo.is_bzimage(image.kernel.read_bytes()[:1024])
    assert byo.is_initrd(image.initrd.read_bytes()[:16])
    assert len(image.manifest.host_key_fingerprints) == len(image.host_keys) >= 1
    assert image.qcow2.parent.parent == cache.images_dir()
    assert (image.qcow2.parent / "build.log").is_file()

    # warm: the second build is a cache hit and touches nothing
    stamp = (image.qcow2.parent / "image.json").stat().st_mtime_ns
    assert build(RECIPE) == image
    assert (image.qcow2.parent / "image.json").stat().st_mtime_ns == stamp

    with booted(image, tmp_path / "vm") as (guest, alive):
        wait_ssh(guest, alive, SSH_TIMEOUT)
        facts = guest.ssh(
            ["sh", "-c", "hostname; uname -r; findmnt -no FSTYPE /; ls /opt/kvmple/bin; id -un"],
            timeout=120,
        ).stdout.split()
        assert facts[:3] == ["kvmple-guest", image.manifest.kernel_release, "ext4"]
        assert facts[-1] == "root"
        for program in load_programs():
            assert program in facts
        localhost = guest.ssh(["getent", "ahostsv4", "localhost"], timeout=60).stdout
        assert localhost.startswith("127.0.0.1 ")  # minbase alone has no localhost entry

        # the pin is real: a client pinning another key is refused
        other = tmp_path / "other_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], timeout=30)
        wrong = SSHExecutor(
            "127.0.0.1",
            guest.port,
            image.ssh_user,
            guest.executor.key,
            [other.with_suffix(".pub").read_text()],
            name="wrong pin",
        )
        with wrong, pytest.raises(HostKeyMismatch):
            wrong.run(["true"], timeout=120)

        sshd = guest.ssh(["sshd", "-T"], timeout=120).stdout
        assert "passwordauthentication no" in sshd

        wait_amqp(guest, AMQP_TIMEOUT)
        moved = guest.ssh(["python3", "-c", ROUND_TRIP], timeout=300).stdout.split()
        assert moved == ["100", "0", "99"]
        # the recipe's rabbitmq.conf is read (a starved broker must not reset slow handshakes)
        timeout = guest.ssh(
            ["rabbitmqctl", "eval", "application:get_env(rabbit, handshake_timeout)."],
            timeout=300,
        ).stdout.strip()
        assert timeout == "{ok,120000}"


def load_programs() -> tuple[str, ...]:
    from kvmple.image.recipe import load_recipe

    return load_recipe(RECIPE).guest_programs


def assert_cache_clean() -> None:
    assert cache.entries() == []
    assert not list(cache.images_dir().glob(".build-*"))


def test_unknown_package_fails_cleanly(tmp_path: Path) -> None:
    prerequisites()
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("name: typo\npackages: [procps, kvmple-no-such-package]\n")
    with pytest.raises(BuildError) as info:
        build(recipe)
    assert info.value.message == (
        "step debootstrap failed: unknown package(s): kvmple-no-such-package"
    )
    assert info.value.hint is not None and "full log: " in info.value.hint
    log = Path(info.value.hint.split("full log: ")[1])
    assert log.is_file() and "kvmple-no-such-package" in log.read_text()
    assert_cache_clean()


def test_unknown_suite_fails_cleanly(tmp_path: Path) -> None:
    prerequisites()
    recipe = tmp_path / "suite.yaml"
    recipe.write_text("name: suite\nsuite: bookwurm\n")
    with pytest.raises(BuildError, match="suite 'bookwurm' not found on mirror"):
        build(recipe)
    assert_cache_clean()


def test_unreachable_mirror_fails_cleanly(tmp_path: Path) -> None:
    prerequisites()
    recipe = tmp_path / "mirror.yaml"
    recipe.write_text("name: mirror\nmirror: http://127.0.0.1:9/debian\n")
    with pytest.raises(BuildError, match=re.escape("mirror http://127.0.0.1:9/debian unreachable")):
        build(recipe)
    assert_cache_clean()


def test_not_root_is_a_host_error(request: pytest.FixtureRequest) -> None:
    prerequisites()
    need(Path("/usr/bin/setpriv").exists(), "setpriv (util-linux) is needed to drop root")
    home = Path(tempfile.mkdtemp(prefix="kvmple-nobody-"))  # /tmp: reachable for nobody
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    os.chown(home, 65534, 65534)
    recipe = home / "r.yaml"
    recipe.write_text("name: r\n")
    env = {f"KVMPLE_{d}_DIR": str(home / d.lower()) for d in ("CACHE", "STATE", "DATA")}
    result = run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            sys.executable,
            "-m",
            "kvmple.cli",
            "image",
            "build",
            recipe,
        ],
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**env, "HOME": str(home)},
    )
    assert result.returncode == 4, result.stderr
    assert "building an image needs root" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((home / "cache" / "images").glob("*-*"))


def test_cli_warm_build_and_list(shared_cache: Path) -> None:
    prerequisites()
    image = build(RECIPE)  # cached by now (or built once here)
    env = {"KVMPLE_CACHE_DIR": str(shared_cache), "KVMPLE_KEY_DIR": str(shared_cache / "ssh")}
    cli = [sys.executable, "-m", "kvmple.cli", "image"]
    built = run([*cli, "build", "debian12-amqp", "--json"], timeout=120, cwd=ROOT, env=env)
    assert json.loads(built.stdout)["key"] == image.key
    listed = json.loads(run([*cli, "list", "--json"], timeout=120, cwd=ROOT, env=env).stdout)
    assert image.key in [row["key"] for row in listed]
