"""Layer dropping: a student made of some of a teacher's encoder layers, their weights kept.

Shared by `compress` (which makes students) and `rebuild` (which remakes them from a delta):
both must drop the same layers the same way, or a rebuilt student would not be the trained one.
"""

from __future__ import annotations

from typing import Any

import torch

# Where the encoder's blocks live: BERT, RoBERTa, MiniLM, XLM-R (`encoder.layer`), DistilBERT
# (`transformer.layer`), behind a task model's body attribute or not.
_BODIES = ("bert", "roberta", "xlm_roberta", "distilbert", "electra", "deberta", "")
_STACKS = ("encoder.layer", "transformer.layer")


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
