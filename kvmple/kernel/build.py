"""Build a kernel: base config + fragments (the kernel's own merge_config.sh), olddefconfig,
a check that every fragment option survived, a parallel ``make`` (through ccache when it is
installed), progress, the full log kept, and a manifest of what was built.

The build always goes to a separate output directory (``make O=``), so the source tree is
never written to; a tree that already has a .config (built in place) is refused because
kbuild would refuse it too, only later and less clearly.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvmple import events
from kvmple.errors import BuildError, CommandError, ConfigError
from kvmple.events import Progress, Sink
from kvmple.kernel.apply import read_record
from kvmple.kernel.configs import (
    BOOT_TEST_ALLOWED_TO_VANISH,
    BOOT_TEST_FRAGMENT,
    IMAGE_BOOT_FRAGMENT,
    LAB_AMD_FRAGMENT,
    LAB_INTEL_FRAGMENT,
    FragmentCheck,
    check_fragments,
    kconfig_symbols,
    parse_config,
)
from kvmple.kernel.manifest import MANIFEST, BuildManifest, FragmentCheckRecord, load_manifest
from kvmple.kernel.tree import inspect_tree
from kvmple.paths import cache_dir
from kvmple.run import run, run_logged, which

BUILTIN_FRAGMENT = "kvmple-boot"  # name of BOOT_TEST_FRAGMENT on the command line
IMAGE_FRAGMENT = "kvmple-image"  # name of IMAGE_BOOT_FRAGMENT (boot-test --image)
LAB_INTEL_FRAGMENT_NAME = "kvmple-lab-intel"  # the Bochs VT-x lab host (kvmple lab up intel)
LAB_AMD_FRAGMENT_NAME = "kvmple-lab-amd"  # an amd lab host's own kernel (lab install-kernel)
BUILTIN_FRAGMENTS = {
    BUILTIN_FRAGMENT: BOOT_TEST_FRAGMENT,
    IMAGE_FRAGMENT: IMAGE_BOOT_FRAGMENT,
    LAB_INTEL_FRAGMENT_NAME: LAB_INTEL_FRAGMENT,
    LAB_AMD_FRAGMENT_NAME: LAB_AMD_FRAGMENT,
}


@dataclass(frozen=True)
class BuildRequest:
    tree: Path
    out: Path | None = None
    base: str = "tinyconfig"  # a make *config target, "running", or a config file
    fragments: Sequence[str] = ("kvm_guest.config", BUILTIN_FRAGMENT)
    allow_vanish: frozenset[str] = BOOT_TEST_ALLOWED_TO_VANISH
    jobs: int = 0  # 0: one per CPU
    ccache: bool | None = None  # None: use it when installed
    timeout: float = 3600.0
    env: dict[str, str] = field(default_factory=dict)


def default_out(tree: Path) -> Path:
    digest = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:10]
    return cache_dir() / "kernel" / "builds" / f"{tree.resolve().name}-{digest}"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "x86", "i686": "x86", "aarch64": "arm64"}.get(machine, machine)


def resolve_fragment(name: str, tree: Path, out: Path) -> Path:
    """A fragment path, an in-tree fragment name (kernel/configs, arch/*/configs), or a
    built-in fragment (``kvmple-boot``, ``kvmple-image``)."""
    if name in BUILTIN_FRAGMENTS:
        path = out / f"{name}.config"
        path.write_text(BUILTIN_FRAGMENTS[name], encoding="utf-8")
        return path
    candidates = [
        Path(name),
        tree / "kernel" / "configs" / name,
        tree / "arch" / _arch() / "configs" / name,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"config fragment {name!r} not found (looked at {', '.join(map(str, candidates))})",
        hint=f"pass a file path, a name from kernel/configs/, or {' or '.join(BUILTIN_FRAGMENTS)}",
    )


def _running_config() -> bytes:
    release = platform.release()
    boot = Path(f"/boot/config-{release}")
    if boot.is_file():
        return boot.read_bytes()
    proc = Path("/proc/config.gz")
    if proc.is_file():
        return gzip.decompress(proc.read_bytes())
    raise ConfigError(
        f"the running kernel's config is not available (/boot/config-{release}, /proc/config.gz)",
        hint="pass --config defconfig or a config file",
    )


def _step(
    argv: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    log: Path,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    on_line: Callable[[str], None] | None = None,
) -> None:
    try:
        run_logged(argv, log=log, timeout=timeout, cwd=cwd, env=env, on_line=on_line, what=what)
    except CommandError as exc:
        raise BuildError(
            f"kernel build step '{what}' failed: {exc.message}", hint=f"full log: {log}"
        ) from exc


__all__ = ["MANIFEST", "BuildManifest", "BuildRequest", "build_kernel", "load_manifest"]


def build_kernel(request: BuildRequest, *, sink: Sink = events.discard) -> BuildManifest:
    """Configure and build; returns (and writes to OUT/kvmple-build.json) the manifest.
    ``sink`` sees one progress display over make (objects compiled, the last one).

    BuildError when the tree was built in place, a step fails or the image is missing;
    ConfigError for a base config that is neither a file nor a make target."""
    tree = inspect_tree(request.tree)
    src = tree.path
    if (src / ".config").exists() or (src / "include" / "config").exists():
        raise BuildError(
            f"{src} was configured or built in place (.config present); kbuild refuses O= builds",
            hint=f"run 'make mrproper' in {src} or apply the series to a fresh copy",
        )
    out = (request.out or default_out(src)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    log = out / "build.log"
    log.write_text(f"# kvmple kernel build of {src} at {time.strftime('%F %T')}\n")
    jobs = request.jobs or os.cpu_count() or 1
    use_ccache = which("ccache") is not None if request.ccache is None else request.ccache
    if use_ccache and which("ccache") is None:
        raise BuildError("ccache requested but not installed", hint="apt-get install ccache")
    env = {
        "KBUILD_BUILD_USER": "kvmple",
        "KBUILD_BUILD_HOST": "kvmple",
        "CCACHE_BASEDIR": str(Path(os.path.commonpath([src, out]))),
        "CCACHE_NOHASHDIR": "1",
        **request.env,
    }
    kbuild = _Kbuild(src, out, log, env, sink)
    start = time.monotonic()
    fragment_paths = _configure(kbuild, request.base, request.fragments)
    # 3. did every fragment option survive?
    check = _check(fragment_paths, out, src, request.allow_vanish)
    modules_dir = _compile(kbuild, jobs, use_ccache, request.timeout)
    release = run(
        [*kbuild.make, "-s", "kernelrelease"],
        timeout=120,
        cwd=src,
        env=env,
        what="make kernelrelease",
    ).stdout.strip()
    image = out / "arch" / _arch() / "boot" / "bzImage"
    if not image.is_file():
        raise BuildError(f"make finished but {image} is missing", hint=f"full log: {log}")
    manifest = BuildManifest(
        release=release,
        image=image,
        image_sha256=_sha256(image),
        config=out / ".config",
        config_sha256=_sha256(out / ".config"),
        base=request.base,
        fragments=tuple(str(p) for p in fragment_paths),
        fragment_check=FragmentCheckRecord(
            checked=check.checked,
            other_arch=tuple(m.describe() for m in check.other_arch),
            allowed_to_vanish=tuple(m.describe() for m in check.allowed),
            built_in_without_modules=tuple(m.describe() for m in check.built_in),
        ),
        modules=modules_dir,
        tree=src,
        tree_version=tree.version_text,
        series=read_record(src),
        out=out,
        jobs=jobs,
        ccache=use_ccache,
        seconds=round(time.monotonic() - start, 1),
        log=log,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    manifest.write(out / MANIFEST)
    return manifest


@dataclass(frozen=True)
class _Kbuild:
    """One out-of-tree kbuild: source, output directory, log and environment."""

    src: Path
    out: Path
    log: Path
    env: dict[str, str]
    sink: Sink

    @property
    def make(self) -> list[str]:
        return ["make", f"O={self.out}"]

    def step(self, argv: Sequence[str | Path], what: str) -> None:
        _step(argv, what=what, log=self.log, cwd=self.src, env=self.env, timeout=600)


def _configure(kbuild: _Kbuild, base: str, fragments: Sequence[str]) -> list[Path]:
    """Steps 1-2: the base config, then the fragments merged by the kernel's own script and
    olddefconfig; returns the fragment files used."""
    out = kbuild.out
    if base == "running":
        (out / ".config").write_bytes(_running_config())
    elif Path(base).is_file():
        shutil.copyfile(base, out / ".config")
    elif base.endswith("config") and "/" not in base:
        kbuild.step([*kbuild.make, base], what=f"make {base}")
    else:
        raise ConfigError(
            f"base config {base!r} is neither a file nor a make *config target",
            hint="use tinyconfig, defconfig, running, or a path to a .config",
        )
    fragment_paths = [resolve_fragment(name, kbuild.src, out) for name in fragments]
    if fragment_paths:
        merge = kbuild.src / "scripts/kconfig/merge_config.sh"
        kbuild.step([merge, "-m", "-O", out, out / ".config", *fragment_paths], "merge_config.sh")
    kbuild.step([*kbuild.make, "olddefconfig"], what="make olddefconfig")
    return fragment_paths


def _compile(kbuild: _Kbuild, jobs: int, use_ccache: bool, timeout: float) -> Path | None:
    """Step 4: bzImage (and modules, installed stripped into OUT/modules-install, when the
    config has MODULES=y); returns the modules directory or None."""
    config = parse_config((kbuild.out / ".config").read_text(encoding="utf-8"))
    targets = ["bzImage"] + (["modules"] if config.get("MODULES") == "y" else [])
    cc = ["CC=ccache gcc"] if use_ccache else []
    build_env = {**kbuild.env, **({} if use_ccache else {"CCACHE_DISABLE": "1"})}
    argv: list[str | os.PathLike[str]] = [*kbuild.make, f"-j{jobs}", *cc, *targets]
    _make_with_progress(argv, kbuild, build_env, timeout)
    if "modules" not in targets:
        return None
    modules_dir = kbuild.out / "modules-install"
    shutil.rmtree(modules_dir, ignore_errors=True)
    _step(
        [*kbuild.make, f"INSTALL_MOD_PATH={modules_dir}", "INSTALL_MOD_STRIP=1", "modules_install"],
        what="make modules_install",
        log=kbuild.log,
        cwd=kbuild.src,
        env=build_env,
        timeout=1800,
    )
    return modules_dir


def _check(fragments: list[Path], out: Path, src: Path, allowed: frozenset[str]) -> FragmentCheck:
    parsed = {str(p): parse_config(p.read_text(encoding="utf-8")) for p in fragments}
    final = parse_config((out / ".config").read_text(encoding="utf-8"))
    check = check_fragments(parsed, final, {}, _arch(), allowed)
    if check.vanished or check.other_arch:  # only then is the Kconfig scan worth its time
        check = check_fragments(parsed, final, kconfig_symbols(src), _arch(), allowed)
    if check.vanished:
        listed = "; ".join(m.describe() for m in check.vanished[:5])
        more = f" (and {len(check.vanished) - 5} more)" if len(check.vanished) > 5 else ""
        raise BuildError(
            f"fragment option(s) did not survive olddefconfig: {listed}{more}",
            hint="an unmet 'depends on' drops them silently: add their dependencies to the "
            f"fragment (see the Kconfig entries); config: {out / '.config'}",
        )
    return check


def _make_with_progress(
    argv: list[str | os.PathLike[str]], kbuild: _Kbuild, env: dict[str, str], timeout: float
) -> None:
    built = 0
    sink = kbuild.sink
    with events.progress(sink, "make"):

        def on_line(line: str) -> None:
            nonlocal built
            if line.startswith(("  CC ", "  AS ", "  LD ", "  AR ")):
                built += 1
                sink(Progress(done=built, status=line.strip()[:60]))

        _step(
            argv,
            what="make",
            log=kbuild.log,
            cwd=kbuild.src,
            env=env,
            timeout=timeout,
            on_line=on_line,
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
