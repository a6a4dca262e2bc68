"""A student's shape: some of a teacher's encoder layers, their weights kept, and optionally
narrower feed-forward blocks (each kept block's strongest neurons, their weights kept).

Shared by `compress` (which makes students) and `rebuild` (which remakes them from a delta):
both must cut the teacher the same way, or a rebuilt student would not be the trained one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

# Where the encoder's blocks live: BERT, RoBERTa, MiniLM, XLM-R (`encoder.layer`), DistilBERT
# (`transformer.layer`), behind a task model's body attribute or not.
_BODIES = ("bert", "roberta", "xlm_roberta", "distilbert", "electra", "deberta", "")
_STACKS = ("encoder.layer", "transformer.layer")
# A block's feed-forward: the widening linear, the narrowing linear, the config's name for
# the width between them (BERT family; DistilBERT).
_FEED_FORWARDS = (
    ("intermediate.dense", "output.dense", "intermediate_size"),
    ("ffn.lin1", "ffn.lin2", "hidden_dim"),
)
WIDTH_NAMES = tuple(width for _, _, width in _FEED_FORWARDS)  # in a config.json


def encoder_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """(the module holding the stack, the stack's attribute name, the stack of blocks)."""
    for body in _BODIES:
        root = getattr(model, body, None) if body else model
        if root is None:
            continue
        for stack in _STACKS:
            parent_name, attribute = stack.split(".")
            parent = getattr(root, parent_name, None)
            layers = getattr(parent, attribute, None)
            if isinstance(layers, torch.nn.ModuleList):
                return parent, attribute, layers  # type: ignore[return-value]
    raise ValueError(
        f"{type(model).__name__}: no encoder layer stack found (encoder.layer or "
        "transformer.layer): layer dropping supports BERT-family encoders"
    )


def parse_keep_layers(spec: str | None, count: int) -> list[int]:
    """`0,2,4` into [0, 2, 4], checked against the teacher's `count` layers; None or empty:
    every other layer, ending with the last (1, 3, 5 of 6): the head was trained on the last
    layer's output (measured on `sentiment`, before any training: SST-2 dev 0.751 keeping
    1,3,5, 0.781 with 0,3,5, chance (0.497) with 0,2,4)."""
    if not spec or not spec.strip():
        return list(range(count - 1, -1, -2))[::-1]
    try:
        keep = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--keep-layers: comma-separated layer numbers, got {spec!r}") from None
    if not keep:
        raise ValueError(f"--keep-layers: no layer named in {spec!r}")
    if any(not 0 <= index < count for index in keep):
        raise ValueError(f"--keep-layers: the teacher has layers 0-{count - 1}, got {spec!r}")
    if sorted(set(keep)) != keep:
        raise ValueError(f"--keep-layers: distinct layers in increasing order, got {spec!r}")
    if len(keep) == count:
        raise ValueError(f"--keep-layers: keeps all {count} layers; nothing to compress")
    return keep


def drop_layers(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """`model` with only the blocks `keep` (in place, in that order), its config saying so."""
    parent, attribute, layers = encoder_layers(model)
    kept = torch.nn.ModuleList([layers[index] for index in keep])
    for position, layer in enumerate(kept):
        # Newer transformers number each attention block for its cache; renumber them.
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                setattr(module, "layer_idx", position)  # noqa: B010 (nn.Module's typing)
    setattr(parent, attribute, kept)
    config: Any = model.config
    config.num_hidden_layers = len(keep)
    if hasattr(config, "n_layers"):  # DistilBERT's name for it
        config.n_layers = len(keep)
    return model


@dataclass(frozen=True)
class StudentShape:
    """What a student keeps of its teacher: these encoder layers and, where its feed-forward
    blocks are narrower, these neurons of each kept block (None: all of them)."""

    keep_layers: list[int]
    neurons: list[list[int]] | None = None

    def cut(self, teacher: torch.nn.Module) -> torch.nn.Module:
        """`teacher` (in place) cut to this shape."""
        student = drop_layers(teacher, self.keep_layers)
        return student if self.neurons is None else narrow_feed_forward(student, self.neurons)


class _FeedForward(NamedTuple):
    widening: str  # the widening linear's name in its layer
    narrowing: str  # the narrowing one's
    width_name: str  # the config's name for the width between them
    into: torch.nn.Linear
    out_of: torch.nn.Linear


def _feed_forward(layer: torch.nn.Module) -> _FeedForward:
    for widening, narrowing, width in _FEED_FORWARDS:
        try:
            into, out_of = layer.get_submodule(widening), layer.get_submodule(narrowing)
        except AttributeError:
            continue
        if isinstance(into, torch.nn.Linear) and isinstance(out_of, torch.nn.Linear):
            return _FeedForward(widening, narrowing, width, into, out_of)
    raise ValueError(
        f"{type(layer).__name__}: no feed-forward found (intermediate.dense and output.dense, "
        "or ffn.lin1 and ffn.lin2): narrowing supports BERT-family encoders"
    )


def strongest_neurons(model: torch.nn.Module, width: int) -> list[list[int]]:
    """For each block, the `width` feed-forward neurons whose weights in and out are largest
    (the product of the two norms), in their order: magnitude pruning, which needs no data.
    Distillation then trains the narrower blocks back towards the teacher."""
    neurons = []
    for layer in encoder_layers(model)[2]:
        _, _, _, into, out_of = _feed_forward(layer)
        if not 1 <= width < into.out_features:
            raise ValueError(
                f"--intermediate-size: between 1 and {into.out_features - 1} (the teacher's "
                f"feed-forward has {into.out_features} neurons), got {width}"
            )
        strength = into.weight.detach().norm(dim=1) * out_of.weight.detach().norm(dim=0)
        neurons.append(sorted(torch.topk(strength, width).indices.tolist()))
    return neurons


def narrow_feed_forward(model: torch.nn.Module, neurons: list[list[int]]) -> torch.nn.Module:
    """`model` with each block's feed-forward cut to its `neurons` (one list per block, all
    of one width; each kept neuron's weights exactly as they were), its config saying so."""
    layers = encoder_layers(model)[2]
    widths = {len(kept) for kept in neurons}
    if len(neurons) != len(layers) or len(widths) != 1:
        raise ValueError(
            f"feed-forward neurons: one list per block ({len(layers)}), all of one width; got "
            f"{len(neurons)} of widths {sorted(widths)}"
        )
    for layer, kept in zip(layers, neurons, strict=True):
        widening, narrowing, width_name, into, out_of = _feed_forward(layer)
        if (
            not kept
            or sorted(set(kept)) != kept
            or not 0 <= kept[0] <= kept[-1] < into.out_features
        ):
            raise ValueError(
                f"feed-forward neurons: distinct, increasing, below {into.out_features}; got {kept}"
            )
        index = torch.tensor(kept)
        narrower_in = _linear(into.weight[index], None if into.bias is None else into.bias[index])
        narrower_out = _linear(out_of.weight[:, index], out_of.bias)
        for name, replacement in ((widening, narrower_in), (narrowing, narrower_out)):
            owner, _, attribute = name.rpartition(".")
            setattr(layer.get_submodule(owner), attribute, replacement)
    setattr(model.config, width_name, widths.pop())
    return model


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear
