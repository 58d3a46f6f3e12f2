"""Chapter 10's library on a real broker: least-privilege accounts and each refusal, guest and loopback_users,
where the ports are reachable, credentials from the environment, rotating a password without a restart."""

from __future__ import annotations

import uuid

import pika
import pytest

from voicelab import broker as vb
from voicelab.lab import security as lab10
from voicelab.security import (
    Admin,
    attempt,
    connections,
    credentials_from_env,
    exposure,
    log_lines,
    loopback_users,
    set_loopback_users,
)


@pytest.fixture
def lab(any_broker: vb.Broker):
    lab = lab10.setup_accounts(any_broker, vhost=f"test10-{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.teardown()
    with Admin(any_broker) as admin:   # nothing left: the vhost and the three accounts are gone
        assert lab.vhost not in {v["name"] for v in admin.get("vhosts?columns=name")}
        assert not set(lab10.ACCOUNTS) & {u["name"] for u in admin.get("users?columns=name")}


@pytest.mark.all_versions
def test_each_account_can_do_its_job_and_nothing_else(lab) -> None:
    attempts = lab10.try_accounts(lab)
    assert len(attempts) == 16 and (attempts.expected == "ok").sum() == 6
    topic = attempts[attempts.action.str.endswith("(topic)")]
    assert list(topic.answer.str.startswith("403")) == [False, True], topic   # another user's key is refused
    assert "access to topic 'progress.producer.42' in exchange 'voice.events'" in topic.answer.iloc[1], topic
    for row in attempts.itertuples():
        if row.expected == "ok":
            assert row.answer == "ok", row
        elif row.action.startswith("connect"):
            assert row.answer == (f"ProbableAccessDeniedError: 530 NOT_ALLOWED - access to vhost '/' refused for "
                                  f"user '{row.account}'"), row
        elif "(API)" in row.action:
            assert row.answer.startswith("HTTP 401 Unauthorized"), row
        else:
            assert row.answer.startswith("403 ACCESS_REFUSED - ") and f"in vhost '{lab.vhost}' refused for user " \
                f"'{row.account}'" in row.answer, row


def test_rotating_a_password_keeps_open_connections(lab) -> None:
    old = pika.BlockingConnection(lab.params("producer"))
    try:
        channel = old.channel()
        channel.confirm_delivery()
        lab.admin.change_password("producer", "rotated-" + uuid.uuid4().hex)
        assert attempt(lambda: channel.basic_publish(lab10.JOBS_X, "job", b"j")) == "ok"
        refused = attempt(lambda: pika.BlockingConnection(lab.params("producer")).close())
        assert "403 ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in refused
    finally:
        old.close()


def test_guest_and_loopback_users(any_broker: vb.Broker) -> None:
    if not any_broker.can_control:
        pytest.skip("needs rabbitmqctl on a broker voicelab started")
    assert all(host == "127.0.0.1" for _, host in exposure(any_broker)), exposure(any_broker)
    with any_broker.connect():
        peer = connections(any_broker, "user", "peer_host")[0]["peer_host"]
    before = loopback_users(any_broker)
    if any_broker.backend == "container":   # as the official image: guest from anywhere, because of Docker's NAT
        assert before == "[]" and peer != "127.0.0.1"
    else:
        assert before == '[<<"guest">>]' and peer == "127.0.0.1"
    set_loopback_users(any_broker, ["guest"])
    try:
        answer = attempt(lambda: any_broker.connect(connection_attempts=1).close())
    finally:
        set_loopback_users(any_broker, [] if before == "[]" else ["guest"])
    assert loopback_users(any_broker) == before
    if peer == "127.0.0.1":
        assert answer == "ok"
    else:
        assert "403 ACCESS_REFUSED" in answer, answer
        assert log_lines(any_broker, "user 'guest' can only connect via localhost")


def test_credentials_from_env(tmp_path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    creds = credentials_from_env("svc-a", {"VOICELAB_SVC_A_USER": "a", "VOICELAB_SVC_A_PASSWORD_FILE": str(secret),
                                           "VOICELAB_SVC_A_PASSWORD": "ignored: the file wins"})
    assert (creds.username, creds.password) == ("a", "s3cret")
    with pytest.raises(KeyError, match="VOICELAB_SVC_A_USER"):
        credentials_from_env("svc-a", {})
    with pytest.raises(KeyError, match="PASSWORD"):
        credentials_from_env("svc-a", {"VOICELAB_SVC_A_USER": "a"})
