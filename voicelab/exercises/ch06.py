"""Exercises of notebook 06 (retries and dead letters).

q1: write ``retry_policy(channel, method, properties, body, process, max_attempts)``,
called for every delivery of a work queue ``method.routing_key`` (a durable *classic*
queue) that has a dead-letter queue ``<queue>.dlq``. It must:

- parse the body (``VoiceJob.from_json``); a poison message (``BadJob``) goes to
  the DLQ at once, with a header whose name contains ``reason``;
- call ``process(job)``; on success, ack;
- on failure (``process`` raises), try again, up to ``max_attempts`` calls of
  ``process`` in all for that job, then put the message in the DLQ with a
  ``reason`` header.

The checker publishes good, transiently failing and poison jobs and one that
always fails, consumes with your function (channel in confirm mode, prefetch 1)
until every job has its outcome, and checks each: done after 1 call; done after
exactly N calls; poison in the DLQ after no call and one delivery, with its reason;
the always-failing job in the DLQ after exactly ``max_attempts`` calls, with its
reason; nothing left (wait queues included), nothing twice. Then it runs the
retries again with every delivery handled by a freshly started worker (a restart,
or another worker of a fleet: a count kept in the worker's memory is lost), and
kills the worker just before each of its broker calls in turn (publish, ack, nack,
reject) to check that no crash loses a job. Queues you declare whose names start
with the work queue's (wait queues) are deleted afterwards.

Example (in the notebook, after writing ``retry_policy``)::

    from voicelab.exercises import ch06
    ch06.q1.check(retry_policy)     # pass, or what is wrong and a hint
    ch06.q1.hint()
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import pika

from ..broker import Broker, shared_broker
from ..jobs import VoiceJob
from ..management import Management
from ..queues import dlq_name, drain
from ..reconnect import CONNECTION_ERRORS
from ..retry import RetryPolicy, handle_delivery
from .core import CrashingChannel, Exercise, WorkerKilled, Wrong, fresh_worker, scratch_queue

MAX_ATTEMPTS = 3
CAP = 40               # deliveries after which the checker stops a loop that never ends
TRIAL_SECONDS = 15.0   # a safety net only: a run stops as soon as every message has its outcome
IDLE_CHECKS = 5        # a run whose queues (work and wait queues) read empty this many times in a row is over
BROKER_REASONS = ("x-first-death-reason", "x-last-death-reason")


def retry_policy(channel: Any, method: Any, properties: pika.BasicProperties, body: bytes,
                 process: Callable[[VoiceJob], Any], max_attempts: int) -> None:
    """Reference solution of q1: republish a copy with an attempt header (confirmed), then ack; see voicelab.retry."""
    queue = method.routing_key
    policy = RetryPolicy("republish", max_attempts=max_attempts)
    handle_delivery(channel, queue, method, properties, body, lambda job, attempt: process(job), policy)


class Flaky(Exception):
    """What the checker's ``process`` raises for a job that is set to fail (a transient error)."""


def _reason(headers: dict[str, Any]) -> str:
    """The value of the learner's header whose name contains ``reason`` (not the broker's x-...-death-reason)."""
    for key, value in headers.items():
        if "reason" in str(key).lower() and str(key).lower() not in BROKER_REASONS and value:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return ""


@dataclass
class _Trial:
    """One run of the learner's policy on a scratch queue: publish ``bodies``, consume until each has its outcome.

    ``fails[job_id]``: how many calls of ``process`` fail before one succeeds. ``fleet``: every delivery goes
    to a freshly started worker (its memory copied from ``fn`` as it was before the check). ``kill_at``: the
    first worker is killed just before its k-th broker call (:class:`CrashingChannel`); the next is fresh.
    """

    fn: Callable[..., Any]
    broker: Broker
    queue: str
    bodies: list[bytes]
    fails: dict[str, int]
    max_attempts: int = MAX_ATTEMPTS
    fleet: bool = False
    kill_at: int | None = None
    calls: Counter[str] = field(default_factory=Counter)
    successes: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[bytes] = field(default_factory=Counter)
    mutated_headers: bool = False
    requeues: int = 0
    killed: CrashingChannel | None = None
    dead: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    left: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False
    _proxy: CrashingChannel | None = None
    _worker: Callable[..., Any] | None = None
    _observer_connection: Any = None
    _observer: Any = None

    @property
    def looped(self) -> bool:
        return sum(self.deliveries.values()) > CAP

    def process(self, job: VoiceJob) -> dict[str, Any]:
        """The job's work: fails ``fails[job_id]`` times, then succeeds. A killed worker does nothing more."""
        if self._proxy is not None and self._proxy.dead:
            raise WorkerKilled("the worker was killed")
        self.calls[job.job_id] += 1
        if self.calls[job.job_id] <= self.fails.get(job.job_id, 0):
            raise Flaky(f"the speech service timed out (call {self.calls[job.job_id]})")
        self.successes[job.job_id] += 1
        return {"job_id": job.job_id}

    def on_message(self, ch: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        self.deliveries[body] += 1
        if self.looped:
            return   # a loop that never ends: stop feeding it
        assert self._proxy is not None
        worker = fresh_worker(self.fn) if self.fleet else self._worker
        before, requeues = dict(properties.headers or {}), self._proxy.requeues
        try:
            worker(self._proxy, method, properties, body, self.process, self.max_attempts)  # type: ignore[misc]
        finally:
            self.mutated_headers |= dict(properties.headers or {}) != before
            self.requeues += self._proxy.requeues - requeues
        if self._proxy.dead:
            raise WorkerKilled("the worker was killed")   # it swallowed the kill (a bare except:), it is dead anyway

    def observer(self) -> Any:
        """The checker's own channel (a passive declare of a missing queue closes it: then a new one)."""
        if self._observer is None or not self._observer.is_open:
            self._observer = self._observer_connection.channel()
        return self._observer

    def run(self, connection: Any, mgmt: Management | None) -> None:
        """Publish the bodies, then one worker after another (a fresh one after a kill) until the run is over."""
        self._observer_connection = connection
        publisher = connection.channel()
        publisher.confirm_delivery()
        for body in self.bodies:
            publisher.basic_publish("", self.queue, body, pika.BasicProperties(delivery_mode=2,
                                                                             content_type="application/json"))
        t0 = time.monotonic()
        while True:
            connection = self.broker.connect()
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                channel.basic_qos(prefetch_count=1)
                self._proxy = CrashingChannel(channel, None if self.killed else self.kill_at)
                self._worker = fresh_worker(self.fn)   # a new process: the memory it starts with
                channel.basic_consume(self.queue, self.on_message)
                self._consume(connection, mgmt, t0)
                return
            except WorkerKilled:
                self.killed = self._proxy
            finally:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    connection.close()   # a dead worker's unacked message goes back to the queue

    def _consume(self, connection: Any, mgmt: Management | None, t0: float) -> None:
        """Deliver until every message has its outcome and the queues are empty, the queues stay empty
        (:data:`IDLE_CHECKS` reads in a row: a message was lost), a loop passes :data:`CAP` deliveries, or
        :data:`TRIAL_SECONDS` pass."""
        idle, last = 0, 0.0
        while not self.looped:
            connection.process_data_events(time_limit=0.05)
            if time.monotonic() - t0 > TRIAL_SECONDS:
                self.timed_out = True
                return
            if time.monotonic() - last < 0.2:
                continue
            last = time.monotonic()
            waiting = sum(self.queue_counts(mgmt).values())
            idle = idle + 1 if waiting == 0 else 0
            if waiting == 0 and (self._outcomes_reached() or idle >= IDLE_CHECKS):
                return

    def _outcomes_reached(self) -> bool:
        jobs = [j for j in (_job_id(b) for b in self.bodies) if j is not None]
        done = [j for j in jobs if self.fails.get(j, 0) < self.max_attempts]
        expect_dead = len(self.bodies) - len(done)
        in_dlq = int(self.observer().queue_declare(dlq_name(self.queue), passive=True).method.message_count)
        return all(self.successes[j] for j in done) and in_dlq >= expect_dead

    def queue_counts(self, mgmt: Management | None) -> dict[str, int]:
        """Messages ready in the work queue and in the learner's queues named after it (wait queues), by name."""
        counts = {}
        for name in [self.queue, *_named_after(mgmt, self.queue)]:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                counts[name] = int(self.observer().queue_declare(name, passive=True).method.message_count)
        return counts

    def read(self, mgmt: Management | None) -> None:
        """What is left in the work queue and wait queues, and what is in the DLQ (drained)."""
        self.left = {name: n for name, n in self.queue_counts(mgmt).items() if n}
        self.dead = [(m.body, dict(m.properties.headers or {})) for m in drain(self.observer(), dlq_name(self.queue))]


def _job_id(body: bytes) -> str | None:
    try:
        return VoiceJob.from_json(body).job_id
    except ValueError:
        return None


def _named_after(mgmt: Management | None, queue: str) -> list[str]:
    """Queues whose names start with ``queue`` (the learner's wait queues), other than it and its DLQ."""
    if mgmt is None:
        return []
    names = [q["name"] for q in mgmt.get(f"queues/{mgmt.vhost}?columns=name")]
    return sorted(n for n in names if n.startswith(queue) and n not in (queue, dlq_name(queue)))


def _run_trial(trial: _Trial) -> _Trial:
    """Run ``trial`` on its scratch queue and read the result; the learner's wait queues and exchanges named
    after the queue are deleted afterwards, whatever happens."""
    with contextlib.ExitStack() as stack:
        mgmt = _management(trial.broker)
        if mgmt is not None:
            stack.callback(mgmt.close)
        queue = stack.enter_context(scratch_queue("retry", dead_letters=True, broker=trial.broker))
        stack.callback(_delete_named_after, trial.broker, mgmt, queue)
        trial.queue = queue
        with trial.broker.connect() as connection:
            trial.run(connection, mgmt)
            trial.read(mgmt)
    return trial


def _management(broker: Broker) -> Management | None:
    try:
        return Management(broker)
    except Exception:  # noqa: BLE001 - a broker given by URL without management: wait queues are not looked for
        return None


def _delete_named_after(broker: Broker, mgmt: Management | None, queue: str) -> None:
    if mgmt is None:
        return
    exchanges = [e["name"] for e in mgmt.get(f"exchanges/{mgmt.vhost}?columns=name") if e["name"].startswith(queue)]
    with broker.connect() as connection:
        channel = connection.channel()
        for name in _named_after(mgmt, queue):
            channel.queue_delete(name)
        for name in exchanges:
            channel.exchange_delete(name)


def _refuse_loop(t: _Trial) -> None:
    """A run that never settled: the queue kept delivering, or a retry never came back in time."""
    per_job = sorted(t.calls.values(), reverse=True)
    if t.looped and t.mutated_headers and t.requeues:
        raise Wrong(f"the queue delivered more than {CAP} times for {len(t.bodies)} jobs and never settled: your "
                    f"retries loop forever. Calls to process per job: {per_job}. Headers you change on a received "
                    f"message (properties.headers[...] = ...) are your copy: basic_nack(requeue=True) redelivers the "
                    f"broker's unchanged message, so a count kept there stays 0")
    if t.looped and t.requeues:
        raise Wrong(f"the queue delivered more than {CAP} times for {len(t.bodies)} jobs and never settled: your "
                    f"retries loop forever (calls to process per job: {per_job}). The work queue is a classic queue: "
                    f"basic_nack/basic_reject with requeue=True puts the broker's unchanged message back, with no "
                    f"count (x-delivery-count and x-delivery-limit exist only on quorum queues), so nothing stops "
                    f"it. Carry the count in a copy you publish (to the queue or a TTL wait queue), then ack")
    if t.looped:
        raise Wrong(f"the queue delivered more than {CAP} times for {len(t.bodies)} jobs and never settled: the "
                    f"copies you publish come back forever (calls to process per job: {per_job}); the count they "
                    f"carry must grow at each attempt and stop the retries at max_attempts")
    if t.timed_out:
        raise Wrong(f"after {TRIAL_SECONDS:.0f} s the jobs still had no outcome ({_where(t.left)}; calls to process "
                    f"per job: {per_job}): a retry should come back within a few seconds")


def _where(left: dict[str, int]) -> str:
    return ", ".join(f"{n} in {name}" for name, n in left.items()) or "none in the queues"


def _refuse_retried_poison(t: _Trial, poison: dict[bytes, str]) -> None:
    for body, what in poison.items():
        if t.deliveries[body] > 1:
            raise Wrong(f"the poison message ({what}: {body[:30]!r}) was delivered {t.deliveries[body]} times: you "
                        f"retried it. A body VoiceJob.from_json refuses (BadJob) will never parse, however often you "
                        f"try: put it in the DLQ at its first delivery, with its reason")


def _judge_retry_policy(t: _Trial, good: VoiceJob, flaky: VoiceJob, doomed: VoiceJob, poison: dict[bytes, str]) -> str:
    """The verdict on the main run: the pass message, or :class:`Wrong` with what went wrong."""
    _refuse_loop(t)
    _refuse_retried_poison(t, poison)
    dead_bodies = Counter(body for body, _ in t.dead)
    twice = [b for b, n in dead_bodies.items() if n > 1]
    if twice:
        raise Wrong(f"{len(twice)} message(s) are in the DLQ more than once: publish each dead letter once")
    for body, what in poison.items():
        if body not in dead_bodies:
            raise Wrong(f"the poison message ({what}: {body[:30]!r}) is not in the DLQ: a body VoiceJob.from_json "
                        f"refuses (BadJob) can never succeed; publish it to <queue>.dlq and ack it")
    for job, name, want in [(good, "good", 1), (flaky, "transiently failing", MAX_ATTEMPTS)]:
        if t.calls[job.job_id] != want:
            raise Wrong(f"the {name} job was processed {t.calls[job.job_id]} time(s), expected {want}"
                        + (" (it fails twice, then succeeds)" if want > 1 else ""))
        if job.to_json() in dead_bodies:
            raise Wrong(f"the {name} job ended in the DLQ although it succeeded")
    if t.calls[doomed.job_id] != MAX_ATTEMPTS:
        raise Wrong(f"the job that always fails was processed {t.calls[doomed.job_id]} time(s); with max_attempts="
                    f"{MAX_ATTEMPTS} it must be tried exactly {MAX_ATTEMPTS} times, then dead-lettered")
    if doomed.to_json() not in dead_bodies:
        raise Wrong(f"the job that always fails was tried {MAX_ATTEMPTS} times but is not in the DLQ "
                    f"({_where(t.left)})")
    no_reason = [body[:30] for body, headers in t.dead if not _reason(headers)]
    if no_reason:
        raise Wrong(f"{len(no_reason)} dead letter(s) carry no reason (e.g. {no_reason[0]!r}): set a header whose name "
                    f"contains 'reason' (e.g. 'voicelab-reason') when you publish to the DLQ; the broker's "
                    f"x-first-death-reason says only 'rejected', not why the job failed")
    if t.left:
        raise Wrong(f"messages are still waiting after the run ({_where(t.left)}): every delivery must end acked "
                    f"or in the DLQ")
    reason = next(_reason(headers) for body, headers in t.dead if body == doomed.to_json())
    return (f"good job done after 1 call, flaky job after {MAX_ATTEMPTS}, the failing one dead-lettered after "
            f"{MAX_ATTEMPTS} with reason {reason!r}, {len(poison)} poison messages dead-lettered at once")


def _refuse_memory_count(t: _Trial, flaky: VoiceJob, doomed: VoiceJob) -> None:
    """With a fresh worker for every delivery, the count must still hold: it lives in the message, or nowhere."""
    in_dlq = doomed.to_json() in {body for body, _ in t.dead}
    if (t.calls[doomed.job_id], t.calls[flaky.job_id], in_dlq) == (MAX_ATTEMPTS, MAX_ATTEMPTS, True) and not t.left:
        return
    raise Wrong(f"with one worker your retries counted right, but with a freshly started worker for every delivery "
                f"(a restart, or another worker of a fleet) the job that always fails was processed "
                f"{t.calls[doomed.job_id]}{'+' if t.looped or t.timed_out else ''} time(s) "
                f"({'in the DLQ' if in_dlq else 'not in the DLQ'}) and the flaky one {t.calls[flaky.job_id]}: "
                f"your count lives in the worker's memory (a dict, a global, a default argument), which a restart "
                f"loses and other workers do not share. Carry it in the message: publish a copy with an attempt "
                f"header")


def _refuse_crash_loss(t: _Trial, what: str, body: bytes) -> None:
    """After a kill just before one of the worker's broker calls, the job must still be done or in the DLQ."""
    job_id = _job_id(body)
    done = job_id is not None and t.successes[job_id] > 0
    if done or body in {b for b, _ in t.dead}:
        return
    assert t.killed is not None
    before = ", ".join(name for name, _ in t.killed.log) or "no other broker call"
    if t.left or t.looped or t.timed_out:
        raise Wrong(f"the worker was killed just before its {t.killed.next_call} (after: {before}) while handling "
                    f"the {what}; a fresh worker took over and the message never settled ({_where(t.left)})")
    acked_first = any(name == "basic_ack" for name, _ in t.killed.log)
    raise Wrong(f"the worker was killed just before its {t.killed.next_call} (after: {before}) while handling the "
                f"{what}, and the job was lost: not done, not in the queue, not in the DLQ. "
                + ("You acked before the copy (or the dead letter) was published: " if acked_first else "")
                + "publish the retry copy or the dead letter first (the channel is in confirm mode: basic_publish "
                  "returns once the broker has it), then ack; a crash between the two then leaves both (at-least-"
                  "once), never none")


def _check_retry_policy(fn: Callable[..., Any]) -> str:
    broker = shared_broker()
    pristine = fresh_worker(fn)   # the worker's memory as a new process starts with it
    good, flaky, doomed = (VoiceJob.new(f"audio/{name}.wav", i) for i, name in enumerate(["good", "flaky", "doomed"]))
    poison = {b"this is not json": "not JSON", json.dumps({"job_id": "p2", "user_id": "seven"}).encode(): "bad fields"}
    main = _run_trial(_Trial(pristine, broker, "", [good.to_json(), flaky.to_json(), doomed.to_json(), *poison],
                             {flaky.job_id: MAX_ATTEMPTS - 1, doomed.job_id: 10 ** 6}))
    verdict = _judge_retry_policy(main, good, flaky, doomed, poison)
    flaky2, doomed2 = VoiceJob.new("audio/flaky2.wav", 4), VoiceJob.new("audio/doomed2.wav", 5)
    fleet = _run_trial(_Trial(pristine, broker, "", [flaky2.to_json(), doomed2.to_json()],
                              {flaky2.job_id: MAX_ATTEMPTS - 1, doomed2.job_id: 10 ** 6}, fleet=True))
    _refuse_memory_count(fleet, flaky2, doomed2)
    kills = 0
    once, always = VoiceJob.new("audio/once.wav", 6), VoiceJob.new("audio/always.wav", 7)
    for what, body, fails, attempts in [("transiently failing job", once.to_json(), {once.job_id: 1}, MAX_ATTEMPTS),
                                        ("poison message", b"this is not json", {}, MAX_ATTEMPTS),
                                        ("job that always fails", always.to_json(), {always.job_id: 10 ** 6}, 1)]:
        for k in (1, 2, 3):
            t = _run_trial(_Trial(pristine, broker, "", [body], fails, max_attempts=attempts, kill_at=k))
            if t.killed is None:
                break   # the worker made fewer broker calls than k: no later call to kill it at
            kills += 1
            _refuse_crash_loss(t, what, body)
    return (f"{verdict}; the same with a fresh worker for every delivery; and no job lost when the worker was "
            f"killed before each of its broker calls ({kills} kills).")


q1 = Exercise(
    "ch06.q1", "a retry policy that counts",
    _check_retry_policy,
    hints=[
        """A count you write into properties.headers of a message you received never reaches the broker:
        basic_nack(requeue=True) redelivers the broker's own copy. To carry a count, the count has to travel
        in a message the broker stores: a new one you publish.""",
        """On failure: read attempt = (properties.headers or {}).get("attempt", 0) + 1. If attempt < max_attempts,
        channel.basic_publish("", method.routing_key, body, pika.BasicProperties(delivery_mode=2,
        headers={..., "attempt": attempt}), mandatory=True) (the channel is in confirm mode: it returns once the
        broker has the copy; delivery_mode=2 makes the copy persistent, so a retried job survives a broker restart,
        as in notebook 05), then channel.basic_ack(method.delivery_tag). Otherwise publish to
        method.routing_key + ".dlq" with a "reason" header (persistent too), then ack. A BadJob from
        VoiceJob.from_json goes to the DLQ at once.""",
    ],
    solution=retry_policy,
)
