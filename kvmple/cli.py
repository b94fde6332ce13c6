"""kvmple's command line: subcommands, each a thin adapter over one library function.

Every subcommand module in ``kvmple.commands`` exposes ``register(subparsers)``, which adds
its parser and sets ``handler`` (a function taking the parsed args and returning an exit
code). Expected failures are ``KvmpleError``s, caught once here.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType

from kvmple import __version__
from kvmple.errors import Interrupted, KvmpleError

# One entry per subcommand module in kvmple/commands/; keep alphabetical.
COMMAND_MODULES: tuple[str, ...] = (
    "compare",
    "doctor",
    "fleet",
    "image",
    "kernel",
    "lab",
    "nightly",
    "ple",
    "report",
    "results",
    "run",
    "vm",
    "workload",
)


def build_parser(commands: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The parser of ``commands`` (default all; the Bochs lab host registers only the few
    it runs, because importing every command module costs minutes under an interpreter)."""
    parser = argparse.ArgumentParser(
        prog="kvmple",
        description="Validate kernel patches by driving real QEMU/KVM guests.",
    )
    parser.add_argument("--version", action="version", version=f"kvmple {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug output on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        if name in commands:
            module = importlib.import_module(f"kvmple.commands.{name}")
            module.register(sub)
    return parser


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every context manager (VMs, PLE changes) cleans
    up; scripts that boot guests without going through main() (bench/) call it too."""
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def main(argv: Sequence[str] | None = None, commands: Sequence[str] = COMMAND_MODULES) -> int:
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    try:
        code = args.handler(args)
        return int(code or 0)
    except KeyboardInterrupt:
        # only a campaign can be resumed: after 'lab up' or 'image build' the hint misleads
        resumable = args.command == "run"
        error: KvmpleError = Interrupted(
            "interrupted; everything kvmple started was cleaned up",
            hint="a campaign can continue with 'kvmple run --resume ID'" if resumable else None,
        )
        return _report(error, args.debug)
    except KvmpleError as exc:
        return _report(exc, args.debug)


def _report(exc: KvmpleError, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"kvmple: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
