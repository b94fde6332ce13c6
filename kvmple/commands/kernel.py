"""``kvmple kernel``: series show|list, source unpack|debian-patches, apply, build,
boot-test, install."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmple import ui
from kvmple.commands.kernel_series import open_input, series_list, series_show
from kvmple.errors import InputError, PatchError, UsageError

if TYPE_CHECKING:
    from kvmple.kernel.manifest import BuildManifest

EPILOG = """\
Exit codes: 0 ok; 2 usage; 3 bad manifest/config file; 4 host cannot (not root, no
boot-test pass, missing tool); 5/6 a command failed/timed out; 7 boot test failed (console
log named); 9 build failed (log named); 10 unknown series / patch does not apply (patch,
file and hunk named; the tree is left as it was).
"""


def register(sub: Any) -> None:
    kernel = sub.add_parser(
        "kernel",
        help="kernel patch pipeline: series, apply, build, boot-test, install",
        description="Apply a patch series to a kernel tree, build it, boot-test it, install.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = kernel.add_subparsers(dest="kernel_command", metavar="ACTION")
    actions.required = True

    series = actions.add_parser("series", help="list or show patch series manifests")
    series_actions = series.add_subparsers(dest="series_command", metavar="ACTION")
    series_actions.required = True
    series_actions.add_parser("list", help="names of the known series").set_defaults(
        handler=series_list
    )
    show = series_actions.add_parser("show", help="a series and what is known of each patch")
    show.add_argument(
        "name",
        metavar="NAME|PATH",
        help="a series name, series.yaml, mbox, .patch file, quilt/format-patch folder or git "
        "tree (with --range); paths are relative to the current directory",
    )
    show.add_argument("--tree", type=Path, help="also say whether each patch is in this tree")
    show.add_argument("--range", help="for a git tree: the commits that make the series")
    show.add_argument(
        "--revision", type=int, metavar="N", help="mail inputs: take revision vN (default newest)"
    )
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=series_show)

    source = actions.add_parser("source", help="get kernel sources from the package registry")
    source_actions = source.add_subparsers(dest="source_command", metavar="ACTION")
    source_actions.required = True
    unpack = source_actions.add_parser("unpack", help="unpack a source tarball (cached)")
    unpack.add_argument(
        "tarball", type=Path, nargs="?", default=Path("/usr/src/linux-source-6.1.tar.xz")
    )
    unpack.set_defaults(handler=_source_unpack)
    debian = source_actions.add_parser(
        "debian-patches", help="Debian's quilt series of the 'linux' source package (cached)"
    )
    debian.add_argument("--suite", default="bookworm")
    debian.set_defaults(handler=_source_debian)

    apply = actions.add_parser("apply", help="apply a series into a fresh worktree/copy")
    apply.add_argument("--tree", type=Path, required=True, help="the kernel source tree")
    apply.add_argument(
        "--series",
        metavar="NAME|PATH",
        help="a series name, series.yaml, mbox, .patch, quilt or format-patch folder "
        "(default: the --from input itself)",
    )
    apply.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="SRC",
        help="take the patches from SRC: quilt dir, mbox, format-patch dir or kernel git tree "
        "(relative to the current directory)",
    )
    apply.add_argument(
        "--revision", type=int, metavar="N", help="mail inputs: apply revision vN (default newest)"
    )
    apply.add_argument("--range", help="git revision range to search subjects in")
    apply.add_argument("--into", type=Path, help="where the new worktree/copy goes")
    apply.add_argument(
        "--check", action="store_true", help="report every patch's status without keeping anything"
    )
    apply.add_argument("--json", action="store_true")
    apply.set_defaults(handler=_apply)
    _register_build_actions(actions)


def _register_build_actions(actions: Any) -> None:
    """build, boot-test and install."""
    build = actions.add_parser("build", help="configure and build a kernel tree")
    build.add_argument("--tree", type=Path, required=True)
    build.add_argument("--out", type=Path, help="build directory (make O=)")
    build.add_argument(
        "--config",
        default="tinyconfig",
        metavar="BASE",
        help="a make *config target, 'running', or a file (default tinyconfig)",
    )
    build.add_argument(
        "--fragment",
        action="append",
        metavar="F",
        help="config fragment (file, kernel/configs name, kvmple-boot, or kvmple-image for "
        "boot-test --image); "
        "default with tinyconfig: kvm_guest.config + kvmple-boot",
    )
    build.add_argument(
        "--allow-vanish",
        action="append",
        default=[],
        metavar="SYMBOL",
        help="a fragment option allowed to be dropped by olddefconfig",
    )
    build.add_argument("-j", "--jobs", type=int, default=0)
    build.add_argument("--no-ccache", action="store_true", help="build cold, without ccache")
    build.add_argument("--timeout", type=float, default=3600.0)
    build.add_argument("--json", action="store_true")
    build.set_defaults(handler=_build)

    boot = actions.add_parser("boot-test", help="boot the built kernel in QEMU (the gate)")
    _build_dir_args(boot)
    boot.add_argument(
        "--image",
        metavar="NAME|PATH",
        help="boot with this guest image (recipe name or file) as root and pass on SSH + "
        "uname -r, instead of kvmple's initramfs; the kernel needs virtio-blk, virtio-net, "
        "ext4 and what systemd needs built in (fragment kvmple-image)",
    )
    boot.add_argument(
        "--initrd", type=Path, metavar="FILE", help="with --image: an initrd for this kernel"
    )
    boot.add_argument(
        "--append", default="", metavar="ARGS", help="with --image: more kernel parameters"
    )
    boot.add_argument(
        "--timeout", type=float, help="seconds to user space (default 120; --image: 300 to SSH)"
    )
    boot.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    boot.add_argument("--cpus", type=int, help="vCPUs (default 1; --image: 2)")
    boot.add_argument(
        "--expect-line", action="append", default=[], help="a line the console must also show"
    )
    boot.add_argument("--json", action="store_true")
    boot.set_defaults(handler=_boot_test)

    _register_install(actions)


def _register_install(actions: Any) -> None:
    """install: the plan, and with --execute its execution on this host."""
    install = actions.add_parser(
        "install",
        help="install on this host (kexec: verified on an emulated AMD-V host (QEMU TCG); "
        "grub-reboot: not verified on hardware)",
    )
    _build_dir_args(install)
    install.add_argument("--method", choices=("auto", "grub-reboot", "kexec"), default="auto")
    install.add_argument("--campaign", help="campaign id to resume after the reboot")
    install.add_argument("--reboot", action="store_true", help="reboot into it at the end")
    install.add_argument(
        "--append",
        action="append",
        default=[],
        metavar="PARAM",
        help="(kexec) a kernel parameter added to the reused command line (panic=10 always is)",
    )
    install.add_argument(
        "--no-initramfs",
        action="store_true",
        help="no initramfs: the kernel has its root disk and file system drivers built in",
    )
    install.add_argument(
        "--execute", action="store_true", help="carry the plan out (default: print it only)"
    )
    install.set_defaults(handler=_install)


def _say(text: str) -> None:
    """Plain output: subjects and paths may contain [brackets] rich would eat as markup."""
    ui.out.print(text, markup=False, highlight=False)


def _build_dir_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--build", type=Path, metavar="OUT", help="a kvmple build directory")
    where.add_argument("--tree", type=Path, help="the tree (its default build directory)")


def _out_dir(args: argparse.Namespace) -> Path:
    from kvmple.kernel.build import default_out

    return Path(args.build) if args.build else default_out(Path(args.tree))


# ------------------------------------------------------------------------------ source


def _source_unpack(args: argparse.Namespace) -> int:
    from kvmple.kernel.fetch import unpack_tree
    from kvmple.paths import cache_dir

    _say(str(unpack_tree(args.tarball, cache_dir())))
    return 0


def _source_debian(args: argparse.Namespace) -> int:
    from kvmple.kernel.fetch import debian_patches
    from kvmple.paths import cache_dir

    folder, version = debian_patches(cache_dir(), suite=args.suite)
    ui.err.print(f"linux {version} ({args.suite}): quilt series in")
    _say(str(folder))
    return 0


# ------------------------------------------------------------------------------- apply


def _apply(args: argparse.Namespace) -> int:
    from kvmple.kernel.apply import Status, apply_series

    if args.series is None and args.source is None:
        raise UsageError("give --series, --from, or both", hint="kvmple kernel apply --help")
    opened = open_input(args.series or str(args.source), args)
    series, folder = opened.series, opened.folder
    report = apply_series(
        series,
        folder,
        args.tree,
        into=args.into,
        source=args.source.resolve() if args.source is not None else opened.source,
        git_range=args.range,
        check_only=args.check,
        revision=args.revision,
    )
    if args.json:
        _say(json.dumps(report.to_json(), indent=2))
    else:
        for result in report.results:
            detail = f" -- {result.detail}" if result.detail else ""
            _say(f"  {result.index:3}. [{result.status.value}] {result.subject}{detail}")
        for line in report.dropped:
            _say(f"  dropped   {line}")
        counts = ", ".join(f"{report.count(s)} {s.value}" for s in Status if report.count(s))
        revision = f" v{report.revision}" if report.revision else ""
        _say(f"{series.name}{revision}: {counts} ({report.method})")
        if report.target:
            branch = f" on branch {report.branch}" if report.branch else ""
            _say(f"patched tree: {report.target}{branch}")
        elif report.count(Status.upstream) == len(report.results):
            _say("already upstream in this tree: nothing to apply, nothing created")
        elif not args.check:
            _say("nothing new to apply: the tree already has every patch; nothing created")
    if not report.ok:
        raise PatchError(
            f"{report.count(Status.failed)} patch(es) of {series.name} do not apply "
            f"to {report.tree} (see the list above)",
            hint="nothing was kept; refresh those patches for this tree",
        )
    return 0


# ------------------------------------------------------------------------------- build


def _build(args: argparse.Namespace) -> int:
    from kvmple.kernel.build import BUILTIN_FRAGMENT, BuildRequest, build_kernel
    from kvmple.kernel.configs import BOOT_TEST_ALLOWED_TO_VANISH

    if args.fragment is None and args.config == "tinyconfig":
        fragments: tuple[str, ...] = ("kvm_guest.config", BUILTIN_FRAGMENT)
        allowed = BOOT_TEST_ALLOWED_TO_VANISH | set(args.allow_vanish)
    else:
        fragments = tuple(args.fragment or ())
        allowed = frozenset(args.allow_vanish)
    if args.jobs < 0:
        raise UsageError("--jobs must be 0 (one per CPU) or more")
    request = BuildRequest(
        tree=args.tree,
        out=args.out,
        base=args.config,
        fragments=fragments,
        allow_vanish=frozenset(allowed),
        jobs=args.jobs,
        ccache=False if args.no_ccache else None,
        timeout=args.timeout,
    )
    manifest = build_kernel(request, sink=ui.Renderer())
    if args.json:
        _say(manifest.to_json().rstrip("\n"))
        return 0
    check = manifest.fragment_check
    _say(
        f"built {manifest.release} in {manifest.seconds} s "
        f"(ccache {'on' if manifest.ccache else 'off'}, -j{manifest.jobs})"
    )
    _say(f"  image     {manifest.image}")
    _say(
        f"  config    sha256 {(manifest.config_sha256 or '?')[:16]}; "
        f"{check.checked} fragment options checked"
    )
    for label in ("other_arch", "allowed_to_vanish", "built_in_without_modules"):
        for line in getattr(check, label):
            _say(f"  note      {line} ({label.replace('_', ' ')})")
    if manifest.series is not None:
        _say(f"  series    {manifest.series_name}")
    _say(f"  log       {manifest.log}")
    return 0


# ---------------------------------------------------------------------------- boot-test


def _boot_test(args: argparse.Namespace) -> int:
    from kvmple.kernel.bootpass import record_pass
    from kvmple.kernel.boottest import boot_test
    from kvmple.kernel.build import load_manifest

    if args.image is None and (args.initrd is not None or args.append):
        raise UsageError(
            "--initrd and --append go with --image",
            hint="the default gate boots kvmple's own initramfs with a fixed command line",
        )
    if args.cpus is not None and args.cpus < 1:
        raise UsageError("--cpus must be 1 or more")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    out = _out_dir(args)
    manifest = load_manifest(out)
    if args.image is not None:
        return _boot_test_image(args, out, manifest)
    _require_built_image(out, manifest.image)
    result = boot_test(
        manifest.image,
        manifest.release,
        log=out / "boot-test.log",
        timeout=args.timeout or 120.0,
        accel=args.accel,
        cpus=args.cpus or 1,
        expect_lines=args.expect_line,
    )
    record_pass(out, result, manifest.image_sha256)
    if args.json:
        _say(json.dumps(result.__dict__, indent=2))
    else:
        _say(
            f"boot test passed: user space runs {result.release} after "
            f"{result.seconds_to_userspace} s ({result.accel}); "
            f"console log {result.log}"
        )
    return 0


def _require_built_image(out: Path, image: Path) -> None:
    """InputError (exit 3) naming the manifest and its key when the image it names is gone
    (a moved or cleaned build directory, a hand-edited relative path)."""
    from kvmple.kernel.manifest import MANIFEST

    if not image.is_absolute() or not image.is_file():
        why = "is not an absolute path" if not image.is_absolute() else "does not exist"
        raise InputError(
            f"{out / MANIFEST}: image: {image} {why}",
            hint=f"run 'kvmple kernel build' again for {out}",
        )


def _boot_test_image(args: argparse.Namespace, out: Path, manifest: BuildManifest) -> int:
    from kvmple.image import resolve
    from kvmple.kernel.bootpass import record_pass
    from kvmple.kernel.imageboot import image_boot_test

    image = resolve(args.image, sink=ui.Renderer())
    result = image_boot_test(
        manifest.image,
        manifest.release,
        image,
        log=out / "boot-test-image.log",
        initrd=args.initrd,
        timeout=args.timeout or 300.0,
        accel=args.accel,
        cpus=args.cpus or 2,
        append=args.append,
        expect_lines=args.expect_line,
    )
    record_pass(out, result, manifest.image_sha256, kind="image")
    if args.json:
        _say(json.dumps(result.__dict__, indent=2))
    else:
        _say(
            f"boot test passed with image {result.image}: SSH after {result.seconds_to_ssh} s, "
            f"uname -r {result.release} ({result.accel}, {result.seconds_total} s in all); "
            f"console log {result.log}"
        )
    return 0


# ------------------------------------------------------------------------------ install


def _install(args: argparse.Namespace) -> int:
    from kvmple.executor import LocalExecutor
    from kvmple.kernel.bootpass import load_pass
    from kvmple.kernel.build import load_manifest
    from kvmple.kernel.install import execute, gather_host_facts, kvmple_command, plan_install

    out = _out_dir(args)
    manifest = load_manifest(out)
    plan = plan_install(
        manifest,
        load_pass(out),
        gather_host_facts(),
        method=args.method,
        reboot=args.reboot,
        campaign=args.campaign,
        kvmple=kvmple_command(),
        append=tuple(args.append),
        initramfs=not args.no_initramfs,
        workdir=str(Path.cwd()),
    )
    _say(f"install plan for {plan.release} ({plan.method}; {', '.join(plan.notes)}):")
    for number, step in enumerate(plan.steps, 1):
        _say(f"  {number}. {step.render()}")
    if not args.execute:
        _say("(printed only; --execute carries it out)")
        return 0
    execute(plan, LocalExecutor())
    return 0
