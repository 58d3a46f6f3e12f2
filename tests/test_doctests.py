"""The ``>>>`` examples in voicelab's docstrings run, and are right (doctest).

``Example::`` blocks are *not* run here: they need a broker (and some take seconds), so they are
illustrations, like a README's. What they show is exercised by the tests of each module on real brokers.
This file checks that every module has one or the other, and that at least the doctests below exist
and pass: a module whose doctests all vanished would otherwise pass with ``attempted == 0``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import voicelab

MODULES = sorted(m.name.removeprefix("voicelab.") for m in pkgutil.walk_packages(voicelab.__path__, "voicelab.")
                 if not m.name.endswith("__main__"))

# Modules whose docstrings hold ``>>>`` examples: doctest must find and run them (not just find none).
WITH_DOCTESTS = ["bench", "broker.base", "exercises.ch03", "exercises.core", "jobs", "lab.acks", "lab.fleet",
                 "lab.heartbeats", "lab.measure", "lab.prefetch", "lab.routing", "queues"]

# Packages whose docstring is a map of their modules, not an example.
NO_EXAMPLE = ["cli", "exercises", "lab"]


@pytest.mark.parametrize("name", WITH_DOCTESTS)
def test_doctests_exist_and_run(name: str) -> None:
    module = importlib.import_module(f"voicelab.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"voicelab.{name} has no doctest left"
    assert result.failed == 0


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    """Every module's docstring shows an ``Example::`` or ``>>>`` lines, and its doctests (if any) pass."""
    module = importlib.import_module(f"voicelab.{name}")
    doc = module.__doc__ or ""
    assert "Example" in doc or ">>>" in doc or name in NO_EXAMPLE, f"voicelab.{name}: its docstring needs an example"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
