"""The error shape each route answers in: the contract's, OpenAI's under /v1/, and TEI's on
the text-embeddings-inference routes (app/api/errors.py writes all three)."""

from __future__ import annotations

from typing import Any

from app.api.errors import OPENAI_PATHS, OPENAI_PREFIX, TEI_PATHS

CONTRACT_ERROR = {"type", "message"}
OPENAI_ERROR = {"message", "type", "param", "code"}
TEI_ERROR_TYPES = {"empty", "validation", "tokenizer", "backend", "overloaded", "unhealthy"}


def error_message(body: Any, path: str) -> str:
    """The message of an error answer's JSON body, once its shape is checked for `path`."""
    assert isinstance(body, dict), body
    if path in TEI_PATHS:
        assert set(body) == {"error", "error_type"}, body
        assert body["error_type"] in TEI_ERROR_TYPES, body
        message = body["error"]
    else:
        assert set(body) == {"error"}, body
        openai = path.startswith(OPENAI_PREFIX) or path in OPENAI_PATHS
        shape = OPENAI_ERROR if openai else CONTRACT_ERROR
        assert set(body["error"]) == shape, body
        message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    return message
