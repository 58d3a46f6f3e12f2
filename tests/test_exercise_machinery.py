"""The exercise machinery (``voicelab.exercises.core``): hints, verdicts, scratch queues, measuring against a target.

Tested on a demo exercise of its own; the chapters' problems are in ``test_checkers_00_04`` and ``test_checkers_05_08``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pika
import pytest

from voicelab import broker as vb
from voicelab import exercises
from voicelab.exercises import CheckResult, Exercise, Wrong, core, scratch_queue
from voicelab.queues import declare_job_queue, dlq_name

EXERCISES = [importlib.import_module(f"voicelab.exercises.{m.name}").q1
             for m in pkgutil.iter_modules(exercises.__path__) if m.name.startswith("ch")]


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


class _Boom(Exception):
    pass


def _exercise(checker=lambda fn: fn(), hints=("nudge: think of +", "key: return x + 1", "answer: x + 1")):
    return Exercise("demo.q1", "demo", checker, hints=list(hints), solution=len)


# -- hints ----------------------------------------------------------------------------------

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


# -- verdicts -------------------------------------------------------------------------------

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


# -- scratch queues (on a real broker) ------------------------------------------------------

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


# -- measuring against a target -------------------------------------------------------------

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
