"""``python -m voicelab`` as a user runs it (a subprocess): --version, verbs that ask before they act, its docstring.

The one-line errors of ``dlq`` (no broker, no queue) are held by tests/test_deadletters.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

import pytest

import voicelab.cli
from voicelab import broker as vb
from voicelab.queues import declare_job_queue, delete_job_queue, dlq_name

ROOT = Path(__file__).resolve().parents[1]


def _voicelab(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m voicelab ARGS``; ``stdin`` is what the user types (None: no terminal, stdin closed)."""
    return subprocess.run([sys.executable, "-m", "voicelab", *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=120, env=env or dict(os.environ))


def test_version_names_the_installed_voicelab() -> None:
    done = _voicelab("--version")
    assert done.returncode == 0 and done.stdout.startswith(f"voicelab {metadata.version('voicelab')} (pika "), done


def test_the_main_docstring_lists_every_verb() -> None:
    verbs = set(re.findall(r"\{([a-z,-]+)\}", _voicelab("--help").stdout)[0].split(","))
    assert verbs == {"doctor", "broker", "build-image", "dlq", "bench"}
    doc = (ROOT / "voicelab" / "__main__.py").read_text().split('"""')[1]
    cli_doc = voicelab.cli.__doc__ or ""
    for verb in verbs:
        assert f"``{verb}" in doc, f"python -m voicelab's docstring does not list {verb}"
        assert f"``{verb}" in cli_doc, f"voicelab.cli's docstring does not list {verb}"


def _dlq_with(broker: vb.Broker, n: int) -> str:
    queue = f"test.cli.{uuid.uuid4().hex[:8]}"
    with broker.connect() as connection:
        channel = connection.channel()
        declare_job_queue(channel, queue)
        channel.confirm_delivery()
        for i in range(n):
            channel.basic_publish("", dlq_name(queue), f"dead {i}".encode())
    return queue


def _in_dlq(broker: vb.Broker, queue: str) -> int:
    with broker.connect() as connection:
        return int(connection.channel().queue_declare(dlq_name(queue), passive=True).method.message_count)


def test_dlq_purge_asks_first(any_broker: vb.Broker) -> None:
    queue = _dlq_with(any_broker, 3)
    url = ("--url", any_broker.amqp_url)
    try:
        for answer in ("n\n", None, "\n"):       # no, no answer at all (stdin closed), Enter: nothing is deleted
            done = _voicelab("dlq", "purge", queue, *url, stdin=answer)
            assert done.returncode == 1 and "not purged" in done.stderr, done
            assert f"delete the 3 message(s) in {dlq_name(queue)}" in done.stdout
            assert _in_dlq(any_broker, queue) == 3
        done = _voicelab("dlq", "purge", queue, *url, stdin="y\n")
        assert done.returncode == 0 and f"purged 3 message(s) from {dlq_name(queue)}" in done.stdout, done
        assert _in_dlq(any_broker, queue) == 0
        with any_broker.connect() as connection:
            connection.channel().basic_publish("", dlq_name(queue), b"dead again")
        done = _voicelab("dlq", "purge", queue, *url, "--yes")         # CI: no question
        assert done.returncode == 0 and "[y/N]" not in done.stdout and "purged 1 message(s)" in done.stdout, done
        assert _in_dlq(any_broker, queue) == 0
    finally:
        with any_broker.connect() as connection:
            delete_job_queue(connection.channel(), queue)


def test_doctor_ensure_asks_before_installing() -> None:
    """On a machine with no broker at all, as root on Debian, `doctor --ensure` asks before apt-get install."""
    if not (Path("/etc/debian_version").exists() and os.geteuid() == 0):
        pytest.skip("doctor offers to install rabbitmq-server as root on Debian/Ubuntu only")
    env = {k: v for k, v in os.environ.items() if k not in ("VOICELAB_AMQP_URL", "VOICELAB_BACKEND")}
    env.update(VOICELAB_RABBITMQ_SERVER="none", DOCKER_HOST="unix:///nonexistent/docker.sock")  # no broker here
    for answer in ("n\n", None):
        done = _voicelab("doctor", "--ensure", stdin=answer, env=env)
        assert "no broker can be had" in done.stdout, done.stdout
        assert "install Debian's rabbitmq-server package now" in done.stdout and "[y/N]" in done.stdout, done.stdout
        assert "-> installing" not in done.stdout, "it installed without a yes"
        assert done.returncode == 1 and "--ensure --yes" in done.stderr, done.stderr
