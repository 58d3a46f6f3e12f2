"""A three-node cluster through the loss of nodes: experiments of notebook 09, each counted on the real brokers.

- :func:`leader_kill`: the node that leads a quorum queue is killed in the middle of a confirmed publishing run,
  a consumer attached; a classic queue that lived on the same node is asked for from a survivor.
- :func:`majority_loss`: two of three nodes are killed: publishes are not confirmed; one comes back: they are.
- :class:`FailoverWorker`: a worker that connects with a list of nodes and resumes on a survivor, its results
  applied once per job id (:class:`voicelab.pipeline.ResultFiles`), and :func:`failover_run` around it.
- :func:`plot_timeline`: publish and consume rates through a failure, with the kill, election and restart marked.

Every function restores the cluster (the killed nodes started again) before it returns.

Example::

    from voicelab.broker import start_cluster
    with start_cluster() as cluster:
        run = leader_kill(cluster, "jobs09", n=2000)
        print(run.summary())
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import pika
import pika.exceptions

from ..broker.cluster import Cluster, ClusterNode

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def cluster_caption(cluster: Cluster) -> str:
    """``"RabbitMQ 4.3.6, cluster of 3 containers of voicelab/rabbitmq:4.3 on 2 cores ..."`` (or ``... of 3 local
    rabbitmq-server nodes ...``) for a figure."""
    from .measure import machine
    return f"RabbitMQ {cluster.version}, cluster of {cluster.kind} on {machine()}"


def cluster_banner(cluster: Cluster) -> str:
    """What the notebook prints first: version, what the nodes are, machine, how the backend was chosen when the
    first choice failed, and each node's AMQP port and management UI."""
    notice = f"\nnote: {cluster.notice}" if cluster.notice else ""
    return f"{cluster_caption(cluster)}{notice}\n{cluster.describe()}"


def node_label(name: str) -> str:
    """``"n1"`` for a node name of either backend (``rabbit@voicelab-1a2b3c4d-n1``, ``voicelab-1a2b3c4d-n1@localhost``).

    >>> node_label("rabbit@voicelab-1a2b3c4d-n2"), node_label("voicelab-1a2b3c4d-n3@localhost")
    ('n2', 'n3')
    """
    found = re.search(r"-(n\d+)(?:@|$)", name)
    return found.group(1) if found else name
LOST = (pika.exceptions.AMQPError, OSError)   # what pika raises when a node goes away under a connection


def node_of(cluster: Cluster, connection: pika.BlockingConnection) -> ClusterNode:
    """The node a connection went to (pika's ``BlockingConnection`` keeps the parameters it used)."""
    port = connection._impl.params.port   # pika has no public accessor for the address it chose
    return next(n for n in cluster.nodes if n.port == port)


def declare_quorum(cluster: Cluster, queue: str, on: ClusterNode, **arguments: Any) -> str:
    """Declare a (fresh) quorum queue through ``on``; returns its leader as the management API reports it."""
    with on.connect() as connection:
        ch = connection.channel()
        ch.queue_delete(queue)
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum", **arguments})
    return wait_leader(cluster, queue)


def wait_leader(cluster: Cluster, queue: str, not_on: set[str] = frozenset(), timeout: float = 60) -> str:  # type: ignore[assignment]
    """Poll the management API until ``queue`` has a leader that is not in ``not_on``; that leader."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = cluster.leader(queue)
        except Exception:  # noqa: BLE001 - a node between states may not answer this time
            seen = None
        if seen and seen not in not_on:
            return seen
        time.sleep(0.1)
    raise TimeoutError(f"queue {queue!r}: no leader outside {sorted(not_on)} after {timeout:.0f} s (saw {seen})")


class Consumer(threading.Thread):
    """A consumer thread on one node: prefetch 50, manual acks, each delivery recorded as ``(t, body, redelivered)``."""

    def __init__(self, node: ClusterNode, queue: str, t0: float, prefetch: int = 50) -> None:
        super().__init__(daemon=True)
        self.node, self.queue, self.t0, self.prefetch = node, queue, t0, prefetch
        self.events: list[tuple[float, int, bool]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            with self.node.connect() as connection:
                ch = connection.channel()
                ch.basic_qos(prefetch_count=self.prefetch)

                def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
                    self.events.append((time.monotonic() - self.t0, int(body), bool(method.redelivered)))
                    channel.basic_ack(method.delivery_tag)

                ch.basic_consume(self.queue, on_message)
                self.ready.set()
                while not self.halt.is_set():
                    connection.process_data_events(time_limit=0.1)
        except LOST as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self.ready.set()

    @property
    def bodies(self) -> list[int]:
        return [b for _, b, _ in self.events]


class Publisher(threading.Thread):
    """A publisher thread on one node: persistent messages ``0..n-1``, each confirmed before the next
    (``confirm_delivery``); every confirm recorded as ``(t, body)``; ``sent`` counts the publishes begun."""

    def __init__(self, node: ClusterNode, queue: str, n: int, t0: float) -> None:
        super().__init__(daemon=True)
        self.node, self.queue, self.n, self.t0 = node, queue, n, t0
        self.confirms: list[tuple[float, int]] = []
        self.sent = 0
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            with self.node.connect() as connection:
                ch = connection.channel()
                ch.confirm_delivery()
                for i in range(self.n):
                    self.sent += 1
                    ch.basic_publish("", self.queue, str(i).encode(), PERSISTENT, mandatory=True)
                    self.confirms.append((time.monotonic() - self.t0, i))
        except LOST as e:
            self.errors.append(f"{type(e).__name__}: {e}")


@dataclass
class LeaderKill:
    """What :func:`leader_kill` counted. Times in seconds from the start of publishing."""

    version: str
    n: int
    old_leader: str
    new_leader: str
    survivors: list[str]
    t_kill: float
    t_elected: float
    t_restarted: float
    confirms: pd.DataFrame            # t, body
    deliveries: pd.DataFrame          # t, body, redelivered
    publisher_errors: list[str]
    consumer_errors: list[str]
    classic_before: int               # messages in the classic queue on the leader's node before the kill
    classic_while_down: str           # what a passive declare said from a survivor while that node was down
    classic_after: int                # messages in it once the node was back
    members_after: list[str] = field(default_factory=list)
    classic_publish_while_down: str = ""   # a confirmed, mandatory publish to it from a survivor, while down
    classic_final_answer: str = ""         # what the passive declare finally answered
    classic_answered_at: float = float("nan")  # when (s from the start), compare with t_restarted

    @property
    def classic_answer_after_restart(self) -> bool:
        """True when the passive declare asked while the node was down was answered only after it came back."""
        return self.classic_answered_at > self.t_restarted

    @property
    def election_s(self) -> float:
        """From the kill to the management API naming a new leader (polled every 0.1 s)."""
        return self.t_elected - self.t_kill

    @property
    def confirm_gap(self) -> tuple[float, float]:
        """The publisher's wait at the kill: (last confirm before it, first confirm after it), in s."""
        t = self.confirms["t"]
        before, after = t[t <= self.t_kill], t[t > self.t_kill]
        return (float(before.max()) if len(before) else 0.0, float(after.min()) if len(after) else float("nan"))

    @property
    def typical_gap_s(self) -> float:
        """The median time between two confirms (one round trip through the quorum)."""
        return float(self.confirms["t"].diff().median())

    def summary(self) -> pd.Series:
        gap = self.confirm_gap
        received = set(self.deliveries["body"])
        return pd.Series({
            "RabbitMQ": self.version, "published and confirmed": len(self.confirms),
            "confirmed and delivered": len(set(self.confirms["body"]) & received),
            "deliveries (redelivered)": f"{len(self.deliveries)} ({int(self.deliveries['redelivered'].sum())})",
            "leader killed": self.old_leader, "new leader": self.new_leader,
            "election (kill to new leader), s": round(self.election_s, 2),
            "publisher's wait for a confirm at the kill, s": round(gap[1] - gap[0], 2),
            "median time between two confirms, s": round(self.typical_gap_s, 4),
            "classic queue on the killed node, while down": self.classic_while_down[:60] + "...",
        })


class ClassicProbe(threading.Thread):
    """From a survivor, while a classic queue's node is down: a passive declare (how many messages?) on one
    connection, and a publish with confirms and ``mandatory`` on another; each answer with its time."""

    def __init__(self, node: ClusterNode, queue: str, t0: float) -> None:
        super().__init__(daemon=True)
        self.node, self.queue, self.t0 = node, queue, t0
        self.answered = threading.Event()
        self.answer = ""
        self.t_answer = float("nan")
        self.publish_outcome = ""

    def _publish(self) -> None:
        try:
            with self.node.connect() as connection:
                ch = connection.channel()
                ch.confirm_delivery()
                ch.basic_publish("", self.queue, b"while-down", PERSISTENT, mandatory=True)
                self.publish_outcome = "confirmed"
        except pika.exceptions.UnroutableError:
            self.publish_outcome = "returned (unroutable)"
        except pika.exceptions.NackError:
            self.publish_outcome = "nacked"
        except LOST as e:
            self.publish_outcome = f"{type(e).__name__}: {e}"

    def run(self) -> None:
        publisher = threading.Thread(target=self._publish, daemon=True)
        publisher.start()
        try:
            with self.node.connect() as connection:
                n = connection.channel().queue_declare(self.queue, durable=True, passive=True).method.message_count
                self.answer = f"{n} messages"
        except pika.exceptions.ChannelClosedByBroker as e:
            self.answer = f"{e.reply_code} {e.reply_text}"
        except LOST as e:
            self.answer = f"{type(e).__name__}: {e}"
        self.t_answer = time.monotonic() - self.t0
        self.answered.set()
        publisher.join(90)
        if publisher.is_alive():
            self.publish_outcome = "no answer after 90 s"


def leader_kill(cluster: Cluster, queue: str, n: int, kill_at: float = 0.3, classic: str | None = None,
                probe_wait: float = 5.0) -> LeaderKill:
    """Kill the leader of quorum queue ``queue`` when ``kill_at`` of ``n`` confirmed publishes are done.

    The queue is declared through ``nodes[0]`` (leader there: the client-local placement), the publisher
    connects to ``nodes[1]``, the consumer to ``nodes[2]``. A classic durable queue ``classic`` is declared on
    the leader's node with a few persistent, confirmed messages, and asked for from a survivor while the
    leader's node is down, then again once it is back.
    """
    classic = classic or f"{queue}.classic"
    first = cluster.nodes[0]
    old = declare_quorum(cluster, queue, first)
    leader_node = cluster.node(old)
    survivors = [n_ for n_ in cluster.nodes if n_ is not leader_node]
    with leader_node.connect() as connection:
        ch = connection.channel()
        ch.queue_delete(classic)
        ch.queue_declare(classic, durable=True)
        ch.confirm_delivery()
        for i in range(20):
            ch.basic_publish("", classic, str(i).encode(), PERSISTENT)
        classic_before = ch.queue_declare(classic, passive=True).method.message_count
    t0 = time.monotonic()
    consumer = Consumer(survivors[1], queue, t0)
    consumer.start()
    consumer.ready.wait(30)
    publisher = Publisher(survivors[0], queue, n, t0)
    publisher.start()
    while len(publisher.confirms) < kill_at * n and publisher.is_alive():
        time.sleep(0.01)
    t_kill = leader_node.kill() - t0           # the moment the SIGKILL was sent
    probe = ClassicProbe(survivors[0], classic, t0)
    probe.start()
    new = wait_leader(cluster, queue, not_on={old})
    t_elected = time.monotonic() - t0
    probe.answered.wait(probe_wait)
    while_down = probe.answer if probe.answered.is_set() else f"no answer after {probe_wait:.0f} s"
    publisher.join(300)
    deadline = time.monotonic() + 60
    want = {b for _, b in publisher.confirms}
    while not want <= set(consumer.bodies) and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.halt.set()
    consumer.join(30)
    t_restarted = time.monotonic() - t0
    leader_node.start()
    probe.join(90)
    cluster.wait_formed()
    with leader_node.connect() as connection:
        classic_after = connection.channel().queue_declare(classic, durable=True, passive=True).method.message_count
        connection.channel().queue_delete(classic)
    members = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:   # the restarted member catches up with the log and is online again
        info = cluster.queue(queue)
        members = sorted(info.get("online") or [])
        if len(members) == len(cluster.nodes):
            break
        time.sleep(0.2)
    return LeaderKill(
        version=cluster.version, n=n, old_leader=old, new_leader=new, survivors=[s.node for s in survivors],
        t_kill=t_kill, t_elected=t_elected, t_restarted=t_restarted,
        confirms=pd.DataFrame(publisher.confirms, columns=["t", "body"]),
        deliveries=pd.DataFrame(consumer.events, columns=["t", "body", "redelivered"]),
        publisher_errors=publisher.errors, consumer_errors=consumer.errors,
        classic_before=classic_before, classic_while_down=while_down, classic_after=classic_after,
        members_after=members, classic_publish_while_down=probe.publish_outcome,
        classic_final_answer=probe.answer, classic_answered_at=probe.t_answer)


def plot_timeline(run: LeaderKill, caption: str, bin_s: float = 0.25) -> plt.Figure:
    """Confirms/s and deliveries/s through the kill, in bins of ``bin_s``; the kill, election and restart marked."""
    from .measure import add_caption
    fig, ax = plt.subplots(figsize=(10, 3.6))
    end = max(run.confirms["t"].max(), run.deliveries["t"].max()) + bin_s
    bins = pd.interval_range(0, end + bin_s, freq=bin_s)
    for frame, label in ((run.confirms, "publishes confirmed"), (run.deliveries, "deliveries to the consumer")):
        counts = pd.cut(frame["t"], bins).value_counts(sort=False) / bin_s
        ax.plot([b.left for b in counts.index], counts.to_numpy(), drawstyle="steps-post", label=label)
    ax.axvline(run.t_kill, color="red", ls="--", label=f"leader {node_label(run.old_leader)} killed")
    ax.axvline(run.t_elected, color="green", ls=":", label=f"new leader {node_label(run.new_leader)} "
                                                          f"({run.election_s:.1f} s)")
    if run.t_restarted < end:
        ax.axvline(run.t_restarted, color="gray", ls="-.", label="killed node started again")
    ax.set_xlabel("time since publishing began (s)")
    ax.set_ylabel(f"messages/s (bins of {bin_s} s)")
    ax.set_title(f"A quorum queue loses its leader: RabbitMQ {run.version}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.subplots_adjust(right=0.75)
    add_caption(fig, caption)
    return fig


@dataclass
class MajorityLoss:
    """What :func:`majority_loss` counted."""

    version: str
    n: int
    killed: list[str]
    connected_to: str
    sent_while_down: int
    confirmed_while_down: int
    waited_s: float
    confirmed_after_one_back: int
    back_to_confirm_s: float          # from starting the second node to the last confirm
    node_ready_s: float               # from starting it to its accepting connections
    in_queue: int
    errors: list[str]


def majority_loss(cluster: Cluster, queue: str, n: int = 5, wait: float = 3.0) -> MajorityLoss:
    """Kill two of three nodes; publish ``n`` confirmed messages through the survivor; wait ``wait`` s and count
    the confirms; start one killed node and count again; then start the other."""
    survivor, *others = cluster.nodes
    declare_quorum(cluster, queue, survivor)
    for node in others:
        node.kill()
    t0 = time.monotonic()
    publisher = Publisher(survivor, queue, n, t0)
    publisher.start()
    time.sleep(wait)
    sent, confirmed, waited = publisher.sent, len(publisher.confirms), time.monotonic() - t0
    t_back = time.monotonic()
    others[0].start()
    ready_s = time.monotonic() - t_back
    publisher.join(120)
    back = (time.monotonic() - t_back) if not publisher.is_alive() else float("nan")
    confirmed_after = len(publisher.confirms)
    others[1].start()
    cluster.wait_formed()
    with survivor.connect() as connection:
        in_queue = connection.channel().queue_declare(queue, durable=True, passive=True,
                                                      arguments={"x-queue-type": "quorum"}).method.message_count
    return MajorityLoss(cluster.version, n, [o.node for o in others], survivor.node, sent, confirmed, waited,
                        confirmed_after, back, ready_s, in_queue, publisher.errors)


# -- a client that fails over -------------------------------------------------------------------------------

class FailoverWorker(threading.Thread):
    """A worker that connects with a list of nodes and, when its node dies, reconnects to the next one that answers.

    ``pika.BlockingConnection(cluster.parameters(order))`` tries each address in turn (one attempt each); after a
    loss the list is rotated so that the node that failed is tried last. Each job is processed, its result
    applied with ``results.apply(job_id, result)`` (once per job id, whoever asks twice), and only then acked:
    a job in hand when the node died comes back and is applied zero more times. ``log`` says where the worker
    was connected and what it saw.
    """

    def __init__(self, cluster: Cluster, queue: str, results: Any, process: Callable[[dict], Any],
                 order: list[ClusterNode] | None = None, prefetch: int = 10) -> None:
        super().__init__(daemon=True)
        self.cluster, self.queue, self.results, self.process = cluster, queue, results, process
        self.order = list(order or cluster.nodes)
        self.prefetch = prefetch
        self.halt = threading.Event()
        self.log: list[dict[str, Any]] = []
        self.deliveries = 0
        self.applied = 0
        self.already = 0           # deliveries whose job was applied before: redeliveries, not applied again
        self.t0 = time.monotonic()

    def _say(self, event: str, node: str, detail: str = "") -> None:
        self.log.append({"t": round(time.monotonic() - self.t0, 2), "event": event, "node": node, "detail": detail})

    def run(self) -> None:
        failures = 0
        while not self.halt.is_set():
            node = "?"
            try:
                connection = pika.BlockingConnection(self.cluster.parameters(self.order, heartbeat=10))
                where = node_of(self.cluster, connection)
                node = where.short
                self._say("connected", node, f"{len(self.order)} addresses, tried in order "
                                             f"{[n.short for n in self.order]}")
                failures = 0
                try:
                    ch = connection.channel()
                    ch.basic_qos(prefetch_count=self.prefetch)
                    for method, _props, body in ch.consume(self.queue, inactivity_timeout=0.1):
                        if self.halt.is_set():
                            break
                        if method is None:
                            continue
                        self.deliveries += 1
                        job = json.loads(body)
                        if self.results.apply(job["job_id"], self.process(job)):
                            self.applied += 1
                        else:
                            self.already += 1
                        ch.basic_ack(method.delivery_tag)
                finally:
                    if connection.is_open:
                        connection.close()
            except LOST as e:
                failures += 1
                self._say("lost" if node != "?" else "no node answered", node, f"{type(e).__name__}")
                if node != "?":   # the node that failed goes to the end of the list
                    failed = self.cluster.node(node)
                    self.order = [n for n in self.order if n is not failed] + [failed]
                time.sleep(min(2.0, 0.1 * 2 ** min(failures, 5)))


@dataclass
class FailoverRun:
    jobs: int
    applied: int
    deliveries: int
    already: int
    killed: str
    held: int                 # jobs not applied before the killed node was started again
    restart_s: float          # from the kill to starting the node again
    done_s: float             # from the kill to the last job applied
    log: pd.DataFrame


def failover_run(cluster: Cluster, queue: str, jobs: int, results: Any, kill_after: float = 0.3,
                 work_s: float = 0.002, stall_s: float = 4.0) -> FailoverRun:
    """Publish ``jobs`` confirmed jobs (queue led by ``nodes[1]``), run a :class:`FailoverWorker` that connects to
    ``nodes[0]`` first, kill ``nodes[0]`` once ``kill_after`` of the jobs are
    applied; once no job has been applied for ``stall_s`` (or all are), start the node again and wait until every
    job is applied. ``held``: the jobs still missing when the node was started again (the ones the dead node's
    consumer had in hand, on a version that keeps them for it: 4.3's ``consumer_disconnected_timeout``)."""
    declare_quorum(cluster, queue, cluster.nodes[1])
    with cluster.nodes[1].connect() as connection:
        ch = connection.channel()
        ch.confirm_delivery()
        for i in range(jobs):
            ch.basic_publish("", queue, json.dumps({"job_id": f"job-{i:05d}", "n": i}).encode(), PERSISTENT)

    def process(job: dict) -> dict:
        time.sleep(work_s)
        return {"square": job["n"] ** 2}

    worker = FailoverWorker(cluster, queue, results, process, order=list(cluster.nodes))
    worker.start()
    victim = cluster.nodes[0]
    deadline = time.monotonic() + 120
    while results.applied < kill_after * jobs and time.monotonic() < deadline:
        time.sleep(0.01)
    worker._say("killed by the lesson", victim.short)
    t_kill = time.monotonic()
    victim.kill()
    last, last_change = results.applied, time.monotonic()
    while results.applied < jobs and time.monotonic() - last_change < stall_s and time.monotonic() < deadline:
        time.sleep(0.05)
        if results.applied != last:
            last, last_change = results.applied, time.monotonic()
    held = jobs - results.applied           # jobs the survivors could not get while the dead node was away
    worker._say(f"{results.applied} of {jobs} applied; starting the killed node again", victim.short)
    t_restart = time.monotonic()
    victim.start()
    while results.applied < jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    t_done = time.monotonic()
    worker.halt.set()
    worker.join(30)
    cluster.wait_formed()
    return FailoverRun(jobs, results.applied, worker.deliveries, worker.already, victim.short, held,
                       t_restart - t_kill, t_done - t_kill, pd.DataFrame(worker.log))
