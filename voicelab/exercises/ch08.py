"""Exercises of notebook 08 (the capstone).

q1: fix a fragile worker. ``worker(channel, method, properties, body, process, results)`` is called for
every delivery of a job queue (``method.routing_key``, a durable classic queue, prefetch 5) whose dead-letter
queue is ``<queue>.dlq``. It must parse the job (``VoiceJob.from_json``: a ``BadJob`` can never be done and
belongs in the DLQ), run ``process(job)``, store the result with ``results.apply(job.job_id, result)``
(idempotent on ``job_id``: a :class:`voicelab.reconnect.ResultStore`) and settle the message so that no job is
lost, whatever happens.

:func:`fragile_worker` acks first. The checker runs the learner's worker on the broker through faults: the
worker process is killed in the middle of two jobs (:class:`WorkerCrashed`, which ``except Exception`` does not
catch; the connection dies with it, and nothing the dead worker does afterwards reaches the broker), the broker
force-closes the worker's connection (management API), ``process`` fails once for some jobs (a passing failure:
the job is good and succeeds when tried again) and poison messages arrive. A supervisor starts a fresh worker
after each crash. Then, job by job, it kills the worker just before each step of its work in turn (``process``,
``results.apply``, each broker call: publish, ack, nack, reject). It counts: every job applied once with the
right result, every poison message in the DLQ (as it is, or inside an envelope that keeps its bytes or its
``message_id``), nothing lost. Messages still unacknowledged when the checker stops (batched acks) go back to
the queue; they are fine if their job was applied.

Example (in the notebook, after writing ``worker``)::

    from voicelab.exercises import ch08
    ch08.q1.check(worker)     # pass, or what is wrong and a hint
    ch08.q1.hint()
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pika

from ..broker import Broker, shared_broker
from ..jobs import BadJob, VoiceJob
from ..management import Management
from ..queues import confirm_mode, dlq_name, drain, job_properties
from ..reconnect import CONNECTION_ERRORS, ResultStore
from ..retry import dead_letter
from .core import CrashingChannel, Exercise, WorkerKilled, Wrong, scratch_queue

JOBS = 40
CRASH_AT = (14, 27)        # calls of process() during which the worker process dies
CLOSE_AT = 6               # the call of process() during which the broker force-closes the connection
SLOW = (3, 17, 33)         # jobs whose first call of process() fails (a passing failure)
POISON = (b"\x00\xffnot json", b'{"job_id": "poison-2", "user_id": 2}')
PREFETCH = 5
MAX_CRASHES = 12           # then the checker stops a worker that keeps dying (before LOOP_CAP: a crash redelivers)
MAX_SECONDS = 20.0         # a safety net only: a run stops once every job has its outcome
MAX_DELIVERIES = 10 * (JOBS + len(POISON))   # then the checker stops a redelivery loop
LOOP_CAP = 15              # deliveries of one message after which the checker stops a redelivery loop
IDLE_CHECKS = 5            # reads in a row (0.2 s apart) of a queue with nothing ready and nothing in hand

WorkerCrashed = WorkerKilled
"""The worker process died (a stand-in for SIGKILL, an OOM kill, a power cut): a ``BaseException``, like
``SystemExit``, so ``except Exception`` does not catch it; a bare ``except:`` does, but nothing a killed
worker does afterwards reaches the broker."""


class ServiceTimeout(Exception):
    """What ``process`` raises for a job whose first try fails: the speech service timed out (it works next time)."""


def fragile_worker(channel: Any, method: Any, properties: pika.BasicProperties, body: bytes,
                   process: Callable[[VoiceJob], Any], results: ResultStore) -> None:
    """The worker to fix: it acks first ("got it"), then works. Run it through the checker to see what it loses."""
    channel.basic_ack(method.delivery_tag)
    job = VoiceJob.from_json(body)
    results.apply(job.job_id, process(job))


def worker(channel: Any, method: Any, properties: pika.BasicProperties, body: bytes,
           process: Callable[[VoiceJob], Any], results: ResultStore) -> None:
    """Reference solution of q1: poison to the DLQ with its reason; the result stored, *then* the ack.

    A failure of ``process`` is not caught: the worker dies, the broker redelivers the message (to the fresh
    worker the supervisor starts), and a passing failure is tried again.
    """
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        dead_letter(channel, method.routing_key, method, properties, body, f"poison: {e}", attempts=1)
        return
    results.apply(job.job_id, process(job))   # idempotent: a redelivered job is done again, applied once
    channel.basic_ack(method.delivery_tag)    # only now: a crash before this line means a redelivery


class _Results:
    """The learner's view of the result store: ``apply`` is a step the worker can be killed just before."""

    def __init__(self, trial: "_Trial") -> None:
        self._trial = trial

    def apply(self, job_id: str, result: Any) -> bool:
        self._trial.step("results.apply")
        return self._trial.results.apply(job_id, result)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial.results, name)


def _settled_tags(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, bool] | None:
    """``(delivery_tag, multiple)`` of an ack, nack or reject call; None for a publish."""
    if name == "basic_publish":
        return None
    tag = int(kwargs.get("delivery_tag", args[0] if args else 0))
    multiple = False if name == "basic_reject" else bool(kwargs.get("multiple", args[1] if len(args) > 1 else False))
    return tag, multiple


@dataclass
class _Trial:
    """One run of a learner's worker on the broker through the faults, and what it left behind.

    :meth:`publish` the jobs (the poison among them), :meth:`supervise` one worker at a time (a fresh one after
    each crash or lost connection) until every job has its outcome, :meth:`read_queues`; then the verdict.
    ``kill_step=k`` kills the first worker just before its k-th step (``process``, ``results.apply`` or a broker
    call): the crash sweep, one job at a time.
    """

    fn: Callable[..., Any]
    broker: Broker
    queue: str
    mgmt: Management | None
    jobs: list[VoiceJob]
    poison: tuple[bytes, ...] = POISON
    crash_at: tuple[int, ...] = ()
    close_at: int | None = None
    slow: tuple[str, ...] = ()
    kill_step: int | None = None
    results: ResultStore = field(default_factory=ResultStore)
    calls: int = 0
    steps: int = 0
    deliveries: int = 0
    per_message: dict[bytes, int] = field(default_factory=dict)
    closes: int = 0
    failed_once: set[str] = field(default_factory=set)
    killed: list[tuple[str, list[str]]] = field(default_factory=list)   # (the step it died before, steps done)
    crashes: list[str] = field(default_factory=list)   # why each worker died
    stalled: bool = False
    left: list[bytes] = field(default_factory=list)
    dead_letters: list[tuple[bytes, pika.BasicProperties]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    message_ids: dict[bytes, str] = field(default_factory=dict)
    _proxy: CrashingChannel | None = None
    _in_hand: set[int] = field(default_factory=set)
    _done_steps: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The worker connections' name (the management API closes them by it)."""
        return f"{self.queue}.worker"

    def step(self, where: str) -> None:
        """One step of the worker's work is about to happen: a dead worker does nothing; the k-th step can kill."""
        assert self._proxy is not None
        if self._proxy.dead:
            raise WorkerKilled(f"the worker was killed before its {self._proxy.next_call}")
        self.steps += 1
        if self.steps == self.kill_step:
            self._kill(where)
        self._done_steps.append(where)

    def _kill(self, where: str) -> None:
        assert self._proxy is not None
        self._proxy.dead, self._proxy.next_call = True, where
        self.killed.append((where, list(self._done_steps)))
        raise WorkerKilled(f"worker process killed before its {where}")

    def process(self, job: VoiceJob) -> dict[str, Any]:
        """The job's work, with the faults: a forced close, crashes mid-job, a first try that fails for some jobs."""
        self.step("process")
        self.calls += 1
        time.sleep(0.002)
        if self.calls == self.close_at and self.mgmt is not None:
            self.closes += self.mgmt.close_connections(self.name, reason="voicelab checker: forced close")
            time.sleep(0.3)   # the close reaches the worker before its ack goes out
        if self.calls in self.crash_at:
            self._kill("process (mid-job)")
        if job.job_id in self.slow and job.job_id not in self.failed_once:
            self.failed_once.add(job.job_id)
            raise ServiceTimeout(f"the speech service timed out on job {job.job_id[:8]} (it works if tried again)")
        return {"job_id": job.job_id, "user_id": job.user_id}

    def before_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A broker call is about to go out: a step (it can kill); an ack, nack or reject settles tags in hand."""
        self.step(name)
        settled = _settled_tags(name, args, kwargs)
        if settled is not None:
            tag, multiple = settled
            self._in_hand -= {t for t in self._in_hand if t <= tag or tag == 0} if multiple else {tag}

    def on_message(self, ch: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        assert self._proxy is not None
        self.deliveries += 1
        self.per_message[body] = self.per_message.get(body, 0) + 1
        self._in_hand.add(method.delivery_tag)
        self._done_steps = []   # the steps of this delivery (for the story of a kill)
        self.fn(self._proxy, method, properties, body, self.process, _Results(self))
        if self._proxy.dead:
            raise WorkerKilled("the worker was killed")   # it swallowed the kill (a bare except:): dead anyway

    def publish(self) -> None:
        """Half the jobs, the poison, the other half: confirmed, persistent, each with a message_id."""
        with self.broker.connect() as connection:
            channel = connection.channel()
            confirm_mode(channel)
            half = len(self.jobs) // 2
            for k, body in enumerate([j.to_json() for j in self.jobs[:half]] + list(self.poison)
                                     + [j.to_json() for j in self.jobs[half:]]):
                self.message_ids[body] = f"m{k}"
                channel.basic_publish("", self.queue, body, job_properties(message_id=f"m{k}"), mandatory=True)

    @property
    def looping(self) -> bool:
        """A redelivery loop: the queue delivered too often in all, or one message :data:`LOOP_CAP` times."""
        return self.deliveries >= MAX_DELIVERIES or max(self.per_message.values(), default=0) >= LOOP_CAP

    def _running(self) -> bool:
        return time.monotonic() - self.t0 < MAX_SECONDS and not self.looping

    def supervise(self) -> None:
        """One worker at a time; a fresh one after every crash or lost connection, until the run is over."""
        with self.broker.connect() as observer_connection:
            while self._running() and len(self.crashes) < MAX_CRASHES:
                if self._one_worker(observer_connection):
                    return

    def _one_worker(self, observer_connection: Any) -> bool:
        """Run one worker until the run is over (True), it dies or the time is up (False)."""
        connection = self.broker.connect(client_properties={"connection_name": self.name}, heartbeat=10)
        self._in_hand, self._done_steps = set(), []
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=PREFETCH)
            self._proxy = CrashingChannel(channel, before=self.before_call)
            channel.basic_consume(self.queue, self.on_message)
            return self._consume_until_over(connection, observer_connection.channel())
        except NotImplementedError:
            raise
        except WorkerKilled as e:
            self.crashes.append(str(e))
        except CONNECTION_ERRORS as e:
            self.crashes.append(f"connection lost: {type(e).__name__}")
        except Exception as e:   # the learner's code raised: that kills a real worker process too
            self.crashes.append(f"your worker raised {type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                if connection.is_open:
                    connection.close()   # like a dead process: the broker requeues what was not acked
        return False

    def _consume_until_over(self, connection: Any, observer: Any) -> bool:
        """Deliver until every job is applied and the poison is in the DLQ, or the queue has nothing ready and
        the worker nothing in hand, or the worker holds a full prefetch and gets nothing more (stalled): each
        read :data:`IDLE_CHECKS` times in a row. False if the time is up."""
        idle = stuck = 0
        last = 0.0
        while self._running():
            connection.process_data_events(time_limit=0.05)
            if time.monotonic() - last < 0.2:
                continue
            last = time.monotonic()
            ready = int(observer.queue_declare(self.queue, passive=True).method.message_count)
            in_dlq = int(observer.queue_declare(dlq_name(self.queue), passive=True).method.message_count)
            if all(self.results.result(j.job_id) is not None for j in self.jobs) and in_dlq >= len(self.poison):
                return True
            idle = idle + 1 if ready == 0 and not self._in_hand else 0
            stuck = stuck + 1 if ready and len(self._in_hand) >= PREFETCH else 0
            self.stalled = stuck >= IDLE_CHECKS
            if idle >= IDLE_CHECKS or self.stalled:
                return True
        return False

    def read_queues(self) -> None:
        """What is left in the queue, and what is in the DLQ (both drained)."""
        with self.broker.connect() as connection:
            channel = connection.channel()
            self.left = [m.body for m in drain(channel, self.queue)]
            self.dead_letters = [(m.body, m.properties) for m in drain(channel, dlq_name(self.queue))]


def _strings(value: Any) -> list[str]:
    """Every string inside a parsed JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _carries(body: bytes, properties: pika.BasicProperties, raw: bytes, message_id: str) -> bool:
    """Whether a dead letter carries the message ``raw``: as it is, inside an envelope (its bytes, its text, its
    base64 or hex in a JSON field), or by the original ``message_id``."""
    if raw in body or properties.message_id == message_id:
        return True
    try:
        strings = _strings(json.loads(body))
    except ValueError:
        return False
    forms = {raw.decode("utf-8", "replace"), raw.decode("latin-1"), raw.hex(), base64.b64encode(raw).decode()}
    return any(s in forms for s in strings)


def _in_dlq(t: _Trial, raw: bytes) -> bool:
    return any(_carries(body, props, raw, t.message_ids.get(raw, "")) for body, props in t.dead_letters)


def _kill_story(t: _Trial) -> str:
    """What the worker had done with the message in hand when it was killed (the last kill), for a reason."""
    if not t.killed:
        return ""
    where, done = t.killed[-1]
    return (f"The worker was killed just before its {where}, having done with that message: "
            f"{', '.join(done) or 'nothing yet'}"
            + ("; it had acked the message before storing its result, so the broker had already forgotten the "
               "job. " if "basic_ack" in done and "results.apply" not in done else ". "))


def _refuse_runaway(t: _Trial) -> None:
    """A worker that kept dying, a queue that kept redelivering, or a worker that stopped getting messages."""
    if len(t.crashes) >= MAX_CRASHES:
        raise Wrong(f"your worker died {len(t.crashes)} times and the checker stopped it; the last: {t.crashes[-1]}. "
                    f"A message that can never be done (BadJob) crashes it at every redelivery: catch it and put "
                    f"it in the DLQ")
    if t.looping:
        body, most = max(t.per_message.items(), key=lambda kv: kv[1])
        raise Wrong(f"the queue delivered {t.deliveries} times for {len(t.jobs) + len(t.poison)} messages, one of "
                    f"them {most} times ({body[:20]!r}), and never settled: a message your worker requeues "
                    f"(basic_nack/basic_reject with requeue=True) comes "
                    f"straight back; one that can never be done (BadJob) belongs in the DLQ")
    if t.stalled:
        raise Wrong(f"your worker stopped getting messages: it held {PREFETCH} unacknowledged deliveries (the "
                    f"prefetch) and the broker sends no more until some are settled. Ack each message once its "
                    f"result is stored (or ack in batches no bigger than the prefetch, with multiple=True)")


def _refuse_lost(t: _Trial) -> None:
    """Jobs never applied, not in the queue, not in the DLQ."""
    left = set(t.left)
    lost = [j for j in t.jobs if t.results.result(j.job_id) is None and j.to_json() not in left
            and not _in_dlq(t, j.to_json())]
    if not lost:
        return
    failed = [j for j in lost if j.job_id in t.failed_once]
    raise Wrong(f"{len(lost)} of {len(t.jobs)} jobs were lost: never applied, not in the queue, not in the DLQ. "
                + _kill_story(t)
                + (f"process(job) failed once for {len(failed)} of them (a passing failure) and the message was "
                   f"settled without a result. " if failed else "")
                + "Ack only after results.apply(...): a job not acked is redelivered when its worker dies")


def _refuse_misplaced(t: _Trial) -> None:
    """Good jobs in the DLQ, poison outside it, jobs not done."""
    good_dead = [j for j in t.jobs if _in_dlq(t, j.to_json()) or any(j.job_id.encode() in b for b, _ in t.dead_letters)]
    passing = [j for j in good_dead if j.job_id in t.failed_once]
    if passing:
        raise Wrong(f"{len(passing)} good job(s) ended in the DLQ after process(job) failed once (the speech service "
                    f"timed out; tried again, it works): only a message that can never be done (BadJob) belongs "
                    f"there. Give any other failure another try: let the exception end the worker (the broker "
                    f"redelivers what it had not acked), basic_nack(requeue=True), or republish with a count (06)")
    if good_dead:
        raise Wrong(f"{len(good_dead)} good job(s) ended in the DLQ (e.g. {good_dead[0].job_id[:8]}): only a "
                    f"message that can never be done belongs there; a job whose connection died is redelivered "
                    f"by the broker, do not reject it")
    poison_out = [p for p in t.poison if not _in_dlq(t, p)]
    if poison_out:
        worker_raised = [c for c in t.crashes if c.startswith("your worker raised BadJob")]
        where = "still in the queue" if poison_out[0] in t.left else "acked and dropped"
        raise Wrong(f"{len(poison_out)} poison message(s) are not in the DLQ ({where}), e.g. {poison_out[0][:20]!r}"
                    + (f"; your worker raised on them: {worker_raised[0]}" if worker_raised else "")
                    + ". " + (_kill_story(t) if t.kill_step else "")
                    + "A body VoiceJob.from_json refuses (BadJob) goes to <queue>.dlq: "
                      "basic_reject(requeue=False), or publish it there with a reason and ack")
    undone = [j for j in t.jobs if t.results.result(j.job_id) is None]
    if undone:
        raise Wrong(f"{len(undone)} of {len(t.jobs)} jobs were not done ({sum(1 for b in t.left if b)} message(s) "
                    f"still in the queue) after {len(t.crashes)} worker restarts: every delivery must end acked "
                    f"after its result is stored, or in the DLQ")


def _verdict(t: _Trial) -> str:
    """Raise :class:`Wrong` for the first thing the trial got wrong; else what it verified."""
    _refuse_runaway(t)
    _refuse_lost(t)
    _refuse_misplaced(t)
    wrong = [j for j in t.jobs if t.results.result(j.job_id) != {"job_id": j.job_id, "user_id": j.user_id}]
    if wrong:
        raise Wrong(f"{len(wrong)} job(s) have a stored result that is not what process(job) returned: "
                    f"call results.apply(job.job_id, process(job))")
    twice = sum(1 for j in t.jobs if t.results.handled[j.job_id] >= 2)
    unacked = sum(1 for b in t.left if b not in t.poison)
    return (f"{len(t.jobs)} jobs through {t.closes} forced close, {len(t.crash_at)} worker crashes mid-job and "
            f"{len(t.failed_once)} passing failures: all {len(t.jobs)} applied once ({twice} done twice, applied "
            f"once), {len(t.poison)} poison message(s) in the DLQ, none lost"
            + (f"; {unacked} done but not yet acked when the checker stopped (back in the queue)" if unacked else ""))


def _sweep(fn: Callable[..., Any], broker: Broker, queue: str, mgmt: Management | None) -> int:
    """Kill the worker just before each step of its work in turn, one job at a time; how many kills."""
    kills = 0
    good, slow = VoiceJob.new("audio/sweep-good.wav", 100), VoiceJob.new("audio/sweep-slow.wav", 101)
    for what, jobs, poison, slowed in [("a good job", [good], (), ()), ("a job whose first try fails", [slow], (),
                                       (slow.job_id,)), ("a poison message", [], POISON[:1], ())]:
        for k in range(1, 8):
            t = _Trial(fn, broker, queue, mgmt, jobs, poison=poison, slow=slowed, kill_step=k)
            t.publish()
            t.supervise()
            t.read_queues()
            if not t.killed:
                break   # the worker took fewer than k steps: nothing left to kill it before
            kills += 1
            try:
                _verdict(t)
            except Wrong as e:
                raise Wrong(f"killed while handling {what}: {e}") from None
    return kills


def _check_worker(fn: Callable[..., Any]) -> str:
    broker = shared_broker()
    with contextlib.ExitStack() as stack:
        queue = stack.enter_context(scratch_queue("capstone", dead_letters=True, broker=broker))
        mgmt = Management(broker)
        stack.callback(mgmt.close)
        jobs = [VoiceJob.new(f"audio/{i}.wav", user_id=i) for i in range(JOBS)]
        trial = _Trial(fn, broker, queue, mgmt, jobs, crash_at=CRASH_AT, close_at=CLOSE_AT,
                       slow=tuple(jobs[i].job_id for i in SLOW))
        trial.publish()
        trial.supervise()
        trial.read_queues()
        detail = _verdict(trial)
        kills = _sweep(fn, broker, queue, mgmt)
    return f"{detail}; and none lost when the worker was killed just before each step of its work ({kills} kills)."


q1 = Exercise(
    "ch08.q1", "a worker that loses nothing",
    _check_worker,
    hints=[
        """An ack tells the broker it may forget the message. What happens to a job the broker has forgotten if
        the worker dies before its result is stored? And where should a message go that can never be done?""",
        """Parse first: job = VoiceJob.from_json(body); on BadJob, channel.basic_reject(method.delivery_tag,
        requeue=False) (the queue's dead-letter exchange sends it to the DLQ) or voicelab.retry.dead_letter(...)
        to keep the reason. Then results.apply(job.job_id, process(job)), and only then
        channel.basic_ack(method.delivery_tag). A redelivered job is done again, but apply() applies it once.
        If process raises, the job is not poison: do not dead-letter it; let the exception end the worker (the
        broker redelivers the unacked message) or basic_nack(requeue=True).""",
    ],
    solution=worker,
)
