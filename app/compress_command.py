"""`encoder-serve compress`: its flags and handler (app/export/compress/ does the work).

Registered by app/cli.py, which wraps the handler in its `offline_tool` (model names checked,
bad input one line on stderr with exit status 2); torch is imported only when it runs.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.export.method_advice import data_and_training_words
from app.settings_cli import load_settings

Handler = Callable[[argparse.Namespace], int]

# Training flags (type, help with the default); None given: CompressConfig's default.
COMPRESS_FLAGS: dict[str, tuple[type, str]] = {
    "keep_layers": (
        str,
        "teacher layers the student keeps, e.g. 0,3,5 (every other, ending "
        "with the last: 1,3,5 of 6)",
    ),
    "intermediate_size": (
        int,
        "feed-forward neurons each kept layer keeps, its strongest (default: all, e.g. 1536)",
    ),
    "method": (
        str,
        "full: every weight but the vocabulary; lora: adapters on the kept layers (full)",
    ),
    "temperature": (float, "softens teacher and student logits for distillation (2.0)"),
    "label_weight": (float, "share of the loss on true labels when the file has them (0.5)"),
    "vector_loss": (str, "embedding students: cosine or mse to the teacher's vectors (cosine)"),
    "epochs": (int, "passes over the training data (3)"),
    "max_steps": (int, "stop after this many updates (0: the epochs decide)"),
    "batch_size": (int, "examples per update (32)"),
    "learning_rate": (float, "peak AdamW learning rate (1e-4; use 1e-3 with --method lora)"),
    "weight_decay": (float, "AdamW weight decay (0.01)"),
    "warmup": (float, "share of the updates warming the learning rate up (0.06)"),
    "max_length": (int, "tokens per text, trained and served (default: the teacher's)"),
    "validation": (float, "share held out for validation without --eval (0.1)"),
    "eval_every": (int, "updates between validation passes (0: once per epoch)"),
    "patience": (int, "validation passes without improvement before stopping (3)"),
    "seed": (int, "random seed: data order, dropout, validation split (0)"),
    "lora_rank": (int, "LoRA rank (16)"),
    "lora_alpha": (int, "LoRA alpha (32)"),
    "lora_dropout": (float, "LoRA dropout (0.1)"),
}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: scratch directories are removed


def compress_command_line(args: argparse.Namespace) -> str:
    """The command line that reproduces a student, recorded in its manifest."""
    words = ["encoder-serve", "compress", "--from", args.teacher, "--name", args.name]
    words += ["--data", str(args.data)]
    words += data_and_training_words(args, COMPRESS_FLAGS)
    return shlex.join(words)


def _compress(args: argparse.Namespace) -> int:
    from app.export.compress import CompressConfig, compress
    from app.export.finetune.config import DataFormat

    models_dir: Path = args.models_dir or load_settings().models_dir
    target = models_dir / args.name
    if target.exists() and not args.force:
        raise ValueError(f"{target} already exists; pass --force to replace it")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        given: dict[str, Any] = {name: getattr(args, name) for name in COMPRESS_FLAGS}
        config = CompressConfig(**{k: v for k, v in given.items() if v is not None})
        data_format = DataFormat(
            text_columns=[c.strip() for c in (args.text_column or "").split(",") if c.strip()],
            label_column=args.label_column,
            first_index=args.first_index,
        )
        manifest = compress(
            teacher=args.teacher,
            data=args.data,
            name=args.name,
            models_dir=models_dir,
            config=config,
            data_format=data_format,
            eval_data=args.eval,
            test_data=args.test,
            command=compress_command_line(args),
        )
    except KeyboardInterrupt:
        print("encoder-serve compress: interrupted; nothing was written", file=sys.stderr)
        return 130
    evaluation = manifest.evaluation
    validation = evaluation["validation"]
    teacher = evaluation["teacher_validation"]
    if "accuracy" in validation and "accuracy" in teacher:
        quality = (
            f"validation accuracy {validation['accuracy']:.4f} (teacher {teacher['accuracy']:.4f})"
        )
    elif "mean_cosine_to_teacher" in validation:
        quality = f"mean cosine to the teacher {validation['mean_cosine_to_teacher']:.4f}"
    else:
        quality = f"agreement with the teacher {validation['agreement_with_teacher']:.4f}"
    print(
        f"compressed '{evaluation['teacher']}' into '{manifest.name}' ({manifest.num_layers} "
        f"layers) in {models_dir / manifest.name}: {quality}, "
        f"{evaluation['speedup']['ratio']:.2f} x its engine throughput (fp32, batch 32)"
    )
    return 0


def add_compress_command(
    commands: Any, wrap: Callable[[str, Handler], Handler]
) -> argparse.ArgumentParser:
    """`compress`'s parser on `commands` (argparse sub-parsers), returned; `wrap`: how
    app/cli.py wraps an offline tool's handler."""
    parser = commands.add_parser(
        "compress",
        help="distil a smaller, faster student of a served model (layers dropped)",
        description="Make a student of a served classifier or embedding model: some of its "
        "encoder layers kept, then trained on the teacher's outputs over a text file "
        "(unlabelled text is enough). Its accuracy beside the teacher's and its measured "
        "speed-up go into model.json's evaluation.",
    )
    parser.add_argument(
        "--from",
        dest="teacher",
        required=True,
        help="the teacher: a model directory (models/sentiment) or a repository model name",
    )
    parser.add_argument("--name", required=True, help="the student's name (its directory)")
    parser.add_argument(
        "--data", type=Path, required=True, help="texts: .txt (one a line), CSV, TSV or JSON Lines"
    )
    parser.add_argument("--eval", type=Path, help="validation file (default: a held-out split)")
    parser.add_argument("--test", type=Path, help="file scored once at the end, teacher beside")
    parser.add_argument(
        "--text-column",
        help="text column(s), comma-separated and joined by a space "
        "(default: the first of sentence, content, text)",
    )
    parser.add_argument(
        "--label-column", default="label", help="label column, used when present (default: label)"
    )
    parser.add_argument(
        "--first-index",
        type=int,
        default=0,
        help="the number of the first label when labels are numbers (default 0)",
    )
    parser.add_argument("--models-dir", type=Path, help="model repository (default: models)")
    for name, (kind, text) in COMPRESS_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    parser.add_argument(
        "--force", action="store_true", help="replace a model of the same name in the repository"
    )
    parser.set_defaults(handler=wrap("compress", _compress))
    return parser
