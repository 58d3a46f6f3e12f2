"""Auto-checked exercises: the learner writes a function, a checker runs it on the real broker.

In a notebook::

    from voicelab.exercises import ch00
    def enqueue_job(channel, queue, job): ...
    ch00.q1.check(enqueue_job)   # prints a pass, or what is wrong
    ch00.q1.hint()               # a nudge; call again (or hint(2)) for the next hint
    ch00.q1.solution()

An unsolved exercise (the stub raises ``NotImplementedError``) is reported,
never raised, so the notebook still runs top to bottom. The machinery lives in
:mod:`voicelab.exercises.core`; ``chNN`` hold the problems of notebook ``NN``.
"""

from __future__ import annotations

from .core import CheckResult, Exercise, Wrong, scratch_name, scratch_queue

__all__ = ["CheckResult", "Exercise", "Wrong", "scratch_name", "scratch_queue"]
