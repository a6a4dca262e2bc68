"""The libraries' expected warnings are hidden while building, real ones still show, and
`--verbose` shows everything."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from app.export.library_noise import _configure_transformers_logging, expected_noise_hidden

TRACER = "Converting a tensor to a Python boolean might cause the trace to be incorrect."
QUANTIZER = "Please consider to run pre-processing before quantization. Refer to example: …"
LOAD_REPORT = "BertForSequenceClassification LOAD REPORT from: x\nclassifier.weight | MISSING"


def emit() -> None:
    warnings.warn(TRACER, UserWarning, stacklevel=1)
    warnings.warn("a real problem with the graph", UserWarning, stacklevel=1)
    logging.getLogger().warning(QUANTIZER)
    logging.getLogger().warning("a real root warning")
    logging.getLogger("transformers.modeling_utils").warning(LOAD_REPORT)
    logging.getLogger("transformers.modeling_utils").warning(
        LOAD_REPORT + "\nencoder.weight | MISMATCH"  # transformers raises after this one
    )


class Collected(logging.Handler):
    """Every record that reaches a handler, as a library's own handler would print it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def printed() -> Iterator[Collected]:
    """A handler on the root logger (as onnxruntime's basicConfig leaves one) and on
    transformers' library logger (where its own handler sits)."""
    handler = Collected()
    loggers = [logging.getLogger(), logging.getLogger("transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    # transformers' logger propagates to the root only when the variable CI is set (as in
    # CI runs); a user's shell has it off, so each record is printed once, by one handler.
    library = logging.getLogger("transformers")
    propagated = library.propagate
    _configure_transformers_logging()
    library.propagate = False
    yield handler
    library.propagate = propagated
    for logger in loggers:
        logger.removeHandler(handler)


def said(printed: Collected, caught: list[warnings.WarningMessage]) -> str:
    return "\n".join([*printed.lines, *(str(w.message) for w in caught)])


def run(verbose: bool, printed: Collected) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with expected_noise_hidden(verbose):
            emit()
    return said(printed, caught)


def test_expected_warnings_are_hidden_and_real_ones_shown(printed: Collected) -> None:
    text = run(False, printed)
    assert TRACER not in text and QUANTIZER not in text
    assert "a real problem with the graph" in text and "a real root warning" in text
    assert text.count("LOAD REPORT") == 1 and "MISMATCH" in text


def test_verbose_shows_everything(printed: Collected) -> None:
    text = run(True, printed)
    assert TRACER in text and QUANTIZER in text and text.count("LOAD REPORT") == 2


def test_the_filters_end_with_the_build(printed: Collected) -> None:
    with expected_noise_hidden():
        pass
    logging.getLogger().warning(QUANTIZER)
    assert printed.lines == [QUANTIZER]
