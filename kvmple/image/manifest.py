"""What is inside an image, recorded beside it as manifest.json.

Package versions come from the tree's dpkg database (read from the host with
``dpkg-query --admindir``); host key fingerprints from ``ssh-keygen -l``. Assembling the
manifest itself is a pure function so it is unit-tested without a build.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import JsonValue

from kvmple import __version__
from kvmple.image.artifact import ImageManifest
from kvmple.image.configure import guest_path
from kvmple.run import run

MANIFEST_FORMAT = 1


def parse_packages(dpkg_output: str) -> dict[str, str]:
    """'name<TAB>version<TAB>status' lines -> {name: version} for installed packages."""
    packages: dict[str, str] = {}
    for line in dpkg_output.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].startswith("install ok installed"):
            packages[parts[0]] = parts[1]
    return packages


def installed_packages(tree: Path) -> dict[str, str]:
    result = run(
        [
            "dpkg-query",
            f"--admindir={guest_path(tree, '/var/lib/dpkg')}",
            "-W",
            "-f",
            "${Package}\t${Version}\t${Status}\n",
        ],
        timeout=120,
        what="reading the image's package list",
    )
    return parse_packages(result.stdout)


def host_key_files(tree: Path) -> list[Path]:
    return sorted(guest_path(tree, "/etc/ssh").glob("ssh_host_*_key.pub"))


def fingerprint(public_key_file: Path) -> str:
    """'256 SHA256:... comment (ED25519)' -> 'ED25519 SHA256:...'."""
    words = run(
        ["ssh-keygen", "-l", "-f", public_key_file], timeout=30, what="ssh-keygen -l"
    ).stdout.split()
    return f"{words[-1].strip('()')} {words[1]}"


def assemble(
    *,
    name: str,
    key: str,
    inputs: dict[str, JsonValue],
    recipe_sha256: str,
    packages: dict[str, str],
    kernel_release: str,
    host_key_fingerprints: list[str],
    built_at: str,
    build_seconds: float,
    step_seconds: dict[str, float],
    recipe_path: str,
    disk_size: str,
) -> ImageManifest:
    """The manifest of a built image (pure)."""
    recipe = inputs.get("recipe")
    mirror = inputs.get("mirror")
    suite = recipe.get("suite") if isinstance(recipe, dict) else None
    return ImageManifest(
        format=MANIFEST_FORMAT,
        name=name,
        key=key,
        kvmple_version=__version__,
        built_at=built_at,
        build_seconds=round(build_seconds, 1),
        step_seconds={k: round(v, 1) for k, v in step_seconds.items()},
        recipe_sha256=recipe_sha256,
        mirror=str(mirror) if mirror is not None else None,
        suite=str(suite) if suite is not None else None,
        kernel_release=kernel_release,
        host_key_fingerprints=tuple(host_key_fingerprints),
        package_count=len(packages),
        packages=dict(sorted(packages.items())),
        key_inputs=inputs,
        recipe_path=recipe_path,
        disk_size=disk_size,
    )
