"""A watchdog that removes a broker when the process that started it dies, however it dies.

``atexit`` does not run when a process is killed (a Jupyter kernel that is
restarted or shut down hard, ``kill -9``, a crashed test run). So every broker
voicelab starts gets a small detached watchdog process, like testcontainers'
Ryuk (whose image cannot be pulled without a registry): it waits for the owner
to exit, then removes the container, or kills the node's process group and
deletes its folder. It exits by itself as soon as the broker is gone.

Example::

    watch(container_id="3f2a...")   # from the process that owns the container

It imports only :mod:`~voicelab.broker.engine` and :mod:`~voicelab.broker.epmd`,
so that it starts fast and no module imports it back.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

from .engine import container_exists, remove_container
from .epmd import stop_idle_epmd


def watch(*, container_id: str | None = None, pgid: int | None = None, path: str | None = None,
          epmd: bool = False) -> None:
    """Start a detached watchdog for a container or a process group (and its folder) owned by this process.

    ``epmd=True``: the node started Erlang's port mapper, so stop it too if no other node uses it.
    """
    args = [sys.executable, "-m", "voicelab.broker.reaper", str(os.getpid())]
    if container_id:
        args += ["--container", container_id]
    if pgid:
        args += ["--pgid", str(pgid)]
    if path:
        args += ["--path", path]
    if epmd:
        args.append("--epmd")
    subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def alive(pid: int, group: bool = False) -> bool:
    """True while process ``pid`` (with ``group``: any process of process group ``pid``) exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m voicelab.broker.reaper")
    p.add_argument("owner", type=int)
    p.add_argument("--container")
    p.add_argument("--pgid", type=int)
    p.add_argument("--path")
    p.add_argument("--epmd", action="store_true")
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the owner must not stop the watchdog
    checks = 0
    while alive(a.owner):
        time.sleep(0.5)
        checks += 1
        if checks % 10 == 0:  # every 5 s: is the broker gone already? then nothing to watch
            # (a node killed with kill() keeps its folder for start(): watched until the folder goes too)
            if a.pgid and not alive(a.pgid, group=True) and not (a.path and os.path.exists(a.path)):
                return 0
            if a.container:
                try:
                    if not container_exists(a.container):
                        return 0
                except Exception:  # the engine did not answer this time: keep watching
                    pass
    if a.pgid and alive(a.pgid, group=True):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(a.pgid, signal.SIGKILL)
    if a.path:
        time.sleep(0.5)
        shutil.rmtree(a.path, ignore_errors=True)
    if a.epmd:
        stop_idle_epmd()
    if a.container:
        with contextlib.suppress(Exception):
            remove_container(a.container)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
