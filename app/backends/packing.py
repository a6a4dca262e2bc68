"""Rewrites a fused BERT-family graph so several short inputs can share one row.

A padded batch spends a forward pass on pad tokens: on the default model and
the 2-core machine, passes of 8 length-sorted neighbours from a queue of 16–32
single-text requests were still 20 % padding. A packed batch lays inputs end to
end in rows (`app.engine.passes.packing`) and needs two more graph inputs:

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

_EMBED = "EmbedLayerNormalization"
_ATTENTION = "Attention"
# EmbedLayerNormalization inputs: ids, segment ids, 5 weights, mask, positions.
_POSITION_IDS_SLOT = 8
# Attention inputs: input, weights, bias, mask_index.
_MASK_INDEX_SLOT = 3


def packed_graph(path: Path) -> bytes | None:
    """The graph at `path` rewritten to take packed rows, or None where it cannot be."""
    model = onnx.load(str(path))
    if not _packable(model.graph):
        return None
    graph = model.graph
    (embed,) = [node for node in graph.node if node.op_type == _EMBED]
    while len(embed.input) < _POSITION_IDS_SLOT:
        embed.input.append("")  # absent optional inputs are named ""
    embed.input.append(POSITION_IDS)
    for node in graph.node:
        if node.op_type == _ATTENTION:
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


def _packable(graph: onnx.GraphProto) -> bool:
    """Whether the segment mask would reach every place where tokens meet, and nothing
    else would read the packed row as one input."""
    if [output.name for output in graph.output] != ["last_hidden_state"]:
        return False  # pooling or a head inside the graph would mix the inputs of a row
    nodes = list(graph.node)
    embeds = [index for index, node in enumerate(nodes) if node.op_type == _EMBED]
    attentions = [node for node in nodes if node.op_type == _ATTENTION]
    if len(embeds) != 1 or not attentions:
        return False
    embed = nodes[embeds[0]]
    if len(embed.output) < 2 or any(embed.input[_POSITION_IDS_SLOT:]):
        return False
    mask_index = embed.output[1]
    for node in attentions:
        if len(node.input) <= _MASK_INDEX_SLOT or node.input[_MASK_INDEX_SLOT] != mask_index:
            return False
        if any(attribute.name == "unidirectional" and attribute.i for attribute in node.attribute):
            return False
    if any(node.op_type != _ATTENTION and mask_index in node.input for node in nodes):
        return False
    # A layer left unfused would take its mask from attention_mask itself and let tokens
    # of a row attend across inputs: the mask may reach only the embedding (maybe cast).
    return _readers("attention_mask", nodes) <= set(embeds)


def _readers(name: str, nodes: list[onnx.NodeProto]) -> set[int]:
    """Indices of the nodes reading `name`, looking through Casts."""
    readers: set[int] = set()
    for index, node in enumerate(nodes):
        if name in node.input:
            if node.op_type == "Cast":
                readers |= _readers(node.output[0], nodes)
            else:
                readers.add(index)
    return readers
