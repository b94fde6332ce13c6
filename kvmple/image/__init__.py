"""Guest images: recipe (guest-images/*.yaml) -> debootstrap tree -> ext4 -> qcow2, cached.

Public API::

    from kvmple.image import build, resolve, Image
    image = resolve("debian12-amqp")   # a recipe name or path; builds if not cached
    image.qcow2, image.kernel, image.initrd, image.cmdline, image.host_keys
"""

from kvmple.image.artifact import Image
from kvmple.image.builder import build, cached, find_recipe, resolve

__all__ = ["Image", "build", "cached", "find_recipe", "resolve"]
