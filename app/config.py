"""Every setting of the server, read once from `ENCODER_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_names(value: object) -> object:
    """Accept `a,b` from the environment as well as a real list."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


class Settings(BaseSettings):
    """Server settings; each field `x` is also the environment variable `ENCODER_X`."""

    model_config = SettingsConfigDict(env_prefix="ENCODER_", extra="ignore")

    # Network
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)

    # Model repository
    models_dir: Path = Path("models")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Subset of models to serve; empty serves all."
    )
    default_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Preferred default model per task, in order."
    )

    # Inference engine
    backend: Literal["onnx", "torch"] = "onnx"
    precision: Literal["auto", "fp32", "int8", "fp16"] = Field(
        "auto", description="Graph precision; auto takes each manifest's default_precision."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(
        0, ge=0, description="Threads per forward pass; 0 uses every available core."
    )
    warmup: bool = True

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

    # Request limits
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_inputs_per_request: int = Field(256, ge=1)
    max_input_chars: int = Field(100_000, ge=1, description="Characters of one input.")
    max_candidate_labels: int = Field(32, ge=1, description="Zero-shot labels per request.")
    max_attention_tokens: int = Field(128, ge=2, description="Tokens of an /attention input.")

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
        "models", "default_models", "api_key", "cors_origins", mode="before"
    )(_split_names)

    @model_validator(mode="after")
    def _resolve_threads(self) -> Settings:
        if self.intra_op_threads == 0:
            self.intra_op_threads = len(os.sched_getaffinity(0))
        return self
