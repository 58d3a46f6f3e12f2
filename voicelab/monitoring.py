"""The same backlog seen three ways: a passive declare, the management API, the Prometheus endpoint.

- :func:`passive_view`: ``queue_declare(passive=True)``: ready messages and consumers, nothing else,
  answered by the queue itself (current to the moment).
- :func:`management_view`: the management HTTP API: ready, unacked, consumers, publish/deliver/ack
  rates, consumer utilisation; connections and channels from ``/api/overview``. Its queue figures
  step every 5 s on these brokers (the agent keeps 5 s samples).
- :class:`Prometheus`: the ``rabbitmq_prometheus`` plugin's endpoint, parsed with
  ``prometheus_client.parser``. ``/metrics`` aggregates every queue into one figure by default;
  per-queue figures come from ``/metrics/detailed?family=...`` (or ``/metrics/per-object``).

Example::

    from voicelab.broker import shared_broker
    from voicelab.management import Management
    broker = shared_broker()
    with broker.connect() as connection:
        passive_view(connection.channel(), "voice_jobs")    # {'ready': 0, 'consumers': 0}
    management_view(Management(broker), "voice_jobs")      # ready, unacked, rates, utilisation
    Prometheus(broker).queue("voice_jobs")                 # ready, unacked, consumers
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pandas as pd
import requests
from prometheus_client.parser import text_string_to_metric_families

from .broker import Broker, BrokerError
from .management import Management

DETAILED_FAMILIES = ("queue_coarse_metrics", "queue_consumer_count")
"""The ``/metrics/detailed`` families with per-queue ready, unacked, total and consumer counts."""


# ---------------------------------------------------------------------------
# Source 1: the passive declare
# ---------------------------------------------------------------------------

def passive_view(channel: Any, queue: str) -> dict[str, int]:
    """``{"ready": ..., "consumers": ...}`` from ``queue_declare(queue, passive=True)``: all a client can learn.

    Messages delivered and not yet acked are not counted, and there are no rates.
    """
    ok = channel.queue_declare(queue, passive=True).method
    return {"ready": int(ok.message_count), "consumers": int(ok.consumer_count)}


# ---------------------------------------------------------------------------
# Source 2: the management HTTP API
# ---------------------------------------------------------------------------

def _rate(stats: dict[str, Any], key: str) -> float:
    return float(stats.get(f"{key}_details", {}).get("rate", 0.0))


def management_view(mgmt: Management, queue: str) -> dict[str, Any]:
    """Ready, unacked, consumers, rates (msg/s) and consumer utilisation of ``queue`` from the management API.

    ``utilisation`` is ``consumer_utilisation`` (3.x) or ``consumer_capacity`` (newer), a fraction of
    time in which the queue could hand a message to a consumer at once; None when the broker has
    no figure (no consumers, or a queue type without it).
    """
    q = mgmt.queue(queue)
    stats = q.get("message_stats") or {}
    util = q.get("consumer_utilisation")
    if util is None:
        util = q.get("consumer_capacity")
    return {
        "ready": q.get("messages_ready"), "unacked": q.get("messages_unacknowledged"),
        "consumers": q.get("consumers"),
        "publish_rate": _rate(stats, "publish"), "deliver_rate": _rate(stats, "deliver_get"),
        "ack_rate": _rate(stats, "ack"), "utilisation": None if util is None else float(util),
    }


def connection_totals(mgmt: Management) -> dict[str, int]:
    """Connections, channels, queues and consumers on the broker, from ``/api/overview``."""
    totals = mgmt.overview().get("object_totals", {})
    return {k: int(totals.get(k, 0)) for k in ("connections", "channels", "queues", "consumers")}


# ---------------------------------------------------------------------------
# Source 3: the Prometheus endpoint
# ---------------------------------------------------------------------------

def parse_metrics(text: str) -> pd.DataFrame:
    """Every sample of a Prometheus text exposition: one row each, ``name``, ``value`` and one column per label.

    Parsed with ``prometheus_client.parser.text_string_to_metric_families`` (comments, escaping,
    ``_total`` suffixes, histograms), never with regexes.

    >>> parse_metrics('# TYPE q gauge\\nq{queue="a"} 3\\nq{queue="b"} 4\\n')[["name", "queue", "value"]].values.tolist()
    [['q', 'a', 3.0], ['q', 'b', 4.0]]
    """
    rows = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            rows.append({"name": s.name, "type": family.type, **s.labels, "value": float(s.value)})
    return pd.DataFrame(rows)


class Prometheus:
    """The ``rabbitmq_prometheus`` endpoint of a broker (``broker.prometheus_url``, port 15692 by default)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.session = requests.Session()
        self.timeout = timeout

    @classmethod
    def of(cls, broker: Broker) -> "Prometheus":
        if not broker.prometheus_url:
            raise BrokerError(f"{broker!r} has no Prometheus URL: set VOICELAB_PROMETHEUS_URL "
                              "(e.g. http://localhost:15692/metrics) and enable the rabbitmq_prometheus plugin")
        return cls(broker.prometheus_url)

    def text(self, path: str = "/metrics", params: Any = None) -> str:
        r = self.session.get(self.base + path, params=params, timeout=self.timeout,
                             headers={"Accept": "text/plain"})
        r.raise_for_status()
        return r.text

    def samples(self, path: str = "/metrics", params: Any = None) -> pd.DataFrame:
        """:func:`parse_metrics` of one scrape of ``path``."""
        return parse_metrics(self.text(path, params))

    def queues(self, vhost: str = "/") -> pd.DataFrame:
        """Per-queue ``ready``, ``unacked``, ``messages`` and ``consumers``, indexed by queue name.

        One scrape of ``/metrics/detailed`` with only the queue families asked for: cheap even
        on a broker with many connections (``/metrics/per-object`` returns everything).
        """
        df = self.samples("/metrics/detailed", [("family", f) for f in DETAILED_FAMILIES] + [("vhost", vhost)])
        return _queue_table(df, "rabbitmq_detailed_")

    def queue(self, name: str, vhost: str = "/") -> dict[str, float]:
        """``{"ready", "unacked", "messages", "consumers"}`` of queue ``name`` (zeros if it has no figures yet)."""
        table = self.queues(vhost)
        if name not in table.index:
            return {"ready": 0.0, "unacked": 0.0, "messages": 0.0, "consumers": 0.0}
        return table.loc[name].to_dict()

    def close(self) -> None:
        self.session.close()


# ---------------------------------------------------------------------------
# The three side by side
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Building a backlog on purpose, and watching it
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# The live view
# ---------------------------------------------------------------------------


_QUEUE_METRICS = {"queue_messages_ready": "ready", "queue_messages_unacked": "unacked",
                  "queue_messages": "messages", "queue_consumers": "consumers"}


def _queue_table(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    cols = list(_QUEUE_METRICS.values())
    if df.empty or "queue" not in df:
        return pd.DataFrame(columns=cols, dtype=float)
    df = df[df["name"].isin([prefix + k for k in _QUEUE_METRICS]) & df["queue"].notna()]
    wide = df.assign(metric=df["name"].str[len(prefix):].map(_QUEUE_METRICS)).pivot_table(
        index="queue", columns="metric", values="value", aggfunc="sum")
    return wide.reindex(columns=cols).fillna(0.0)
