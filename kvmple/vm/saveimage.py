"""Read and re-label libvirt's QEMU save images (what ``virDomainSaveFlags`` writes).

A save image is a 92-byte header, ``data_len`` bytes holding the domain XML and a "cookie"
(NUL-terminated, zero-padded: libvirt leaves room for the XML to grow), then QEMU's migration
stream (it starts with "QEVM"). Layout from libvirt 9.0 ``src/qemu/qemu_saveimage.h``
(``virQEMUSaveHeader``: magic[16], then 19 native-endian uint32: version, data_len,
was_running, compressed, cookieOffset, unused[14]); a header still reading
"LibvirtQemudPart" is an image libvirt did not finish writing.

Why rewrite it at all: ``virDomainRestoreFlags`` accepts a replacement XML only if the domain
name, UUID and genid stay those of the saved guest ("Target domain name ... does not match
source", measured with libvirt 9.0), yet every restored guest needs its own name, UUID and
VM generation ID. The XML *inside* the image is not compared with anything, so each restore
gets a private copy of the image whose header carries that guest's XML; the migration stream
is copied unchanged (``copy_file_range``: in-kernel, no pass through Python).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"
STREAM_MAGIC = b"QEVM"
_FIELDS = struct.Struct("=19I")
HEADER_SIZE = len(MAGIC) + _FIELDS.size  # 92
_MAX_DATA = 16 * 1024 * 1024


class SaveImageError(ValueError):
    """The file is not a complete libvirt QEMU save image (message says what is wrong)."""


@dataclass(frozen=True)
class SaveHeader:
    """The parsed head of a save image: the domain XML, the cookie and where QEMU's stream
    starts (bytes from the start of the file)."""

    version: int
    was_running: int
    compressed: int
    xml: str
    cookie: bytes
    stream_offset: int


def read_header(path: Path) -> SaveHeader:
    """Parse ``path``'s header; SaveImageError when it is truncated, partial or foreign."""
    with path.open("rb") as f:
        head = f.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            raise SaveImageError(f"{path}: {len(head)} bytes, shorter than a save header")
        if head[:16] == PARTIAL:
            raise SaveImageError(f"{path}: libvirt did not finish writing it (partial image)")
        if head[:16] != MAGIC:
            raise SaveImageError(f"{path}: not a libvirt QEMU save image (bad magic)")
        fields = _FIELDS.unpack(head[16:])
        version, data_len, was_running, compressed, cookie_offset = fields[:5]
        if version != 2 or not 0 < data_len <= _MAX_DATA:
            raise SaveImageError(f"{path}: unsupported header (version {version})")
        data = f.read(data_len)
        stream = f.read(len(STREAM_MAGIC))
    if len(data) < data_len or stream != STREAM_MAGIC:
        raise SaveImageError(f"{path}: truncated (no QEMU migration stream after the XML)")
    xml_end = data.find(b"\0")
    if xml_end <= 0:
        raise SaveImageError(f"{path}: no domain XML in the header")
    cookie = b""
    if cookie_offset:
        if cookie_offset >= data_len:
            raise SaveImageError(f"{path}: cookie offset {cookie_offset} beyond the header")
        cookie = data[cookie_offset:].split(b"\0", 1)[0]
    return SaveHeader(
        version=version,
        was_running=was_running,
        compressed=compressed,
        xml=data[:xml_end].decode("utf-8"),
        cookie=cookie,
        stream_offset=HEADER_SIZE + data_len,
    )


def encode_header(header: SaveHeader, xml: str) -> bytes:
    """The head of a save image carrying ``xml`` instead of ``header.xml`` (same cookie,
    same flags), padded so the migration stream starts where it did when the new XML fits."""
    xml_bytes = xml.encode("utf-8") + b"\0"
    cookie_offset = len(xml_bytes) if header.cookie else 0
    data = xml_bytes + (header.cookie + b"\0" if header.cookie else b"")
    data_len = max(len(data), header.stream_offset - HEADER_SIZE)
    data += b"\0" * (data_len - len(data))
    fields = [0] * 19
    fields[:5] = [header.version, data_len, header.was_running, header.compressed, cookie_offset]
    return MAGIC + _FIELDS.pack(*fields) + data


def write_relabelled(source: Path, target: Path, xml: str) -> None:
    """Write ``target``: ``source``'s save image with ``xml`` as its domain XML.

    Raises SaveImageError for a bad source, OSError when writing fails (the caller removes
    ``target``: it lives in the guest's run directory).
    """
    header = read_header(source)
    head = encode_header(header, xml)
    total = source.stat().st_size - header.stream_offset
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(head)
        dst.flush()
        offset_in, offset_out, left = header.stream_offset, len(head), total
        while left > 0:
            n = os.copy_file_range(src.fileno(), dst.fileno(), left, offset_in, offset_out)
            if n == 0:
                raise SaveImageError(f"{source}: ended {left} bytes early while copying")
            offset_in, offset_out, left = offset_in + n, offset_out + n, left - n
