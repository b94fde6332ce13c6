"""``kvmple image build|list|rm|check``: thin adapters over kvmple.image."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from kvmple import ui
from kvmple.image import build, find_recipe
from kvmple.image.cache import entries, images_dir, remove
from kvmple.image.probe import probe


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("image", help="build, list, remove and check guest images")
    image_sub = parser.add_subparsers(dest="image_command", metavar="ACTION")
    image_sub.required = True

    p_build = image_sub.add_parser(
        "build", help="build the image a recipe describes (cached; needs root)"
    )
    p_build.add_argument("recipe", help="recipe file, or a name from guest-images/")
    p_build.add_argument("--rebuild", action="store_true", help="ignore a cached image")
    p_build.add_argument("--json", action="store_true", help="print the image as JSON")
    p_build.set_defaults(handler=_build)

    p_list = image_sub.add_parser("list", help="list cached images and booted snapshots")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_list.set_defaults(handler=_list)

    p_rm = image_sub.add_parser("rm", help="remove cached images or booted snapshots")
    p_rm.add_argument(
        "ref",
        nargs="+",
        help="image name, cache directory name or key prefix; a snapshot key prefix "
        "(>= 6 hex digits, see 'image list'); or 'snapshots' for all snapshots",
    )
    p_rm.set_defaults(handler=_rm)

    p_check = image_sub.add_parser(
        "check", help="boot an image once (QEMU) and check SSH and RabbitMQ answer"
    )
    p_check.add_argument("recipe", help="recipe file, or a name from guest-images/")
    p_check.add_argument("--accel", default="tcg,thread=multi", help="QEMU -accel value")
    p_check.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds allowed for SSH, and again for RabbitMQ (TCG on a busy host is slow)",
    )
    p_check.add_argument(
        "--amqp",
        action="store_true",
        help="also wait for RabbitMQ (default: only if the built image has rabbitmq-server)",
    )
    p_check.set_defaults(handler=_check)


def _build(args: argparse.Namespace) -> int:
    image = build(find_recipe(args.recipe), rebuild=args.rebuild, sink=ui.Renderer())
    if args.json:
        ui.out.print_json(json.dumps(image.to_json()))
    else:
        ui.out.print(f"{image.name} {image.key[:16]} {image.qcow2.parent}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from kvmple.vm import snapcache

    found = entries()
    snapshots = snapcache.entries()
    if args.json:
        rows: list[dict[str, object]] = [
            {
                **(e.image.to_json() if e.image else {}),
                "directory": str(e.directory),
                "size_bytes": e.size_bytes,
                "built_at": e.image.manifest.built_at if e.image else None,
            }
            for e in found
        ]
        rows += [{"snapshot": True, **snapcache.describe(e)} for e in snapshots]
        ui.out.print_json(json.dumps(rows))
        return 0
    _list_snapshots(snapshots)
    if not found:
        ui.note(f"no cached images in {images_dir()}")
        return 0
    lines: list[tuple[str, ...]] = [("NAME", "KEY", "BUILT", "KERNEL", "PKGS", "SIZE", "DIRECTORY")]
    for entry in found:
        image = entry.image
        manifest = image.manifest if image else None
        lines.append(
            (
                image.name if image else "?",
                image.key[:16] if image else "?",
                _or_unknown(manifest.built_at if manifest else None),
                _or_unknown(manifest.kernel_release if manifest else None),
                _or_unknown(manifest.package_count if manifest else None),
                _size(entry.size_bytes),
                str(entry.directory),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    for row in lines:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        ui.out.print("  ".join([*cells, row[-1]]), markup=False, crop=False)
    return 0


def _list_snapshots(snapshots: list[Any]) -> None:
    """Booted snapshots (kvmple.vm.snapcache), most recently used first, after the images."""
    from kvmple.vm import snapcache

    total = sum(e.size_bytes for e in snapshots)
    ui.note(
        f"{len(snapshots)} booted snapshot(s), {_size(total)} of {_size(snapcache.cap_bytes())} "
        f"(KVMPLE_SNAPSHOT_CAP_MIB) in {snapcache.snapshots_dir()}"
    )
    for e in snapshots:
        f = e.fields
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        ui.out.print(
            f"snapshot {e.key[:12]}  {f.get('image')} {f.get('vcpus')} vCPU "
            f"{f.get('memory_mib')} MiB {f.get('accelerator')} ready={f.get('readiness')}  "
            f"{_size(e.size_bytes)}  used {used}  cmdline: {f.get('cmdline')}",
            markup=False,
            crop=False,
        )


def _or_unknown(value: str | int | None) -> str:
    return "?" if value is None else str(value)


def _size(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def _rm(args: argparse.Namespace) -> int:
    from kvmple.vm import snapcache

    for ref in args.ref:
        keys = [e.key for e in snapcache.entries()]
        if ref == "snapshots" or (len(ref) >= 6 and any(k.startswith(ref) for k in keys)):
            for key in snapcache.remove(ref):
                ui.note(f"removed snapshot {key}")
            continue
        for directory in remove(ref):
            ui.note(f"removed {directory}")
    return 0


def _check(args: argparse.Namespace) -> int:
    image = build(find_recipe(args.recipe), sink=ui.Renderer())
    amqp = args.amqp or "rabbitmq-server" in image.manifest.packages
    with tempfile.TemporaryDirectory(prefix="kvmple-image-check-") as tmp:
        times = probe(
            image,
            Path(tmp),
            amqp=amqp,
            accel=args.accel,
            ssh_timeout=args.timeout,
            amqp_timeout=2 * args.timeout,
        )
    ui.out.print(f"{image.name}: ssh {times.ssh_seconds:.1f}s after start", end="")
    if times.amqp_seconds is not None:
        ui.out.print(f", RabbitMQ {times.amqp_seconds:.1f}s", end="")
    ui.out.print()
    return 0
