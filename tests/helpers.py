"""What the tests share: which brokers to run on, how to start one, how to find a leaked one or a checker's leftovers.

- ``VOICELAB_TEST_IMAGES``: comma-separated images the container tests run on
  (CI: the three offline images); default: ``VOICELAB_RABBITMQ_IMAGE`` or the official one.
- ``VOICELAB_SKIPPED_IMAGES``: ``image=reason;...``: versions CI could not build, reported as skips.
- ``VOICELAB_REQUIRE_BACKENDS=1`` (CI): a missing Docker engine or rabbitmq-server fails instead of skipping.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Callable

import pytest

from voicelab import broker as vb
from voicelab.management import Management

REQUIRE = os.environ.get("VOICELAB_REQUIRE_BACKENDS") == "1"


def images() -> list[str]:
    """The images the container tests run on."""
    raw = os.environ.get("VOICELAB_TEST_IMAGES") or os.environ.get("VOICELAB_RABBITMQ_IMAGE") or vb.DEFAULT_IMAGE
    return [i.strip() for i in raw.split(",") if i.strip()]


def skipped_images() -> dict[str, str]:
    """Images CI could not build today, with the reason."""
    out = {}
    for part in os.environ.get("VOICELAB_SKIPPED_IMAGES", "").split(";"):
        if "=" in part:
            image, reason = part.split("=", 1)
            out[image.strip()] = reason.strip()
    return out


def version_params() -> list:
    """One pytest param per RabbitMQ version: each container image (and the skipped ones, as skips).

    Without a Docker engine (a learner with only rabbitmq-server), the local node instead.
    """
    if not (REQUIRE or vb.docker_engine()[0]):
        return [pytest.param(("local", None), id="local")]
    params = [pytest.param(("container", image), id=f"container:{image}") for image in images()]
    params += [
        pytest.param(("container", image), id=f"container:{image}", marks=pytest.mark.skip(reason=reason))
        for image, reason in skipped_images().items()
    ]
    return params


def end_version_params() -> list:
    """:func:`version_params` of the oldest and the newest image only (3.10 and 4.3 in CI): where a test's
    subject is the same on every version but its verdict must be shown at both ends (the exercise checkers).
    ``VOICELAB_ALL_VERSIONS=1``: every image."""
    every = version_params()
    if os.environ.get("VOICELAB_ALL_VERSIONS") == "1" or len(every) <= 2:
        return every
    return [every[0], *every[len(images()) - 1:]]   # oldest, newest and the skipped ones (as skips)


def backend_params() -> list:
    """:func:`end_version_params` and the local node: for the tests of the backends themselves (starting,
    restarting, killing a broker is voicelab's code, the same for every image; the ends show it on both
    RabbitMQ generations). ``VOICELAB_ALL_VERSIONS=1``: every image."""
    params = end_version_params()
    if not any(p.values[0][0] == "local" for p in params):
        params.append(pytest.param(("local", None), id="local"))
    return params


def unavailable(why: str) -> None:
    """Skip the test (fail it in CI, where every backend must exist)."""
    if REQUIRE:
        pytest.fail(f"VOICELAB_REQUIRE_BACKENDS=1 but {why}")
    pytest.skip(why)


def require(backend: str) -> None:
    """Skip (or fail in CI) unless this machine can run ``backend``."""
    if backend == "container":
        ok, detail = vb.docker_engine()
        if not ok:
            unavailable(detail)
    elif vb.find_rabbitmq_server() is None:
        unavailable("rabbitmq-server is not installed")


def start_backend(backend: str, image: str | None = None, settings: dict[str, int] | None = None) -> vb.Broker:
    """Start a broker of ``backend``, skipping (or failing, in CI) when this machine has none.

    ``backend``: ``"container"`` (of ``image``), ``"local"``, or ``"auto"``: whatever
    :func:`voicelab.broker.start_broker` picks, as a learner's notebook would (no ``settings`` then).
    Tests start their own broker through the ``fresh_broker`` fixture, which stops it.
    """
    if backend == "auto":
        if settings:
            raise ValueError(f"settings: not with backend='auto' (start_broker takes none), got {settings!r}")
        return vb.start_broker("auto", image)
    require(backend)
    if backend == "container":
        return vb.ContainerBroker(image, settings).start()
    return vb.LocalBroker(settings=settings).start()


def newest_backend() -> tuple[str, str | None]:
    """``(backend, image)`` of the newest RabbitMQ this machine runs: the newest image, else (no Docker engine,
    outside CI) the local node."""
    return ("container", images()[-1]) if REQUIRE or vb.docker_engine()[0] else ("local", None)


def scratch_leftovers(broker: vb.Broker) -> list[str]:
    """Queues and exchanges named ``check.*`` (an exercise checker's scratch names) on ``broker``.

    Asked of the management API, which lists a declare or a delete at once.
    """
    mgmt = Management(broker)
    try:
        return sorted(o["name"] for kind in ("queues", "exchanges")
                      for o in mgmt.get(f"{kind}/{mgmt.vhost}?columns=name") if o["name"].startswith("check."))
    finally:
        mgmt.close()


def beam_processes(marker: str) -> list[str]:
    """Command lines of running beam processes that contain ``marker`` (``ps -ww``: never cut)."""
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "beam" in line and marker in line]


def owned_containers(pid: int | None = None, run: str | None = None) -> list[str]:
    """Ids of containers (running or not) that voicelab started for process ``pid``, or in test run ``run``."""
    ok, _ = vb.docker_engine()
    if not ok:
        return []
    label = (f"org.voicelab.run-id={run}" if run else f"org.voicelab.owner-pid={pid}" if pid
             else "org.voicelab.owner-pid")
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True)
    return out.stdout.split()


def left_behind(pid: int) -> list[str]:
    """Containers and local nodes that process ``pid`` started and that still exist."""
    return owned_containers(pid) + beam_processes(f"voicelab-node-{pid}-")


def interrupt_after(proc: "subprocess.Popen[str]", ready: Callable[[str], bool],
                    signum: int = signal.SIGINT) -> tuple[str, str]:
    """Read ``proc``'s output until a line satisfies ``ready``, check it has a broker running, send ``signum``
    (Ctrl-C's SIGINT, or SIGTERM as a service manager sends).

    Returns (output before the signal, output after). The process never outlives this call.
    """
    lines: list[str] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if ready(line):
                break
        name = signal.Signals(signum).name
        assert left_behind(proc.pid), f"a broker should be running before {name}:\n" + "".join(lines)
        proc.send_signal(signum)
        return "".join(lines), proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
