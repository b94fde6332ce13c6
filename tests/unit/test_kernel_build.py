"""Config merging checks, the initramfs writer and the boot-test pieces that need no kernel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kvmple.errors import BuildError, ConfigError, GuestError
from kvmple.events import Progress, ProgressEnded, ProgressStarted, Recorder
from kvmple.kernel.boottest import boot_test, find_marker, qemu_argv
from kvmple.kernel.build import BuildRequest, build_kernel, load_manifest, resolve_fragment
from kvmple.kernel.configs import (
    BOOT_TEST_FRAGMENT,
    check_fragments,
    kconfig_symbols,
    parse_config,
)
from kvmple.kernel.initramfs import (
    INIT_SCRIPT,
    MARKER,
    Entry,
    boot_entries,
    boot_initramfs,
    is_static_elf,
    newc_archive,
)
from kvmple.run import run, which
from tests.unit.kernel_fake_tree import make_tree

FINAL = """\
CONFIG_64BIT=y
CONFIG_KVM=m
CONFIG_LOCALVERSION="-x"
# CONFIG_KVM_INTEL is not set
CONFIG_NR_CPUS=4
"""


def test_parse_config() -> None:
    assert parse_config(FINAL) == {
        "64BIT": "y",
        "KVM": "m",
        "LOCALVERSION": '"-x"',
        "KVM_INTEL": "n",
        "NR_CPUS": "4",
    }


def test_fragment_option_that_vanished_is_caught() -> None:
    fragments = {"kvm.config": {"KVM": "m", "KVM_INTEL": "y", "NR_CPUS": "4"}}
    check = check_fragments(fragments, parse_config(FINAL), {"KVM_INTEL": {""}}, "x86")
    assert [m.describe() for m in check.vanished] == [
        "CONFIG_KVM_INTEL=y (from kvm.config) is not set"
    ]
    assert check.checked == 3


def test_other_arch_and_allowed_options_are_reported_not_fatal() -> None:
    fragments = {
        "kvm_guest.config": {"S390_GUEST": "y", "SCSI_VIRTIO": "y"},
        "mine.config": {"64BIT": "y"},
    }
    symbols = {"S390_GUEST": {"s390"}, "SCSI_VIRTIO": {""}}
    check = check_fragments(fragments, parse_config(FINAL), symbols, "x86", {"SCSI_VIRTIO"})
    assert check.vanished == []
    assert [m.symbol for m in check.other_arch] == ["S390_GUEST"]
    assert [m.symbol for m in check.allowed] == ["SCSI_VIRTIO"]


def test_a_later_fragment_overrides_an_earlier_one() -> None:
    fragments = {"a.config": {"KVM_INTEL": "y"}, "b.config": {"KVM_INTEL": "n"}}
    assert check_fragments(fragments, parse_config(FINAL), {}, "x86").vanished == []


def test_kconfig_symbols_know_the_arch(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    symbols = kconfig_symbols(tree)
    assert symbols["FAKE_GENERIC"] == {""}
    assert symbols["S390_ONLY"] == {"s390"}


def test_builtin_boot_fragment_covers_the_boot_gate() -> None:
    options = parse_config(BOOT_TEST_FRAGMENT)
    for needed in (
        "64BIT",
        "PRINTK",
        "TTY",
        "SERIAL_8250_CONSOLE",
        "BLK_DEV_INITRD",
        "BINFMT_ELF",
        "BINFMT_SCRIPT",
        "DEVTMPFS",
        "PROC_FS",
        "SYSFS",
    ):
        assert options[needed] == "y"


def test_unknown_fragment(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    with pytest.raises(ConfigError, match=re.escape("fragment 'nope.config' not found")):
        resolve_fragment("nope.config", tree, tmp_path)


def test_tree_configured_in_place_is_refused(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    (tree / ".config").write_text(FINAL)
    with pytest.raises(BuildError, match="configured or built in place") as caught:
        build_kernel(BuildRequest(tree=tree, out=tmp_path / "out"))
    assert "mrproper" in (caught.value.hint or "")


def test_bad_base_config(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    with pytest.raises(ConfigError, match="neither a file nor a make"):
        build_kernel(BuildRequest(tree=tree, out=tmp_path / "out", base="no/such/file"))


def test_build_failure_names_the_step_and_log(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")  # its Makefile has no tinyconfig target
    with pytest.raises(BuildError) as caught:
        build_kernel(BuildRequest(tree=tree, out=tmp_path / "out"))
    assert "kernel build step 'make tinyconfig' failed" in caught.value.message
    assert caught.value.hint == f"full log: {tmp_path / 'out' / 'build.log'}"
    assert not (tmp_path / "out" / "kvmple-build.json").exists()


# ------------------------------------------------------------------------- initramfs


def test_newc_archive_is_read_by_cpio(tmp_path: Path) -> None:
    if which("cpio") is None:
        pytest.skip("cpio not installed")
    archive = newc_archive(
        [
            Entry("dir", 0o040755),
            Entry("dir/file", 0o100644, b"hello\n"),
            Entry("link", 0o120777, b"dir/file"),
            Entry("dev/console", 0o020600, rdev=(5, 1)),
        ]
    )
    (tmp_path / "a.cpio").write_bytes(archive)
    listing = run(["cpio", "-itv", "-F", tmp_path / "a.cpio"], timeout=30)
    names = [
        line.split()[-1] if "->" not in line else line.split()[-3]
        for line in listing.stdout.splitlines()
    ]
    assert names == ["dir", "dir/file", "link", "dev/console"]
    assert "5,   1" in listing.stdout or "5, 1" in listing.stdout


def test_static_elf_detection() -> None:
    assert not is_static_elf(Path("/bin/ls").read_bytes())
    assert not is_static_elf(b"#!/bin/sh\n")
    busybox = Path("/bin/busybox")
    if busybox.exists():
        assert is_static_elf(busybox.read_bytes())


def test_boot_initramfs_is_cached_by_content(tmp_path: Path) -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static not installed")
    first = boot_initramfs(tmp_path)
    assert boot_initramfs(tmp_path) == first
    assert first.stat().st_size > 500_000
    names = [e.name for e in boot_entries(b"x")]
    assert {"init", "bin/busybox", "dev/console"} <= set(names)
    assert MARKER in INIT_SCRIPT and "uname -r" in INIT_SCRIPT


# ------------------------------------------------------------------------- boot test


def test_qemu_argv_boots_directly_without_devices() -> None:
    argv = qemu_argv(Path("/k"), Path("/i"), accel="tcg", token="abc", memory_mib=256, cpus=1)
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "tcg"]
    assert "-no-reboot" in argv and "-nodefaults" in argv
    append = argv[argv.index("-append") + 1]
    assert "console=ttyS0" in append and "kvmple_token=abc" in append
    smp = qemu_argv(Path("/k"), Path("/i"), accel="tcg", token="t", memory_mib=256, cpus=2)
    assert "tcg,thread=multi" in smp


def test_marker_needs_this_boots_token() -> None:
    console = f"noise\n{MARKER} release=6.1.0-old token=aaaa\n{MARKER} release=6.1.0 token=bbbb\n"
    assert find_marker(console, "bbbb") == "6.1.0"
    assert find_marker(console, "cccc") is None


def test_boot_test_without_image(tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="no kernel image"):
        boot_test(tmp_path / "bzImage", "6.1.0")


def test_boot_test_of_something_that_is_not_a_kernel(tmp_path: Path) -> None:
    if which("qemu-system-x86_64") is None:
        pytest.skip("qemu not installed")
    image = tmp_path / "bzImage"
    image.write_bytes(b"\0" * 4096)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(newc_archive([]))
    with pytest.raises(GuestError) as caught:
        boot_test(image, "6.1.0", initrd=initrd, accel="tcg", timeout=30)
    assert "boot test" in caught.value.message
    assert "console log" in (caught.value.hint or "")


FAKE_KBUILD = """
tinyconfig:
\t@printf 'CONFIG_MODULES=y\\nCONFIG_64BIT=y\\n' > $(O)/.config
olddefconfig:
\t@true
bzImage:
\t@echo '  CC      init/main.o'; mkdir -p $(O)/arch/x86/boot
\t@echo kernel > $(O)/arch/x86/boot/bzImage
modules:
\t@true
modules_install:
\t@mkdir -p $(INSTALL_MOD_PATH)/lib/modules/6.1.0-fake
kernelrelease:
\t@echo 6.1.0-fake
"""


def test_build_runs_every_step_and_writes_the_manifest(tmp_path: Path) -> None:
    """The whole build_kernel path (base config, fragment merge, olddefconfig, check,
    bzImage, modules_install, kernelrelease, manifest) against a tree whose Makefile and
    merge_config.sh stand in for kbuild's."""
    tree = make_tree(tmp_path / "linux")
    with (tree / "Makefile").open("a") as makefile:
        makefile.write(FAKE_KBUILD)
    merge = tree / "scripts" / "kconfig" / "merge_config.sh"
    merge.parent.mkdir(parents=True)
    merge.write_text(
        '#!/bin/sh\n# -m -O OUT CONFIG FRAGMENT...\nconfig=$4; shift 4\ncat "$@" >> "$config"\n'
    )
    merge.chmod(0o755)
    fragment = tmp_path / "extra.config"
    fragment.write_text("CONFIG_64BIT=y\n")
    out = tmp_path / "out"
    shown = Recorder()
    manifest = build_kernel(
        BuildRequest(tree=tree, out=out, fragments=(str(fragment),), ccache=False, jobs=1),
        sink=shown,
    )
    assert manifest.release == "6.1.0-fake"
    # one progress display over make, counting the objects kbuild reports
    assert shown == [
        ProgressStarted("make"),
        Progress(done=1, status="CC      init/main.o"),
        ProgressEnded(),
    ]
    assert manifest.image == out / "arch" / "x86" / "boot" / "bzImage"
    assert manifest.modules == out / "modules-install"
    assert (out / "modules-install" / "lib" / "modules" / "6.1.0-fake").is_dir()
    assert manifest.fragments == (str(fragment),) and manifest.base == "tinyconfig"
    on_disk = json.loads((out / "kvmple-build.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["image"] == str(manifest.image)
    assert load_manifest(out) == manifest
    log = (out / "build.log").read_text()
    assert "CC      init/main.o" in log
