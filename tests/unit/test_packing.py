"""Packed rows: which inputs share a row, the tensors that keep them apart, pooling per input,
and which graphs the backend rewrites for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from app.backends.packing import POSITION_IDS, SEGMENT_MASK, packed_graph
from app.engine.packing import Span, pack_rows, packed_inputs, pool_spans
from app.engine.tokenization import TokenizedText


def tokenized(length: int, first_id: int = 100) -> TokenizedText:
    ids = np.arange(first_id, first_id + length, dtype=np.int64)
    return TokenizedText(ids, np.zeros_like(ids), truncated=False)


@given(st.lists(st.integers(1, 256), min_size=1, max_size=64), st.integers(1, 128))
def test_every_input_lands_in_exactly_one_row_within_its_capacity(
    lengths: list[int], row_tokens: int
) -> None:
    rows = pack_rows(lengths, row_tokens)
    assert sorted(index for row in rows for index in row) == list(range(len(lengths)))
    capacity = max(row_tokens, *lengths)
    assert all(sum(lengths[index] for index in row) <= capacity for row in rows)


def test_short_inputs_share_rows_and_a_long_one_widens_them() -> None:
    assert pack_rows([30, 30, 30, 30], 64) == [[0, 1], [2, 3]]
    # Longest first; the 80-token input widens every row to 80, so 60 + 20 share one.
    assert pack_rows([10, 80, 20, 60], 64) == [[1], [3, 2], [0]]


def test_packed_inputs_keep_each_input_to_itself() -> None:
    items = [tokenized(3, 100), tokenized(2, 200), tokenized(4, 300)]
    inputs, spans = packed_inputs(items, [[2, 0], [1]])
    assert spans == [Span(0, 0, 4), Span(0, 4, 3), Span(1, 0, 2)]
    assert inputs["input_ids"].tolist() == [
        [300, 301, 302, 303, 100, 101, 102],
        [200, 201, 0, 0, 0, 0, 0],
    ]
    assert inputs["attention_mask"].tolist() == [[1] * 7, [1, 1, 0, 0, 0, 0, 0]]
    # Positions restart at each input, as if it ran alone.
    assert inputs[POSITION_IDS].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 0, 0, 0, 0]]
    mask = inputs[SEGMENT_MASK]
    assert mask.shape == (2, 7, 7)
    assert mask[0, :4, :4].all() and mask[0, 4:, 4:].all()
    assert not mask[0, :4, 4:].any() and not mask[0, 4:, :4].any()  # no looking across
    assert mask[1, :2, :2].all() and mask[1].sum() == 4  # padding sees and is seen by nothing
    assert inputs[POSITION_IDS].dtype == np.int32 and mask.dtype == np.int32


def test_pooling_per_span() -> None:
    hidden = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    spans = [Span(0, 0, 2), Span(0, 2, 3), Span(1, 0, 1)]
    np.testing.assert_allclose(
        pool_spans(hidden, spans, "mean"),
        [hidden[0, 0:2].mean(0), hidden[0, 2:5].mean(0), hidden[1, 0]],
    )
    np.testing.assert_array_equal(
        pool_spans(hidden, spans, "cls"), [hidden[0, 0], hidden[0, 2], hidden[1, 0]]
    )


# -- the graph rewrite, on graphs with the shape of ONNX Runtime's fused BERT --


def fused_graph(path: Path, *, output: str = "last_hidden_state", causal: bool = False) -> Path:
    """Node wiring only (no weights): enough for the rewrite, not for running."""
    embed = helper.make_node(
        "EmbedLayerNormalization",
        ["ids", "types", "w", "p", "t", "gamma", "beta", "mask"],
        ["embedded", "mask_index"],
        domain="com.microsoft",
    )
    attentions = [
        helper.make_node(
            "Attention",
            [source, f"qkv{layer}", f"bias{layer}", "mask_index"],
            [f"layer{layer}"],
            domain="com.microsoft",
            num_heads=2,
            **({"unidirectional": 1} if causal else {}),
        )
        for layer, source in enumerate(["embedded", "layer0"])
    ]
    graph = helper.make_graph(
        [embed, *attentions],
        "fused",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["b", "t"])],
        [helper.make_tensor_value_info("layer1", TensorProto.FLOAT, ["b", "t", 4])],
    )
    graph.output[0].name = output
    graph.node[-1].output[0] = output
    onnx.save(helper.make_model(graph), path)
    return path


def test_fused_graph_gets_positions_and_a_segment_mask(tmp_path: Path) -> None:
    rewritten = packed_graph(fused_graph(tmp_path / "model.onnx"))
    assert rewritten is not None
    graph = onnx.load_from_string(rewritten).graph
    inputs = {value.name: value for value in graph.input}
    assert {POSITION_IDS, SEGMENT_MASK} <= inputs.keys()
    assert len(inputs[SEGMENT_MASK].type.tensor_type.shape.dim) == 3
    embed = next(node for node in graph.node if node.op_type == "EmbedLayerNormalization")
    assert embed.input[8] == POSITION_IDS
    attentions = [node for node in graph.node if node.op_type == "Attention"]
    assert [node.input[3] for node in attentions] == [SEGMENT_MASK, SEGMENT_MASK]


@pytest.mark.parametrize(
    ("why", "options"),
    [
        ("pooling or a head in the graph would mix a row's inputs", {"output": "logits"}),
        ("a causal mask cannot be replaced by a segment mask", {"causal": True}),
    ],
)
def test_graphs_that_cannot_take_packed_rows_are_left_alone(
    tmp_path: Path, why: str, options: dict[str, object]
) -> None:
    assert packed_graph(fused_graph(tmp_path / "model.onnx", **options)) is None, why  # type: ignore[arg-type]


def test_an_unfused_graph_is_left_alone(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["last_hidden_state"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
    assert packed_graph(tmp_path / "plain.onnx") is None
