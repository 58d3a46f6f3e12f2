"""Bad input on the real broker: poison to the DLQ with its reason, oversized refused, connection errors explained."""

from __future__ import annotations

import pika
import pytest

from voicelab.lab import bad_input
from voicelab import broker as vb
from voicelab.jobs import BadJob, VoiceJob
from voicelab.queues import job_properties

# What bad input does can differ between RabbitMQ versions (the size limit, the login errors): every image.
pytestmark = pytest.mark.all_versions


def test_message_tour_does_the_good_job_and_dead_letters_each_bad_one_once(any_broker: vb.Broker) -> None:
    tour = bad_input.message_tour(any_broker, "test.bad_input")
    assert tour.attrs["left in queue"] == 0
    good = tour.loc["a good job"]
    assert good["outcome"] == "done" and good["done"] and not good["in DLQ"] and good["attempts"] == 1
    expected = {"not JSON": "not JSON", "a field missing": "'blob_key'", "wrong content type": "text/plain",
                "unknown job type": "voice.transcribe"}
    for label, words in expected.items():
        row = tour.loc[label]
        assert row["outcome"] == "poison" and row["attempts"] == 1 and not row["done"], (label, dict(row))
        assert row["in DLQ"] and row["reason"].startswith("poison: ") and words in row["reason"], (label, row["reason"])


def test_a_message_over_the_size_limit_is_refused_and_one_at_the_limit_is_not(any_broker: vb.Broker) -> None:
    limit = bad_input.default_max_message_size(any_broker.version_info)
    over = bad_input.oversized(any_broker, "test.bad_input.size")
    assert over["size"] == limit + 1 and over["refused"] and over["in queue"] == 0, over
    assert over["limit"] == limit and "PRECONDITION_FAILED" in over["reason"], over
    at = bad_input.oversized(any_broker, "test.bad_input.size", size=limit)
    assert not at["refused"] and at["in queue"] == 1, at


def test_connection_mistakes_each_get_their_reason(any_broker: vb.Broker) -> None:
    tour = bad_input.connect_tour(any_broker)["outcome"]
    assert tour["the right URL"] == "connected"
    assert "is not valid" in tour["malformed URL"]
    assert "connection refused" in tour["nothing listens there"]
    assert "refused the login of user 'guest'" in tour["wrong password"]
    assert "virtual host 'no-such-vhost'" in tour["no such virtual host"]
    assert not any("not-the-password" in url for url in bad_input.connect_tour(any_broker)["url"]), "passwords masked"


def test_connect_failed_is_still_pika_connection_error() -> None:
    with pytest.raises(pika.exceptions.AMQPConnectionError, match="connection refused"):
        vb.UrlBroker(f"amqp://guest:guest@127.0.0.1:{vb.free_port()}/%2F").connect(connection_attempts=1)


@pytest.mark.parametrize("props, word", [
    (job_properties(content_type="text/plain"), "content type"),
    (job_properties(type="voice.transcribe"), "unknown job type"),
])
def test_from_message_refuses_wrong_properties(props, word) -> None:
    body = VoiceJob.new("audio/a.wav", 1).to_json()
    with pytest.raises(BadJob, match=word):
        VoiceJob.from_message(props, body)


def test_from_message_accepts_a_job_with_or_without_properties() -> None:
    job = VoiceJob.new("audio/a.wav", 1)
    for props in (job_properties(), pika.BasicProperties(), job_properties(content_type="application/json; charset=utf-8")):
        assert VoiceJob.from_message(props, job.to_json()) == job
