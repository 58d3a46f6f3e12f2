"""The test images are the broker a learner pulls: each behaves as the official ``rabbitmq:<series>-management``.

CI builds its images from Debian's packages (``voicelab/data/build-rabbitmq-image.sh``); Debian patches
some behaviour, the build script undoes that. ``voicelab/data/upstream-defaults.json`` holds what upstream
does per release series (sources listed there). On every test image (``VOICELAB_TEST_IMAGES``):

- each deprecated feature has upstream's default state (permitted / denied), read from the running broker;
  a phase that differs from upstream's is allowed only where the image's label says it undoes it;
- a transient non-exclusive queue is accepted or refused as upstream's default says
  (3.10, 4.0: accepted; 4.3: refused with 541 and the whole connection closed);
- the official image's settings (plugins, ``loopback_users``, ``log.console``, metrics collector, ENV,
  VOLUME, EXPOSE).

Reading a state needs ``rabbitmqctl`` on the node (``docker exec``) before 4.3, whose management API
lists phases only; for the local node backend that part is skipped.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pika
import pytest
import requests

import voicelab
from voicelab import broker as vb

pytestmark = pytest.mark.all_versions

DEFAULTS = json.loads((Path(voicelab.__file__).parent / "data" / "upstream-defaults.json").read_text())
PHASE_STATE: dict[str, str] = DEFAULTS["phase_state"]
UNDO_LABEL = "org.voicelab.undoes-debian"

# Each line "feature NAME PHASE STATE"; "none" when the node has no deprecated-features subsystem (< 3.13).
# A deprecated feature is permitted while its backing feature flag is disabled
# (rabbit_deprecated_features:is_permitted_nolog/1, 3.13.0 to 4.3.x); the 4.0 CLI and API show no state.
READ_FEATURES = """
case code:ensure_loaded(rabbit_deprecated_features) of
    {module, _} ->
        lists:foreach(
          fun({N, P}) ->
                  io:format("feature ~s ~s ~s~n",
                            [N, maps:get(deprecation_phase, P),
                             case rabbit_feature_flags:is_enabled(N) of true -> denied; false -> permitted end])
          end, lists:sort(maps:to_list(rabbit_deprecated_features:list(all))));
    _ -> io:format("none~n")
end.
"""

READ_SETTINGS = """
Log = application:get_env(rabbit, log, []),
io:format("setting loopback_users ~w~n", [application:get_env(rabbit, loopback_users, undefined)]),
io:format("setting log.console ~w~n", [proplists:get_value(enabled, proplists:get_value(console, Log, []), false)]),
io:format("setting management_agent.disable_metrics_collector ~w~n",
          [application:get_env(rabbitmq_management_agent, disable_metrics_collector, false)]).
"""


# -- what upstream does ------------------------------------------------------------------------------------

def series(broker: vb.Broker) -> str:
    major, minor = broker.version_info
    return f"{major}.{minor}"


def upstream(broker: vb.Broker) -> dict[str, Any]:
    """Upstream's defaults for the broker's release series, or skip when the table has none."""
    s = series(broker)
    if s not in DEFAULTS["series"]:
        pytest.skip(f"RabbitMQ {broker.version}: voicelab/data/upstream-defaults.json has no series {s} "
                    "(add it from rabbitmq-server's source at that tag)")
    return DEFAULTS["series"][s]


def upstream_refuses_transient_queues(broker: vb.Broker) -> bool:
    phase = upstream(broker)["deprecated_features"].get("transient_nonexcl_queues")
    return phase is not None and PHASE_STATE[phase] == "denied"


# -- what the broker does ----------------------------------------------------------------------------------

def docker_client() -> Any:
    import docker  # testcontainers' dependency: present wherever the container backend runs

    return docker.from_env(timeout=10)


def container_of(broker: vb.Broker) -> Any:
    """The Docker container of a container broker this test process started (found by its label and AMQP port)."""
    client = docker_client()
    for c in client.containers.list(filters={"label": f"org.voicelab.owner-pid={os.getpid()}"}):
        bindings = (c.attrs.get("HostConfig", {}).get("PortBindings") or {}).get("5672/tcp") or []
        if any(str(b.get("HostPort")) == str(broker.port) for b in bindings):
            return c
    raise AssertionError(f"no container of this process publishes {broker!r}'s AMQP port {broker.port}")


def on_node(broker: vb.Broker, erlang: str) -> list[str]:
    """Lines printed by ``rabbitmqctl eval`` of ``erlang`` inside the broker's container (skip for other backends)."""
    if broker.backend != "container":
        pytest.skip(f"the {broker.backend} backend: reading the node's state needs rabbitmqctl inside its "
                    "container (docker exec); this backend is not a container")
    code, out = container_of(broker).exec_run(["rabbitmqctl", "-q", "eval", erlang])
    text = out.decode(errors="replace")
    assert code == 0, f"rabbitmqctl eval failed on {broker!r} (exit {code}):\n{text}"
    return text.splitlines()


def features_from_api(broker: vb.Broker) -> dict[str, dict[str, str]] | None:
    """name -> {"phase", "state" (4.3+ only)} from ``GET /api/deprecated-features``; None when there is no endpoint (< 3.13)."""
    assert broker.management_url, f"{broker!r} has no management API"
    r = requests.get(f"{broker.management_url}/api/deprecated-features",
                     auth=(broker.username, broker.password), timeout=10)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return {f["name"]: {"phase": f["deprecation_phase"], **({"state": f["state"]} if "state" in f else {})}
            for f in r.json()}


def features_on_node(broker: vb.Broker) -> dict[str, dict[str, str]] | None:
    lines = on_node(broker, READ_FEATURES)
    if "none" in lines:
        return None
    return {name: {"phase": phase, "state": state}
            for _, name, phase, state in (line.split() for line in lines if line.startswith("feature "))}


def image_labels(broker: vb.Broker) -> dict[str, str]:
    if broker.backend != "container":
        return {}
    return docker_client().images.get(broker.image).labels or {}  # type: ignore[attr-defined]


def feature_states(broker: vb.Broker) -> dict[str, dict[str, str]]:
    """Every deprecated feature of the running broker: its phase and its state, from the API and (containers) the node."""
    api = features_from_api(broker)
    if broker.backend == "container":
        node = features_on_node(broker)
        assert (api is None) == (node is None), f"API says {api}, rabbitmqctl says {node}"
        if node is None:
            return {}
        assert {n: f["phase"] for n, f in api.items()} == {n: f["phase"] for n, f in node.items()}, (api, node)  # type: ignore[union-attr]
        for name, f in api.items():  # type: ignore[union-attr]
            assert f.get("state", node[name]["state"]) == node[name]["state"], (name, f, node[name])
        return node
    if api is None:
        return {}
    if any("state" not in f for f in api.values()):
        pytest.skip(f"RabbitMQ {broker.version} ({broker.backend} backend): the management API shows no state "
                    "before 4.3, and rabbitmqctl inside a container (docker exec) is not available for this backend")
    return api


# -- the tests ---------------------------------------------------------------------------------------------

def test_deprecated_features_have_upstream_defaults(any_broker: vb.Broker) -> None:
    """Each deprecated feature is permitted or denied as on upstream's release of this series.

    Fails when a Debian upload patches one (again) and the build script does not undo it.
    """
    up: dict[str, str] = upstream(any_broker)["deprecated_features"]
    found = feature_states(any_broker)
    undone = image_labels(any_broker).get(UNDO_LABEL, "")
    s, where = series(any_broker), f"RabbitMQ {any_broker.version} ({getattr(any_broker, 'image', any_broker.backend)})"
    problems = []
    for name in sorted(set(up) | set(found)):
        if name not in found:
            problems.append(f"{name}: upstream {s} has it ({up[name]}, {PHASE_STATE[up[name]]}); the broker has no such feature")
        elif name not in up:
            problems.append(f"{name}: the broker has it ({found[name]['phase']}, {found[name]['state']}); "
                            f"upstream {s} has no such feature")
        elif found[name]["state"] != PHASE_STATE[up[name]]:
            problems.append(f"{name}: the broker has it {found[name]['state']} (phase {found[name]['phase']}); "
                            f"upstream {s} has it {PHASE_STATE[up[name]]} by default (phase {up[name]})")
        elif found[name]["phase"] != up[name] and f"deprecated_features.permit.{name} " not in undone:
            problems.append(f"{name}: phase {found[name]['phase']}, upstream {s} {up[name]} (same state, but "
                            f"the image's {UNDO_LABEL} label does not account for it: {undone!r})")
    assert not problems, (f"{where} differs from upstream {s} (voicelab/data/upstream-defaults.json) in its "
                          "deprecated features:\n  " + "\n  ".join(problems))


def test_transient_nonexclusive_queue_as_upstream(any_broker: vb.Broker) -> None:
    """``queue_declare(name, durable=False)``: accepted on 3.10 and 4.0; on 4.3 refused, 541, connection closed."""
    refused = upstream_refuses_transient_queues(any_broker)
    assert refused == (any_broker.version_info >= (4, 3)), "upstream-defaults.json disagrees with the 4.3.0 release notes"
    name = f"test.images.transient.{uuid.uuid4().hex[:8]}"
    connection = any_broker.connect()
    try:
        channel = connection.channel()
        if refused:
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
                channel.queue_declare(name, durable=False)
            assert closed.value.reply_code == 541, closed.value
            assert "transient_nonexcl_queues" in closed.value.reply_text, closed.value
            assert connection.is_closed, "the broker closes the whole connection, not just the channel"
        else:
            try:
                channel.queue_declare(name, durable=False)
            except pika.exceptions.AMQPError as e:
                pytest.fail(f"RabbitMQ {any_broker.version} refused a transient non-exclusive queue ({e!r}); "
                            f"upstream {series(any_broker)} accepts it")
            channel.queue_delete(name)
    finally:
        if connection.is_open:
            connection.close()
    with any_broker.connect() as fresh:  # the broker is fine afterwards: a fresh connection works
        fresh.channel().queue_declare("", exclusive=True)


def test_settings_of_the_official_image(any_broker: vb.Broker) -> None:
    """Plugins, loopback_users, log.console and the metrics collector as the official -management image has them."""
    official = DEFAULTS["official_image"]
    lines = on_node(any_broker, READ_SETTINGS)
    settings = dict(line.split(" ", 2)[1:] for line in lines if line.startswith("setting "))
    expected = {"loopback_users": "[]",  # loopback_users.guest = false
                "log.console": "true",
                "management_agent.disable_metrics_collector": str(official["management_agent.disable_metrics_collector"]).lower()}
    assert settings == expected, f"{any_broker!r}: {settings} != official image's {expected}"
    code, out = container_of(any_broker).exec_run(["rabbitmq-plugins", "-q", "list", "-E", "-m"])
    assert code == 0, out
    assert sorted(out.decode().split()) == sorted(official["enabled_plugins"])


def test_image_config_and_labels(any_broker: vb.Broker) -> None:
    """The image's ENV, VOLUME and EXPOSE as the official image; a voicelab image says which upstream it reproduces."""
    if any_broker.backend != "container":
        pytest.skip(f"the {any_broker.backend} backend has no image")
    official = DEFAULTS["official_image"]
    image = docker_client().images.get(any_broker.image)  # type: ignore[attr-defined]
    config = image.attrs["Config"]
    env = dict(e.split("=", 1) for e in config.get("Env") or [])
    assert {k: env.get(k) for k in official["env"]} == official["env"]
    assert official["volume"] in (config.get("Volumes") or {})
    assert {f"{p}/tcp" for p in official["expose"]} <= set(config.get("ExposedPorts") or {})
    labels = image.labels or {}
    if "org.voicelab.rabbitmq-version" in labels:  # built by build-rabbitmq-image.sh
        assert labels.get("org.voicelab.upstream") == upstream(any_broker)["official_image"], labels
        assert labels.get("org.voicelab.upstream-version") == any_broker.version, labels
        assert labels.get(UNDO_LABEL), f"{UNDO_LABEL} label missing (an image from an older build script?): {labels}"
