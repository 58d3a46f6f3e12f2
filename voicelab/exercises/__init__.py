"""Auto-checked exercises: the learner writes a function, a checker runs it on the real broker.

In a notebook::

    from voicelab.exercises import ch00
    def enqueue_job(channel, queue, job): ...
    ch00.q1.check(enqueue_job)   # prints a pass, or what is wrong
    ch00.q1.hint()
    ch00.q1.solution()

An unsolved exercise (the stub raises ``NotImplementedError``) is reported,
never raised, so the notebook still runs top to bottom.
"""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass
from typing import Any, Callable


class Wrong(AssertionError):
    """Raised inside a checker: the learner's function ran but its effect on the broker is wrong."""


@dataclass
class CheckResult:
    """What a checker found. ``passed`` is False both for a wrong answer and for an unsolved stub."""

    passed: bool
    message: str
    attempted: bool = True

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message


class Exercise:
    """One exercise: a checker, a hint and a reference solution.

    ``checker(fn)`` runs the learner's ``fn`` against the broker and raises
    :class:`Wrong` with an explanation when the result is not right.
    """

    def __init__(self, key: str, title: str, checker: Callable[[Callable[..., Any]], str], hint: str,
                 solution: Callable[..., Any]) -> None:
        self.key = key
        self.name = f"{key} ({title})"
        self._checker = checker
        self._hint = textwrap.dedent(hint).strip()
        self.reference = solution

    def run(self, fn: Callable[..., Any]) -> CheckResult:
        """Check ``fn`` and return the result, printing nothing."""
        if not callable(fn):
            return CheckResult(False, f"{self.name}: pass your function itself, e.g. check(enqueue_job), "
                                      f"not {type(fn).__name__}")
        try:
            detail = self._checker(fn)
        except NotImplementedError:
            return CheckResult(False, f"{self.name}: not solved yet. Replace `raise NotImplementedError` "
                                      f"with your code, then run this cell again. Stuck? Run {self.key}.hint()",
                               attempted=False)
        except Wrong as e:
            return CheckResult(False, f"✗ {self.name}: {e}\n  Hint: {self._hint}")
        except Exception as e:  # the learner's code crashed: say where, do not crash the notebook
            return CheckResult(False, f"✗ {self.name}: your function raised {type(e).__name__}: {e}\n"
                                      f"  Hint: {self._hint}")
        return CheckResult(True, f"✓ {self.name}: correct. {detail}")

    def check(self, fn: Callable[..., Any]) -> None:
        """Check ``fn`` on the broker and print the verdict (this helper reports by design; see :meth:`run`)."""
        print(self.run(fn).message)

    def hint(self) -> None:
        """Print a hint."""
        print(f"Hint for {self.name}: {self._hint}")

    def solution(self) -> None:
        """Print the reference solution's source."""
        print(inspect.getsource(self.reference))

    def __repr__(self) -> str:
        return f"<Exercise {self.name}: .check(fn), .hint(), .solution()>"
