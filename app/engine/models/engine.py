"""The requests of the engine contract over a `ModelRegistry`, shared by both engines: the
in-process one (app/engine/in_process.py) and a front-end worker's
(app/engine/transport/client.py). Subclasses say where the passes run and how the engine
starts, drains and stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from app.config import available_cores
from app.engine.contract import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    DEFAULT_TEXT_OPTIONS,
    Aggregate,
    AttentionMap,
    Classification,
    ClassifyOptions,
    Embeddings,
    ExplainOptions,
    Explanation,
    ModelDescription,
    Reranking,
    Task,
    TextInput,
    TextOptions,
    TokenEmbeddings,
    TokenIds,
    Tokenization,
)
from app.engine.models.registry import ModelRegistry

RegistryT = TypeVar("RegistryT", bound=ModelRegistry)


class RegistryEngine(Generic[RegistryT]):
    """The requests of `app.engine.contract.Engine` over a `ModelRegistry`; subclasses
    say where the passes run (`InProcessEngine`: here; `RemoteEngine`: in the engine
    process)."""

    def __init__(
        self,
        registry: RegistryT,
        descriptions: dict[str, ModelDescription],
        tokenize_executor: ThreadPoolExecutor,
    ) -> None:
        self._registry = registry
        self._descriptions = descriptions  # never change once loaded: built once
        self._tokenize_executor = tokenize_executor

    @property
    def registry(self) -> RegistryT:
        """The loaded models themselves, for tools and tests in this process."""
        return self._registry

    def models(self) -> list[ModelDescription]:
        return [self._descriptions[model.name] for model in self._registry]

    def model(self, name: str | None, task: Task) -> ModelDescription:
        return self._descriptions[self._registry.get(name, task).name]

    async def embed(
        self,
        model: str,
        inputs: Sequence[str] | TokenIds,
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
        text: TextOptions = DEFAULT_TEXT_OPTIONS,
    ) -> Embeddings:
        served = self._registry.get(model, "embedding")
        return await served.embed(
            inputs, normalize=normalize, truncate=truncate, dimensions=dimensions, text=text
        )

    async def embed_tokens(
        self,
        model: str,
        inputs: Sequence[str],
        *,
        truncate: bool = True,
        text: TextOptions = DEFAULT_TEXT_OPTIONS,
    ) -> TokenEmbeddings:
        served = self._registry.get(model, "embedding")
        return await served.embed_tokens(inputs, truncate=truncate, text=text)

    async def classify(
        self, model: str, inputs: Sequence[TextInput], options: ClassifyOptions
    ) -> Classification:
        return await self._registry.get(model, "classification").classify(inputs, options)

    async def zero_shot(
        self,
        model: str,
        inputs: Sequence[str],
        labels: list[str],
        template: str,
        options: ClassifyOptions,
    ) -> Classification:
        served = self._registry.get(model, "embedding")
        return await served.zero_shot(inputs, labels, template, options)

    async def rerank(
        self,
        model: str,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool = True,
        raw_scores: bool = False,
    ) -> Reranking:
        served = self._registry.get(model, "rerank")
        return await served.rerank(query, documents, truncate=truncate, raw_scores=raw_scores)

    async def attention(
        self,
        model: str,
        text: str,
        *,
        layers: list[int] | None,
        heads: list[int] | None,
        how: Aggregate,
        truncate: bool,
    ) -> AttentionMap:
        served = self._registry.get(model, "embedding")
        return await served.attention(text, layers=layers, heads=heads, how=how, truncate=truncate)

    async def explain(
        self,
        model: str,
        text: str,
        options: ExplainOptions,
        labels: list[str] | None = None,
        template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
    ) -> Explanation:
        served = self._registry.get(model, "classification" if labels is None else "embedding")
        return await served.explain(text, options, labels, template)

    async def tokenize(
        self,
        model: str,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        add_special_tokens: bool = True,
    ) -> Tokenization:
        served = self._registry.get(model, "embedding")
        return await served.tokenize(
            texts, prompt_name=prompt_name, add_special_tokens=add_special_tokens
        )

    async def decode(
        self, model: str, ids: list[list[int]], *, skip_special_tokens: bool = True
    ) -> list[str]:
        served = self._registry.get(model, "embedding")
        return await served.decode(ids, skip_special_tokens=skip_special_tokens)


def tokenization_threads() -> int:
    """Threads that tokenize large requests off the event loop: one per core."""
    return available_cores()
