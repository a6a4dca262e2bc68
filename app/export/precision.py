"""Reduced-precision graphs (int8, fp16) derived from the fp32 graph, gated on agreement with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import onnx

from app.engine.manifest import Pooling
from app.engine.models.tokenization import TextTokenizer
from app.export.parity import graph_pipeline, parity_texts

Precision = Literal["fp32", "int8", "fp16"]
PRECISION_FILES: dict[str, str] = {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
# int8 may lose a little (dynamic quantization of the weights); fp16 should lose nothing.
MIN_MEAN_COSINE = {"int8": 0.99, "fp16": 0.9999}


class PrecisionError(RuntimeError):
    """A reduced-precision graph strays too far from the fp32 graph."""


def quantize_int8(fp32: Path, target: Path) -> None:
    """Dynamic int8 quantization: per-channel weights, MatMuls only.

    Measured on all-MiniLM-L6-v2: per-tensor weights gave a mean cosine to fp32 of
    0.954; per-channel on every op 0.990; per-channel MatMuls only 0.993 (embedding
    lookups stay fp32, which is where most of the loss came from).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        # The fused graph holds contrib ops whose output types the quantizer cannot infer.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def convert_fp16(fp32: Path, target: Path) -> None:
    """Half-precision weights and activations, fp32 at the inputs and outputs (for GPUs)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fp32)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))


def build_precision(
    precision: Precision,
    work: Path,
    fp32: Path,
    tokenizer: TextTokenizer,
    pooling: Pooling,
) -> dict[str, Any]:
    """Write the graph for `precision` into `work`; its agreement with fp32, or PrecisionError."""
    target = work / PRECISION_FILES[precision]
    (quantize_int8 if precision == "int8" else convert_fp16)(fp32, target)
    texts = parity_texts()
    reference = graph_pipeline(fp32, tokenizer, pooling).embed(texts)
    candidate = graph_pipeline(target, tokenizer, pooling).embed(texts)
    cosines = (reference * candidate).sum(axis=1)
    report = {
        "texts": len(cosines),
        "mean_cosine_to_fp32": float(cosines.mean()),
        "min_cosine_to_fp32": float(cosines.min()),
    }
    if report["mean_cosine_to_fp32"] < MIN_MEAN_COSINE[precision]:
        target.unlink()
        raise PrecisionError(
            f"{precision} graph: mean cosine to fp32 {report['mean_cosine_to_fp32']:.4f} < "
            f"{MIN_MEAN_COSINE[precision]}; not written"
        )
    return report
