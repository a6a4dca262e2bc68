"""The model manifest (`models/<name>/model.json`): what a model is and how to serve it.

The manifest is a contract, checked when it is read: `ModelManifest.read` raises
`ManifestError`, whose message names the file and every invalid field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.engine.contract import Pooling, Task

ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]
MANIFEST_FILE = "model.json"
# Parity figures are measured at each build and differ in their last digits between machines
# and library versions: they are kept beside the manifest, in a file git ignores, so that
# `make models` leaves the committed model.json files as they are. `read` merges them back.
PARITY_FILE = "parity.json"
# Tasks whose graph answers logits (a sequence-classification model), not token states: a
# classifier, and a cross-encoder (`rerank`: one logit over a (query, document) pair).
LOGIT_TASKS = ("classification", "rerank")

# Keys the format no longer has but older manifests carry: accepted and dropped.
# `normalize` was written by the exporter and never honoured: the request decides.
LEGACY_KEYS = ("normalize",)

# Strict: a JSON string "256", a float 256.5 or `true` is not a count.
Count = Annotated[int, Field(strict=True, ge=1)]
Milliseconds = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class ManifestError(ValueError):
    """A model.json that is missing, is not JSON, or breaks the manifest format."""


# A model name is one directory of the repository, a URL and a metric label: letters, digits
# and `._-`, starting with a letter or digit (so never `.`, `..`, a path or empty).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def model_name_error(name: str) -> str | None:
    """Why `name` cannot name a model of the repository; None when it can. The one rule of
    the tools (export, finetune, train-head, rebuild) and of the manifests served."""
    if MODEL_NAME.fullmatch(name):
        return None
    return (
        f"invalid model name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit (a name, not a path)"
    )


class BatchingOverrides(BaseModel):
    """Per-model overrides of the server's batch limits (None: the server's setting)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: Count | None = None
    max_batch_tokens: Count | None = None
    max_wait_ms: Milliseconds | None = None
    max_queue: Count | None = None
    max_queue_tokens: Count | None = None
    instances: Count | None = None  # model instances (overrides ENCODER_INSTANCES)


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("manifest", message)


def outside_error(path: str) -> str | None:
    """Why `path`, a file a manifest names, is not a path inside the model's directory
    (absolute, `..`, a backslash or a control character); None when it is. Written
    paths only: a symbolic link inside the directory is the operator's own choice."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or "\\" in path:
        return f"{path!r} is outside the model's directory (use a path relative to it)"
    if any(ord(char) < 32 for char in path):
        return f"{path!r} holds a control character"
    return None


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    task: Task
    # The default model of its task: what a request without `model` gets, unless
    # ENCODER_DEFAULT_MODELS says otherwise (app/engine/models/registry.py choose_defaults).
    # Re-exporting or rebuilding a model keeps its marker (`kept_default`).
    default: bool = False
    source: str
    pooling: Pooling
    max_length: Count
    dimensions: Count
    num_layers: Count
    num_heads: Count
    tokenizer: str = "tokenizer.json"
    # Classifiers: "multi_label_classification" scores each label with a sigmoid.
    problem_type: ProblemType | None = None
    labels: list[str] = Field(default_factory=list)
    # Graph file per precision ("fp32", "int8", "fp16"), the attention graph, and the
    # PyTorch weights directory ("torch").
    files: dict[str, str] = Field(default_factory=dict)
    default_precision: str = "fp32"
    parity: dict[str, Any] = Field(default_factory=dict)
    batching: BatchingOverrides = Field(default_factory=BatchingOverrides)
    # A head model: another model of the repository (`base`) runs the encoder, and the
    # small trained head in `head` turns its normalized pooled vector into logits.
    base: str | None = None
    head: str | None = None
    evaluation: dict[str, Any] = Field(default_factory=dict)  # e.g. dev accuracy, command
    # sentence-transformers prompts by name ({"query": "query: "}), from the source's
    # config_sentence_transformers.json: what a request's `prompt_name` may name.
    prompts: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(key in data for key in LEGACY_KEYS):
            data = {key: value for key, value in data.items() if key not in LEGACY_KEYS}
        return data

    @field_validator("name", "base")
    @classmethod
    def _model_name(cls, name: str | None) -> str | None:
        error = None if name is None else model_name_error(name)
        if error is not None:
            raise _invalid(error)
        return name

    # Field validators run in declaration order: `info.data` holds the fields above
    # that validated, so a check is skipped when the field it depends on is invalid.
    @field_validator("labels")
    @classmethod
    def _classifier_labels(cls, labels: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("task") == "rerank" and len(labels) != 1:
            raise _invalid("a rerank model (a cross-encoder) has exactly one label: its score")
        if info.data.get("task") == "classification":
            # A regression "classifier" has one output, so one label.
            least = 1 if info.data.get("problem_type") == "regression" else 2
            if len(labels) < least:
                raise _invalid(f"a classification model needs at least {least} labels")
            if len(set(labels)) != len(labels):
                repeated = sorted({label for label in labels if labels.count(label) > 1})
                raise _invalid(f"labels must be distinct; repeated: {', '.join(repeated)}")
        return labels

    @field_validator("tokenizer", "head")
    @classmethod
    def _file_inside(cls, path: str | None) -> str | None:
        error = None if path is None else outside_error(path)
        if error is not None:
            raise _invalid(error)
        return path

    @field_validator("files")
    @classmethod
    def _files_inside(cls, files: dict[str, str]) -> dict[str, str]:
        for key, path in files.items():
            error = outside_error(path)
            if error is not None:
                raise _invalid(f"{key}: {error}")
        return files

    @field_validator("default_precision")
    @classmethod
    def _precision_has_file(cls, precision: str, info: ValidationInfo) -> str:
        files = info.data.get("files")
        if files and precision not in files:
            raise _invalid(f"'{precision}' is not a key of files ({', '.join(sorted(files))})")
        return precision

    @field_validator("head")
    @classmethod
    def _head_needs_base(cls, head: str | None, info: ValidationInfo) -> str | None:
        if head is not None and info.data.get("base") is None and "base" in info.data:
            raise _invalid("a head needs a base model (set base)")
        return head

    @classmethod
    def read(cls, directory: Path) -> ModelManifest:
        """Read and validate `directory/model.json`; `ManifestError` names what is wrong."""
        path = directory / MANIFEST_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError as error:
            raise ManifestError(f"{path} does not exist") from error
        except OSError as error:
            raise ManifestError(f"{path}: cannot be read: {error.strerror or error}") from error
        try:
            data = json.loads(raw)
        except ValueError as error:  # JSONDecodeError, or bytes that are not text
            raise ManifestError(f"{path}: not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: not a JSON object (got a JSON {_json_type(data)})")
        if "parity" not in data:  # a manifest written with its figures beside it
            data["parity"] = _read_parity(directory / PARITY_FILE)
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ManifestError(f"{path}: {describe_errors(error)}") from error

    def write(self, directory: Path) -> None:
        """`model.json`, and the parity figures in `parity.json` beside it (PARITY_FILE)."""
        data = self.model_dump(mode="json", exclude={"parity"})
        data["batching"] = self.batching.model_dump(mode="json", exclude_none=True)  # overrides
        if not self.prompts:
            del data["prompts"]  # most models have none: their manifests stay as they were
        (directory / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")
        parity = directory / PARITY_FILE
        if self.parity:
            parity.write_text(json.dumps(self.parity, indent=2) + "\n")
        else:
            parity.unlink(missing_ok=True)


def _read_parity(path: Path) -> Any:
    """The parity figures beside a manifest; none when the file is absent or unreadable
    (they are a record of the build, never needed to serve)."""
    try:
        figures = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return figures if isinstance(figures, dict) else {}


def kept_default(directory: Path) -> bool:
    """The `default` marker of the manifest a rebuild or re-export is about to replace
    (False when there is none, or it cannot be read): the operator's choice of default
    model survives `make models` and `encoder-serve rebuild`."""
    try:
        data = json.loads((directory / MANIFEST_FILE).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("default") is True


def describe_errors(error: ValidationError) -> str:
    """One `field.path: reason` clause per error, joined by "; "."""
    clauses = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"])
        clauses.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(clauses)


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
