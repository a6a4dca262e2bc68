"""Request validation is linear, checks counts first, and refuses what is not Unicode.

No model and no server: the schemas, the body parser and the error writer alone.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from app.api.bodies import NOT_UTF8, lone_surrogate_path, parse_json
from app.api.errors import RequestRejected, error_body
from app.api.openai import OpenAIEmbeddingRequest
from app.api.schemas import (
    DEFAULT_LIMITS,
    AttentionRequest,
    ClassifyRequest,
    EncodeRequest,
    RequestLimits,
    TokenizeRequest,
    limits_for_request,
)
from app.api.tei import TeiDecodeRequest, TeiEmbedRequest
from app.config import Settings
from app.engine.contract import template_problem
from app.engine.errors import PayloadTooLarge
from app.engine.models.classification import fill_template

LOOSE = RequestLimits(
    max_inputs_per_request=10**7,
    max_input_chars=10**7,
    max_candidate_labels=10**7,
    max_label_chars=10**7,
    max_template_chars=10**7,
)


def message(model: type[BaseModel], body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return str(caught.value)


def elapsed(call: Any) -> float:
    started = time.perf_counter()
    with contextlib.suppress(ValidationError, PayloadTooLarge):
        call()
    return time.perf_counter() - started


# -- limits ---------------------------------------------------------------------------


def test_default_limits_are_the_settings_defaults() -> None:
    defaults = Settings.model_fields
    assert DEFAULT_LIMITS.max_candidate_labels == defaults["max_candidate_labels"].default == 32
    assert DEFAULT_LIMITS.max_label_chars == 256
    assert DEFAULT_LIMITS.max_template_chars == 1024
    assert RequestLimits.of(Settings(max_label_chars=7)).max_label_chars == 7


def test_the_label_count_is_checked_before_any_label() -> None:
    labels: list[Any] = [f"label {index}" for index in range(200_000)]
    labels.append(3)  # an item error would be found only by looking at every item
    text = message(ClassifyRequest, {"inputs": "x", "candidate_labels": labels})
    assert "200001 labels; the limit is 32" in text
    body = {"inputs": "x", "candidate_labels": labels}
    assert elapsed(lambda: ClassifyRequest.model_validate(body)) < 0.05


def test_distinct_labels_are_checked_in_linear_time() -> None:
    # `labels.count(label)` per label took minutes for lists this long.
    labels = [f"label {index}" for index in range(100_000)]
    with limits_for_request(LOOSE):
        took = elapsed(
            lambda: ClassifyRequest.model_validate({"inputs": "x", "candidate_labels": labels})
        )
        text = message(ClassifyRequest, {"inputs": "x", "candidate_labels": [*labels, "label 7"]})
    assert took < 1.0
    assert "'label 7' is repeated" in text


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        ([], "must not be empty"),
        (["a", " "], "empty strings (item 1)"),
        (["a", "b", "a", "b"], "'a' and 'b' are repeated"),
        (["a", "x" * 257], "item 1 has 257 characters; the limit is 256"),
        ([f"l{i}" for i in range(33)], "33 labels; the limit is 32"),
        (["a", 3], "candidate_labels.1"),
    ],
)
def test_bad_labels_are_named(labels: list[Any], needle: str) -> None:
    text = message(ClassifyRequest, {"inputs": "x", "candidate_labels": labels})
    assert "candidate_labels" in text and needle in text


def test_labels_may_hold_any_characters_and_a_label_as_long_as_the_limit() -> None:
    labels = ["{0.__class__}", "{:>999999999}", "{}", "x" * 256]
    request = ClassifyRequest.model_validate({"inputs": "x", "candidate_labels": labels})
    assert request.candidate_labels == labels


@pytest.mark.parametrize(
    "template", ["{:>999999999}", "{0.__class__}", "{}{}", "{{}}", "no placeholder", "{} }", "{"]
)
def test_templates_must_be_one_placeholder_and_no_other_brace(template: str) -> None:
    text = message(ClassifyRequest, {"inputs": "x", "hypothesis_template": template})
    assert "hypothesis_template" in text and "exactly one {} placeholder" in text
    assert template_problem(template) is not None


@pytest.mark.parametrize("template", ["{}", "This text is about {}.", "Ein Text über {}: ✓"])
def test_good_templates_are_accepted(template: str) -> None:
    request = ClassifyRequest.model_validate({"inputs": "x", "hypothesis_template": template})
    assert request.hypothesis_template == template
    assert template_problem(template) is None


def test_an_over_long_template_is_refused_before_its_braces_are_read() -> None:
    template = "x" * 1024 + "{}"
    text = message(ClassifyRequest, {"inputs": "x", "hypothesis_template": template})
    assert "hypothesis_template" in text and "1026 characters; the limit is 1024" in text
    ClassifyRequest.model_validate({"inputs": "x", "hypothesis_template": "x" * 1022 + "{}"})


def test_templates_are_filled_by_replacement() -> None:
    assert fill_template("About {}.", "{0.__class__}") == "About {0.__class__}."
    assert fill_template("{}", "{:>999999999}") == "{:>999999999}"


def test_limits_follow_the_request_context() -> None:
    tight = RequestLimits(2, 10, 1, 3, 8)
    with limits_for_request(tight):
        assert "2 labels; the limit is 1" in message(
            ClassifyRequest, {"inputs": "x", "candidate_labels": ["a", "b"]}
        )
        assert "the limit is 3" in message(
            ClassifyRequest, {"inputs": "x", "candidate_labels": ["abcd"]}
        )
        assert "the limit is 8" in message(
            ClassifyRequest, {"inputs": "x", "hypothesis_template": "123456 {}"}
        )
        with pytest.raises(PayloadTooLarge, match="3 inputs in one request; the limit is 2"):
            EncodeRequest.model_validate({"inputs": ["a", "b", "c"]})
        with pytest.raises(PayloadTooLarge, match=r"inputs\[0\] has 11 characters"):
            TokenizeRequest.model_validate({"inputs": "x" * 11})
    ClassifyRequest.model_validate({"inputs": "x", "candidate_labels": ["a", "b"]})


# -- inputs, unknown fields, indices ---------------------------------------------------


@pytest.mark.parametrize("model", [EncodeRequest, TokenizeRequest, TeiEmbedRequest])
def test_too_many_inputs_are_refused_before_each_is_looked_at(model: type[BaseModel]) -> None:
    inputs: list[Any] = [None] * 1_000_000
    with pytest.raises(PayloadTooLarge, match="1000000 inputs in one request; the limit is 256"):
        model.model_validate({"inputs": inputs})
    assert elapsed(lambda: model.model_validate({"inputs": inputs})) < 0.05


def test_many_unknown_fields_are_one_error() -> None:
    body: dict[str, Any] = {"inputs": "x", **{f"field{i}": 1 for i in range(300_000)}}
    with pytest.raises(ValidationError) as caught:
        EncodeRequest.model_validate(body)
    assert len(caught.value.errors()) == 1
    assert "300000 unknown fields" in str(caught.value)
    assert elapsed(lambda: EncodeRequest.model_validate(body)) < 0.5
    # A few are still named one by one, as pydantic names them.
    assert "typo" in message(EncodeRequest, {"inputs": "x", "typo": 1})


@pytest.mark.parametrize("bad", [[0] * 1_000_000, ["x"] * 1_000_000])
def test_attention_indices_are_counted_first_and_fail_fast(bad: list[Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        AttentionRequest.model_validate({"inputs": "x", "layers": bad})
    assert len(caught.value.errors()) == 1
    assert elapsed(lambda: AttentionRequest.model_validate({"inputs": "x", "heads": bad})) < 0.05
    assert AttentionRequest.model_validate({"inputs": "x", "layers": [0, 2]}).layers == [0, 2]


# -- OpenAI token ids --------------------------------------------------------------------


@pytest.mark.parametrize("ids", [[True, False], [[101, True]], [1, 2.5], [[1], "a"]])
def test_token_ids_are_strict_integers(ids: list[Any]) -> None:
    text = message(OpenAIEmbeddingRequest, {"input": ids, "model": "m"})
    assert "true and false are not" in text


@pytest.mark.parametrize("good", ["text", ["a", "b"], [101, 102], [[101], [101, 102]]])
def test_openai_inputs_of_every_documented_shape_are_accepted(good: Any) -> None:
    assert OpenAIEmbeddingRequest.model_validate({"input": good, "model": "m"}).input == good


def test_a_long_list_of_bad_ids_is_one_quick_error() -> None:
    ids: list[Any] = [True] * 800_000
    with pytest.raises(ValidationError) as caught:
        OpenAIEmbeddingRequest.model_validate({"input": ids, "model": "m"})
    assert len(caught.value.errors()) == 1
    took = elapsed(lambda: OpenAIEmbeddingRequest.model_validate({"input": ids, "model": "m"}))
    assert took < 0.1  # one error per item and per branch of the union took ~12 s


@pytest.mark.parametrize(
    "ids",
    [[1] * 800_000, [[1] * 1000] * 101, [[True] * 50_000, ["x"] * 50_001]],
)
def test_token_ids_past_the_limit_are_refused_by_their_count_alone(ids: list[Any]) -> None:
    """ENCODER_MAX_INPUT_CHARS token ids in one request at most (a 413), counted by list
    lengths before pydantic or the tokenizer look at one id."""
    for request in (
        lambda: OpenAIEmbeddingRequest.model_validate({"input": ids, "model": "m"}),
        lambda: TeiDecodeRequest.model_validate({"ids": ids}),
    ):
        with pytest.raises(PayloadTooLarge, match="token ids in one request; the limit is 100000"):
            request()
        assert elapsed(request) < 0.01


def test_openai_input_count_is_checked_first_but_one_id_list_is_one_input() -> None:
    with pytest.raises(PayloadTooLarge, match="300 inputs"):
        OpenAIEmbeddingRequest.model_validate({"input": [[1]] * 300, "model": "m"})
    OpenAIEmbeddingRequest.model_validate({"input": list(range(300)), "model": "m"})


# -- the body parser ---------------------------------------------------------------------


def test_valid_bodies_parse_as_json() -> None:
    body = {"inputs": ["😀 ok", "é"], "n": 3, "nested": {"a": [1.5, None, True]}}
    assert parse_json(orjson.dumps(body)) == body
    assert parse_json(b'{"inputs": "\\ud83d\\ude00"}') == {"inputs": "😀"}  # a paired escape


def test_raw_invalid_utf8_is_a_400() -> None:
    for body in (b'{"inputs": "\xff\xfe"}', b'{"inputs": "\xed\xa0\x80"}', "{}".encode("utf-16")):
        with pytest.raises(RequestRejected) as caught:
            parse_json(body)
        assert (caught.value.status_code, caught.value.kind) == (400, "malformed_json")
        assert caught.value.detail == NOT_UTF8


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"inputs": "\\ud800"}', "inputs"),
        (b'{"inputs": ["ok", "a\\udfffb"]}', "inputs.1"),
        (b'{"inputs": "ok", "model": "\\udfff"}', "model"),
        (b'{"inputs": "ok", "candidate_labels": ["a", "\\udc00"]}', "candidate_labels.1"),
        (b'{"inputs": "ok", "hypothesis_template": "\\ud800{}"}', "hypothesis_template"),
        (b'{"a": {"b": [{"c": "\\ud800"}]}}', "a.b.0.c"),
    ],
)
def test_lone_surrogates_are_a_422_naming_the_field(body: bytes, path: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        parse_json(body)
    assert (caught.value.status_code, caught.value.kind) == (422, "validation_error")
    assert caught.value.detail.startswith(f"{path} contains a lone surrogate")
    error_body(422, "validation_error", caught.value.detail)  # writable


def test_a_lone_surrogate_in_a_key_is_named_and_the_answer_stays_writable() -> None:
    with pytest.raises(RequestRejected) as caught:
        parse_json(b'{"\\ud800": 1}')
    assert caught.value.status_code == 422
    written = orjson.loads(error_body(422, "validation_error", caught.value.detail))
    assert written["error"]["message"].startswith("\\ud800 contains a lone surrogate")


def test_malformed_json_keeps_its_400_and_orjson_strictness_changes_nothing_else() -> None:
    with pytest.raises(json.JSONDecodeError):
        parse_json(b'{"inputs": ["unterminated')
    value = parse_json(b'{"dimensions": NaN, "big": 1e400}')  # as the standard library reads
    assert value["big"] == float("inf")
    with pytest.raises(RequestRejected, match="nested too deeply"):
        parse_json(b"[" * 100_000)


def test_the_surrogate_search_is_linear_and_iterative() -> None:
    deep: Any = "\ud800"
    for _ in range(5000):
        deep = [deep]
    assert lone_surrogate_path({"x": deep}) == "x" + ".0" * 5000
    wide = {"inputs": ["fine é"] * 500_000 + ["\udfff"]}
    started = time.perf_counter()
    assert lone_surrogate_path(wide) == "inputs.500000"
    assert time.perf_counter() - started < 2.0


def test_error_messages_with_surrogates_are_written_escaped() -> None:
    for path in ("/encode", "/v1/embeddings"):
        written = orjson.loads(error_body(404, "model_not_found", "model '\udfff' ?", path))
        assert "\\udfff" in written["error"]["message"]
