"""The lab: each notebook's experiments, staged on a real broker, measured and plotted.

The library (``voicelab.*``) is what you reuse; the lab is how the course shows it works. Lab modules
import the library and pandas/matplotlib; no library module imports the lab.

- 00-01: :mod:`~voicelab.lab.measure` (run sizes, timings, honest plots), :mod:`~voicelab.lab.throughput`,
  :mod:`~voicelab.lab.routing`
- 02 acknowledgements: :mod:`~voicelab.lab.acks` (crash demos, forgotten acks, consumer timeouts)
- 03 prefetch: :mod:`~voicelab.lab.prefetch` (uneven jobs shared among consumers)
- 04 concurrency: :mod:`~voicelab.lab.fleet` (process fleets, cores), :mod:`~voicelab.lab.heartbeats`
- 05 durability: :mod:`~voicelab.lab.durability` (what survives restart and kill, costs of confirms)
- 06 retries: :mod:`~voicelab.lab.retries`
- 06b surviving failures: :mod:`~voicelab.lab.faults`, :mod:`~voicelab.lab.bad_input`
- 07 monitoring: :mod:`~voicelab.lab.backlog`, :mod:`~voicelab.lab.alert_scenarios`,
  :mod:`~voicelab.lab.health_scenarios`, :mod:`~voicelab.lab.workload` (a paced publisher, timed consumers)
- 08 capstone: :mod:`~voicelab.lab.chaos` (the drill), :mod:`~voicelab.lab.chaos_report` (its accounting and dashboard)
- 01, 05: :mod:`~voicelab.lab.deprecations` (the guide's deprecated declarations, per RabbitMQ version)
- every chapter: :mod:`~voicelab.lab.guide_patterns`, the source guide's broken code, run to watch it fail
"""
