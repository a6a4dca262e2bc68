"""The viewer's rerank view in Chromium, on a tiny cross-encoder served beside minilm."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import MODELS_DIR, LiveServer, start_server
from tests.e2e.conftest import NetworkLog, assert_stayed_local

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from tests.tiny_models import export_tiny_reranker

    root = tmp_path_factory.mktemp("viewer-rerank")
    _, repo = export_tiny_reranker(root, MODELS_DIR / "minilm")
    live = start_server(root, {"ENCODER_MODELS_DIR": str(repo)})
    yield live
    live.stop()


def test_the_rerank_view_shows_documents_best_first_as_bars(
    rerank_server: LiveServer, offline_page: tuple[Any, NetworkLog]
) -> None:
    from playwright.sync_api import expect

    page, network = offline_page
    page.goto(f"{rerank_server.url}/")
    expect(page.locator("[data-testid=model-select] option")).to_have_count(2)
    expect(page.locator("#rerank-card")).to_be_visible()
    documents = page.locator("[data-testid=rerank-documents]").input_value().splitlines()
    query = page.locator("[data-testid=text-input]").input_value()
    page.click("[data-testid=rerank-button]")
    bars = page.locator("[data-testid=rerank-bar]")
    expect(bars).to_have_count(len(documents))
    expect(page.locator("#rerank-model")).to_contain_text("tinyrank")

    with rerank_server.client() as client:
        answer = client.post("/v1/rerank", json={"query": query, "documents": documents}).json()
    shown = [
        (int(bars.nth(i).get_attribute("data-index") or -1), bars.nth(i).inner_text())
        for i in range(len(documents))
    ]
    assert [index for index, _ in shown] == [r["index"] for r in answer["results"]]
    for (index, text), result in zip(shown, answer["results"], strict=True):
        assert documents[index] in text
        assert f"{result['relevance_score']:.3f}" in text
    # Editing the documents clears the scores that no longer match them.
    page.fill("[data-testid=rerank-documents]", "one document")
    expect(bars).to_have_count(0)
    expect(page.locator("[data-testid=error]")).to_be_hidden()
    assert_stayed_local(network)
