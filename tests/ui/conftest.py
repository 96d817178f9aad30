"""The browser tests keep a screenshot of a failed test: they need to know it failed."""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Tell a test's fixtures whether the test itself failed (``call_failed``)."""
    report: pytest.TestReport = yield
    if report.when == "call":
        item.call_failed = report.failed  # type: ignore[attr-defined]
    return report
