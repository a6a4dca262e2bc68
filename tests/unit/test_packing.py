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
from app.engine.models.tokenization import TokenizedText
from app.engine.passes.packing import Span, pack_rows, packed_inputs, packed_passes, pool_spans


def tokenized(length: int, first_id: int = 100) -> TokenizedText:
    ids = np.arange(first_id, first_id + length, dtype=np.int64)
    return TokenizedText(ids, np.zeros_like(ids), truncated=False)


@given(st.lists(st.integers(1, 256), min_size=1, max_size=64), st.integers(1, 128))
def test_every_input_lands_in_exactly_one_row_within_its_capacity(
    lengths: list[int], row_tokens: int
) -> None:
    rows = pack_rows(lengths, row_tokens)
    assert sorted(index for row in rows for index in row) == list(range(len(lengths)))
    for row in rows:
        tokens = sum(lengths[index] for index in row)
        assert tokens <= row_tokens or len(row) == 1  # only a long input overfills, alone


def test_short_inputs_share_rows_and_a_long_one_takes_a_row_alone() -> None:
    assert pack_rows([30, 30, 30, 30], 64) == [[0, 1], [2, 3]]
    # Longest first, each into the first row with room.
    assert pack_rows([10, 80, 20, 40], 64) == [[1], [3, 2], [0]]


@given(
    st.lists(st.integers(1, 256), min_size=1, max_size=64),
    st.integers(1, 16),
)
def test_passes_hold_every_row_once_and_keep_wide_rows_apart(
    lengths: list[int], rows_per_pass: int
) -> None:
    passes = packed_passes(lengths, rows_per_pass, 64)
    assert [row for rows in passes for row in rows] == pack_rows(lengths, 64)
    for rows in passes:
        assert 1 <= len(rows) <= rows_per_pass
        wide = {lengths[row[0]] > 64 for row in rows}
        assert len(wide) == 1  # a pass is as wide as its widest row


def test_rows_are_shared_evenly_between_passes() -> None:
    lengths = [60] * 10  # ten rows of one input each
    assert [len(rows) for rows in packed_passes(lengths, 8, 64)] == [5, 5]
    lengths = [100, 90, *[60] * 9]  # two wide rows, nine ordinary ones
    assert [len(rows) for rows in packed_passes(lengths, 8, 64)] == [2, 5, 4]


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


def fused_graph(
    path: Path,
    *,
    outputs: tuple[str, ...] = ("last_hidden_state",),
    causal: bool = False,
    unfused_layer: bool = False,
) -> Path:
    """Node wiring only (no weights): enough for the rewrite, not for running."""
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask32"], to=TensorProto.INT32),
        helper.make_node(
            "EmbedLayerNormalization",
            ["ids", "types", "w", "p", "t", "gamma", "beta", "mask32"],
            ["embedded", "mask_index"],
            domain="com.microsoft",
        ),
    ]
    nodes += [
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
    last = "layer1"
    if unfused_layer:  # a layer ONNX Runtime's optimizer did not fuse builds its own mask
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["layer1", "mask_float"], ["layer2"]),
        ]
        last = "layer2"
    nodes.append(helper.make_node("Identity", [last], ["last_hidden_state"]))
    nodes += [helper.make_node("Identity", [last], [name]) for name in outputs[1:]]
    graph = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", "t", 4]) for name in outputs],
    )
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
        ("pooling or a head in the graph would mix a row's inputs", {"outputs": ("logits",)}),
        (
            "a second output would be read as if each row were one input",
            {"outputs": ("last_hidden_state", "pooler_output")},
        ),
        ("a causal mask cannot be replaced by a segment mask", {"causal": True}),
        ("an unfused layer would let a row's inputs see each other", {"unfused_layer": True}),
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
