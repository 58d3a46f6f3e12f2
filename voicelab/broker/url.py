"""A broker somebody else runs, given by its URL: the one way a child process finds its broker again.

Example::

    >>> b = UrlBroker("amqp://guest:guest@localhost:5672/%2F")
    >>> b.port, b.can_control
    (5672, False)
"""

from __future__ import annotations

import os
import urllib.parse

import pika

from .base import Broker, BrokerControlError, BrokerError, mask_url


class UrlBroker(Broker):
    """A broker at ``url`` (``VOICELAB_AMQP_URL``, or ``broker.amqp_url`` passed to a child process).

    voicelab did not start it, so it refuses ``kill()`` and ``restart()``, and ``stop()`` does nothing.
    """

    backend = "url"
    can_control = False

    def __init__(self, url: str, management_url: str | None = None, prometheus_url: str | None = None) -> None:
        super().__init__()
        try:
            params = pika.URLParameters(url)
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
                raise ValueError("it must look like amqp://USER:PASSWORD@HOST:PORT/VHOST")
        except Exception as e:
            raise BrokerError(f"the AMQP URL {mask_url(url)!r} is not valid: {e}") from None
        self.host = params.host
        self.port = params.port
        self.vhost = params.virtual_host
        self.username = params.credentials.username
        self.password = params.credentials.password
        mgmt = management_url or os.environ.get("VOICELAB_MANAGEMENT_URL")
        if mgmt:
            self.management_port = urllib.parse.urlsplit(mgmt).port
        prom = prometheus_url or os.environ.get("VOICELAB_PROMETHEUS_URL")
        if prom:
            self.prometheus_port = urllib.parse.urlsplit(prom).port

    def start(self) -> "UrlBroker":
        return self

    def _fresh(self) -> bool:
        return False

    def _running(self) -> bool:
        return True

    def _choose_ports(self) -> None:
        """The ports are the URL's."""

    def _launch(self) -> None:
        """Nothing to launch: somebody else runs this broker."""

    def stop(self) -> None:
        """Nothing to stop: voicelab did not start this broker."""

    def _refuse(self, what: str) -> None:
        raise BrokerControlError(
            f"{what}() needs a broker that voicelab started; this one at {mask_url(self.amqp_url)} "
            "was given by its URL (VOICELAB_AMQP_URL), and voicelab does not control it. "
            "Unset VOICELAB_AMQP_URL to let voicelab start one, or use voicelab.broker.own_broker().")

    def kill(self) -> None:
        self._refuse("kill")

    def restart(self) -> None:
        self._refuse("restart")
