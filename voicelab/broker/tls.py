"""A TLS listener for the brokers voicelab starts: which files, which settings, and how each backend gets them.

A :class:`TlsFiles` names three PEM files (the CA that signs client certificates, the broker's certificate
chain, its private key) and how strict the listener is. A broker given one (``ContainerBroker(tls=...)``,
``LocalBroker(tls=...)``, ``own_broker(tls=...)``) copies the files into a folder of its own and starts with
a TLS listener on a port of its own on 127.0.0.1, from the ``rabbitmq.conf`` lines of :meth:`TlsFiles.conf`
(https://www.rabbitmq.com/docs/ssl; the example at the end of this docstring shows them). The container gets them as read-only bind mounts (the files and a ``conf.d/60-voicelab-tls.conf``, which
RabbitMQ reads after the image's own ``conf.d`` files: 3.10 and 4.3 read ``/etc/rabbitmq/conf.d/*.conf``),
so this needs a Docker engine on this machine; the local node gets them in its config folder.

With ``cert_login=True`` the broker also enables ``rabbitmq_auth_mechanism_ssl`` and offers the ``EXTERNAL``
mechanism: a client that presents a certificate signed by the CA logs in as the user named by the
certificate's common name (``ssl_cert_login_from = common_name``), with no password.

>>> print(TlsFiles("ca.pem", "cert.pem", "key.pem").conf("5671", "/etc/rabbitmq/tls"))
listeners.ssl.default = 5671
ssl_options.cacertfile = /etc/rabbitmq/tls/ca.pem
ssl_options.certfile = /etc/rabbitmq/tls/cert.pem
ssl_options.keyfile = /etc/rabbitmq/tls/key.pem
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
<BLANKLINE>
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Union

CERT_LOGIN_PLUGIN = "rabbitmq_auth_mechanism_ssl"
FILES = ("ca.pem", "cert.pem", "key.pem")  # the names the broker reads, in its own folder
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TlsFiles:
    """What a broker's TLS listener uses.

    Attributes:
        cacertfile: PEM of the CA(s) whose client certificates the broker accepts.
        certfile: PEM of the broker's certificate (its chain, leaf first).
        keyfile: PEM of the broker's private key.
        verify: ``verify_peer``: ask each client for a certificate and check any it sends against
            ``cacertfile`` (``False``: ``verify_none``, never ask).
        fail_if_no_peer_cert: refuse a client that sends no certificate (mutual TLS required).
        cert_login: enable ``rabbitmq_auth_mechanism_ssl`` and the ``EXTERNAL`` mechanism (login by the
            client certificate's common name); PLAIN and AMQPLAIN stay on for password logins.
    """

    cacertfile: PathLike
    certfile: PathLike
    keyfile: PathLike
    verify: bool = True
    fail_if_no_peer_cert: bool = False
    cert_login: bool = False

    def __post_init__(self) -> None:
        if self.fail_if_no_peer_cert and not self.verify:
            raise ValueError("fail_if_no_peer_cert needs verify=True (verify_peer): a broker that never asks "
                             "for a client certificate cannot require one")
        if self.cert_login and not self.verify:
            raise ValueError("cert_login needs verify=True: the broker must ask for and check the certificate")

    def conf(self, listener: str, folder: str) -> str:
        """The ``rabbitmq.conf`` lines for a listener on ``listener`` (``5671`` or ``127.0.0.1:PORT``), the
        files being in ``folder`` as the broker sees it."""
        ca, cert, key = (f"{folder}/{name}" for name in FILES)
        lines = [f"listeners.ssl.default = {listener}",
                 f"ssl_options.cacertfile = {ca}", f"ssl_options.certfile = {cert}", f"ssl_options.keyfile = {key}",
                 f"ssl_options.verify = {'verify_peer' if self.verify else 'verify_none'}",
                 f"ssl_options.fail_if_no_peer_cert = {'true' if self.fail_if_no_peer_cert else 'false'}"]
        if self.cert_login:
            lines += ["auth_mechanisms.1 = PLAIN", "auth_mechanisms.2 = AMQPLAIN", "auth_mechanisms.3 = EXTERNAL",
                      "ssl_cert_login_from = common_name"]
        return "\n".join(lines) + "\n"

    def copy_to(self, folder: Path) -> Path:
        """Copy the three files into ``folder`` as ``ca.pem``, ``cert.pem``, ``key.pem``, readable by the
        broker's user (a container runs as ``rabbitmq``, uid 101, not as the owner of the files); returns it.

        The folder is the broker's own (deleted by its ``stop()``), created 0700: only the owner enters it,
        while a bind-mounted file needs its own mode only.
        """
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for source, name in zip((self.cacertfile, self.certfile, self.keyfile), FILES):
            write_in_place(folder / name, Path(source).read_bytes())
        return folder


def write_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path``'s content keeping its inode (a bind mount follows the inode, not the name), 0644."""
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)


def rotate(folder: Path, certfile: PathLike, keyfile: PathLike) -> None:
    """Put a new certificate and key where the broker reads them (in place; the broker must then clear its
    PEM cache, see ``Broker.reload_tls``)."""
    write_in_place(folder / "cert.pem", Path(certfile).read_bytes())
    write_in_place(folder / "key.pem", Path(keyfile).read_bytes())


def remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
