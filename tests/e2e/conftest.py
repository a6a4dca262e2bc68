"""Browser fixtures: Debian's headless Chromium driven by Playwright, with the network cut off."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

# Debian's browser, driven by Playwright for Python: no browser download, ever.
CHROMIUM_PACKAGE = "chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium refuses its sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Inference shares two CPU cores with the rest of the suite: waits are generous, not timed checks.
WAIT_MS = 60_000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class NetworkLog:
    """What the page asked for: every request, and those blocked for leaving the machine."""

    requested: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed_by_policy: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


def is_local(url: str) -> bool:
    """Loopback http(s), or a URL that names no host at all (data:, blob:, about:)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in LOOPBACK_HOSTS


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A 1366x768 page in Debian's headless Chromium; skips naming what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package `playwright` is not installed (pip install playwright)")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            f"the Debian package `{CHROMIUM_PACKAGE}` is not installed "
            f"(apt-get install {CHROMIUM_PACKAGE}; .ci/run installs it)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture
def offline_page(browser_page: Any) -> tuple[Any, NetworkLog]:
    """`browser_page` with every request to a non-loopback host aborted and logged."""
    page = browser_page
    log = NetworkLog()

    def guard(route: Any) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            log.blocked.append(url)
            route.abort("internetdisconnected")

    page.route("**/*", guard)
    page.on("request", lambda request: log.requested.append(request.url))

    def failed(request: Any) -> None:
        # Refused by the page's Content-Security-Policy: the browser never sent it.
        if request.failure == "csp":
            log.failed_by_policy.append(request.url)

    page.on("requestfailed", failed)
    page.on("pageerror", lambda error: log.page_errors.append(str(error)))
    return page, log


def assert_stayed_local(log: NetworkLog) -> None:
    """Nothing reached the network for another host: the route guard aborted nothing, and any
    remote URL a script tried was refused by the page's own policy before it was sent."""
    assert log.blocked == [], f"requests that tried to leave the machine: {log.blocked}"
    remote = [url for url in log.requested if not is_local(url)]
    assert all(url in log.failed_by_policy for url in remote), remote
    assert log.page_errors == []
