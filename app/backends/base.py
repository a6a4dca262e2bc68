"""The `Backend` protocol every inference engine implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Runs batches of rows through one model graph."""

    name: str  # "onnx" or "torch"
    device: str  # "cpu" or "cuda"
    # The graph also takes `position_ids` and `segment_mask`, so one row may hold several
    # inputs (app/backends/packing.py); otherwise each row is one right-padded input.
    packed: bool

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. `inputs` has input_ids, attention_mask, token_type_ids
        (int64, rows x tokens), and where `packed` also position_ids (int32, rows x
        tokens) and segment_mask (int32, rows x tokens x tokens); the backend feeds those
        its graph takes and returns the graph's outputs by name (e.g. `last_hidden_state`)."""
        ...
