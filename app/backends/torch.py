"""PyTorch backend (`ENCODER_BACKEND=torch`): the exported weights run in eager PyTorch.

Imported only when chosen, so the default (ONNX Runtime) server never loads torch.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

log = logging.getLogger(__name__)


def model_input_names(model: torch.nn.Module) -> list[str]:
    """The standard encoder inputs this model's forward accepts (DistilBERT has no type ids)."""
    accepted = inspect.signature(model.forward).parameters
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]


class TorchBackend:
    """One transformers model; returns the same named outputs as the ONNX graphs.

    The exporter wraps the model it is exporting in one, as the parity reference.
    """

    name = "torch"
    packed = False  # rows are right-padded inputs, one each

    def __init__(self, model: torch.nn.Module, *, attention: bool = False) -> None:
        """`attention`: return every layer's attention probabilities (an eager model)."""
        self._model = model.eval()
        self.device = next(model.parameters()).device.type
        self._attention = attention
        self._inputs = model_input_names(model)

    @classmethod
    def load(
        cls,
        weights: Path,
        *,
        classifier: bool,
        threads: int,
        device: str = "auto",
        half: bool = False,
        attention: bool = False,
    ) -> TorchBackend:
        """The exported weights of a model directory (`ENCODER_BACKEND=torch`)."""
        torch.set_num_threads(threads)
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if device == "cuda" and not use_cuda:
            raise RuntimeError("device 'cuda' requested but torch sees no GPU")
        # Attention probabilities exist only in the eager implementation.
        implementation = "eager" if attention else "sdpa"
        auto: Any = (
            AutoModelForSequenceClassification if classifier and not attention else AutoModel
        )
        model = auto.from_pretrained(weights, attn_implementation=implementation)
        if half and use_cuda:
            model = model.half()
        backend = cls(model.to("cuda" if use_cuda else "cpu"), attention=attention)
        log.info("loaded %s in PyTorch on %s (%d threads)", weights, backend.device, threads)
        return backend

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: torch.from_numpy(inputs[name]).to(self.device) for name in self._inputs}
        with torch.inference_mode():
            if self._attention:
                outputs = self._model(**feeds, output_attentions=True)
                return {"attentions": _numpy(torch.stack(outputs.attentions, dim=1))}
            outputs = self._model(**feeds)
            if hasattr(outputs, "logits"):
                return {"logits": _numpy(outputs.logits)}
            return {"last_hidden_state": _numpy(outputs.last_hidden_state)}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    array: np.ndarray = tensor.float().cpu().numpy()
    return array
