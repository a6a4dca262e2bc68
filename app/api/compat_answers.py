"""Answers in other servers' shapes where a shared route takes their fields: TEI's /tokenize
(a list of token lists) and infinity's /classify (`object`, `data`, OpenAI-style usage)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from app.engine.contract import Token


def _byte_offsets(text: str) -> list[int]:
    """UTF-8 byte offset of each character position of `text` (len(text) + 1 entries)."""
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + len(char.encode("utf-8")))
    return offsets


def tei_tokens(texts: list[str], prompt: str, tokens: list[list[Token]]) -> list[list[Any]]:
    """TEI's /tokenize answer: per input, its tokens as `{id, text, special, start, stop}`.

    As TEI's router writes them: a special token has its own text and no span; any other
    token's text is the characters it covers in the input (with the prompt in front, when
    one was named), and its span counts UTF-8 bytes, as Rust's offsets do.
    """
    answers = []
    for text, text_tokens in zip(texts, tokens, strict=True):
        prompted = prompt + text
        # Character and byte offsets agree on ASCII: no table needed.
        table = None if prompted.isascii() else _byte_offsets(prompted)
        items: list[Any] = []
        for token in text_tokens:
            if token.special:
                items.append(
                    {
                        "id": token.id,
                        "text": token.text,
                        "special": True,
                        "start": None,
                        "stop": None,
                    }
                )
                continue
            start, stop = token.start, token.stop
            if table is not None:
                start, stop = table[start], table[stop]
            items.append(
                {
                    "id": token.id,
                    "text": prompted[token.start : token.stop],
                    "special": False,
                    "start": start,
                    "stop": stop,
                }
            )
        answers.append(items)
    return answers


def infinity_classification(
    model: str, results: list[list[dict[str, Any]]], tokens: int
) -> dict[str, Any]:
    """infinity's /classify answer (its `ClassifyResult`)."""
    return {
        "object": "classify",
        "data": results,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "id": f"infinity-{uuid.uuid4()}",
        "created": int(time.time()),
    }
