"""Fixtures of the browser tier: headless Chromium (Debian's ``chromium``) driven by Playwright against
real server and worker processes, axe-core for accessibility, and a screenshot per test.

``make test`` installs Chromium where it is missing when run as root; elsewhere these tests skip with
a reason, and under ``CI=true`` they fail instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "ui" / "node_modules" / "axe-core" / "axe.min.js"
VENDOR = ROOT / "src" / "perdure" / "dashboard" / "vendor" / "chart.umd.min.js"
#: Where each test leaves its screenshots for review.
OUTPUT = Path(os.environ.get("PERDURE_TEST_OUTPUT", ROOT / "test-output")) / "browser"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (make install-test)"
    if _chromium() is None:
        return "chromium is not installed (make install-system, as root)"
    if not AXE.is_file() or not VENDOR.is_file():
        return "the dashboard's libraries are not built (scripts/build-ui.sh)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop running in this thread while it is open,
    and tests after the browser tests call ``asyncio.run()``, which refuses to run inside one."""
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=_chromium(), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Screens:
    """Screenshots of one test, named in the order they are taken."""

    def __init__(self, page: Any, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.count = 0

    def shot(self, name: str) -> Path:
        self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.screens = Screens(page, OUTPUT / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it stands."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


@pytest.fixture
def cluster(tmp_path: Path, db_url: str) -> Iterator[Any]:
    from tests.integration.cluster import Cluster

    with Cluster(tmp_path, db_url) as cluster:
        yield cluster
