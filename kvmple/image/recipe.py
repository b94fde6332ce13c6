"""Image recipes (``guest-images/*.yaml``): a typed, frozen description of one guest image.

A recipe either builds an image with debootstrap (the default) or points at an existing qcow2
+ kernel + initrd ("bring your own image", ``bring_your_own:``) which kvmple only checks.
Relative paths in a recipe are relative to the recipe file; files the recipe names must exist
when it is loaded, so a typo is reported with the recipe's file, line and key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from kvmple.config.loader import load_model
from kvmple.image.guestfiles import guest_dir, programs

# Directory of the recipe being validated: relative paths are resolved against it.
_recipe_dir: ContextVar[Path | None] = ContextVar("_recipe_dir", default=None)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Debian package names (policy 5.6.1), optionally with an architecture qualifier.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$")
UNIT_KINDS = "service|timer|socket|target|path|mount|automount|slice|scope|device|swap"
UNIT_RE = re.compile(rf"^[A-Za-z0-9:_.@\\-]+\.({UNIT_KINDS})$")
SIZE_RE = re.compile(r"^([1-9][0-9]*)([MG])$")
MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+$")

DISTRIBUTIONS = ("debian", "ubuntu")


def _resolve(path: str) -> Path:
    candidate = Path(path).expanduser()
    base = _recipe_dir.get()
    if not candidate.is_absolute() and base is not None:
        candidate = base / candidate
    return candidate


def _existing_file(path: str) -> str:
    resolved = _resolve(path)
    if not resolved.is_file():
        raise ValueError(f"no such file: {resolved}")
    return str(resolved)


def _package(value: str) -> str:
    if not PACKAGE_RE.match(value):
        raise ValueError(f"not a Debian package name: {value!r}")
    return value


def _unit(value: str) -> str:
    if not UNIT_RE.match(value):
        raise ValueError(f"not a systemd unit name (e.g. 'ssh.service'): {value!r}")
    return value


def _module(value: str) -> str:
    if not MODULE_RE.match(value):
        raise ValueError(f"not a kernel module name: {value!r}")
    return value


def _program(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ValueError(f"not a program name: {value!r}")
    if value not in programs():
        raise ValueError(
            f"no guest program {value!r} in {guest_dir()} "
            "(guest programs ship with kvmple's workloads)"
        )
    return value


def _parameter(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"one kernel parameter per item, without spaces: {value!r}")
    if value.split("=", 1)[0] in ("root", "console"):
        raise ValueError(f"{value!r}: kvmple sets root= and console= itself")
    return value


Package = Annotated[str, AfterValidator(_package)]
Unit = Annotated[str, AfterValidator(_unit)]
KernelModule = Annotated[str, AfterValidator(_module)]
GuestProgram = Annotated[str, AfterValidator(_program)]
KernelParameter = Annotated[str, AfterValidator(_parameter)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileSpec(Model):
    """One file put into the image: from a file beside the recipe or inline content."""

    path: str = Field(description="absolute destination path in the guest, e.g. /etc/motd")
    source: str | None = Field(
        default=None, description="file to copy, relative to the recipe file (or absolute)"
    )
    content: str | None = Field(default=None, description="inline file content")
    mode: str = Field(default="0644", description="octal permission bits, e.g. '0755'")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in Path(value).parts:
            raise ValueError(f"must be an absolute guest path without '..', got {value!r}")
        return value

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str | None) -> str | None:
        return None if value is None else _existing_file(value)

    @field_validator("mode")
    @classmethod
    def _octal(cls, value: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3,4}", value):
            raise ValueError(f"must be octal permission bits like '0644', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> FileSpec:
        if (self.source is None) == (self.content is None):
            raise ValueError("give exactly one of 'source' or 'content'")
        return self


class Services(Model):
    """systemd units to enable or mask in the image."""

    enable: tuple[Unit, ...] = Field(default=(), description="units to enable (systemctl enable)")
    mask: tuple[Unit, ...] = Field(
        default=(), description="units masked so boot-to-ready stays short (symlink to /dev/null)"
    )


class BringYourOwn(Model):
    """An existing image kvmple only checks and uses as it is."""

    qcow2: str = Field(description="qcow2 disk image (used read-only as a backing file)")
    kernel: str = Field(description="kernel (bzImage/vmlinuz) for direct kernel boot")
    initrd: str = Field(description="initrd/initramfs matching the kernel")
    host_keys: str = Field(
        description="file with the guest's SSH host public key line(s) ('type base64 ...')"
    )
    ssh_user: str = Field(default="root", description="user the installation key logs in as")

    @field_validator("qcow2", "kernel", "initrd", "host_keys")
    @classmethod
    def _exists(cls, value: str) -> str:
        return _existing_file(value)


class Recipe(Model):
    """A guest image: how to build it (debootstrap) or where it already is (bring_your_own)."""

    name: str = Field(description="image name used in the cache and by 'image list'")
    description: str = Field(default="", description="one line for humans")
    distribution: Literal["debian", "ubuntu"] = Field(
        default="debian", description="distribution debootstrap installs"
    )
    suite: str = Field(default="bookworm", description="distribution suite (codename)")
    mirror: str | None = Field(
        default=None,
        description="apt mirror URL; default: the one the host's apt sources name for the suite",
    )
    components: tuple[str, ...] = Field(default=("main",), description="archive components")
    packages: tuple[Package, ...] = Field(
        default=(), description="packages installed on top of debootstrap's minbase variant"
    )
    disk_size: str = Field(default="4G", description="root file system size, e.g. 4G or 3000M")
    hostname: str = Field(default="kvmple-guest", description="guest host name")
    services: Services = Field(default_factory=Services, description="units to enable/mask")
    files: tuple[FileSpec, ...] = Field(default=(), description="files put into the image")
    guest_programs: tuple[GuestProgram, ...] = Field(
        default=(),
        description="kvmple guest-side programs (kvmple/guest/NAME) installed to /opt/kvmple/bin",
    )
    initramfs_modules: tuple[KernelModule, ...] | None = Field(
        default=None,
        description="if set, a small initrd with only these modules (MODULES=list); "
        "default: Debian's generic initrd",
    )
    cmdline: tuple[KernelParameter, ...] = Field(
        default=(),
        description="kernel command-line additions after 'root=/dev/vda console=ttyS0'",
    )
    bring_your_own: BringYourOwn | None = Field(
        default=None, description="use an existing qcow2 + kernel + initrd instead of building"
    )
    nested_images: tuple[str, ...] = Field(
        default=(),
        description="image recipes (names from guest-images/) built on the host and baked "
        "into this image under /opt/kvmple, each with a bring_your_own recipe in "
        "/opt/kvmple/guest-images/ (a lab host's guests: it has no network to build them)",
    )
    kvmple_venv: str | None = Field(
        default=None,
        description="guest path of a venv into which kvmple from this checkout and its "
        "dependencies are installed offline (wheels built on the host); needs python3-venv",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"must be lower-case letters, digits, '.', '_' or '-' (at most 63), got {value!r}"
            )
        return value

    @field_validator("suite", "hostname")
    @classmethod
    def _word(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
            raise ValueError(f"must be a lower-case word like 'bookworm', got {value!r}")
        return value

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(https?|file)://\S+", value):
            raise ValueError(f"must be an http://, https:// or file:// URL, got {value!r}")
        return None if value is None else value.rstrip("/")

    @field_validator("components")
    @classmethod
    def _components(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values or not all(re.fullmatch(r"[a-z-]+", v) for v in values):
            raise ValueError("must be a non-empty list of component names like 'main'")
        return values

    @field_validator("disk_size")
    @classmethod
    def _size(cls, value: str) -> str:
        match = SIZE_RE.match(value)
        if not match or size_mib(value) < 256:
            raise ValueError(f"must be a size like '4G' or '3000M' (at least 256M), got {value!r}")
        return value

    @field_validator("nested_images")
    @classmethod
    def _nested(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if not NAME_RE.match(value):
                raise ValueError(f"not an image recipe name: {value!r}")
        return values

    @field_validator("kvmple_venv")
    @classmethod
    def _venv(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", value):
            raise ValueError(f"must be an absolute guest path like /opt/kvmple/venv, got {value!r}")
        if value is not None and ".." in value.split("/"):
            raise ValueError(f"must not contain '..', got {value!r}")
        return value

    @field_validator("initramfs_modules")
    @classmethod
    def _modules(cls, values: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if values is not None and not values:
            raise ValueError("list at least one module, or leave the key out")
        return values

    @model_validator(mode="after")
    def _byo_is_not_built(self) -> Recipe:
        if self.bring_your_own is None:
            return self
        build_only = {
            "packages": bool(self.packages),
            "files": bool(self.files),
            "guest_programs": bool(self.guest_programs),
            "services": bool(self.services.enable or self.services.mask),
            "initramfs_modules": self.initramfs_modules is not None,
            "mirror": self.mirror is not None,
            "kvmple_venv": self.kvmple_venv is not None,
            "nested_images": bool(self.nested_images),
        }
        given = [key for key, present in build_only.items() if present]
        if given:
            raise ValueError(
                f"a bring_your_own recipe is used as it is; remove {', '.join(given)} "
                "(those keys only apply to images kvmple builds)"
            )
        return self

    @property
    def is_byo(self) -> bool:
        return self.bring_your_own is not None


def size_mib(size: str) -> int:
    """'4G' -> 4096, '300M' -> 300."""
    match = SIZE_RE.match(size)
    if not match:
        raise ValueError(f"bad size {size!r}")
    number, unit = int(match.group(1)), match.group(2)
    return number * 1024 if unit == "G" else number


@contextmanager
def _relative_to(directory: Path) -> Iterator[None]:
    token = _recipe_dir.set(directory)
    try:
        yield
    finally:
        _recipe_dir.reset(token)


def load_recipe(path: Path) -> Recipe:
    """Load and validate a recipe file (errors name file, line and key)."""
    with _relative_to(path.resolve().parent):
        return load_model(Recipe, path, hint="recipe keys are described in guest-images/README.md")
