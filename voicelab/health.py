"""Is a consumer healthy? Judge progress against the work available, not the time since the last message.

The guide's check (:class:`voicelab.lab.guide_patterns.GuideHealthyConsumer`) says "unhealthy" when no
message arrived for 5 minutes: an idle consumer on an empty queue is then "dead", and a consumer
stuck inside a job it received a minute ago is "alive" while the queue fills. :func:`judge` asks
instead: is there work (ready messages, a job in flight)? is a job taking longer than any job
should? has the consumer's I/O loop (the one that sends heartbeats) run lately? was anything acked?

:class:`WatchedConsumer` runs a consumer in a thread and keeps those facts (:class:`ConsumerState`);
:func:`broker_checks` asks the broker's own health-check endpoints.

Example::

    with WatchedConsumer(broker, "voice_jobs", handler) as consumer:
        with broker.connect() as connection:
            depth = passive_view(connection.channel(), "voice_jobs")
        judge(consumer.state(), depth, max_job_s=30)   # Verdict(healthy=True, reason='idle: ...')
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from .broker import Broker
from .management import Management

Handler = Callable[[Any, Any, Any, bytes], None]
"""``handler(channel, method, properties, body)``: processes one message and acks (or nacks) it."""


@dataclass(frozen=True)
class ConsumerState:
    """What a consumer knows about itself, at ``now`` (``time.monotonic()``); times are monotonic seconds."""

    now: float
    started: float
    last_loop: float              # its I/O loop last ran: heartbeats are sent (and acks flushed) only there
    last_delivery: float | None   # a message last arrived
    last_done: float | None       # a job last finished (acked or nacked by the handler)
    job_started: float | None     # the job in progress began (None: no job in progress)
    done: int                     # jobs finished
    connection_open: bool


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str

    def __bool__(self) -> bool:
        return self.healthy


def judge(state: ConsumerState, depth: dict[str, int], *, max_job_s: float, stall_s: float = 2.0) -> Verdict:
    """voicelab's health check of one consumer: progress against the work available.

    ``depth`` is the queue as the passive declare reads it now (``ready``, ``consumers``).
    ``max_job_s``: no sound job takes longer (a deadline, from the job's own measured times);
    ``stall_s``: how long the I/O loop may stay away before heartbeats and acks suffer.

    Unhealthy when: the connection is closed; a job has run longer than ``max_job_s`` (stuck);
    the I/O loop has not run for ``stall_s`` (heartbeats starve); messages are ready, no job is in
    progress and nothing finished for ``stall_s`` (it takes no work). Healthy when it is idle on an
    empty queue, or finishing jobs.
    """
    now = state.now
    ready = int(depth.get("ready", 0))
    if not state.connection_open:
        return Verdict(False, f"its connection is closed; {ready} message(s) ready")
    if state.job_started is not None and now - state.job_started > max_job_s:
        return Verdict(False, f"stuck: one job has run {now - state.job_started:.1f} s (no job should take more "
                              f"than {max_job_s:g} s) while {ready} message(s) wait")
    if now - state.last_loop > stall_s:
        return Verdict(False, f"its I/O loop has not run for {now - state.last_loop:.1f} s: no heartbeats, "
                              f"no acks sent; {ready} message(s) ready")
    last_progress = state.last_done if state.last_done is not None else state.started
    if ready > 0 and state.job_started is None and now - last_progress > stall_s:
        return Verdict(False, f"{ready} message(s) ready but it finished nothing for {now - last_progress:.1f} s")
    if ready == 0 and state.job_started is None:
        return Verdict(True, "idle: the queue is empty and no job is in progress")
    if state.job_started is not None:
        return Verdict(True, f"working: current job {now - state.job_started:.2f} s old, {state.done} done")
    return Verdict(True, f"working: last job finished {now - last_progress:.2f} s ago, {state.done} done")


class WatchedConsumer:
    """A consumer thread (own connection, prefetch ``prefetch``) that records its :class:`ConsumerState`.

    ``handler(channel, method, properties, body)`` processes and acks each message, e.g. the guide's
    ``GuideHealthyConsumer.process_message``. ``stop()`` (or leaving the ``with`` block) ends it.
    """

    def __init__(self, broker: Broker, queue: str, handler: Handler, prefetch: int = 1,
                 heartbeat: int | None = None) -> None:
        self.broker, self.queue, self.handler, self.prefetch = broker, queue, handler, prefetch
        self.heartbeat = heartbeat
        self.stopping = threading.Event()
        self.attached = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        t = time.monotonic()
        self._s: dict[str, Any] = dict(started=t, last_loop=t, last_delivery=None, last_done=None, job_started=None,
                                       done=0, connection_open=False)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watched-consumer-{queue}")

    def _set(self, **kw: Any) -> None:
        with self._lock:
            self._s.update(kw)

    def state(self) -> ConsumerState:
        with self._lock:
            return ConsumerState(now=time.monotonic(), **self._s)

    def _run(self) -> None:
        overrides: dict[str, Any] = {"client_properties": {"connection_name": f"voicelab watched {self.queue}"}}
        if self.heartbeat is not None:
            overrides["heartbeat"] = self.heartbeat
        try:
            with self.broker.connect(**overrides) as connection:
                channel = connection.channel()
                channel.basic_qos(prefetch_count=self.prefetch)
                self._set(connection_open=True)
                for method, props, body in channel.consume(self.queue, inactivity_timeout=0.05):
                    self._set(last_loop=time.monotonic())
                    self.attached.set()
                    if self.stopping.is_set():
                        break
                    if method is None:
                        continue
                    t = time.monotonic()
                    self._set(last_delivery=t, job_started=t)
                    self.handler(channel, method, props, body)
                    with self._lock:
                        self._s.update(job_started=None, last_done=time.monotonic(), done=self._s["done"] + 1)
                with contextlib.suppress(Exception):
                    channel.cancel()
        except BaseException as e:  # noqa: BLE001 - kept for the caller, and the state says closed
            self.error = e
        finally:
            self._set(connection_open=False)
            self.attached.set()

    def start(self, timeout: float = 10.0) -> "WatchedConsumer":
        self._thread.start()
        if not self.attached.wait(timeout):
            raise TimeoutError(f"the consumer of {self.queue!r} did not start in {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"the consumer of {self.queue!r} failed") from self.error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self._thread.join(timeout)

    def __enter__(self) -> "WatchedConsumer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# The broker's own health checks
# ---------------------------------------------------------------------------

def health_endpoints(amqp_port: int = 5672) -> dict[str, str]:
    """The management API's health checks (``GET``; 200 = passes, 503 = fails, 404 = not in this version).

    Each has a ``rabbitmq-diagnostics`` twin (``check_alarms``, ``check_local_alarms``,
    ``check_virtual_hosts``, ``check_port_listener``, ``check_protocol_listener``, ...).
    ``aliveness-test`` is the legacy one-size check: on 3.10.8 and 4.0.5 it declares a non-durable queue
    ``aliveness-test`` in the vhost, publishes a message to it and gets it back (and leaves the queue);
    from 4.0.6 and 4.1.0 on it does nothing and answers ``{"status": "ok"}`` (:func:`aliveness_test_is_real`).
    Its CLI cousin ``rabbitmq-diagnostics node_health_check`` is a real, deprecated check on 3.10.8 and a
    no-op since 3.13.0. See https://www.rabbitmq.com/docs/monitoring#health-checks.
    """
    return {
        "alarms": "health/checks/alarms",
        "local-alarms": "health/checks/local-alarms",
        "virtual-hosts": "health/checks/virtual-hosts",
        "port-listener": f"health/checks/port-listener/{amqp_port}",
        "protocol-listener": "health/checks/protocol-listener/amqp",
        "node-is-quorum-critical": "health/checks/node-is-quorum-critical",
        "certificate-expiration": "health/checks/certificate-expiration/1/months",
        "is-in-service": "health/checks/is-in-service",
        "below-node-connection-limit": "health/checks/below-node-connection-limit",
        "ready-to-serve-clients": "health/checks/ready-to-serve-clients",
        "aliveness-test (legacy)": "aliveness-test/%2F",
    }


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"4.0.5"`` -> ``(4, 0, 5)``; a suffix (``"4.1.0-rc.1"``, ``"3.10.8+1"``) is ignored, missing parts are 0.

    >>> version_tuple("4.0.5"), version_tuple("4.1.0-rc.1"), version_tuple("3.13")
    ((4, 0, 5), (4, 1, 0), (3, 13, 0))
    """
    parts = []
    for piece in version.split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    return tuple((parts + [0, 0, 0])[:3])  # type: ignore[return-value]


def aliveness_test_is_real(version: str) -> bool:
    """Does ``GET /api/aliveness-test/{vhost}`` of RabbitMQ ``version`` test anything?

    Before 4.0.6 it declares a queue ``aliveness-test``, publishes and gets a message (the queue stays);
    from 4.0.6 (and in 4.1.0 and later) it is a no-op that answers ok.

    >>> aliveness_test_is_real("3.10.8"), aliveness_test_is_real("4.0.5"), aliveness_test_is_real("4.0.6")
    (True, True, False)
    >>> aliveness_test_is_real("4.3.6")
    False
    """
    return version_tuple(version) < (4, 0, 6)


def amqp_listener_port(mgmt: Management) -> int:
    """The broker-side AMQP port (inside a container it differs from the host port voicelab connects to)."""
    for listener in mgmt.overview().get("listeners", []):
        if listener.get("protocol") == "amqp":
            return int(listener["port"])
    return 5672


def broker_checks(broker: Broker, extra: dict[str, str] | None = None) -> pd.DataFrame:
    """Run every :func:`health_endpoints` check (and ``extra``) on ``broker``: one row each, with the HTTP status."""
    mgmt = Management(broker)
    rows = []
    try:
        endpoints = {**health_endpoints(amqp_listener_port(mgmt)), **(extra or {})}
        for name, path in endpoints.items():
            t0 = time.perf_counter()
            r = mgmt.session.get(f"{mgmt.base}/{path}", timeout=mgmt.timeout)
            ms = (time.perf_counter() - t0) * 1000
            try:
                body = r.json()
            except ValueError:
                body = {}
            detail = body.get("reason") or body.get("status") or body.get("error") or "" if isinstance(body, dict) else ""
            verdict = {200: "passes", 503: "FAILS", 404: "not in this version"}.get(r.status_code, f"HTTP {r.status_code}")
            rows.append({"check": name, "GET /api/...": path, "status": r.status_code, "verdict": verdict,
                         "detail": str(detail)[:80], "ms": round(ms, 1)})
    finally:
        mgmt.close()
    return pd.DataFrame(rows).set_index("check")


# ---------------------------------------------------------------------------
# Two consumers the guide's check gets wrong, judged both ways
# ---------------------------------------------------------------------------

