"""``kvmple kernel series list|show``: the series kvmple knows, and any series input
(manifest, mbox, .patch, quilt or format-patch folder, git tree + range) as a series."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from kvmple import ui
from kvmple.commands.series_view import benchmark_lines, knob_lines

if TYPE_CHECKING:
    from kvmple.kernel.seriesinput import OpenedSeries


def _say(text: str) -> None:
    """Plain output: subjects and paths may contain [brackets] rich would eat as markup."""
    ui.out.print(text, markup=False, highlight=False)


def series_list(args: argparse.Namespace) -> int:
    from kvmple.kernel.series import list_series, load_series

    for name in list_series():
        series, _ = load_series(name)
        _say(f"{name:24} {len(series.patches):3} patches  {series.title}")
    return 0


def open_input(name: str, args: argparse.Namespace) -> OpenedSeries:
    from kvmple.kernel.seriesinput import open_series

    return open_series(name, git_range=args.range, revision=args.revision)


def series_show(args: argparse.Namespace) -> int:
    from kvmple.kernel.tree import inspect_tree
    from kvmple.kernel.upstream import check_upstream

    opened = open_input(args.name, args)
    series, folder = opened.series, opened.folder
    presence = {}
    if args.tree:
        presence = {p.index: p for p in check_upstream(series, inspect_tree(args.tree))}
    if args.json:
        data = series.model_dump(mode="json")
        for index, patch in enumerate(data["patches"]):
            if index in presence:
                patch["in_tree"] = {
                    "upstream": presence[index].upstream,
                    "evidence": presence[index].evidence,
                }
        data["input_kind"] = opened.kind.value
        data["dropped"] = opened.dropped
        _say(json.dumps(data, indent=2))
        return 0
    _say(f"{series.name}: {series.title}" + (f" ({series.version})" if series.version else ""))
    _say(f"  input      {opened.kind.value}")
    if len(opened.revisions) > 1:
        _say(f"  revisions  {', '.join(f'v{r}' for r in opened.revisions)}")
    for line in opened.dropped:
        _say(f"  dropped    {line}")
    for label, value in (
        ("posted", " by ".join(x for x in (series.posted, series.posted_by) if x)),
        ("base", series.base),
        ("landed in", series.landed_in),
        ("merged as", series.landed_revision),
        ("folder", str(folder)),
    ):
        if value:
            _say(f"  {label:10} {value}")
    for source in series.sources:
        detail = source.path or source.range or source.message_id or ""
        _say(f"  source     {source.kind.value} {detail}")
    for index, entry in enumerate(series.patches):
        upstream = (
            f"{entry.upstream} ({entry.upstream_status.value})"
            if entry.upstream
            else (f"no hash ({entry.upstream_status.value})")
        )
        _say(f"  {index + 1:2}. {entry.subject}")
        _say(f"      author {entry.author or '?'}; upstream {upstream}")
        if entry.note:
            _say(f"      {entry.note}")
        if index in presence:
            state = "IN TREE" if presence[index].upstream else "not in tree"
            _say(f"      {state}: {presence[index].evidence}")
    for line in knob_lines(series) + benchmark_lines(series):
        _say(line)
    return 0
