"""``python -m voicelab``: check the machine, run a broker, build an offline broker image.

- ``doctor [--ensure]``: what is available, which backend would be used and why.
  ``--ensure`` exits non-zero with what to install when no broker can be had
  (as root on Debian/Ubuntu it installs ``rabbitmq-server`` itself and says so).
- ``broker [--backend B] [--image I]``: start a broker, print its URLs, stay up until Ctrl-C.
- ``build-image SUITE TAG``: build a RabbitMQ image from Debian packages, no registry needed.
- ``dlq list|replay|purge QUEUE [--job ID ...] [--url URL]``: the dead-letter queue of ``QUEUE``
  (``QUEUE.dlq``) on the broker at ``--url`` or ``VOICELAB_AMQP_URL``: what is in it and why,
  send messages back to ``QUEUE``, or empty it.
- ``bench [--repeats N] [--scale S] [--csv PATH] [--backend B] [--image I]``: publish and consume rates
  on a broker it starts and stops, with repeats, ratios and their targets (see :mod:`voicelab.bench`).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

from . import broker as vb

BUILD_SCRIPT = Path(__file__).parent / "data" / "build-rabbitmq-image.sh"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def install_advice() -> str:
    """What to install on this OS to get a broker."""
    system = platform.system()
    if system == "Darwin":
        return "brew install rabbitmq    (or install Docker Desktop and start it)"
    if system == "Windows":
        return "install Docker Desktop and start it (or set VOICELAB_AMQP_URL to a broker you have)"
    if Path("/etc/debian_version").exists():
        return "sudo apt-get install rabbitmq-server    (or: sudo apt-get install docker.io && sudo dockerd &)"
    if shutil.which("dnf"):
        return "sudo dnf install rabbitmq-server    (or install and start Docker)"
    return "install Docker, or rabbitmq-server from your package manager or conda-forge"


def doctor(ensure: bool = False) -> int:
    """Print what this machine offers; with ``ensure``, make sure a broker can be had."""
    print(f"voicelab doctor: Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} cores")
    for pkg in ("pika", "testcontainers", "docker", "requests"):
        print(f"  {pkg:15s} {_version(pkg)}")
    url = os.environ.get("VOICELAB_AMQP_URL")
    print(f"1. VOICELAB_AMQP_URL: {vb.mask_url(url) if url else 'not set'}")
    ok, detail = vb.docker_engine()
    image = os.environ.get("VOICELAB_RABBITMQ_IMAGE") or vb.DEFAULT_IMAGE
    print(f"2. Docker engine: {'version ' + detail if ok else detail}")
    present = ok and vb.image_present(image)
    if ok:
        print(f"   image {image}: {'present' if present else 'not present locally: it must be pulled from a registry'}")
    server = vb.find_rabbitmq_server()
    print(f"3. rabbitmq-server: {server or 'not found'}")
    backend, why = vb.choose_backend()
    if backend == "container" and not present and vb.may_fall_back():
        print(f"-> voicelab will try: container ({why}); if Docker cannot pull {image}, it uses the local "
              f"rabbitmq-server at {server} instead and says so")
        return 0
    if backend != "none":
        print(f"-> voicelab will use: {backend} ({why})")
        return 0
    print(f"-> no broker can be had: {why}")
    if not ensure:
        print(vb.HOW_TO_GET_A_BROKER)
        return 0
    if Path("/etc/debian_version").exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        print("-> installing Debian's rabbitmq-server package (apt-get install rabbitmq-server) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], env=env)
        if done.returncode == 0 and vb.find_rabbitmq_server():
            print("-> installed; voicelab will start a private node from it (the system service is not used)")
            return 0
    print(f"To get a broker here: {install_advice()}\n{vb.HOW_TO_GET_A_BROKER}", file=sys.stderr)
    return 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_broker(backend: str, image: str | None) -> int:
    """Start a broker, print how to reach it, wait for Ctrl-C (or SIGTERM), then clean up.

    The handlers are installed here, not inherited: a shell starts background jobs
    with SIGINT ignored, and ``kill -INT`` must stop this broker all the same.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vb.BackendFallback)  # printed below, once
            broker = vb.start_broker(backend, image)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print("interrupted while starting; nothing left running", file=sys.stderr)
        return 130
    except vb.BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if broker.notice:
            print(f"note: {broker.notice}")
        print(f"RabbitMQ {broker.version} ({broker.backend})")
        print(f"AMQP URL:        {broker.amqp_url}")
        print(f"Management UI:   {broker.management_url or 'unknown'}  (user {broker.username}, "
              f"password {broker.password})")
        if broker.prometheus_url:
            print(f"Prometheus:      {broker.prometheus_url}")
        print(f"Use it from notebooks:  export VOICELAB_AMQP_URL='{broker.amqp_url}'")
        print("Press Ctrl-C to stop it.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
        print("broker stopped and removed", flush=True)
    return 0


def build_image(suite: str, tag: str) -> int:
    """Run the packaged image build script."""
    return subprocess.run(["bash", str(BUILD_SCRIPT), suite, tag]).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicelab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="what is available and which backend would be used")
    d.add_argument("--ensure", action="store_true", help="fail (or install, as root on Debian) when no broker")
    b = sub.add_parser("broker", help="start a broker and keep it up until Ctrl-C")
    b.add_argument("--backend", default="auto", choices=["auto", "url", "container", "local"])
    b.add_argument("--image", default=None, help="Docker image (default: $VOICELAB_RABBITMQ_IMAGE or "
                                                  f"{vb.DEFAULT_IMAGE})")
    i = sub.add_parser("build-image", help="build a RabbitMQ image from Debian packages (root, debootstrap)")
    i.add_argument("suite", choices=["bookworm", "trixie", "sid"], help="bookworm=3.10, trixie=4.0, sid=4.3")
    i.add_argument("tag", help="image tag, e.g. voicelab/rabbitmq:4.0")
    q = sub.add_parser("dlq", help="list, replay or purge the dead-letter queue QUEUE.dlq")
    q.add_argument("action", choices=["list", "replay", "purge"])
    q.add_argument("queue", help="the work queue (or its .dlq)")
    q.add_argument("--job", action="append", help="replay only this job id (repeat for several)")
    q.add_argument("--url", default=os.environ.get("VOICELAB_AMQP_URL"), help="AMQP URL "
                   "(default: $VOICELAB_AMQP_URL)")
    n = sub.add_parser("bench", help="publish/consume rates with repeats and ratios on a broker it starts")
    n.add_argument("--backend", default="auto", choices=["auto", "url", "container", "local"])
    n.add_argument("--image", default=None, help="Docker image (default: $VOICELAB_RABBITMQ_IMAGE or "
                                                  f"{vb.DEFAULT_IMAGE})")
    n.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every case (default 3)")
    n.add_argument("--scale", type=float, default=None, help="run-size multiplier (default: $VOICELAB_SCALE or 1)")
    n.add_argument("--csv", default=None, metavar="PATH", help="also write one row per measurement to PATH")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench import cli as bench_cli
        return bench_cli(args.backend, args.image, args.repeats, args.scale, args.csv)
    if args.command == "doctor":
        return doctor(args.ensure)
    if args.command == "broker":
        return run_broker(args.backend, args.image)
    if args.command == "dlq":
        if not args.url:
            print("error: dlq needs a broker: pass --url amqp://... or set VOICELAB_AMQP_URL", file=sys.stderr)
            return 2
        from .deadletters import cli as dlq_cli
        return dlq_cli(args.action, args.queue, args.url, args.job)
    return build_image(args.suite, args.tag)
