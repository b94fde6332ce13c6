"""Build step 1: debootstrap the recipe's distribution into a directory tree.

No loop mounts and no network inside the guest: debootstrap runs on the host (as root) into a
plain directory. Downloaded .debs are kept in a shared download cache under the cache dir, so
a rebuild with a different recipe does not fetch the same packages again.

It runs in two stages (``--foreign``, then ``--second-stage`` in a chroot) so configuration
that shapes package installation is in place before dpkg runs: ``force-unsafe-io`` (a
throw-away tree needs no fsync after every file) and the recipe's small-initrd settings (the
kernel's postinst then builds the small initrd once instead of a generic one first).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from kvmple import paths
from kvmple.errors import BuildError, CommandError, CommandTimeout
from kvmple.image.recipe import Recipe
from kvmple.run import run_logged

TIMEOUT = 30 * 60
_STEP = re.compile(r"^I: (Retrieving|Validating|Unpacking|Configuring|Extracting) (\S+?)(\.*| .*)$")


def debs_cache() -> Path:
    directory = paths.cache_dir() / "debootstrap-debs"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def argv(recipe: Recipe, tree: Path, mirror: str, cache: Path) -> list[str]:
    """The first-stage debootstrap command line for a recipe (pure)."""
    args = [
        "debootstrap",
        "--foreign",
        "--variant=minbase",
        f"--components={','.join(recipe.components)}",
        f"--cache-dir={cache}",
    ]
    if recipe.packages:
        args.append(f"--include={','.join(recipe.packages)}")
    return [*args, recipe.suite, str(tree), mirror]


def progress_event(line: str) -> tuple[str, str] | None:
    """'I: Unpacking rabbitmq-server...' -> ('Unpacking', 'rabbitmq-server')."""
    match = _STEP.match(line.strip())
    return (match.group(1), match.group(2)) if match else None


def explain_failure(log_tail: str) -> str:
    """The most telling line of a failed debootstrap log (pure, from its last lines)."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    missing = [line for line in lines if line.startswith("E: Couldn't find these debs")]
    if missing:
        names = missing[-1].split(":", 2)[-1].strip()
        return f"unknown package(s): {names}"
    for line in reversed(lines):
        if line.startswith("E: "):
            return line[3:]
    for line in reversed(lines):
        if line.startswith("W: "):
            return line[3:]
    return lines[-1] if lines else "no output"


def second_stage_argv(tree: Path) -> list[str]:
    return ["chroot", str(tree), "/debootstrap/debootstrap", "--second-stage"]


def debootstrap(
    recipe: Recipe,
    tree: Path,
    mirror: str,
    log: Path,
    *,
    on_event: Callable[[str, str], None] | None = None,
    between: Callable[[], None] | None = None,
) -> None:
    """Run both debootstrap stages (``between`` runs in between); failures become a
    BuildError naming the cause and the log."""

    def on_line(line: str) -> None:
        event = progress_event(line)
        if event is not None and on_event is not None:
            on_event(*event)

    _stage(argv(recipe, tree, mirror, debs_cache()), log, on_line)
    if between is not None:
        between()
    _stage(second_stage_argv(tree), log, on_line)


def _stage(args: list[str], log: Path, on_line: Callable[[str], None]) -> None:
    try:
        run_logged(args, log=log, timeout=TIMEOUT, on_line=on_line, what="debootstrap")
    except CommandTimeout as exc:
        raise BuildError(
            f"step debootstrap timed out after {TIMEOUT}s", hint=f"full log: {log}"
        ) from exc
    except CommandError as exc:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        cause = explain_failure(tail)
        hint = f"full log: {log}"
        if "unknown package" in cause:
            hint = f"check the recipe's 'packages' (apt-cache policy NAME); {hint}"
        elif "No space left" in tail:
            cause = "no space left on device"
            hint = f"free space in {paths.cache_dir()}; {hint}"
        raise BuildError(f"step debootstrap failed: {cause}", hint=hint) from exc
