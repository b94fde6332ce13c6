"""One entry point for every report format, used by ``kvmple report`` and by the campaign
runner at the end of ``kvmple run``:

    with open_store(url) as store:
        analysis = load_analysis(store, campaign_id)      # or None for the latest
    print(render(analysis, "text"))
    path = write_report(render(analysis, "html"), default_report_path(analysis, "html"))
"""

from __future__ import annotations

from pathlib import Path

from kvmple import fsutil, paths
from kvmple.errors import StoreError, UsageError
from kvmple.results.analysis import CampaignAnalysis, analyse
from kvmple.results.html import render_html
from kvmple.results.jsonreport import analysis_dict, dumps
from kvmple.results.junit import report_junit
from kvmple.results.store import Store
from kvmple.results.tables import render_markdown, render_text

FORMATS = ("text", "markdown", "html", "json", "junit")
SUFFIX = {"text": "txt", "markdown": "md", "html": "html", "json": "json", "junit": "xml"}


def load_analysis(
    store: Store, ref: str | None, *, allow_mixed: bool = False, threshold: float = 0.02
) -> CampaignAnalysis:
    """Analyse a campaign (id, unique prefix, or None/'latest')."""
    meta = store.resolve(ref)
    return analyse(meta, store.runs(meta.id), allow_mixed=allow_mixed, threshold=threshold)


def render(analysis: CampaignAnalysis, fmt: str) -> str:
    if fmt == "text":
        return render_text(analysis)
    if fmt == "markdown":
        return render_markdown(analysis)
    if fmt == "html":
        return render_html(analysis)
    if fmt == "json":
        return dumps(analysis_dict(analysis))
    if fmt == "junit":
        return report_junit(analysis)
    raise UsageError(f"unknown report format {fmt!r}", hint=f"one of {', '.join(FORMATS)}")


def default_report_path(analysis: CampaignAnalysis, fmt: str) -> Path:
    """data_dir()/reports/<campaign id>.<suffix>"""
    return paths.data_dir() / "reports" / f"{analysis.meta.id}.{SUFFIX[fmt]}"


def write_report(text: str, path: Path) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a report."""
    try:
        fsutil.write_atomic(path, text)
    except OSError as exc:
        raise StoreError(
            f"cannot write the report to {path}: {exc.strerror}",
            hint="choose another --output path",
        ) from exc
    return path.resolve()
