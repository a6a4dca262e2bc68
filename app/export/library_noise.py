"""The offline tools' expected library warnings, hidden unless `--verbose`.

Building a model makes the libraries print warnings that are expected here, each covered by
a check that follows (the parity gates, the untrained-head refusal, the delta's recorded
logits): the TorchScript tracer's ("Converting a tensor to a Python boolean", "Exporting
aten::index"), torch's notes on its legacy exporter, transformers' load reports (a
classifier head "newly initialized" or MISSING before a delta brings it, the base's unused
pooler UNEXPECTED), its weight-loading progress bar and its deprecation notes to peft, and
ONNX Runtime's advice to pre-process a graph before quantizing it. A newcomer reads them as
failures, so they are hidden by default; every other warning and log line still shows.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

# Python warnings (message starts), from torch's TorchScript-based ONNX exporter.
EXPECTED_WARNINGS = (
    "Converting a tensor to a Python boolean",
    "Exporting aten::",
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
    "Constant folding",
    # transformers' note to peft (merging a tuned model's adapter), not to the user.
    "`is_gradient_checkpointing` is deprecated",
)
# Log records, from transformers' loading (its load report and "newly initialized" note)
# and ONNX Runtime's quantizer (which logs on the root logger).
EXPECTED_LOG_LINES = re.compile(
    r"newly initialized|LOAD REPORT|\bMISSING\b|\bUNEXPECTED\b|were not used when initializing"
    r"|Please consider to run pre-processing before quantization"
)


# A load report with these is a real problem (transformers raises after it): always shown.
REAL_PROBLEMS = re.compile(r"\bMISMATCH\b|\bCONVERSION\b")


class _ExpectedLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not EXPECTED_LOG_LINES.search(message) or bool(REAL_PROBLEMS.search(message))


@contextmanager
def expected_noise_hidden(verbose: bool = False) -> Iterator[None]:
    """Inside, the expected library warnings are not printed (all of them with `verbose`)."""
    if verbose:
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for start in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(start))
        _configure_transformers_logging()  # its handler exists before the filters go on
        hidden = _ExpectedLines()
        # The root logger's own records (ONNX Runtime logs there), and every handler that
        # prints records propagated from libraries' loggers (transformers has its own).
        loggers = [logging.getLogger(), logging.getLogger("transformers")]
        handlers = [handler for logger in loggers for handler in logger.handlers]
        for target in [*loggers, *handlers, logging.lastResort]:
            if target is not None:
                target.addFilter(hidden)
                stack.callback(target.removeFilter, hidden)
        stack.enter_context(_transformers_progress_bars_off())
        yield


def _configure_transformers_logging() -> None:
    """transformers adds its handler on first use of its logging: make that now."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # not installed: nothing of it to hide
        return
    transformers_logging.get_logger("transformers")


@contextmanager
def _transformers_progress_bars_off() -> Iterator[None]:
    """transformers' "Loading weights" bar: a few lines of noise for a model that loads in
    under a second."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # not installed: nothing of it to hide
        yield
        return
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
