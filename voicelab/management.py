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


def get_once_more_if_dropped(session: requests.Session, url: str, **kwargs: Any) -> requests.Response:
    """``session.get(url)``, sent once more on a new connection if the server closed the kept-alive connection
    the request went out on ("Remote end closed connection without response"): the broker's HTTP server closes
    a connection idle for a few seconds, and a request sent at that moment is lost. A busy machine makes that
    race likely (seen in CI at load average 20). Any other failure, and a second one, is raised."""
    try:
        return session.get(url, **kwargs)
    except requests.ConnectionError as e:
        if "RemoteDisconnected" not in repr(e) and "Remote end closed connection" not in str(e):
            raise
        return session.get(url, **kwargs)


def count_states(listing: list[Any]) -> dict[str, int]:
    """Connections per ``state`` in a listing of ``/api/connections?columns=...``.

    A connection the management database lists before its first statistics arrive (or after its last,
    while it closes) has no ``state``: it counts as ``"unknown"``. With ``columns=state`` alone, such a
    connection is not even an object: the broker filters its fields down to none, and an empty Erlang
    proplist is encoded as an empty JSON *list* (seen on 4.0 during connection churn); listing ``name``
    too keeps every element an object, and an element that is not one still counts as ``"unknown"``.

    >>> count_states([{"name": "a", "state": "running"}, {"name": "b"}, [], {"name": "c", "state": "blocked"}])
    {'running': 1, 'unknown': 2, 'blocked': 1}
    """
    states: dict[str, int] = {}
    for c in listing:
        state = str(c.get("state") or "unknown") if isinstance(c, dict) else "unknown"
        states[state] = states.get(state, 0) + 1
    return states


class Management:
    """A small client of the management API of ``broker``."""

    def __init__(self, broker: Broker, timeout: float = 30.0) -> None:
        # 30 s, not 5: the timeout only detects a hung broker, and on a loaded 2-core machine (CI at load
        # average 30, other brokers beside this one) a healthy node answers a listing in more than 5 s.
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
        r = get_once_more_if_dropped(self.session, f"{self.base}/{path}", timeout=self.timeout)
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
        return count_states(self.get("connections?columns=name,state"))

    def wait_for(self, queue: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
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
