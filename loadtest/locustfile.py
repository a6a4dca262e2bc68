"""Ad-hoc load from Locust's browser UI: fresh single texts and 32-text batches on /encode.

    .venv/bin/python -m locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

from the repository root (`python -m` puts it on the import path for `loadtest.texts`),
then open http://localhost:8089. Locust (gevent, pure Python) costs far more CPU per
request than wrk: on a small machine it competes with the server, so use `make bench`
for figures and this for exploring (ramps, spikes, many users) by hand.
"""

from __future__ import annotations

import random

from locust import FastHttpUser, between, task

from loadtest.texts import TextSource


class EncodeUser(FastHttpUser):
    """One client: mostly single texts, now and then a batch, never the same text twice."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        # A seed per user, so concurrent users send different texts.
        self.texts = TextSource(seed=random.getrandbits(64))

    @task(10)
    def encode_one(self) -> None:
        self.client.post("/encode", json={"inputs": self.texts.take(1)[0]}, name="/encode (1)")

    @task(1)
    def encode_batch(self) -> None:
        self.client.post("/encode", json={"inputs": self.texts.take(32)}, name="/encode (32)")
