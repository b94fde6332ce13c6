"""Text for ``kvmple kernel series show``: the parts of a manifest beyond its patches
(knobs a playbook can use as factors, benchmarks the authors report)."""

from __future__ import annotations

from kvmple.kernel.series import Series


def knob_lines(series: Series) -> list[str]:
    """One line per knob: name, kind, host path, settings/default, the patch that adds it,
    then its note indented; empty when the manifest names no knobs."""
    lines: list[str] = []
    for knob in series.knobs:
        parts = [f"  knob       {knob.name} ({knob.kind.value}"]
        if knob.host_path and knob.host_path != knob.name:
            parts.append(f", {knob.host_path}")
        parts.append(")")
        if knob.values:
            parts.append(f" values {'|'.join(knob.values)}")
        if knob.default is not None:
            parts.append(f" default {knob.default}")
        if knob.added_by is not None:
            parts.append(f"; added by patch {knob.added_by}")
        lines.append("".join(parts))
        if knob.note:
            lines.append(f"             {knob.note.strip()}")
    return lines


def benchmark_lines(series: Series) -> list[str]:
    """One line per reported benchmark (with kvmple's workload when it has one), then its
    setup and the reported results, quoted as the authors gave them."""
    lines: list[str] = []
    for bench in series.benchmarks:
        workload = f" [kvmple workload {bench.workload}]" if bench.workload else ""
        metric = f"; {bench.metric}" if bench.metric else ""
        better = f", {bench.better} is better" if bench.better else ""
        lines.append(f"  benchmark  {bench.name}{workload}{metric}{better}")
        if bench.setup:
            lines.append(f"             setup: {bench.setup}")
        if bench.reported:
            source = f" ({bench.source})" if bench.source else ""
            lines.append(f"             reported{source}: {'; '.join(bench.reported)}")
    return lines
