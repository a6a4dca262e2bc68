"""The viewer at GET /: served from local files only, and working in a real headless Chromium."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from tests.conftest import LiveServer
from tests.e2e.conftest import NetworkLog, assert_stayed_local

SENTENCE = "The movie was surprisingly good, I loved it."  # the page's pre-filled text
OTHER_SENTENCE = "I really enjoyed this film."
# About 200 tokens: past the attention limit (128 by default), within the model's 256.
LONG_TEXT = " ".join(["The committee reviewed the proposal carefully before the vote."] * 18)

CLASS_BARS = "[data-testid=class-bar]"
HEATMAP_ROWS = "[data-testid=heatmap-row]"
STRIP_CHIPS = "[data-testid=cls-token]"


def test_page_is_served_with_local_assets_only(tmp_path: Path) -> None:
    # No lifespan (no `with`): the page needs no models, so none are loaded.
    client = TestClient(create_app(Settings(models_dir=tmp_path)))
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # The browser itself refuses anything from another origin.
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
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
    # The page is not part of the API (POST / is: TEI's route for the served model's task).
    assert "get" not in client.get("/openapi.json").json()["paths"].get("/", {})


# ---------------------------------------------------------------- helpers


def open_viewer(page: Any, server: LiveServer, models: list[dict[str, Any]]) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.url}/")
    expect(page.locator("[data-testid=model-select] option")).to_have_count(len(models))


def first_of(models: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """The default model of `task` (the one the page opens on)."""
    return next(model for model in models if model["task"] == task and model["default"])


def luminance(css_color: str) -> float:
    """WCAG relative luminance of a computed `rgb(r, g, b)` colour."""
    channels = [int(c) / 255 for c in re.findall(r"\d+", css_color)[:3]]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(text: str, background: str) -> float:
    light, dark = sorted((luminance(text), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def check_bars(page: Any, labels: list[str]) -> None:
    from playwright.sync_api import expect

    bars = page.locator(CLASS_BARS)
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
    rows = page.locator(HEATMAP_ROWS)
    expect(rows).to_have_count(len(tokens))
    expect(rows.first.locator("[data-testid=heatmap-cell]")).to_have_count(len(tokens))
    expect(page.locator(STRIP_CHIPS)).to_have_count(len(tokens))
    expect(page.locator("#attention-model")).to_contain_text(model)
    # A short text is not cut: no notice.
    expect(page.locator("[data-testid=attention-truncated]")).to_be_hidden()

    # The first view is the last layer's mean over heads: the hovered cell shows that value.
    row, column = 1, 2
    page.locator(HEATMAP_ROWS).nth(row).locator("td").nth(column).hover()
    tooltip = page.locator("[data-testid=tooltip]")
    expect(tooltip).to_be_visible()
    text = tooltip.inner_text()
    assert tokens[row] in text and tokens[column] in text, text
    value = float(re.findall(r"\d+\.\d+", text)[-1])
    assert value == pytest.approx(expected["attentions"][-1][row][column], abs=1e-3)

    for view in ("view-head", "view-rollout", "view-mean"):
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


def expect_classification_cleared(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.locator(CLASS_BARS)).to_have_count(0)
    expect(page.locator("[data-testid=class-bars] .placeholder")).to_be_visible()
    expect(page.locator("#classify-model")).to_have_text("")


def expect_attention_cleared(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.locator(HEATMAP_ROWS)).to_have_count(0)
    expect(page.locator(STRIP_CHIPS)).to_have_count(0)
    expect(page.locator("#attention-model")).to_have_text("")
    expect(page.locator("#legend")).to_be_hidden()
    expect(page.locator("[data-testid=attention-truncated]")).to_be_hidden()


def expect_similarity_cleared(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.locator("[data-testid=similarity]")).to_be_hidden()
    expect(page.locator("#compare-model")).to_have_text("")


def hold_requests(page: Any, path: str) -> list[Any]:
    """Holds every request to `path` until the test lets it go (`route.continue_()`)."""
    held: list[Any] = []
    page.route(f"**{path}", lambda route: held.append(route))
    return held


def wait_for_held(page: Any, held: list[Any]) -> None:
    deadline = time.monotonic() + 30
    while not held:  # route handlers run while Playwright waits
        assert time.monotonic() < deadline, "the page sent no request"
        page.wait_for_timeout(50)


# ---------------------------------------------------------------- the browser


@pytest.mark.slow
def test_viewer_works_on_the_first_click(
    server: LiveServer, offline_page: tuple[Any, NetworkLog], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page, network = offline_page
    with server.client() as client:
        models = client.get("/models").json()["models"]
        classifier = first_of(models, "classification")
        open_viewer(page, server, models)
        # The page opens on the classifier, so the pre-filled text classifies as it stands.
        expect(page.locator("[data-testid=model-select]")).to_have_value(classifier["name"])
        expect(page.locator("[data-testid=text-input]")).to_have_value(SENTENCE)
        page.click("[data-testid=classify-button]")
        check_bars(page, classifier["labels"])
        expect(page.locator("#classify-model")).to_contain_text(classifier["name"])
        check_attention(page, client, classifier["name"])
        check_similarity(page, client)

    expect(page.locator("[data-testid=error]")).to_be_hidden()
    screenshot = tmp_path / "viewer.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000
    assert_stayed_local(network)


@pytest.mark.slow
def test_zero_shot_labels_are_filled_in(
    server: LiveServer, offline_page: tuple[Any, NetworkLog]
) -> None:
    from playwright.sync_api import expect

    page, network = offline_page
    with server.client() as client:
        models = client.get("/models").json()["models"]
    embedder = first_of(models, "embedding")
    open_viewer(page, server, models)
    page.select_option("[data-testid=model-select]", embedder["name"])
    labels_input = page.locator("[data-testid=labels-input]")
    expect(labels_input).to_be_visible()
    # Real labels in the field, not a placeholder that only looks filled in.
    labels = [label.strip() for label in labels_input.input_value().split(",")]
    assert len(labels) >= 2 and all(labels), labels
    page.click("[data-testid=classify-button]")
    check_bars(page, labels)
    expect(page.locator("[data-testid=error]")).to_be_hidden()
    assert_stayed_local(network)


@pytest.mark.slow
def test_results_that_no_longer_match_are_cleared(
    server: LiveServer, offline_page: tuple[Any, NetworkLog]
) -> None:
    from playwright.sync_api import expect

    page, network = offline_page
    with server.client() as client:
        models = client.get("/models").json()["models"]
    classifier = first_of(models, "classification")
    embedder = first_of(models, "embedding")
    open_viewer(page, server, models)

    def show_everything() -> None:
        page.click("[data-testid=classify-button]")
        expect(page.locator(CLASS_BARS)).not_to_have_count(0)
        page.click("[data-testid=attention-button]")
        expect(page.locator(HEATMAP_ROWS)).not_to_have_count(0)
        page.click("[data-testid=compare-button]")
        expect(page.locator("[data-testid=similarity]")).to_be_visible()

    # A new text: every panel was about the old one.
    show_everything()
    page.locator("[data-testid=text-input]").press("End")
    page.keyboard.type(" Or was it?")
    expect_classification_cleared(page)
    expect_attention_cleared(page)
    expect_similarity_cleared(page)

    # Another model: its scores and maps go; the similarity came from the embedding model,
    # which is still the one the page would use, so it stays.
    show_everything()
    page.select_option("[data-testid=model-select]", embedder["name"])
    expect_classification_cleared(page)
    expect_attention_cleared(page)
    expect(page.locator("[data-testid=similarity]")).to_be_visible()
    expect(page.locator("#compare-model")).to_contain_text(embedder["name"])
    # The second text changes: the similarity goes too.
    page.fill("[data-testid=compare-input]", OTHER_SENTENCE + " Twice.")
    expect_similarity_cleared(page)

    # An answer for a text that changed while it was on its way is dropped, not drawn.
    held = hold_requests(page, "/attention")
    page.click("[data-testid=attention-button]")
    wait_for_held(page, held)
    page.fill("[data-testid=text-input]", OTHER_SENTENCE)
    for route in held:
        route.continue_()
    expect(page.locator("[data-testid=attention-button]")).to_be_enabled()
    page.unroute("**/attention")
    expect_attention_cleared(page)

    # The same for a model that changed while /classify was answering.
    page.fill("[data-testid=labels-input]", "film, food")
    held = hold_requests(page, "/classify")
    page.click("[data-testid=classify-button]")
    wait_for_held(page, held)
    page.select_option("[data-testid=model-select]", classifier["name"])
    for route in held:
        route.continue_()
    expect(page.locator("[data-testid=classify-button]")).to_be_enabled()
    page.unroute("**/classify")
    expect_classification_cleared(page)

    # A new request clears its panel at once: a failure leaves no earlier result on screen.
    page.select_option("[data-testid=model-select]", embedder["name"])
    page.fill("[data-testid=labels-input]", "film, food")
    page.click("[data-testid=classify-button]")
    expect(page.locator(CLASS_BARS)).to_have_count(2)
    busy = {"error": {"type": "overloaded", "message": "the queue is full"}}
    page.route("**/classify", lambda route: route.fulfill(status=429, json=busy))
    page.click("[data-testid=classify-button]")
    error = page.locator("[data-testid=error]")
    expect(error).to_contain_text("429: the queue is full")
    expect_classification_cleared(page)
    page.unroute("**/classify")

    # The server's own refusal is shown inline too (repeated labels are a 422).
    page.fill("[data-testid=labels-input]", "same, same")
    expect(error).to_be_hidden()
    page.click("[data-testid=classify-button]")
    expect(error).to_contain_text("422")
    expect_classification_cleared(page)
    assert_stayed_local(network)


@pytest.mark.slow
def test_long_text_truncation_strip_and_special_tokens(
    server: LiveServer, offline_page: tuple[Any, NetworkLog]
) -> None:
    from playwright.sync_api import expect

    page, network = offline_page
    with server.client() as client:
        models = client.get("/models").json()["models"]
        model = first_of(models, "classification")["name"]
        attention = client.post("/attention", json={"inputs": LONG_TEXT, "model": model}).json()
        tokenized = client.post("/tokenize", json={"inputs": LONG_TEXT, "model": model}).json()
    tokens, special = attention["tokens"], attention["special"]
    total = len(tokenized["tokens"][0])
    assert not tokenized["truncated"][0] and total > len(tokens), "LONG_TEXT must be cut"

    open_viewer(page, server, models)
    page.fill("[data-testid=text-input]", LONG_TEXT)
    page.click("[data-testid=attention-button]")
    expect(page.locator(HEATMAP_ROWS)).to_have_count(len(tokens))
    notice = page.locator("[data-testid=attention-truncated]")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text(f"first {len(tokens)} tokens of {total}")
    expect(notice).to_contain_text("ENCODER_MAX_ATTENTION_TOKENS")

    # The whole strip is in view: no chip hidden behind a scroll or clipped by its box.
    chips = page.locator(STRIP_CHIPS)
    expect(chips).to_have_count(len(tokens))
    hidden = page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=cls-token]')].filter((chip) => {
            const box = chip.getBoundingClientRect();
            const hit = document.elementFromPoint(box.x + box.width / 2, box.y + box.height - 2);
            return !chip.contains(hit);
        }).length"""
    )
    assert hidden == 0, f"{hidden} of the strip's {len(tokens)} tokens are not fully shown"

    # The colour legend names its scale.
    legend = page.locator("[data-testid=legend-scale]")
    expect(legend).to_contain_text("√")
    page.select_option("[data-testid=scale-select]", "linear")
    expect(legend).to_contain_text("linear")

    # Hiding the special tokens drops their rows, columns and chips; showing them brings them back.
    ordinary = [token for token, is_special in zip(tokens, special, strict=True) if not is_special]
    assert len(ordinary) < len(tokens)
    page.check("[data-testid=hide-special]")
    rows = page.locator(HEATMAP_ROWS)
    expect(rows).to_have_count(len(ordinary))
    expect(rows.first.locator("[data-testid=heatmap-cell]")).to_have_count(len(ordinary))
    assert page.locator(f"{STRIP_CHIPS} .chip-token").all_inner_texts() == ordinary
    assert page.locator("#heatmap .row-label").all_inner_texts() == ordinary
    page.uncheck("[data-testid=hide-special]")
    expect(rows).to_have_count(len(tokens))
    expect(chips).to_have_count(len(tokens))

    # A text within the limit: the notice goes.
    page.fill("[data-testid=text-input]", SENTENCE)
    expect(notice).to_be_hidden()
    page.click("[data-testid=attention-button]")
    expect(rows).not_to_have_count(0)
    expect(notice).to_be_hidden()
    expect(page.locator("[data-testid=error]")).to_be_hidden()
    assert_stayed_local(network)


@pytest.mark.slow
def test_attention_controls_fit_one_row_at_1280_px(
    server: LiveServer, offline_page: tuple[Any, NetworkLog]
) -> None:
    from playwright.sync_api import expect

    page, network = offline_page
    page.set_viewport_size({"width": 1280, "height": 800})
    with server.client() as client:
        models = client.get("/models").json()["models"]
    open_viewer(page, server, models)
    page.click("[data-testid=attention-button]")
    expect(page.locator(STRIP_CHIPS).first).to_be_visible()
    hide = page.locator("label:has([data-testid=hide-special])")
    expect(hide).to_have_text(re.compile(r"^\s*Hide \[CLS\]/\[SEP\]\s*$"))
    # One line of text, and on the same row as the other controls (not wrapped below them).
    assert hide.evaluate("node => node.getBoundingClientRect().height") < 1.5 * 19
    rows = page.locator(".view-controls > *").evaluate_all(
        "nodes => nodes.map(node => { const box = node.getBoundingClientRect();"
        " return Math.round(box.top + box.height / 2); })"
    )
    assert len(rows) == 5 and max(rows) - min(rows) <= 2, rows
    assert_stayed_local(network)


@pytest.mark.slow
def test_explain_colours_words_for_a_chosen_label_and_method(
    server: LiveServer, offline_page: tuple[Any, NetworkLog]
) -> None:
    from playwright.sync_api import expect

    page, network = offline_page
    page.set_viewport_size({"width": 380, "height": 900})  # a phone's width
    with server.client() as client:
        models = client.get("/models").json()["models"]
    classifier = first_of(models, "classification")
    open_viewer(page, server, models)
    targets = page.locator("[data-testid=explain-target] option")
    expect(targets).to_have_count(len(classifier["labels"]) + 1)  # "top label" first
    page.click("[data-testid=explain-button]")
    words = page.locator("[data-testid=explain-word]")
    expect(words.first).to_be_visible()
    # Every word of the pre-filled text, in order, coloured with its score.
    shown = [words.nth(i).inner_text() for i in range(words.count())]
    assert "".join(shown) == SENTENCE.replace(" ", "")
    assert all(words.nth(i).get_attribute("style") for i in range(words.count()))
    # Readable on every chip: white text on the dark ones (the strongest words), dark text on
    # the light ones; WCAG AA's 4.5:1 at least.
    chips = words.evaluate_all(
        "nodes => nodes.map(node => [Math.abs(Number(node.dataset.score)),"
        " getComputedStyle(node).color, getComputedStyle(node).backgroundColor])"
    )
    assert all(contrast(text, background) >= 4.5 for _, text, background in chips), chips
    strongest = max(chips, key=lambda chip: chip[0])
    assert strongest[1] == "rgb(255, 255, 255)", chips
    expect(page.locator("[data-testid=explain-legend]")).to_be_visible()
    summary = page.locator("[data-testid=explain-summary]")
    expect(summary).to_contain_text("Score of")
    expect(summary).to_contain_text("occlusion")
    # The other label, by Shapley values: its own target and method in the summary.
    other = classifier["labels"][0]
    page.select_option("[data-testid=explain-target]", other)
    page.select_option("[data-testid=explain-method]", "shap")
    expect(words).to_have_count(0)  # a changed choice clears the old answer
    page.click("[data-testid=explain-button]")
    expect(summary).to_contain_text(f"Score of {other}")
    expect(summary).to_contain_text("Shapley values from 256 samples")
    assert page.evaluate("document.documentElement.scrollWidth") <= 380 + 1  # fits the width
    # An error reads as a sentence.
    page.fill("[data-testid=text-input]", "word " * 200)
    page.click("[data-testid=explain-button]")
    error = page.locator("[data-testid=error]")
    expect(error).to_be_visible()
    message = error.inner_text()
    assert message.startswith("Could not explain the text: ") and message.endswith(".")
    assert not re.search(r"\b4\d\d\b", message), message
    assert_stayed_local(network)
