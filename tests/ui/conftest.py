"""The playground's fixtures: a real server (tests/app/conftest.py's LiveServer, on 127.0.0.1 at a
free port) holding one model per panel, and Debian's headless Chromium (tests/ui/browser.py) whose
pages record every request they make."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page

from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models
from tests.ui.browser import PANEL_MODELS, chromium

UI_MODELS = sorted({model for _, model in PANEL_MODELS.values()})


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory) -> Iterator[LiveServer]:
    repository = copy_models(tmp_path_factory.mktemp("models"), UI_MODELS)
    # The seq2seq model admits one search at a time and refuses the next at once: test_playground's
    # 429 case keeps that slot busy.
    settings = Settings(
        model_repository=repository, max_concurrent_searches=1, admission_wait_s=0, admission_hold_s=0
    )
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    with chromium() as context:
        yield context


class RecordedPage:
    """A page and what it did: every URL it requested, its uncaught errors and console errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))

    def outside(self, origin: str) -> list[str]:
        """The requests that did not go to ``origin`` (data: and blob: URLs are the page's own)."""
        return [
            url
            for url in self.urls
            if urlsplit(url).scheme not in ("data", "blob") and not url.startswith(origin + "/")
        ]


@pytest.fixture()
def recorded(browser, ui_server) -> Iterator[RecordedPage]:
    """A fresh page; afterwards, every request it made went to the server, and nothing failed in it
    (an expected error status is shown by the page, not logged as an error: those are filtered by
    the test that provokes them)."""
    page = browser.new_page()
    record = RecordedPage(page)
    try:
        yield record
    finally:
        page.close()
    assert record.urls, "the page made no request"
    assert record.outside(ui_server.url) == []
