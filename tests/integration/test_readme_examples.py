"""The README's examples, extracted from the README and run as written against a real server.

Run here: every shell block of `curl` commands (its output compared with the JSON the
README shows after it, or on the line after `# HTTP <status>`), and every Python block
that talks to `localhost:8000` (executed; async `main` functions are awaited). Only the
address changes, to the test server's. Not run: command synopses with `[optional]`
parts, `make`, Docker and Kubernetes commands (the deploy tests check those files), and
diagrams.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

import numpy as np
import pytest

from tests.conftest import ROOT, LiveServer

README = ROOT / "README.md"
BLOCK = re.compile(r"^( *)```(\w*)\n(.*?)^\1```\n", re.S | re.M)
ADDRESS = re.compile(r"(http://)?localhost:8000")


def blocks(language: str) -> list[tuple[int, str, str]]:
    """(line, code, the text that follows up to the next block) for each block of `language`."""
    text = README.read_text()
    found = []
    for match in BLOCK.finditer(text):
        if match.group(2) != language:
            continue
        indent = len(match.group(1))
        code = "\n".join(line[indent:] for line in match.group(3).splitlines())
        found.append((text[: match.start()].count("\n") + 1, code, text[match.end() :]))
    return found


CURL_BLOCKS = [(line, code, rest) for line, code, rest in blocks("sh") if code.startswith("curl ")]
PYTHON_BLOCKS = [(line, code) for line, code, _ in blocks("python") if ADDRESS.search(code)]


def test_the_readme_has_examples_to_run() -> None:
    assert len(CURL_BLOCKS) >= 2 and len(PYTHON_BLOCKS) >= 2


def assert_same_json(shown: object, got: object, where: str) -> None:
    """Equal, numbers within float32 rounding (a model's vectors vary in the last digits)."""
    if isinstance(shown, dict):
        assert isinstance(got, dict) and set(got) == set(shown), (where, got)
        for key in shown:
            assert_same_json(shown[key], got[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), (where, got)
        for index, (a, b) in enumerate(zip(shown, got, strict=True)):
            assert_same_json(a, b, f"{where}[{index}]")
    elif isinstance(shown, float):
        assert isinstance(got, int | float) and np.isclose(got, shown, atol=1e-4), (where, got)
    else:
        assert got == shown, (where, got)


@pytest.mark.parametrize(
    ("line", "code", "rest"), CURL_BLOCKS, ids=[f"line-{b[0]}" for b in CURL_BLOCKS]
)
def test_curl_examples_answer_what_the_readme_shows(
    server: LiveServer, line: int, code: str, rest: str
) -> None:
    command_lines = code.splitlines()
    status_line = next(
        (i for i, text in enumerate(command_lines) if text.startswith("# HTTP ")), None
    )
    if status_line is not None:  # the answer is shown inside the block, after its status
        command = "\n".join(command_lines[:status_line])
        shown = "\n".join(command_lines[status_line + 1 :])
        status = int(command_lines[status_line].split()[2])
    else:  # the answer is the ```json block right after this one
        following = BLOCK.match(rest.lstrip("\n"))
        assert following and following.group(2) == "json", f"README line {line}: no output shown"
        command, shown, status = code, following.group(3), 200
    command = ADDRESS.sub(server.url, command)
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert_same_json(json.loads(shown), json.loads(result.stdout), f"README line {line}")
    with_status = subprocess.run(
        ["bash", "-c", command.replace("curl -s", "curl -s -o /dev/null -w '%{http_code}'", 1)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert with_status.stdout == str(status)


@pytest.mark.parametrize(
    ("line", "code"), PYTHON_BLOCKS, ids=[f"line-{b[0]}" for b in PYTHON_BLOCKS]
)
def test_python_examples_run_as_written(server: LiveServer, line: int, code: str) -> None:
    namespace: dict[str, object] = {"__name__": f"readme_line_{line}"}
    exec(compile(ADDRESS.sub(server.url, code), f"README.md:{line}", "exec"), namespace)
    main = namespace.get("main")
    if asyncio.iscoroutinefunction(main):
        asyncio.run(main())
