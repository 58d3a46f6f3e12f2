"""Erlang's port mapper daemon (epmd), which every local RabbitMQ node registers with.

A node started on a machine where no epmd runs starts one, and epmd outlives
the node: voicelab stops it again when it started it and no node uses it any more.

Example::

    >>> names = epmd_names()   # None when no epmd answers
    >>> names is None or isinstance(names, list)
    True
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path


def epmd_path() -> str | None:
    """Path of the ``epmd`` executable, or None."""
    found = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)
    return None if found is None else str(found)


def epmd_names() -> list[str] | None:
    """Nodes registered with a running epmd, or None when no epmd answers."""
    epmd = epmd_path()
    if epmd is None:
        return None
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        out = subprocess.run([epmd, "-names"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return [line for line in out.stdout.splitlines() if line.startswith("name ")]
    return None


def stop_idle_epmd() -> None:
    """Stop epmd if it runs and no node is registered with it any more."""
    epmd = epmd_path()
    if epmd and epmd_names() == []:
        with contextlib.suppress(Exception):
            subprocess.run([epmd, "-kill"], capture_output=True, timeout=5)
