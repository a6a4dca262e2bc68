"""Export a Hugging Face encoder to an ONNX model directory, gated on parity with PyTorch."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from app.backends.torch import TorchBackend, model_input_names
from app.engine.manifest import (
    LOGIT_TASKS,
    PARITY_FILE,
    ModelManifest,
    Pooling,
    Task,
    kept_default,
    model_name_error,
)
from app.engine.models.tokenization import TextTokenizer
from app.engine.passes.pipeline import OFFLINE_BATCH, Pipeline
from app.export.messages import say
from app.export.parity import (
    ParityReport,
    compare,
    compare_attention,
    graph_pipeline,
    parity_texts,
)
from app.export.precision import PRECISION_FILES, Precision, build_precision
from app.export.source import loading, read_sentence_transformer_config, resolve_source

MIN_COSINE = 0.9999
MAX_ATTENTION_DIFF = 1e-4
ATTENTION_FILE = "attention.onnx"
TORCH_DIR = "torch"
ATTENTION_OUTPUT = "attentions"
ATTENTION_PARITY_TEXTS = 12  # all 32 padded to the longest would be hundreds of MB of maps
MAX_LOGIT_DIFF = 1e-3
GRAPH_FILE = "model.onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
OPSET = 17


class ParityError(RuntimeError):
    """The exported graph disagrees with PyTorch beyond the gate."""


def progress(step: int, total: int, message: str) -> None:
    say(f"[{step}/{total}] {message}")


# What the graph returns, by task: token states to pool, or a classifier's logits.
OUTPUT_OF_TASK = {
    "embedding": "last_hidden_state",
    "classification": "logits",
    "rerank": "logits",
}


class _KeywordEncoder(torch.nn.Module):
    """Calls the model with keyword arguments: transformers 5.x breaks positional export."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output = output

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.model(**dict(zip(self.input_names, inputs, strict=True)))
        result: torch.Tensor = getattr(outputs, self.output)
        return result


class _AttentionProbabilities(torch.nn.Module):
    """Returns every layer's attention probabilities stacked: (batch, layers, heads, T, T)."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        outputs = self.model(**named, output_attentions=True)
        return torch.stack(outputs.attentions, dim=1)


def _export(
    wrapper: torch.nn.Module,
    path: Path,
    input_names: list[str],
    output: str,
    output_axes: dict[int, str],
) -> None:
    """TorchScript-based export with dynamic batch and token axes; parity is checked after."""
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in input_names)
    axes = {name: {0: "batch", 1: "tokens"} for name in input_names}
    axes[output] = output_axes
    torch.onnx.export(
        wrapper.eval(),
        example,
        str(path),
        input_names=input_names,
        output_names=[output],
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )


def export_graph(model: torch.nn.Module, path: Path, input_names: list[str], output: str) -> None:
    output_axes = {0: "batch", 1: "tokens"} if output == "last_hidden_state" else {0: "batch"}
    _export(_KeywordEncoder(model, input_names, output), path, input_names, output, output_axes)


def export_attention_graph(model: torch.nn.Module, path: Path, input_names: list[str]) -> None:
    """A second graph for attention maps (eager attention); the fast graph stays untouched."""
    wrapper = _AttentionProbabilities(model, input_names)
    output_axes = {0: "batch", 3: "tokens", 4: "tokens"}
    _export(wrapper, path, input_names, ATTENTION_OUTPUT, output_axes)


def check_attention_parity(model: torch.nn.Module, graph: Path, tokenizer: TextTokenizer) -> float:
    """Max abs difference of attention probabilities over the real tokens of a few texts."""
    reference = Pipeline(tokenizer, TorchBackend(model, attention=True), "mean", OFFLINE_BATCH)
    candidate = graph_pipeline(graph, tokenizer, "mean", ort_threads())
    return compare_attention(reference, candidate, parity_texts()[:ATTENTION_PARITY_TEXTS])


def optimize_graph(path: Path, target: Path, config: Any) -> bool:
    """ONNX Runtime's offline transformer fusions for BERT-family graphs; False if unsupported."""
    from onnxruntime.transformers.optimizer import optimize_model

    if config.model_type not in {
        "bert",
        "roberta",
        "xlm-roberta",
        "distilbert",
        "mpnet",
        "electra",
    }:
        return False
    optimized = optimize_model(
        str(path),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
    )
    optimized.save_model_to_file(str(target))
    return True


def check_parity(
    model: torch.nn.Module, graph: Path, tokenizer: TextTokenizer, pooling: Pooling
) -> ParityReport:
    """The parity texts through the pipeline, with PyTorch and with ONNX Runtime."""
    reference = Pipeline(tokenizer, TorchBackend(model), pooling, OFFLINE_BATCH)
    candidate = graph_pipeline(graph, tokenizer, pooling, ort_threads())
    return compare(reference, candidate, parity_texts())


def parity_holds(report: ParityReport, output: str) -> bool:
    # Logits are compared absolutely too: a tiny cosine error on near-zero logits could
    # still flip a close decision.
    within = output != "logits" or report.max_abs_diff <= MAX_LOGIT_DIFF
    return report.min_cosine >= MIN_COSINE and within


def ort_threads() -> int:
    return max(1, torch.get_num_threads())


class UntrainedHeadError(ValueError):
    """A classification export whose head weights the source does not hold."""


def export_model(
    source: str,
    name: str,
    models_dir: Path,
    *,
    task: Task | None = "embedding",
    max_length: int | None = None,
    precisions: Sequence[Precision] = ("fp32",),
    revision: str | None = None,
    allow_untrained_head: bool = False,
) -> ModelManifest:
    """Export SOURCE into `models_dir/name`, replacing it only once parity holds.

    fp32 is always built (it is the reference); `precisions` may add int8 and fp16.
    A classifier whose head the source does not hold (transformers would initialise it
    at random) is refused unless `allow_untrained_head`: its parity would only compare
    the graph with the same random head.
    """
    if (invalid := model_name_error(name)) is not None:
        raise ValueError(invalid)
    extra = [p for p in dict.fromkeys(precisions) if p != "fp32"]
    total = 7 + len(extra)
    progress(1, total, f"resolving {source}")
    directory = resolve_source(source, revision)
    with loading(source):
        st_config = read_sentence_transformer_config(directory)
        config = AutoConfig.from_pretrained(directory)
    task = served_task(config, task)
    output = OUTPUT_OF_TASK[task]
    classifier = task in LOGIT_TASKS
    # Classifiers pool inside the graph (BERT's pooler reads the first token).
    pooling: Pooling = "cls" if classifier or st_config.pooling == "cls" else "mean"
    with loading(source):
        hf_tokenizer = AutoTokenizer.from_pretrained(directory)
    length = (
        max_length
        or st_config.max_length
        or min(int(hf_tokenizer.model_max_length), int(config.max_position_embeddings))
    )

    progress(2, total, f"loading {config.model_type} weights from {directory}")
    auto = AutoModelForSequenceClassification if classifier else AutoModel
    with loading(source):
        model, loaded = auto.from_pretrained(
            directory, attn_implementation="eager", output_loading_info=True
        )
    model.eval()
    untrained = sorted(loaded["missing_keys"])
    if classifier and untrained and not allow_untrained_head:
        raise UntrainedHeadError(
            f"{source} holds no trained classifier: transformers would initialise "
            f"{', '.join(untrained)} at random, so every answer would be noise; export a "
            "model fine-tuned for classification, fine-tune this one (`encoder-serve "
            "finetune`), or pass --allow-untrained-head to export it anyway"
        )
    input_names = model_input_names(model)

    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=models_dir) as scratch:
        work = Path(scratch)
        work.chmod(0o755)  # readable by a server running as another user (the image's)
        for file in TOKENIZER_FILES:
            if (directory / file).is_file():
                shutil.copy2(directory / file, work / file)
        if not (work / "tokenizer.json").is_file():
            hf_tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
        tokenizer = TextTokenizer(work / "tokenizer.json", length)

        progress(3, total, f"exporting ONNX graph (opset {OPSET}, dynamic batch and tokens)")
        raw = work / "raw.onnx"
        export_graph(model, raw, input_names, output)

        progress(4, total, "applying ONNX Runtime transformer optimizations; checking parity")
        parity = check_parity(model, raw, tokenizer, pooling)
        graph, optimized_with = raw, "none"
        say(f"      raw graph  : {parity}")
        fused = work / "fused.onnx"
        if optimize_graph(raw, fused, config):
            fused_parity = check_parity(model, fused, tokenizer, pooling)
            say(f"      fused graph: {fused_parity}")
            if parity_holds(fused_parity, output):
                graph, parity, optimized_with = fused, fused_parity, "onnxruntime.transformers bert"
        if not parity_holds(parity, output):
            raise ParityError(
                f"exported graph disagrees with PyTorch: min cosine {parity.min_cosine:.6f} "
                f"(gate {MIN_COSINE}), max abs diff {parity.max_abs_diff:.2e}; "
                "the model was not written"
            )
        graph.rename(work / GRAPH_FILE)
        for leftover in (raw, fused):
            leftover.unlink(missing_ok=True)

        progress(5, total, "exporting the attention graph (eager attention); checking parity")
        # The encoder body alone: a classifier's attention is its base model's.
        body = model if task == "embedding" else load_encoder_body(directory)
        export_attention_graph(body, work / ATTENTION_FILE, input_names)
        attention_parity = check_attention_parity(body, work / ATTENTION_FILE, tokenizer)
        say(f"      attention  : max abs diff {attention_parity:.2e}")
        if attention_parity > MAX_ATTENTION_DIFF:
            raise ParityError(
                f"attention graph disagrees with PyTorch by {attention_parity:.2e} "
                f"(gate {MAX_ATTENTION_DIFF}); the model was not written"
            )

        manifest = ModelManifest(
            name=name,
            task=task,
            source=source if revision is None else f"{source}@{revision}",
            pooling=pooling,
            max_length=length,
            dimensions=int(config.hidden_size),
            num_layers=int(config.num_hidden_layers),
            num_heads=int(config.num_attention_heads),
            labels=class_labels(config) if classifier else [],
            problem_type=getattr(config, "problem_type", None)
            if task == "classification"
            else None,
            prompts=st_config.prompts,
            files={},
            parity={
                "fp32": {
                    **parity.as_dict(),
                    "compared": output,
                    "reference": f"transformers {config.model_type} (PyTorch, eager attention)",
                    "graph_optimization": optimized_with,
                    "onnxruntime": ort.__version__,
                },
                "attention": {"texts": ATTENTION_PARITY_TEXTS, "max_abs_diff": attention_parity},
            },
        )
        files = {"fp32": GRAPH_FILE, "attention": ATTENTION_FILE, "torch": TORCH_DIR}
        parities: dict[str, Any] = {}
        for step, precision in enumerate(extra, start=6):
            progress(step, total, f"building the {precision} graph; checking it against fp32")
            parities[precision] = build_precision(
                precision, work, work / GRAPH_FILE, tokenizer, pooling
            )
            files[precision] = PRECISION_FILES[precision]
            say(f"      {precision:10} : {parities[precision]}")

        progress(total - 1, total, "saving the PyTorch weights (for ENCODER_BACKEND=torch)")
        model.save_pretrained(work / TORCH_DIR)
        manifest.files = files
        manifest.parity |= parities
        manifest.default = kept_default(models_dir / name)
        manifest.write(work)
        progress(total, total, f"writing {models_dir / name}")
        target = models_dir / name
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
        # TemporaryDirectory's cleanup tolerates the directory having moved away.
        work.mkdir()
    return manifest


def load_encoder_body(directory: Path) -> torch.nn.Module:
    body: torch.nn.Module = AutoModel.from_pretrained(directory, attn_implementation="eager")
    return body.eval()


def is_cross_encoder(config: Any) -> bool:
    """A sequence-classification model with one output that is not a regression head: a
    cross-encoder scoring (query, document) pairs (sentence-transformers' CrossEncoder,
    the MS MARCO rerankers). sentence-transformers marks its own in config.json."""
    architectures = getattr(config, "architectures", None) or []
    sequence = any(str(a).endswith("ForSequenceClassification") for a in architectures)
    marked = isinstance(getattr(config, "sentence_transformers", None), dict)
    one_output = int(getattr(config, "num_labels", 0)) == 1
    regression = getattr(config, "problem_type", None) == "regression"
    return one_output and (marked or (sequence and not regression))


def served_task(config: Any, requested: Task | None) -> Task:
    """The task a source is exported as: a cross-encoder is `rerank` (also when asked for
    `classification`: a softmax over its one output would always be 1); with no task
    asked, a sequence classifier is `classification`, anything else `embedding`."""
    if requested in (None, "classification") and is_cross_encoder(config):
        if requested == "classification":
            say("      a cross-encoder (one output over sentence pairs): exported as rerank")
        return "rerank"
    if requested is not None:
        return requested
    architectures = getattr(config, "architectures", None) or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "classification"
    return "embedding"


def class_labels(config: Any) -> list[str]:
    """Label names in logit order, from the config's id2label."""
    id2label = {int(index): str(label) for index, label in config.id2label.items()}
    return [id2label[index] for index in range(len(id2label))]


def is_built(models_dir: Path, name: str, precisions: Sequence[str] = ("fp32",)) -> bool:
    """A model directory with its manifest, the precisions asked for, every file it lists,
    and its parity figures (a directory built before they moved to parity.json is built
    again once, which records them there)."""
    directory = models_dir / name
    try:
        manifest = ModelManifest.read(directory)
    except ValueError:  # ManifestError: missing, unreadable or invalid
        return False
    files = [*manifest.files.values(), manifest.tokenizer, PARITY_FILE]
    if not all(precision in manifest.files for precision in precisions):
        return False
    return all((directory / f).exists() for f in files)
