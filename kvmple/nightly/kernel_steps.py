"""The night's kernel steps: build the patched tree, boot-test it, install it (NOT
VERIFIED ON HARDWARE) and come back after the reboot."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

from kvmple.errors import HostError, KvmpleError
from kvmple.executor import LocalExecutor
from kvmple.host import doctor
from kvmple.kernel import install as kernel_install
from kvmple.kernel.bootpass import load_pass, record_pass
from kvmple.kernel.boottest import boot_test
from kvmple.kernel.build import BUILTIN_FRAGMENT, BuildRequest, build_kernel, load_manifest
from kvmple.kernel.configs import BOOT_TEST_ALLOWED_TO_VANISH
from kvmple.kernel.install import kvmple_command
from kvmple.nightly.context import NOT_VERIFIED, RebootPending, Skip, StepContext, work_dir
from kvmple.nightly.resume import resume_steps, with_resume

# ------------------------------------------------------------------------------- build


def build(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    spec = ctx.config.kernel
    if spec.fragments is None and spec.config == "tinyconfig":
        fragments: tuple[str, ...] = ("kvm_guest.config", BUILTIN_FRAGMENT)
        allowed = BOOT_TEST_ALLOWED_TO_VANISH | frozenset(spec.allow_vanish)
    else:
        fragments = tuple(spec.fragments or ())
        allowed = frozenset(spec.allow_vanish)
    tree = Path(str(ctx.state.output("apply", "tree")))
    out = work_dir(ctx.config) / "build"  # the same every night: ccache and make reuse it
    ctx.log(
        f"building {tree} into {out} (config {spec.config}, fragments {list(fragments)}); "
        f"full make output: {out / 'build.log'}"
    )
    try:
        manifest = build_kernel(
            BuildRequest(
                tree=tree,
                out=out,
                base=spec.config,
                fragments=fragments,
                allow_vanish=allowed,
                jobs=spec.jobs,
                ccache=spec.ccache,
                timeout=spec.build_timeout,
            )
        )
    except KvmpleError as exc:
        ctx.log(f"FAILED: {exc.message}\nhint: {exc.hint}")
        raise
    keys = ("release", "image", "image_sha256", "config_sha256", "seconds", "ccache", "log")
    outputs = {key: manifest.get(key) for key in keys} | {"out": str(out)}
    # the build directory is reused by the next night: keep this night's kernel with it
    kept = ctx.directory / "kernel"
    kept.mkdir(exist_ok=True)
    for path in (Path(str(manifest["image"])), out / ".config", out / "kvmple-build.json"):
        shutil.copyfile(path, kept / path.name)
    outputs["kept"] = str(kept)
    ctx.log(f"built {manifest['release']} in {manifest['seconds']} s")
    return (
        f"{manifest['release']} in {manifest['seconds']} s "
        f"(ccache {'on' if manifest['ccache'] else 'off'})"
    ), outputs


# --------------------------------------------------------------------------- boot-test


def boot(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    built = ctx.state.step("build").outputs
    spec = ctx.config.kernel
    out = Path(str(built["out"]))
    console = ctx.directory / "boot-console.log"
    ctx.log(f"boot test of {built['image']} (expect {built['release']}); console: {console}")
    try:
        result = boot_test(
            Path(str(built["image"])),
            str(built["release"]),
            log=console,
            timeout=spec.boot_timeout,
            accel=spec.boot_accel,
            expect_lines=spec.expect_lines,
        )
    except KvmpleError as exc:
        ctx.log(f"FAILED: {exc.message}\nhint: {exc.hint}")
        raise
    record_pass(out, result, str(built["image_sha256"]))
    ctx.log(f"passed: user space after {result.seconds_to_userspace} s ({result.accel})")
    outputs = {
        "release": result.release,
        "accel": result.accel,
        "seconds_to_userspace": result.seconds_to_userspace,
        "console": str(console),
    }
    return (
        f"user space runs {result.release} after {result.seconds_to_userspace} s ({result.accel})",
        outputs,
    )


# ----------------------------------------------------------------------------- install


def install(ctx: StepContext) -> tuple[str, dict[str, Any]]:
    """Plan always (the kernel pipeline's planning decides what would be done); execute
    only on a hardware host with ``install.enabled`` (NOT VERIFIED ON HARDWARE)."""
    out = Path(str(ctx.state.output("build", "out")))
    release = str(ctx.state.output("build", "release"))
    outputs: dict[str, Any] = {"release": release}
    if ctx.state.step("install").outputs.get("installed") == release:
        if platform.release() == release:
            return f"running the installed kernel {release}", ctx.state.step("install").outputs
        raise HostError(
            f"kernel {release} was installed but the host runs {platform.release()} after "
            "the reboot (the one-shot boot entry fell back: the new kernel may not boot here)",
            hint="see the host's boot log; the night stops here",
        )
    facts = kernel_install.gather_host_facts()
    try:
        plan = kernel_install.plan_install(
            load_manifest(out),
            load_pass(out),
            facts,
            method=ctx.config.install.method,
            reboot=True,
        )
        resume = resume_steps(resume_command(ctx), ctx.state.night, has_systemd=facts.has_systemd)
        plan.steps = with_resume(plan.steps, resume)
        outputs["plan"] = [step.render() for step in plan.steps]
        ctx.log(
            "install plan:\n" + "\n".join(f"  {i}. {s}" for i, s in enumerate(outputs["plan"], 1))
        )
    except KvmpleError as exc:
        plan = None
        outputs["plan_refused"] = exc.message
        ctx.log(f"install planning refused: {exc.message}")
    report = doctor.diagnose(probe_kvm=False)
    if report.accelerator != "kvm":
        raise Skip(
            f"{NOT_VERIFIED} / no VT-x host ({report.reason}); the campaign "
            f"runs on the running kernel {platform.release()}",
            outputs,
        )
    if not ctx.config.install.enabled:
        raise Skip(
            f"install.enabled is false; the campaign runs on the running "
            f"kernel {platform.release()}",
            outputs,
        )
    if plan is None:
        raise HostError(f"cannot install {release}: {outputs['plan_refused']}")
    # NOT VERIFIED ON HARDWARE: install, then the reboot step ends this process.

    outputs["installed"] = release
    ctx.state.step("install").outputs = outputs  # recorded before the reboot happens
    kernel_install.execute(plan, LocalExecutor())
    raise RebootPending(f"installed {release}; rebooting, the night continues after the reboot")


def resume_command(ctx: StepContext) -> list[str]:
    """How a boot hook continues this night (the install plan's resume unit runs it)."""
    return [*kvmple_command(), "nightly", str(ctx.loaded.path), "--night", ctx.state.night]
