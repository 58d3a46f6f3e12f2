"""Fixtures: real brokers on every backend and RabbitMQ version CI provides (see ``helpers``).

``any_broker`` (per version) and ``each_backend`` (per version and backend) are shared by the whole
session; ``fresh_broker`` starts a test's own, to kill, restart or configure, and stops it afterwards.

Notebooks: pytest fixtures never run for notebook cells, so when notebooks are
collected one broker is started here and its URL exported for their kernels.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import helpers` from every test file

from helpers import backend_params, beam_processes, images, owned_containers, start_backend, version_params  # noqa: E402
from voicelab import broker as vb  # noqa: E402


_STARTED: dict[tuple[str, str | None], vb.Broker] = {}


def _broker(param: tuple[str, str | None]) -> vb.Broker:
    """One broker per (backend, image) for the whole session, shared by the fixtures below."""
    if param not in _STARTED or not vb.is_live(_STARTED[param]):
        _STARTED[param] = start_backend(*param)
    return _STARTED[param]


@pytest.fixture(scope="session", params=version_params())
def any_broker(request: pytest.FixtureRequest) -> vb.Broker:
    """A broker per RabbitMQ version CI provides (the container images); pytest groups tests by broker.

    The local node runs 3.10 like the bookworm image, so the lessons' tests do not run on it twice;
    the backend's own tests (``each_backend``) do.
    """
    return _broker(request.param)


@pytest.fixture(scope="session", params=backend_params())
def each_backend(request: pytest.FixtureRequest) -> vb.Broker:
    """A broker per version *and* per backend: the container images and the local node."""
    return _broker(request.param)


@pytest.fixture
def as_shared(any_broker: vb.Broker):
    """Make ``any_broker`` the one that ``shared_broker()`` (exercise checkers) returns."""
    with vb.sharing(any_broker):
        yield any_broker


@pytest.fixture
def fresh_broker() -> Iterator[Callable[..., vb.Broker]]:
    """Start a broker of the test's own: ``fresh_broker(backend, image=None, settings=None)`` (see
    ``helpers.start_backend``); every broker it started is stopped when the test ends, however it ends.

    For a test that kills, restarts or configures its broker, which the session's shared ones must not be.
    """
    with contextlib.ExitStack() as started:
        def start(backend: str, image: str | None = None, settings: dict[str, int] | None = None) -> vb.Broker:
            return started.enter_context(start_backend(backend, image, settings))

        yield start


@pytest.fixture
def channel(any_broker: vb.Broker):
    with any_broker.connect() as connection:
        yield connection.channel()


def pytest_configure(config: pytest.Config) -> None:
    # Every broker of this run, in this process, its children and the notebooks' kernels, carries this tag,
    # so that the leak check below counts ours and not those of another run on the same machine.
    os.environ.setdefault("VOICELAB_RUN_ID", uuid.uuid4().hex[:12])


# Seconds per test file in CI (2 cores, stage 1 of tests/lanes.py, 2026-12-01): the longest files go to the
# xdist workers first (loadfile hands out files in item order), so that none starts near the end.
FILE_SECONDS = {"test_durability.py": 239, "test_checkers_05.py": 211, "test_broker.py": 186, "test_cluster.py": 162,
                "test_broker_start.py": 127, "test_cleanup.py": 121, "test_checkers_08.py": 102,
                "test_reconnect.py": 100, "test_deadletters.py": 90, "test_publishing.py": 89,
                "test_checkers_00_04.py": 86, "test_retry.py": 82, "test_checkers_07.py": 80,
                "test_checkers_06.py": 74, "test_lab_01_03.py": 68, "test_concurrency.py": 63,
                "test_checkers_09.py": 57, "test_monitoring.py": 55, "test_alerts.py": 45}


def _longest_files_first(items: list[pytest.Item]) -> None:
    """Stable: each file's tests keep their order; notebooks and unlisted files keep theirs, after the listed."""
    items.sort(key=lambda item: -FILE_SECONDS.get(Path(str(item.fspath)).name, 0))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on ``any_broker`` run on the newest image only, unless marked ``all_versions`` (every image) or
    ``ends_versions`` (the oldest and the newest: the exercise checkers, whose verdicts must hold at both ends).

    A test whose subject differs between RabbitMQ versions (durability, quorum delivery limits,
    retries, monitoring endpoints) carries the marker and runs on every image; a test of voicelab's
    own mechanics runs once. ``VOICELAB_ALL_VERSIONS=1`` runs every test on every image.
    """
    _longest_files_first(items)
    oldest, newest = images()[0], images()[-1]
    if os.environ.get("VOICELAB_ALL_VERSIONS") == "1" or len(images()) < 2:
        return
    keep, drop = [], []
    for item in items:
        param = getattr(getattr(item, "callspec", None), "params", {}).get("any_broker")
        wanted = ((oldest, newest) if item.get_closest_marker("ends_versions")
                  else images() if item.get_closest_marker("all_versions") else (newest,))
        if param and param[0] == "container" and param[1] not in wanted:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the first notebook's kernel starts (nbval starts it when the file is set up), start its broker.

    Lazily, so that under pytest-xdist only the workers that run notebooks start one.
    """
    if str(item.fspath).endswith(".ipynb") and not os.environ.get("VOICELAB_AMQP_URL"):
        broker = vb.start_broker()
        item.config._voicelab_broker = broker  # type: ignore[attr-defined]
        os.environ["VOICELAB_AMQP_URL"] = broker.amqp_url
        if broker.management_url:
            os.environ["VOICELAB_MANAGEMENT_URL"] = broker.management_url
        if broker.prometheus_url:
            os.environ["VOICELAB_PROMETHEUS_URL"] = broker.prometheus_url
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:  # outside pytest's capture (a worker's terminal is not shown)
            reporter.write_line(f"\nnotebooks share RabbitMQ {broker.version} ({broker.backend} "
                                f"{getattr(broker, 'image', '')}) at {vb.mask_url(broker.amqp_url)}")
            if broker.notice:
                reporter.write_line(f"note: {broker.notice}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Seconds per test file (setup + call + teardown): where CI's time goes (README, Development)."""
    per_file: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown") and hasattr(report, "duration"):
                path = report.nodeid.split("::", 1)[0]
                per_file[path] = per_file.get(path, 0.0) + report.duration
    if per_file:
        terminalreporter.section("seconds per file")
        for path, seconds in sorted(per_file.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds:7.1f} s  {path}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for broker in _STARTED.values():
        broker.stop()
    broker = getattr(session.config, "_voicelab_broker", None)
    if broker is not None:
        broker.stop()
        os.environ.pop("VOICELAB_AMQP_URL", None)
        os.environ.pop("VOICELAB_MANAGEMENT_URL", None)
        os.environ.pop("VOICELAB_PROMETHEUS_URL", None)
    vb.stop_all()  # brokers notebooks-in-process or checkers started
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller checks for leaks once every worker has finished
    # This process's brokers, and any a notebook kernel or child process started: all must be gone.
    run = vb.run_id()
    leaks = owned_containers(run=run) + beam_processes(f"-r{run}-")
    # A local cluster's nodes are beam processes like any local node's (counted above); a container cluster
    # also has a network.
    with contextlib.suppress(Exception):   # no Docker engine: no container cluster either
        from voicelab.broker.container_cluster import leftovers
        leaks += [found for found in leftovers(run=run) if found.startswith("network ")]   # a cluster's network
    if leaks:
        print(f"\nLEAK: the test run left brokers behind: {leaks}")
        session.exitstatus = 1
