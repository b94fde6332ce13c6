"""Get kernel sources from the package registry, cached: an unpacked pristine tree from a
tarball (e.g. Debian's /usr/src/linux-source-6.1.tar.xz) and Debian's own quilt series
(debian/patches of the ``linux`` source package) through ``apt-get source`` with a private
apt configuration, so the host's apt sources are never edited."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from kvmple.errors import BuildError, HostError
from kvmple.run import run, run_logged, which


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack_tree(tarball: Path, cache: Path) -> Path:
    """Unpack ``tarball`` once into ``cache/kernel/trees/<topdir>-<sha16>`` and return it.

    The result is shared and must stay pristine: work on copies (``apply`` makes them).
    Unpacking goes to a temporary name that is renamed at the end, so an interrupted unpack
    never looks like a finished tree.
    """
    if not tarball.is_file():
        raise HostError(
            f"{tarball}: no such kernel source tarball",
            hint="apt-get install linux-source-6.1 (it installs /usr/src/linux-source-6.1.tar.xz)",
        )
    key = file_digest(tarball)[:16]
    trees = cache / "kernel" / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    done = [p for p in trees.glob(f"*-{key}") if p.is_dir() and not p.name.startswith(".")]
    if done:
        return done[0]
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{key}-", dir=trees))
    try:
        run_logged(
            ["tar", "-xf", tarball, "-C", partial],
            log=partial.with_suffix(".log"),
            timeout=1800,
            what=f"unpacking {tarball.name}",
        )
        tops = [p for p in partial.iterdir()]
        top = tops[0] if len(tops) == 1 and tops[0].is_dir() else partial
        final = trees / f"{top.name if top is not partial else tarball.name}-{key}"
        os.replace(top, final)
        return final
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        partial.with_suffix(".log").unlink(missing_ok=True)


DEBIAN_MIRROR = "http://deb.debian.org/debian"


def debian_patches(
    cache: Path, package: str = "linux", suite: str = "bookworm", mirror: str = DEBIAN_MIRROR
) -> tuple[Path, str]:
    """Debian's quilt series for ``package`` from ``suite``: (debian/patches dir, version).

    Uses ``apt-get source --download-only --diff-only`` (only the debian.tar.xz, ~2 MB; apt
    verifies it against the signed Sources index) with a private sources.list and lists
    directory under the cache; the host's apt configuration is not touched.
    """
    if which("apt-get") is None:
        raise HostError("apt-get not found: Debian's patch series needs a Debian host")
    base = cache / "kernel" / "debian-src" / f"{package}-{suite}"
    for found in sorted(base.glob("*/debian/patches/series")):
        return found.parent, found.parents[2].name
    lists = base / ".apt" / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    sources_list = base / ".apt" / "sources.list"
    sources_list.write_text(f"deb-src {mirror} {suite} main\n", encoding="utf-8")
    options = [
        "-o",
        f"Dir::Etc::SourceList={sources_list}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={lists}",
        "-o",
        f"Dir::Cache={base / '.apt' / 'cache'}",
        "-o",
        "Acquire::Languages=none",
        "-o",
        "APT::Sandbox::User=root",
    ]
    run(["apt-get", *options, "update"], timeout=600, what="apt-get update (private deb-src)")
    with tempfile.TemporaryDirectory(prefix=".dl-", dir=base) as tmp:
        run(
            ["apt-get", *options, "source", "--download-only", "--diff-only", f"{package}/{suite}"],
            timeout=600,
            cwd=tmp,
            what=f"apt-get source {package}/{suite}",
        )
        tarballs = sorted(Path(tmp).glob(f"{package}_*.debian.tar.*"))
        if not tarballs:
            raise BuildError(f"apt-get source {package}/{suite} gave no debian.tar.* file")
        version = tarballs[0].name.removeprefix(f"{package}_").split(".debian.tar")[0]
        unpacked = Path(tmp) / version
        unpacked.mkdir()
        with tarfile.open(tarballs[0]) as archive:
            for member in archive.getmembers():
                # only plain files and folders under debian/patches, no path tricks
                parts = Path(member.name).parts
                if parts[:2] != ("debian", "patches") or ".." in parts:
                    continue
                if member.isdir() or member.isfile():
                    archive.extract(member, unpacked, set_attrs=False)
        final = base / version
        os.replace(unpacked, final)
    return final / "debian" / "patches", version
