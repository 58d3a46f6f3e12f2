"""voicelab: a hands-on course in message queues with RabbitMQ, and the small library its notebooks use.

The library, one concept a module, is what you copy into your own work:

- :mod:`voicelab.broker`: a real RabbitMQ (an existing URL, a Docker container or a private node)
- :mod:`voicelab.jobs`: the running example, voice jobs with a blob store and real signal work
- :mod:`voicelab.queues`: durable job queues with a dead-letter queue, publishing jobs, queue chores
- :mod:`voicelab.uploads`: the blocking and the queued upload handler
- :mod:`voicelab.worker`: a worker that drains a queue, acking only finished work
- :mod:`voicelab.consumers`: :class:`~voicelab.consumers.ThreadPoolConsumer`, a pool that acks from the right thread
- :mod:`voicelab.publishing`: publisher confirms and :class:`~voicelab.publishing.ReliablePublisher`
- :mod:`voicelab.retry`: retry policies that count (republish, delayed tiers, quorum delivery limits)
- :mod:`voicelab.deadletters`: list, replay and purge a dead-letter queue
- :mod:`voicelab.reconnect`: a consumer that reconnects with backoff, idempotent results
- :mod:`voicelab.management`: the broker's HTTP API
- :mod:`voicelab.monitoring`: a queue seen three ways (passive declare, management API, Prometheus)
- :mod:`voicelab.health`: consumer health judged by progress; the broker's health checks
- :mod:`voicelab.alerts`: alert rules evaluated on samples
- :mod:`voicelab.pipeline`: the capstone service (uploads, a worker fleet, status and results)

The lab, :mod:`voicelab.lab`, holds each notebook's experiments (crash demos, sweeps, chaos, the
source guide's broken patterns) and their plots. :mod:`voicelab.exercises` checks the notebooks'
exercises, :mod:`voicelab.bench` measures the library, :mod:`voicelab.cli` is ``python -m voicelab``.

Example::

    from voicelab.broker import start_broker
    with start_broker() as broker:
        print(broker.version)
"""

__version__ = "0.1.0"
