"""A served model: what a request can ask of it (embed, classify, zero-shot), over its encoder."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from app.engine import classification
from app.engine.attention import Aggregate, AttentionMap
from app.engine.encoder import Encoder
from app.engine.errors import InvalidInput
from app.engine.heads import ClassifierHead
from app.engine.interface import (
    Classification,
    ClassifyOptions,
    Embeddings,
    TokenIds,
    Tokenization,
)
from app.engine.manifest import ModelManifest
from app.engine.pipeline import normalize as normalize_rows
from app.metrics import Metrics

DEFAULT_OPTIONS = ClassifyOptions()

# Zero-shot label embeddings kept per model: (template, label) -> vector.
LABEL_CACHE_SIZE = 4096


class ServedModel:
    """One model of the repository, as requests see it."""

    def __init__(
        self,
        manifest: ModelManifest,
        encoder: Encoder,
        head: ClassifierHead | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.manifest = manifest
        self.encoder = encoder
        self.head = head
        self._metrics = metrics
        self._label_vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def task(self) -> str:
        return self.manifest.task

    def _count_tokens(self, tokens: int) -> None:
        if self._metrics is not None:
            self._metrics.tokens.labels(self.name).inc(tokens)

    async def embed(
        self,
        texts: Sequence[str] | TokenIds,
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Sentence embeddings, optionally cut to `dimensions` (Matryoshka) and normalized."""
        if self.task != "embedding":
            raise InvalidInput(f"model '{self.name}' is a {self.task} model; use POST /classify")
        if dimensions is not None and not 1 <= dimensions <= self.manifest.dimensions:
            raise InvalidInput(
                f"dimensions must be between 1 and {self.manifest.dimensions} for model "
                f"'{self.name}', got {dimensions}"
            )
        if isinstance(texts, TokenIds):
            output = await self.encoder.run_tokenized(
                self.encoder.pipeline.tokenizer.from_ids(texts.ids)
            )
        else:
            output = await self.encoder.run(texts, truncate=truncate)
        self._count_tokens(output.tokens)
        vectors = output.vectors
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if normalize:
            vectors = normalize_rows(vectors)
        # A Matryoshka cut is a strided view; serializers need the rows contiguous.
        return Embeddings(np.ascontiguousarray(vectors, dtype=np.float32), output.tokens)

    async def classify(
        self, texts: Sequence[str], options: ClassifyOptions = DEFAULT_OPTIONS
    ) -> Classification:
        """Scores of a classification model's labels (softmax; sigmoid when multi-label)."""
        if self.task != "classification":
            raise InvalidInput(
                f"model '{self.name}' is an embedding model: give candidate_labels for "
                "zero-shot classification, or choose a classification model"
            )
        output = await self.encoder.run(texts, truncate=options.truncate)
        self._count_tokens(output.tokens)
        logits = output.vectors
        if self.head is not None:
            logits = self.head.logits(normalize_rows(logits))
        multi = options.multi_label or self.manifest.problem_type == "multi_label_classification"
        scores = classification.classifier_scores(logits, raw=options.raw_scores, multi_label=multi)
        ranked = classification.ranked(scores, self.manifest.labels, options.top_k)
        return Classification(ranked, output.tokens)

    async def zero_shot(
        self,
        texts: Sequence[str],
        labels: list[str],
        template: str = classification.DEFAULT_HYPOTHESIS_TEMPLATE,
        options: ClassifyOptions = DEFAULT_OPTIONS,
    ) -> Classification:
        """Score `labels` by the cosine similarity of each text to the filled-in template."""
        if self.task != "embedding":
            raise InvalidInput(
                f"candidate_labels (zero-shot) needs an embedding model; '{self.name}' is a "
                f"{self.task} model with fixed labels"
            )
        text_vectors = await self.embed(texts, truncate=options.truncate)
        label_vectors = await self._label_embeddings(template, labels)
        similarities = text_vectors.vectors @ label_vectors.T
        scores = classification.zero_shot_scores(
            similarities, raw=options.raw_scores, multi_label=options.multi_label
        )
        ranked = classification.ranked(scores, labels, options.top_k)
        return Classification(ranked, text_vectors.tokens)

    async def attention(
        self,
        text: str,
        *,
        layers: list[int] | None = None,
        heads: list[int] | None = None,
        how: Aggregate = "mean",
        truncate: bool = True,
    ) -> AttentionMap:
        """Attention probabilities of one text (a head model shows its base encoder's)."""
        runner = self.encoder.attention
        if runner is None:
            raise InvalidInput(
                f"model '{self.name}' was exported without an attention graph; "
                "re-run `encoder-serve export` to add one"
            )
        result = await runner.attention(
            text, layers=layers, heads=heads, how=how, truncate=truncate
        )
        self._count_tokens(len(result.tokens))
        return result

    async def tokenize(self, texts: Sequence[str]) -> Tokenization:
        """The model's tokens of each text with character spans, and which were truncated."""
        spans = await self.encoder.token_spans(texts)
        return Tokenization([tokens for tokens, _ in spans], [cut for _, cut in spans])

    async def _label_embeddings(self, template: str, labels: list[str]) -> np.ndarray:
        """Normalized embeddings of the filled templates, cached per (template, label)."""
        cache = self._label_vectors
        missing = [label for label in labels if (template, label) not in cache]
        if missing:
            fresh = await self.embed([template.format(label) for label in missing])
            for label, vector in zip(missing, fresh.vectors, strict=True):
                cache[(template, label)] = vector
        vectors = []
        for label in labels:
            cache.move_to_end((template, label))
            vectors.append(cache[(template, label)])
        while len(cache) > LABEL_CACHE_SIZE:
            cache.popitem(last=False)
        return np.stack(vectors)
