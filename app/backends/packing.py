"""Rewrites a fused BERT-family graph so several short inputs can share one row.

A padded batch spends a forward pass on pad tokens: on the default model and
the 2-core machine, passes of 8 length-sorted neighbours from a queue of 16–32
single-text requests were still 20 % padding. A packed batch lays inputs end to
end in rows (`app.engine.packing`) and needs two more graph inputs:

- `position_ids` (rows x tokens): each input's positions restart at 0, fed to the
  fused `EmbedLayerNormalization` (its optional 9th input);
- `segment_mask` (rows x tokens x tokens): 1 where a token may attend to another,
  that is, both belong to the same input. It replaces the mask index that every
  fused `Attention` node took from `EmbedLayerNormalization`.

Everything else, weights included, is unchanged, so a packed pass computes the same
vectors as separate passes (to float rounding; see tests/integration/test_packing.py).
Only graphs fused by ONNX Runtime's BERT optimizer (as `encoder-serve export`
writes them) have these nodes; any other graph is left alone and runs padded.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

POSITION_IDS = "position_ids"
SEGMENT_MASK = "segment_mask"
PACKED_INPUTS = (POSITION_IDS, SEGMENT_MASK)

_EMBED = "EmbedLayerNormalization"
_ATTENTION = "Attention"
_POSITION_IDS_SLOT = (
    8  # EmbedLayerNormalization inputs: ids, segment ids, 5 weights, mask, positions
)
_MASK_INDEX_SLOT = 3  # Attention inputs: input, weights, bias, mask_index


def packed_graph(path: Path) -> bytes | None:
    """The graph at `path` rewritten to take packed rows, or None where it cannot be."""
    model = onnx.load(str(path))
    graph = model.graph
    if "last_hidden_state" not in {output.name for output in graph.output}:
        return None  # pooling or a head inside the graph would mix the inputs of a row
    embeds = [node for node in graph.node if node.op_type == _EMBED]
    attentions = [node for node in graph.node if node.op_type == _ATTENTION]
    if len(embeds) != 1 or not attentions:
        return None
    (embed,) = embeds
    if len(embed.output) < 2 or any(name for name in embed.input[_POSITION_IDS_SLOT:]):
        return None
    mask_index = embed.output[1]
    if any(
        len(node.input) <= _MASK_INDEX_SLOT
        or node.input[_MASK_INDEX_SLOT] != mask_index
        or any(attribute.name == "unidirectional" and attribute.i for attribute in node.attribute)
        for node in attentions
    ):
        return None
    other_readers = [
        node for node in graph.node if node.op_type != _ATTENTION and mask_index in node.input
    ]
    if other_readers:
        return None

    while len(embed.input) < _POSITION_IDS_SLOT:
        embed.input.append("")  # absent optional inputs are named ""
    embed.input.append(POSITION_IDS)
    for node in attentions:
        node.input[_MASK_INDEX_SLOT] = SEGMENT_MASK
    graph.input.extend(
        [
            helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT32, ["rows", "tokens"]),
            helper.make_tensor_value_info(
                SEGMENT_MASK, TensorProto.INT32, ["rows", "tokens", "tokens"]
            ),
        ]
    )
    return bytes(model.SerializeToString())
