#!/usr/bin/env python3
"""Guest image figures measured in one run, against issue 3's targets.

    sudo .venv/bin/python bench/image.py [--recipe debian12-amqp] [--boots 1] [--stock]
                                          [--warm-only]

- cold build: a fresh, empty cache (downloads included)            target <= 240 s
- warm build: the same recipe again (API call, and the CLI process) target <= 2 s
- boot to SSH login with the pinned key, QEMU TCG, 2 vCPUs         target <= 30 s
- boot to RabbitMQ completing an AMQP handshake                    target <= 60 s
- --stock: the same packages without the recipe's boot tuning (masked units, small initrd,
  quiet), built and booted in the same run, for a ratio measured here rather than quoted.

The machine is shared: the load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvmple.image import Image, build, find_recipe  # noqa: E402
from kvmple.image.probe import probe  # noqa: E402
from kvmple.image.recipe import load_recipe  # noqa: E402
from kvmple.run import run  # noqa: E402

TARGETS = {"cold": 240.0, "warm": 2.0, "ssh": 30.0, "amqp": 60.0}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def stock_recipe(recipe: Path, directory: Path) -> Path:
    """The recipe without its boot tuning (same packages, programs and files)."""
    parsed = load_recipe(recipe)
    lines = [f"name: {parsed.name}-stock", f"suite: {parsed.suite}"]
    if parsed.mirror:
        lines.append(f"mirror: {parsed.mirror}")
    lines.append("packages: [" + ", ".join(parsed.packages) + "]")
    lines.append(f"disk_size: {parsed.disk_size}")
    path = directory / f"{parsed.name}-stock.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def timed_build(recipe: Path) -> tuple[Image, float]:
    start = time.monotonic()
    image = build(recipe)
    return image, time.monotonic() - start


def boots(image: Image, count: int, workdir: Path) -> tuple[list[float], list[float]]:
    ssh, amqp = [], []
    for n in range(count):
        times = probe(image, workdir / f"boot{n}", amqp=True, ssh_timeout=900, amqp_timeout=1200)
        ssh.append(times.ssh_seconds)
        amqp.append(times.amqp_seconds or float("nan"))
        print(
            f"  boot {n + 1}: ssh {times.ssh_seconds:.1f} s, RabbitMQ {amqp[-1]:.1f} s", flush=True
        )
    return ssh, amqp


def verdict(value: float, target: float) -> str:
    return f"{value:7.1f} s  target <= {target:g} s  ({value / target:.2f}x of target) " + (
        "OK" if value <= target else "MISSED"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="debian12-amqp")
    parser.add_argument("--boots", type=int, default=1)
    parser.add_argument("--stock", action="store_true", help="also build and boot a stock variant")
    parser.add_argument(
        "--warm-only", action="store_true", help="use the existing cache (no cold build)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/image.py builds images: run it as root", file=sys.stderr)
        return 4
    recipe = find_recipe(args.recipe).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="kvmple-bench-image-"))
    if not args.warm_only:
        os.environ["KVMPLE_CACHE_DIR"] = str(scratch / "cache")  # cold: nothing cached
    os.environ.setdefault("KVMPLE_NO_PROGRESS", "1")
    print(f"load average before: {load()}  (2-core machine, shared)", flush=True)
    figures: dict[str, float] = {}
    try:
        image, seconds = timed_build(recipe)
        if not args.warm_only:
            figures["cold"] = seconds
            print(f"cold build   {verdict(seconds, TARGETS['cold'])}", flush=True)
            steps = image.manifest.step_seconds
            print("  steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items()))
        _, figures["warm"] = timed_build(recipe)
        print(f"warm build   {verdict(figures['warm'], TARGETS['warm'])}  (API call)")
        cli = run(
            [sys.executable, "-m", "kvmple.cli", "image", "build", str(recipe)],
            timeout=120,
            cwd=ROOT,
        )
        print(f"warm build   {verdict(cli.duration, TARGETS['warm'])}  (kvmple CLI process)")
        ssh, amqp = boots(image, args.boots, scratch)
        figures["ssh"], figures["amqp"] = statistics.median(ssh), statistics.median(amqp)
        print(f"boot to SSH  {verdict(figures['ssh'], TARGETS['ssh'])}  (median of {len(ssh)})")
        print(f"boot to AMQP {verdict(figures['amqp'], TARGETS['amqp'])}  (median of {len(amqp)})")
        if args.stock:
            stock, seconds = timed_build(stock_recipe(recipe, scratch))
            print(f"stock variant built in {seconds:.0f} s; booting it", flush=True)
            stock_ssh, stock_amqp = boots(stock, args.boots, scratch)
            s_ssh, s_amqp = statistics.median(stock_ssh), statistics.median(stock_amqp)
            print(
                f"stock image: SSH {s_ssh:.1f} s, RabbitMQ {s_amqp:.1f} s; tuned/stock ratio: "
                f"SSH {figures['ssh'] / s_ssh:.2f}, RabbitMQ {figures['amqp'] / s_amqp:.2f}"
            )
        print(
            "reference (issue 3): stock image 32 s to SSH, 76 s to RabbitMQ, measured on an idle"
            " machine"
        )
    finally:
        print(f"load average after: {load()}")
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
