"""Soak: start and stop brokers of each backend N times in a row while another broker runs.

    python benchmarks/soak_broker_starts.py 30

Prints one line per start (seconds, or the error) and a summary per backend. Not a test: a report.
"""

from __future__ import annotations

import statistics
import sys
import time

from voicelab.broker import ContainerBroker, LocalBroker, docker_engine, find_rabbitmq_server


def soak(make, n: int) -> tuple[list[float], list[str]]:
    """Start, connect to and stop a fresh broker ``n`` times; the seconds of each success and each error."""
    times, errors = [], []
    for i in range(n):
        t0 = time.monotonic()
        try:
            with make().start() as broker, broker.connect():
                pass
            times.append(time.monotonic() - t0)
            print(f"  {i + 1:3d}: ok {times[-1]:.1f} s", flush=True)
        except Exception as e:  # a report: every failure is counted and shown
            errors.append(f"start {i + 1}: {type(e).__name__}: {str(e).splitlines()[0]}")
            print(f"  {errors[-1]}", flush=True)
    return times, errors


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    backends = []
    if docker_engine()[0]:
        backends.append(("container", ContainerBroker))
    if find_rabbitmq_server():
        backends.append(("local", LocalBroker))
    failed = 0
    with (ContainerBroker if backends[0][0] == "container" else LocalBroker)().start() as other:
        print(f"another broker runs meanwhile: {other.backend} RabbitMQ {other.version}")
        for name, cls in backends:
            print(f"{name}: {n} starts")
            times, errors = soak(cls, n)
            failed += len(errors)
            med = statistics.median(times) if times else float("nan")
            print(f"{name}: {len(times)}/{n} started, {len(errors)} failed; start+stop median {med:.1f} s, "
                  f"max {max(times, default=float('nan')):.1f} s")
            for e in errors:
                print("   ", e)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
