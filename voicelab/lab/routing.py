"""Exchanges, bindings and routing keys: declare a topology, send a batch, see where it landed.

Voice jobs are routed by ``<language>.<priority>`` (``"en.high"``, ``"de.low"``).
In a topic binding ``*`` matches exactly one word and ``#`` zero or more.

Example::

    with broker.connect() as connection:
        channel = connection.channel()
        declare_routing(channel, "jobs", "topic", {"english": ["en.*"], "urgent": ["*.high"]})
        publish_keys(channel, "jobs", ["en.low", "de.high"])
        landed(channel, ["english", "urgent"])   # {'english': ['en.low'], 'urgent': ['de.high']}
"""

from __future__ import annotations

import itertools
from typing import Any

import matplotlib.pyplot as plt
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ..queues import confirm_mode, drain

KINDS = ("direct", "fanout", "topic", "headers")
LANGUAGES = ("en", "de", "fr")
PRIORITIES = ("high", "low")


def job_keys(languages: tuple[str, ...] = LANGUAGES, priorities: tuple[str, ...] = PRIORITIES) -> list[str]:
    """Every ``<language>.<priority>`` routing key.

    >>> job_keys(("en",), ("high", "low"))
    ['en.high', 'en.low']
    """
    return [f"{lang}.{prio}" for lang, prio in itertools.product(languages, priorities)]


def declare_routing(channel: BlockingChannel, exchange: str, kind: str, bindings: dict[str, list[str]]) -> None:
    """Declare a durable ``kind`` exchange and durable queues bound to it with the given keys.

    ``bindings`` maps a queue name to its binding keys (ignored by fanout exchanges: use ``[""]``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    channel.exchange_declare(exchange, exchange_type=kind, durable=True)
    for queue, keys in bindings.items():
        channel.queue_declare(queue, durable=True)
        for key in keys or [""]:
            channel.queue_bind(queue, exchange, routing_key=key)


def publish_keys(channel: BlockingChannel, exchange: str, keys: list[str]) -> list[str]:
    """Publish one small message per routing key (the body is the key); return the keys nobody received.

    The channel is put in confirm mode and messages are ``mandatory``: a message
    that no binding matches comes back and is reported, instead of vanishing.
    """
    unroutable: list[str] = []
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    confirm_mode(channel)
    for key in keys:
        try:
            channel.basic_publish(exchange, key, key.encode(), persistent, mandatory=True)
        except pika.exceptions.UnroutableError:
            unroutable.append(key)
    return unroutable


def landed(channel: BlockingChannel, queues: list[str]) -> dict[str, list[str]]:
    """Drain ``queues`` and return, per queue, the sorted routing keys of what was in it."""
    return {queue: sorted(m.method.routing_key for m in drain(channel, queue)) for queue in queues}


def delete_routing(channel: BlockingChannel, exchange: str, queues: list[str]) -> None:
    """Delete the exchange and queues of a topology."""
    for queue in queues:
        channel.queue_delete(queue)
    channel.exchange_delete(exchange)


def draw_topology(exchange: str, kind: str, bindings: list[dict[str, Any]], counts: dict[str, int] | None = None,
                  ax: plt.Axes | None = None) -> plt.Axes:
    """Draw an exchange and its bindings as the broker reports them (``Management.bindings``).

    ``counts`` (queue -> messages) labels each queue with what it received.
    """
    queues = sorted({b["destination"] for b in bindings})
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.7 + 0.6 * max(1, len(queues))))
    ys = {q: len(queues) - 1 - i for i, q in enumerate(queues)}
    mid = (len(queues) - 1) / 2
    box = dict(boxstyle="round,pad=0.4", fc="#fde8c8", ec="#c97a00")
    ax.text(0, mid, f"{exchange}\n({kind})", ha="center", va="center", bbox=box, fontsize=9)
    for q, y in ys.items():
        keys = [b["routing_key"] or "(none)" for b in bindings if b["destination"] == q]
        ax.annotate("", xy=(2.0, y), xytext=(0.45, mid), arrowprops=dict(arrowstyle="->", color="0.4"))
        ax.text(1.2, (y + mid) / 2 + 0.12, ", ".join(keys), ha="center", fontsize=8, color="#0a5")
        label = q + (f"\n{counts[q]} messages" if counts and q in counts else "")
        ax.text(2.05, y, label, ha="left", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.3", fc="#dbe9ff", ec="#2b6cb0"))
    ax.set_xlim(-0.6, 3.2)
    ax.set_ylim(-0.7, len(queues) - 0.3)
    ax.axis("off")
    return ax
