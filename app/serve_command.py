"""`encoder-serve serve`: settings (TEI's names too), the port, the models, then the server.

Every start-up failure is one plain line on stderr and one exit status per kind (README
"Start-up errors and exit statuses"); the port is bound before any model loads or any Hub
model is prepared, so a busy port is said at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.engine.manifest import ManifestError
from app.exit_statuses import EXIT_FAILURE, EXIT_MODELS, EXIT_PORT
from app.settings_cli import given_settings, load_settings, tei_names, unknown_variables


def startup_error(status: int, message: object) -> int:
    """A start-up failure: one plain line on stderr, and its exit status."""
    print(f"encoder-serve: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def models_dir_error(models_dir: Path) -> str | None:
    """Why the model repository cannot be served from, before anything else starts; the
    fix for the default repository is `make models`, for another exporting into it."""
    from app.config import Settings

    default = models_dir == Settings.model_fields["models_dir"].default
    build = (
        "run `make models` to build the default models"
        if default
        else f"export a model into it: encoder-serve export SOURCE --name NAME --models-dir "
        f"{models_dir}"
    )
    where = (
        str(models_dir) if models_dir.is_absolute() else f"{models_dir} ({models_dir.resolve()})"
    )
    if not models_dir.is_dir():
        what = "does not exist" if not models_dir.exists() else "is not a directory"
        return f"the model repository {where} {what} (ENCODER_MODELS_DIR); {build}"
    if not any(models_dir.glob("*/model.json")):
        return f"the model repository {where} holds no model (no */model.json); {build}"
    return None


def serve_command(args: argparse.Namespace) -> int:
    from app.engine.errors import ModelLoadError
    from app.hub_models import HubModelError, prepare_hub_models
    from app.logs import configure_logging
    from app.processes import Supervisor, bind_listener
    from app.sizing import sizing_line, worker_count

    tei = tei_names(args)
    for warning in [*unknown_variables(), *tei.warnings]:
        print(f"encoder-serve: warning: {warning}", file=sys.stderr)
    for note in tei.notes:
        print(f"encoder-serve: {note}", file=sys.stderr)
    settings = load_settings(given_settings(args), tei)
    if settings.pooling is not None and not settings.model_id:
        print(
            "encoder-serve: warning: ENCODER_POOLING applies to ENCODER_MODEL_ID models only "
            "and is ignored (a repository model's pooling is in its model.json)",
            file=sys.stderr,
        )
    if not settings.model_id and (problem := models_dir_error(settings.models_dir)):
        return startup_error(EXIT_MODELS, problem)
    configure_logging(settings.log_level, settings.log_format)
    try:  # before any model loads: a busy port is said at once
        listener = bind_listener(settings.host, settings.port)
    except OSError as error:
        why = error.strerror or error
        return startup_error(
            EXIT_PORT,
            f"cannot listen on {settings.host}:{settings.port}: {why}; stop what uses it or "
            "choose another port (--port, ENCODER_PORT)",
        )
    if settings.model_id:
        try:
            settings = prepare_hub_models(settings, lambda line: print(line, file=sys.stderr))
        except (HubModelError, ManifestError, OSError) as error:  # OSError: the cache's disk
            listener.close()
            return startup_error(EXIT_MODELS, error)
    workers = worker_count(settings.workers)
    logging.getLogger("app.sizing").info(sizing_line(settings, workers))
    if workers > 1:
        return Supervisor(settings, workers, listener).run()
    from app.api.app import create_app
    from app.api.server import serve

    app = create_app(settings)
    state = app.state.server
    serve(state, app, sockets=[listener])
    fatal = state.fatal_error
    if fatal is not None:
        status = EXIT_MODELS if isinstance(fatal, ModelLoadError) else EXIT_FAILURE
        return startup_error(status, fatal)
    return 0
