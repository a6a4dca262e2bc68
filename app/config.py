"""Every setting of the server, read once from `ENCODER_*` environment variables."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.container_limits import limits

# The tasks a model serves (app.engine.contract.Task; config imports nothing of the engine).
TASKS = ("embedding", "classification", "rerank")
# ENCODER_MODEL_ID entries: `org/name`, optionally `@revision` (a branch, tag or commit).
HUB_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def split_model_id(model_id: str, revision: str | None = None) -> tuple[str, str | None]:
    """`org/name@rev` → (`org/name`, `rev`); without `@`, the `revision` setting."""
    repo_id, at, own = model_id.partition("@")
    return repo_id, own if at else revision


def _split_names(value: object) -> object:
    """Accept `a,b` from the environment as well as a real list."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _aliases(value: object) -> object:
    """`ENCODER_MODEL_ALIASES`: `name=model,name=model`; each entry once, both sides given."""
    if not isinstance(value, str):
        return value
    table: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        name, equals, model = (side.strip() for side in entry.partition("="))
        if not equals or not name or not model:
            raise ValueError(
                f"ENCODER_MODEL_ALIASES: {entry!r} is not NAME=MODEL "
                "(for example text-embedding-3-small=minilm)"
            )
        if name in table:
            raise ValueError(f"ENCODER_MODEL_ALIASES names {name!r} twice")
        table[name] = model
    return table


def available_cores() -> int:
    """Cores this process may use: its CPU affinity capped by its cgroup's CPU quota (a
    container's `--cpus` or a pod's `limits.cpu`; app/container_limits.py)."""
    return limits().cores


def _api_keys(value: object) -> object:
    """`ENCODER_API_KEY`: comma-separated keys; empty or unset means none.

    A value that is set but holds no key (`" , "`) would silently leave the API open, and
    a key with whitespace or a control character inside could never match a header: both
    are refused. Messages never repeat a key.
    """
    if isinstance(value, str):
        if value == "":
            return []
        keys: list[object] = [key.strip() for key in value.split(",") if key.strip()]
        if not keys:
            raise ValueError(
                "ENCODER_API_KEY is set but holds no key (only commas and spaces); "
                "unset it or leave it empty to serve without keys"
            )
    elif isinstance(value, list | tuple):
        keys = list(value)
    else:
        return value
    for number, key in enumerate(keys, 1):
        text = key.get_secret_value() if isinstance(key, SecretStr) else key
        if not isinstance(text, str):
            continue  # pydantic refuses it with its own message
        if not text:
            raise ValueError(f"ENCODER_API_KEY: key {number} of {len(keys)} is empty")
        if any(char.isspace() or unicodedata.category(char) == "Cc" for char in text):
            raise ValueError(
                f"ENCODER_API_KEY: key {number} of {len(keys)} contains whitespace or a "
                "control character, so no 'Authorization: Bearer' header could match it"
            )
    return keys


class Settings(BaseSettings):
    """Server settings; each field `x` is also the environment variable `ENCODER_X`."""

    # Errors name the variable and the problem but never echo its value (API keys are secret).
    model_config = SettingsConfigDict(
        env_prefix="ENCODER_", extra="ignore", hide_input_in_errors=True
    )

    # Network
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)

    # Model repository
    models_dir: Path = Path("models")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Subset of models to serve; empty serves all."
    )
    default_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The default model per task, as TASK=MODEL,... (e.g. "
        "classification=sentiment,embedding=minilm); a bare MODEL is the default of its own "
        'task. Wins over the models\' "default" markers.',
    )
    # Hugging Face Hub models (app/hub_models.py): given, these are the models served, each
    # prepared once in model_cache_dir (the repository's own ONNX export, else exported).
    model_id: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hub ids to serve (ORG/NAME or ORG/NAME@REVISION, comma-separated), "
        "instead of the models of models_dir.",
    )
    revision: str | None = Field(
        None, description="Hub branch, tag or commit of model_id (default: main)."
    )
    pooling: Literal["mean", "cls"] | None = Field(
        None, description="Pooling of the model_id models (default: the repository's)."
    )
    # Beside the Hugging Face cache, not in the model repository: a Hub model prepared here
    # never shows up in `git status` or in `models/`.
    model_cache_dir: Path = Field(
        Path("~/.cache/encoder-serve"),
        description="Where model_id models are prepared once and reused.",
    )
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="OpenAI model names (POST /v1/embeddings) mapped to served models, as "
        "NAME=MODEL,...; other names not served map to the default embedding model.",
    )

    # Inference engine
    # "benchmark-fixed" answers fixed vectors without running a model: benchmarks only.
    # "benchmark-sim" does too, after waiting as long as an accelerator's pass would.
    backend: Literal["onnx", "torch", "benchmark-fixed", "benchmark-sim"] = "onnx"
    # The simulated accelerator (ENCODER_BACKEND=benchmark-sim): a pass waits
    # sim_pass_us + sim_token_us x padded tokens, holding no core. Calibrated from the H200
    # report (loadtest/results/2026-11-28-h200-gpu.json, ONNX Runtime CUDA fp32, MiniLM):
    # - sim_pass_us: a pass of one short text took ~1.07 ms with tokenization (931.8
    #   sequences/s at batch 1; the in-process engine limit's single text p50 1.08 ms in
    #   2026-11-28-h200-server-quick.md), host work ~0.05 ms of it: 1,000 us a pass;
    # - sim_token_us: forward-only, batch 512 ran 54,762 sequences/s, 9.35 ms a pass; 512 of
    #   the benchmark's texts pad to ~48 tokens (24,576 padded tokens), so
    #   (9,350 - 1,000) / 24,576 = 0.34 us per padded token.
    sim_pass_us: float = Field(
        1000.0, ge=0, description="Simulated accelerator: microseconds every pass waits."
    )
    sim_token_us: float = Field(
        0.34, ge=0, description="Simulated accelerator: microseconds a pass waits per padded token."
    )
    precision: Literal["auto", "fp32", "int8", "fp16"] = Field(
        "auto", description="Graph precision; auto takes each manifest's default_precision."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(
        0, ge=0, description="Threads of a model's passes, shared by its instances; 0: all."
    )
    instances: int | Literal["auto"] = Field(
        "auto",
        description="Backend sessions per model running batches side by side (model.json "
        "batching.instances overrides); auto: see app/engine/batching/instances.py.",
    )
    warmup: bool = True
    workers: int | Literal["auto"] = Field(
        "auto",
        description="HTTP worker processes in front of one engine process; 1 keeps one "
        "process; auto: one per 4 cores, at most 8 (app/processes.py).",
    )
    restart_max_delay_s: float = Field(
        30.0,
        gt=0,
        description="With workers: the longest pause before a dead worker or engine process "
        "is restarted (0.5 s, doubled per death in a row soon after a start).",
    )

    # Dynamic batcher
    max_batch_size: int = Field(64, ge=1)
    max_batch_tokens: int = Field(16384, ge=1, description="Padded tokens per forward pass.")
    forward_batch_size: int = Field(
        0, ge=0, description="Most rows per forward pass; 0: 8 on CPU, unsplit on GPU."
    )
    packing: bool = Field(
        True, description="On CPU, lay short inputs end to end in shared rows (fused graphs)."
    )
    max_wait_ms: float = Field(2.0, ge=0)
    max_queue: int = Field(1024, ge=1, description="Inputs waiting per model before 429.")
    max_queue_tokens: int = Field(262144, ge=1, description="Their tokens, before 429.")
    request_timeout_s: float = Field(30.0, gt=0)
    drain_s: float = Field(30.0, ge=0, description="On SIGTERM, time to finish queued work.")
    keep_alive_s: int = Field(
        75, ge=1, description="Idle keep-alive connections close after this (clients' first)."
    )

    # Connections (app/api/connections.py)
    # nginx lets a request carry up to 4 x 8 KiB of headers (large_client_header_buffers):
    # whatever a proxy in front passes is accepted here too (Node allows 16 KiB, gunicorn
    # 8 KiB per field); an API request with a bearer key needs well under 1 KiB.
    max_header_bytes: int = Field(
        32768, ge=1024, description="Request line + headers before 431 (counted as they arrive)."
    )
    # Slowloris: a request must arrive whole within this. The largest accepted body (4 MiB)
    # needs about 1.1 Mbit/s to make it; nginx and Node wait 60 s for headers alone.
    read_timeout_s: float = Field(
        30.0, gt=0, description="Time to receive a whole request from its first byte."
    )
    # 2,000 idle connections must leave room for normal traffic; the soft RLIMIT_NOFILE is
    # raised at start-up to fit this many plus the process's own descriptors.
    max_connections: int = Field(
        4096, ge=1, description="Open connections before new ones are refused with 503."
    )
    # nginx's send_timeout is 60 s between two reads; 30 s matches the read timeout.
    write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A client that reads nothing of its answer for this long is disconnected.",
    )
    # Per process. 512 MiB: five of the largest /embed_all answers the default limits
    # allow (~100 MB of float32 states each), or 2,000 stalled small answers.
    max_unsent_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes held for clients that do not "
        "read, all connections together, before the longest stalled one is disconnected.",
    )

    # Request limits
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_inputs_per_request: int = Field(256, ge=1)
    max_input_chars: int = Field(100_000, ge=1, description="Characters of one input.")
    # TEI's --auto-truncate: its routes refuse an over-long input unless the request sends
    # truncate: true; this makes them cut it instead (our own routes cut by default).
    auto_truncate: bool = Field(
        False,
        description="TEI routes (/embed, /embed_all, /predict) truncate when a request "
        "does not say.",
    )
    max_candidate_labels: int = Field(32, ge=1, description="Zero-shot labels per request.")
    # A label is a class name or a short phrase: 256 characters (~50 words) is far beyond
    # any real one, yet keeps 32 labels within a few KB and, in the default template,
    # within the 256-token max length of the default model for ordinary text.
    max_label_chars: int = Field(
        256, ge=1, description="Characters of one zero-shot candidate label before 422."
    )
    # A template is one sentence with a slot: 1024 characters (~250 tokens of English) is
    # about the default model's whole max length, so a longer one could never leave room
    # for the label. It also bounds the template stored in each label-cache key.
    max_template_chars: int = Field(
        1024,
        ge=2,
        description="Characters of a zero-shot hypothesis_template, or a prompt, before 422.",
    )
    # Per embedding model. At 384 dimensions an entry (the template and label strings plus
    # a 1.5 KB float32 vector) takes ~2 KB, so 32 MiB keeps ~16,000 (template, label)
    # pairs: every label set a real deployment reuses, in memory small next to the model.
    label_cache_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="Bytes of zero-shot label embeddings (vectors and their keys) cached "
        "per embedding model; 0 turns the cache off.",
    )
    # The result cache, one per engine process (app/engine/batching/result_cache.py). An
    # entry of the default model (a 384-float answer of 1.6 KB, a key of ~22 token ids and
    # segment ids, the containers' share) takes ~2.8 KB, so 32 MiB keeps ~12,000 answers:
    # more than the distinct queries or titles a service repeats within minutes, for ~4 %
    # more resident memory than the ~0.9 GiB the default models take (the process grows by
    # about 1.2 x what the cache counts: allocator overhead).
    cache_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="Bytes of model answers (with their keys) the engine process keeps to "
        "answer a repeated input without a pass, all models together; 0 turns it off.",
    )
    max_attention_tokens: int = Field(128, ge=2, description="Tokens of an /attention input.")
    # Reranking scores every document with the query in one forward input each: 1000 is
    # what Cohere's rerank accepts; 20,000 characters (~4,000 words) is far past what any
    # cross-encoder reads (512 tokens at most), whose end truncation would drop anyway.
    max_rerank_documents: int = Field(
        1000, ge=1, description="Documents of one /rerank or /v1/rerank request before 413."
    )
    max_document_chars: int = Field(
        20_000, ge=1, description="Characters of one document to rerank before 413."
    )
    # An explanation costs one forward input per word (occlusion) or per sample (shap):
    # 128 words covers a long review; 2048 samples is ~10-15 s of one core's passes.
    max_explain_words: int = Field(128, ge=1, description="Words of an /explain input before 413.")
    max_explain_samples: int = Field(
        2048, ge=1, description="shap samples of one /explain request before 422."
    )
    # Explanations running at once per server process (a front-end worker with
    # ENCODER_WORKERS > 1); past it, 429 at once. An explanation's perturbations keep a
    # core busy between interactive passes, so more than one per core only queues them.
    max_concurrent_explanations: int = Field(
        0, ge=0, description="/explain requests running at once per process; 0: one per core."
    )

    # Access control
    api_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted bearer keys; empty leaves the API open."
    )
    metrics_require_key: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    access_log: bool = Field(False, description="uvicorn's own access log (doubles the lines).")

    _split_lists = field_validator(
        "models", "default_models", "cors_origins", "model_id", mode="before"
    )(_split_names)
    _check_api_keys = field_validator("api_key", mode="before")(_api_keys)
    _parse_aliases = field_validator("model_aliases", mode="before")(_aliases)

    @field_validator("default_models")
    @classmethod
    def _task_defaults(cls, entries: list[str]) -> list[str]:
        """Each entry MODEL or TASK=MODEL, one entry per task (whether it is served is
        checked once the models are read: app/engine/models/registry.py)."""
        tasks: list[str] = []
        normalized = []
        for entry in entries:
            task, equals, name = (side.strip() for side in entry.rpartition("="))
            if equals and task not in TASKS:
                raise ValueError(
                    f"{entry!r}: the task must be {' or '.join(TASKS)} (as TASK=MODEL)"
                )
            if not name:
                raise ValueError(f"{entry!r} names no model (TASK=MODEL)")
            if task in tasks:
                raise ValueError(f"{task} is given twice")
            tasks += [task] if task else []
            normalized.append(f"{task}={name}" if equals else name)
        return normalized

    @field_validator("model_cache_dir")
    @classmethod
    def _expand_home(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("model_id")
    @classmethod
    def _hub_ids(cls, ids: list[str]) -> list[str]:
        for model_id in ids:
            if not HUB_MODEL_ID.fullmatch(model_id):
                raise ValueError(
                    f"{model_id!r} is not a Hugging Face Hub id (ORG/NAME, or ORG/NAME@REVISION)"
                )
        return ids

    @field_validator("instances", "workers")
    @classmethod
    def _at_least_one(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or auto")
        return value

    @model_validator(mode="after")
    def _resolve_threads(self) -> Settings:
        if self.intra_op_threads == 0:
            self.intra_op_threads = available_cores()
        return self
