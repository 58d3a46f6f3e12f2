"""Brokers for the tests: real ones, on every backend and RabbitMQ version CI provides.

- ``VOICELAB_TEST_IMAGES``: comma-separated images the container tests run on
  (CI: the three offline images); default: ``VOICELAB_RABBITMQ_IMAGE`` or the official one.
- ``VOICELAB_SKIPPED_IMAGES``: ``image=reason;...``: versions CI could not build, reported as skips.
- ``VOICELAB_REQUIRE_BACKENDS=1`` (CI): a missing Docker engine or rabbitmq-server fails instead of skipping.

Notebooks: pytest fixtures never run for notebook cells, so when notebooks are
collected one broker is started here and its URL exported for their kernels.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from voicelab import broker as vb

REQUIRE = os.environ.get("VOICELAB_REQUIRE_BACKENDS") == "1"


def _images() -> list[str]:
    raw = os.environ.get("VOICELAB_TEST_IMAGES") or os.environ.get("VOICELAB_RABBITMQ_IMAGE") or vb.DEFAULT_IMAGE
    return [i.strip() for i in raw.split(",") if i.strip()]


def _skipped_images() -> dict[str, str]:
    out = {}
    for part in os.environ.get("VOICELAB_SKIPPED_IMAGES", "").split(";"):
        if "=" in part:
            image, reason = part.split("=", 1)
            out[image.strip()] = reason.strip()
    return out


def backend_params() -> list:
    params = [pytest.param(("container", image), id=f"container:{image}") for image in _images()]
    params += [
        pytest.param(("container", image), id=f"container:{image}", marks=pytest.mark.skip(reason=reason))
        for image, reason in _skipped_images().items()
    ]
    params.append(pytest.param(("local", None), id="local"))
    return params


def _unavailable(why: str) -> None:
    if REQUIRE:
        pytest.fail(f"VOICELAB_REQUIRE_BACKENDS=1 but {why}")
    pytest.skip(why)


def start_backend(backend: str, image: str | None) -> vb.Broker:
    """Start a broker of ``backend``, skipping (or failing, in CI) when this machine has none."""
    if backend == "container":
        ok, detail = vb.docker_engine()
        if not ok:
            _unavailable(detail)
        return vb.ContainerBroker(image).start()
    if vb.find_rabbitmq_server() is None:
        _unavailable("rabbitmq-server is not installed")
    return vb.LocalBroker().start()


@pytest.fixture(scope="session", params=backend_params())
def any_broker(request: pytest.FixtureRequest):
    """A broker per backend and image; pytest groups the tests by broker so each starts once."""
    backend, image = request.param
    broker = start_backend(backend, image)
    yield broker
    broker.stop()


@pytest.fixture
def as_shared(any_broker: vb.Broker, monkeypatch: pytest.MonkeyPatch) -> vb.Broker:
    """Make ``any_broker`` the one that ``shared_broker()`` (exercise checkers) returns."""
    monkeypatch.setattr(vb, "_SHARED", any_broker)
    return any_broker


@pytest.fixture
def channel(any_broker: vb.Broker):
    with any_broker.connect() as connection:
        yield connection.channel()


def beam_processes(marker: str) -> list[str]:
    """Command lines of running beam processes that contain ``marker``."""
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "beam" in line and marker in line]


def owned_containers(pid: int | None = None) -> list[str]:
    """Ids of containers (running or not) that voicelab started for process ``pid`` (None: for any process)."""
    ok, _ = vb.docker_engine()
    if not ok:
        return []
    label = "org.voicelab.owner-pid" + ("" if pid is None else f"={pid}")
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True)
    return out.stdout.split()


def pytest_collection_finish(session: pytest.Session) -> None:
    has_notebooks = any(str(item.fspath).endswith(".ipynb") for item in session.items)
    if has_notebooks and not os.environ.get("VOICELAB_AMQP_URL"):
        broker = vb.start_broker()
        session.config._voicelab_broker = broker  # type: ignore[attr-defined]
        os.environ["VOICELAB_AMQP_URL"] = broker.amqp_url
        if broker.management_url:
            os.environ["VOICELAB_MANAGEMENT_URL"] = broker.management_url
        print(f"\nnotebooks share RabbitMQ {broker.version} ({broker.backend} "
              f"{getattr(broker, 'image', '')}) at {vb.mask_url(broker.amqp_url)}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    broker = getattr(session.config, "_voicelab_broker", None)
    if broker is not None:
        broker.stop()
        os.environ.pop("VOICELAB_AMQP_URL", None)
        os.environ.pop("VOICELAB_MANAGEMENT_URL", None)
    vb._stop_all()  # brokers notebooks-in-process or checkers started
    # This process's brokers, and any a notebook kernel or child process started: all must be gone.
    leaks = owned_containers() + beam_processes("voicelab-node-")
    if leaks:
        print(f"\nLEAK: the test run left brokers behind: {leaks}")
        session.exitstatus = 1
