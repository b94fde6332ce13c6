"""The kernel pipeline for real, on Debian's linux-source-6.1.

- unpack /usr/src/linux-source-6.1.tar.xz once (cached in /var/cache/kvmple-tests)
- the yield_to series is detected as already upstream in 6.1 (version + content markers)
- Debian's own quilt series (debian/patches of the 'linux' source package, fetched with
  apt-get source through a private apt configuration) is checked patch by patch
- the kvmple-selftest series is applied to a hard-linked copy, the tree is built from cold
  (tinyconfig + kvm_guest.config + kvmple-boot, ccache off), boot-tested under QEMU to user
  space with the expected release and the patched console line; a too-short timeout shows
  the hang path; the install plan accepts exactly this tested image.
- boot-test --image: the debian12-amqp image's own Debian kernel + initrd, taken as "the
  built kernel", boots the image to SSH with the release checked; the tinyconfig kernel
  above (no ext4) fails fast with the reason in one line and the console tail, no overlay
  left behind.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.errors import BuildError, GuestError
from kvmple.image import resolve
from kvmple.kernel.apply import Status, apply_series
from kvmple.kernel.bootpass import load_pass
from kvmple.kernel.boottest import boot_test
from kvmple.kernel.build import BuildManifest, BuildRequest, build_kernel, load_manifest
from kvmple.kernel.fetch import debian_patches, unpack_tree
from kvmple.kernel.install import HostFacts, plan_install
from kvmple.kernel.series import load_series
from kvmple.kernel.sources import series_from_quilt_dir
from kvmple.kernel.tree import inspect_tree
from kvmple.kernel.upstream import check_upstream
from tests.support import need, need_program

pytestmark = pytest.mark.real

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SHARED = Path("/var/cache/kvmple-tests")
SELFTEST_LINE = "kvmple-selftest: patched kernel reached kernel_init"
# Generous bound for a loaded 2-core CI host; SSH answers after ~30-60 s of TCG when quiet.
IMAGE_SSH_TIMEOUT = "600"


@pytest.fixture(scope="module")
def pristine() -> Path:
    need(TARBALL.is_file(), f"{TARBALL} missing (apt-get install linux-source-6.1)")
    for program in ("tar", "patch", "make", "gcc", "flex", "bison", "bc"):
        need_program(program)
    SHARED.mkdir(parents=True, exist_ok=True)
    return unpack_tree(TARBALL, SHARED)


def test_yield_to_series_is_already_upstream_in_61(pristine: Path) -> None:
    series, folder = load_series("yield-to-ple-v7")
    tree = inspect_tree(pristine)
    assert tree.version[:2] == (6, 1) and not tree.is_git
    presence = check_upstream(series, tree)
    assert all(p.upstream for p in presence)
    # every content marker is really there in Debian's 6.1 (none "MISSING")
    assert not [p.evidence for p in presence if "MISSING" in p.evidence]
    report = apply_series(series, folder, pristine)
    assert [r.status for r in report.results] == [Status.upstream] * 7
    assert report.target is None


def test_debian_quilt_series_per_patch_status(pristine: Path, tmp_path: Path) -> None:
    need_program("apt-get")
    folder, version = debian_patches(SHARED)
    series = series_from_quilt_dir(folder)
    started = time.monotonic()
    report = apply_series(series, folder, pristine, check_only=True)
    seconds = time.monotonic() - started
    counts = Counter(r.status for r in report.results)
    print(
        f"\nDebian linux {version} quilt series vs {inspect_tree(pristine).version_text}: "
        + ", ".join(f"{n} {s.value}" for s, n in counts.items())
        + f" in {seconds:.1f} s"
    )
    assert len(report.results) == len(series.patches) > 100
    # linux-source-6.1 is built from exactly such a series: most of it is already there
    assert counts[Status.already_applied] >= len(series.patches) * 0.6
    for result in report.results:
        if result.status is Status.failed:
            assert result.detail.startswith("file "), result
    assert report.target is None
    assert not any((SHARED / "kernel" / "work").glob("patches-*"))


@pytest.fixture(scope="module")
def built(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildManifest]:
    base = tmp_path_factory.mktemp("kernel-real")
    series, folder = load_series("kvmple-selftest")
    report = apply_series(series, folder, pristine, into=base / "linux")
    assert [r.status for r in report.results] == [Status.applied, Status.applied]
    started = time.monotonic()
    manifest = build_kernel(
        BuildRequest(tree=base / "linux", out=base / "out", ccache=False, timeout=1800)
    )  # a cold build: ccache off
    print(f"\ncold build: {time.monotonic() - started:.0f} s")
    yield manifest
    shutil.rmtree(base, ignore_errors=True)


def test_cold_build_of_the_patched_tree(built: BuildManifest) -> None:
    assert built.release.startswith("6.1.")
    assert built.release.endswith("-kvmple-selftest")
    assert built.ccache is False
    check = built.fragment_check
    assert check.checked > 30
    assert any("S390_GUEST" in line for line in check.other_arch)
    assert built.series_name == "kvmple-selftest"
    assert built.out is not None
    out = built.out
    assert load_manifest(out) == built  # what is on disk reads back as what was built
    on_disk = json.loads((out / "kvmple-build.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["image_sha256"] == built.image_sha256
    assert (out / "build.log").stat().st_size > 10_000


def test_boot_test_reaches_user_space_with_the_release(
    built: BuildManifest, capsys: pytest.CaptureFixture[str]
) -> None:
    need_program("qemu-system-x86_64")
    assert built.out is not None
    out = built.out
    code = main(
        [
            "kernel",
            "boot-test",
            "--build",
            str(out),
            "--accel",
            "tcg",
            "--expect-line",
            SELFTEST_LINE,
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["passed"] and result["release"] == built.release
    print(
        f"\nboot test: user space after {result['seconds_to_userspace']} s "
        f"(QEMU total {result['seconds_total']} s, {result['accel']})"
    )
    console = Path(result["log"]).read_text()
    assert SELFTEST_LINE in console
    record = load_pass(out)
    assert record is not None and record.image_sha256 == built.image_sha256
    facts = HostFacts(
        euid=0,
        has_grub_reboot=True,
        grub_default_saved=True,
        has_kexec=True,
        has_systemd=True,
        initramfs_tool="update-initramfs",
    )
    plan = plan_install(load_manifest(out), record, facts)
    assert plan.steps[0].argv[-1] == f"/boot/vmlinuz-{built.release}"


def test_boot_hang_stops_at_the_timeout_with_the_console_tail(
    built: BuildManifest, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(GuestError) as caught:
        boot_test(
            built.image,
            built.release,
            accel="tcg",
            timeout=1.0,
            log=tmp_path / "console.log",
        )
    assert time.monotonic() - started < 15
    assert "no user space after 1s" in caught.value.message
    assert caught.value.hint == f"full console log: {tmp_path / 'console.log'}"


def test_release_mismatch_fails_the_gate(built: BuildManifest, tmp_path: Path) -> None:
    with pytest.raises(GuestError, match=re.escape("expected '6.1.0-other'")):
        boot_test(
            built.image,
            "6.1.0-other",
            accel="tcg",
            timeout=120,
            log=tmp_path / "mismatch.log",
        )


def test_fragment_option_that_olddefconfig_drops_fails_before_compiling(
    pristine: Path, tmp_path: Path
) -> None:
    fragment = tmp_path / "kvm-host.config"
    # KVM_INTEL needs KVM (and VIRTUALIZATION), which this fragment forgets on purpose
    fragment.write_text("CONFIG_64BIT=y\nCONFIG_KVM_INTEL=y\nCONFIG_PARAVIRT_SPINLOCKS=y\n")
    out = tmp_path / "out"
    with pytest.raises(BuildError) as caught:
        build_kernel(BuildRequest(tree=pristine, out=out, fragments=(str(fragment),)))
    assert "did not survive olddefconfig" in caught.value.message
    assert f"CONFIG_KVM_INTEL=y (from {fragment}) is not set" in caught.value.message
    assert not (out / "vmlinux").exists() and not (out / "kvmple-build.json").exists()
    assert not (pristine / ".config").exists()  # the shared pristine tree was not written


def _no_boot_leftovers(out: Path) -> None:
    assert not list(out.glob(".boot-test-image-*")), "the boot's work directory was left"
    assert not list(out.rglob("overlay.qcow2")), "an overlay was left"


def test_image_boot_test_with_the_images_own_kernel_reaches_ssh(
    shared_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for program in ("qemu-system-x86_64", "qemu-img", "ssh"):
        need_program(program)
    image = resolve("debian12-amqp")  # from the shared cache (built here when missing)
    release = str(image.manifest.kernel_release)
    disk_before = image.qcow2.stat()
    # the image's own kernel stands in for a built one: a build directory naming it
    out = tmp_path / "out"
    out.mkdir()
    sha256 = hashlib.sha256(image.kernel.read_bytes()).hexdigest()
    manifest = {"image": str(image.kernel), "release": release, "image_sha256": sha256}
    (out / "kvmple-build.json").write_text(json.dumps(manifest))
    argv = ["kernel", "boot-test", "--build", str(out), "--image", "debian12-amqp"]
    argv += ["--initrd", str(image.initrd), "--accel", "tcg", "--timeout", IMAGE_SSH_TIMEOUT]
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["passed"] and result["release"] == release == result["expected"]
    assert result["initrd"] == str(image.initrd) and "root=/dev/vda" in result["cmdline"]
    print(
        f"\nimage boot test ({image.name}, {release}): SSH after {result['seconds_to_ssh']} s, "
        f"{result['seconds_total']} s in all ({result['accel']})"
    )
    console = Path(result["log"]).read_text(errors="replace")
    assert f"Linux version {release}" in console  # the kernel's banner: 'quiet' was dropped
    assert re.search(r"Welcome to \S*Debian GNU/Linux 12", console)  # the image's systemd ran
    record = load_pass(out)
    assert record is not None and record.kind == "image" and record.image_sha256 == sha256
    _no_boot_leftovers(out)
    disk_after = image.qcow2.stat()  # the cached image was only a backing file
    assert (disk_after.st_mtime_ns, disk_after.st_size) == (
        disk_before.st_mtime_ns,
        disk_before.st_size,
    )


def test_image_boot_test_of_a_kernel_without_ext4_fails_fast_with_the_reason(
    built: BuildManifest, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for program in ("qemu-system-x86_64", "qemu-img", "ssh"):
        need_program(program)
    resolve("debian12-amqp")
    assert built.out is not None
    out = built.out
    before = load_pass(out)
    started = time.monotonic()
    argv = ["kernel", "boot-test", "--build", str(out), "--image", "debian12-amqp"]
    code = main([*argv, "--accel", "tcg", "--timeout", IMAGE_SSH_TIMEOUT])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    print(f"\ntinyconfig kernel with the image: failed after {seconds:.1f} s")
    assert code == 7, err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first == (
        "kvmple: error: image boot test (debian12-amqp, tcg): the kernel cannot mount the "
        "image's root (root=/dev/vda): it needs virtio-blk and ext4 built in, or an --initrd "
        "that loads them; console tail:"
    )
    assert "VFS: Unable to mount root fs" in err  # the console tail shows the panic
    assert "kvmple-image" in err and "EXT4_FS" in err  # the hint: what such a kernel needs
    assert seconds < 300  # well before the 600 s timeout: a panic ends QEMU (panic=-1)
    log = out / "boot-test-image.log"
    assert "Kernel panic" in log.read_text(errors="replace")
    _no_boot_leftovers(out)
    assert load_pass(out) == before  # a failed image boot records nothing
