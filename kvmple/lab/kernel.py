"""``kvmple lab install-kernel``: a kernel kvmple built, installed into an ``amd`` lab host,
booted once by kexec and checked with ``uname -r``; a kernel that does not come up falls
back to the lab host's own kernel and is reported.

Transport: the build's bzImage, .config, modules (a tar of OUT/modules-install/lib/modules/R),
its manifest (paths rewritten for the lab host) and its boot-test pass record go over the
lab host's SSH (kvmple.remote.SSHExecutor: the installation key, pinned host keys) into
/var/lib/kvmple/kernels/R. Then the lab host's own ``kvmple kernel install --method kexec
--no-initramfs --reboot --execute`` runs there: the same code a real host runs. This side
waits for SSH to answer from a new boot (/proc/sys/kernel/random/boot_id changed) and
compares ``uname -r`` with the manifest's release.

Fallback: kernel.install appends panic=N to the kexec'd command line and the lab host's
domain resets on a reboot (on_reboot=restart), so a kernel that panics resets the machine
and QEMU boots its -kernel again: the previous kernel. It comes back with a new boot id and
the old release: BootFallback (exit 13) with the console lines of the failed boot. A kernel
that neither answers nor panics within ``boot_timeout_s`` is reset through libvirt: the same
report. Either way the resume unit is removed (it would never fire) and the staged files too.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmple.errors import BootFallback, BuildError, CommandError, GuestError, HostError, InputError
from kvmple.kernel.bootpass import RECORD as BOOT_PASS
from kvmple.kernel.bootpass import load_pass
from kvmple.kernel.build import (
    BUILTIN_FRAGMENT,
    BUILTIN_FRAGMENTS,
    IMAGE_FRAGMENT,
    LAB_AMD_FRAGMENT_NAME,
    BuildRequest,
    build_kernel,
)
from kvmple.kernel.configs import BOOT_TEST_ALLOWED_TO_VANISH
from kvmple.kernel.fetch import unpack_tree
from kvmple.kernel.manifest import MANIFEST, BuildManifest, load_manifest
from kvmple.lab.amd import LAB_VENV
from kvmple.paths import cache_dir
from kvmple.remote import SSHExecutor
from kvmple.vm.libvirt_backend import connect
from kvmple.vm.registry import GuestRecord

KERNEL_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")  # apt-get install linux-source-6.1
AMD_BASE = "tinyconfig"
AMD_FRAGMENTS = ("kvm_guest.config", BUILTIN_FRAGMENT, IMAGE_FRAGMENT, LAB_AMD_FRAGMENT_NAME)
REMOTE_KERNELS = "/var/lib/kvmple/kernels"
LAB_WORKDIR = "/opt/kvmple"  # where the lab host's playbooks and nested recipes resolve
BOOT_ID = "/proc/sys/kernel/random/boot_id"
RESUME_UNIT = "kvmple-resume.service"
CONSOLE_LINES = 6
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class KernelInstall:
    """A kernel booted on a lab host. ``staged_s``: copying the build in; ``back_s``: from
    the start of the install inside to SSH answering on the new kernel (emulated timings)."""

    lab: str
    release: str
    running: str
    staged_s: float
    back_s: float
    campaign: str | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def amd_kernel_key() -> str:
    """The content key of the lab host kernel's configuration (base + fragment texts)."""
    texts = [AMD_BASE, *(BUILTIN_FRAGMENTS.get(name, name) for name in AMD_FRAGMENTS)]
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def amd_kernel(tarball: Path = KERNEL_TARBALL) -> tuple[Path, BuildManifest]:
    """The amd lab host's kernel build (OUT, manifest): built on first use into
    cache_dir()/lab/amd-kernel-KEY, then cached by content; the output directory resumes an
    interrupted build. HostError without the tarball, BuildError when the build fails."""
    out = cache_dir() / "lab" / f"amd-kernel-{amd_kernel_key()}"
    try:
        return out, load_manifest(out)
    except (BuildError, InputError):  # not built yet, interrupted or unreadable: build it
        pass
    out.mkdir(parents=True, exist_ok=True)
    request = BuildRequest(
        tree=unpack_tree(tarball, cache_dir()),
        out=out,
        base=AMD_BASE,
        fragments=AMD_FRAGMENTS,
        allow_vanish=BOOT_TEST_ALLOWED_TO_VANISH,
        timeout=4 * 3600.0,
    )
    return out, build_kernel(request)


def executor(record: GuestRecord) -> SSHExecutor:
    return SSHExecutor(
        "127.0.0.1",
        record.ssh_port,
        record.ssh_user,
        Path(record.ssh_key),
        record.host_keys,
        name=f"lab host {record.role}",
    )


def install_kernel(
    record: GuestRecord,
    out: Path,
    manifest: BuildManifest,
    *,
    campaign: str | None = None,
    append: Sequence[str] = (),
    boot_timeout_s: float = 900.0,
) -> KernelInstall:
    """Stage ``out``'s build in the lab host, kexec into it, wait for SSH, check ``uname -r``.

    HostError (exit 4) without a passed boot test of this image or when the install inside
    refuses; BootFallback (exit 13) when the lab host came back on its previous kernel;
    GuestError (exit 7) when it never came back at all.
    """
    boot_pass = load_pass(out)
    if boot_pass is None or boot_pass.image_sha256 != manifest.image_sha256:
        raise HostError(
            f"no passed boot test for this image ({manifest.release}) in {out}",
            hint="run 'kvmple kernel boot-test --build OUT --image debian12-amqp' first",
        )
    console = Path(record.run_dir) / "console.log"
    start = time.monotonic()
    with executor(record) as ex:
        old_boot = ex.run(["cat", BOOT_ID], timeout=60).stdout.strip()
        remote = stage(ex, out, manifest)
        staged_s = time.monotonic() - start
        offset = console.stat().st_size if console.exists() else 0
        kexec_at = time.monotonic()
        _install_inside(ex, record, remote, campaign, append)
    back = wait_new_boot(record, old_boot, time.monotonic() + boot_timeout_s)
    if back is None:
        back = _reset_and_wait(record, old_boot, boot_timeout_s)
        _clean_after_fallback(record, remote)
        raise BootFallback(
            f"lab host {record.role}: kernel {manifest.release} did not answer within "
            f"{boot_timeout_s:.0f} s; reset into {back}. Console: "
            f"{failed_boot_console(console, offset)}",
            hint="boot-test it with the lab host's image; see the lab host's console log",
        )
    running = back
    back_s = time.monotonic() - kexec_at
    if running != manifest.release:
        _clean_after_fallback(record, remote)
        raise BootFallback(
            f"lab host {record.role}: kernel {manifest.release} did not boot; it fell back "
            f"to {running} after {back_s:.0f} s. Console: {failed_boot_console(console, offset)}",
            hint=f"full console log: {console}",
        )
    with executor(record) as ex:
        ex.run(["rm", "-rf", remote], timeout=120)
    return KernelInstall(
        record.role, manifest.release, running, round(staged_s, 1), round(back_s, 1), campaign
    )


def stage(ex: SSHExecutor, out: Path, manifest: BuildManifest) -> str:
    """Copy the build into REMOTE_KERNELS/RELEASE with a manifest whose paths point there;
    returns that directory."""
    remote = f"{REMOTE_KERNELS}/{manifest.release}"
    ex.run(["rm", "-rf", remote], timeout=120)
    ex.run(["mkdir", "-p", f"{remote}/modules"], timeout=60)
    ex.put(manifest.image, f"{remote}/bzImage")
    ex.put(manifest.require_config(), f"{remote}/config")
    modules: Path | None = None
    with tempfile.TemporaryDirectory(prefix="kvmple-lab-kernel-") as scratch:
        if manifest.modules is not None:
            tar = Path(scratch) / "modules.tar"
            tree = manifest.modules / "lib" / "modules" / manifest.release
            with tarfile.open(tar, "w") as handle:
                handle.add(tree, arcname=f"lib/modules/{manifest.release}")
            ex.put(tar, f"{remote}/modules.tar")
            ex.run(
                ["tar", "-xf", f"{remote}/modules.tar", "-C", f"{remote}/modules"],
                timeout=600,
                what="unpacking the modules in the lab host",
            )
            ex.run(["rm", "-f", f"{remote}/modules.tar"], timeout=60)
            modules = Path(f"{remote}/modules")
        staged = manifest.model_copy(
            update={
                "image": Path(f"{remote}/bzImage"),
                "config": Path(f"{remote}/config"),
                "modules": modules,
                "out": Path(remote),
                "log": None,
            }
        )
        local = staged.write(Path(scratch) / MANIFEST)
        ex.put(local, f"{remote}/{MANIFEST}")
    ex.put(out / BOOT_PASS, f"{remote}/{BOOT_PASS}")
    return remote


def _install_inside(
    ex: SSHExecutor,
    record: GuestRecord,
    remote: str,
    campaign: str | None,
    append: Sequence[str],
) -> None:
    """``kvmple kernel install`` in the lab host; the kexec at its end drops the session."""
    argv = [
        "env", "-C", LAB_WORKDIR, f"{LAB_VENV}/bin/kvmple", "kernel", "install",
        "--build", remote, "--method", "kexec", "--no-initramfs", "--reboot", "--execute",
        *(["--campaign", campaign] if campaign else []),
        *(f"--append={param}" for param in append),
    ]  # fmt: skip
    try:
        result = ex.run(argv, timeout=1200, check=False, what="kvmple kernel install")
    except GuestError:
        return  # the kexec ended the SSH session: the expected way for it to end
    if not result.ok:
        errors = [ln for ln in result.stderr.splitlines() if "error:" in ln]
        raise HostError(
            f"lab host {record.role}: kvmple kernel install failed inside (exit "
            f"{result.returncode}): {(errors or result.stderr.splitlines() or ['?'])[-1]}",
            hint=f"run it by hand: kvmple lab ssh {record.role} -- kvmple kernel install "
            f"--build {remote} --method kexec --no-initramfs",
        )


def wait_new_boot(record: GuestRecord, old_boot: str, deadline: float) -> str | None:
    """``uname -r`` once SSH answers from a boot other than ``old_boot``; None at the
    deadline. Connection failures while the lab host reboots are expected and retried."""
    while time.monotonic() < deadline:
        try:
            with executor(record) as ex:
                ex.connect(timeout=15)
                boot = ex.run(["cat", BOOT_ID], timeout=30).stdout.strip()
                if boot != old_boot:
                    return ex.run(["uname", "-r"], timeout=30).stdout.strip()
        except (GuestError, CommandError):
            pass
        time.sleep(3.0)
    return None


def _reset_and_wait(record: GuestRecord, old_boot: str, timeout_s: float) -> str:
    """Power-cycle a lab host that hangs in the new kernel; QEMU boots its own -kernel."""
    with connect("qemu:///system") as lv:
        lv.reset(record.domain)
    back = wait_new_boot(record, old_boot, time.monotonic() + timeout_s)
    if back is None:
        raise GuestError(
            f"lab host {record.role}: no answer over SSH after a reset either ({timeout_s:.0f} s)",
            hint=f"see its console log {Path(record.run_dir) / 'console.log'}; "
            f"'kvmple lab down {record.role}'",
        )
    return back


def _clean_after_fallback(record: GuestRecord, remote: str) -> None:
    """The resume unit would never fire (bound to the release that failed): remove it and
    the staged build. The kernel stays installed in /boot and /lib/modules, as on Debian."""
    unit = f"/etc/systemd/system/{RESUME_UNIT}"
    with executor(record) as ex:
        ex.run(["systemctl", "disable", RESUME_UNIT], timeout=120, check=False)
        ex.run(["rm", "-rf", unit, remote], timeout=120)
        ex.run(["systemctl", "daemon-reload"], timeout=120, check=False)


def failed_boot_console(console: Path, offset: int) -> str:
    """The console lines written since ``offset`` that tell why the boot failed: the panic
    line and the lines before it, or the last lines (control characters removed)."""
    try:
        with console.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"console log unreadable ({exc})"
    return describe_failed_boot(text)


def describe_failed_boot(text: str) -> str:
    """Pure part of failed_boot_console."""
    lines = [_CONTROL.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    panic = next((i for i, ln in enumerate(lines) if "Kernel panic" in ln), None)
    if panic is not None:
        return " | ".join(lines[max(0, panic - CONSOLE_LINES + 1) : panic + 1])
    return " | ".join(lines[-CONSOLE_LINES:]) or "(nothing on the console)"
