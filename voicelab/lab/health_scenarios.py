"""Notebook 07's health scenarios: an idle, a busy, a stuck and a dead consumer, judged two ways.

:func:`health_scenarios` stages each on the broker and asks both the guide's check
(:class:`voicelab.lab.guide_patterns.GuideHealthyConsumer`) and :func:`voicelab.health.judge`.

Example::

    table = health_scenarios(broker)    # one row per scenario: the guide's verdict and judge's
"""

from __future__ import annotations

import threading
import time

import pandas as pd

from ..broker import Broker
from ..health import WatchedConsumer, judge
from ..monitoring import passive_view
from ..queues import publish_bodies, reset_queue
from .guide_patterns import GuideHealthyConsumer


def health_scenarios(broker: Broker, queue: str = "health_demo", window_s: float = 1.0, pile: int = 20,
                     max_job_s: float = 0.3) -> pd.DataFrame:
    """The guide's check and :func:`judge` on (1) an idle, healthy consumer on an empty queue, checked
    ``1.3 * window_s`` after it started, and (2) a consumer stuck inside its first job while ``pile``
    messages arrive, checked ``0.6 * window_s`` into the job. ``window_s`` stands for the guide's 300 s.
    One row per scenario: what each check says, the queue as the passive declare read it, and what the
    consumer did next, measured, which says which check was right:

    - ``probe done in s``: once judged, the idle consumer is sent one job: seconds until it finished it
      (NaN if it never did, 2 s at most): a dead consumer never does it;
    - ``ready later`` and ``done later``: the queue's ready messages and the jobs the consumer finished
      ``0.5 * window_s`` after the check: a consumer that works takes the waiting jobs.
    """

    rows = []
    with broker.connect() as connection:
        channel = connection.channel()
        # 1. idle: nothing to do, and nothing wrong
        reset_queue(channel, queue)
        guide = GuideHealthyConsumer(window_s=window_s)
        with WatchedConsumer(broker, queue, guide.process_message) as consumer:
            time.sleep(1.3 * window_s)
            depth = passive_view(channel, queue)
            verdict = judge(consumer.state(), depth, max_job_s=max_job_s)
            row = {"scenario": "idle consumer, empty queue", "guide says healthy": guide.health_check(),
                   "voicelab says healthy": verdict.healthy, "voicelab's reason": verdict.reason, **depth}
            sent, done = time.monotonic(), consumer.state().done
            publish_bodies(channel, queue, [{"job": "probe"}])
            while consumer.state().done == done and time.monotonic() - sent < 2.0:
                time.sleep(0.005)
            finished = consumer.state().last_done
            row["probe done in s"] = finished - sent if consumer.state().done > done and finished else float("nan")
            rows.append(row)
        # 2. stuck: one job never ends while work piles up
        reset_queue(channel, queue)
        release = threading.Event()
        guide = GuideHealthyConsumer(process_job=lambda job: release.wait(30), window_s=window_s)
        consumer = WatchedConsumer(broker, queue, guide.process_message).start()
        try:
            publish_bodies(channel, queue, [{"job": 0}])
            deadline = time.monotonic() + 5
            while consumer.state().job_started is None and time.monotonic() < deadline:
                time.sleep(0.01)
            started = consumer.state().job_started
            if started is None:
                raise TimeoutError("the consumer never received its first job")
            publish_bodies(channel, queue, [{"job": i} for i in range(1, pile + 1)])
            time.sleep(max(0.0, started + 0.6 * window_s - time.monotonic()))
            depth = passive_view(channel, queue)
            verdict = judge(consumer.state(), depth, max_job_s=max_job_s)
            row = {"scenario": "consumer stuck in a job", "guide says healthy": guide.health_check(),
                   "voicelab says healthy": verdict.healthy, "voicelab's reason": verdict.reason, **depth}
            done = consumer.state().done
            time.sleep(0.5 * window_s)
            row["ready later"] = passive_view(channel, queue)["ready"]
            row["done later"] = consumer.state().done - done
            rows.append(row)
        finally:
            release.set()
            consumer.stop()
        channel.queue_delete(queue)
    return pd.DataFrame(rows).set_index("scenario")


