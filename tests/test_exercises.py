"""Exercises: the core machinery (hints, scratch queues, verdicts), then every chapter's problems on the broker.

Every exercise's reference passes its checker on the real broker; a stub is reported, not raised; known-wrong
answers fail with a reason; and no checker leaves a ``check.*`` queue or exchange behind.
"""

from __future__ import annotations

import doctest
import json

import pika
import pytest

from voicelab import broker as vb
from voicelab.exercises import CheckResult, Exercise, Wrong, ch00, ch01, ch02, ch03, ch04, core, scratch_queue
from voicelab.management import Management
from voicelab.queues import declare_job_queue, dlq_name

EXERCISES = [ch00.q1, ch01.q1, ch02.q1, ch03.q1, ch04.q1]


def _exists(broker: vb.Broker, queue: str) -> bool:
    """Whether ``queue`` exists, asked with a passive declare (the broker answers 404 when it does not)."""
    with broker.connect() as connection:
        try:
            connection.channel().queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return False
            raise
    return True


def _leftovers(broker: vb.Broker) -> list[str]:
    """Queues and exchanges named ``check.*`` on ``broker`` (the management API lists them at once)."""
    mgmt = Management(broker)
    try:
        return sorted(o["name"] for kind in ("queues", "exchanges")
                      for o in mgmt.get(f"{kind}/{mgmt.vhost}?columns=name") if o["name"].startswith("check."))
    finally:
        mgmt.close()


class _Boom(Exception):
    pass


# -- core: hints, verdicts, scratch queues --------------------------------------------------

def _exercise(checker=lambda fn: fn(), hints=("nudge: think of +", "key: return x + 1", "answer: x + 1")):
    return Exercise("demo.q1", "demo", checker, hints=list(hints), solution=len)


def test_hint_list_advances_then_stays_on_the_last(capsys) -> None:
    q = _exercise()
    printed = []
    for n in [None, None, 1, None, None, None]:
        q.hint(n)
        printed.append(capsys.readouterr().out)
    shown = [next(h for h in q.hints if h in out) for out in printed]
    assert shown == [q.hints[0], q.hints[1], q.hints[0], q.hints[1], q.hints[2], q.hints[2]]
    assert "Hint 1/3" in printed[0] and "again for the next hint" in printed[0]
    assert "last hint" in printed[-1] and "demo.q1.solution()" in printed[-1]


def test_hint_n_jumps_and_the_next_call_follows_it(capsys) -> None:
    q = _exercise()
    q.hint(2)
    assert q.hints[1] in capsys.readouterr().out
    q.hint()
    assert q.hints[2] in capsys.readouterr().out


@pytest.mark.parametrize("n", [0, 4, -1])
def test_hint_out_of_range_says_how_many_hints_there_are(capsys, n) -> None:
    _exercise().hint(n)
    assert "has 3 hints" in capsys.readouterr().out


def test_hints_must_be_a_non_empty_list() -> None:
    for bad in ([], "one string is not a list of hints"):
        with pytest.raises(ValueError, match="hints"):
            Exercise("demo.q1", "demo", lambda fn: "", hints=bad, solution=len)


@pytest.mark.parametrize("q", EXERCISES, ids=lambda q: q.key)
def test_every_exercise_has_a_nudge_then_more_hints(q: Exercise) -> None:
    assert len(q.hints) >= 2 and len(set(q.hints)) == len(q.hints), q.hints
    assert all(h and h == h.strip() and "\n " not in h for h in q.hints), q.hints  # cleaned of source indent


def test_run_is_silent_and_reports_stub_crash_and_wrong_answer(capsys) -> None:
    def checker(fn):
        if fn(1) != 2:
            raise Wrong(f"add_one(1) should be 2, got {fn(1)}")
        return "ok"

    q = _exercise(checker)
    stub = q.run(lambda x: (_ for _ in ()).throw(NotImplementedError))
    crash = q.run(lambda x: 1 / 0)
    wrong = q.run(lambda x: x)
    right = q.run(lambda x: x + 1)
    assert capsys.readouterr().out == ""
    assert isinstance(right, CheckResult) and right and right.passed and "✓" in right.message
    assert not stub and not stub.attempted and "not solved yet" in stub.message
    assert not crash and crash.attempted and "ZeroDivisionError" in crash.message
    assert not wrong and "should be 2, got 1" in wrong.message and q.hints[0] in wrong.message
    assert q.hints[1] not in wrong.message  # a failure shows the nudge, not the answer
    q.check(lambda x: x)
    assert "✗ demo.q1" in capsys.readouterr().out


def test_core_docstring_examples_run() -> None:
    result = doctest.testmod(core, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed


def test_scratch_queue_is_durable_with_its_dlq_and_deleted_when_the_body_raises(any_broker: vb.Broker) -> None:
    with pytest.raises(_Boom):
        with scratch_queue("test", dead_letters=True, broker=any_broker) as queue:
            assert queue.startswith("check.test.")
            assert _exists(any_broker, queue) and _exists(any_broker, dlq_name(queue))
            with any_broker.connect() as connection:
                declare_job_queue(connection.channel(), queue)  # same arguments: accepted
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                    connection.channel().queue_declare(queue, durable=False)
                assert refused.value.reply_code == 406  # it is durable
            raise _Boom
    assert not _exists(any_broker, queue) and not _exists(any_broker, dlq_name(queue))


def test_scratch_queue_names_are_unique_and_deleted_on_normal_exit(any_broker: vb.Broker) -> None:
    with scratch_queue("test", broker=any_broker) as a, scratch_queue("test", broker=any_broker) as b:
        assert a != b and _exists(any_broker, a) and _exists(any_broker, b)
        assert not _exists(any_broker, dlq_name(a))
    assert not _exists(any_broker, a) and not _exists(any_broker, b)


def test_scratch_queue_is_deleted_when_the_learners_function_raises(as_shared: vb.Broker) -> None:
    seen: list[str] = []

    def checker(fn):
        with scratch_queue("test") as queue:  # on shared_broker(), as the chapters' checkers do
            seen.append(queue)
            fn(queue)
        return "ok"

    def crashes(queue):
        assert _exists(as_shared, queue)
        raise _Boom("the learner's bug")

    result = _exercise(checker).run(crashes)
    assert not result.passed and "_Boom" in result.message, result.message
    assert seen and not _exists(as_shared, seen[0])


# -- ch00: enqueue a job ------------------------------------------------------------------

def _stub(channel, queue, job):
    raise NotImplementedError


def _no_properties(channel, queue, job):
    channel.basic_publish("", queue, job.to_json())


def _transient(channel, queue, job):
    channel.basic_publish("", queue, job.to_json(), pika.BasicProperties(content_type="application/json"))


def _twice(channel, queue, job):
    for _ in range(2):
        ch00.enqueue_job(channel, queue, job)


def _wrong_queue(channel, queue, job):
    ch00.enqueue_job(channel, "elsewhere", job)


def _str_body(channel, queue, job):
    channel.basic_publish("", queue, str(job.__dict__),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2))


def _crashes(channel, queue, job):
    json.dumps(job)  # a VoiceJob is not JSON-serializable as is


def _closes_channel(channel, queue, job):
    ch00.enqueue_job(channel, queue, job)
    channel.close()


def _unconfirmed(channel, queue, job):
    """Known wrong: right body and properties, but no confirm mode and not mandatory (notebook 00 c06: unsafe)."""
    channel.basic_publish("", queue, json.dumps(job.__dict__),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2))


def _confirmed_not_mandatory(channel, queue, job):
    """Known wrong: confirm mode, but a message no queue takes is confirmed and dropped without mandatory=True."""
    channel.confirm_delivery()
    _unconfirmed(channel, queue, job)


def _mandatory_unconfirmed(channel, queue, job):
    """Known wrong: mandatory, but without confirm mode the returned message never reaches the caller."""
    channel.basic_publish("", queue, json.dumps(job.__dict__),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2), mandatory=True)


def test_ch00_reference_passes(as_shared) -> None:
    result = ch00.q1.run(ch00.enqueue_job)
    assert result.passed, result.message


def test_ch00_stub_is_reported_not_raised(as_shared) -> None:
    result = ch00.q1.run(_stub)
    assert not result.passed and not result.attempted and "not solved yet" in result.message


@pytest.mark.parametrize("wrong, says", [
    (_no_properties, "content_type"), (_transient, "delivery_mode"), (_twice, "exactly once"),
    (_wrong_queue, "no message"), (_str_body, "not JSON"), (_crashes, "TypeError"), (42, "pass your function"),
    (_closes_channel, "closed the channel"), (_unconfirmed, "not in confirm mode"),
    (_confirmed_not_mandatory, "mandatory=True"), (_mandatory_unconfirmed, "not in confirm mode"),
])
def test_ch00_wrong_answers_fail_with_a_reason(as_shared, wrong, says) -> None:
    result = ch00.q1.run(wrong)
    assert not result.passed and says in result.message, result.message


def test_check_prints_the_verdict_and_hint_prints_a_hint(as_shared, capsys) -> None:
    ch00.q1.check(ch00.enqueue_job)
    assert "✓" in capsys.readouterr().out
    ch00.q1.hint(1)
    assert "default exchange" in capsys.readouterr().out
    ch00.q1.hint(len(ch00.q1.hints))
    assert "basic_publish" in capsys.readouterr().out, "the last hint gives the key call"


# -- ch01: topic routing ------------------------------------------------------------------

def _direct_exchange(channel, exchange):
    channel.exchange_declare(exchange, exchange_type="direct", durable=True)
    for queue, key in [("english", "en.high"), ("urgent", "en.high"), ("all", "en.low")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        channel.queue_bind(f"{exchange}.{queue}", exchange, key)


def _star_for_all(channel, exchange):
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    for queue, key in [("english", "en.*"), ("urgent", "*.high"), ("all", "*")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        channel.queue_bind(f"{exchange}.{queue}", exchange, key)


def _missing_queue(channel, exchange):
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)


def _transient_queues(channel, exchange):
    """Known wrong: the right routing, on queues a restart deletes."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    for queue, key in [("english", "en.*"), ("urgent", "*.high"), ("all", "#")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=False)
        channel.queue_bind(f"{exchange}.{queue}", exchange, routing_key=key)


def _transient_exchange(channel, exchange):
    channel.exchange_declare(exchange, exchange_type="topic", durable=False)
    for queue, key in [("english", "en.*"), ("urgent", "*.high"), ("all", "#")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        channel.queue_bind(f"{exchange}.{queue}", exchange, routing_key=key)


def _explicit_keys(channel, exchange):
    """Known wrong: every key the notebook ever showed, bound by name instead of with wildcards."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    langs, prios = ("en", "de", "fr", "es", "pt-br"), ("high", "low")
    bindings = {"english": [f"en.{p}" for p in prios], "urgent": [f"{lang}.high" for lang in langs],
                "all": [f"{lang}.{p}" for lang in langs for p in prios]}
    for queue, keys in bindings.items():
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        for key in keys:
            channel.queue_bind(f"{exchange}.{queue}", exchange, routing_key=key)


# -- ch02: acks ---------------------------------------------------------------------------

def _ack_first(channel, method, properties, body, process):
    channel.basic_ack(method.delivery_tag)
    try:
        process(json.loads(body))
    except Exception:
        pass


def _requeue_failures(channel, method, properties, body, process):
    try:
        process(json.loads(body))
        channel.basic_ack(method.delivery_tag)
    except Exception:
        channel.basic_nack(method.delivery_tag, requeue=True)


def _never_acks(channel, method, properties, body, process):
    try:
        process(json.loads(body))
    except Exception:
        channel.basic_reject(method.delivery_tag, requeue=False)


def _raises_in_callback(channel, method, properties, body, process):
    raise _Boom("the callback crashed")


# -- ch03: prefetch; ch04: fleet ----------------------------------------------------------

@pytest.mark.parametrize("exercise, reference, wrongs", [
    (ch01.q1, ch01.setup_routing, [(_direct_exchange, "did not get"), (_star_for_all, "did not get"),
                                   (_missing_queue, "does not exist"), (_transient_queues, "not durable"),
                                   (_transient_exchange, "not durable"), (_explicit_keys, "made up the language")]),
    (ch02.q1, ch02.on_message, [(_ack_first, "acked before process() finished"),
                                (_requeue_failures, "requeued"), (_never_acks, "neither acked"),
                                (_raises_in_callback, "_Boom")]),
    (ch03.q1, ch03.plan, [(lambda s, t: {"consumers": 4, "prefetch": 0}, "handed it its share"),
                          (lambda s, t: {"consumers": 4, "prefetch": 30}, "handed it its share"),
                          (lambda s, t: {"consumers": 6, "prefetch": 40}, "handed it its share"),
                          (lambda s, t: {"consumers": 1, "prefetch": 1}, "the target is"),
                          (lambda s, t: {"consumers": 20, "prefetch": 1}, "from 1 to 8"),
                          (lambda s, t: (4, 1), "exactly the keys")]),
    (ch04.q1, ch04.size_fleet, [(lambda s, t, c: {"processes": 1, "threads": 10, "prefetch": 1}, "At most 1 job"),
                                (lambda s, t, c: {"processes": min(8, 2 * c), "threads": 4, "prefetch": 4},
                                 "connections to the broker"),
                                (lambda s, t, c: {"processes": 1, "threads": 0, "prefetch": 1}, "target"),
                                (lambda s, t, c: {"processes": 99, "threads": 1, "prefetch": 1},
                                 "processes must be")]),
], ids=["ch01", "ch02", "ch03", "ch04"])
def test_reference_passes_stub_and_wrong_answers_fail(as_shared, exercise, reference, wrongs) -> None:
    result = exercise.run(reference)
    assert result.passed, result.message
    assert not exercise.run(lambda *args: _stub(None, None, None)).attempted
    for wrong, says in wrongs:
        result = exercise.run(wrong)
        assert not result.passed and says in result.message, result.message


@pytest.mark.parametrize("exercise, sound", [
    (ch03.q1, lambda s, t: {"consumers": 6, "prefetch": 1}),   # all attached before publishing: none starved
    (ch03.q1, lambda s, t: {"consumers": 8, "prefetch": 1}),
    (ch03.q1, lambda s, t: {"consumers": 3, "prefetch": 1}),
    (ch04.q1, lambda s, t, c: {"processes": 2, "threads": 5, "prefetch": 5}),
    (ch04.q1, lambda s, t, c: {"processes": 1, "threads": 32, "prefetch": 40}),
], ids=["ch03-6x1", "ch03-8x1", "ch03-3x1", "ch04-2x5", "ch04-1x32"])
def test_other_sound_answers_pass(as_shared, exercise, sound) -> None:
    result = exercise.run(sound)
    assert result.passed, result.message


def test_checkers_leave_no_scratch_queue_or_exchange_behind(as_shared) -> None:
    """Right, wrong and crashing answers to every chapter: nothing named ``check.*`` remains afterwards."""
    assert _leftovers(as_shared) == []
    for exercise, answer in [(ch00.q1, ch00.enqueue_job), (ch00.q1, _crashes), (ch00.q1, _closes_channel),
                             (ch01.q1, _direct_exchange), (ch01.q1, lambda c, e: (_direct_exchange(c, e), 1 / 0)),
                             (ch02.q1, _raises_in_callback), (ch02.q1, _never_acks),
                             (ch03.q1, lambda s, t: {"consumers": 2, "prefetch": 1})]:
        result = exercise.run(answer)
        assert _leftovers(as_shared) == [], (exercise.key, result.message)


# -- ch05: a publisher that guarantees delivery (the checker kills a broker of its own) -------

from voicelab.exercises import ch05  # noqa: E402


def _publish_without_confirms(broker, queue, bodies):
    """Known wrong: no confirms; reconnects after the crash and believes every publish that returned was sent."""
    sent = []
    connection = broker.connect()
    channel = connection.channel()
    for body in bodies:
        try:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
            sent.append(body)
        except (pika.exceptions.AMQPError, OSError):
            for _ in range(200):
                try:
                    connection = broker.connect(connection_attempts=1)
                    channel = connection.channel()
                    break
                except (pika.exceptions.AMQPError, OSError):
                    import time
                    time.sleep(0.1)
    connection.close()
    return sent


def test_ch05_reference_passes_stub_unattempted_unconfirmed_fails() -> None:
    with vb.own_broker() as broker:
        ch05.use_broker(broker)
        try:
            result = ch05.q1.run(ch05.publish_all)
            assert result.passed, result.message
            assert not ch05.q1.run(lambda b, q, bodies: _stub(None, None, None)).attempted
            result = ch05.q1.run(_publish_without_confirms)
            assert not result.passed and "not in the queue after the crash" in result.message, result.message
        finally:
            ch05.use_broker(None)


# -- ch06: a retry policy that counts (good, flaky, doomed and poison jobs on the shared broker) ------------

from voicelab.exercises import ch06  # noqa: E402
from voicelab.lab.guide_patterns import guide_retry_callback  # noqa: E402


def _guide_header_counter(channel, method, properties, body, process, max_attempts):
    """Known wrong: the guide's answer, mutating properties.headers and nacking with requeue."""
    guide_retry_callback(channel, method, properties, body)


def _memory_counter(channel, method, properties, body, process, max_attempts, _seen={}):
    """A sound (if fragile: counts die with the process) answer: attempts counted in memory by message body."""
    from voicelab.jobs import BadJob, VoiceJob
    dlq = method.routing_key + ".dlq"
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        channel.basic_publish("", dlq, body, pika.BasicProperties(headers={"reason": f"poison: {e}"}))
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception as e:
        _seen[body] = _seen.get(body, 0) + 1
        if _seen[body] >= max_attempts:
            channel.basic_publish("", dlq, body, pika.BasicProperties(headers={"Failure-Reason": str(e)}))
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)
        return
    channel.basic_ack(method.delivery_tag)


def _no_reason(channel, method, properties, body, process, max_attempts):
    """Known wrong: dead-letters with basic_reject(requeue=False): right place, but no reason header."""
    from voicelab.retry import ATTEMPT
    from voicelab.jobs import BadJob, VoiceJob
    attempt = int((properties.headers or {}).get(ATTEMPT, 0)) + 1
    try:
        process(VoiceJob.from_json(body))
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    except Exception:
        if attempt >= max_attempts:
            channel.basic_reject(method.delivery_tag, requeue=False)
        else:
            channel.basic_publish("", method.routing_key, body, pika.BasicProperties(headers={ATTEMPT: attempt}))
            channel.basic_ack(method.delivery_tag)
        return
    channel.basic_ack(method.delivery_tag)


def test_ch06_reference_and_sound_answers_pass_stub_and_wrong_answers_fail(as_shared) -> None:
    for answer in (ch06.retry_policy, _memory_counter):
        result = ch06.q1.run(answer)
        assert result.passed, result.message
    assert not ch06.q1.run(lambda *args: _stub(None, None, None)).attempted
    result = ch06.q1.run(_guide_header_counter)
    assert not result.passed and "loop forever" in result.message and "properties.headers" in result.message, \
        result.message
    result = ch06.q1.run(_no_reason)
    assert not result.passed and "no reason" in result.message, result.message
    assert _leftovers(as_shared) == []


# -- ch07: an alert rule that is right ------------------------------------------------------------

from voicelab.exercises import ch07  # noqa: E402


def test_ch07_reference_passes_recorded_and_live(as_shared) -> None:
    result = ch07.q1.run(ch07.alert)
    assert result.passed, result.message
    assert "live 'growing backlog'" in result.message


def test_ch07_stub_is_reported_not_raised() -> None:
    def alert(window):
        raise NotImplementedError

    assert not ch07.q1.run(alert).attempted


def test_ch07_rejects_the_guides_fixed_depth_with_a_reason() -> None:
    result = ch07.q1.run(lambda window: window["ready"].iloc[-1] > 100)
    assert not result.passed and "burst that drains" in result.message and "fixed depth" in result.message


def test_ch07_rejects_a_rule_that_misses_a_growing_backlog() -> None:
    result = ch07.q1.run(lambda window: bool((window["consumers"] == 0).all()) and len(window) > 4)
    assert not result.passed and "never fired" in result.message and "growing backlog" in result.message


def test_ch07_accepts_another_sound_rule(as_shared) -> None:
    def by_drain_time(window):  # Little's law instead of a threshold: will it drain within 20 s?
        from voicelab.alerts import depth, predicted_drain_s, slope
        g = slope(window, 3.0)
        return g == g and depth(window).iloc[-1] > 10 and predicted_drain_s(depth(window).iloc[-1], -g, 0) > 20

    result = ch07.q1.run(by_drain_time)
    assert result.passed, result.message


# -- ch08: a worker that loses nothing --------------------------------------------------------------

from voicelab.exercises import ch08  # noqa: E402


def _reject_poison(channel, method, properties, body, process, results):
    """Sound: poison rejected without requeue (the queue's dead-letter exchange takes it); ack after apply."""
    from voicelab.jobs import BadJob, VoiceJob
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def _crashes_on_poison(channel, method, properties, body, process, results):
    """Known wrong: acks after apply, but a BadJob escapes and kills the worker at every redelivery."""
    from voicelab.jobs import VoiceJob
    job = VoiceJob.from_json(body)
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def _requeues_poison(channel, method, properties, body, process, results):
    """Known wrong: puts poison back in the queue, where it comes straight back."""
    from voicelab.jobs import BadJob, VoiceJob
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_nack(method.delivery_tag, requeue=True)
        return
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def test_ch08_reference_and_sound_fixes_pass(as_shared) -> None:
    for answer in (ch08.worker, _reject_poison):
        result = ch08.q1.run(answer)
        assert result.passed, result.message
        assert "none lost" in result.message and "2 worker crashes" in result.message, result.message
    assert _leftovers(as_shared) == []


def test_ch08_stub_is_reported_not_raised(as_shared) -> None:
    def worker(channel, method, properties, body, process, results):
        raise NotImplementedError

    assert not ch08.q1.run(worker).attempted
    assert _leftovers(as_shared) == []


def test_ch08_rejects_the_fragile_worker_because_it_loses_jobs(as_shared) -> None:
    result = ch08.q1.run(ch08.fragile_worker)
    assert not result.passed and "2 of 40 jobs were lost" in result.message, result.message
    assert "Ack only after results.apply" in result.message


def test_ch08_rejects_workers_that_mishandle_poison(as_shared) -> None:
    result = ch08.q1.run(_crashes_on_poison)
    assert not result.passed and "died" in result.message and "BadJob" in result.message, result.message
    result = ch08.q1.run(_requeues_poison)
    assert not result.passed and "never settled" in result.message, result.message
    assert _leftovers(as_shared) == []


def test_a_design_with_headroom_is_measured_twice_before_the_machine_is_blamed() -> None:
    calls: list[float] = []

    def measured(rate: float):
        def run() -> tuple[float]:
            calls.append(rate)
            return (rate,)
        return run

    assert core.measure_against_target(measured(120.0), capacity=150, target=100) == ((120.0,), "") and calls == [120.0]
    calls.clear()
    result, note = core.measure_against_target(measured(90.0), capacity=150, target=100)
    assert calls == [90.0, 90.0] and "busy" in note and "150 jobs/s" in note, "short twice with headroom: the machine"
    calls.clear()
    assert core.measure_against_target(measured(90.0), capacity=110, target=100) == ((90.0,), "") and calls == [90.0], \
        "no headroom: measured once, and the caller says why it is wrong"
