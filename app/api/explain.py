"""POST /explain: how much each word of a text moved a label's score (occlusion, shap)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, field_validator
from starlette.responses import Response

from app.api.bodies import StrictJSONRoute
from app.api.handling import engine, json_response, resolve_model, server_state, unless_disconnected
from app.api.schemas import (
    ERRORS,
    EXAMPLE_CLASSIFIER,
    EXAMPLE_REVIEW,
    Usage,
    _Request,
    check_input_chars,
    check_labels,
    check_template,
    request_limits,
)
from app.config import available_cores
from app.engine.contract import DEFAULT_HYPOTHESIS_TEMPLATE, ExplainMethod, ExplainOptions
from app.engine.errors import Overloaded

router = APIRouter(route_class=StrictJSONRoute)

# The `reason` label of encoder_rejected_total for an explanation refused by the cap.
BUSY_REASON = "explanations_busy"


@contextmanager
def explanation_slot(request: Request, model: str) -> Iterator[None]:
    """Hold one of this process's ENCODER_MAX_CONCURRENT_EXPLANATIONS slots while an
    explanation runs; none free: Overloaded (429) at once. Admission in the batcher
    prices the explanations let through; the cap bounds how many this process tokenizes,
    perturbs and fits at once, and so their share of the cores the event loop needs."""
    state = server_state(request)
    limit = state.settings.max_concurrent_explanations or available_cores()
    running: int = getattr(request.app.state, "explanations_running", 0)
    if running >= limit:
        state.metrics.rejected.labels(model, BUSY_REASON).inc()
        raise Overloaded(
            f"{running} explanations are running, the most this server process takes at "
            f"once (ENCODER_MAX_CONCURRENT_EXPLANATIONS={limit}); retry later",
            retry_after_s=1,
        )
    request.app.state.explanations_running = running + 1
    try:
        yield
    finally:
        request.app.state.explanations_running -= 1


class ExplainRequest(_Request):
    inputs: str = Field(
        description="One text (explanations are per input).", examples=[EXAMPLE_REVIEW]
    )
    model: str | None = Field(
        None,
        description="Model name; defaults to the default classification model, or with "
        "candidate_labels to the default embedding model.",
        examples=[EXAMPLE_CLASSIFIER],
    )
    method: ExplainMethod = Field(
        "occlusion",
        description="occlusion: the target score's drop when one word is removed; shap: "
        "sampled Shapley values over words (Kernel SHAP).",
    )
    target: str | None = Field(
        None,
        description="The label to explain; default: the text's top label.",
        examples=["positive"],
    )
    samples: int = Field(
        256, ge=1, description="shap: word subsets scored (ENCODER_MAX_EXPLAIN_SAMPLES)."
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="shap: the seed of the draw.")
    truncate: bool = Field(True, description="Cut the text to the model's max length (else 422).")
    candidate_labels: Annotated[list[str], Field(fail_fast=True)] | None = Field(
        None,
        description="Zero-shot: explain one of these labels with an embedding model.",
        examples=[None],
    )
    hypothesis_template: str = Field(
        DEFAULT_HYPOTHESIS_TEMPLATE,
        description="Zero-shot: each label is embedded as this template with its one {} "
        "replaced by the label.",
    )

    _check_labels = field_validator("candidate_labels", mode="wrap")(check_labels)
    _check_template = field_validator("hypothesis_template")(check_template)

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_text(cls, value: object) -> object:
        if isinstance(value, list):
            raise ValueError("must be one string: explanations are computed per input")
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must hold at least one word")
            check_input_chars(0, value)
        return value

    @field_validator("samples")
    @classmethod
    def _samples_within_limit(cls, value: int) -> int:
        limit = request_limits().max_explain_samples
        if value > limit:
            raise ValueError(f"is {value}; the limit is {limit} (ENCODER_MAX_EXPLAIN_SAMPLES)")
        return value


class WordScoreOut(BaseModel):
    text: str
    start: int = Field(description="Character offset of the word in the input.")
    stop: int
    score: float = Field(description="How much the word raised the target score.")


class ExplainResponse(BaseModel):
    model: str
    method: str
    target: str
    labels: list[str]
    score: float = Field(description="The target score of the whole text.")
    empty_score: float | None = Field(description="The target score with no words (shap).")
    words: list[WordScoreOut]
    truncated: bool
    parameters: dict[str, int | None]
    usage: Usage


@router.post("/explain", response_model=ExplainResponse, responses=ERRORS, tags=["inference"])
async def explain(body: ExplainRequest, request: Request) -> Response:
    """Per word, how much it moved the target label's score; perturbations run at low
    priority, so explanations never delay /classify and /encode traffic."""
    labels = body.candidate_labels
    model = resolve_model(request, body.model, "classification" if labels is None else "embedding")
    options = ExplainOptions(
        method=body.method,
        target=body.target,
        samples=body.samples,
        seed=body.seed,
        truncate=body.truncate,
        max_words=server_state(request).settings.max_explain_words,
    )
    with explanation_slot(request, model.name):
        work = engine(request).explain(
            model.name, body.inputs, options, labels, body.hypothesis_template
        )
        result = await unless_disconnected(request, work)
    return json_response(
        {
            "model": model.name,
            "method": result.method,
            "target": result.target,
            "labels": result.labels,
            "score": result.score,
            "empty_score": result.empty_score,
            "words": [
                {"text": w.text, "start": w.start, "stop": w.stop, "score": w.score}
                for w in result.words
            ],
            "truncated": result.truncated,
            "parameters": {
                "samples": result.samples,
                "seed": result.seed,
                "evaluations": result.evaluations,
                "max_words": options.max_words,
            },
            "usage": {"tokens": result.tokens},
        }
    )
