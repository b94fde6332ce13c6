"""Images inside an image: the recipe key ``nested_images`` (a lab host's guests).

A lab host has no network, so the guests it runs are built on the host like any image and
copied into the lab host's tree: ``/opt/kvmple/images/NAME/`` holds disk.qcow2, vmlinuz,
initrd.img and host_keys, and ``/opt/kvmple/guest-images/NAME.yaml`` is a bring_your_own
recipe for them, so ``kvmple`` inside the lab host (run from /opt/kvmple) resolves NAME
like any recipe name. The images' authorized key is the host's installation key: ``kvmple
lab up`` gives the lab host that key, so its kvmple reaches them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from kvmple.image.artifact import Image
from kvmple.image.configure import CMDLINE, guest_path, write
from kvmple.image.recipe import Recipe

ROOT = "/opt/kvmple"


def install(tree: Path, images: Sequence[tuple[Recipe, Image]]) -> None:
    """Copy each built image and its bring_your_own recipe into ``tree``."""
    for recipe, image in images:
        where = f"{ROOT}/images/{image.name}"
        target = guest_path(tree, where)
        target.mkdir(parents=True, exist_ok=True)
        for source, name in ((image.qcow2, "disk.qcow2"), (image.kernel, "vmlinuz"),
                             (image.initrd, "initrd.img")):  # fmt: skip
            shutil.copyfile(source, target / name)
        write(tree, f"{where}/host_keys", "".join(f"{k}\n" for k in image.host_keys))
        byo = {
            "name": image.name,
            "description": f"{recipe.description} (built on the host, key {image.key[:16]})",
            "cmdline": [*CMDLINE, *recipe.cmdline],
            "bring_your_own": {
                "qcow2": f"{where}/disk.qcow2",
                "kernel": f"{where}/vmlinuz",
                "initrd": f"{where}/initrd.img",
                "host_keys": f"{where}/host_keys",
                "ssh_user": image.ssh_user,
            },
        }
        write(
            tree,
            f"{ROOT}/guest-images/{image.name}.yaml",
            "# written by kvmple (nested_images): use the image as it is\n"
            + yaml.safe_dump(byo, sort_keys=False),
        )
