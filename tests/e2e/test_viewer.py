"""The viewer at GET /: served from local files only, and working in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from tests.conftest import LiveServer

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
SENTENCE = "The movie was surprisingly good, I loved it."
OTHER_SENTENCE = "I really enjoyed this film."
ZERO_SHOT_LABELS = ["positive", "negative"]
# Inference shares two CPU cores with the rest of the suite: waits are generous, not timed checks.
WAIT_MS = 60_000


def test_page_is_served_with_local_assets_only(tmp_path: Path) -> None:
    # No lifespan (no `with`): the page needs no models, so none are loaded.
    client = TestClient(create_app(Settings(models_dir=tmp_path)))
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'data-testid="heatmap"' in page.text

    assets = sorted(re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text))
    assert assets == ["/static/viewer.css", "/static/viewer.js"]
    bodies = {"/": page.text}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        bodies[asset] = response.text
    for path, body in bodies.items():
        # Works offline: no CDN, no web font, no remote script or image.
        assert not re.search(r"https?://", body), f"{path} references a remote URL"
    assert "/" not in client.get("/openapi.json").json()["paths"]


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


def choose_classifier(page: Any, models: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """Picks the classification model, else zero-shot on an embedding model: (model, labels)."""
    classifier = next((model for model in models if model["task"] == "classification"), None)
    if classifier is not None:
        page.select_option("[data-testid=model-select]", classifier["name"])
        return classifier["name"], classifier["labels"]
    embedder = next(model for model in models if model["task"] == "embedding")
    page.select_option("[data-testid=model-select]", embedder["name"])
    page.fill("[data-testid=labels-input]", ", ".join(ZERO_SHOT_LABELS))
    return embedder["name"], ZERO_SHOT_LABELS


def check_classification(page: Any, labels: list[str]) -> None:
    from playwright.sync_api import expect

    page.click("[data-testid=classify-button]")
    bars = page.locator("[data-testid=class-bar]")
    expect(bars).to_have_count(len(labels))
    shown = [bars.nth(i).get_attribute("data-label") for i in range(len(labels))]
    scores = [float(bars.nth(i).get_attribute("data-score") or "nan") for i in range(len(labels))]
    assert sorted(label or "" for label in shown) == sorted(labels)
    assert all(0.0 <= score <= 1.0 for score in scores), scores
    assert scores == sorted(scores, reverse=True)


def check_attention(page: Any, client: httpx.Client, model: str) -> None:
    from playwright.sync_api import expect

    body = {"inputs": SENTENCE, "model": model, "aggregate": "mean"}
    response = client.post("/attention", json=body)
    assert response.status_code == 200, response.text
    expected = response.json()
    tokens = expected["tokens"]

    page.click("[data-testid=attention-button]")
    rows = page.locator("[data-testid=heatmap-row]")
    expect(rows).to_have_count(len(tokens))
    expect(rows.first.locator("[data-testid=heatmap-cell]")).to_have_count(len(tokens))
    expect(page.locator("[data-testid=cls-token]")).to_have_count(len(tokens))

    # The first view is the last layer's mean over heads: the hovered cell shows that value.
    row, column = 1, 2
    page.locator("[data-testid=heatmap-row]").nth(row).locator("td").nth(column).hover()
    tooltip = page.locator("[data-testid=tooltip]")
    expect(tooltip).to_be_visible()
    text = tooltip.inner_text()
    assert tokens[row] in text and tokens[column] in text, text
    value = float(re.findall(r"\d+\.\d+", text)[-1])
    assert value == pytest.approx(expected["attentions"][-1][row][column], abs=1e-3)

    for view in ("view-head", "view-rollout"):
        page.check(f"[data-testid={view}]")
        expect(page.locator("[data-testid=view-caption]")).not_to_have_text("")
        expect(rows).to_have_count(len(tokens))


def check_similarity(page: Any, client: httpx.Client) -> None:
    from playwright.sync_api import expect

    page.fill("[data-testid=compare-input]", OTHER_SENTENCE)
    page.click("[data-testid=compare-button]")
    shown = page.locator("[data-testid=similarity-value]")
    expect(shown).to_have_text(re.compile(r"^-?\d\.\d{3}$"))
    response = client.post("/encode", json={"inputs": [SENTENCE, OTHER_SENTENCE]})
    first, second = response.json()["embeddings"]
    cosine = sum(a * b for a, b in zip(first, second, strict=True))
    assert float(shown.inner_text()) == pytest.approx(cosine, abs=2e-3)


@pytest.mark.slow
def test_viewer_in_a_real_browser(server: LiveServer, browser_page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    with server.client() as client:
        models = client.get("/models").json()["models"]
        page.goto(f"{server.url}/")
        expect(page.locator("[data-testid=model-select] option")).to_have_count(len(models))

        page.locator("[data-testid=text-input]").fill("")
        page.locator("[data-testid=text-input]").press_sequentially(SENTENCE)
        model, labels = choose_classifier(page, models)
        check_classification(page, labels)
        check_attention(page, client, model)
        check_similarity(page, client)

    expect(page.locator("[data-testid=error]")).to_be_hidden()
    screenshot = tmp_path / "viewer.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000
    assert page_errors == []


@pytest.mark.slow
def test_viewer_shows_api_errors_inline(server: LiveServer, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page
    with server.client() as client:
        models = client.get("/models").json()["models"]
    embedder = next(model["name"] for model in models if model["task"] == "embedding")
    page.goto(f"{server.url}/")
    page.select_option("[data-testid=model-select]", embedder)
    # Repeated candidate labels: the server answers 422 and the page shows its message.
    page.fill("[data-testid=labels-input]", "same, same")
    page.click("[data-testid=classify-button]")
    error = page.locator("[data-testid=error]")
    expect(error).to_be_visible()
    expect(error).to_contain_text("422")
    expect(page.locator("[data-testid=class-bar]")).to_have_count(0)
