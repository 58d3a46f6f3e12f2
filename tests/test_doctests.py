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

def _all_modules() -> list[str]:
    import pkgutil

    import voicelab

    return sorted(m.name.removeprefix("voicelab.") for m in pkgutil.walk_packages(voicelab.__path__, "voicelab.")
                  if not m.name.endswith("__main__"))


MODULES = _all_modules()


# Modules whose docstrings hold ``>>>`` examples: doctest must find and run them (not just find none).
WITH_DOCTESTS = ["lab.acks", "lab.heartbeats", "bench", "jobs", "lab.routing", "lab.prefetch", "queues", "lab.fleet", "exercises.core",
                 "exercises.ch03", "lab.measure", "broker.base"]


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
        "cli", "exercises", "lab"), f"voicelab.{name} needs a module docstring with an example"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
