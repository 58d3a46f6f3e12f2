"""Users, virtual hosts, permissions, secrets and test certificates: what chapter 10 builds on.

- :class:`Admin`: the management API calls that create users, virtual hosts and permissions
  (https://www.rabbitmq.com/docs/access-control, https://www.rabbitmq.com/docs/management#http-api).
- :func:`attempt`: run one action and return what the broker answered (``"ok"`` or its refusal, verbatim).
- :func:`credentials_from_env`: a service's user name and password from the environment or a file, never
  from source code (https://www.rabbitmq.com/docs/passwords).
- :func:`make_test_pki`: a throw-away CA, broker certificates (valid, expired, signed by another CA) and client
  certificates, made at run time with ``trustme`` (https://www.rabbitmq.com/docs/ssl).

Example::

    admin = Admin(broker)
    admin.create_vhost("voicelab")
    admin.create_user("producer", password)
    admin.set_permissions("voicelab", "producer", configure="", write=r"^voice\\.jobs$", read="")
    attempt(lambda: channel.queue_declare("x"))   # '403 ACCESS_REFUSED - access to queue 'x' in vhost ...'
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import ssl
import subprocess
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pika
import pika.exceptions
import requests

from .broker import Broker, BrokerError


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class Admin:
    """An administrator's client of the management API of ``broker`` (the broker's own account by default).

    Every call raises ``requests.HTTPError`` when the API refuses it.
    """

    def __init__(self, broker: Broker, username: str | None = None, password: str | None = None,
                 timeout: float = 10.0) -> None:
        if not broker.management_url:
            raise BrokerError(f"{broker!r} has no management URL: set VOICELAB_MANAGEMENT_URL")
        self.base = broker.management_url.rstrip("/") + "/api"
        self.session = requests.Session()
        self.session.auth = (username or broker.username, password or broker.password)
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> requests.Response:
        r = self.session.request(method, f"{self.base}/{path}", json=body, timeout=self.timeout)
        r.raise_for_status()
        return r

    def get(self, path: str) -> Any:
        return self._call("GET", path).json()

    def create_vhost(self, name: str) -> None:
        """``PUT /api/vhosts/NAME``."""
        self._call("PUT", f"vhosts/{_q(name)}", {})

    def delete_vhost(self, name: str) -> None:
        """``DELETE /api/vhosts/NAME``: its queues, exchanges and permissions go with it (404 ignored)."""
        r = self.session.delete(f"{self.base}/vhosts/{_q(name)}", timeout=self.timeout)
        if r.status_code != 404:
            r.raise_for_status()

    def create_user(self, name: str, password: str, tags: str = "") -> None:
        """``PUT /api/users/NAME`` with a password and tags (``""``, ``"monitoring"``, ``"administrator"``...);
        the same call changes the password of an existing user (its tags are set again too)."""
        self._call("PUT", f"users/{_q(name)}", {"password": password, "tags": tags})

    def create_user_without_password(self, name: str, tags: str = "") -> None:
        """A user that cannot log in with a password (only by a client certificate, EXTERNAL)."""
        self._call("PUT", f"users/{_q(name)}", {"password_hash": "", "tags": tags})

    def change_password(self, name: str, password: str) -> None:
        """Set a new password, keeping the user's tags: new logins need it, open connections stay open."""
        tags = self.get(f"users/{_q(name)}").get("tags", "")
        if isinstance(tags, list):  # 4.x lists the tags, 3.10 joins them with commas
            tags = ",".join(tags)
        self.create_user(name, password, tags)

    def delete_user(self, name: str) -> None:
        r = self.session.delete(f"{self.base}/users/{_q(name)}", timeout=self.timeout)
        if r.status_code != 404:
            r.raise_for_status()

    def set_permissions(self, vhost: str, user: str, *, configure: str, write: str, read: str) -> None:
        """``PUT /api/permissions/VHOST/USER``: three regular expressions over resource names.

        configure: declare and delete queues and exchanges; write: publish to an exchange, bind a queue
        (to it); read: consume from, get from or purge a queue, bind (from) an exchange. ``""`` matches nothing.
        """
        self._call("PUT", f"permissions/{_q(vhost)}/{_q(user)}",
                   {"configure": configure, "write": write, "read": read})

    def set_topic_permissions(self, vhost: str, user: str, exchange: str, *, write: str, read: str) -> None:
        """``PUT /api/topic-permissions/VHOST/USER``: which routing keys a user may publish (write) to a topic
        ``exchange``, or bind with (read)."""
        self._call("PUT", f"topic-permissions/{_q(vhost)}/{_q(user)}",
                   {"exchange": exchange, "write": write, "read": read})

    def permissions(self, vhost: str) -> list[dict[str, Any]]:
        return self.get(f"vhosts/{_q(vhost)}/permissions")

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refusal(error: BaseException) -> str:
    """What the broker said when it refused: ``"403 ACCESS_REFUSED - ..."`` for a channel or connection it
    closed, ``"HTTP 401"`` for the management API, else the exception's type and text.

    >>> refusal(pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - no"))
    '403 ACCESS_REFUSED - no'
    """
    if isinstance(error, (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)):
        return f"{error.reply_code} {error.reply_text}"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        try:
            reason = error.response.json().get("reason", "")
        except ValueError:
            reason = error.response.text[:200]
        return f"HTTP {error.response.status_code} {error.response.reason}: {reason}".rstrip(": ")
    if isinstance(error, pika.exceptions.AMQPConnectionError):
        for inner in (*error.args, error.__cause__, error.__context__):
            if isinstance(inner, BaseException) and inner is not error:
                return f"{type(error).__name__}: {refusal(inner)}"
        said = re.search(r"\((\d+)\) ['\"](.*)['\"]", str(error))   # pika's text: "ConnectionClosedByBroker: (403) '...'"
        if said:
            return f"{type(error).__name__}: {said.group(1)} {said.group(2)}"
        return f"{type(error).__name__}: {error}"
    return f"{type(error).__name__}: {error}"


def attempt(action: Callable[[], Any]) -> str:
    """Run ``action`` and return ``"ok"``, or the broker's refusal (:func:`refusal`)."""
    try:
        action()
    except (pika.exceptions.AMQPError, requests.HTTPError, ssl.SSLError, OSError) as e:
        return refusal(e)
    return "ok"


def credentials_from_env(service: str, environ: Mapping[str, str] | None = None) -> pika.PlainCredentials:
    """The credentials of ``service`` from ``VOICELAB_<SERVICE>_USER`` and ``VOICELAB_<SERVICE>_PASSWORD``, or
    ``VOICELAB_<SERVICE>_PASSWORD_FILE`` (a file holding only the password, as Docker and Kubernetes secrets
    are mounted). The password never appears in code, a notebook or a URL.

    >>> credentials_from_env("demo", {"VOICELAB_DEMO_USER": "d", "VOICELAB_DEMO_PASSWORD": "s"}).username
    'd'
    """
    env = os.environ if environ is None else environ
    prefix = f"VOICELAB_{service.upper().replace('-', '_')}_"
    user = env.get(prefix + "USER")
    if not user:
        raise KeyError(f"{prefix}USER is not set")
    if env.get(prefix + "PASSWORD_FILE"):
        password = Path(env[prefix + "PASSWORD_FILE"]).read_text().strip()
    elif env.get(prefix + "PASSWORD"):
        password = env[prefix + "PASSWORD"]
    else:
        raise KeyError(f"neither {prefix}PASSWORD_FILE nor {prefix}PASSWORD is set")
    return pika.PlainCredentials(user, password)


def loopback_users(broker: Broker) -> str:
    """The running broker's ``loopback_users`` (users that may log in from localhost only), as Erlang prints it:
    ``[<<"guest">>]`` is RabbitMQ's default, ``[]`` what the official Docker image sets."""
    code, out = broker._rabbitmqctl("eval", "application:get_env(rabbit, loopback_users).")
    if code != 0:
        raise BrokerError(f"rabbitmqctl eval failed: {out.strip()[:300]}")
    return out.strip().removeprefix("{ok,").removesuffix("}")


def connections(broker: Broker, *fields: str) -> list[dict[str, str]]:
    """Each open client connection as the broker sees it: ``fields`` of ``rabbitmqctl list_connections``
    (``user``, ``peer_host``, ``ssl``, ``ssl_protocol``, ``auth_mechanism``, ``peer_cert_subject``, ...), at once
    (the management API lists a new connection up to 5 s late)."""
    code, out = broker._rabbitmqctl("list_connections", *fields, "--no-table-headers", "--quiet")
    if code != 0:
        raise BrokerError(f"rabbitmqctl list_connections failed: {out.strip()[:300]}")
    return [dict(zip(fields, line.split("\t"))) for line in out.splitlines() if line.strip()]


def exposure(broker: Broker) -> list[tuple[str, str]]:
    """``(port, host address it is reachable on)`` for each port of ``broker``: the Docker port bindings of a
    container, the listeners a local node reports. ``127.0.0.1`` only: nothing reachable from the network."""
    if hasattr(broker, "_wrapped"):
        bindings = broker._wrapped().attrs["HostConfig"]["PortBindings"] or {}
        return [(f"{port} -> {b['HostPort']}", b["HostIp"] or "0.0.0.0 (all interfaces)")
                for port, binds in sorted(bindings.items()) for b in binds or []]
    ports = {"amqp": broker.port, "amqp/tls": broker.tls_port, "management": broker.management_port,
             "prometheus": broker.prometheus_port, "erlang distribution": getattr(broker, "dist_port", None)}
    if shutil.which("ss"):   # the OS's view: /api/overview of a local 3.10.8 node listed its 127.0.0.1 HTTP listeners on '::'
        found = []
        for name, port in ports.items():
            if port:
                out = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True,
                                     check=False).stdout
                found += [(f"{name} {port}", line.split()[3].rsplit(":", 1)[0]) for line in out.splitlines()]
        return found
    with Admin(broker) as admin:
        return [(f"{lst['protocol']} {lst['port']}", lst["ip_address"]) for lst in admin.get("overview")["listeners"]]


def set_loopback_users(broker: Broker, users: list[str]) -> None:
    """Change ``loopback_users`` on the running node (read at every login; not persisted: a restart reverts)."""
    terms = ",".join(f'<<"{u}">>' for u in users)
    code, out = broker._rabbitmqctl("eval", f"application:set_env(rabbit, loopback_users, [{terms}]).")
    if code != 0:
        raise BrokerError(f"rabbitmqctl eval failed: {out.strip()[:300]}")


@dataclass
class Pki:
    """Paths of a throw-away PKI (all PEM), made by :func:`make_test_pki`."""

    folder: Path
    ca: Path                    # the CA every good certificate chains to
    server_cert: Path           # the broker's certificate: localhost and 127.0.0.1, valid now
    server_key: Path
    expired_cert: Path          # the same names, expired yesterday
    expired_key: Path
    other_ca: Path              # a CA that signed nothing here: a client trusting only it rejects the broker
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # common name -> (cert, key)

    def client_context(self, common_name: str | None = None, ca: Path | None = None) -> ssl.SSLContext:
        """A client context trusting ``ca`` (default: :attr:`ca`), with the client certificate of
        ``common_name`` loaded when one is given (mutual TLS)."""
        context = ssl.create_default_context(cafile=str(ca or self.ca))
        if common_name is not None:
            cert, key = self.clients[common_name]
            context.load_cert_chain(str(cert), str(key))
        return context


def make_test_pki(folder: str | os.PathLike[str], hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
             clients: tuple[str, ...] = ()) -> Pki:
    """Make a CA, a broker certificate for ``hosts``, an expired one, another CA and a client certificate per
    common name in ``clients``, as PEM files in ``folder`` (with ``trustme``; never for production)."""
    import trustme  # a dependency of this chapter only

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(organization_name="voicelab test CA"), trustme.CA(organization_name="another CA")
    server = ca.issue_cert(*hosts, common_name=hosts[0])
    now = dt.datetime.now(dt.UTC)
    expired = ca.issue_cert(*hosts, common_name=hosts[0], not_before=now - dt.timedelta(days=30),
                            not_after=now - dt.timedelta(days=1))

    def write(name: str, blob: Any) -> Path:
        path = out / name
        blob.write_to_path(str(path))
        return path

    def write_chain(name: str, leaf: Any) -> Path:
        path = out / name
        path.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        return path

    pki = Pki(out, write("ca.pem", ca.cert_pem), write_chain("server.pem", server),
              write("server.key", server.private_key_pem), write_chain("expired.pem", expired),
              write("expired.key", expired.private_key_pem), write("other-ca.pem", other.cert_pem))
    for name in clients:
        leaf = ca.issue_cert(f"{name}.clients.voicelab.test", common_name=name)
        pki.clients[name] = (write_chain(f"client-{name}.pem", leaf), write(f"client-{name}.key", leaf.private_key_pem))
    for path in out.iterdir():
        path.chmod(0o600)
    return pki


def log_lines(broker: Broker, needle: str, timeout: float = 5.0) -> list[str]:
    """Lines of the broker's own log that contain ``needle`` (waits up to ``timeout`` s for the first one):
    where RabbitMQ writes *why* it refused a login, which the client is not told."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if hasattr(broker, "_wrapped"):      # a container: its console log
            text = broker._wrapped().logs().decode(errors="replace")
        elif hasattr(broker, "_node_log"):   # a local node: its log folder
            text = broker._node_log()
        else:
            raise BrokerError(f"{broker!r}: voicelab cannot read this broker's log")
        found = [line.strip() for line in text.splitlines() if needle in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
