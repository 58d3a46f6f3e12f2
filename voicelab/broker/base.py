"""What every broker is: where it listens, how to connect, how it starts, and the errors it raises.

A backend (:mod:`~voicelab.broker.url`, :mod:`~voicelab.broker.container`,
:mod:`~voicelab.broker.local`) fills in four steps: pick its ports, launch,
say what the watchdog must remove, and discard a failed launch. :meth:`Broker.start`
is the one template around them: it registers the broker for clean-up at exit,
waits until it answers, and retries with fresh ports when a port was taken
between choosing it and binding it.

Example::

    >>> mask_url("amqp://guest:secret@localhost:5672/%2F")
    'amqp://guest:***@localhost:5672/%2F'
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import warnings
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import pika
import pika.exceptions
import requests
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from . import reaper
from .tls import TlsFiles

DEFAULT_IMAGE = "rabbitmq:4.3-management"
STATS_INTERVAL_MS = 1000  # event emission interval (default 5000); queue counters still refresh every 5 s
PORT_ATTEMPTS = 5  # a fresh start whose port was taken meanwhile tries this many sets of ports

HOW_TO_GET_A_BROKER = """\
voicelab needs a real RabbitMQ and found none. Any one of these works:
  1. An existing broker: export VOICELAB_AMQP_URL=amqp://guest:guest@localhost:5672/%2F
  2. Docker: start a Docker engine (Docker Desktop, or `sudo apt-get install docker.io`
     then `sudo dockerd`); voicelab runs the image in VOICELAB_RABBITMQ_IMAGE
     (default rabbitmq:4.3-management) with testcontainers.
  3. A local rabbitmq-server: `sudo apt-get install rabbitmq-server` (Debian/Ubuntu),
     `brew install rabbitmq` (macOS) or `conda install -c conda-forge rabbitmq-server`;
     voicelab starts a private node in a temporary folder.
Run `python -m voicelab doctor` to see what this machine has."""



def check_settings(settings: Mapping[str, int] | None) -> dict[str, int]:
    """Validate settings of RabbitMQ's ``rabbit`` application (``advanced.config`` names, integer values).

    A started broker gets each as ``-rabbit NAME VALUE`` on its command line, e.g.
    ``{"consumer_timeout": 3000}``; a voicelab default of the same name is overridden.

    >>> check_settings({"consumer_timeout": 3000})
    {'consumer_timeout': 3000}
    """
    out: dict[str, int] = {}
    for name, value in (settings or {}).items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"settings: {name!r} is not a rabbit application setting name (like 'consumer_timeout')")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"settings[{name!r}] must be an integer (milliseconds, bytes, ...), got {value!r}")
        out[name] = value
    return out


KNOWN_SETTINGS_EXPR = (
    # Erlang, run on the node by `rabbitmqctl eval`: the names its own RabbitMQ knows, as defaults of the rabbit
    # application (its rabbit.app) or as rabbitmq.conf mappings (its rabbit.schema), and which of NAMES are not.
    '{ok,[{application,rabbit,K}]}=file:consult(filename:join([code:lib_dir(rabbit),"ebin","rabbit.app"])),'
    'M=case file:read_file(filename:join([code:priv_dir(rabbit),"schema","rabbit.schema"])) of'
    ' {ok,S} -> case re:run(S,"\\"rabbit\\\\.([a-z0-9_]+)",[global,{capture,all_but_first,list}]) of'
    ' {match,X} -> lists:append(X); _ -> [] end; _ -> [] end,'
    'Known=[atom_to_list(A)||{A,_}<-proplists:get_value(env,K,[])]++M,'
    '{[N||N<-NAMES,not lists:member(N,Known)],list_to_binary(lists:join(" ",lists:usort(Known)))}.'
)


def unknown_settings_error(unknown: list[str], known: str, version: str) -> ValueError:
    """The error for settings a broker does not know: each name, and a near name when there is one.

    >>> str(unknown_settings_error(["consumer_timout"], "consumer_timeout heartbeat", "4.3.6")).split(";")[0]
    "settings: 'consumer_timout' (did you mean 'consumer_timeout'?) is not a setting of RabbitMQ 4.3.6's rabbit application"
    """
    names = known.split()
    said = []
    for name in unknown:
        near = difflib.get_close_matches(name, names, n=1)
        said.append(f"{name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    return ValueError(f"settings: {', '.join(said)} {'is not a setting' if len(said) == 1 else 'are not settings'} "
                      f"of RabbitMQ {version}'s rabbit application; the broker would ignore "
                      f"{'it' if len(said) == 1 else 'them'} silently, so it was stopped (names as in "
                      "advanced.config, e.g. 'consumer_timeout')")


def erl_args(settings: Mapping[str, int]) -> str:
    """``settings`` as the value of ``RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS``."""
    return " ".join(f"-rabbit {name} {value}" for name, value in settings.items())

class BrokerError(RuntimeError):
    """Base class of voicelab's broker errors."""


class BrokerUnavailable(BrokerError):
    """No broker could be obtained; the message says how to get one."""


class BrokerControlError(BrokerError):
    """The operation needs a broker that voicelab started (not a ``VOICELAB_AMQP_URL`` one)."""


class ConnectFailed(BrokerError, pika.exceptions.AMQPConnectionError):
    """A connection could not be opened; the message says where, why, and what to try.

    Still a ``pika.exceptions.AMQPConnectionError``, so reconnect loops that catch pika's error go on working.
    """


def explain_connect_error(error: BaseException, params: pika.ConnectionParameters) -> str:
    """One paragraph on why pika could not connect with ``params``, from the error pika raised.

    >>> import pika
    >>> p = pika.ConnectionParameters("127.0.0.1", 1)
    >>> explain_connect_error(pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"), p).split(": wrong")[0]
    "the broker at 127.0.0.1:1 refused the login of user 'guest'"
    """
    where = f"{params.host}:{params.port}"
    user = getattr(params.credentials, "username", "?")
    causes: list[BaseException] = []
    todo: list[BaseException] = [error]
    while todo and len(causes) < 20:   # pika nests the real error in args (and chains it)
        cause = todo.pop(0)
        if cause in causes:
            continue
        causes.append(cause)
        todo.extend(a for a in (*getattr(cause, "args", ()), getattr(cause, "exception", None), cause.__cause__,
                                cause.__context__) if isinstance(a, BaseException))
    text = " ".join(f"{type(c).__name__}: {c}" for c in causes)
    if any(isinstance(c, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError))
           for c in causes) or "ACCESS_REFUSED" in text:
        return (f"the broker at {where} refused the login of user {user!r}: wrong user name or password? "
                "(A fresh broker has guest/guest, and guest may log in from localhost only.)")
    if any(isinstance(c, pika.exceptions.ProbableAccessDeniedError) for c in causes) or "NOT_ALLOWED" in text:
        return (f"user {user!r} may not use virtual host {params.virtual_host!r} on {where}, or it does not exist "
                "(the default one is '/', %2F in a URL)")
    verify = [c for c in causes if isinstance(c, ssl.SSLCertVerificationError)]
    if verify:
        return (f"the TLS handshake with {where} failed: this client did not accept the broker's certificate "
                f"({verify[0].verify_message}): is the context's CA the one that signed it, is the certificate "
                "still valid, and does it name the host you connect to (server_hostname)?")
    if any(isinstance(c, ssl.SSLError) for c in causes):
        return (f"the TLS handshake with {where} failed ({text}): a plain AMQP port, or the broker refused this "
                "client's certificate (or its lack of one)?")
    if any(isinstance(c, ConnectionRefusedError) for c in causes) or "Connection refused" in text:
        return (f"nothing accepts connections at {where} (connection refused): is the broker running, and is "
                "that its AMQP port (5672 by default)?")
    if any(isinstance(c, socket.gaierror) for c in causes) or "gaierror" in text:
        return f"the host {params.host!r} was not found (name resolution failed): check the URL's host"
    if any(isinstance(c, (TimeoutError, socket.timeout)) for c in causes) or "timed out" in text.lower():
        return f"no answer from {where} within {params.socket_timeout} s: a firewall, or not an AMQP port?"
    return f"could not connect to {where}: {text}"


class PortInUse(BrokerError):
    """The broker could not bind ``port``: something else took it after voicelab chose it."""

    def __init__(self, port: int, detail: str = "") -> None:
        super().__init__(f"port {port} on 127.0.0.1 is already in use ({who_holds(port)}){detail}")
        self.port = port


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``.

    >>> mask_url("amqp://guest:secret@localhost:5672/%2F")
    'amqp://guest:***@localhost:5672/%2F'
    """
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections and ``bind(0)`` (Linux; a common default elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (it may be taken again at any moment).

    Chosen at random *below* the kernel's ephemeral range when there is room: a broker keeps its ports across
    ``restart()`` and ``kill()`` + ``start()``, and while it is down an outgoing connection could be handed a
    port from the ephemeral range, its own included (seen on a busy machine: a restart refused, PortInUse).

    >>> 0 < free_port() < 65536
    True
    """
    low, _ = _ephemeral_range()
    if low > 11000:
        for _ in range(50):
            port = random.randrange(10000, low)
            with socket.socket() as s, contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port))
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def who_holds(port: int) -> str:
    """Which process listens on TCP ``port``, as ``ss`` reports it (Linux), or why that is unknown."""
    if shutil.which("ss") is None:
        return "no `ss` here to tell which process holds it"
    with contextlib.suppress(Exception):
        out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5)
        lines = [" ".join(line.split()[3:]) for line in out.stdout.splitlines() if line.strip()]
        if lines:
            return "held by " + "; ".join(lines)
        return "free again now: another process held it for a moment"
    return "could not ask `ss` which process holds it"


def run_id() -> str:
    """``VOICELAB_RUN_ID``: a tag that a test run (and every kernel it starts) puts on its brokers, or ``""``."""
    return "".join(ch for ch in os.environ.get("VOICELAB_RUN_ID", "") if ch.isalnum())


_LIVE: "weakref.WeakSet[Broker]" = weakref.WeakSet()


@atexit.register
def stop_all() -> None:
    """Stop every broker this process started and has not stopped yet (runs at interpreter exit)."""
    for broker in list(_LIVE):
        with contextlib.suppress(Exception):
            broker.stop()


def is_live(broker: "Broker") -> bool:
    """True while ``broker`` was started by this process and not stopped since."""
    return broker in _LIVE


class Broker(ABC):
    """A running RabbitMQ: where it is, how to connect, and (if voicelab owns it) how to crash it.

    Attributes:
        backend: ``"url"``, ``"container"`` or ``"local"``.
        can_control: True when ``restart()``, ``kill()`` and ``start()`` are allowed.
        notice: one line on how this broker was chosen when the first choice failed, else ``""``.
    """

    backend: str = ""
    can_control: bool = True

    def __init__(self, settings: Mapping[str, int] | None = None, tls: TlsFiles | None = None) -> None:
        self.settings = check_settings(settings)
        if tls is not None and not isinstance(tls, TlsFiles):
            raise TypeError(f"tls must be a voicelab.broker.tls.TlsFiles, got {tls!r}")
        self.tls = tls
        self.tls_port: int | None = None
        self._tls_dir: Path | None = None  # the broker's own copy of the TLS files (see tls.TlsFiles.copy_to)
        self.host = "127.0.0.1"
        self.port = 0
        self.management_port: int | None = None
        self.prometheus_port: int | None = None
        self.username = "guest"
        self.password = "guest"
        self.vhost = "/"
        self.notice = ""
        self._version: str | None = None

    # -- where it is ---------------------------------------------------
    @property
    def amqp_url(self) -> str:
        """The AMQP URL, credentials included (``amqp://guest:guest@127.0.0.1:PORT/%2F``)."""
        vhost = urllib.parse.quote(self.vhost, safe="")
        user = urllib.parse.quote(self.username, safe="")
        pw = urllib.parse.quote(self.password, safe="")
        return f"amqp://{user}:{pw}@{self.host}:{self.port}/{vhost}"

    @property
    def management_url(self) -> str | None:
        """Base URL of the management HTTP API and UI, or None when it is not known."""
        return None if self.management_port is None else f"http://{self.host}:{self.management_port}"

    @property
    def prometheus_url(self) -> str | None:
        """URL of the ``rabbitmq_prometheus`` metrics endpoint, or None when it is not known."""
        return None if self.prometheus_port is None else f"http://{self.host}:{self.prometheus_port}/metrics"

    def parameters(self, **overrides: Any) -> pika.ConnectionParameters:
        """pika connection parameters; keyword arguments override (e.g. ``heartbeat=5``)."""
        kwargs: dict[str, Any] = dict(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.username, self.password),
            connection_attempts=3,
            retry_delay=0.5,
            client_properties={"connection_name": "voicelab"},
        )
        kwargs.update(overrides)
        return pika.ConnectionParameters(**kwargs)

    @property
    def amqps_url(self) -> str | None:
        """The AMQP-over-TLS URL (``amqps://...``), or None when this broker has no TLS listener."""
        if self.tls_port is None:
            return None
        return self.amqp_url.replace("amqp://", "amqps://", 1).replace(f":{self.port}/", f":{self.tls_port}/", 1)

    def tls_context(self, cafile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
        """A client ``ssl.SSLContext`` that verifies the broker's certificate against ``cafile`` (default: the
        CA file this broker was given) and its host name: ``ssl.create_default_context(cafile=...)``."""
        if cafile is None:
            if self.tls is None:
                raise BrokerError(f"{self!r} has no TLS listener: start it with tls=TlsFiles(...)")
            cafile = self.tls.cacertfile
        return ssl.create_default_context(cafile=str(cafile))

    def tls_parameters(self, context: ssl.SSLContext | None = None, *, server_hostname: str | None = None,
                       **overrides: Any) -> pika.ConnectionParameters:
        """pika parameters for the TLS listener: ``ssl_options=pika.SSLOptions(context, server_hostname)``.

        ``context`` defaults to :meth:`tls_context`; ``server_hostname`` (the name checked against the
        certificate, and sent as SNI) defaults to the host connected to, ``127.0.0.1``.
        """
        if self.tls_port is None:
            raise BrokerError(f"{self!r} has no TLS listener: start it with tls=TlsFiles(...)")
        options = pika.SSLOptions(context or self.tls_context(), server_hostname or self.host)
        return self.parameters(**{"port": self.tls_port, "ssl_options": options, **overrides})

    def reload_tls(self) -> None:
        """Make new TLS handshakes read the certificate files again (``ssl:clear_pem_cache()`` on the node):
        how a certificate is rotated without a restart. Connections already open keep their session."""
        code, out = self._rabbitmqctl("eval", "ssl:clear_pem_cache().")
        if code != 0 or "ok" not in out:
            raise BrokerError(f"could not clear the broker's PEM cache: {out.strip()[:300]}")

    def rotate_certificate(self, certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str]) -> None:
        """Replace the broker's certificate and key (the files it reads, in place) and :meth:`reload_tls`."""
        from . import tls as _tls
        if self._tls_dir is None:
            raise BrokerError(f"{self!r} has no TLS files of its own: start it with tls=TlsFiles(...)")
        _tls.rotate(self._tls_dir, certfile, keyfile)
        self.reload_tls()

    def connect(self, **overrides: Any) -> pika.BlockingConnection:
        """Open a new ``pika.BlockingConnection``; use it in a ``with`` block so it closes.

        Raises :class:`ConnectFailed` (a ``pika.exceptions.AMQPConnectionError``) saying why, when it cannot.
        """
        params = self.parameters(**overrides)
        try:
            return pika.BlockingConnection(params)
        except ConnectFailed:
            raise
        except (pika.exceptions.AMQPConnectionError, socket.gaierror, ssl.SSLError) as e:
            url = self.amqps_url if params.ssl_options else self.amqp_url
            raise ConnectFailed(f"{explain_connect_error(e, params)} [{mask_url(url or self.amqp_url)}]") from e

    @property
    def version(self) -> str:
        """The RabbitMQ server version, as the broker reports it (e.g. ``"4.0.5"``)."""
        if self._version is None:
            connection = self.connect(connection_attempts=1)
            try:
                props = connection._impl.server_properties  # pika has no public accessor
                raw = props.get("version", b"unknown")
                self._version = raw.decode() if isinstance(raw, bytes) else str(raw)
            finally:
                connection.close()
        return self._version

    @property
    def version_info(self) -> tuple[int, int]:
        """``(major, minor)`` of :attr:`version`, for comparisons: ``broker.version_info >= (4, 0)``."""
        major, minor, *_ = (self.version.split(".") + ["0", "0"])[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.amqp_url)} mgmt={self.management_url}>"

    # -- life cycle: one template, four backend steps ---------------------
    def start(self) -> "Broker":
        """Start the broker (again, after ``kill()``: same ports, data on disk kept); returns ``self``.

        A first start whose port was taken meanwhile by another program is retried
        with fresh ports (:data:`PORT_ATTEMPTS` times); once started, the ports stay
        fixed across ``restart()`` and ``kill()`` + ``start()``, so URLs stay valid.
        """
        if self._running():
            return self
        fresh = self._fresh()
        last: PortInUse | None = None
        for _ in range(PORT_ATTEMPTS if fresh else 1):
            if fresh:
                self._choose_ports()
            try:
                self._launch()
                _LIVE.add(self)
                watch = self._watch()
                if watch:
                    reaper.watch(**watch)
                self.wait_ready()
                if fresh and self.settings:
                    self._refuse_unknown_settings()
                return self
            except PortInUse as e:
                last = e
                if not fresh:   # kill, not stop: its data stays on disk for a start() once the port is free
                    self._halt()
                    raise PortInUse(e.port, ": it is this broker's own port since its first start, and clients "
                                            "expect it there; free it and start() again, or stop() and start a "
                                            "new broker") from None
                self.stop()
            except BaseException:
                if fresh:
                    self.stop()
                else:   # a start after kill() that failed (or a Ctrl-C): keep the data, as kill() did
                    self._halt()
                raise
        assert last is not None
        raise BrokerUnavailable(f"{type(self).__name__} could not start: {PORT_ATTEMPTS} sets of ports were taken "
                                f"by other programs before the broker could bind them; the last: {last}")

    @abstractmethod
    def _fresh(self) -> bool:
        """True when nothing of this broker exists yet (its ports may still be chosen)."""

    @abstractmethod
    def _running(self) -> bool:
        """True when the broker's process or container runs."""

    @abstractmethod
    def _choose_ports(self) -> None:
        """Choose the ports of a fresh broker."""

    @abstractmethod
    def _launch(self) -> None:
        """Start the process or container; raise :class:`PortInUse` when a port is taken."""

    def _watch(self) -> dict[str, Any] | None:
        """Keyword arguments of :func:`voicelab.broker.reaper.watch` after a launch, or None."""
        return None

    @abstractmethod
    def stop(self) -> None:
        """Stop the broker and delete everything it started. Safe to call twice."""

    @abstractmethod
    def kill(self) -> None:
        """Crash the broker (SIGKILL): no clean shutdown, data on disk kept for ``start()``."""

    @abstractmethod
    def restart(self) -> None:
        """Graceful restart: durable queues and persistent messages survive, transient ones do not."""

    def _halt(self) -> None:
        """Make sure no process of this broker runs, keeping its data (a failed start after ``kill()``)."""
        with contextlib.suppress(Exception):
            self.kill()

    def _unregister(self) -> None:
        """Forget this broker in the exit-time clean-up (called by ``stop()``)."""
        _LIVE.discard(self)

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until the broker accepts an AMQP connection (and its management API answers)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                connection = self.connect(connection_attempts=1, socket_timeout=2, stack_timeout=3,
                                          blocked_connection_timeout=5)
                connection.close()
                if self.management_url:
                    r = requests.get(f"{self.management_url}/api/overview", auth=(self.username, self.password),
                                     timeout=2)
                    r.raise_for_status()
                return
            except (pika.exceptions.AMQPError, OSError, requests.RequestException,
                    AMQPConnectorException) as e:  # e.g. a handshake with another program's socket times out
                last = e
                time.sleep(0.25)
        raise BrokerError(f"{self!r} was not ready after {timeout:.0f} s (last error: {last!r}){self._log_tail()}")

    def _check_alive(self) -> None:
        """Raise (with the broker's log) when it died during start-up; :class:`PortInUse` for a taken port."""

    def _rabbitmqctl(self, *args: str) -> tuple[int, str]:
        """Run ``rabbitmqctl ARGS`` against this broker's node: ``(exit status, output)``."""
        raise BrokerControlError(f"{type(self).__name__} cannot run rabbitmqctl")

    def _refuse_unknown_settings(self) -> None:
        """Raise ``ValueError`` naming each of :attr:`settings` that this broker's RabbitMQ does not know.

        RabbitMQ keeps any ``-rabbit NAME VALUE`` it is given and ignores a name it does not know, so a
        misspelt setting would start a broker without it. The running node is asked which names its
        ``rabbit`` application has a default for (``rabbit.app``) or maps from ``rabbitmq.conf``
        (``rabbit.schema``): the names of that very version. When the node cannot be asked, a warning says so.
        """
        names = "[" + ",".join(f'"{name}"' for name in self.settings) + "]"  # check_settings: [a-z0-9_]
        try:
            code, out = self._rabbitmqctl("eval", KNOWN_SETTINGS_EXPR.replace("NAMES", names))
        except Exception as e:  # noqa: BLE001 - a check that cannot run must not stop a lesson
            code, out = -1, str(e)
        found = re.fullmatch(r'\s*\{\[(.*?)\],\s*<<"(.*)">>\}\s*', out, re.DOTALL) if code == 0 else None
        if found is None:
            warnings.warn(f"could not check the settings {sorted(self.settings)} against the broker "
                          f"(rabbitmqctl said: {out.strip()[:200]!r})", stacklevel=3)
            return
        unknown = re.findall(r'"([a-z0-9_]+)"', found.group(1))
        if unknown:
            raise unknown_settings_error(unknown, found.group(2), self.version)

    def _log_tail(self) -> str:
        return ""
