"""Every TEI launcher flag and variable maps onto a setting or is warned about: none is
ignored silently."""

from __future__ import annotations

import pytest

from app.cli import build_parser
from app.config import Settings
from app.settings_cli import given_settings, load_settings, tei_names
from app.tei_names import BARE_FLAGS, TEI_VARIABLES, Maps, read_tei_variables, tei_flag

# A value TEI accepts for each variable (and that maps, where it can).
SAMPLES = {
    "MODEL_ID": "BAAI/bge-small-en-v1.5",
    "REVISION": "refs/pr/2",
    "TOKENIZATION_WORKERS": "4",
    "DTYPE": "float16",
    "SERVED_MODEL_NAME": "bge",
    "POOLING": "cls",
    "MAX_CONCURRENT_REQUESTS": "512",
    "MAX_BATCH_TOKENS": "8192",
    "MAX_BATCH_REQUESTS": "16",
    "MAX_CLIENT_BATCH_SIZE": "64",
    "AUTO_TRUNCATE": "true",
    "DEFAULT_PROMPT_NAME": "query",
    "DEFAULT_PROMPT": "query: ",
    "DENSE_PATH": "2_Dense",
    "DEVICE_ID": "1",
    "HF_API_TOKEN": "hf_x",
    "HOSTNAME": "127.0.0.1",
    "PORT": "3000",
    "UDS_PATH": "/tmp/tei",
    "PAYLOAD_LIMIT": "2000000",
    "API_KEY": "secret",
    "JSON_OUTPUT": "false",
    "DISABLE_SPANS": "true",
    "OTLP_ENDPOINT": "http://localhost:4317",
    "OTLP_SERVICE_NAME": "tei",
    "PROMETHEUS_PORT": "9000",
    "CORS_ALLOW_ORIGIN": "http://example.com",
}


def test_the_samples_cover_every_tei_variable() -> None:
    assert set(SAMPLES) == set(TEI_VARIABLES)


@pytest.mark.parametrize("name", sorted(TEI_VARIABLES))
def test_each_tei_variable_maps_or_warns(name: str) -> None:
    found = read_tei_variables({name: SAMPLES[name]}, {})
    mapping = TEI_VARIABLES[name]
    if isinstance(mapping, Maps):
        assert found.notes == [f"{name} (TEI) is read as ENCODER_{mapping.setting.upper()}"]
        assert not found.warnings
        settings = Settings(**found.values)  # a value the setting takes
        assert getattr(settings, mapping.setting) not in (None, [], {})
    else:
        assert not found.values and len(found.warnings) == 1
        assert found.warnings[0].startswith(f"{name} (TEI) has no counterpart here")


@pytest.mark.parametrize("name", sorted(TEI_VARIABLES))
def test_each_tei_flag_maps_or_warns(name: str) -> None:
    args = build_parser().parse_args(["serve", tei_flag(name), SAMPLES[name]])
    found = tei_names(args, environ={})
    flags = given_settings(args)
    mapping = TEI_VARIABLES[name]
    if isinstance(mapping, Maps):
        # Either TEI's flag is this server's own flag for the setting, or it maps onto it.
        assert mapping.setting in flags or mapping.setting in found.values
        settings = load_settings(flags, found)
        assert getattr(settings, mapping.setting) not in (None, [], {})
    else:
        assert len(found.warnings) == 1 and tei_flag(name) in found.warnings[0]


@pytest.mark.parametrize("name", sorted(BARE_FLAGS))
def test_tei_boolean_flags_need_no_value(name: str) -> None:
    args = build_parser().parse_args(["serve", tei_flag(name)])
    found = tei_names(args, environ={})
    assert found.values or found.warnings or given_settings(args)


def test_auto_truncate_alone_turns_it_on() -> None:
    args = build_parser().parse_args(["serve", "--auto-truncate"])
    assert load_settings(given_settings(args), tei_names(args, environ={})).auto_truncate


def test_values_without_a_counterpart_are_warned_about() -> None:
    found = read_tei_variables({"DTYPE": "bfloat16", "POOLING": "splade"}, {})
    assert not found.values and len(found.warnings) == 2


def test_a_machine_name_in_hostname_is_noted_not_listened_on() -> None:
    found = read_tei_variables({"HOSTNAME": "build-box-7"}, {})
    assert not found.values and not found.warnings
    assert "HOSTNAME (TEI) is ignored" in found.notes[0]
    assert read_tei_variables({"HOSTNAME": "0.0.0.0"}, {}).values == {"host": "0.0.0.0"}
    # Given as TEI's flag, a name is what the user asked for.
    args = build_parser().parse_args(["serve", "--hostname", "localhost"])
    assert tei_names(args, environ={}).values == {"host": "localhost"}


def test_encoder_variables_and_flags_win_over_tei_names() -> None:
    found = read_tei_variables({"PORT": "3000", "ENCODER_PORT": "8001"}, {})
    assert found.values == {} and found.notes == ["PORT (TEI) is overridden by ENCODER_PORT"]
    args = build_parser().parse_args(["serve", "--port", "9000", "--max-inputs-per-request", "8",
                                      "--max-client-batch-size", "64"])  # fmt: skip
    found = tei_names(args, environ={"PORT": "3000"})
    settings = load_settings(given_settings(args), found)
    assert (settings.port, settings.max_inputs_per_request) == (9000, 8)


def test_an_invalid_tei_value_names_the_tei_variable() -> None:
    from app.settings_cli import SettingsError

    found = read_tei_variables({"PORT": "three thousand"}, {})
    with pytest.raises(SettingsError, match=r"invalid PORT \(TEI's name for ENCODER_PORT\)"):
        load_settings({}, found)
