"""/docs and /redoc render in a real Chromium with the network cut off: nothing comes from a CDN."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from tests.conftest import LiveServer
from tests.e2e.conftest import NetworkLog, assert_stayed_local, is_local

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, path, summary) of every operation of an OpenAPI document."""
    return [
        (method, path, operation.get("summary", ""))
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def test_docs_pages_reference_only_this_server(tmp_path: Path) -> None:
    # No lifespan: the pages need no models.
    client = TestClient(create_app(Settings(models_dir=tmp_path)))
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200, page
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "http" not in policy
        assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
        assert assets and all(asset.startswith("/static/docs/") for asset in assets), assets
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
        assert not re.search(r"https?://", response.text), f"{page} references a remote URL"
    # Swagger UI's online validator badge would call validator.swagger.io from a non-local host.
    assert '"validatorUrl": null' in client.get("/docs").text
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc", "/docs/oauth2-redirect"} & set(paths)


def test_docs_pages_stay_open_when_an_api_key_is_set(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(models_dir=tmp_path, api_key=["secret"])))
    for path in ("/docs", "/redoc", "/openapi.json", "/static/docs/redoc.standalone.js"):
        assert client.get(path).status_code == 200, path
    assert client.get("/models").status_code == 401


@pytest.mark.slow
def test_swagger_ui_renders_offline(
    server: LiveServer, offline_page: tuple[Any, NetworkLog]
) -> None:
    from playwright.sync_api import expect

    page, log = offline_page
    with server.client() as client:
        expected = operations(client.get("/openapi.json").json())
    page.goto(f"{server.url}/docs")
    blocks = page.locator(".opblock")
    expect(blocks).to_have_count(len(expected))
    # Each operation is a block classed `opblock-<method>`, its path in `data-path`.
    shown = {
        tuple(pair)
        for pair in blocks.evaluate_all(
            "nodes => nodes.map(node => [node.className.match(/opblock-(get|post|put|delete|"
            "patch|head|options|trace)/)[1], node.querySelector('[data-path]').dataset.path])"
        )
    }
    assert shown == {(method, path) for method, path, _ in expected}
    expect(page.locator(".info .title")).to_contain_text("encoder-serve")
    # The local assets really styled it: the CSS lays an operation out as a flex row.
    summary = page.locator(".opblock-summary").first
    assert summary.evaluate("node => getComputedStyle(node).display") == "flex"
    assert_stayed_local(log)


@pytest.mark.slow
def test_redoc_renders_offline(server: LiveServer, offline_page: tuple[Any, NetworkLog]) -> None:
    from playwright.sync_api import expect

    page, log = offline_page
    with server.client() as client:
        expected = operations(client.get("/openapi.json").json())
    page.goto(f"{server.url}/redoc")
    headings = page.locator("[data-section-id^='operation/'] h2")
    expect(headings).to_have_count(len(expected))
    assert sorted(headings.all_inner_texts()) == sorted(summary for _, _, summary in expected)
    # The side menu is drawn (its footer once held Redocly's logo from a CDN), and the page
    # tried no other host at all, not even a request the policy would refuse.
    expect(page.get_by_text("API docs by Redocly")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert [url for url in log.requested if not is_local(url)] == []
    assert_stayed_local(log)


def test_redoc_script_names_no_remote_image(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(models_dir=tmp_path)))
    script = client.get("/static/docs/redoc.standalone.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "cdn.redoc.ly" not in script.text and "Redocly" in script.text


def resolved(node: Any, openapi: dict[str, Any]) -> Any:
    """`node` with every `$ref` of the document replaced by what it points at."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/components/schemas/")
            return resolved(openapi["components"]["schemas"][name], openapi)
        return {key: resolved(value, openapi) for key, value in node.items()}
    if isinstance(node, list):
        return [resolved(item, openapi) for item in node]
    return node


RERANK_PATHS = ("/rerank", "/v1/rerank")


@pytest.mark.slow
def test_every_try_it_out_example_answers_2xx(
    server: LiveServer, offline_page: tuple[Any, NetworkLog]
) -> None:
    """What "Try it out" sends for each operation, built by Swagger UI's own sample
    generator from the schemas' examples and defaults, answers with a 2xx."""
    page, log = offline_page
    page.goto(f"{server.url}/docs")
    page.locator(".opblock").first.wait_for()
    with server.client() as client:
        openapi = client.get("/openapi.json").json()
        tasks = {model["task"] for model in client.get("/models").json()["models"]}
        answers = {}
        for method, path, _ in operations(openapi):
            body = openapi["paths"][path][method].get("requestBody")
            assert not openapi["paths"][path][method].get("parameters"), (method, path)
            if body is None:
                answers[f"{method} {path}"] = client.request(method, path).status_code
                continue
            schema = resolved(body["content"]["application/json"]["schema"], openapi)
            sample = page.evaluate(
                "schema => ui.fn.getSampleSchema(schema, 'application/json', {})", schema
            )
            response = client.request(
                method, path, content=sample, headers={"content-type": "application/json"}
            )
            if path in RERANK_PATHS and "rerank" not in tasks:
                # No rerank model among the defaults: the example is well formed, and the
                # answer says no model serves the task (TEI's 424, the contract's 404).
                assert response.status_code in (404, 424), (path, sample, response.text)
                assert "no loaded model serves the task 'rerank'" in response.text
                continue
            answers[f"{method} {path} {sample}"] = response.status_code
            assert 200 <= response.status_code < 300, (method, path, sample, response.text)
    assert all(200 <= status < 300 for status in answers.values()), answers
    assert any(key.startswith("post /encode") for key in answers)
    assert_stayed_local(log)
