"""voicelab.queues on a real broker: the chores every lesson and checker repeats (refill, drain, counts, deleting a job queue with its DLQ).
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from voicelab import broker as vb
from voicelab.jobs import VoiceJob
from voicelab.queues import (
    delete_job_queue,
    dlq_name,
    drain,
    queue_counts,
    refill,
    wait_for_consumers,
)


def test_queue_chores(any_broker: vb.Broker, channel) -> None:
    assert refill(channel, "t.chores", range(3), dead_letters=True) == 3
    assert [m.body for m in drain(channel, "t.chores")] == [b"0", b"1", b"2"]
    refill(channel, "t.chores", [b"a", "b", {"c": 1}], confirm=False)  # bulk: all enqueued on return
    method, properties, body = drain(channel, "t.chores", limit=1)[0]
    assert body == b"a" and properties.delivery_mode == 2 and queue_counts(channel, "t.chores") == 2
    with any_broker.connect() as other:
        listener = other.channel()
        listener.basic_consume("t.chores", lambda *a: None)
        assert wait_for_consumers(channel, "t.chores", 1) == 1
        refill(channel, "t.chores", purge=True)  # a purge keeps the consumer attached ...
        assert wait_for_consumers(channel, "t.chores", 1, timeout=0.2) == 1
        refill(channel, "t.chores")  # ... a delete cancels it
        assert wait_for_consumers(channel, "t.chores", 0) == 0
        with pytest.raises(TimeoutError, match="1 consumer"):
            wait_for_consumers(channel, "t.chores", 1, timeout=0.2)
    job = VoiceJob.new("audio/a.wav", 1)
    refill(channel, "t.chores", [job, b'{"job_id": "p"}', b"not json"])   # jobs carry their id as message_id
    assert [(m.body, m.properties.message_id) for m in drain(channel, "t.chores")] == [
        (job.to_json(), job.job_id), (b'{"job_id": "p"}', "p"), (b"not json", None)]
    refill(channel, "t.chores", [b"x"] * 3, purge=True, confirm=False, persistent=False)
    assert {m.properties.delivery_mode for m in drain(channel, "t.chores")} == {1}
    with pytest.raises(ValueError, match="persistent"):
        refill(channel, "t.chores", [b"x"], persistent=False, properties=pika.BasicProperties())
    delete_job_queue(channel, "t.chores")


def test_delete_job_queue_deletes_the_queue_and_its_dlq(any_broker: vb.Broker, channel) -> None:
    refill(channel, "t.gone", [b"job"], dead_letters=True, arguments={"x-queue-type": "quorum"})
    channel.basic_publish("", dlq_name("t.gone"), b"dead")
    delete_job_queue(channel, "t.gone")
    for queue in ("t.gone", dlq_name("t.gone")):
        with any_broker.connect() as connection, pytest.raises(pika.exceptions.ChannelClosedByBroker, match="404"):
            connection.channel().queue_declare(queue, passive=True)
    delete_job_queue(channel, "t.gone")   # nothing left to delete: no error
    with pytest.raises(ValueError, match="queue"):
        delete_job_queue(channel, "")


