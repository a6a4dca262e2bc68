"""Routes of Hugging Face text-embeddings-inference (TEI), with its field names, defaults and
error shape (`{"error": "...", "error_type": "..."}`, written by app/api/errors.py).

TEI serves one model; here each route takes the default model of its task. Hugging Face's
inference clients send options in a `parameters` object (the Inference API's shape): the
options a route knows count there as at the top level.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from starlette.responses import Response

from app import __version__
from app.api.bodies import StrictJSONRoute
from app.api.errors import RequestRejected
from app.api.handling import (
    engine,
    json_response,
    resolve_model,
    server_state,
    unless_disconnected,
)
from app.api.schemas import (
    EXAMPLE_REVIEW,
    EXAMPLE_TEXT,
    PROMPT_DESCRIPTION,
    PROMPT_NAME_DESCRIPTION,
    TEI_ERRORS,
    TruncationDirection,
    as_list,
    check_input_chars,
    check_input_count,
    check_prompt,
    check_texts,
    check_token_ids,
    few_unknown_fields,
)
from app.engine.contract import ClassifyOptions, ModelDescription, TextInput, TextOptions
from app.engine.errors import InputTooLong, InvalidInput

router = APIRouter(tags=["tei"], route_class=StrictJSONRoute)

# TEI names dtypes as torch does; int8 has no such name and is reported as is.
MODEL_DTYPES = {"fp32": "float32", "fp16": "float16"}

TokenId = Annotated[StrictInt, Field(ge=0)]
IdList = Annotated[list[TokenId], Field(fail_fast=True)]
PREDICT_SHAPE = (
    "must be a string or a list whose items are strings or lists of one or two strings "
    "(a sentence pair: [text, text_pair])"
)


def _no_empty_batch(field: str, value: Any) -> None:
    """TEI answers an empty batch with 400 and `error_type` empty (not a 422)."""
    if isinstance(value, list) and not value:
        raise RequestRejected(400, "empty", f"{field} must not be an empty list")


def _tei_texts(value: Any, handler: ValidatorFunctionWrapHandler) -> str | list[str]:
    _no_empty_batch("inputs", value)
    return check_texts(value, handler)


class _TeiRequest(BaseModel):
    # Every field TEI defines on these routes is honoured, so anything else is a mistake
    # (a typo must not answer 200 with an unchanged vector).
    model_config = ConfigDict(extra="forbid")

    truncate: bool | None = Field(
        None,
        description="Cut inputs to the model's max length; TEI's default (null, false) "
        "refuses an over-long input with 413.",
    )
    truncation_direction: TruncationDirection = "right"

    @model_validator(mode="before")
    @classmethod
    def _parameters(cls, data: Any) -> Any:
        """Options in `parameters` (Hugging Face's clients put them there) count as if sent
        at the top level (which wins); one this route does not know is refused."""
        if not isinstance(data, dict) or "parameters" not in data:
            return few_unknown_fields(cls, data)
        data = dict(data)
        parameters = data.pop("parameters")
        if parameters is None:
            return few_unknown_fields(cls, data)
        if not isinstance(parameters, dict):
            raise ValueError("parameters must be an object of this route's options")
        unknown = [key for key in parameters if key not in cls.model_fields]
        if unknown:
            shown = ", ".join(repr(str(key)[:64]) for key in unknown[:5])
            options = ", ".join(key for key in cls.model_fields if key != "inputs")
            raise ValueError(
                f"parameters holds {shown}, not an option of this route (its options: {options})"
            )
        return few_unknown_fields(cls, {**parameters, **data})


class TeiEmbedAllRequest(_TeiRequest):
    inputs: str | list[str] = Field(
        description="A text or a non-empty list of texts.", examples=[EXAMPLE_TEXT]
    )
    prompt_name: str | None = Field(None, description=PROMPT_NAME_DESCRIPTION, examples=[None])

    _check_inputs = field_validator("inputs", mode="wrap")(_tei_texts)

    def text_options(self) -> TextOptions:
        return TextOptions(self.prompt_name, None, self.truncation_direction)


class TeiEmbedRequest(TeiEmbedAllRequest):
    normalize: bool = True
    dimensions: StrictInt | None = Field(
        None, ge=1, description="Keep the first N dimensions.", examples=[8]
    )
    prompt: str | None = Field(
        None, description=PROMPT_DESCRIPTION + " Not TEI's.", examples=[None]
    )

    _check_prompt = field_validator("prompt")(check_prompt)

    def text_options(self) -> TextOptions:
        return TextOptions(self.prompt_name, self.prompt, self.truncation_direction)


class TeiPredictRequest(_TeiRequest):
    inputs: str | list[str | list[str]] = Field(
        description="A text, or a list of inputs, each a text or a sentence pair "
        '[text, text_pair] (a list of one text is that text). ["a", "b"] is two inputs; '
        'the pair is [["a", "b"]].',
        examples=[EXAMPLE_REVIEW],
    )
    raw_scores: bool = False
    # Hugging Face's InferenceClient.text_classification sends these in `parameters`.
    top_k: StrictInt | None = Field(None, ge=1, description="Keep the K best labels.")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None,
        description="softmax (the default), sigmoid (each label on its own) or none (raw "
        "scores, as raw_scores).",
    )

    @field_validator("inputs", mode="wrap")
    @classmethod
    def _check_inputs(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """The count before any item; each item a non-empty text or pair of texts."""
        _no_empty_batch("inputs", value)
        if isinstance(value, list):
            check_input_count(len(value))
            for index, item in enumerate(value):
                texts = item if isinstance(item, list) else [item]
                if not 1 <= len(texts) <= 2 or not all(isinstance(t, str) for t in texts):
                    raise ValueError(
                        f"item {index} must be a string or a list of one or two strings"
                    )
                if not all(texts):
                    raise ValueError(f"item {index} holds an empty string")
                for text in texts:
                    check_input_chars(index, text)
        elif value == "":
            raise ValueError("must not be an empty string")
        elif isinstance(value, str):
            check_input_chars(0, value)
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(PREDICT_SHAPE) from None

    def texts(self) -> list[TextInput]:
        """Each input as the engine takes it: a text, or a (text, text_pair) tuple."""
        items = [self.inputs] if isinstance(self.inputs, str) else self.inputs
        return [
            item if isinstance(item, str) else item[0] if len(item) == 1 else (item[0], item[1])
            for item in items
        ]

    def options(self, truncate: bool) -> ClassifyOptions:
        """The engine's options; `truncate` is the request's, else ENCODER_AUTO_TRUNCATE."""
        function = self.function_to_apply
        return ClassifyOptions(
            truncate=truncate,
            top_k=self.top_k,
            raw_scores=self.raw_scores or function == "none",
            multi_label=function == "sigmoid",
            truncation_direction=self.truncation_direction,
        )


class TeiDecodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: IdList | Annotated[list[IdList], Field(fail_fast=True)] = Field(
        description="Token ids (as POST /tokenize gives them), or a list of such lists.",
        examples=[[101, 1996, 4937, 7719, 2006, 1996, 13523, 1012, 102]],
    )
    skip_special_tokens: bool = True

    @field_validator("ids", mode="wrap")
    @classmethod
    def _check_ids(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        _no_empty_batch("ids", value)
        if isinstance(value, list):
            check_token_ids(value)  # the counts first: no work per id before they pass
            if isinstance(value[0], list):
                for index, ids in enumerate(value):
                    _no_empty_batch(f"ids[{index}]", ids)
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                "must be a list of token ids or a list of such lists (ids are integers "
                "from 0; true and false are not)"
            ) from None

    def id_lists(self) -> list[list[int]]:
        """One list of ids per text to decode."""
        if isinstance(self.ids[0], int):
            return [cast(list[int], self.ids)]
        return cast(list[list[int]], self.ids)


class TeiLabelScore(BaseModel):
    label: str
    score: float


class TeiInfo(BaseModel):
    """TEI's `Info`: the fields its clients read, and the models this server serves."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[str, Any]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    served_models: list[str]
    default_models: dict[str, str] = Field(
        description="The default model of each task that has one (ENCODER_DEFAULT_MODELS, "
        'else the model marked "default" in its model.json).'
    )


def served_model(request: Request) -> ModelDescription:
    """The model TEI's model-agnostic routes describe: the default embedding model, else
    the first."""
    models = engine(request).models()
    model = next((m for m in models if m.task == "embedding"), models[0])
    request.state.model = model.name  # the `model` label of this request's metrics
    return model


@contextlib.contextmanager
def _tokenizer_errors() -> Iterator[None]:
    """What the tokenizer refuses (ids outside its vocabulary, pairs it cannot lay out) is
    TEI's `tokenizer` error, 422."""
    try:
        yield
    except InputTooLong:
        raise  # TEI's 413 `validation`, as on every other route
    except InvalidInput as error:
        raise RequestRejected(422, "tokenizer", str(error)) from None


def truncation(given: bool | None, request: Request) -> bool:
    """The request's `truncate`, else ENCODER_AUTO_TRUNCATE (TEI's --auto-truncate)."""
    if given is not None:
        return given
    return server_state(request).settings.auto_truncate


@router.post("/embed", response_model=list[list[float]], responses=TEI_ERRORS)
async def embed(body: TeiEmbedRequest, request: Request) -> Response:
    """A bare list of vectors from the default embedding model."""
    texts = as_list(body.inputs)
    model = resolve_model(request, None, "embedding")
    work = engine(request).embed(
        model.name,
        texts,
        normalize=body.normalize,
        truncate=truncation(body.truncate, request),
        dimensions=body.dimensions,
        text=body.text_options(),
    )
    result = await unless_disconnected(request, work)
    return json_response(result.vectors)


@router.post("/embed_all", response_model=list[list[list[float]]], responses=TEI_ERRORS)
async def embed_all(body: TeiEmbedAllRequest, request: Request) -> Response:
    """Per input, the last hidden state of every token (special tokens included), unpooled
    and unnormalized, from the default embedding model."""
    model = resolve_model(request, None, "embedding")
    work = engine(request).embed_tokens(
        model.name,
        as_list(body.inputs),
        truncate=truncation(body.truncate, request),
        text=body.text_options(),
    )
    result = await unless_disconnected(request, work)
    return json_response(result.states)


@router.post(
    "/predict",
    response_model=list[TeiLabelScore] | list[list[TeiLabelScore]],
    responses=TEI_ERRORS,
)
async def predict(body: TeiPredictRequest, request: Request) -> Response:
    """Label scores from the default classification model, highest first: a list for one
    input (a text), else a list of lists. An input may be a sentence pair."""
    model = resolve_model(request, None, "classification")
    with _tokenizer_errors():
        result = await unless_disconnected(
            request,
            engine(request).classify(
                model.name, body.texts(), body.options(truncation(body.truncate, request))
            ),
        )
    answers = [[{"label": s.label, "score": s.score} for s in scores] for scores in result.results]
    return json_response(answers[0] if isinstance(body.inputs, str) else answers)


@router.post("/decode", response_model=list[str], responses=TEI_ERRORS)
async def decode(body: TeiDecodeRequest, request: Request) -> Response:
    """The text of each list of token ids, by the served model's tokenizer (a list of
    texts, one per list of ids)."""
    model = served_model(request)
    with _tokenizer_errors():
        texts = await engine(request).decode(
            model.name, body.id_lists(), skip_special_tokens=body.skip_special_tokens
        )
    return json_response(texts)


@router.get("/info", response_model=TeiInfo, responses=TEI_ERRORS)
async def info(request: Request) -> dict[str, Any]:
    """TEI's description of the served model (the default embedding model, else the first)."""
    model = served_model(request)
    models = engine(request).models()
    if model.task in ("classification", "rerank"):
        labels = dict(enumerate(model.labels))
        kind = "classifier" if model.task == "classification" else "reranker"
        model_type: dict[str, Any] = {
            kind: {
                "id2label": {str(i): label for i, label in labels.items()},
                "label2id": {label: i for i, label in labels.items()},
            }
        }
    else:
        model_type = {"embedding": {"pooling": model.pooling}}
    return {
        "model_id": model.source,
        "model_sha": None,
        "model_dtype": MODEL_DTYPES.get(model.precision, model.precision),
        "model_type": model_type,
        "max_concurrent_requests": model.max_queue,
        "max_input_length": model.max_length,
        "max_batch_tokens": model.max_batch_tokens,
        "max_batch_requests": model.max_batch_size,
        "max_client_batch_size": server_state(request).settings.max_inputs_per_request,
        "auto_truncate": server_state(request).settings.auto_truncate,
        "tokenization_workers": model.tokenization_workers,
        "version": __version__,
        "served_models": [m.name for m in models],
        "default_models": {m.task: m.name for m in models if m.default},
    }
