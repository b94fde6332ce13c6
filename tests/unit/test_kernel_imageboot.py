"""``kvmple kernel boot-test --image``: command line, root= choice, QEMU argv, failure
reasons, option handling and cleanup. The cleanup tests run the real qemu-img and QEMU with a
kernel file QEMU refuses at once, so no guest ever boots here (the real tier boots one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.console import NO_OUTPUT, ConsoleLog, diagnose
from kvmple.errors import ConfigError, GuestError, UsageError
from kvmple.image.artifact import Image
from kvmple.image.probe import qemu_argv
from kvmple.kernel import imageboot
from kvmple.kernel.bootpass import RECORD, load_pass, record_pass
from kvmple.kernel.build import IMAGE_FRAGMENT, resolve_fragment
from kvmple.kernel.configs import IMAGE_BOOT_FRAGMENT, parse_config
from kvmple.kernel.imageboot import (
    IMAGE_KERNEL_NEEDS,
    ImageBootResult,
    boot_cmdline,
    failure_reason,
    image_boot_test,
    root_parameter,
)
from kvmple.qemu import DirectBoot, accel_arg
from kvmple.run import run
from tests.support import need_program

IMAGE_CMDLINE = "root=/dev/vda console=ttyS0 net.ifnames=0 no_timer_check quiet"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJFKoyDs7jB3ARFllwwMU+/f52TFbauejGwMGsEtNFu6"


def _image(tmp_path: Path, cmdline: str = IMAGE_CMDLINE) -> Image:
    return Image(
        name="img",
        key="k" * 64,
        qcow2=tmp_path / "disk.qcow2",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        cmdline=cmdline,
        ssh_user="root",
        host_keys=(HOST_KEY,),
        manifest={},
    )


# ------------------------------------------------------------------- command line, root=


def test_boot_cmdline_keeps_the_images_root_and_drops_quiet() -> None:
    line = boot_cmdline(IMAGE_CMDLINE)
    assert line == "root=/dev/vda console=ttyS0 net.ifnames=0 no_timer_check panic=-1"
    # a panic=N of the image is replaced: a panic must end QEMU at once
    assert boot_cmdline("root=/dev/vdb panic=30") == "root=/dev/vdb panic=-1"
    # --append comes last, so it can override (the kernel takes the last root=)
    line = boot_cmdline(IMAGE_CMDLINE, "root=/dev/vdb  loglevel=7")
    assert line.endswith("panic=-1 root=/dev/vdb loglevel=7")
    assert root_parameter(line) == "root=/dev/vdb"


def test_root_parameter_is_the_last_root_and_is_required() -> None:
    assert root_parameter(IMAGE_CMDLINE) == "root=/dev/vda"
    assert root_parameter("root=/dev/vda ro root=UUID=abc") == "root=UUID=abc"
    with pytest.raises(ConfigError, match=r"has no root= \('console=ttyS0'\)"):
        boot_cmdline("console=ttyS0")


def test_qemu_accel() -> None:
    assert accel_arg("kvm", 2) == "kvm"
    assert accel_arg("tcg", 1) == "tcg"
    assert accel_arg("tcg", 2) == "tcg,thread=multi"
    assert accel_arg("tcg,thread=single", 2) == "tcg,thread=single"  # raw values pass


def _argv(image: Image, tmp_path: Path, boot: DirectBoot | None = None) -> list[str]:
    return qemu_argv(
        image,
        tmp_path / "o.qcow2",
        tmp_path / "c.log",
        2222,
        cpus=2,
        memory_mib=2048,
        accel="tcg,thread=multi",
        boot=boot,
    )


def test_qemu_argv_boots_the_built_kernel_with_the_image_as_root(tmp_path: Path) -> None:
    image = _image(tmp_path)
    built = tmp_path / "build" / "bzImage"
    boot = DirectBoot(built, None, boot_cmdline(image.cmdline))
    argv = _argv(image, tmp_path, boot)
    assert argv[argv.index("-kernel") + 1] == str(built)
    assert "-initrd" not in argv  # drivers built in: no initrd unless one is given
    assert argv[argv.index("-append") + 1] == boot.cmdline
    joined = " ".join(argv)
    assert f"file={tmp_path / 'o.qcow2'},if=virtio" in joined  # the overlay, never the image
    assert str(image.qcow2) not in joined
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined and "0.0.0.0" not in joined
    assert "-no-reboot" in argv  # with panic=-1 a panic ends QEMU
    argv = _argv(image, tmp_path, DirectBoot(built, tmp_path / "initrd", boot.cmdline))
    assert argv[argv.index("-initrd") + 1] == str(tmp_path / "initrd")
    # without a DirectBoot the probe boots the image's own kernel, initrd and line, as before
    argv = _argv(image, tmp_path)
    assert argv[argv.index("-kernel") + 1] == str(image.kernel)
    assert argv[argv.index("-initrd") + 1] == str(image.initrd)
    assert argv[argv.index("-append") + 1] == IMAGE_CMDLINE


# -------------------------------------------------------------------------- diagnosis

TINY_PANIC = """\
[    1.9] virtio_blk virtio0: [vda] 8388608 512-byte logical blocks (4.29 GB/4.00 GiB)
[    2.1] VFS: Cannot open root device "vda" or unknown-block(254,0): error -19
[    2.1] Please append a correct "root=" boot option; here are the available partitions:
[    2.1] fe00         4194304 vda
[    2.1]  driver: virtio_blk
[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(254,0)
"""


def test_diagnose_names_the_reason_in_one_line() -> None:
    reason = diagnose(TINY_PANIC, "root=/dev/vda")
    assert reason is not None and "\n" not in reason
    assert "cannot mount the image's root (root=/dev/vda)" in reason
    assert "virtio-blk and ext4" in reason
    no_init = "Kernel panic - not syncing: No working init found.  Try passing init= option"
    assert "could not run the image's init" in str(diagnose(no_init, "root=/dev/vda"))
    oops = "BUG: kernel NULL pointer dereference\nKernel panic - not syncing: Fatal exception\n"
    assert diagnose(oops, "root=/dev/vda") == "the kernel panicked: Fatal exception"
    frozen = "Welcome to Debian GNU/Linux 12!\n[!!!!!!] Failed to mount API filesystems.\n"
    frozen += "Freezing execution.\n"
    assert diagnose(frozen, "root=/dev/vda") == (
        "systemd stopped at start-up: [!!!!!!] Failed to mount API filesystems."
    )
    welcome = "Welcome to Debian GNU/Linux 12 (bookworm)!\n[  OK  ] Reached target basic.target"
    assert diagnose(welcome, "root=/dev/vda") == "systemd started, but no SSH login followed"
    assert diagnose("Booting the kernel.\n", "root=/dev/vda") is None
    assert diagnose(" \n", "root=/dev/vda") == NO_OUTPUT
    stall = "[ 40.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
    assert "starved" in str(diagnose(stall + "Welcome to Debian\n"))
    lockup = "watchdog: BUG: soft lockup - CPU#1 stuck for 31s! [swapper/1:0]\n"
    assert "soft lockup - CPU#1 stuck for 31s" in str(diagnose(lockup))


def test_console_log_tail(tmp_path: Path) -> None:
    log = ConsoleLog(tmp_path / "console.log")
    assert log.text() == "" and log.tail() == "" and log.indented() == "(the console stayed empty)"
    log.path.write_text("one\n\n  two  \nthree\n")
    assert log.tail(2) == "  two\nthree"
    assert log.tail(5, sep=" | ") == "one |   two | three"
    assert log.indented(2) == "  two\n    three"
    assert not log.panicked() and log.diagnose() is None


def test_failure_reason_falls_back_to_qemu_then_to_the_ssh_wait() -> None:
    qemu_died = "QEMU exited (1) while booting img: "
    said = "qemu-system-x86_64: Error loading uncompressed kernel without PVH ELF Note\n"
    assert failure_reason(qemu_died, "", said, "root=/dev/vda") == (
        "QEMU exited before SSH answered (QEMU: qemu-system-x86_64: Error loading "
        "uncompressed kernel without PVH ELF Note)"
    )
    assert failure_reason(qemu_died, "", "", "root=/dev/vda") == "QEMU exited before SSH answered"
    waited = "img: no SSH login within 300s (last: Connection refused); console: a | b"
    assert failure_reason(waited, "Booting\n", "", "root=/dev/vda") == (
        "no SSH login within 300s (last: Connection refused)"
    )
    # the console wins over QEMU's exit: it says why
    assert "cannot mount" in failure_reason(qemu_died, TINY_PANIC, said, "root=/dev/vda")


def test_the_fragment_has_everything_the_error_says_a_kernel_needs(tmp_path: Path) -> None:
    fragment = parse_config(IMAGE_BOOT_FRAGMENT)
    named = re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", IMAGE_KERNEL_NEEDS)
    assert {"VIRTIO_BLK", "VIRTIO_NET", "EXT4_FS", "CGROUPS", "DEVTMPFS"} <= set(named)
    for symbol in named:
        if symbol in ("DEVTMPFS",):  # in the kvmple-boot fragment this one builds on
            continue
        assert fragment.get(symbol) == "y", symbol
    path = resolve_fragment(IMAGE_FRAGMENT, tmp_path, tmp_path)
    assert path == tmp_path / "kvmple-image.config"
    assert parse_config(path.read_text()) == fragment


# ---------------------------------------------------------------------- option handling


def _build_dir(tmp_path: Path, kernel: Path) -> Path:
    """What a finished 'kvmple kernel build' leaves: its manifest naming the image."""
    out = tmp_path / "out"
    out.mkdir()
    manifest = {"image": str(kernel), "release": "6.1.0-test", "image_sha256": "ab" * 32}
    (out / "kvmple-build.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--initrd", "/boot/initrd.img"], "--initrd and --append go with --image"),
        (["--append", "loglevel=7"], "--initrd and --append go with --image"),
        (["--image", "debian12-amqp", "--cpus", "0"], "--cpus must be 1 or more"),
        (["--image", "debian12-amqp", "--timeout", "0"], "--timeout must be more than 0"),
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], text: str
) -> None:
    out = _build_dir(tmp_path, tmp_path / "bzImage")
    assert main(["kernel", "boot-test", "--build", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err


def test_unknown_image_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _build_dir(tmp_path, tmp_path / "bzImage")
    assert main(["kernel", "boot-test", "--build", str(out), "--image", "no-such-image"]) == 3
    err = capsys.readouterr().err
    assert "no image recipe named 'no-such-image'" in err and "Traceback" not in err


def test_missing_kernel_and_missing_initrd(tmp_path: Path) -> None:
    image = _image(tmp_path)
    with pytest.raises(GuestError, match="no kernel image"):
        image_boot_test(tmp_path / "none", "6.1.0", image, log=tmp_path / "c.log")
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"x")
    with pytest.raises(UsageError, match=r"--initrd .*: no such file"):
        image_boot_test(kernel, "6.1.0", image, log=tmp_path / "c.log", initrd=tmp_path / "no")


def test_record_says_which_boot_test_passed(tmp_path: Path) -> None:
    result = ImageBootResult(
        True, "6.1.0", "6.1.0", "img", 30.5, 41.0, "tcg", "c.log", "root=/dev/vda", None
    )
    record_pass(tmp_path, result, "ab" * 32, kind="image")
    record = load_pass(tmp_path)
    assert record is not None and record.kind == "image"
    assert record.image_sha256 == "ab" * 32 and record.accel == "tcg"
    on_disk = json.loads((tmp_path / RECORD).read_text())
    assert on_disk["seconds_to_ssh"] == 30.5 and on_disk["schema_version"] == 1
    assert not (tmp_path / f"{RECORD}.tmp").exists()


# ---------------------------------------------------- cleanup, with the real QEMU refusing


def _byo_image(tmp_path: Path) -> Path:
    """A bring-your-own recipe on a real (empty) qcow2: a valid --image for QEMU to start."""
    need_program("qemu-img")
    need_program("qemu-system-x86_64")
    disk = tmp_path / "byo" / "disk.qcow2"
    disk.parent.mkdir()
    run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"], timeout=60)
    kernel = disk.parent / "vmlinuz"  # the image's own kernel: only checked, never booted here
    kernel.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 100)
    (disk.parent / "initrd.img").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    (disk.parent / "host_keys").write_text(HOST_KEY + "\n")
    recipe = tmp_path / "byo.yaml"
    recipe.write_text(
        "name: byo-test\n"
        "bring_your_own:\n"
        f"  qcow2: {disk}\n  kernel: {kernel}\n  initrd: {disk.parent / 'initrd.img'}\n"
        f"  host_keys: {disk.parent / 'host_keys'}\n"
    )
    return recipe


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".boot-test-image"))


def test_a_kernel_qemu_refuses_fails_in_one_line_and_leaves_no_overlay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _byo_image(tmp_path)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"not a kernel\n" * 100)
    out = _build_dir(tmp_path, kernel)
    argv = ["kernel", "boot-test", "--build", str(out), "--image", str(recipe), "--accel", "tcg"]
    assert main([*argv, "--timeout", "60"]) == 7
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("kvmple: error: image boot test (byo-test, tcg): QEMU exited")
    # what QEMU said ("qemu: invalid kernel header" from QEMU 7.2), in the same line
    assert re.search(r"\(QEMU: [^)]*kernel[^)]*\); console tail:$", first), first
    assert f"full console log: {out / 'boot-test-image.log'}" in err
    assert "VIRTIO_BLK" in err and "kvmple-image" in err  # what the kernel needs, said plainly
    assert (out / "boot-test-image.log").is_file()  # the console log is kept
    assert _leftovers(out) == []  # overlay, known_hosts, qemu.log: gone
    assert load_pass(out) is None
    assert not list(tmp_path.rglob("overlay.qcow2"))


def test_ctrl_c_while_waiting_removes_the_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmple.image.builder import build

    image = build(_byo_image(tmp_path))
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"not a kernel\n")
    seen: list[bool] = []

    def interrupted(guest: object, alive: object, timeout: float) -> float:
        seen.append((tmp_path / "out").exists() and any((tmp_path / "out").rglob("overlay.qcow2")))
        raise KeyboardInterrupt

    monkeypatch.setattr(imageboot, "wait_ssh", interrupted)  # the seam: where Ctrl-C lands
    (tmp_path / "out").mkdir()
    with pytest.raises(KeyboardInterrupt):
        image_boot_test(kernel, "6.1.0", image, log=tmp_path / "out" / "c.log", accel="tcg")
    assert seen == [True]  # the overlay existed while "waiting"
    assert _leftovers(tmp_path / "out") == []
    assert not list(tmp_path.rglob("overlay.qcow2"))
