"""Nothing leaks: Ctrl-C on the CLI and an interpreter that exits without stop() leave no broker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import _images, _unavailable, beam_processes, owned_containers
from voicelab import broker as vb


def _require(backend: str) -> None:
    if backend == "container":
        ok, detail = vb.docker_engine()
        if not ok:
            _unavailable(detail)
    elif vb.find_rabbitmq_server() is None:
        _unavailable("rabbitmq-server is not installed")


def _left_behind(pid: int) -> list[str]:
    return owned_containers(pid) + beam_processes(f"voicelab-node-{pid}-")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VOICELAB_AMQP_URL"}
    env.update(PYTHONUNBUFFERED="1", VOICELAB_RABBITMQ_IMAGE=_images()[0])
    return env


@pytest.mark.parametrize("backend", ["container", "local"])
def test_ctrl_c_on_cli_broker_cleans_up(backend: str) -> None:
    _require(backend)
    env = _child_env()
    proc = subprocess.Popen([sys.executable, "-m", "voicelab", "broker", "--backend", backend],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any(line.startswith("AMQP URL:") for line in lines), "".join(lines)
        assert _left_behind(proc.pid), "the broker should be running before Ctrl-C"
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + out
    assert "broker stopped" in out
    assert _left_behind(proc.pid) == []


@pytest.mark.parametrize("backend", ["container", "local"])
def test_exit_without_stop_cleans_up(backend: str) -> None:
    """A script (or a notebook kernel) that ends, even by KeyboardInterrupt, stops its brokers at exit."""
    _require(backend)
    code = ("import os; from voicelab.broker import start_broker; "
            f"b = start_broker({backend!r}); print(os.getpid(), flush=True); raise KeyboardInterrupt")
    env = _child_env()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "KeyboardInterrupt" in done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _left_behind(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _left_behind(pid) == []
