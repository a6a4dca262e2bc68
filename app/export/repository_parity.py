"""A Hub repository's own ONNX export checked against its PyTorch weights (needs torch).

Run by `serve --model-id` in a child process, so that the serving process never imports
torch: `python -m app.export.repository_parity SNAPSHOT GRAPH TOKENIZER MAX_LENGTH POOLING`
prints the parity report as JSON; exit status 0 when it holds, 1 (and one line on stderr)
when the graph disagrees, 2 when the weights cannot be loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app.export.exporter import MIN_COSINE, check_parity, parity_holds
from app.export.source import loading


def main(argv: list[str]) -> int:
    snapshot, graph, tokenizer_file, max_length, pooling = argv
    from transformers import AutoModel

    from app.engine.models.tokenization import TextTokenizer

    try:
        with loading(snapshot):
            model = AutoModel.from_pretrained(snapshot, attn_implementation="eager").eval()
    except ValueError as error:  # SourceError: weights missing or unreadable
        print(error, file=sys.stderr)
        return 2
    tokenizer = TextTokenizer(Path(tokenizer_file), int(max_length))
    report = check_parity(model, Path(graph), tokenizer, pooling)  # type: ignore[arg-type]
    print(json.dumps(report.as_dict()))
    if not parity_holds(report, "last_hidden_state"):
        print(
            f"the repository's ONNX export disagrees with its PyTorch weights: min cosine "
            f"{report.min_cosine:.6f} (gate {MIN_COSINE}), max abs diff "
            f"{report.max_abs_diff:.2e}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
