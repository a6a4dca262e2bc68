"""`Settings` on the command line: a flag per setting, one-line errors, misspelt variables.

The flags are generated from `Settings.model_fields`, so the command line and the
environment can never list different settings (TEI's launcher works the same way:
every option is a flag and an environment variable). A flag wins over its variable.
"""

from __future__ import annotations

import argparse
import difflib
import os
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from app.config import Settings
from app.tei_names import (
    BARE_FLAGS,
    TEI_VARIABLES,
    Maps,
    TeiNames,
    read_tei_flags,
    read_tei_variables,
    tei_flag,
)

PREFIX = "ENCODER_"


def variable(name: str) -> str:
    return PREFIX + name.upper()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choices(info: FieldInfo) -> list[str]:
    """The allowed words of a Literal setting (`auto` of `int | Literal["auto"]` too)."""
    annotation = info.annotation
    arms = [annotation] if typing.get_origin(annotation) is typing.Literal else []
    arms = arms or [arm for arm in typing.get_args(annotation) if typing.get_origin(arm)]
    return [
        str(word)
        for arm in arms
        if typing.get_origin(arm) is typing.Literal
        for word in typing.get_args(arm)
    ]


def _metavar(name: str, info: FieldInfo) -> str:
    if info.annotation is bool:
        return "{true,false}"
    words = _choices(info)
    if not words:
        return name.upper()
    if int in typing.get_args(info.annotation):
        return "{N," + ",".join(words) + "}"
    return "{" + ",".join(words) + "}"


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "none"
    value = info.default
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per setting; its help names the environment variable and the default."""
    group = parser.add_argument_group(
        "settings", "every flag is also an environment variable; a flag wins over its variable"
    )
    for name, info in Settings.model_fields.items():
        about = (info.description or "").rstrip(".")
        details = f"{variable(name)}, default {_default(info)}"
        # A boolean flag alone means true (`--auto-truncate`, as TEI's); a list's flag may
        # be repeated (`--model-id a --model-id b`), as well as hold `a,b`.
        bare: dict[str, Any] = {"nargs": "?", "const": "true"} if info.annotation is bool else {}
        if typing.get_origin(_unannotated(info.annotation)) is list:
            bare = {"action": "append"}
        group.add_argument(
            flag(name),
            dest=f"setting_{name}",
            metavar=_metavar(name, info),
            help=f"{about} ({details})" if about else details,
            **bare,
        )
    _add_tei_flags(parser)


def _unannotated(annotation: Any) -> Any:
    """`list[str]` of `Annotated[list[str], NoDecode]`."""
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _add_tei_flags(parser: argparse.ArgumentParser) -> None:
    """TEI's launcher flags that are not already a setting's flag: read as the setting
    they map to, or accepted with a warning saying why they have no counterpart."""
    group = parser.add_argument_group(
        "text-embeddings-inference names",
        "TEI's flags (and its unprefixed variables: PORT, MODEL_ID, ...) are read as the "
        "settings they map to; the others are accepted with a warning",
    )
    own = {flag(name) for name in Settings.model_fields}
    for name, mapping in TEI_VARIABLES.items():
        if tei_flag(name) in own:
            continue
        if isinstance(mapping, Maps):
            about = f"TEI's name for {flag(mapping.setting)}"
        else:
            about = f"TEI's; no counterpart here: {mapping}"
        bare = {"nargs": "?", "const": "true"} if name in BARE_FLAGS else {}
        group.add_argument(tei_flag(name), dest=f"tei_{name}", metavar="VALUE", help=about, **bare)  # type: ignore[arg-type]


def tei_names(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> TeiNames:
    """The settings TEI's flags and variables give, and what to say about each, for `serve`.

    A setting's own flag wins over TEI's flag, which wins over `ENCODER_*` and then TEI's
    variable."""
    environ = os.environ if environ is None else environ
    flags = given_settings(args)
    given = {
        name: value
        for name in TEI_VARIABLES
        if (value := getattr(args, f"tei_{name}", None)) is not None
    }
    from_flags = read_tei_flags(given, flags)
    from_environ = read_tei_variables(environ, {**flags, **from_flags.values})
    return TeiNames(
        values={**from_environ.values, **from_flags.values},
        sources={**from_environ.sources, **from_flags.sources},
        notes=from_environ.notes + from_flags.notes,
        warnings=from_environ.warnings + from_flags.warnings,
    )


def given_settings(args: argparse.Namespace) -> dict[str, str]:
    """The settings given as flags, by field name (values as typed)."""
    given = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, f"setting_{name}", None)) is not None
    }
    # A repeated list flag: its values as the variable would hold them.
    return {name: ",".join(v) if isinstance(v, list) else v for name, v in given.items()}


def load_settings(flags: Mapping[str, Any] | None = None, tei: TeiNames | None = None) -> Settings:
    """Settings from the flags, the environment and TEI's names (`tei`, which the flags and
    `ENCODER_*` variables override already); SettingsError with one line per problem."""
    values = {**(tei.values if tei else {}), **dict(flags or {})}
    try:
        return Settings(**values)
    except ValidationError as error:
        raise SettingsError(_describe(error, set(flags or {}), tei)) from None


class SettingsError(Exception):
    """Invalid setting values, described one per line (values are never echoed)."""


def _describe(error: ValidationError, from_flags: set[str], tei: TeiNames | None) -> str:
    """`invalid ENCODER_X: why` (or `--x` when given as a flag, `PORT (TEI's name for
    ENCODER_PORT)` when it came from a TEI name), one line per problem."""
    lines = []
    sources = tei.sources if tei else {}
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else ""
        where = flag(name) if name in from_flags else variable(name)
        if name not in from_flags and name in sources:
            where = f"{sources[name]} (TEI's name for {variable(name)})"
        message = problem["msg"].removeprefix("Value error, ")
        # Validators that already name their variable say it their own way.
        lines.append(message if message.startswith(PREFIX) else f"invalid {where}: {message}")
    return "\n".join(dict.fromkeys(lines))


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ENCODER_* variable that is no setting, with the closest name."""
    names = [name.upper() for name in Settings.model_fields]
    warnings = []
    for key in sorted(environ if environ is not None else os.environ):
        if key.startswith(PREFIX) and key.removeprefix(PREFIX) not in names:
            # Compared without the shared prefix, which would make every name look close.
            close = difflib.get_close_matches(key.removeprefix(PREFIX), names, n=1, cutoff=0.75)
            hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
            warnings.append(f"{key} is not a setting and is ignored{hint}")
    return warnings
