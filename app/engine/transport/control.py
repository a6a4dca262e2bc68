"""The control messages between a front-end worker and the engine process, each a
declared type defined here once: the handshake, the calls a worker makes, the engine's
replies, and an error's name and message. app/engine/transport/wire.py frames them and is the one
place they are encoded (JSON) and decoded, validated on arrival: the right types, every
field present, no unknown field, no unknown message.

A connection opens with a handshake. The worker sends HELLO with its `Build`; the engine
answers with its own. Two different builds refuse each other: both sides log the same
line naming both versions, the engine closes the connection and the worker exits with
an error (its supervisor restarts it, and stops the server if every worker keeps
failing at its start). A worker of another build would otherwise talk to the engine
until something breaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from app import __version__
from app.engine.contract import ModelDescription

# Raise it with any change to a frame or a control message (HELLO itself never changes).
PROTOCOL = 2  # 2: ModelDescription.default and ModelDescription.prompts

# What arrives is checked as it is, never converted ("384" is no number); nested types
# (a ModelDescription) follow the same rules.
_STRICT = ConfigDict(strict=True, extra="forbid")


class VersionMismatch(Exception):
    """The worker and the engine process come from different builds."""


@dataclass(frozen=True)
class Build:
    """HELLO's payload: which build the sender runs. Its JSON never changes, so that any
    two builds can tell that they differ."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    package: str  # the package version (app.__version__)
    protocol: int  # PROTOCOL

    def __str__(self) -> str:
        return f"encoder-serve {self.package} (wire protocol {self.protocol})"


THIS_BUILD = Build(__version__, PROTOCOL)


def mismatch(worker: Build, engine: Build) -> str | None:
    """The one line both sides log when the builds differ; None when they match."""
    if worker == engine:
        return None
    return (
        f"version mismatch: the HTTP worker runs {worker}, the engine process {engine}; "
        "both must come from one build (restart the server)"
    )


# -- calls (CALL frames, worker → engine) ------------------------------------


@dataclass(frozen=True)
class Describe:
    """Every served model's description (asked once a worker is connected)."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    op: Literal["describe"] = "describe"


@dataclass(frozen=True)
class GetStatus:
    """Whether the engine can serve now (asked every STATUS_EVERY_S)."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    op: Literal["status"] = "status"


Call = Annotated[Describe | GetStatus, Field(discriminator="op")]


# -- replies (REPLY frames, engine → worker), tagged with their call's op ----


@dataclass(frozen=True)
class Description:
    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    models: list[ModelDescription]  # the default of each task first
    op: Literal["describe"] = "describe"


@dataclass(frozen=True)
class Status:
    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    not_ready: str | None  # why the engine cannot serve now; None when it can
    op: Literal["status"] = "status"


Reply = Annotated[Description | Status, Field(discriminator="op")]


# -- an error's name and message (after an ERROR frame's Retry-After) ---------


@dataclass(frozen=True)
class RaisedError:
    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    type: str  # an app.engine.errors class (InferenceFailed where it names none)
    message: str
