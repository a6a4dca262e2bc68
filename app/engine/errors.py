"""The engine's own exceptions; the API maps each one to an HTTP status in one place."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine reports to a caller."""


class InvalidInput(EngineError):
    """A request the engine cannot serve as asked (bad field values)."""


class InputTooLong(InvalidInput):
    """An input exceeds the model's max length and truncation was not allowed."""


class PayloadTooLarge(EngineError):
    """A request over one of the size limits (inputs per request, characters, tokens)."""


class ModelNotFound(EngineError):
    """No loaded model has the requested name (or none serves the task)."""


class Overloaded(EngineError):
    """The model's queue is full; the caller should retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(EngineError):
    """The request's deadline passed before its inputs reached a forward pass."""


class NotReady(EngineError):
    """Models are still loading, or the server is draining."""


class InferenceFailed(EngineError):
    """The backend raised while running a batch that held this input."""


class ClientDisconnected(EngineError):
    """The client went away before its answer was ready; its queued inputs were dropped."""


class ModelLoadError(EngineError):
    """A model in the repository could not be loaded; names the model and the file."""
