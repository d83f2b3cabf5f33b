"""/docs as a person uses it: a real headless Chromium, with nothing beyond loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright

from tests.api.server import Server

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright downloads no browser
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's own sandbox refuses to start
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


class Offline:
    """Lets requests to the server through and aborts, and records, any other."""

    def __init__(self, server: Server) -> None:
        self.origin = urlsplit(server.url).netloc
        self.blocked: list[str] = []
        self.served: list[str] = []

    def __call__(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or (
            parts.hostname == "127.0.0.1" and parts.netloc == self.origin
        ):
            self.served.append(url)
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[tuple[Page, Offline, list[str]]]:
    context = browser.new_context()
    offline = Offline(server)
    context.route("**/*", offline)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    opened.on("console", on_console)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened, offline, errors
    context.close()


def test_docs_render_and_run_repl_with_no_request_leaving_loopback(
    page: tuple[Page, Offline, list[str]], server: Server
) -> None:
    docs, offline, errors = page
    docs.goto(f"{server.url}/docs")
    repl = docs.locator("#operations-execution-runPython")
    repl.wait_for()
    assert "/repl" in repl.locator(".opblock-summary-path").inner_text()

    repl.locator(".opblock-summary").first.click()
    repl.get_by_role("button", name="Try it out").click()
    body = repl.locator("textarea.body-param__text")
    example = json.loads(body.input_value())
    assert example["code"], "the request example is filled in"
    repl.get_by_role("button", name="Execute").click()

    status = repl.locator(".live-responses-table .response .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip().startswith("200")
    shown = repl.locator(".live-responses-table .response-col_description pre").first.inner_text()
    reply = json.loads(shown)
    assert reply["status"] == "ok"
    assert reply["result"] == "15"  # the example sums range(6)

    assert offline.blocked == [], f"requests left loopback: {offline.blocked}"
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in offline.served)
    assert any(url.endswith("/openapi.json") for url in offline.served)
    assert errors == [], f"the page reported errors: {errors}"


def test_redoc_renders_offline(page: tuple[Page, Offline, list[str]], server: Server) -> None:
    docs, offline, errors = page
    docs.goto(f"{server.url}/redoc")
    docs.get_by_role("heading", name="Run Python in a stateful session").wait_for()
    assert offline.blocked == [], f"requests left loopback: {offline.blocked}"
    # ReDoc's "powered by" badge points at its CDN; the page's CSP stops it in the browser.
    unexpected = [text for text in errors if "Content Security Policy" not in text]
    assert unexpected == [], f"the page reported errors: {unexpected}"
