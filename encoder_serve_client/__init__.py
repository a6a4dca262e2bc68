"""encoder-serve's Python client: `from encoder_serve_client import EncoderClient`.

Installable on its own, without the server (`pip install ./encoder_serve_client`: it needs
only httpx); `app.client`, its former import path, re-exports it.
"""

from encoder_serve_client import client as _client
from encoder_serve_client.client import *  # noqa: F403 -- the public names are client's __all__

__version__ = "0.1.0"  # keep equal to encoder_serve_client/pyproject.toml's version

__all__ = _client.__all__
