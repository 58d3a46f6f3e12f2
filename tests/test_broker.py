"""The broker on every backend and RabbitMQ version: round trip, restart, crash, version."""

from __future__ import annotations

import re

import pika
import pika.exceptions
import pytest
import requests

from voicelab import broker as vb
from voicelab.broker import choice


def test_round_trip_and_version(any_broker: vb.Broker, channel) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", any_broker.version), any_broker.version
    channel.queue_declare("rt", durable=True)
    channel.basic_publish("", "rt", b"hello", pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    method, _, body = channel.basic_get("rt", auto_ack=True)
    assert body == b"hello"
    channel.queue_delete("rt")


def test_ports_are_on_loopback_only(any_broker: vb.Broker) -> None:
    assert any_broker.host == "127.0.0.1"
    assert any_broker.amqp_url.startswith("amqp://guest:guest@127.0.0.1:")
    r = requests.get(f"{any_broker.management_url}/api/overview", auth=("guest", "guest"), timeout=5)
    assert r.json()["rabbitmq_version"] == any_broker.version
    if any_broker.backend == "container":
        ports = any_broker._container.get_wrapped_container().attrs["HostConfig"]["PortBindings"]
        assert {b["HostIp"] for binding in ports.values() for b in binding} == {"127.0.0.1"}


def _setup_durability(broker: vb.Broker) -> bool:
    """Declare a durable queue with a persistent message and a transient queue; False if the broker
    refuses transient non-exclusive queues (a deprecated feature that RabbitMQ 4.3 may switch off)."""
    with broker.connect() as connection:
        ch = connection.channel()
        ch.queue_delete("durable_q")
        ch.queue_declare("durable_q", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "durable_q", b"persistent",
                         pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
        try:
            connection.channel().queue_declare("transient_q", durable=False, exclusive=False)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert "transient" in e.reply_text.lower() or "deprecat" in e.reply_text.lower(), e.reply_text
            return False
    return True


def _check_durability(broker: vb.Broker, transient: bool) -> None:
    with broker.connect() as connection:
        ch = connection.channel()
        assert ch.queue_declare("durable_q", passive=True).method.message_count == 1
        method, _, body = ch.basic_get("durable_q", auto_ack=True)
        assert body == b"persistent"
        if transient:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.queue_declare("transient_q", passive=True)
            assert e.value.reply_code == 404


def test_restart_keeps_durable_drops_transient(any_broker: vb.Broker) -> None:
    url = any_broker.amqp_url
    transient = _setup_durability(any_broker)
    any_broker.restart()
    assert any_broker.amqp_url == url, "a restart must keep the URL so clients can reconnect"
    _check_durability(any_broker, transient)


def test_kill_then_start_keeps_data_on_disk(any_broker: vb.Broker) -> None:
    url = any_broker.amqp_url
    transient = _setup_durability(any_broker)
    any_broker.kill()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        any_broker.connect(connection_attempts=1, socket_timeout=2)
    any_broker.start()
    assert any_broker.amqp_url == url
    _check_durability(any_broker, transient)


def test_malformed_url_names_it_and_masks_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELAB_AMQP_URL", "http://bob:s3cret@localhost:5672")
    with pytest.raises(vb.BrokerError) as e:
        vb.start_broker()
    assert "VOICELAB_AMQP_URL" in str(e.value)
    assert "s3cret" not in str(e.value) and "bob:***" in str(e.value)


def test_url_backend_uses_the_broker_and_refuses_to_crash_it(any_broker: vb.Broker,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELAB_AMQP_URL", any_broker.amqp_url)
    broker = vb.start_broker()
    assert broker.backend == "url" and broker.version == any_broker.version
    with pytest.raises(vb.BrokerControlError, match="voicelab started"):
        broker.kill()
    broker.stop()  # does nothing to a broker voicelab did not start
    with any_broker.connect():
        pass


def test_no_backend_names_all_three_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICELAB_AMQP_URL", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # a real probe that fails
    monkeypatch.setattr(choice, "find_rabbitmq_server", lambda: None)
    with pytest.raises(vb.BrokerUnavailable) as e:
        vb.start_broker()
    text = str(e.value)
    assert "VOICELAB_AMQP_URL" in text and "Docker" in text and "rabbitmq-server" in text


def test_wrong_backend_name_says_which() -> None:
    with pytest.raises(ValueError, match="'rabit'"):
        vb.make_broker("rabit")  # type: ignore[arg-type]


def test_missing_image_without_registry_says_how_to_build_one() -> None:
    ok, detail = vb.docker_engine()
    if not ok:
        pytest.skip(detail)
    with pytest.raises(vb.BrokerUnavailable) as e:
        vb.ContainerBroker("voicelab/no-such-image:0.0").start()
    assert "build-image" in str(e.value) and "VOICELAB_RABBITMQ_IMAGE" in str(e.value)


def test_own_broker_is_controllable_even_with_a_url(any_broker: vb.Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restart and crash demos get a broker voicelab controls, never the shared URL one."""
    if any_broker.backend != "local":
        pytest.skip("one backend is enough: own_broker picks the machine's best")
    monkeypatch.setenv("VOICELAB_AMQP_URL", any_broker.amqp_url)
    with vb.own_broker() as mine:
        assert mine.can_control and mine.amqp_url != any_broker.amqp_url
        with mine.connect():
            pass
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        mine.connect(connection_attempts=1, socket_timeout=2)
