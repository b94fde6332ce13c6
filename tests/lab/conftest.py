"""The lab tier's failure reports: a failing test whose module defines
``lab_host_state(env) -> str`` and that used its ``lab`` fixture gets that text (the lab
host's console tail and journal) as a section of its report, shown with the failure."""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    describe = getattr(getattr(item, "module", None), "lab_host_state", None)
    env = getattr(item, "funcargs", {}).get("lab")
    if report.failed and call.when == "call" and callable(describe) and env:
        try:
            report.sections.append(("lab host console and journal", describe(env)))
        except Exception as exc:  # the report must not hide the test's own failure
            report.sections.append(("lab host console and journal", f"unavailable: {exc!r}"))
    return report
