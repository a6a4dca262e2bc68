"""The floor: the least a Python server can do per request, to measure ours against.

A plain ASGI callable (no framework) that answers the server's hot routes in the
server's answer shape with what they cannot do without: read the body, parse it with
orjson, tokenize the text with the model's own `tokenizer.json` (truncated to its max
length, as the server does), and write the answer with orjson:

- `POST /encode` (`{"inputs": "text"}`): `{"model", "dimensions", "embeddings",
  "usage": {"tokens"}}` with one 384-float vector;
- `POST /v1/embeddings` (`{"model", "input": "text"}`): OpenAI's list of one embedding;
- `POST /classify` (`{"model": "sentiment", "inputs": "text"}`): fixed zero logits, a
  softmax over the sentiment model's labels (from its `model.json`), highest first.
- `GET /ready`: 200, so the bench's start-up probe works on it too.

It shares with the server: uvicorn (the pinned version), uvloop, httptools, the same
keep-alive (`ENCODER_KEEP_ALIVE_S`'s default), no access log, orjson with numpy
vectors, the tokenizer files, and the answers of `ENCODER_BACKEND=benchmark-fixed`
(every vector the same unit vector, every logit zero; no model runs in either).

It deliberately lacks everything else the server does per request, which is what the
ratio of their CPU per request prices: validation of the body and its limits (it reads
one string and trusts it), the error shape (anything unexpected is a bare 400 or 404),
request ids, timing headers, metrics, log lines, auth, connection limits and the
httptools guard (header size, read and write timeouts), cancellation on disconnect,
batching, the queue and its back-pressure, model resolution and aliases, options
(`normalize`, `dimensions`, `top_k`, …), and streaming of large answers.

`python -m loadtest.floor [--port N]` serves it on 127.0.0.1. `python -m loadtest.front_end`
measures it beside the server (`--floor-only`: that comparison alone, about a minute).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tokenizers import Tokenizer

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
EMBEDDING_MODEL = "minilm"
CLASSIFIER = "sentiment"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model's tokenizer as the server sets it up: no padding, truncated to max length."""
    manifest = json.loads((model_dir / "model.json").read_text())
    tokenizer = Tokenizer.from_file(str(model_dir / manifest.get("tokenizer", "tokenizer.json")))
    tokenizer.no_padding()
    tokenizer.enable_truncation(int(manifest["max_length"]))
    return tokenizer


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(value - top) for value in logits]
    total = sum(exps)
    return [value / total for value in exps]


class Floor:
    """The ASGI application; `Floor.from_models(models_dir)` reads the model files."""

    def __init__(self, tokenizer: Tokenizer, dimensions: int, labels: list[str]) -> None:
        self.tokenizer = tokenizer
        # benchmark-fixed's answer: states of ones, mean-pooled and normalized.
        self.vector = np.full(dimensions, 1 / math.sqrt(dimensions), dtype=np.float32)
        self.labels = labels
        self.logits = [0.0] * len(labels)
        self.routes: dict[str, Callable[[dict[str, Any]], bytes]] = {
            "/encode": self.encode,
            "/v1/embeddings": self.embeddings,
            "/classify": self.classify,
        }

    @classmethod
    def from_models(cls, models_dir: Path = MODELS) -> Floor:
        embedding = models_dir / EMBEDDING_MODEL
        dimensions = int(json.loads((embedding / "model.json").read_text())["dimensions"])
        labels = json.loads((models_dir / CLASSIFIER / "model.json").read_text())["labels"]
        return cls(load_tokenizer(embedding), dimensions, list(labels))

    def tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def encode(self, body: dict[str, Any]) -> bytes:
        tokens = self.tokens(body["inputs"])
        answer = {
            "model": EMBEDDING_MODEL,
            "dimensions": int(self.vector.shape[0]),
            "embeddings": [self.vector],
            "usage": {"tokens": tokens},
        }
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

    def embeddings(self, body: dict[str, Any]) -> bytes:
        tokens = self.tokens(body["input"])
        answer = {
            "object": "list",
            "data": [{"object": "embedding", "embedding": self.vector, "index": 0}],
            "model": EMBEDDING_MODEL,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

    def classify(self, body: dict[str, Any]) -> bytes:
        tokens = self.tokens(body["inputs"])
        scored = sorted(
            zip(self.labels, softmax(self.logits), strict=True), key=lambda pair: -pair[1]
        )
        answer = {
            "model": CLASSIFIER,
            "results": [[{"label": label, "score": score} for label, score in scored]],
            "usage": {"tokens": tokens},
        }
        return orjson.dumps(answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/ready":
            await respond(send, 200, b'{"status":"ready"}')
            return
        route = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
        body = await read_body(receive)
        if route is None:
            await respond(send, 404, b'{"detail":"Not Found"}')
            return
        try:
            answer = route(orjson.loads(body))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            await respond(send, 400, b'{"detail":"bad request"}')
            return
        await respond(send, 200, answer)


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: the whole body in one message
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def keep_alive_s() -> int:
    """The server's default keep-alive (ENCODER_KEEP_ALIVE_S), so idle connections match."""
    default = Settings.model_fields["keep_alive_s"].default
    assert isinstance(default, int)
    return default


def serve(port: int, host: str = "127.0.0.1", models_dir: Path = MODELS) -> None:
    import uvicorn

    uvicorn.run(
        Floor.from_models(models_dir),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=keep_alive_s(),
    )


def floor_command(port: int) -> list[str]:
    """How the bench starts the floor: this interpreter, its own process."""
    return [sys.executable, "-m", "loadtest.floor", "--port", str(port)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.floor", description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    args = parser.parse_args()
    serve(args.port, models_dir=args.models_dir)


if __name__ == "__main__":
    main()
