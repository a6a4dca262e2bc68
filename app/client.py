"""The Python client's former import path, kept for existing users: it lives in the
`encoder_serve_client` package now (installable without the server)."""

from encoder_serve_client import client as _client
from encoder_serve_client.client import *  # noqa: F403 -- the public names are client's __all__

__all__ = _client.__all__
