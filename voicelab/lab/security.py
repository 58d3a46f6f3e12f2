"""Chapter 10's experiments: three least-privilege accounts tried action by action, TLS refusals, TLS's cost.

:func:`setup_accounts` builds a virtual host with the pipeline's exchanges and queues and three accounts
(producer, worker, monitor); :func:`try_accounts` tries what each must and must not do and returns one row per
attempt with the broker's answer, verbatim. :func:`tls_cost` times connection set-up and publishing over plain
TCP and over TLS on the same broker, interleaved, and :func:`plot_tls_cost` draws both.

Example::

    lab = setup_accounts(broker)          # vhost voicelab10, producer / worker / monitor
    try_accounts(lab)                     # one row per attempt: account, action, expected, answer
    lab.teardown()
    cost = tls_cost(broker, repeats=5, connections=10, messages=4000)   # broker started with tls=TlsFiles(...)
    plot_tls_cost(cost, broker)
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import pika
import requests

from ..broker import Broker
from ..security import Admin, attempt
from .measure import add_caption, broker_caption, human_axis, progress

JOBS_X, JOBS_Q = "voice.jobs", "voice.jobs.q"
RESULTS_X, RESULTS_Q = "voice.results", "voice.results.q"
EVENTS_X = "voice.events"   # a topic exchange: progress events, routing key progress.<user>.<job>

# Topic permissions narrow the write permission on a topic exchange to routing keys: the worker's events must
# carry its own name ({username} is expanded by the broker at each publish). They apply to topic exchanges only.
TOPIC_PERMISSIONS: dict[str, tuple[str, str, str]] = {"worker": (EVENTS_X, r"^progress\.{username}\.", "")}

# user -> (tags, configure, write, read): the least each one needs (https://www.rabbitmq.com/docs/access-control)
ACCOUNTS: dict[str, tuple[str, str, str, str]] = {
    "producer": ("", "", r"^voice\.jobs$", ""),
    "worker": ("", "", r"^voice\.(results|events)$", r"^voice\.jobs\.q$"),
    "monitor": ("monitoring", "", "", ""),   # may enter the vhost (to see its queues) and touch nothing
}


@dataclass
class Lab:
    """The virtual host, the accounts' passwords (generated here, never printed) and the admin's API client."""

    broker: Broker
    vhost: str
    admin: Admin
    passwords: dict[str, str] = field(default_factory=dict, repr=False)

    def params(self, user: str, vhost: str | None = None, **overrides: Any) -> pika.ConnectionParameters:
        """pika parameters to log in as ``user`` (to :attr:`vhost`, or ``vhost``), one attempt."""
        return self.broker.parameters(virtual_host=vhost or self.vhost, connection_attempts=1,
                                      credentials=pika.PlainCredentials(user, self.passwords[user]), **overrides)

    def teardown(self) -> None:
        """Delete the virtual host (its queues and exchanges go with it) and the accounts."""
        self.admin.delete_vhost(self.vhost)
        for user in self.passwords:
            self.admin.delete_user(user)
        self.admin.close()


def setup_accounts(broker: Broker, vhost: str = "voicelab10") -> Lab:
    """Create ``vhost``, its exchanges and queues (as the broker's administrator) and the three accounts."""
    admin = Admin(broker)
    admin.create_vhost(vhost)
    admin.set_permissions(vhost, broker.username, configure=".*", write=".*", read=".*")
    lab = Lab(broker, vhost, admin)
    with pika.BlockingConnection(broker.parameters(virtual_host=vhost)) as connection:
        channel = connection.channel()
        for exchange, queue in ((JOBS_X, JOBS_Q), (RESULTS_X, RESULTS_Q)):
            channel.exchange_declare(exchange, "direct", durable=True)
            channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(queue, exchange, routing_key="job")
        channel.exchange_declare(EVENTS_X, "topic", durable=True)
    for user, (tags, configure, write, read) in ACCOUNTS.items():
        lab.passwords[user] = secrets.token_urlsafe(24)
        admin.create_user(user, lab.passwords[user], tags)
        admin.set_permissions(vhost, user, configure=configure, write=write, read=read)
    for user, (exchange, write, read) in TOPIC_PERMISSIONS.items():
        admin.set_topic_permissions(vhost, user, exchange, write=write, read=read)
    return lab


def publish(params: pika.ConnectionParameters, exchange: str, body: bytes = b"job", routing_key: str = "job") -> None:
    """Publish one message with a confirm: a refusal closes the channel and raises here, not later."""
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body)


def on_channel(params: pika.ConnectionParameters, action: Callable[[Any], Any]) -> Callable[[], Any]:
    """An action on a fresh channel of a fresh connection (a refused action closes the channel)."""
    def run() -> Any:
        with pika.BlockingConnection(params) as connection:
            return action(connection.channel())
    return run


def try_accounts(lab: Lab) -> pd.DataFrame:
    """Try what each account must (``expected="ok"``) and must not do; one row per attempt."""
    p, w = lab.params("producer"), lab.params("worker")
    vq = requests.utils.quote(lab.vhost, safe="")
    api = lab.admin.base
    monitor = requests.Session()
    monitor.auth = ("monitor", lab.passwords["monitor"])

    def http(method: str, path: str, **kw: Any) -> Callable[[], Any]:
        def run() -> None:
            monitor.request(method, f"{api}/{path}", timeout=10, **kw).raise_for_status()
        return run

    rows = [
        ("producer", f"publish to {JOBS_X}", "ok", lambda: publish(p, JOBS_X)),
        ("producer", f"publish to {RESULTS_X}", "refused", lambda: publish(p, RESULTS_X)),
        ("producer", "declare queue voice.mine", "refused",
         on_channel(p, lambda ch: ch.queue_declare("voice.mine", durable=True))),
        ("producer", f"get from {JOBS_Q}", "refused", on_channel(p, lambda ch: ch.basic_get(JOBS_Q))),
        ("worker", f"get from {JOBS_Q}", "ok", on_channel(w, lambda ch: ch.basic_get(JOBS_Q, auto_ack=True))),
        ("worker", f"publish to {RESULTS_X}", "ok", lambda: publish(w, RESULTS_X, b"result")),
        ("worker", f"publish to {JOBS_X}", "refused", lambda: publish(w, JOBS_X)),
        ("worker", f"publish progress.worker.42 to {EVENTS_X} (topic)", "ok",
         lambda: publish(w, EVENTS_X, b"50%", "progress.worker.42")),
        ("worker", f"publish progress.producer.42 to {EVENTS_X} (topic)", "refused",
         lambda: publish(w, EVENTS_X, b"50%", "progress.producer.42")),
        ("worker", f"delete queue {JOBS_Q}", "refused", on_channel(w, lambda ch: ch.queue_delete(JOBS_Q))),
        ("worker", "connect to vhost /", "refused", lambda: pika.BlockingConnection(lab.params("worker", "/")).close()),
        ("monitor", "GET /api/overview", "ok", http("GET", "overview")),
        ("monitor", f"GET /api/queues/{lab.vhost} (counts)", "ok", http("GET", f"queues/{vq}")),
        ("monitor", f"get from {JOBS_Q} (AMQP)", "refused", on_channel(lab.params("monitor"), lambda ch: ch.basic_get(JOBS_Q))),
        ("monitor", f"get a message of {JOBS_Q} (API)", "refused",
         http("POST", f"queues/{vq}/{JOBS_Q}/get", json={"count": 1, "ackmode": "ack_requeue_true",
                                                           "encoding": "auto"})),
        ("monitor", "create a user (API)", "refused", http("PUT", "users/intruder", json={"password": "x", "tags": ""})),
    ]
    out = []
    for account, action, expected, run in rows:
        answer = attempt(run)
        out.append({"account": account, "action": action, "expected": expected, "answer": answer})
    monitor.close()
    return pd.DataFrame(out)


# -- the cost of TLS ------------------------------------------------------------------------------------------

def connect_ms(params: pika.ConnectionParameters) -> float:
    """Milliseconds to open (TCP, TLS when configured, AMQP handshake) and close one connection."""
    t0 = time.perf_counter()
    pika.BlockingConnection(params).close()
    return (time.perf_counter() - t0) * 1000


def publish_rate(params: pika.ConnectionParameters, n: int, size: int = 4096) -> float:
    """Messages/s for ``n`` publishes of ``size`` bytes (no confirms) into an exclusive queue, until the queue
    holds all of them (the broker has read every byte)."""
    body = b"x" * size
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        t0 = time.perf_counter()
        for _ in range(n):
            channel.basic_publish("", queue, body)
        while channel.queue_declare(queue, passive=True).method.message_count < n:
            if time.perf_counter() - t0 > 60:
                raise TimeoutError(f"the broker had not queued {n} messages after 60 s")
            time.sleep(0.002)
        return n / (time.perf_counter() - t0)


def tls_cost(broker: Broker, repeats: int, connections: int, messages: int, size: int = 4096) -> pd.DataFrame:
    """Connection set-up (ms, ``connections`` per repeat) and publishing (msg/s, ``messages`` of ``size`` bytes)
    over plain TCP and over TLS on ``broker``, alternating the two in every repeat (a busy moment of the
    machine then hits both). Columns: transport, metric, repeat, value."""
    transports = {"plain TCP": broker.parameters(connection_attempts=1),
                  "TLS": broker.tls_parameters(connection_attempts=1)}
    rows = []
    for r in progress(range(repeats), desc="TLS cost", total=repeats):
        for name, params in transports.items():
            rows += [{"transport": name, "metric": "connect ms", "repeat": r, "value": connect_ms(params)}
                     for _ in range(connections)]
            rows.append({"transport": name, "metric": "msg/s", "repeat": r,
                         "value": publish_rate(params, messages, size)})
    return pd.DataFrame(rows)


def medians(df: pd.DataFrame) -> pd.DataFrame:
    """The median of each metric per transport (rows: metric, columns: transport)."""
    return df.groupby(["metric", "transport"])["value"].median().unstack()


def plot_tls_cost(df: pd.DataFrame, broker: Broker, size: int = 4096) -> plt.Figure:
    """Two panels: connection set-up time and publish rate, each point a measurement, the bar the median."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    order = ["plain TCP", "TLS"]
    for ax, metric, label in ((axes[0], "connect ms", "connection open + close (ms)"),
                              (axes[1], "msg/s", f"publish rate, {size} B messages (msg/s)")):
        part = df[df.metric == metric]
        med = [statistics.median(part[part.transport == t].value) for t in order]
        ax.bar(order, med, color=["tab:blue", "tab:orange"], alpha=0.35, label="median")
        for i, t in enumerate(order):
            values = part[part.transport == t].value
            ax.scatter([i] * len(values), values, s=12, color="black", zorder=3,
                       label="each measurement" if i == 0 else None)
        ax.set_ylabel(label)
        ax.set_xlabel("transport")
        human_axis(ax.yaxis)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_title("Set-up: TCP + TLS + AMQP handshakes")
    axes[1].set_title("Throughput: encryption per byte")
    fig.suptitle(f"The cost of TLS, same broker, same run: RabbitMQ {broker.version}")
    fig.tight_layout()
    return add_caption(fig, broker_caption(broker))
