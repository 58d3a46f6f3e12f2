"""One real RabbitMQ broker, whatever the machine.

voicelab never mocks a broker. :func:`start_broker` takes the first way that works
(:mod:`~voicelab.broker.obtain` says how it chooses):

1. ``VOICELAB_AMQP_URL`` is set: that broker (:mod:`~voicelab.broker.url`; voicelab cannot restart it);
2. a Docker engine answers: a testcontainers container (:mod:`~voicelab.broker.container`);
3. ``rabbitmq-server`` is installed: a private node (:mod:`~voicelab.broker.local`);
4. none: :class:`BrokerUnavailable`, naming the three ways to get one.

:func:`start_cluster` starts a cluster of three nodes by the same rules (:mod:`~voicelab.broker.cluster`).

Every broker voicelab starts binds to 127.0.0.1 only, keeps its ports across
``restart()`` and ``kill()`` + ``start()``, and is removed at interpreter exit
or, when its owner is killed, by a watchdog (:mod:`~voicelab.broker.reaper`).
:mod:`~voicelab.broker.base` holds what every backend shares,
:mod:`~voicelab.broker.engine` the Docker client, :mod:`~voicelab.broker.epmd` epmd.

Example::

    from voicelab.broker import start_broker
    with start_broker() as broker:
        with broker.connect() as connection:
            print(broker.backend, broker.version)
"""

from .base import (DEFAULT_IMAGE, HOW_TO_GET_A_BROKER, PORT_ATTEMPTS, Broker, BrokerControlError, BrokerError, BrokerUnavailable,
                   ConnectFailed, PortInUse, check_settings, free_port, is_live, mask_url, run_id, stop_all)
from .obtain import (BackendFallback, Backend, choose_backend, choose_cluster_backend, make_broker, may_fall_back,
                     own_broker, sharing, shared_broker, start_broker, start_cluster)
from .container import ContainerBroker, offline_image_help
from .engine import docker_engine, image_present
from .local import LocalBroker, find_rabbitmq_server
from .url import UrlBroker

__all__ = [
    "DEFAULT_IMAGE", "HOW_TO_GET_A_BROKER", "PORT_ATTEMPTS", "Backend", "BackendFallback", "Broker", "BrokerControlError",
    "BrokerError", "BrokerUnavailable", "ConnectFailed", "ContainerBroker", "LocalBroker", "PortInUse", "UrlBroker",
    "check_settings", "choose_backend", "docker_engine", "find_rabbitmq_server", "free_port", "image_present", "is_live",
    "make_broker", "mask_url", "run_id", "may_fall_back", "offline_image_help", "own_broker", "shared_broker", "sharing",
    "start_broker", "start_cluster", "choose_cluster_backend", "stop_all",
]
