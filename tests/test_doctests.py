"""The examples in voicelab's docstrings that run without a broker run, and are right."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["broker", "jobs", "measure", "routing", "fairness", "queues", "throughput", "acks", "management",
           "concurrency", "fleet", "heartbeats",
           "worker", "uploads", "cli", "exercises", "guide_patterns", "publishing", "durability", "exercises.core", "broker.base", "broker.url",
           "broker.engine", "broker.erlang", "broker.container", "broker.local", "broker.choice", "broker.reaper"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(f"voicelab.{name}")
    assert module.__doc__ and "Example" in module.__doc__ or ">>>" in (module.__doc__ or "") or name in (
        "cli", "exercises"), f"voicelab.{name} needs a module docstring with an example"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
