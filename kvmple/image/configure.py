"""Build step 2: turn a debootstrapped tree into a guest that boots straight to SSH.

Everything is done by writing files into the tree from the host; only ``systemctl enable``
and ``update-initramfs`` run inside it (``chroot``, no mounts needed). What it sets up:
hostname and /etc/hosts (minbase has no localhost entry), fstab for /dev/vda, DHCP on the
virtio NIC (eth0: the cmdline carries ``net.ifnames=0``), a serial console, root login with
the installation key only, recorded SSH host keys, masked units, recipe files and guest
programs, an optional small initrd, and no per-build junk (apt caches, machine-id).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from kvmple.errors import BuildError, CommandError
from kvmple.image import selfinstall
from kvmple.image.guestfiles import GUEST_BIN, shipped
from kvmple.image.recipe import Recipe
from kvmple.run import run_logged

# Parameters every built image boots with: the NIC is called eth0 (configure() relies on it),
# and no_timer_check because the kernel's IO-APIC timer check panics ("IO-APIC + timer
# doesn't work!") when a TCG guest's host is busy -- seen on this 2-core machine.
CMDLINE = ("net.ifnames=0", "no_timer_check")

SSHD_CONFIG = """\
# written by kvmple: key-only root login, no DNS lookups (slow without a resolver)
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

INTERFACES = """\
# written by kvmple: DHCP on the (single) virtio NIC, brought up by udev when it appears
# ("allow-hotplug", not "auto": nothing waits for "udevadm settle" at boot)
auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
"""


def guest_path(tree: Path, path: str) -> Path:
    """The host path of guest ``path`` inside ``tree`` (never escapes the tree)."""
    relative = Path(path.lstrip("/"))
    if ".." in relative.parts:
        raise BuildError(f"guest path {path!r} contains '..'")
    return tree / relative


def write(tree: Path, path: str, content: str | bytes, mode: int = 0o644) -> None:
    """Write a guest file (replacing any symlink there, e.g. a dangling /etc/resolv.conf)."""
    target = guest_path(tree, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    data = content.encode() if isinstance(content, str) else content
    target.write_bytes(data)
    os.chmod(target, mode)


def hosts_file(hostname: str) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{hostname}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
    )


def configure(recipe: Recipe, tree: Path, public_key: str, log: Path) -> None:
    """Apply every configuration step to ``tree``."""
    steps: list[tuple[str, Callable[[], None]]] = [
        ("system files", lambda: _system_files(recipe, tree)),
        ("ssh", lambda: _ssh(tree, public_key)),
        ("services", lambda: _services(recipe, tree, log)),
        ("files", lambda: _files(recipe, tree)),
        ("guest programs", lambda: _guest_programs(recipe, tree)),
        ("kvmple venv", lambda: _kvmple_venv(recipe, tree, log)),
        ("initramfs", lambda: _initramfs(recipe, tree, log)),
        ("clean", lambda: _clean(tree)),
    ]
    for label, step in steps:
        try:
            step()
        except OSError as exc:
            raise BuildError(
                f"step configure ({label}) failed: {exc.strerror or exc}: {exc.filename or ''}",
                hint=f"full log: {log}",
            ) from exc
        except CommandError as exc:
            raise BuildError(
                f"step configure ({label}) failed: {exc.message}", hint=f"full log: {log}"
            ) from exc


def _system_files(recipe: Recipe, tree: Path) -> None:
    write(tree, "/etc/hostname", recipe.hostname + "\n")
    write(tree, "/etc/hosts", hosts_file(recipe.hostname))
    write(tree, "/etc/fstab", "/dev/vda\t/\text4\trw,noatime,errors=remount-ro\t0\t1\n")
    write(tree, "/etc/network/interfaces", INTERFACES)
    # journald in memory: nothing to flush or replay at boot, no disk churn during runs
    write(tree, "/etc/systemd/journald.conf.d/kvmple.conf", "[Journal]\nStorage=volatile\n")
    shadow = guest_path(tree, "/etc/shadow")
    lines = shadow.read_text(encoding="utf-8").splitlines()
    locked = [_lock_password(line) for line in lines]
    write(tree, "/etc/shadow", "\n".join(locked) + "\n", 0o640)


def _lock_password(shadow_line: str) -> str:
    fields = shadow_line.split(":")
    if fields[0] == "root" and len(fields) > 1 and fields[1] in ("", "!", "!!"):
        fields[1] = "*"
    return ":".join(fields)


def _ssh(tree: Path, public_key: str) -> None:
    write(tree, "/etc/ssh/sshd_config.d/kvmple.conf", SSHD_CONFIG)
    ssh_dir = guest_path(tree, "/root/.ssh")
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    write(tree, "/root/.ssh/authorized_keys", public_key.strip() + "\n", 0o600)
    if not list(guest_path(tree, "/etc/ssh").glob("ssh_host_*_key.pub")):
        raise BuildError(
            "step configure (ssh): no SSH host keys in the tree",
            hint="the recipe must install openssh-server (its postinst creates host keys)",
        )


def _mask(tree: Path, unit: str) -> None:
    link = guest_path(tree, f"/etc/systemd/system/{unit}")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("/dev/null")


def _services(recipe: Recipe, tree: Path, log: Path) -> None:
    for unit in recipe.services.mask:
        _mask(tree, unit)
    if recipe.services.enable:
        run_logged(
            ["chroot", tree, "systemctl", "enable", *recipe.services.enable],
            log=log,
            timeout=120,
            what="systemctl enable in the image",
        )


def _files(recipe: Recipe, tree: Path) -> None:
    for spec in recipe.files:
        data = spec.content if spec.content is not None else Path(spec.source or "").read_bytes()
        write(tree, spec.path, data, int(spec.mode, 8))


def _guest_programs(recipe: Recipe, tree: Path) -> None:
    """The programs and the package they import, as kvmple/guest/ lays them out."""
    for spec in shipped(recipe.guest_programs):
        write(tree, f"{GUEST_BIN}/{spec.relative}", spec.source.read_bytes(), spec.mode)


def _kvmple_venv(recipe: Recipe, tree: Path, log: Path) -> None:
    if recipe.kvmple_venv is not None:
        selfinstall.install(tree, recipe.kvmple_venv, log)


def kernel_release(tree: Path) -> str:
    """The one kernel release installed in the tree."""
    releases = sorted(p.name for p in guest_path(tree, "/lib/modules").iterdir() if p.is_dir())
    if len(releases) != 1:
        raise BuildError(
            f"expected exactly one kernel in the image, found {releases or 'none'}",
            hint="install one kernel package (e.g. linux-image-amd64) in the recipe's packages",
        )
    return releases[0]


DPKG_UNSAFE_IO = "/etc/dpkg/dpkg.cfg.d/kvmple-unsafe-io"


def before_packages(recipe: Recipe, tree: Path) -> None:
    """Between debootstrap's stages: settings that shape how packages get installed."""
    write(tree, DPKG_UNSAFE_IO, "# build time only (removed by kvmple)\nforce-unsafe-io\n")
    _initramfs_config(recipe, tree)


def _initramfs_config(recipe: Recipe, tree: Path) -> None:
    if recipe.initramfs_modules is None:
        return
    write(tree, "/etc/initramfs-tools/conf.d/kvmple", "MODULES=list\n")
    write(
        tree,
        "/etc/initramfs-tools/modules",
        "# written by kvmple: what a virtio guest needs to mount its root\n"
        + "".join(f"{name}\n" for name in recipe.initramfs_modules),
    )


def _initramfs(recipe: Recipe, tree: Path, log: Path) -> None:
    """Make sure the initrd matches the recipe (normally built so by the kernel's postinst)."""
    if recipe.initramfs_modules is None:
        return
    config = guest_path(tree, "/etc/initramfs-tools/conf.d/kvmple")
    release = kernel_release(tree)
    initrd = guest_path(tree, f"/boot/initrd.img-{release}")
    if config.is_file() and initrd.is_file() and initrd.stat().st_mtime >= config.stat().st_mtime:
        return
    _initramfs_config(recipe, tree)
    run_logged(
        ["chroot", tree, "update-initramfs", "-u", "-k", release],
        log=log,
        timeout=600,
        what="update-initramfs in the image",
    )


def _clean(tree: Path) -> None:
    guest_path(tree, DPKG_UNSAFE_IO).unlink(missing_ok=True)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in tree.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    guest_path(tree, "/var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    # empty machine-id: every guest gets its own at boot, not the build host's
    write(tree, "/etc/machine-id", "", 0o444)
    dbus_id = guest_path(tree, "/var/lib/dbus/machine-id")
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
