"""Command line: `encoder-serve serve` runs the server, `encoder-serve export` builds models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.config import Settings


def _serve(args: argparse.Namespace) -> int:
    from app.api.app import create_app
    from app.api.server import serve
    from app.logs import configure_logging

    overrides = {
        key: value for key in ("host", "port", "models_dir") if (value := getattr(args, key))
    }
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    state = app.state.server
    serve(state, app, settings.host, settings.port, settings.access_log)
    error = state.fatal_error
    if error is not None:
        print(f"encoder-serve: {error}", file=sys.stderr)
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from app.export.exporter import export_model, is_built

    models_dir: Path = args.models_dir or Settings().models_dir
    if args.skip_existing and is_built(models_dir, args.name, args.precision or ["fp32"]):
        print(f"model '{args.name}' is already built in {models_dir / args.name}; skipping")
        return 0
    models_dir.mkdir(parents=True, exist_ok=True)
    manifest = export_model(
        args.source,
        args.name,
        models_dir,
        task=args.task,
        max_length=args.max_length,
        precisions=args.precision or ["fp32"],
    )
    parity = manifest.parity["fp32"]
    print(
        f"exported '{manifest.name}' to {models_dir / manifest.name}: {manifest.dimensions} dims, "
        f"max length {manifest.max_length}, min cosine {parity['min_cosine']:.6f}, "
        f"max abs diff {parity['max_abs_diff']:.2e}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encoder-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the models of the repository over HTTP")
    serve.add_argument("--host", help="bind address (ENCODER_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (ENCODER_PORT, default 8000)")
    serve.add_argument("--models-dir", type=Path, help="model repository (ENCODER_MODELS_DIR)")
    serve.set_defaults(handler=_serve)

    export = commands.add_parser("export", help="export an encoder into the model repository")
    export.add_argument("source", help="Hugging Face model directory or installed model package")
    export.add_argument("--name", required=True, help="model name (its directory under models/)")
    export.add_argument("--task", default="embedding", choices=["embedding", "classification"])
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
    export.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))
