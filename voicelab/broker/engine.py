"""The Docker engine: the one place voicelab opens a Docker client.

Example::

    >>> ok, detail = docker_engine()   # (True, "28.2.2") or (False, "no Docker engine answers (...)")
    >>> isinstance(ok, bool) and isinstance(detail, str)
    True
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def docker_client(timeout: float = 30) -> Iterator[Any]:
    """A ``docker.DockerClient`` from the environment (``DOCKER_HOST`` or the default socket), closed after use."""
    import docker

    client = docker.from_env(timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def docker_engine() -> tuple[bool, str]:
    """(True, version) when a Docker engine answers within 3 s, else (False, why)."""
    try:
        with docker_client(timeout=3) as client:
            client.ping()
            return True, str(client.version().get("Version", "?"))
    except Exception as e:  # the docker SDK raises many types here
        return False, f"no Docker engine answers ({type(e).__name__})"


def image_present(image: str) -> bool:
    """True when the Docker engine has ``image`` locally (no registry asked)."""
    import docker.errors

    with docker_client(timeout=10) as client:
        try:
            client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False


def pull_image(image: str) -> str | None:
    """Pull ``image``; None when it worked, else what Docker said (e.g. no registry reachable)."""
    import docker.errors

    with docker_client(timeout=60) as client:
        try:
            client.images.pull(image)
            return None
        except docker.errors.DockerException as e:
            return str(e)


def container_exists(container_id: str) -> bool:
    """True while the container exists (running or not)."""
    import docker.errors

    with docker_client() as client:
        try:
            client.containers.get(container_id)
            return True
        except docker.errors.NotFound:
            return False


def remove_container(container_id: str) -> None:
    """Remove the container and its anonymous volumes, running or not; nothing if it is gone already."""
    import docker.errors

    with docker_client() as client, contextlib.suppress(docker.errors.NotFound):
        client.containers.get(container_id).remove(force=True, v=True)


def remove_labelled(label: str) -> int:
    """Remove every container (running or not) with ``label`` (``key=value``); how many were removed."""
    with docker_client() as client:
        found = client.containers.list(all=True, filters={"label": label})
        for c in found:
            c.remove(force=True, v=True)
        return len(found)
