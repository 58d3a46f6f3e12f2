"""Exercises of notebook 09 (clusters and streams).

q1: a pipeline that survives the loss of any one node. The learner writes a class with three methods:

- ``declare(channel, queue)``: declare the job queue (on a channel the checker opened to ``addresses[0]``);
- ``publish(addresses, queue, jobs)``: publish every job of the iterable ``jobs`` (bytes; take them one at a
  time) so that none is lost, and return once each one is safe;
- ``work(addresses, queue, results, process, stop)``: consume jobs (JSON with a ``job_id``), store
  ``results.apply(job["job_id"], process(job))`` and settle each message, until ``stop.is_set()``.

``addresses`` is a list of ``pika.ConnectionParameters``, one per node of the cluster.

The checker runs ``publish`` and ``work`` side by side on the notebook's cluster (:func:`use_cluster`). Halfway
through the jobs it asks the broker which channels are in confirm mode (``rabbitmqctl list_channels``), then
kills ``addresses[0]``'s node, which leads the queue and holds every first connection. Once nothing has moved
for a while it starts the node again. Then it counts: every job applied once with the right result. It rejects
a classic queue (it lives on one node), a publisher without confirms (a message in flight when its node dies
is lost, and nobody knows which) and clients that know one address (they never come back); it accepts every
design that loses nothing.

Example (in the notebook, after writing ``Pipeline``)::

    from voicelab.exercises import ch09
    ch09.use_cluster(cluster)
    ch09.q1.check(Pipeline)
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions

from ..broker.cluster import Cluster
from ..reconnect import ResultStore
from .core import Exercise, Wrong, scratch_name

JOBS = 300
STALL_S = 4.0      # no job applied for this long after the kill: look at the queue (see _wait_and_restore)
GIVE_UP_S = 12.0   # nothing applied for this long after it is back: the design does not recover

_CLUSTER: Cluster | None = None


def use_cluster(cluster: Cluster | None) -> None:
    """The cluster the checker runs on (and kills a node of): the notebook's."""
    global _CLUSTER
    _CLUSTER = cluster


class FragilePipeline:
    """Known wrong: a classic queue, one address, no confirms. Works perfectly while every node is up."""

    def declare(self, channel: Any, queue: str) -> None:
        channel.queue_declare(queue, durable=True)

    def publish(self, addresses: list[pika.ConnectionParameters], queue: str, jobs: Any) -> None:
        with pika.BlockingConnection(addresses[0]) as connection:
            ch = connection.channel()
            for body in jobs:
                ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))

    def work(self, addresses: list[pika.ConnectionParameters], queue: str, results: Any,
             process: Callable[[dict], Any], stop: threading.Event) -> None:
        with pika.BlockingConnection(addresses[0]) as connection:
            ch = connection.channel()
            for method, _props, body in ch.consume(queue, inactivity_timeout=0.2):
                if stop.is_set():
                    return
                if method:
                    job = json.loads(body)
                    results.apply(job["job_id"], process(job))
                    ch.basic_ack(method.delivery_tag)


LOST = (pika.exceptions.AMQPError, OSError)


class Pipeline:
    """Reference solution of q1: a quorum queue, confirmed publishes, every client with every address."""

    def declare(self, channel: Any, queue: str) -> None:
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})

    def publish(self, addresses: list[pika.ConnectionParameters], queue: str, jobs: Any) -> None:
        todo = iter(jobs)
        body = next(todo, None)
        while body is not None:
            try:
                with pika.BlockingConnection(addresses) as connection:    # the first node that answers
                    ch = connection.channel()
                    ch.confirm_delivery()                                  # basic_publish waits for the confirm
                    while body is not None:
                        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
                        body = next(todo, None)                            # only once this one is confirmed
            except LOST:
                addresses = addresses[1:] + addresses[:1]                  # the node that failed goes last
                time.sleep(0.2)

    def work(self, addresses: list[pika.ConnectionParameters], queue: str, results: Any,
             process: Callable[[dict], Any], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with pika.BlockingConnection(addresses) as connection:
                    ch = connection.channel()
                    ch.basic_qos(prefetch_count=20)
                    for method, _props, body in ch.consume(queue, inactivity_timeout=0.2):
                        if stop.is_set():
                            return
                        if method:
                            job = json.loads(body)
                            results.apply(job["job_id"], process(job))    # idempotent: once per job id
                            ch.basic_ack(method.delivery_tag)             # after the result is stored
            except LOST:
                addresses = addresses[1:] + addresses[:1]
                time.sleep(0.2)


def _process(job: dict) -> dict:
    time.sleep(0.002)
    return {"square": job["n"] ** 2}


class _Run:
    """One check: the learner's pipeline against a cluster that loses the node every client connects to first."""

    def __init__(self, cls: Any, cluster: Cluster) -> None:
        self.pipeline = cls() if isinstance(cls, type) else cls
        self.cluster = cluster
        self.queue = scratch_name("cluster")
        self.victim = cluster.nodes[0]
        self.addresses = cluster.parameters(heartbeat=10)
        self.results = ResultStore()
        self.stop = threading.Event()
        self.confirm_modes: list[str] = []
        self.killed = False
        self.errors: dict[str, BaseException] = {}
        self.missing_at_stall = 0

    def jobs(self) -> Iterator[bytes]:
        for i in range(JOBS):
            if i == JOBS // 2:
                self._at_midpoint()
            yield json.dumps({"job_id": f"job-{i:04d}", "n": i}).encode()

    def _at_midpoint(self) -> None:
        """In the learner's publishing thread, between two jobs: which channels confirm; then the kill."""
        out = self.cluster.nodes[1].ctl("list_channels", "confirm", "consumer_count", "--no-table-headers", "-q")
        self.confirm_modes = [line.split()[0] for line in out.splitlines()
                              if line.split() and line.split()[-1] == "0"]   # channels that do not consume
        self.victim.kill()
        self.killed = True

    def _thread(self, name: str, target: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as e:  # noqa: BLE001 - reported in the verdict
                self.errors[name] = e
        t = threading.Thread(target=run, daemon=True, name=f"ch09-{name}")
        t.start()
        return t

    def run(self) -> str:
        with self.victim.connect() as connection:
            self.pipeline.declare(connection.channel(), self.queue)
        info = self.cluster.queue(self.queue)
        qtype = info.get("type", "classic")
        if qtype not in ("quorum", "stream"):
            raise Wrong(f"the job queue is a {qtype} queue: it lives on one node ({info.get('node')}), so when that "
                        "node is lost, so is the queue (its messages come back only with the node). Replicate it "
                        "across the cluster.")
        publisher = self._thread("publish", lambda: self.pipeline.publish(self.addresses, self.queue, self.jobs()))
        worker = self._thread("work", lambda: self.pipeline.work(self.addresses, self.queue, self.results,
                                                                 _process, self.stop))
        stuck = self._wait_and_restore(publisher)
        self.stop.set()
        publisher.join(15)
        worker.join(15)
        if any(isinstance(e, NotImplementedError) for e in self.errors.values()):
            raise NotImplementedError
        return self._verdict(stuck, publisher)

    def _ready(self) -> int:
        """Messages ready in the queue (not in a consumer's hands), asked of a node that runs."""
        with self.cluster.nodes[1].connect() as connection:
            return connection.channel().queue_declare(self.queue, passive=True).method.message_count

    def _wait_and_restore(self, publisher: threading.Thread) -> bool:
        """Wait until every job is applied, or nothing moves after the kill; start the node again; wait again.

        True ("stuck") when, with two nodes of three up, jobs were waiting in the queue or still unpublished: the
        clients had not come back. Jobs in the dead node's consumer's hands are not the clients' fault: 3.10 and
        4.0 return them at once, 4.3 keeps them for that consumer (``consumer_disconnected_timeout``, 60 s) or
        until its node is back.
        """
        deadline = time.monotonic() + 120
        last, since = -1, time.monotonic()
        stuck = False
        while time.monotonic() < deadline and self.results.applied < JOBS:
            if any(isinstance(e, NotImplementedError) for e in self.errors.values()):
                return False
            if self.results.applied != last:
                last, since = self.results.applied, time.monotonic()
            idle = time.monotonic() - since
            if not self.killed and not publisher.is_alive() and idle > STALL_S:
                return False   # the publisher ended before the midpoint (it never took half of the jobs)
            if self.killed and idle > STALL_S:
                waiting = self._ready() > 0 or publisher.is_alive()
                if not waiting or idle > 3 * STALL_S:
                    stuck = waiting
                    self.missing_at_stall = JOBS - self.results.applied
                    break
            time.sleep(0.05)
        if self.killed:
            self.victim.start()
            self.cluster.wait_formed()
        last, since = self.results.applied, time.monotonic()
        while self.results.applied < JOBS and time.monotonic() - since < GIVE_UP_S:
            time.sleep(0.05)
            if self.results.applied != last:
                last, since = self.results.applied, time.monotonic()
        return stuck

    def _verdict(self, stuck: bool, publisher: threading.Thread) -> str:
        if not self.killed:
            raise Wrong(f"publish() returned or failed before taking half of the {JOBS} jobs (take them one at a time "
                        f"from the iterable and publish each; error: {self.errors.get('publish')!r})")
        if "false" in self.confirm_modes or not self.confirm_modes:
            raise Wrong("halfway through, no publishing channel was in confirm mode (rabbitmqctl list_channels: "
                        f"confirm = {self.confirm_modes or 'no channel'}): a message in flight when its node dies is "
                        "lost and the publisher never knows which. Use channel.confirm_delivery().")
        missing = JOBS - self.results.applied
        if stuck:
            raise Wrong(f"after {self.victim.short} (addresses[0]) was killed, {self.missing_at_stall} of {JOBS} jobs were not done "
                        f"while two nodes of three were up: your clients did not reconnect to another node. "
                        "Give pika.BlockingConnection the whole list of addresses and reconnect when a connection "
                        "is lost.")
        if missing:
            raise Wrong(f"{missing} of {JOBS} jobs were never applied, even after {self.victim.short} came back.")
        wrong = [i for i in range(JOBS) if self.results.result(f"job-{i:04d}") != {"square": i * i}]
        if wrong:
            raise Wrong(f"{len(wrong)} jobs have a wrong result (job-{wrong[0]:04d}); store process(job)")
        if publisher.is_alive():
            raise Wrong("publish() had not returned 15 s after every job was done")
        return (f"{JOBS} jobs, {self.victim.short} killed halfway through publishing: every job applied once, "
                f"with the right result; publishing channels in confirm mode: {self.confirm_modes}.")

    def cleanup(self) -> None:
        self.stop.set()
        if not self.victim.running:
            with contextlib.suppress(Exception):
                self.victim.start()
                self.cluster.wait_formed()
        with contextlib.suppress(Exception), self.cluster.nodes[1].connect() as connection:
            connection.channel().queue_delete(self.queue)


def _check_pipeline(cls: Any) -> str:
    if _CLUSTER is None:
        raise Wrong("no cluster to check on: run ch09.use_cluster(cluster) first (the notebook's first cell starts "
                    "one)")
    for method in ("declare", "publish", "work"):
        if not callable(getattr(cls, method, None)):
            raise Wrong(f"pass a class with the methods declare, publish and work (missing: {method})")
    run = _Run(cls, _CLUSTER)
    try:
        return run.run()
    finally:
        run.cleanup()


q1 = Exercise(
    "ch09.q1", "a pipeline that survives the loss of any one node",
    _check_pipeline,
    hints=[
        """Three things must survive the loss of a node: the queue (where does a classic queue live?), the
        messages in flight (how does a publisher learn that the broker has a message?), and the clients (what
        does a client do when the only node it knows is gone?).""",
        """declare: arguments={"x-queue-type": "quorum"}. publish: channel.confirm_delivery(), then basic_publish
        each job and take the next one only after it returned; on pika.exceptions.AMQPError or OSError, open a
        new pika.BlockingConnection(addresses) and go on with the job that was not confirmed. work: the same
        reconnect loop around a consumer that stores results.apply(...) and then acks.""",
    ],
    solution=Pipeline,
)
