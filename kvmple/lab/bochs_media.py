"""What the Bochs VT-x lab host boots: a kernel kvmple builds for it, an initramfs with
busybox, Python and kvmple, and a GRUB ISO holding both (Bochs's CD-ROM).

- Kernel: ``tinyconfig`` + the ``kvmple-lab-intel`` fragment (kvmple.kernel.configs), built
  by kvmple's own kernel pipeline from Debian's linux-source-6.1; cached under
  ``cache/lab/intel-kernel-<key>`` (key: the fragment text), rebuilt only when it changes.
- Initramfs: busybox-static, the host's Python interpreter with the shared libraries ldd
  names, and exactly the modules the in-lab verification imports (found by importing them
  in a child interpreter), stored as sourceless ``.pyc`` so the emulated CPU does not
  compile; kvm_intel.ko with modules.dep; an /init that mounts proc/sys/dev/tracefs/
  debugfs, loads kvm_intel and runs ``python3 -m kvmple.commands.lab_inner``, then powers off.
  Debian 12 host and lab host share the userland, so the host's binaries run unchanged.
- ISO: ``grub-mkrescue`` (packages grub-pc-bin, xorriso, mtools); cached by the content of
  kernel + initramfs + grub.cfg.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import py_compile
import re
import shutil
import sys
import tempfile
from pathlib import Path

from kvmple import events
from kvmple.errors import BuildError, HostError, InputError
from kvmple.events import Sink
from kvmple.fsutil import write_atomic
from kvmple.kernel.build import (
    LAB_INTEL_FRAGMENT_NAME,
    BuildManifest,
    BuildRequest,
    build_kernel,
    load_manifest,
)
from kvmple.kernel.configs import LAB_INTEL_FRAGMENT
from kvmple.kernel.fetch import file_digest, unpack_tree
from kvmple.kernel.initramfs import Entry, find_busybox, newc_archive
from kvmple.paths import cache_dir
from kvmple.run import run, which

STAGE_MARK = "KVMPLE-LAB-STAGE"
KERNEL_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
# The modules the in-lab program needs (their imports follow): see commands/lab_inner.py.
INNER_MODULES = (
    "kvmple.commands.lab_inner",
    "kvmple.lab.protocol",
    "kvmple.cli",
    "kvmple.commands.ple",
    "kvmple.host.ple",
    "kvmple.host.seam",
    "kvmple.host.kvmrun",
    "kvmple.campaign.evidence",
    "encodings.utf_8",
    "encodings.latin_1",
    "encodings.ascii",
    "kvmple.host.ple_state",
    "kvmple.host.vms",
    "rich.json",
    "ctypes",
    "json",
    "subprocess",
    "runpy",  # python3 -m
    "traceback",
)
# Shipped whole (every module, imported or not), so a lazy import on a path the scan did not
# take still finds its module; the standard library is shipped as scanned.
WHOLE_PACKAGES = ("kvmple", "rich", "platformdirs")
SITE = "opt/kvmple/lib"  # kvmple and its third-party imports inside the lab host

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin HOME=/root TERM=dumb NO_COLOR=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mkdir -p /tmp /var/lib/kvmple /root
echo "{STAGE_MARK} userspace uptime=$(cut -d' ' -f1 /proc/uptime)"
if modprobe kvm_intel; then
  echo "{STAGE_MARK} kvm_intel-loaded uptime=$(cut -d' ' -f1 /proc/uptime)"
  PYTHONHOME=/usr PYTHONPATH=/{SITE} PYTHONDONTWRITEBYTECODE=1 KVMPLE_STATE_DIR=/var/lib/kvmple \\
    /usr/bin/python3 -S -m kvmple.commands.lab_inner
else
  echo "{STAGE_MARK} kvm_intel-failed"
fi
echo "{STAGE_MARK} done uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"""

# GRUB talks on the serial console too, so a stall while loading shows in the console log
GRUB_CFG = """serial --unit=0 --speed=115200
terminal_output serial console
set timeout=0
set default=0
menuentry "kvmple lab host (VT-x with PLE, Bochs)" {
  echo "KVMPLE-LAB-STAGE grub-loading"
  linux /boot/bzImage console=ttyS0,115200 rdinit=/init panic=-1 nr_cpus=2 \
    mitigations=off no_timer_check
  initrd /boot/initrd.cpio
  echo "KVMPLE-LAB-STAGE grub-loaded"
}
"""


def lab_cache() -> Path:
    path = cache_dir() / "lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_key() -> str:
    return hashlib.sha256(("tinyconfig\n" + LAB_INTEL_FRAGMENT).encode()).hexdigest()[:12]


def lab_kernel(tarball: Path = KERNEL_TARBALL, *, sink: Sink = events.discard) -> BuildManifest:
    """The lab host's kernel build manifest (built on first use, reporting to ``sink``,
    then cached)."""
    out = lab_cache() / f"intel-kernel-{kernel_key()}"
    try:
        return load_manifest(out)
    except (BuildError, InputError):  # not built yet, interrupted or unreadable: build it
        pass
    tree = unpack_tree(tarball, cache_dir())
    # a cold build took over an hour on this 2-core host under load ~15 (the default
    # one-hour limit killed it once); the output directory resumes where it stopped
    request = BuildRequest(
        tree=tree,
        out=out,
        base="tinyconfig",
        fragments=(LAB_INTEL_FRAGMENT_NAME,),
        timeout=4 * 3600.0,
    )
    return build_kernel(request, sink=sink)


def _dirs_for(path: str, seen: set[str], entries: list[Entry]) -> None:
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        directory = "/".join(parts[:depth])
        if directory not in seen:
            seen.add(directory)
            entries.append(Entry(directory, 0o040755))


class _Tree:
    """Initramfs entries with their parent directories, each path once."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.seen: set[str] = set()

    def add(self, path: str, mode: int, data: bytes = b"") -> None:
        path = path.lstrip("/")
        if path in self.seen:
            return
        _dirs_for(path, self.seen, self.entries)
        self.seen.add(path)
        self.entries.append(Entry(path, mode, data))

    def symlink(self, path: str, target: str) -> None:
        self.add(path, 0o120777, target.encode())


_LDD = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects ``ldd`` says ``binary`` loads (with the dynamic loader)."""
    result = run(["ldd", binary], timeout=60, check=False)
    if not result.ok:
        return []  # a static binary ("not a dynamic executable")
    return [Path(match) for match in _LDD.findall(result.stdout)]


def _add_library(tree: _Tree, path: Path) -> None:
    real = path.resolve()
    tree.add(str(real), 0o100755, real.read_bytes())
    alias = real.parent / path.name
    if alias != real:
        tree.symlink(str(alias), real.name)


def imported_files(modules: tuple[str, ...], roots: list[Path]) -> dict[str, str]:
    """Module name -> file for everything a child interpreter loads importing ``modules``."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps({n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())"
        " if getattr(m, '__file__', None)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, roots))}
    result = run([_interpreter(), "-S", "-c", script], timeout=120, env=env, what="module scan")
    found: dict[str, str] = json.loads(result.stdout)
    return found


def _interpreter() -> str:
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


def _roots() -> list[Path]:
    """Where kvmple and its third-party imports live on this host (PYTHONPATH for the scan)."""
    roots: list[Path] = []
    for name in ("kvmple", "rich", "platformdirs"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise HostError(f"python module {name} not found", hint="run inside kvmple's venv")
        root = Path(spec.origin).parent.parent
        if root not in roots:
            roots.append(root)
    return roots


def _python_entries(tree: _Tree, work: Path) -> None:
    roots = _roots()
    interpreter = Path(_interpreter()).resolve()
    tree.add(str(interpreter), 0o100755, interpreter.read_bytes())
    tree.symlink("usr/bin/python3", interpreter.name)
    binaries = [interpreter]
    files = set(imported_files(INNER_MODULES, roots).values())
    for package in WHOLE_PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None  # _roots() checked
        files |= {str(p) for p in Path(spec.origin).parent.rglob("*.py")}
    for file in sorted(files):
        path = Path(file)
        # the deepest root: the venv may sit inside the checkout that holds kvmple
        root = max(
            (r for r in roots if path.is_relative_to(r)), key=lambda r: len(r.parts), default=None
        )
        target = Path(SITE) / path.relative_to(root) if root else path
        if path.suffix == ".so":
            tree.add(str(target), 0o100755, path.read_bytes())
            binaries.append(path)
        elif path.suffix == ".py":
            compiled = work / "pyc" / f"{hashlib.sha256(file.encode()).hexdigest()}.pyc"
            py_compile.compile(str(path), cfile=str(compiled), dfile=str(path), doraise=True)
            tree.add(str(target.with_suffix(".pyc")), 0o100644, compiled.read_bytes())
    for binary in binaries:
        for library in shared_libraries(binary):
            _add_library(tree, library)


def build_initramfs(kernel: BuildManifest) -> Path:
    """The lab host's initramfs for ``kernel`` (a build manifest), cached by content."""
    if kernel.modules is None:
        raise HostError(
            f"the lab kernel {kernel.release} was built without modules", hint="rebuild it"
        )
    modules = kernel.modules / "lib" / "modules" / kernel.release
    if not modules.is_dir():
        raise HostError(f"{modules}: the lab kernel's modules are missing", hint="rebuild it")
    tree = _Tree()
    for directory in ("dev", "proc", "sys", "tmp", "root", "etc", "bin"):
        tree.add(directory, 0o040755)
    tree.symlink("lib", "usr/lib")
    tree.symlink("lib64", "usr/lib64")
    tree.symlink("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    tree.add("dev/console", 0o020600)
    tree.entries[-1] = Entry("dev/console", 0o020600, rdev=(5, 1))
    tree.add("bin/busybox", 0o100755, find_busybox())
    tree.add("init", 0o100755, INIT.encode())
    for file in sorted(p for p in modules.rglob("*") if p.is_file()):
        tree.add(
            f"usr/lib/modules/{kernel.release}/{file.relative_to(modules)}",
            0o100644,
            file.read_bytes(),
        )
    with tempfile.TemporaryDirectory(prefix="kvmple-lab-") as work:
        _python_entries(tree, Path(work))
    archive = newc_archive(tree.entries)
    path = lab_cache() / f"intel-initramfs-{hashlib.sha256(archive).hexdigest()[:16]}.cpio"
    if not path.is_file():
        fd, temp = tempfile.mkstemp(prefix=".initramfs-", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(archive)
        os.replace(temp, path)
    return path


def build_iso(kernel: BuildManifest, initramfs: Path) -> Path:
    """A GRUB rescue ISO booting ``kernel`` with ``initramfs`` (cached by content)."""
    for tool in ("grub-mkrescue", "xorriso"):
        if which(tool) is None:
            raise HostError(f"{tool} not found", hint="apt-get install grub-pc-bin xorriso mtools")
    image = kernel.image
    key = hashlib.sha256(
        f"{file_digest(image)}\n{file_digest(initramfs)}\n{GRUB_CFG}".encode()
    ).hexdigest()[:16]
    iso = lab_cache() / f"intel-boot-{key}.iso"
    if iso.is_file():
        return iso
    with tempfile.TemporaryDirectory(prefix="kvmple-iso-") as work:
        root = Path(work) / "root"
        (root / "boot" / "grub").mkdir(parents=True)
        shutil.copyfile(image, root / "boot" / "bzImage")
        shutil.copyfile(initramfs, root / "boot" / "initrd.cpio")
        write_atomic(root / "boot" / "grub" / "grub.cfg", GRUB_CFG)
        temp = Path(work) / "boot.iso"
        run(["grub-mkrescue", "-o", temp, root], timeout=600, what="grub-mkrescue")
        shutil.move(temp, iso.with_suffix(".partial"))
        os.replace(iso.with_suffix(".partial"), iso)
    return iso
