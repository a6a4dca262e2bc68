"""Command line: `serve` runs the server, `export` builds models, `finetune` tunes classifiers
(`train-head` is its head method), `compress` distils smaller students (app/compress_command.py),
`rebuild` rebuilds tuned models from their committed delta."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from app import __version__
from app.compress_command import add_compress_command
from app.exit_statuses import EXIT_USAGE
from app.export.method_advice import (
    FINETUNE_COMMAND,
    FINETUNE_FLAGS,
    METHOD_ARGUMENT,
    data_and_training_words,
)
from app.export.pair_flags import add_pair_arguments, pair_words, tune_on_pairs
from app.serve_command import serve_command
from app.settings_cli import SettingsError, add_setting_flags, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.engine.manifest import ModelManifest

# What the offline tools raise for bad input (files, names, sources, flags): one line on
# stderr and exit status 2, never a traceback. OSError: unreadable files, a source without
# usable weights; RecursionError: input nested thousands deep.
TOOL_ERRORS = (ValueError, OSError, RecursionError)
MAX_ERROR_CHARS = 2000


def tool_error(command: str, error: BaseException | str) -> int:
    """The tools' one error path: the message on one line of stderr, exit status 2."""
    message = " ".join(str(error).split()) or type(error).__name__
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "…"
    print(f"encoder-serve {command}: {message}", file=sys.stderr)
    return 2


def offline_tool(
    command: str, handler: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """`handler` with the model names checked first (one rule: `model_name_error`) and bad
    input reported through `tool_error`."""

    def run(args: argparse.Namespace) -> int:
        from app.engine.manifest import model_name_error

        names = [args.name] if hasattr(args, "name") else list(getattr(args, "names", []))
        for name in names:
            if (invalid := model_name_error(name)) is not None:
                return tool_error(command, invalid)
        try:
            return handler(args)
        except TOOL_ERRORS as error:
            return tool_error(command, error)

    return run


def replaced_without_force(command: str, target: Path, force: bool) -> bool:
    """True (and the refusal said) when `target` exists and `--force` was not given."""
    if force or not target.exists():
        return False
    tool_error(command, f"{target} already exists; pass --force to replace it")
    return True


def quiet_unless_verbose(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """`handler` with the libraries' expected warnings hidden unless `--verbose`."""

    def run(args: argparse.Namespace) -> int:
        from app.export.library_noise import expected_noise_hidden

        with expected_noise_hidden(args.verbose):
            return handler(args)

    return run


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print the libraries' expected warnings (tracer warnings, transformers' "
        "load reports, ONNX Runtime's quantization advice), hidden by default",
    )


def _export(args: argparse.Namespace) -> int:
    from app.export.exporter import export_model, is_built

    models_dir: Path = args.models_dir or load_settings().models_dir
    if args.skip_existing and is_built(models_dir, args.name, args.precision or ["fp32"]):
        print(f"model '{args.name}' is already built in {models_dir / args.name}; skipping")
        return 0
    if replaced_without_force("export", models_dir / args.name, args.force or args.skip_existing):
        return 2
    models_dir.mkdir(parents=True, exist_ok=True)
    manifest = export_model(
        args.source,
        args.name,
        models_dir,
        task=args.task,
        max_length=args.max_length,
        precisions=args.precision or ["fp32"],
        revision=args.revision,
        allow_untrained_head=args.allow_untrained_head,
    )
    parity = manifest.parity["fp32"]
    print(
        f"exported '{manifest.name}' to {models_dir / manifest.name}: {manifest.dimensions} dims, "
        f"max length {manifest.max_length}, min cosine {parity['min_cosine']:.6f}, "
        f"max abs diff {parity['max_abs_diff']:.2e}"
    )
    return 0


def _train_head(args: argparse.Namespace) -> int:
    from app.export.head_fit import HeadConfig
    from app.export.train_head import train_head

    models_dir: Path = args.models_dir or load_settings().models_dir
    if replaced_without_force("train-head", models_dir / args.name, args.force):
        return 2
    config = HeadConfig(
        **{name: value for name in HEAD_FLAGS if (value := getattr(args, name)) is not None}
    )
    manifest = train_head(
        base=args.base,
        data=args.data,
        name=args.name,
        labels=[label.strip() for label in args.labels.split(",")],
        models_dir=models_dir,
        config=config,
        eval_data=args.eval,
        command=train_head_command(args),
    )
    print(f"trained '{manifest.name}' on '{args.base}': {scores_summary(manifest)}")
    return 0


def scores_summary(manifest: ModelManifest) -> str:
    """A trained classifier's scores in one line, from its manifest's evaluation."""
    scores = manifest.evaluation
    validation = scores.get("validation", {})
    test = f", test accuracy {scores['test']['accuracy']:.4f}" if "test" in scores else ""
    return (
        f"validation accuracy {validation.get('accuracy', 0):.4f}, "
        f"macro-F1 {validation.get('macro_f1', 0):.4f}{test}"
    )


# Hyperparameter flags of `train-head` (defaults live in HeadConfig).
HEAD_FLAGS = {
    "hidden": (int, "hidden ReLU units (0: a linear head)"),
    "members": (int, "independently seeded heads to average"),
    "epochs": (int, "training epochs (learning rate cosine-annealed to zero over them)"),
    "batch_size": (int, "rows per update"),
    "learning_rate": (float, "peak AdamW learning rate"),
    "weight_decay": (float, "AdamW weight decay"),
    "dropout": (float, "dropout after the hidden layer"),
    "input_dropout": (float, "dropout on the input features"),
    "held_out": (float, "share of the data held out to measure the head"),
    "seed": (int, "random seed"),
}


def train_head_command(args: argparse.Namespace) -> str:
    """The command line that reproduces a trained head, recorded in its manifest."""
    words = ["encoder-serve", "train-head", "--base", args.base, "--data", str(args.data)]
    if args.eval:
        words += ["--eval", str(args.eval)]
    words += ["--name", args.name, "--labels", args.labels]
    if args.models_dir:
        words += ["--models-dir", str(args.models_dir)]
    for name in HEAD_FLAGS:
        if (value := getattr(args, name)) is not None:
            words += ["--" + name.replace("_", "-"), str(value)]
    return shlex.join(words)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: scratch directories are removed


def _finetune(args: argparse.Namespace) -> int:
    from app.export.finetune import DataFormat, FinetuneConfig, finetune

    models_dir: Path = args.models_dir or load_settings().models_dir
    if replaced_without_force("finetune", models_dir / args.name, args.force):
        return 2
    if args.task == "classification" and not args.labels:
        return tool_error("finetune", "--labels is required for --task classification")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        given = {name: getattr(args, name) for name in FINETUNE_FLAGS}
        given = {name: value for name, value in given.items() if value is not None}
        config = FinetuneConfig(method=args.method, **given)
        if args.task != "classification":
            return tune_on_pairs(args, models_dir, config, finetune_command(args))
        data_format = DataFormat(
            text_columns=[c.strip() for c in (args.text_column or "").split(",") if c.strip()],
            label_column=args.label_column,
            first_index=args.first_index,
        )
        manifest = finetune(
            base=args.base,
            data=args.data,
            name=args.name,
            labels=[label.strip() for label in args.labels.split(",")],
            models_dir=models_dir,
            config=config,
            data_format=data_format,
            eval_data=args.eval,
            test_data=args.test,
            command=finetune_command(args),
        )
    except KeyboardInterrupt:
        print("encoder-serve finetune: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(
        f"tuned '{manifest.name}' ({args.method}) in {models_dir / manifest.name}: "
        f"{scores_summary(manifest)}"
    )
    return 0


def finetune_command(args: argparse.Namespace) -> str:
    """The command line that reproduces a tuned model, recorded in its manifest."""
    words = ["encoder-serve", "finetune", *pair_words(args), "--method", args.method]
    words += ["--base", args.base, "--data", str(args.data), "--name", args.name]
    words += ["--labels", args.labels] if args.labels else []
    words += data_and_training_words(args, FINETUNE_FLAGS)
    return shlex.join(words)


def _rebuild(args: argparse.Namespace) -> int:
    from app.export.delta import DeltaMismatchError, delta_models, rebuild

    models_dir: Path = args.models_dir or load_settings().models_dir
    names = args.names or delta_models(models_dir)
    for name in names:
        try:
            manifest = rebuild(name, models_dir, skip_existing=args.skip_existing)
        except DeltaMismatchError as error:  # the delta or the base changed: not bad input
            print(f"encoder-serve rebuild: {name}: {error}", file=sys.stderr)
            return 1
        except TOOL_ERRORS as error:
            return tool_error("rebuild", f"{name}: {error}")
        if manifest is None:
            print(f"model '{name}' is already built in {models_dir / name}; skipping")
        else:
            print(f"rebuilt '{name}' from its delta in {models_dir / name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encoder-serve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"encoder-serve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the models of the repository over HTTP")
    add_setting_flags(serve)
    serve.set_defaults(handler=serve_command)

    export = commands.add_parser("export", help="export an encoder into the model repository")
    export.add_argument(
        "source",
        help="a Hugging Face model directory, an installed model package, or a Hugging Face "
        "Hub id (org/name, through the Hugging Face cache: HF_HOME, HF_HUB_OFFLINE, HF_TOKEN)",
    )
    export.add_argument("--revision", help="Hub branch, tag or commit (default: main)")
    export.add_argument("--name", required=True, help="model name (its directory under models/)")
    tasks = ["embedding", "classification", "rerank"]
    detected = "default: from its config (one output over pairs: rerank)"
    export.add_argument("--task", choices=tasks, help=f"what it serves ({detected})")
    export.add_argument("--max-length", type=int, help="max tokens per input (default: model's)")
    export.add_argument(
        "--precision",
        action="append",
        choices=["fp32", "int8", "fp16"],
        help="also build this precision (repeatable; fp32 is always built as the reference)",
    )
    export.add_argument("--models-dir", type=Path, help="model repository (default: models)")
    export.add_argument(
        "--skip-existing", action="store_true", help="do nothing when the model is already built"
    )
    export.add_argument(
        "--force", action="store_true", help="replace a model of the same name in the repository"
    )
    export.add_argument(
        "--allow-untrained-head",
        action="store_true",
        help="export a classifier whose head the source does not hold (initialised at "
        "random), e.g. to fine-tune it afterwards",
    )
    add_verbose_flag(export)
    export.set_defaults(handler=offline_tool("export", quiet_unless_verbose(_export)))

    train = commands.add_parser(
        "train-head", help="train a classification head on a base model's embeddings"
    )
    train.add_argument("--base", required=True, help="embedding model that computes features")
    train.add_argument("--data", type=Path, required=True, help="labelled TSV/CSV (text, label)")
    train.add_argument("--name", required=True, help="model name (its directory under models/)")
    train.add_argument("--labels", required=True, help="comma-separated label names, in order")
    train.add_argument("--eval", type=Path, help="labelled TSV/CSV to report accuracy on")
    train.add_argument("--models-dir", type=Path, help="model repository (default: models)")
    for name, (kind, text) in HEAD_FLAGS.items():
        train.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    train.add_argument(
        "--force", action="store_true", help="replace a model of the same name in the repository"
    )
    train.set_defaults(handler=offline_tool("train-head", _train_head))

    tune = commands.add_parser("finetune", **FINETUNE_COMMAND)
    tune.add_argument("--data", type=Path, required=True, help="labelled CSV, TSV or JSON Lines")
    tune.add_argument("--name", required=True, help="model name (its directory under models/)")
    tune.add_argument(
        "--labels", help="classification: comma-separated label names, in logit order"
    )
    add_pair_arguments(tune)
    tune.add_argument("--method", **METHOD_ARGUMENT)
    tune.add_argument(
        "--base",
        default="minilm",
        help="repository model (its source is tuned; head: its embeddings) or a model "
        "directory / installed package (default: minilm)",
    )
    tune.add_argument("--eval", type=Path, help="validation file (default: a held-out split)")
    tune.add_argument("--test", type=Path, help="labelled file scored once at the end")
    tune.add_argument(
        "--text-column",
        help="text column(s), comma-separated and joined by a space "
        "(default: the first of sentence, content, text)",
    )
    tune.add_argument("--label-column", default="label", help="label column (default: label)")
    tune.add_argument(
        "--first-index",
        type=int,
        default=0,
        help="the number of the first label when labels are numbers (default 0)",
    )
    tune.add_argument("--models-dir", type=Path, help="model repository (default: models)")
    for name, (kind, text) in FINETUNE_FLAGS.items():
        tune.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    tune.add_argument(
        "--force", action="store_true", help="replace a model of the same name in the repository"
    )
    add_verbose_flag(tune)
    tune.set_defaults(handler=offline_tool("finetune", quiet_unless_verbose(_finetune)))

    compress = add_compress_command(
        commands, lambda name, handler: offline_tool(name, quiet_unless_verbose(handler))
    )
    add_verbose_flag(compress)
    rebuild = commands.add_parser(
        "rebuild", help="rebuild tuned models from their committed delta and the installed base"
    )
    rebuild.add_argument("names", nargs="*", help="models to rebuild (default: every delta)")
    rebuild.add_argument("--models-dir", type=Path, help="model repository (default: models)")
    rebuild.add_argument(
        "--skip-existing", action="store_true", help="do nothing for models already built"
    )
    add_verbose_flag(rebuild)
    rebuild.set_defaults(handler=offline_tool("rebuild", quiet_unless_verbose(_rebuild)))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.handler(args))
    except SettingsError as error:  # one line per invalid value, no traceback: usage error
        for line in str(error).splitlines():
            print(f"encoder-serve: {line}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
