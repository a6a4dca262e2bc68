"""A large body is parsed with the cyclic collector paused, and the collector is left as it
was, whether the body parses or not."""

from __future__ import annotations

import gc
import json

import orjson
import pytest

from app.api.bodies import PAUSE_COLLECTOR_BYTES, parse_json

LARGE = orjson.dumps({"input": [[101, 102]] * (PAUSE_COLLECTOR_BYTES // 8)})


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_left_as_it_was(enabled: bool) -> None:
    assert len(LARGE) >= PAUSE_COLLECTOR_BYTES
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        assert len(parse_json(LARGE)["input"]) == PAUSE_COLLECTOR_BYTES // 8
        with pytest.raises(json.JSONDecodeError):  # the standard library tells why
            parse_json(LARGE[:-1] + b"x")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
