"""The broker on every backend and RabbitMQ version: round trip, restart, crash, version."""

from __future__ import annotations

import re
import subprocess
import time

import pika
import pika.exceptions
import pytest
import requests

from voicelab import broker as vb
from voicelab.broker import obtain
from voicelab.lab.durability import wait_metadata_flush


def test_round_trip_and_version(each_backend: vb.Broker) -> None:
    with each_backend.connect() as connection:
        _round_trip(each_backend, connection.channel())


def _round_trip(each_backend: vb.Broker, channel) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", each_backend.version), each_backend.version
    channel.queue_declare("rt", durable=True)
    channel.basic_publish("", "rt", b"hello", pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    method, _, body = channel.basic_get("rt", auto_ack=True)
    assert body == b"hello"
    channel.queue_delete("rt")


def test_ports_are_on_loopback_only(each_backend: vb.Broker) -> None:
    assert each_backend.host == "127.0.0.1"
    assert each_backend.amqp_url.startswith("amqp://guest:guest@127.0.0.1:")
    r = requests.get(f"{each_backend.management_url}/api/overview", auth=("guest", "guest"), timeout=5)
    assert r.json()["rabbitmq_version"] == each_backend.version
    for port in (each_backend.port, each_backend.management_port, each_backend.prometheus_port):
        listening = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True).stdout
        addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
        assert addresses == {"127.0.0.1"}, f"port {port} listens on {addresses}: loopback only, please"
    metrics = requests.get(each_backend.prometheus_url, timeout=5)
    assert metrics.ok and "rabbitmq_" in metrics.text, "the rabbitmq_prometheus plugin answers"


def _setup_durability(broker: vb.Broker, tag: str) -> bool:
    """Declare a durable queue with a persistent message and a transient queue; False when the broker refuses
    transient non-exclusive queues, as upstream 4.3 does by default (a deprecated feature, 541, connection closed).

    Each test has its own names (``tag``): a queue deleted and declared again under the same name just
    before a crash is a hazard of its own (seen: a quorum queue came back empty, a classic one on 4.0 missing)."""
    with broker.connect() as connection:
        ch = connection.channel()
        ch.queue_delete(f"durable_q.{tag}")
        ch.queue_declare(f"durable_q.{tag}", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", f"durable_q.{tag}", b"persistent",
                         pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    try:   # a connection of its own: upstream 4.3 closes the whole connection
        with broker.connect() as connection:
            connection.channel().queue_declare(f"transient_q.{tag}", durable=False, exclusive=False)
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert broker.version_info >= (4, 3), f"RabbitMQ {broker.version} accepts transient queues upstream: {e}"
        assert e.reply_code == 541 and "transient_nonexcl_queues" in e.reply_text, e
        return False
    assert broker.version_info < (4, 3), "upstream 4.3 refuses transient non-exclusive queues (541)"
    return True


def _check_durability(broker: vb.Broker, transient: bool, tag: str) -> None:
    with broker.connect() as connection:
        ch = connection.channel()
        assert ch.queue_declare(f"durable_q.{tag}", passive=True).method.message_count == 1
        method, _, body = ch.basic_get(f"durable_q.{tag}", auto_ack=True)
        assert body == b"persistent"
        if transient:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.queue_declare(f"transient_q.{tag}", passive=True)
            assert e.value.reply_code == 404


def test_restart_keeps_durable_drops_transient(each_backend: vb.Broker) -> None:
    url = each_backend.amqp_url
    transient = _setup_durability(each_backend, "restart")
    each_backend.restart()
    assert each_backend.amqp_url == url, "a restart must keep the URL so clients can reconnect"
    _check_durability(each_backend, transient, "restart")


def test_kill_then_start_keeps_data_on_disk(each_backend: vb.Broker) -> None:
    url = each_backend.amqp_url
    transient = _setup_durability(each_backend, "kill")
    wait_metadata_flush(time.monotonic())   # a queue declared just before a kill -9 vanished once (see there)
    each_backend.kill()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        each_backend.connect(connection_attempts=1, socket_timeout=2)
    each_backend.start()
    assert each_backend.amqp_url == url
    _check_durability(each_backend, transient, "kill")


def test_malformed_url_names_it_and_masks_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELAB_AMQP_URL", "http://bob:s3cret@localhost:5672")
    with pytest.raises(vb.BrokerError) as e:
        vb.start_broker()
    assert "VOICELAB_AMQP_URL" in str(e.value)
    assert "s3cret" not in str(e.value) and "bob:***" in str(e.value)


def test_url_backend_uses_the_broker_and_refuses_to_crash_it(each_backend: vb.Broker,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELAB_AMQP_URL", each_backend.amqp_url)
    broker = vb.start_broker()
    assert broker.backend == "url" and broker.version == each_backend.version
    with pytest.raises(vb.BrokerControlError, match="voicelab started"):
        broker.kill()
    broker.stop()  # does nothing to a broker voicelab did not start
    with each_backend.connect():
        pass


def test_no_backend_names_all_three_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICELAB_AMQP_URL", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # a real probe that fails
    monkeypatch.setattr(obtain, "find_rabbitmq_server", lambda: None)
    with pytest.raises(vb.BrokerUnavailable) as e:
        vb.start_broker()
    text = str(e.value)
    assert "VOICELAB_AMQP_URL" in text and "Docker" in text and "rabbitmq-server" in text


def test_wrong_backend_name_says_which() -> None:
    with pytest.raises(ValueError, match="'rabit'"):
        vb.make_broker("rabit")  # type: ignore[arg-type]


def test_missing_image_without_registry_says_how_to_build_one(capfd: pytest.CaptureFixture[str]) -> None:
    ok, detail = vb.docker_engine()
    if not ok:
        pytest.skip(detail)
    with pytest.raises(vb.BrokerUnavailable) as e:
        vb.ContainerBroker("voicelab/no-such-image:0.0").start()
    assert "build-image" in str(e.value) and "VOICELAB_RABBITMQ_IMAGE" in str(e.value)
    assert "pulling the Docker image voicelab/no-such-image:0.0" in capfd.readouterr().err, "a pull says so first"


def test_own_broker_is_controllable_even_with_a_url(each_backend: vb.Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restart and crash demos get a broker voicelab controls, never the shared URL one."""
    if each_backend.backend != "local":
        pytest.skip("one backend is enough: own_broker picks the machine's best")
    monkeypatch.setenv("VOICELAB_AMQP_URL", each_backend.amqp_url)
    with vb.own_broker() as mine:
        assert mine.can_control and mine.amqp_url != each_backend.amqp_url
        with mine.connect():
            pass
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        mine.connect(connection_attempts=1, socket_timeout=2)


@pytest.mark.parametrize("backend", ["container", "local"])
def test_unknown_settings_are_refused_naming_them(backend: str) -> None:
    """RabbitMQ ignores a `-rabbit NAME VALUE` it does not know: the broker is asked which names it knows."""
    from helpers import images, require

    require(backend)
    settings = {"bogus": 1, "consumer_timout": 2000, "consumer_timeout": 2000}
    if backend == "container":   # through own_broker, as a lesson calls it
        with pytest.raises(ValueError, match=r"'bogus', 'consumer_timout' \(did you mean 'consumer_timeout'\?\)"):
            with vb.own_broker(images()[-1], settings=settings):
                pass
        return
    broker = vb.LocalBroker(settings=settings)
    with pytest.raises(ValueError, match=r"'bogus'.*not settings of RabbitMQ \d"):
        broker.start()
    assert not vb.is_live(broker) and not broker._running(), "the refused broker was stopped"
