"""A real browser for the tests: Debian's chromium driven by Playwright's async API.

Playwright's own browsers are never downloaded: the ``playwright`` package (extra
``test``) launches the system's ``/usr/bin/chromium`` (``apt-get install chromium``;
``.ci/run`` installs it). Tests take the ``page`` fixture (``tests/conftest.py``) and
are ``async def``: each gets its own browser on its own event loop, so nothing of
Playwright outlives the test (its sync API would hold the thread's running-loop marker
for as long as it is open, and break every later ``asyncio.run``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = "/usr/bin/chromium"
# Headless as root, on a closed network: no sandbox (root), no GPU, and none of the
# background connections (updates, sync, QUIC) the network would refuse.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000  # bounds every page action, navigation and expect(...)


def why_no_browser() -> str | None:
    """None if chromium and playwright are both here, else what is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed ({exc}); pip install -e '.[test]'"
    return None


@asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    """A page of a headless chromium that runs for as long as the block does."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            context.set_default_navigation_timeout(TIMEOUT_MS)
            yield await context.new_page()
        finally:
            await browser.close()
