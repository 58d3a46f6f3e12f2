"""The broker's own numbers, from the management HTTP API.

Queue counters step every 5 s, whatever ``collect_statistics_interval`` says
(voicelab's brokers set it to 1 s, yet the management agent keeps its samples at
5 s granularity): :meth:`Management.wait_for` polls, and plots say so.

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

    def connection_states(self) -> dict[str, int]:
        """How many client connections are in each state: ``running``, ``blocked`` (a publisher the broker
        stopped reading from during a memory or disk alarm), ``blocking`` (one that has not published since
        the alarm: it will be blocked when it does), ``flow``, ...; one listing of ``/api/connections``.

        A new connection, or a state change, appears in the listing up to about 5 s late (the management
        API's granularity). Example::

            Management(broker).connection_states()    # {'running': 3} or, during an alarm, {'blocked': 1, ...}
        """
        states: dict[str, int] = {}
        for c in self.get("connections?columns=state"):
            states[str(c.get("state"))] = states.get(str(c.get("state")), 0) + 1
        return states

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

    def close_connections(self, name_prefix: str, reason: str = "closed by voicelab", timeout: float = 10.0) -> int:
        """Force-close every client connection whose ``connection_name`` starts with ``name_prefix``.

        ``DELETE /api/connections/{name}`` with an ``X-Reason`` header: the broker
        closes the connection (320 CONNECTION_FORCED) and requeues its unacked
        messages. Polls up to ``timeout`` s until at least one such connection is
        listed; returns how many were closed (0 if none appeared).

        Example::

            Management(broker).close_connections("voicelab-reconnect")   # 1: the consumer must reconnect
        """
        if not name_prefix:
            raise ValueError(f"name_prefix must be a non-empty string, got {name_prefix!r}")
        deadline = time.monotonic() + timeout
        while True:
            names = [c["name"] for c in self.get("connections")
                     if str((c.get("client_properties") or {}).get("connection_name", "")).startswith(name_prefix)]
            if names or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        closed = 0
        for name in names:
            r = self.session.delete(f"{self.base}/connections/{urllib.parse.quote(name, safe='')}",
                                    headers={"X-Reason": reason}, timeout=self.timeout)
            if r.status_code in (200, 204):
                closed += 1
            elif r.status_code != 404:   # 404: it went away by itself meanwhile
                r.raise_for_status()
        return closed

    def close(self) -> None:
        self.session.close()
