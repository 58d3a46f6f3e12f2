"""The machinery behind every exercise: :class:`Exercise`, :class:`Wrong`, :class:`CheckResult`, scratch queues.

A chapter's module (``ch00.py``, ...) holds only its problems: a reference
solution, a checker that raises :class:`Wrong` when the learner's function
has the wrong effect on the broker, a list of hints (a nudge first, then the
key call) and one ``qN = Exercise(...)`` line.

>>> def add_one(x):
...     raise NotImplementedError
>>> def _check(fn):
...     if fn(1) != 2:
...         raise Wrong(f"add_one(1) should be 2, got {fn(1)!r}")
...     return "add_one(1) == 2."
>>> q = Exercise("demo.q1", "add one", _check, hints=["Think of +.", "return x + 1"],
...              solution=lambda x: x + 1)
>>> q.run(add_one).attempted
False
>>> q.check(lambda x: x + 1)
✓ demo.q1 (add one): correct. add_one(1) == 2.
>>> print(q.run(lambda x: x).message)
✗ demo.q1 (add one): add_one(1) should be 2, got 1
  Hint: Think of +.
  More hints: demo.q1.hint()
>>> q.hint()
Hint 1/2 for demo.q1 (add one):
  Think of +.
Run demo.q1.hint() again for the next hint.
>>> q.hint()
Hint 2/2 for demo.q1 (add one):
  return x + 1
That was the last hint: demo.q1.solution() shows a reference solution.
"""

from __future__ import annotations

import copy
import inspect
import textwrap
import types
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..broker import shared_broker
from ..queues import declare_job_queue, delete_job_queue

if TYPE_CHECKING:
    from ..broker import Broker

Checker = Callable[[Callable[..., Any]], str]
"""``checker(fn)`` runs the learner's ``fn``, raises :class:`Wrong` if it is wrong, returns what it verified."""


class Wrong(AssertionError):
    """Raised inside a checker: the learner's function ran but its effect on the broker is wrong."""


@dataclass
class CheckResult:
    """What a checker found. ``passed`` is False both for a wrong answer and for an unsolved stub.

    >>> r = CheckResult(False, "not solved yet", attempted=False)
    >>> bool(r), r.attempted, str(r)
    (False, False, 'not solved yet')
    """

    passed: bool
    message: str
    attempted: bool = True

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message


class Exercise:
    """One exercise: a checker, a list of hints (nudge first, key call last) and a reference solution.

    ``run(fn)`` returns a :class:`CheckResult` silently; ``check(fn)`` prints it.
    ``hint()`` prints the first hint, then the next one at each call; ``hint(n)``
    prints hint ``n`` (from 1). See the module docstring for a runnable example.
    """

    def __init__(self, key: str, title: str, checker: Checker, hints: Sequence[str],
                 solution: Callable[..., Any]) -> None:
        if isinstance(hints, str) or not hints:
            raise ValueError(f"{key}: hints must be a non-empty list of strings, got {hints!r}")
        self.key = key
        self.name = f"{key} ({title})"
        self.hints: tuple[str, ...] = tuple(inspect.cleandoc(h) for h in hints)
        self.reference = solution
        self._checker = checker
        self._next_hint = 0  # index of the hint that hint() prints next

    def run(self, fn: Callable[..., Any]) -> CheckResult:
        """Check ``fn`` on the broker and return the result, printing nothing.

        An unsolved stub (it raises ``NotImplementedError``) and a crash of the
        learner's code are reported in the result, never raised.
        """
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
            return CheckResult(False, f"✗ {self.name}: {e}\n{self._first_hint()}")
        except Exception as e:  # the learner's code crashed: say where, do not crash the notebook
            return CheckResult(False, f"✗ {self.name}: your function raised {type(e).__name__}: {e}\n"
                                      f"{self._first_hint()}")
        return CheckResult(True, f"✓ {self.name}: correct. {detail}")

    def check(self, fn: Callable[..., Any]) -> None:
        """Check ``fn`` on the broker and print the verdict (this helper reports by design; see :meth:`run`)."""
        print(self.run(fn).message)

    def hint(self, n: int | None = None) -> None:
        """Print hint ``n`` (1 = the first), or the next one: each call without ``n`` moves on by one."""
        count = len(self.hints)
        if n is None:
            n = min(self._next_hint, count - 1) + 1
        if not isinstance(n, int) or not 1 <= n <= count:
            print(f"{self.name} has {count} hints: {self.key}.hint(1) to {self.key}.hint({count})")
            return
        self._next_hint = n  # the index of hint n + 1
        more = (f"Run {self.key}.hint() again for the next hint." if n < count else
                f"That was the last hint: {self.key}.solution() shows a reference solution.")
        print(f"Hint {n}/{count} for {self.name}:\n{textwrap.indent(self.hints[n - 1], '  ')}\n{more}")

    def solution(self) -> None:
        """Print the reference solution's source."""
        print(inspect.getsource(self.reference))

    def _first_hint(self) -> str:
        return textwrap.indent(f"Hint: {self.hints[0]}\nMore hints: {self.key}.hint()", "  ")

    def __repr__(self) -> str:
        return f"<Exercise {self.name}: .check(fn), .hint(), .solution()>"


def scratch_name(topic: str) -> str:
    """A fresh name ``check.<topic>.<hex>`` for something a checker creates and deletes.

    >>> scratch_name("routing").startswith("check.routing.")
    True
    >>> scratch_name("routing") != scratch_name("routing")
    True
    """
    return f"check.{topic}.{uuid.uuid4().hex[:8]}"


@contextmanager
def scratch_queue(topic: str, dead_letters: bool = False, broker: Broker | None = None) -> Iterator[str]:
    """A durable queue ``check.<topic>.<hex>`` (and its DLQ if ``dead_letters``), deleted on exit.

    Declared with :func:`voicelab.queues.declare_job_queue` on a connection of its
    own, and deleted on a fresh one, so it goes away even when the learner's
    code raises or closes the channel it was given. ``broker`` defaults to
    :func:`voicelab.broker.shared_broker`.

    Example::

        with scratch_queue("enqueue") as queue, shared_broker().connect() as connection:
            fn(connection.channel(), queue, job)   # the learner's function
    """
    broker = broker or shared_broker()
    queue = scratch_name(topic)
    try:
        with broker.connect() as connection:
            declare_job_queue(connection.channel(), queue, dead_letters=dead_letters)
        yield queue
    finally:
        with broker.connect() as connection:
            delete_job_queue(connection.channel(), queue)   # with its DLQ, if it has one


HEADROOM = 1.2
"""A design must allow this much more than the target (Little's law) to be judged sound when a busy machine
slows it."""


def measure_against_target(measure: Callable[[], tuple[Any, ...]], capacity: float, target: float,
                           check: Callable[[tuple[Any, ...]], None] | None = None) -> tuple[tuple[Any, ...], str]:
    """Run ``measure()`` (its first value: the rate reached) and judge it fairly on a machine that may be busy.

    ``capacity`` is the most the learner's design can do (Little's law). A design with :data:`HEADROOM` over
    ``target`` that falls short is measured once more; if it falls short again the machine, not the answer,
    is slow, and the returned note says so. A design without the headroom that falls short raises nothing
    here: the caller says why it is wrong. ``check(result)`` may raise :class:`Wrong` after each measurement.

    Returns ``(result, note)``; ``note`` is ``""`` unless the machine was found busy.
    """
    for _ in range(2):
        result = measure()
        if check is not None:
            check(result)
        if result[0] >= target or capacity < HEADROOM * target:
            return result, ""
    return result, (f" This machine was busy: {result[0]:.0f} jobs/s measured, twice, against the {capacity:.0f} "
                    f"jobs/s the design allows; on an idle machine it reaches the target.")


class WorkerKilled(BaseException):
    """The checker killed the learner's worker at one of its broker calls (a stand-in for SIGKILL).

    A ``BaseException``: ``except Exception`` does not catch it. A bare ``except:`` does, but a killed worker's
    later calls have no effect (:class:`CrashingChannel` refuses them), as nothing a dead process does reaches
    the broker.
    """


BROKER_CALLS = ("basic_publish", "basic_ack", "basic_nack", "basic_reject")
"""The channel methods whose effect a crash can split: the learner's worker can be killed just before any of them."""


class CrashingChannel:
    """A proxy of a pika channel that counts the learner's :data:`BROKER_CALLS` and can kill the worker at one.

    ``kill_at=k``: the k-th broker call never goes out; :class:`WorkerKilled` is raised instead and the proxy
    is dead from then on (every method raises :class:`WorkerKilled` and does nothing). ``log`` keeps the calls
    that went out as ``(name, requeue)`` (``requeue`` for nack/reject, else None); ``next_call`` names the call
    the kill stopped. ``before(name, args, kwargs)``, if given, runs before each call goes out: it may watch
    (delivery tags) or kill (raise :class:`WorkerKilled`). Other attributes are the channel's.

    >>> class Fake:
    ...     def basic_ack(self, tag): return "acked"
    ...     def basic_publish(self, *a, **kw): return "sent"
    >>> ch = CrashingChannel(Fake(), kill_at=2)
    >>> ch.basic_ack(1)
    'acked'
    >>> try:
    ...     ch.basic_publish("", "q", b"x")
    ... except WorkerKilled:
    ...     print("killed before", ch.next_call, "after", ch.log)
    killed before basic_publish after [('basic_ack', None)]
    """

    def __init__(self, channel: Any, kill_at: int | None = None,
                 before: Callable[[str, tuple[Any, ...], dict[str, Any]], None] | None = None) -> None:
        self._channel = channel
        self.kill_at = kill_at
        self.before = before
        self.calls = 0
        self.dead = False
        self.next_call = ""
        self.log: list[tuple[str, bool | None]] = []

    def __getattr__(self, name: str) -> Any:
        if self.dead:
            raise WorkerKilled(f"the worker was killed before its {self.next_call}")
        attr = getattr(self._channel, name)
        if name not in BROKER_CALLS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.dead:
                raise WorkerKilled(f"the worker was killed before its {self.next_call}")
            self.calls += 1
            try:
                if self.kill_at is not None and self.calls >= self.kill_at:
                    raise WorkerKilled(f"the worker was killed before its {name}")
                if self.before is not None:
                    self.before(name, args, kwargs)
            except WorkerKilled:
                self.dead, self.next_call = True, name
                raise
            self.log.append((name, _requeue(name, args, kwargs)))
            return attr(*args, **kwargs)

        return call

    @property
    def requeues(self) -> int:
        """Calls of basic_nack/basic_reject that put the message back in its queue."""
        return sum(1 for _, requeue in self.log if requeue)


def _requeue(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool | None:
    """The ``requeue`` of a basic_nack(tag, multiple, requeue) or basic_reject(tag, requeue) call (pika's
    default: True); None for other calls."""
    position = {"basic_nack": 2, "basic_reject": 1}.get(name)
    if position is None:
        return None
    if "requeue" in kwargs:
        return bool(kwargs["requeue"])
    return bool(args[position]) if len(args) > position else True


_STATE_TYPES = (dict, list, set)


def fresh_worker(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as a freshly started worker process would run it: with copies of the state it keeps in memory.

    Its default arguments, its closure's cells and the containers (dict, list, set and their subclasses) its
    module holds under the names its code uses are deep-copied; so a count kept there starts again, as it
    would after a restart or in another process of a fleet. Anything that cannot be copied is shared.
    A checker copies ``fn`` once before any call (its state as a new process starts with it), then starts
    each worker from that copy.

    >>> def count(key, _seen={}):
    ...     _seen[key] = _seen.get(key, 0) + 1
    ...     return _seen[key]
    >>> pristine = fresh_worker(count)
    >>> one, two = fresh_worker(pristine), fresh_worker(pristine)
    >>> one("a"), one("a"), two("a"), count("a")
    (1, 2, 1, 1)
    """
    if isinstance(fn, types.MethodType):
        return types.MethodType(fresh_worker(fn.__func__), _copied(fn.__self__, objects=True))
    if not isinstance(fn, types.FunctionType):
        return fn
    namespace = fn.__globals__
    names = [n for n in _code_names(fn.__code__) if isinstance(namespace.get(n), _STATE_TYPES)]
    if names:
        namespace = dict(namespace)
        namespace.update({n: _copied(namespace[n]) for n in names})
    closure = tuple(types.CellType(_copied(c.cell_contents)) if _has_contents(c) else c
                    for c in fn.__closure__) if fn.__closure__ else None
    copied = types.FunctionType(fn.__code__, namespace, fn.__name__, _copied(fn.__defaults__), closure)
    copied.__kwdefaults__ = _copied(fn.__kwdefaults__)
    return copied


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _has_contents(cell: types.CellType) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _copied(value: Any, objects: bool = False) -> Any:
    """A deep copy of ``value`` if it is a container of state (or, with ``objects``, any instance with
    attributes, e.g. the worker object of a bound method); tuples item by item; anything else as it is."""
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)
    stateful = isinstance(value, _STATE_TYPES) or (objects and hasattr(value, "__dict__") and not isinstance(
        value, (types.ModuleType, type, types.FunctionType, types.MethodType)))
    if not stateful:
        return value
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - holds a connection, a lock, a socket: shared, as it cannot be copied
        return value
