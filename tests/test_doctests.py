"""The ``>>>`` examples in voicelab's docstrings run, and are right (doctest).

``Example::`` blocks are *not* run here: they need a broker (and some take seconds), so they are
illustrations, like a README's. What they show is exercised by the tests of each module on real brokers.
This file checks that every module has one or the other, and that at least the doctests below exist
and pass: a module whose doctests all vanished would otherwise pass with ``attempted == 0``.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["broker", "jobs", "measure", "routing", "fairness", "queues", "throughput", "acks", "management",
           "concurrency", "fleet", "heartbeats",
           "worker", "uploads", "cli", "exercises", "guide_patterns", "publishing", "durability",
           "retry", "deadletters", "reconnect", "monitoring", "alerts", "health", "pipeline", "exercises.core", "broker.base", "broker.url",
           "broker.engine", "broker.erlang", "broker.container", "broker.local", "broker.choice", "broker.reaper"]


# Modules whose docstrings hold ``>>>`` examples: doctest must find and run them (not just find none).
WITH_DOCTESTS = ["acks", "heartbeats", "bench", "jobs", "routing", "fairness", "queues", "fleet", "exercises.core", "exercises.ch03", "measure",
                 "broker.base"]


@pytest.mark.parametrize("name", WITH_DOCTESTS)
def test_doctests_exist_and_run(name: str) -> None:
    module = importlib.import_module(f"voicelab.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"voicelab.{name} has no doctest left"
    assert result.failed == 0


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(f"voicelab.{name}")
    assert module.__doc__ and "Example" in module.__doc__ or ">>>" in (module.__doc__ or "") or name in (
        "cli", "exercises"), f"voicelab.{name} needs a module docstring with an example"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
