"""voicelab: a hands-on course in message queues with RabbitMQ, and the small library its notebooks use.

Modules, one concept each:

- :mod:`voicelab.broker`: a real RabbitMQ (existing URL, Docker container or private node)
- :mod:`voicelab.jobs`: the running example, voice jobs with a blob store and real signal work
- :mod:`voicelab.queues`: declaring durable job queues with a dead-letter queue, publishing jobs
- :mod:`voicelab.uploads`: the blocking and the queued upload handler
- :mod:`voicelab.worker`: a worker that drains a queue, acking only finished work
- :mod:`voicelab.routing`, :mod:`voicelab.throughput`, :mod:`voicelab.acks`, :mod:`voicelab.fairness`,
  :mod:`voicelab.concurrency`, :mod:`voicelab.fleet`, :mod:`voicelab.heartbeats`: the lessons of notebooks 01-04
- :mod:`voicelab.publishing` (confirms, a reliable publisher) and :mod:`voicelab.durability`: notebook 05
- :mod:`voicelab.guide_patterns`: the source guide's broken patterns, as written, run to watch them fail
- :mod:`voicelab.management`: the broker's HTTP API
- :mod:`voicelab.measure`: run sizes, repeated timings, honest plots
- :mod:`voicelab.exercises`: auto-checked exercises

Example::

    from voicelab.broker import start_broker
    with start_broker() as broker:
        print(broker.version)
"""

__version__ = "0.1.0"
