"""``kvmple nightly CONFIG.yaml [--night ID] [--retry] [--status]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kvmple import ui

EPILOG = """\
Steps: fetch -> apply -> build -> boot-test -> install -> campaign -> compare, then the
verdict (JUnit + markdown in the night directory DATA_DIR/nightly/NAME/NIGHT/, the config's
notify outputs, optional e-mail). A night resumes where it stopped (after a reboot or a
crash); re-running a finished night prints its verdict again without running anything.
Exit codes (the verdict): 0 baseline recorded / no change / improvement; 20 regression;
21 inconclusive; 10 apply failed; 9 build failed; 7 boot failed; 12 campaign failed;
5/6 a command failed/timed out (e.g. fetch); 3 bad config; 2 usage; 130 interrupted.
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "nightly",
        help="nightly validation: fetch, apply, build, boot-test, install, campaign, compare",
        description="Run one night of a nightly validation job (resumable, idempotent).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, metavar="CONFIG.yaml")
    parser.add_argument("--night", metavar="ID", help="night id (default: the UTC date)")
    parser.add_argument(
        "--retry", action="store_true", help="run a failed night's failed step again"
    )
    parser.add_argument(
        "--status", action="store_true", help="show the night's state without running anything"
    )
    parser.add_argument("--json", action="store_true", help="print the night's state as JSON")
    parser.set_defaults(handler=_nightly)


def _say(text: str) -> None:
    ui.out.print(text, markup=False, highlight=False)


def _nightly(args: argparse.Namespace) -> int:
    from kvmple.nightly.config import load_config
    from kvmple.nightly.night import run_night
    from kvmple.nightly.state import STEPS, default_night_id, load, night_dir

    loaded = load_config(args.config)
    if args.status:
        night = args.night or default_night_id()
        directory = night_dir(loaded.config.name, night)
        state = load(directory)
        if state is None:
            _say(f"night {night} of {loaded.config.name} has not started ({directory})")
            return 0
        if args.json:
            _say(json.dumps(state.to_json(), indent=2))
            return 0
        _say(f"{loaded.config.name} night {night}: {state.verdict or 'unfinished'} ({directory})")
        for name in STEPS:
            step = state.step(name)
            _say(f"  {name:10} {step.status:8} {step.detail}")
        return 0
    result = run_night(loaded, args.night, retry=args.retry, sink=ui.Renderer())
    state = result.state
    if args.json:
        _say(json.dumps(state.to_json(), indent=2))
        return result.exit_code
    if result.replayed:
        ui.note(f"night {state.night} already finished; nothing was run again")
    for name in STEPS:
        step = state.step(name)
        seconds = "" if step.seconds is None else f" ({step.seconds:g} s)"
        _say(f"  {name:10} {step.status:8}{seconds} {step.detail}")
    _say(f"verdict: {result.verdict.summary}")
    _say(f"night directory: {result.directory} (summary.md, junit.xml, a log per step)")
    return result.exit_code
