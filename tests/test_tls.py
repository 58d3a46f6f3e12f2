"""voicelab's brokers with a TLS listener, on each backend: verified connections, the three verification
failures a learner meets, a client certificate as the login (EXTERNAL), certificate rotation without a restart,
and nothing left behind (containers, nodes, the broker's copy of the key)."""

from __future__ import annotations

import time
from pathlib import Path

import pika
import pytest
from helpers import images, require

from voicelab import broker as vb
from voicelab.broker.tls import TlsFiles
from voicelab.security import Admin, attempt, connections, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_test_pki(tmp_path_factory.mktemp("pki"), clients=("svc-tls",))


def _broker(backend: str, tls: TlsFiles) -> vb.Broker:
    require(backend)
    return vb.ContainerBroker(images()[-1], tls=tls) if backend == "container" else vb.LocalBroker(tls=tls)


def test_tls_files_refuse_contradictions(pki) -> None:
    with pytest.raises(ValueError, match="fail_if_no_peer_cert needs verify"):
        TlsFiles(pki.ca, pki.server_cert, pki.server_key, verify=False, fail_if_no_peer_cert=True)
    with pytest.raises(ValueError, match="cert_login needs verify"):
        TlsFiles(pki.ca, pki.server_cert, pki.server_key, verify=False, cert_login=True)
    conf = TlsFiles(pki.ca, pki.server_cert, pki.server_key, cert_login=True).conf("127.0.0.1:5671", "/x")
    assert "listeners.ssl.default = 127.0.0.1:5671" in conf and "auth_mechanisms.3 = EXTERNAL" in conf
    with pytest.raises(TypeError):
        vb.LocalBroker(tls={"cacertfile": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize("backend,required", [("container", False), ("local", True)],
                         ids=["container-cert-optional", "local-cert-required"])
def test_broker_with_tls_listener(backend: str, required: bool, pki) -> None:
    """Each backend starts with a TLS listener (container: mounted files and conf.d; local: its config folder);
    the local one requires a client certificate (fail_if_no_peer_cert), the container's only asks for one."""
    broker = _broker(backend, TlsFiles(pki.ca, pki.server_cert, pki.server_key, fail_if_no_peer_cert=required,
                                       cert_login=True))
    mine = pki.client_context("svc-tls")   # trusts the CA and presents svc-tls's certificate
    try:
        broker.start()
        assert broker.tls_port not in (None, broker.port) and broker.amqps_url.startswith("amqps://")
        copy = broker._tls_dir
        assert copy is not None and (copy / "key.pem").read_bytes() == Path(pki.server_key).read_bytes()
        with broker.connect():   # the plain listener is still there
            pass

        no_cert = attempt(lambda: pika.BlockingConnection(broker.tls_parameters(connection_attempts=1)).close())
        if required:   # the broker ends the handshake of a client without a certificate
            assert no_cert != "ok" and any(s in no_cert for s in ("SSL", "EOF", "Reset")), no_cert
        else:
            assert no_cert == "ok"
        wrong_host = attempt(lambda: pika.BlockingConnection(
            broker.tls_parameters(mine, server_hostname="rabbitmq.example.com", connection_attempts=1)))
        assert wrong_host.startswith("SSLCertVerificationError") and "Hostname mismatch" in wrong_host
        with pytest.raises(vb.ConnectFailed, match="did not accept the broker's certificate"):
            broker.connect(port=broker.tls_port, connection_attempts=1,
                           ssl_options=pika.SSLOptions(pki.client_context(ca=pki.other_ca), "127.0.0.1"))

        with Admin(broker) as admin:   # the client certificate is the login: EXTERNAL, user = its common name
            admin.create_user_without_password("svc-tls")
            admin.set_permissions("/", "svc-tls", configure="", write="", read="")
        external = broker.tls_parameters(mine, credentials=pika.credentials.ExternalCredentials())
        with pika.BlockingConnection(external) as connection:   # who logged in? the broker's refusal names the user
            refused = attempt(lambda: connection.channel().queue_declare("mine", durable=True))
        assert refused.startswith("403 ACCESS_REFUSED") and "refused for user 'svc-tls'" in refused, refused

        if backend == "container":   # rotation needs in-place writes: the container's files are bind mounts
            with pika.BlockingConnection(broker.tls_parameters(mine)):
                # the management API drops a closed connection (svc-tls's, above) at its next statistics event
                deadline = time.monotonic() + 30
                while (seen := {c["user"]: c["ssl"] for c in connections(broker, "user", "ssl")}) != {
                        "guest": "true"} and time.monotonic() < deadline:
                    time.sleep(0.5)
            assert seen == {"guest": "true"}, seen
            broker.rotate_certificate(pki.expired_cert, pki.expired_key)    # no restart: files + PEM cache
            expired = attempt(lambda: pika.BlockingConnection(broker.tls_parameters(mine, connection_attempts=1)))
            assert "certificate has expired" in expired
            broker.rotate_certificate(pki.server_cert, pki.server_key)
            assert attempt(lambda: pika.BlockingConnection(
                broker.tls_parameters(mine, connection_attempts=1)).close()) == "ok"
    finally:
        if broker._running():
            broker.kill()   # no graceful shutdown to wait for: this test is about TLS
        broker.stop()
    assert not copy.exists(), "stop() must delete the broker's copy of the private key"


def test_no_tls_means_no_tls_port() -> None:
    require("local")
    broker = vb.LocalBroker()   # not started: a broker without tls= has no TLS port, and says so
    assert broker.tls_port is None and broker.amqps_url is None
    with pytest.raises(vb.BrokerError, match="no TLS listener"):
        broker.tls_parameters()
