"""The night's kernel steps: build the patched tree, boot-test it, install it (NOT
VERIFIED ON HARDWARE) and come back after the reboot."""

from __future__ import annotations

import platform
import shutil

from kvmple.errors import HostError, KvmpleError
from kvmple.executor import LocalExecutor
from kvmple.host import doctor
from kvmple.kernel import install as kernel_install
from kvmple.kernel.bootpass import load_pass, record_pass
from kvmple.kernel.boottest import boot_test
from kvmple.kernel.build import (
    BUILTIN_FRAGMENT,
    MANIFEST,
    BuildRequest,
    build_kernel,
    load_manifest,
)
from kvmple.kernel.configs import BOOT_TEST_ALLOWED_TO_VANISH
from kvmple.kernel.install import kvmple_command
from kvmple.nightly.context import NOT_VERIFIED, RebootPending, Skip, StepContext, work_dir
from kvmple.nightly.outputs import (
    ApplyOutputs,
    BootOutputs,
    BuildOutputs,
    InstallOutputs,
)
from kvmple.nightly.resume import resume_steps, with_resume

# ------------------------------------------------------------------------------- build


def build(ctx: StepContext) -> tuple[str, BuildOutputs]:
    spec = ctx.config.kernel
    if spec.fragments is None and spec.config == "tinyconfig":
        fragments: tuple[str, ...] = ("kvm_guest.config", BUILTIN_FRAGMENT)
        allowed = BOOT_TEST_ALLOWED_TO_VANISH | frozenset(spec.allow_vanish)
    else:
        fragments = tuple(spec.fragments or ())
        allowed = frozenset(spec.allow_vanish)
    tree = ctx.state.need("apply", ApplyOutputs).tree
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
            ),
            sink=ctx.sink,
        )
    except KvmpleError as exc:
        ctx.log(f"FAILED: {exc.message}\nhint: {exc.hint}")
        raise
    # the build directory is reused by the next night: keep this night's kernel with it
    kept = ctx.directory / "kernel"
    kept.mkdir(exist_ok=True)
    for path in (manifest.image, out / ".config", out / MANIFEST):
        shutil.copyfile(path, kept / path.name)
    outputs = BuildOutputs(
        release=manifest.release,
        image=manifest.image,
        image_sha256=manifest.image_sha256,
        config_sha256=manifest.config_sha256,
        seconds=manifest.seconds,
        ccache=manifest.ccache,
        log=manifest.log,
        out=out,
        kept=kept,
    )
    ctx.log(f"built {manifest.release} in {manifest.seconds} s")
    return (
        f"{manifest.release} in {manifest.seconds} s (ccache {'on' if manifest.ccache else 'off'})"
    ), outputs


# --------------------------------------------------------------------------- boot-test


def boot(ctx: StepContext) -> tuple[str, BootOutputs]:
    built = ctx.state.need("build", BuildOutputs)
    spec = ctx.config.kernel
    console = ctx.directory / "boot-console.log"
    ctx.log(f"boot test of {built.image} (expect {built.release}); console: {console}")
    try:
        result = boot_test(
            built.image,
            built.release,
            log=console,
            timeout=spec.boot_timeout,
            accel=spec.boot_accel,
            expect_lines=spec.expect_lines,
        )
    except KvmpleError as exc:
        ctx.log(f"FAILED: {exc.message}\nhint: {exc.hint}")
        raise
    record_pass(built.out, result, built.image_sha256)
    ctx.log(f"passed: user space after {result.seconds_to_userspace} s ({result.accel})")
    outputs = BootOutputs(
        release=result.release,
        accel=result.accel,
        seconds_to_userspace=result.seconds_to_userspace,
        console=console,
    )
    return (
        f"user space runs {result.release} after {result.seconds_to_userspace} s ({result.accel})",
        outputs,
    )


# ----------------------------------------------------------------------------- install


def install(ctx: StepContext) -> tuple[str, InstallOutputs]:
    """Plan always (the kernel pipeline's planning decides what would be done); execute
    only on a hardware host with ``install.enabled`` (NOT VERIFIED ON HARDWARE)."""
    built = ctx.state.need("build", BuildOutputs)
    release = built.release
    earlier = ctx.state.outputs_of("install", InstallOutputs)
    if earlier is not None and earlier.installed == release:
        if platform.release() == release:
            return f"running the installed kernel {release}", earlier
        raise HostError(
            f"kernel {release} was installed but the host runs {platform.release()} after "
            "the reboot (the one-shot boot entry fell back: the new kernel may not boot here)",
            hint="see the host's boot log; the night stops here",
        )
    facts = kernel_install.gather_host_facts()
    try:
        plan = kernel_install.plan_install(
            load_manifest(built.out),
            load_pass(built.out),
            facts,
            method=ctx.config.install.method,
            reboot=True,
        )
        resume = resume_steps(resume_command(ctx), ctx.state.night, has_systemd=facts.has_systemd)
        plan.steps = with_resume(plan.steps, resume)
        outputs = InstallOutputs(release=release, plan=tuple(s.render() for s in plan.steps))
        ctx.log("install plan:\n" + "\n".join(f"  {i}. {s}" for i, s in enumerate(outputs.plan, 1)))
    except KvmpleError as exc:
        plan = None
        outputs = InstallOutputs(release=release, plan_refused=exc.message)
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
        raise HostError(f"cannot install {release}: {outputs.plan_refused}")
    # NOT VERIFIED ON HARDWARE: install, then the reboot step ends this process.
    outputs = outputs.model_copy(update={"installed": release})
    step = ctx.state.step("install")  # recorded before the reboot happens
    step.outputs = {"first_started": step.first_started, **outputs.to_dict()}
    kernel_install.execute(plan, LocalExecutor())
    raise RebootPending(f"installed {release}; rebooting, the night continues after the reboot")


def resume_command(ctx: StepContext) -> list[str]:
    """How a boot hook continues this night (the install plan's resume unit runs it)."""
    return [*kvmple_command(), "nightly", str(ctx.loaded.path), "--night", ctx.state.night]
