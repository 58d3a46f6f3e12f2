"""Exercises of notebook 01 (first queue and routing).

q1: write ``setup_routing(channel, exchange)`` that declares a *topic* exchange
``exchange`` and three durable queues bound to it, for jobs routed by
``<language>.<priority>``:

- ``<exchange>.english`` gets every English job (``en.high``, ``en.low``);
- ``<exchange>.urgent`` gets every high-priority job, in any language;
- ``<exchange>.all`` gets every job.

The checker publishes keys in languages and priorities you were not told
about (made up at each check), so only wildcard patterns pass; and it asks
the broker (management API) whether the exchange and the queues are durable.

Example (in the notebook, after writing ``setup_routing``)::

    from voicelab.exercises import ch01
    ch01.q1.check(setup_routing)     # pass, or what is wrong and a hint
    ch01.q1.hint()
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import pika.exceptions

from ..broker import Broker, shared_broker
from ..lab.routing import delete_routing, job_keys, landed, publish_keys
from ..management import Management
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


def _durable(broker: Broker, kind: str, name: str) -> bool | None:
    """Whether exchange or queue ``name`` is durable, as the management API reports it; None when it cannot say."""
    if not broker.management_url:
        return None
    mgmt = Management(broker)
    try:
        return bool(mgmt.get(f"{kind}/{mgmt.vhost}/{name}")["durable"])
    except Exception:
        return None
    finally:
        mgmt.close()


def _check_routing(fn: Callable[..., Any]) -> str:
    exchange = scratch_name("routing")  # its queues are <exchange>.english, ...: all deleted below
    new_language = f"x{uuid.uuid4().hex[:4]}"  # a language nobody could bind by name in advance
    keys = job_keys(("en", "de", "pt-br", new_language), ("high", "low", "normal"))
    want = expected(exchange, keys)
    broker = shared_broker()
    try:
        with broker.connect() as connection:
            _run_setup(fn, connection.channel(), exchange, broker)
            channel = connection.channel()
            try:
                channel.exchange_declare(exchange, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                raise Wrong(f"exchange {exchange!r} does not exist: declare it (exchange_type='topic', "
                            "durable=True)") from None
            for queue in want:
                try:
                    channel.queue_declare(queue, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    raise Wrong(f"queue {queue!r} does not exist: declare it (durable=True) and bind it") from None
            transient = [f"exchange {exchange!r}"] if _durable(broker, "exchanges", exchange) is False else []
            transient += [f"queue {q!r}" for q in want if _durable(broker, "queues", q) is False]
            lost = publish_keys(channel, exchange, keys)
            got = landed(channel, list(want))
    finally:
        with broker.connect() as connection:   # a fresh one: the learner's code may have got the first closed
            delete_routing(connection.channel(), exchange, list(want))
    if transient:
        raise Wrong(f"{', '.join(transient)} not durable: a broker restart deletes it, and the bindings with it. "
                    "Declare exchange and queues with durable=True.")
    _judge_routing(want, got, lost, new_language)
    return (f"{len(keys)} jobs, including the made-up language {new_language!r} and priority 'normal', each landed "
            "exactly where it should; the exchange and the queues are durable.")


def _run_setup(fn: Callable[..., Any], channel: Any, exchange: str, broker: Broker) -> None:
    """Run the learner's ``fn(channel, exchange)``; a broker that refuses a transient queue is a :class:`Wrong`."""
    try:
        fn(channel, exchange)
    except pika.exceptions.ConnectionClosedByBroker as e:
        if e.reply_code == 541 and "transient_nonexcl_queues" in str(e.reply_text):
            raise Wrong(f"a queue you declared is not durable, and this broker (RabbitMQ {broker.version}) refuses "
                        "transient non-exclusive queues (deprecated; denied by default from 4.3): it closed the "
                        "connection. Declare exchange and queues with durable=True.") from None
        raise


def _judge_routing(want: dict[str, list[str]], got: dict[str, list[str]], lost: list[str], new_language: str) -> None:
    """Raise :class:`Wrong` saying which queue got which key it should not, or missed one it should have."""
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
        if any(new_language in p or ".normal" in p for p in problems):
            problems.append(f"(the checker made up the language {new_language!r} and the priority 'normal': "
                            "name the words you know, match the others with * or #)")
        raise Wrong("; ".join(problems))


q1 = Exercise(
    "ch01.q1", "route voice jobs with a topic exchange",
    _check_routing,
    hints=[
        """A topic exchange compares each job's key <language>.<priority> with each queue's binding
        pattern, word by word: * matches exactly one word, # matches zero or more. Each queue needs one
        pattern, and it must also match languages and priorities you have not seen yet: the checker makes up
        new ones each time, so listing the keys you know is not enough.""",
        """Everything you declare must survive a broker restart: the exchange and each queue are declared
        durable=True (a transient exchange or queue disappears on a restart, with its bindings).""",
        """exchange_declare(exchange, exchange_type="topic", durable=True); then for each queue:
        queue_declare(name, durable=True) and queue_bind(name, exchange, routing_key=PATTERN),
        with the patterns "en.*" (english), "*.high" (urgent) and "#" (all).""",
    ],
    solution=setup_routing,
)
