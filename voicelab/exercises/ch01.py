"""Exercises of notebook 01 (first queue and routing).

q1: write ``setup_routing(channel, exchange)`` that declares a *topic* exchange
``exchange`` and three durable queues bound to it, for jobs routed by
``<language>.<priority>``:

- ``<exchange>.english`` gets every English job (``en.high``, ``en.low``);
- ``<exchange>.urgent`` gets every high-priority job, in any language;
- ``<exchange>.all`` gets every job.
"""

from __future__ import annotations

from typing import Any, Callable

from ..broker import shared_broker
from ..routing import delete_routing, job_keys, landed, publish_keys
from .core import Exercise, Wrong, scratch_name


def setup_routing(channel: Any, exchange: str) -> None:
    """Reference solution of q1."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    for queue, key in [("english", "en.*"), ("urgent", "*.high"), ("all", "#")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        channel.queue_bind(f"{exchange}.{queue}", exchange, routing_key=key)


def expected(exchange: str, keys: list[str]) -> dict[str, list[str]]:
    """Which keys each queue of q1 must receive."""
    return {
        f"{exchange}.english": sorted(k for k in keys if k.startswith("en.")),
        f"{exchange}.urgent": sorted(k for k in keys if k.endswith(".high")),
        f"{exchange}.all": sorted(keys),
    }


def _check_routing(fn: Callable[..., Any]) -> str:
    exchange = scratch_name("routing")  # its queues are <exchange>.english, ...: all deleted below
    keys = job_keys(("en", "de", "fr", "es", "pt-br"), ("high", "low"))  # languages you were not told about too
    want = expected(exchange, keys)
    with shared_broker().connect() as connection:
        setup = connection.channel()
        try:
            fn(setup, exchange)
            channel = connection.channel()
            for queue in want:
                try:
                    channel.queue_declare(queue, passive=True)
                except Exception:
                    raise Wrong(f"queue {queue!r} does not exist: declare it (durable=True) and bind it") from None
            lost = publish_keys(channel, exchange, keys)
            got = landed(channel, list(want))
        finally:
            cleanup = connection.channel()
            delete_routing(cleanup, exchange, list(want))
    problems = []
    for queue, keys_wanted in want.items():
        extra = sorted(set(got[queue]) - set(keys_wanted))
        missing = sorted(set(keys_wanted) - set(got[queue]))
        if extra:
            problems.append(f"{queue} got {extra}, which it should not")
        if missing:
            problems.append(f"{queue} did not get {missing}")
        if len(got[queue]) != len(set(got[queue])):
            problems.append(f"{queue} got some jobs twice: bind each queue with one pattern")
    if lost:
        problems.append(f"no queue received {lost}")
    if problems:
        raise Wrong("; ".join(problems))
    return f"{len(keys)} jobs in 5 languages, each landed exactly where it should."


q1 = Exercise(
    "ch01.q1", "route voice jobs with a topic exchange",
    _check_routing,
    hints=[
        """A topic exchange compares each job's key <language>.<priority> with each queue's binding
        pattern, word by word: * matches exactly one word, # matches zero or more. Each queue needs one
        pattern, and it must also match languages you have not seen yet.""",
        """exchange_declare(exchange, exchange_type="topic", durable=True); then for each queue:
        queue_declare(name, durable=True) and queue_bind(name, exchange, routing_key=PATTERN),
        with the patterns "en.*" (english), "*.high" (urgent) and "#" (all).""",
    ],
    solution=setup_routing,
)
