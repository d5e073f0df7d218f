"""The browser harness itself: chromium opens a page from a local server and clicks on it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

HTML = b"""<!doctype html>
<html><head><title>harness</title></head><body>
<button id="b" onclick="this.textContent = 'clicked'">click me</button>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(HTML)))
        self.end_headers()
        self.wfile.write(HTML)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_click_changes_the_button(page: Page, server_url: str) -> None:
    from playwright.async_api import expect

    await page.goto(server_url)
    button = page.locator("#b")
    await expect(button).to_have_text("click me")
    await button.click()
    await expect(button).to_have_text("clicked")
    assert await page.title() == "harness"


def test_asyncio_runs_after_a_browser_test() -> None:
    """Nothing of the browser outlives its test: a plain ``asyncio.run`` still works."""
    assert asyncio.run(asyncio.sleep(0, "ran")) == "ran"
