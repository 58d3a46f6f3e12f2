"""ch10's checker (least privilege for a new service) on a real broker: the reference passes, a stub is
reported as unsolved, and each known-wrong grant fails with a reason that names its mistake."""

from __future__ import annotations

import pytest

from voicelab import broker as vb
from voicelab.exercises import ch10
from voicelab.security import Admin


def stub(admin, vhost, user):
    raise NotImplementedError


def everything(admin, vhost, user):
    admin.set_permissions(vhost, user, configure=".*", write=".*", read=".*")


def unanchored(admin, vhost, user):
    admin.set_permissions(vhost, user, configure="", write=r"voice\.index", read=r"voice\.transcripts")


def unescaped(admin, vhost, user):
    admin.set_permissions(vhost, user, configure="", write="^voice.index$", read="^voice.transcripts$")


def nothing(admin, vhost, user):
    pass


def read_only(admin, vhost, user):
    admin.set_permissions(vhost, user, configure="", write="", read=r"^voice\.transcripts$")


def crashes(admin, vhost, user):
    raise ValueError("oops")


WRONG = {
    everything: "could publish to 'voice.index.audit'",
    unanchored: "could publish to 'voice.index.audit'",
    unescaped: "could publish to 'voice_index'",
    nothing: "cannot even open a connection",
    read_only: "must publish to 'voice.index'",
    crashes: "your function raised ValueError",
}


def test_reference_passes_and_stub_is_unsolved(as_shared: vb.Broker) -> None:
    result = ch10.q1.run(ch10.grant_indexer)
    assert result.passed, result.message
    assert "refused the other 9 attempts with 403 ACCESS_REFUSED" in result.message
    unsolved = ch10.q1.run(stub)
    assert not unsolved.passed and not unsolved.attempted


@pytest.mark.parametrize("wrong", list(WRONG), ids=lambda f: f.__name__)
def test_wrong_grants_fail_with_their_reason(as_shared: vb.Broker, wrong) -> None:
    result = ch10.q1.run(wrong)
    assert not result.passed and result.attempted
    assert WRONG[wrong] in result.message, result.message


def test_checker_leaves_nothing(as_shared: vb.Broker) -> None:
    ch10.q1.run(ch10.grant_indexer)
    with Admin(as_shared) as admin:
        assert not [v["name"] for v in admin.get("vhosts?columns=name") if v["name"].startswith("check.ch10.")]
        assert not [u["name"] for u in admin.get("users?columns=name") if u["name"].startswith("check-indexer-")]
