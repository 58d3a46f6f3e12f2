"""Exercise of notebook 10 (security): grant a new service the least it needs.

q1: a new service, the transcript indexer, reads transcripts from the queue ``voice.transcripts`` and publishes
index updates to the exchange ``voice.index``. Write ``grant_indexer(admin, vhost, user)`` that gives ``user``
exactly that in ``vhost`` (with :class:`voicelab.security.Admin`'s ``set_permissions``), and nothing more.

The checker builds a virtual host of its own with the pipeline's neighbours (``voice.index.audit``,
``voice.transcripts.archive``, ``voice.jobs``...), creates the user, calls the function, then logs in as the
user and tries what the service must be able to do (get from its queue, publish to its exchange) and what it
must not (publish elsewhere, read other queues, declare or delete anything, bind). Each refusal must come from
the broker. The virtual host and the user are deleted afterwards.

Example (in the notebook)::

    from voicelab.exercises import ch10
    ch10.q1.check(grant_indexer)
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any

import pika

from ..broker import Broker, shared_broker
from ..security import Admin, attempt
from .core import Exercise, Wrong

QUEUE, EXCHANGE = "voice.transcripts", "voice.index"


def grant_indexer(admin: Admin, vhost: str, user: str) -> None:
    """Reference solution of q1: read its queue, write its exchange, configure nothing; anchored, dots escaped."""
    admin.set_permissions(vhost, user, configure="", write=r"^voice\.index$", read=r"^voice\.transcripts$")


def _publish(params: pika.ConnectionParameters, exchange: str) -> Callable[[], None]:
    def run() -> None:
        with pika.BlockingConnection(params) as connection:
            channel = connection.channel()
            channel.confirm_delivery()   # a refused publish raises here (403), not on a later call
            channel.basic_publish(exchange, "t", b"{}")
    return run


def _on_channel(params: pika.ConnectionParameters, action: Callable[[Any], Any]) -> Callable[[], None]:
    def run() -> None:
        with pika.BlockingConnection(params) as connection:
            action(connection.channel())
    return run


def _check(fn: Callable[[Admin, str, str], Any], broker: Broker | None = None) -> str:
    broker = broker or shared_broker()
    tag = uuid.uuid4().hex[:8]
    vhost, user, password = f"check.ch10.{tag}", f"check-indexer-{tag}", secrets.token_urlsafe(18)
    admin = Admin(broker)
    try:
        admin.create_vhost(vhost)
        admin.set_permissions(vhost, broker.username, configure=".*", write=".*", read=".*")
        with pika.BlockingConnection(broker.parameters(virtual_host=vhost)) as connection:
            ch = connection.channel()
            for x in (EXCHANGE, "voice.index.audit", "voice_index", "voice.jobs"):
                ch.exchange_declare(x, "direct", durable=True)
            for q in (QUEUE, "voice.transcripts.archive", "voice.jobs.q"):
                ch.queue_declare(q, durable=True)
            ch.queue_bind(QUEUE, "voice.jobs", routing_key="t")
        admin.create_user(user, password)
        fn(admin, vhost, user)

        params = broker.parameters(virtual_host=vhost, connection_attempts=1,
                                   credentials=pika.PlainCredentials(user, password))
        login = attempt(lambda: pika.BlockingConnection(params).close())
        if login != "ok":
            raise Wrong(f"the service cannot even open a connection to the virtual host {vhost!r}: {login}. "
                        "A user needs a permission entry in a virtual host to enter it.")
        must = {
            f"get a message from {QUEUE!r} (read on the queue)": _on_channel(params, lambda c: c.basic_get(QUEUE)),
            f"publish to {EXCHANGE!r} (write on the exchange)": _publish(params, EXCHANGE),
        }
        for what, run in must.items():
            answer = attempt(run)
            if answer != "ok":
                raise Wrong(f"the service must {what}, but the broker said: {answer}")
        must_not = {
            "publish to 'voice.index.audit' (your write pattern is not anchored with ^...$?)":
                _publish(params, "voice.index.audit"),
            "publish to 'voice_index' (an unescaped '.' matches any character: write \\. )":
                _publish(params, "voice_index"),
            "publish to 'voice.jobs'": _publish(params, "voice.jobs"),
            "publish through the default exchange (write on 'amq.default')": _publish(params, ""),
            "get from 'voice.transcripts.archive' (your read pattern is not anchored with ^...$?)":
                _on_channel(params, lambda c: c.basic_get("voice.transcripts.archive")),
            "get from 'voice.jobs.q'": _on_channel(params, lambda c: c.basic_get("voice.jobs.q")),
            "declare a queue of its own (configure)":
                _on_channel(params, lambda c: c.queue_declare("voice.indexer.tmp", durable=True)),
            f"delete {QUEUE!r} (configure)": _on_channel(params, lambda c: c.queue_delete(QUEUE)),
            f"bind {QUEUE!r} to 'voice.index' (write on the queue)":
                _on_channel(params, lambda c: c.queue_bind(QUEUE, EXCHANGE, routing_key="x")),
        }
        for what, run in must_not.items():
            answer = attempt(run)
            if answer == "ok":
                raise Wrong(f"the service could {what}: grant less")
            if "ACCESS_REFUSED" not in answer:
                raise Wrong(f"trying to {what}, the service got {answer!r} instead of the broker's 403 ACCESS_REFUSED")
        return (f"the service can get from {QUEUE} and publish to {EXCHANGE}; the broker refused the other "
                f"{len(must_not)} attempts with 403 ACCESS_REFUSED.")
    finally:
        admin.delete_vhost(vhost)
        admin.delete_user(user)
        admin.close()


q1 = Exercise(
    "ch10.q1", "least privilege for a new service",
    _check,
    hints=[
        """Three regular expressions, one per kind of access: configure (declare, delete), write (publish to an
        exchange, bind a queue), read (get or consume from a queue). The indexer declares nothing.""",
        """Anchor each pattern with ^ and $ and escape the dots: "voice.index" also matches "voice.index.audit",
        and "." matches any character. The empty string "" matches nothing.""",
        """admin.set_permissions(vhost, user, configure="", write=r"^voice\\.index$", read=r"^voice\\.transcripts$")""",
    ],
    solution=grant_indexer,
)
