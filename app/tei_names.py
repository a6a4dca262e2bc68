"""text-embeddings-inference's launcher names, read as the settings they map to.

A TEI user's command line and environment (`--model-id`, `--hostname`, `PORT=3000`,
`MAX_CLIENT_BATCH_SIZE=64`) work here: each TEI name that maps cleanly onto a setting of
app/config.py is read as that `ENCODER_*` setting and said once at start-up; every other
TEI variable that is set gets a warning saying why it has no counterpart. Nothing is
ignored silently. `ENCODER_*` variables and flags win over TEI's variables.

The list is TEI's launcher (router/src/main.rs of huggingface/text-embeddings-inference,
its `Args`: each field is a `--flag` and an unprefixed variable).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

PREFIX = "ENCODER_"


def _same(value: str) -> str | None:
    return value


def _boolean(value: str) -> str | None:
    word = value.strip().lower()
    return {"true": "true", "1": "true", "false": "false", "0": "false"}.get(word)


# TEI's DTypes; bfloat16 has no graph here.
_PRECISIONS = {"float32": "fp32", "float16": "fp16"}
# TEI's pooling names; splade and last-token have no pooling here.
_POOLINGS = {"mean": "mean", "cls": "cls"}


def _json_output(value: str) -> str | None:
    flag = _boolean(value)
    return None if flag is None else ("json" if flag == "true" else "text")


def _listen_address(value: str) -> str | None:
    """HOSTNAME is set by shells and containers to the machine's name: only an IP address
    (TEI's default is 0.0.0.0) is taken as the address to listen on."""
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    return value.strip()


@dataclass(frozen=True)
class Maps:
    """A TEI name read as `setting`; `convert` gives its value here, None when this value
    has no counterpart (said in `otherwise`)."""

    setting: str
    convert: Callable[[str], str | None] = _same
    otherwise: str = ""
    expected: bool = False  # a value without counterpart is common: a note, not a warning


# TEI variable → the setting it maps to, or why it has none.
TEI_VARIABLES: dict[str, Maps | str] = {
    "MODEL_ID": Maps("model_id"),
    "REVISION": Maps("revision"),
    "TOKENIZATION_WORKERS": "large requests are tokenized off the event loop by one thread "
    "per core",
    "DTYPE": Maps(
        "precision", lambda v: _PRECISIONS.get(v.strip().lower()), "only float32 and float16"
    ),
    "SERVED_MODEL_NAME": "POST /v1/embeddings answers a model name it does not serve with the "
    "default embedding model (ENCODER_MODEL_ALIASES names others)",
    "POOLING": Maps(
        "pooling", lambda v: _POOLINGS.get(v.strip().lower()), "only mean and cls pooling"
    ),
    "MAX_CONCURRENT_REQUESTS": "ENCODER_MAX_QUEUE bounds the inputs queued per model (429 past it)",
    "MAX_BATCH_TOKENS": Maps("max_batch_tokens"),
    "MAX_BATCH_REQUESTS": Maps("max_batch_size"),
    "MAX_CLIENT_BATCH_SIZE": Maps("max_inputs_per_request"),
    "AUTO_TRUNCATE": Maps("auto_truncate", _boolean, "true or false"),
    "DEFAULT_PROMPT_NAME": "prompts are chosen per request",
    "DEFAULT_PROMPT": "prompts are chosen per request",
    "DENSE_PATH": "Dense modules are not served",
    "DEVICE_ID": "choose the GPU with CUDA_VISIBLE_DEVICES",
    "HF_API_TOKEN": "huggingface_hub reads HF_TOKEN",
    "HOSTNAME": Maps(
        "host",
        _listen_address,
        "shells and containers set HOSTNAME to the machine's name; only an IP address "
        "is taken as the address to listen on (use ENCODER_HOST or --hostname)",
        expected=True,
    ),
    "PORT": Maps("port"),
    "UDS_PATH": "the engine's socket is private to each server",
    "PAYLOAD_LIMIT": Maps("max_body_bytes"),
    "API_KEY": Maps("api_key"),
    "JSON_OUTPUT": Maps("log_format", _json_output, "true or false"),
    "DISABLE_SPANS": "no tracing spans here",
    "OTLP_ENDPOINT": "no OpenTelemetry export here: Prometheus metrics at /metrics",
    "OTLP_SERVICE_NAME": "no OpenTelemetry export here: Prometheus metrics at /metrics",
    "PROMETHEUS_PORT": "metrics are served on the API's port, at /metrics",
    "CORS_ALLOW_ORIGIN": Maps("cors_origins"),
}

# Read by huggingface_hub itself, as by TEI: said, not mapped.
HUB_VARIABLES = {
    "HF_TOKEN": "read by huggingface_hub for ENCODER_MODEL_ID, as by TEI",
    "HUGGINGFACE_HUB_CACHE": "read by huggingface_hub (the Hugging Face cache), as by TEI",
}

# TEI flags without a value (clap booleans): `--auto-truncate` alone means true.
BARE_FLAGS = {"AUTO_TRUNCATE", "JSON_OUTPUT", "DISABLE_SPANS"}


def tei_flag(name: str) -> str:
    """TEI's flag for its variable `name`: MAX_BATCH_TOKENS → --max-batch-tokens."""
    return "--" + name.lower().replace("_", "-")


@dataclass
class TeiNames:
    """Settings taken from TEI's names, and what to say about them at start-up."""

    values: dict[str, str] = field(default_factory=dict)  # setting → value
    sources: dict[str, str] = field(default_factory=dict)  # setting → the TEI name it came from
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def variable(setting: str) -> str:
    return PREFIX + setting.upper()


def _mapping_note(mapping: Maps | str, given: str, value: str, found: TeiNames) -> None:
    """Map one TEI name given as `given` (a variable or a flag) with `value` into `found`."""
    if isinstance(mapping, str):
        found.warnings.append(f"{given} (TEI) has no counterpart here and is ignored: {mapping}")
        return
    converted = mapping.convert(value)
    if converted is None:
        said = found.notes if mapping.expected else found.warnings
        said.append(
            f"{given} (TEI) is ignored: this value has no counterpart ({mapping.otherwise})"
        )
        return
    found.values[mapping.setting] = converted
    found.sources[mapping.setting] = given
    found.notes.append(f"{given} (TEI) is read as {variable(mapping.setting)}")


def read_tei_flags(given: Mapping[str, str], flags: Mapping[str, object]) -> TeiNames:
    """TEI's flags given on the command line (`given`: TEI variable name → value), as
    settings; a setting's own flag (`flags`, by setting name) wins."""
    found = TeiNames()
    for name, value in given.items():
        # A host name given on purpose is an address to listen on (unlike HOSTNAME).
        mapping = Maps("host") if name == "HOSTNAME" else TEI_VARIABLES[name]
        if isinstance(mapping, Maps) and mapping.setting in flags:
            found.notes.append(f"{tei_flag(name)} (TEI) is overridden by its own flag here")
            continue
        _mapping_note(mapping, tei_flag(name), value, found)
    return found


def read_tei_variables(environ: Mapping[str, str], flags: Mapping[str, object]) -> TeiNames:
    """TEI's variables in `environ`, as settings; a setting given by its own `ENCODER_*`
    variable or by a flag (`flags`, by setting name) keeps that value, and the TEI
    variable is said to be overridden."""
    found = TeiNames()
    for name, mapping in TEI_VARIABLES.items():
        if name not in environ:
            continue
        if isinstance(mapping, Maps):
            target = variable(mapping.setting)
            if target in environ or mapping.setting in flags:
                by = target if target in environ else "a flag"
                found.notes.append(f"{name} (TEI) is overridden by {by}")
                continue
        _mapping_note(mapping, name, environ[name], found)
    for name, why in HUB_VARIABLES.items():
        if name in environ:
            found.notes.append(f"{name} is {why}")
    return found
