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
from .management import Management, get_once_more_if_dropped

DETAILED_FAMILIES = ("queue_coarse_metrics", "queue_consumer_count")
"""The ``/metrics/detailed`` families with per-queue ready, unacked, total and consumer counts."""

STATS_FAMILIES = DETAILED_FAMILIES + ("queue_metrics", "channel_queue_metrics", "channel_queue_exchange_metrics")
"""Families :meth:`Prometheus.queue_stats` asks for: the counts above, consumer capacity (``queue_metrics``),
and the per-channel counters of acks, redeliveries (``channel_queue_metrics``) and publishes into each queue
(``channel_queue_exchange_metrics``); all present in RabbitMQ 3.10, 4.0 and 4.3."""

_STATS_METRICS = {"queue_consumer_capacity": ("utilisation", "max"),
                  "queue_head_message_timestamp": ("head_timestamp", "max"),
                  "channel_messages_acked_total": ("acked", "sum"),
                  "channel_messages_redelivered_total": ("redelivered", "sum"),
                  "queue_messages_published_total": ("published", "sum")}


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

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        # 30 s, not 5: the timeout only detects a hung endpoint. Rendering /metrics on a loaded 2-core machine
        # (CI at load average 30) took more than 5 s on a healthy broker; Prometheus's own scrape_timeout is 10 s
        # by default, for servers that are not starved.
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
        r = get_once_more_if_dropped(self.session, self.base + path, params=params, timeout=self.timeout,
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

    def queue_stats(self, vhost: str = "/") -> pd.DataFrame:
        """Per-queue ``ready``, ``unacked``, ``messages``, ``consumers``, ``utilisation`` (consumer capacity,
        0-1; NaN without a figure) and the counters ``published``, ``acked``, ``redelivered`` (summed over
        the channels that published to, consumed from the queue: a closed channel's counts go with it).

        One scrape of ``/metrics/detailed`` (:data:`STATS_FAMILIES`): what an alerting Prometheus would
        scrape, refreshed every ``collect_statistics_interval`` (the management API's figures change every 5 s).
        """
        df = self.samples("/metrics/detailed", [("family", f) for f in STATS_FAMILIES] + [("vhost", vhost)])
        table = _queue_table(df, "rabbitmq_detailed_")
        for metric, (col, how) in _STATS_METRICS.items():
            part = df[df["name"] == "rabbitmq_detailed_" + metric] if "name" in df else df
            if "queue" in part and not part.empty:
                table[col] = part.groupby("queue")["value"].agg(how).reindex(table.index)
            else:
                table[col] = float("nan")
        for col in ("published", "acked", "redelivered"):
            table[col] = table[col].fillna(0.0)   # no channel has used the queue yet: nothing counted
        return table

    def node_stats(self) -> dict[str, float]:
        """The node's figures an SRE alerts on, from one scrape of the aggregated ``/metrics``.

        ``memory_alarm``, ``disk_alarm`` (1 while the alarm is in effect), ``memory_used``,
        ``memory_limit`` (bytes: the high watermark), ``disk_free``, ``disk_free_limit`` (bytes), ``fds_used``,
        ``fds_limit``, ``sockets_used``, ``sockets_limit`` (NaN from 4.0: RabbitMQ 4.0 no longer limits or
        reports sockets apart from file descriptors), ``connections``, the counters ``connections_opened``,
        ``connections_closed``, ``unroutable_dropped`` and ``unroutable_returned`` (messages no queue took).

        Example::

            Prometheus.of(broker).node_stats()["memory_alarm"]    # 0.0, or 1.0 while the alarm is in effect
        """
        df = self.samples("/metrics")
        values = df.groupby("name")["value"].sum() if not df.empty else pd.Series(dtype=float)
        return {key: float(values.get(name, float("nan"))) for key, name in _NODE_METRICS.items()}

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


_NODE_METRICS = {
    "memory_alarm": "rabbitmq_alarms_memory_used_watermark", "disk_alarm": "rabbitmq_alarms_free_disk_space_watermark",
    "memory_used": "rabbitmq_process_resident_memory_bytes", "memory_limit": "rabbitmq_resident_memory_limit_bytes",
    "disk_free": "rabbitmq_disk_space_available_bytes", "disk_free_limit": "rabbitmq_disk_space_available_limit_bytes",
    "fds_used": "rabbitmq_process_open_fds", "fds_limit": "rabbitmq_process_max_fds",
    "sockets_used": "rabbitmq_process_open_tcp_sockets", "sockets_limit": "rabbitmq_process_max_tcp_sockets",
    "connections": "rabbitmq_connections", "connections_opened": "rabbitmq_connections_opened_total",
    "connections_closed": "rabbitmq_connections_closed_total",
    "unroutable_dropped": "rabbitmq_channel_messages_unroutable_dropped_total",
    "unroutable_returned": "rabbitmq_channel_messages_unroutable_returned_total",
}
"""Figures of :meth:`Prometheus.node_stats` and the metric each is read from."""

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
