"""Exercises of notebook 08 (the capstone).

q1: fix a fragile worker. ``worker(channel, method, properties, body, process, results)`` is called for
every delivery of a job queue (``method.routing_key``) whose dead-letter queue is ``<queue>.dlq``. It must
parse the job (``VoiceJob.from_json``: a ``BadJob`` can never be done and belongs in the DLQ), run
``process(job)``, store the result with ``results.apply(job.job_id, result)`` (idempotent on ``job_id``:
a :class:`voicelab.reconnect.ResultStore`) and settle the message so that no job is lost, whatever happens.

:func:`fragile_worker` acks first. The checker runs the learner's worker on the broker through faults: the
worker process crashes in the middle of a job (:class:`WorkerCrashed`, which ``except Exception`` does not
catch; the connection dies with it, as with a killed process), the broker force-closes the worker's
connection (management API), and poison messages arrive. A supervisor starts a fresh worker after each
crash. Then it counts: every job applied once with the right result, every poison message in the DLQ,
nothing lost.

Example (in the notebook, after writing ``worker``)::

    from voicelab.exercises import ch08
    ch08.q1.check(worker)     # pass, or what is wrong and a hint
    ch08.q1.hint()
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import pika

from ..broker import Broker, shared_broker
from ..jobs import BadJob, VoiceJob
from ..management import Management
from ..queues import confirm_mode, dlq_name, drain, job_properties
from ..reconnect import CONNECTION_ERRORS, ResultStore
from ..retry import dead_letter
from .core import Exercise, Wrong, scratch_queue

JOBS = 40
CRASH_AT = (14, 27)        # calls of process() during which the worker process dies
CLOSE_AT = 6               # the call of process() during which the broker force-closes the connection
POISON = (b"\x00\xffnot json", b'{"job_id": "poison-2", "user_id": 2}')
MAX_CRASHES = 12           # then the checker stops a worker that keeps dying
MAX_SECONDS = 20.0
MAX_DELIVERIES = 10 * (JOBS + len(POISON))   # then the checker stops a redelivery loop


class WorkerCrashed(BaseException):
    """The worker process died in the middle of a job (a stand-in for SIGKILL, an OOM kill, a power cut).

    A ``BaseException``, like ``SystemExit``: ``except Exception`` does not catch it, as nothing catches a kill.
    """


def fragile_worker(channel: Any, method: Any, properties: pika.BasicProperties, body: bytes,
                   process: Callable[[VoiceJob], Any], results: ResultStore) -> None:
    """The worker to fix: it acks first ("got it"), then works. Run it through the checker to see what it loses."""
    channel.basic_ack(method.delivery_tag)
    job = VoiceJob.from_json(body)
    results.apply(job.job_id, process(job))


def worker(channel: Any, method: Any, properties: pika.BasicProperties, body: bytes,
           process: Callable[[VoiceJob], Any], results: ResultStore) -> None:
    """Reference solution of q1: poison to the DLQ with its reason; the result stored, *then* the ack."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        dead_letter(channel, method.routing_key, method, properties, body, f"poison: {e}", attempts=1)
        return
    results.apply(job.job_id, process(job))   # idempotent: a redelivered job is done again, applied once
    channel.basic_ack(method.delivery_tag)    # only now: a crash before this line means a redelivery


@dataclass
class _Trial:
    """One run of a learner's worker on the broker through the faults, and what it left behind.

    :meth:`publish` the jobs with the poison among them, :meth:`supervise` one worker at a time (a fresh one after
    each crash or lost connection) until the queue is idle, :meth:`read_queues`; then :func:`_verdict` judges.
    """

    fn: Callable[..., Any]
    broker: Broker
    queue: str
    mgmt: Management
    jobs: list[VoiceJob] = field(default_factory=lambda: [VoiceJob.new(f"audio/{i}.wav", user_id=i)
                                                           for i in range(JOBS)])
    results: ResultStore = field(default_factory=ResultStore)
    calls: int = 0
    deliveries: int = 0
    closes: int = 0
    killed: list[str] = field(default_factory=list)    # the jobs in hand when the worker process died
    crashes: list[str] = field(default_factory=list)   # why each worker died
    left: int = 0
    dead_bodies: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        """The worker connections' name (the management API closes them by it)."""
        return f"{self.queue}.worker"

    def process(self, job: VoiceJob) -> dict[str, Any]:
        """The job's work, with the faults: a forced close at call :data:`CLOSE_AT`, crashes at :data:`CRASH_AT`."""
        self.calls += 1
        time.sleep(0.002)
        if self.calls == CLOSE_AT:
            self.closes += self.mgmt.close_connections(self.name, reason="voicelab checker: forced close")
            time.sleep(0.3)   # the close reaches the worker before its ack goes out
        if self.calls in CRASH_AT:
            self.killed.append(job.job_id)
            raise WorkerCrashed(f"worker process killed during job {job.job_id[:8]}")
        return {"job_id": job.job_id, "user_id": job.user_id}

    def on_message(self, ch: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        self.deliveries += 1
        self.fn(ch, method, properties, body, self.process, self.results)

    def publish(self) -> None:
        """Half the jobs, the poison, the other half: confirmed, persistent."""
        with self.broker.connect() as connection:
            channel = connection.channel()
            confirm_mode(channel)
            for k, body in enumerate([j.to_json() for j in self.jobs[:JOBS // 2]] + list(POISON)
                                     + [j.to_json() for j in self.jobs[JOBS // 2:]]):
                channel.basic_publish("", self.queue, body, job_properties(message_id=f"m{k}"), mandatory=True)

    def _running(self) -> bool:
        return time.monotonic() - self.t0 < MAX_SECONDS and self.deliveries < MAX_DELIVERIES

    def supervise(self) -> None:
        """One worker at a time; a fresh one after every crash or lost connection, until the queue is idle."""
        while self._running() and len(self.crashes) < MAX_CRASHES:
            if self._one_worker():
                return

    def _one_worker(self) -> bool:
        """Run one worker until the queue is idle (True), it dies or the time is up (False)."""
        connection = self.broker.connect(client_properties={"connection_name": self.name}, heartbeat=10)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=5)
            channel.basic_consume(self.queue, self.on_message)
            return self._consume_until_idle(connection)
        except NotImplementedError:
            raise
        except WorkerCrashed as e:
            self.crashes.append(str(e))
        except CONNECTION_ERRORS as e:
            self.crashes.append(f"connection lost: {type(e).__name__}")
        except Exception as e:   # the learner's code raised: that kills a real worker process too
            self.crashes.append(f"your worker raised {type(e).__name__}: {e}")
        finally:
            if connection.is_open:
                try:
                    connection.close()   # like a dead process: the broker requeues what was not acked
                except CONNECTION_ERRORS:
                    pass
        return False

    def _consume_until_idle(self, connection: Any) -> bool:
        """Deliver until the queue gives nothing for 0.6 s (True) or the time is up (False)."""
        seen, idle_since = -1, 0.0
        while self._running():
            connection.process_data_events(time_limit=0.05)
            if self.deliveries != seen:
                seen, idle_since = self.deliveries, time.monotonic()
            elif time.monotonic() - idle_since > 0.6:
                return True
        return False

    def read_queues(self) -> None:
        """What is left in the queue, and what is in the DLQ (drained)."""
        with self.broker.connect() as connection:
            channel = connection.channel()
            self.left = int(channel.queue_declare(self.queue, passive=True).method.message_count)
            self.dead_bodies.extend((m.body, dict(m.properties.headers or {}))
                                    for m in drain(channel, dlq_name(self.queue)))


def _refuse_runaway(t: _Trial) -> None:
    """A worker that kept dying, or a queue that kept redelivering: the checker stopped it."""
    if len(t.crashes) >= MAX_CRASHES:
        raise Wrong(f"your worker died {len(t.crashes)} times and the checker stopped it; the last: {t.crashes[-1]}. "
                    f"A message that can never be done (BadJob) crashes it at every redelivery: catch it and put "
                    f"it in the DLQ")
    if t.deliveries >= MAX_DELIVERIES:
        raise Wrong(f"the queue delivered {t.deliveries} times for {JOBS + len(POISON)} messages and never settled: "
                    f"a message your worker requeues (basic_nack/basic_reject with requeue=True) comes straight back; "
                    f"one that can never be done (BadJob) belongs in the DLQ")


def _refuse_misplaced(t: _Trial, in_dlq: Counter[bytes]) -> None:
    """Jobs lost, good jobs in the DLQ, poison outside it, messages left in the queue."""
    done = {j.job_id for j in t.jobs if t.results.result(j.job_id) is not None}
    lost = [j for j in t.jobs if j.job_id not in done and j.to_json() not in in_dlq]
    if lost and t.left == 0:
        in_hand = sum(1 for j in lost if j.job_id in t.killed)
        raise Wrong(f"{len(lost)} of {JOBS} jobs were lost: never applied, not in the queue, not in the DLQ. "
                    + (f"{in_hand} of them were in hand when the worker process was killed, and already acked: the "
                       f"broker had forgotten them, and nobody had stored their result. "
                       if in_hand else "")
                    + "Ack only after results.apply(...): a job not acked is redelivered when its worker dies")
    good_dead = [j for j in t.jobs if j.to_json() in in_dlq]
    if good_dead:
        raise Wrong(f"{len(good_dead)} good job(s) ended in the DLQ (e.g. {good_dead[0].job_id[:8]}): only a "
                    f"message that can never be done belongs there; a job whose connection died is redelivered "
                    f"by the broker, do not reject it")
    poison_out = [p for p in POISON if p not in in_dlq]
    if poison_out:
        worker_raised = [c for c in t.crashes if c.startswith("your worker raised")]
        where = "still in the queue" if t.left else "acked and dropped"
        raise Wrong(f"{len(poison_out)} poison message(s) are not in the DLQ ({where}), e.g. {poison_out[0][:20]!r}"
                    + (f"; your worker raised on them: {worker_raised[0]}" if worker_raised else "")
                    + ". A body VoiceJob.from_json refuses (BadJob) goes to <queue>.dlq: "
                      "basic_reject(requeue=False), or publish it there with a reason and ack")
    if lost or t.left:
        raise Wrong(f"{len(lost)} of {JOBS} jobs were not done and {t.left} message(s) are still in the queue after "
                    f"{len(t.crashes)} worker restarts: every delivery must end acked after its result is stored, "
                    f"or in the DLQ")


def _verdict(t: _Trial) -> str:
    """Raise :class:`Wrong` for the first thing the trial got wrong; else what it verified."""
    _refuse_runaway(t)
    _refuse_misplaced(t, Counter(body for body, _ in t.dead_bodies))
    wrong = [j for j in t.jobs if t.results.result(j.job_id) != {"job_id": j.job_id, "user_id": j.user_id}]
    if wrong:
        raise Wrong(f"{len(wrong)} job(s) have a stored result that is not what process(job) returned: "
                    f"call results.apply(job.job_id, process(job))")
    twice = sum(1 for j in t.jobs if t.results.handled[j.job_id] >= 2)
    faults = [c for c in t.crashes if not c.startswith("your worker raised")]
    return (f"{JOBS} jobs through {len(faults)} faults ({t.closes} forced close, {len(CRASH_AT)} worker crashes "
            f"mid-job): all {JOBS} applied once ({twice} done twice, applied once), {len(t.dead_bodies)} poison "
            f"message(s) in the DLQ, none lost.")


def _check_worker(fn: Callable[..., Any]) -> str:
    broker = shared_broker()
    with scratch_queue("capstone", dead_letters=True, broker=broker) as queue:
        mgmt = Management(broker)
        try:
            trial = _Trial(fn, broker, queue, mgmt)
            trial.publish()
            trial.supervise()
            trial.read_queues()
        finally:
            mgmt.close()
    return _verdict(trial)


q1 = Exercise(
    "ch08.q1", "a worker that loses nothing",
    _check_worker,
    hints=[
        """An ack tells the broker it may forget the message. What happens to a job the broker has forgotten if
        the worker dies before its result is stored? And where should a message go that can never be done?""",
        """Parse first: job = VoiceJob.from_json(body); on BadJob, channel.basic_reject(method.delivery_tag,
        requeue=False) (the queue's dead-letter exchange sends it to the DLQ) or voicelab.retry.dead_letter(...)
        to keep the reason. Then results.apply(job.job_id, process(job)), and only then
        channel.basic_ack(method.delivery_tag). A redelivered job is done again, but apply() applies it once.""",
    ],
    solution=worker,
)
