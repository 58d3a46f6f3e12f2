"""Nothing leaks: Ctrl-C on the CLI and an interpreter that exits without stop() leave no broker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import images, interrupt_after, left_behind, require


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VOICELAB_AMQP_URL"}
    env.update(PYTHONUNBUFFERED="1", VOICELAB_RABBITMQ_IMAGE=images()[0])
    return env


def _ignore_sigint() -> None:
    """What a non-interactive shell does to a background job (`voicelab broker &`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("inherited", ["default", "ignored"], ids=["sigint-default", "sigint-ignored"])
@pytest.mark.parametrize("backend", ["container", "local"])
def test_ctrl_c_on_cli_broker_cleans_up(backend: str, inherited: str) -> None:
    """SIGINT stops `python -m voicelab broker` however it was launched (a background job ignores SIGINT)."""
    require(backend)
    proc = subprocess.Popen([sys.executable, "-m", "voicelab", "broker", "--backend", backend],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_child_env(),
                            preexec_fn=_ignore_sigint if inherited == "ignored" else None)
    before, out = interrupt_after(proc, lambda line: "Press Ctrl-C" in line)
    assert any(line.startswith("AMQP URL:") for line in before.splitlines()), before
    assert proc.returncode == 0, before + out
    assert "broker stopped" in out
    assert left_behind(proc.pid) == []


def test_sigterm_on_cli_broker_cleans_up() -> None:
    """`kill PID` (SIGTERM, what a service manager sends) stops `python -m voicelab broker` like Ctrl-C."""
    require("container")
    proc = subprocess.Popen([sys.executable, "-m", "voicelab", "broker", "--backend", "container"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_child_env())
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert left_behind(proc.pid), "a broker should be running before SIGTERM:\n" + "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "broker stopped" in out, "".join(lines) + out
    assert left_behind(proc.pid) == []


@pytest.mark.parametrize("backend", ["container", "local"])
def test_exit_without_stop_cleans_up(backend: str) -> None:
    """A script (or a notebook kernel) that ends, even by KeyboardInterrupt, stops its brokers at exit."""
    require(backend)
    code = ("import os; from voicelab.broker import start_broker; "
            f"b = start_broker({backend!r}); print(os.getpid(), flush=True); raise KeyboardInterrupt")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_child_env())
    assert "KeyboardInterrupt" in done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while left_behind(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left_behind(pid) == []


@pytest.mark.parametrize("backend", ["container", "local"])
def test_sigkilled_owner_is_cleaned_up_by_the_watchdog(backend: str) -> None:
    """atexit never runs after SIGKILL (a Jupyter kernel killed hard): the watchdog removes the broker."""
    require(backend)
    code = ("import os, time; from voicelab.broker import start_broker; "
            f"b = start_broker({backend!r}); print(os.getpid(), flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_child_env())
    try:
        pid = int(proc.stdout.readline())  # type: ignore[union-attr]
        assert left_behind(pid), "the broker should be running before the kill"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while left_behind(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left_behind(pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
