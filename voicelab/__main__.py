"""Command line: ``python -m voicelab VERB`` (or ``voicelab VERB``); ``--help`` after a verb says more.

- ``doctor [--ensure] [--yes]``: what this machine offers and which broker voicelab would use
- ``broker``: start a broker, print its AMQP URL and management UI (login guest/guest), keep it up until Ctrl-C
- ``dlq list|replay|purge QUEUE``: the dead-letter queue ``QUEUE.dlq`` of a broker (``purge`` asks first)
- ``bench``: publish and consume rates of the library, on a broker it starts
- ``build-image SUITE TAG``: a RabbitMQ image from Debian packages, for Docker without a registry
- ``--version``

See :mod:`voicelab.cli`.
"""

from .cli import main

raise SystemExit(main())
