"""A checker leaves the broker as it found it, whatever the learner's code did to the connection it was given.

Each checker that hands the learner's function a channel is given an answer that makes the *broker* close the
whole connection (declaring an exchange of an unknown type: ``503 COMMAND_INVALID``, a connection error on
every version, as a transient queue's ``541`` is on upstream 4.3). The checker must report a wrong answer, not
raise; leave no ``check.*`` queue or exchange behind; and the next checker, given the reference, must pass.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from helpers import scratch_leftovers
from voicelab.exercises import ch00, ch01, ch02, ch06, ch08
from voicelab.exercises.core import Exercise


def _close_the_connection(channel: Any, *args: Any) -> None:
    """A learner's answer that makes the broker close its connection (any chapter's signature)."""
    channel.exchange_declare("check.sabotage", exchange_type="x-no-such-type")


CHAPTERS: list[tuple[Exercise, Callable[..., Any]]] = [
    (ch00.q1, ch00.enqueue_job), (ch01.q1, ch01.setup_routing), (ch02.q1, ch02.on_message),
    (ch06.q1, ch06.retry_policy), (ch08.q1, ch08.worker),
]


@pytest.mark.parametrize("exercise, reference", CHAPTERS, ids=[e.key for e, _ in CHAPTERS])
def test_a_connection_closed_by_the_broker_is_a_wrong_answer_and_the_next_check_passes(
        as_shared, exercise: Exercise, reference: Callable[..., Any]) -> None:
    assert scratch_leftovers(as_shared) == []
    result = exercise.run(_close_the_connection)
    assert result.attempted and not result.passed, result.message
    assert scratch_leftovers(as_shared) == [], result.message
    after = exercise.run(reference)
    assert after.passed, f"after a learner's answer closed the connection: {after.message}"
    assert scratch_leftovers(as_shared) == []
