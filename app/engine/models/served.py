"""A served model: what a request can ask of it (embed, classify, zero-shot), over its encoder."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from app.engine.models import classification, explain
from app.engine.models.encoder import Encoder
from app.engine.models.encoder import normalize as normalize_rows
from app.engine.errors import InputTooLong, InvalidInput
from app.engine.models.heads import ClassifierHead
from app.engine.models.label_cache import DEFAULT_LABEL_CACHE_BYTES, LabelVectorCache
from app.engine.contract import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    DEFAULT_TEXT_OPTIONS,
    Aggregate,
    AttentionMap,
    Classification,
    ClassifyOptions,
    Embeddings,
    Reranking,
    TextInput,
    TextOptions,
    TokenEmbeddings,
    TokenIds,
    Tokenization,
    template_problem,
)
from app.engine.manifest import ModelManifest
from app.engine.models.tokenization import TokenizedText
from app.metrics import Metrics

DEFAULT_OPTIONS = ClassifyOptions()

class ServedModel:
    """One model of the repository, as requests see it."""

    def __init__(
        self,
        manifest: ModelManifest,
        encoder: Encoder,
        head: ClassifierHead | None = None,
        metrics: Metrics | None = None,
        *,
        label_cache_bytes: int = DEFAULT_LABEL_CACHE_BYTES,
    ) -> None:
        self.manifest = manifest
        self.encoder = encoder
        self.head = head
        self._metrics = metrics
        self.label_cache = LabelVectorCache(label_cache_bytes)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def task(self) -> str:
        return self.manifest.task

    def prompt(self, name: str | None, prompt: str | None = None) -> str | None:
        """The prefix a request asks for: the model's prompt called `name`, or `prompt`
        itself; InvalidInput for both, or for a name the model has no prompt of."""
        if name is None:
            return prompt
        if prompt is not None:
            raise InvalidInput("give prompt_name or prompt, not both")
        prompts = self.manifest.prompts
        if name not in prompts:
            known = (
                f"its prompts are {', '.join(repr(key) for key in prompts)}"
                if prompts
                else "it has none (its config_sentence_transformers.json named no prompts "
                "when it was exported); send the prefix itself as prompt"
            )
            raise InvalidInput(
                f"prompt_name {name[:64]!r} is not a prompt of model '{self.name}': {known}"
            )
        return prompts[name]

    def _prompted(self, texts: Sequence[str], options: TextOptions) -> Sequence[str]:
        prefix = self.prompt(options.prompt_name, options.prompt)
        return texts if not prefix else [prefix + text for text in texts]

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
        text: TextOptions = DEFAULT_TEXT_OPTIONS,
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
            if text != DEFAULT_TEXT_OPTIONS:
                raise InvalidInput(
                    "prompt_name, prompt and truncation_direction apply to texts, not to token "
                    "ids (which are never truncated)"
                )
            output = await self.encoder.run_tokenized(self.encoder.tokenizer.from_ids(texts.ids))
        else:
            output = await self.encoder.run(
                self._prompted(texts, text),
                truncate=truncate,
                direction=text.truncation_direction,
            )
        self._count_tokens(output.tokens)
        vectors = output.vectors
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if normalize:
            vectors = normalize_rows(vectors)
        # A Matryoshka cut is a strided view; serializers need the rows contiguous.
        return Embeddings(np.ascontiguousarray(vectors, dtype=np.float32), output.tokens)

    async def embed_tokens(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = True,
        text: TextOptions = DEFAULT_TEXT_OPTIONS,
    ) -> TokenEmbeddings:
        """The last hidden state of every token, special tokens included, unpooled."""
        if self.task != "embedding":
            raise InvalidInput(
                f"model '{self.name}' is a {self.task} model: token embeddings come from an "
                "embedding model"
            )
        states, tokens = await self.encoder.token_states(
            self._prompted(texts, text), truncate=truncate, direction=text.truncation_direction
        )
        self._count_tokens(tokens)
        return TokenEmbeddings(states, tokens)

    async def decode(self, ids: list[list[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """The texts of token ids, by this model's tokenizer."""
        return await self.encoder.decode(ids, skip_special_tokens=skip_special_tokens)

    async def classify(
        self, texts: Sequence[TextInput], options: ClassifyOptions = DEFAULT_OPTIONS
    ) -> Classification:
        """Scores of a classification model's labels (softmax; sigmoid when multi-label).
        An input may be a sentence pair, where the model's tokenizer lays pairs out."""
        if self.task == "rerank":
            raise InvalidInput(
                f"model '{self.name}' is a rerank model: use POST /rerank or /v1/rerank"
            )
        if self.task != "classification":
            raise InvalidInput(
                f"model '{self.name}' is an embedding model: give candidate_labels for "
                "zero-shot classification, or choose a classification model"
            )
        output = await self.encoder.run(
            texts, truncate=options.truncate, direction=options.truncation_direction
        )
        self._count_tokens(output.tokens)
        scores = self._classifier_scores(output.vectors, options)
        ranked = classification.ranked(scores, self.manifest.labels, options.top_k)
        return Classification(ranked, output.tokens)

    async def rerank(
        self, query: str, documents: Sequence[str], *, truncate: bool, raw_scores: bool
    ) -> Reranking:
        """A cross-encoder's score of each (query, document) pair, in document order: the
        sigmoid of its one logit (as sentence-transformers' CrossEncoder), or the logit.
        The pairs go through the model's batcher like any other inputs."""
        if self.task != "rerank":
            raise InvalidInput(
                f"model '{self.name}' is a {self.task} model; reranking needs a rerank model "
                "(a cross-encoder)"
            )
        started = time.monotonic()
        encoded = await self.encoder.tokenize_query_pairs(query, documents, truncate=truncate)
        output = await self.encoder.run_tokenized(encoded, started)
        self._count_tokens(output.tokens)
        logits = output.vectors[:, 0]
        scores = logits if raw_scores else classification.sigmoid(logits)
        return Reranking(
            [float(score) for score in scores], [item.truncated for item in encoded], output.tokens
        )

    def _classifier_scores(self, vectors: np.ndarray, options: ClassifyOptions) -> np.ndarray:
        """Label scores of a classifier's graph outputs (or its head's, on pooled vectors)."""
        logits = vectors
        if self.head is not None:
            logits = self.head.logits(normalize_rows(logits))
        problem = self.manifest.problem_type
        multi = options.multi_label or problem == "multi_label_classification"
        # A regression head's output is its answer: a softmax over one value is always 1.
        raw = options.raw_scores or problem == "regression"
        return classification.classifier_scores(logits, raw=raw, multi_label=multi)

    async def zero_shot(
        self,
        texts: Sequence[str],
        labels: list[str],
        template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
        options: ClassifyOptions = DEFAULT_OPTIONS,
    ) -> Classification:
        """Score `labels` by the cosine similarity of each text to the filled-in template."""
        started = time.monotonic()  # one deadline for both passes
        # Labels first: a label the template cannot hold fails before the texts cost a pass.
        label_vectors = await self._zero_shot_labels(template, labels, started)
        encoded = await self.encoder.tokenize(
            texts, truncate=options.truncate, direction=options.truncation_direction
        )
        text_vectors = await self.encoder.run_tokenized(encoded, started)
        self._count_tokens(text_vectors.tokens)
        similarities = normalize_rows(text_vectors.vectors) @ label_vectors.T
        scores = classification.zero_shot_scores(
            similarities, raw=options.raw_scores, multi_label=options.multi_label
        )
        ranked = classification.ranked(scores, labels, options.top_k)
        return Classification(ranked, text_vectors.tokens)

    async def explain(
        self,
        text: str,
        options: explain.ExplainOptions,
        labels: list[str] | None = None,
        template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
    ) -> explain.Explanation:
        """How much each word of `text` moved the score of a label: the classifier's labels,
        or zero-shot `labels` (an embedding model). Scored as `classify` or `zero_shot`
        scores, its perturbations at low priority through the model's batcher."""
        started = time.monotonic()  # one deadline for every pass of the explanation
        if labels is None:
            if self.task != "classification":
                raise InvalidInput(
                    f"model '{self.name}' is an embedding model: give candidate_labels to "
                    "explain a zero-shot classification, or choose a classification model"
                )
            names = list(self.manifest.labels)

            def scores(vectors: np.ndarray) -> np.ndarray:
                return self._classifier_scores(vectors, DEFAULT_OPTIONS)
        else:
            names = labels
            label_vectors = await self._zero_shot_labels(template, labels, started)
            # One label alone would always score 1 in a softmax: its cosine says more.
            zero_shot = ClassifyOptions(multi_label=len(labels) == 1)

            def scores(vectors: np.ndarray) -> np.ndarray:
                similarities = normalize_rows(vectors) @ label_vectors.T
                return classification.zero_shot_scores(
                    similarities, raw=False, multi_label=zero_shot.multi_label
                )

        ((tokens, truncated),) = await self.encoder.token_spans([text])
        if truncated and not options.truncate:
            raise InputTooLong(
                f"inputs is longer than the model's max length of {self.manifest.max_length} "
                "tokens; shorten it or set truncate to true"
            )
        ids = np.asarray([token.id for token in tokens], dtype=np.int64)
        full = TokenizedText(ids, np.zeros_like(ids), truncated)

        async def scores_of(items: list[TokenizedText]) -> np.ndarray:
            output = await self.encoder.run_tokenized(items, started, low=True)
            return scores(output.vectors)

        result = await explain.explain(full, tokens, text, names, scores_of, options)
        self._count_tokens(result.tokens)
        return result

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

    async def tokenize(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        add_special_tokens: bool = True,
    ) -> Tokenization:
        """The model's tokens of each text with character spans (in the prompted text, with
        `prompt_name`), and which were truncated."""
        prompted = self._prompted(texts, TextOptions(prompt_name=prompt_name))
        spans = await self.encoder.token_spans(prompted, add_special_tokens=add_special_tokens)
        return Tokenization([tokens for tokens, _ in spans], [cut for _, cut in spans])

    async def _zero_shot_labels(
        self, template: str, labels: list[str], started: float
    ) -> np.ndarray:
        """The normalized embeddings of the filled-in template per label (an embedding
        model's zero-shot); a model or template that cannot do it is InvalidInput."""
        if self.task != "embedding":
            raise InvalidInput(
                f"candidate_labels (zero-shot) needs an embedding model; '{self.name}' is a "
                f"{self.task} model with fixed labels"
            )
        problem = template_problem(template)
        if problem is not None:
            raise InvalidInput(f"hypothesis_template {problem}")
        return await self._label_embeddings(template, labels, started)

    async def _label_embeddings(
        self, template: str, labels: list[str], started: float
    ) -> np.ndarray:
        """Normalized embeddings of the filled templates, cached per (template, label).

        Built only from what this request found in the cache before awaiting and what it
        embedded itself: concurrent requests may evict any entry while this one awaits.
        A filled template longer than the model's max length is refused (InvalidInput
        naming the label): truncation would cut the label off, and every label so cut
        would score alike. The check reads the truncation flag of the one tokenization
        the embedding needs anyway.
        """
        found: dict[str, np.ndarray] = {}
        for label in labels:
            vector = self.label_cache.get((template, label))
            if vector is not None:
                found[label] = vector
        missing = list(dict.fromkeys(label for label in labels if label not in found))
        if missing:
            hypotheses = [classification.fill_template(template, label) for label in missing]
            encoded = await self.encoder.tokenize(hypotheses, truncate=True)
            for label, item in zip(missing, encoded, strict=True):
                if item.truncated:
                    index = labels.index(label)
                    raise InvalidInput(
                        f"candidate_labels[{index}] ({label[:64]!r}): the hypothesis_template "
                        "filled with it is longer than the max length of model "
                        f"'{self.name}' ({self.manifest.max_length} tokens), so truncation "
                        "would cut the label off; shorten the label or the template"
                    )
            output = await self.encoder.run_tokenized(encoded, started)
            self._count_tokens(output.tokens)
            for label, vector in zip(missing, normalize_rows(output.vectors), strict=True):
                found[label] = vector
                self.label_cache.put((template, label), vector)
        return np.stack([found[label] for label in labels]).astype(np.float32, copy=False)
