"""QEMU option strings (``-name guest=NAME,debug-threads=on``, ``-machine pc,accel=kvm``).

QEMU separates an option's parts with ``,`` and writes a literal comma as ``,,`` (QEMU's
``util/qemu-option.c``, ``get_opt_value``; libvirt doubles every comma of a domain name for
this reason). Anything that splits or builds such a string goes through here so the escape is
honoured everywhere.
"""

from __future__ import annotations


def split_qemu_option(value: str) -> list[str]:
    """Split a QEMU option string on single commas, turning ``,,`` back into ``,``.

    ``"guest=foo=1,,bar=2,debug-threads=on"`` -> ``["guest=foo=1,bar=2", "debug-threads=on"]``.
    """
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char == ",":
            if value.startswith(",,", i):
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def qemu_option_fields(value: str, implied: str | None = None) -> tuple[str | None, dict[str, str]]:
    """The leading bare value and the ``key=value`` fields of a QEMU option string.

    ``implied`` names the key a leading bare value stands for (``-name foo`` means
    ``guest=foo``; ``-machine pc`` means ``type=pc``); when given, that key is also filled in
    the fields. Returns ``(bare value or None, {key: value})``, escapes undone.
    """
    bare: str | None = None
    fields: dict[str, str] = {}
    for index, part in enumerate(split_qemu_option(value)):
        key, eq, val = part.partition("=")
        if index == 0 and not eq:  # QEMU reads only an '='-free first part as the implied value
            bare = part
            if implied is not None:
                fields.setdefault(implied, part)
            continue
        if eq:
            fields[key] = val
    return bare, fields


def escape_qemu_value(value: str) -> str:
    """Double every comma so ``value`` survives inside a QEMU option string."""
    return value.replace(",", ",,")
