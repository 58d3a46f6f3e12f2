"""The broker's own numbers, from the management HTTP API.

Statistics refresh every ``collect_statistics_interval`` (1 s on brokers voicelab
starts, 5 s by default elsewhere), so :meth:`Management.wait_for` polls.

Example::

    mgmt = Management(broker)
    mgmt.queue("voice_jobs")["messages_unacknowledged"]
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any, Callable

import requests

from .broker import Broker, BrokerError


class Management:
    """A small client of the management API of ``broker``."""

    def __init__(self, broker: Broker, timeout: float = 5.0) -> None:
        if not broker.management_url:
            raise BrokerError(
                f"{broker!r} has no management URL: set VOICELAB_MANAGEMENT_URL (e.g. http://localhost:15672) "
                "and enable the rabbitmq_management plugin")
        self.base = broker.management_url.rstrip("/") + "/api"
        self.vhost = urllib.parse.quote(broker.vhost, safe="")
        self.session = requests.Session()
        self.session.auth = (broker.username, broker.password)
        self.timeout = timeout

    def get(self, path: str) -> Any:
        r = self.session.get(f"{self.base}/{path}", timeout=self.timeout)
        r.raise_for_status()
        return r.json()

    def overview(self) -> dict[str, Any]:
        return self.get("overview")

    def queue(self, name: str) -> dict[str, Any]:
        """A queue's counters (``messages_ready``, ``messages_unacknowledged``, ``consumers``, ...)."""
        return self.get(f"queues/{self.vhost}/{urllib.parse.quote(name, safe='')}")

    def bindings(self, exchange: str) -> list[dict[str, Any]]:
        """Bindings whose source is ``exchange``."""
        return self.get(f"exchanges/{self.vhost}/{urllib.parse.quote(exchange, safe='')}/bindings/source")

    def wait_for(self, queue: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        """Poll ``queue`` until ``predicate(counters)`` holds; return the counters (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue(queue)
            if predicate(q):
                return q
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue {queue!r} did not reach the expected state in {timeout} s: {q}")
            time.sleep(0.25)

    def close(self) -> None:
        self.session.close()
