"""``python -m voicelab``: check the machine, run a broker, look after a dead-letter queue, measure, build an image.

- ``doctor [--ensure] [--yes]``: what is available, which backend would be used and why.
  ``--ensure`` exits non-zero with what to install when no broker can be had; as root on
  Debian/Ubuntu it offers to install ``rabbitmq-server`` and asks first (``--yes``: without asking, for CI).
- ``broker [--backend B] [--image I]``: start a broker, print its AMQP and management URLs, stay up until Ctrl-C.
- ``dlq list|replay|purge QUEUE [--job ID ...] [--url URL] [--yes]``: the dead-letter queue of ``QUEUE``
  (``QUEUE.dlq``) on the broker at ``--url`` or ``VOICELAB_AMQP_URL``: what is in it and why,
  send messages back to ``QUEUE``, or empty it (``purge`` asks first; ``--yes`` does not).
- ``bench [--repeats N] [--scale S] [--csv PATH] [--backend B] [--image I]``: publish and consume rates
  on a broker it starts and stops, with repeats, ratios and their targets (see :mod:`voicelab.bench`).
- ``build-image SUITE TAG``: build a RabbitMQ image from Debian packages, no registry needed.
- ``--version``: voicelab's version (and pika's, Python's).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable

import pika
import pika.exceptions

from . import broker as vb

BUILD_SCRIPT = Path(__file__).parent / "data" / "build-rabbitmq-image.sh"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    """What ``--version`` prints: voicelab's version, then pika's and Python's.

    >>> version_line().startswith("voicelab ")
    True
    """
    return f"voicelab {_version('voicelab')} (pika {_version('pika')}, Python {platform.python_version()})"


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


def confirm(question: str, yes: bool = False) -> bool:
    """Ask ``question`` on the terminal; True only for an answer starting with y (or when ``yes``).

    No answer (stdin closed or not a terminal that answers) is a no: nothing is done unasked.

    >>> confirm("Delete everything?", yes=True)
    True
    """
    if yes:
        return True
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        print("\n(no answer: taken as no)", file=sys.stderr)
        return False
    return answer.strip().lower().startswith("y")


def doctor(ensure: bool = False, yes: bool = False) -> int:
    """Print what this machine offers; with ``ensure``, make sure a broker can be had.

    As root on Debian/Ubuntu, ``ensure`` offers to install ``rabbitmq-server`` with apt-get and asks
    first, unless ``yes``. Returns the exit status: 0 when a broker can be had, 1 when not.
    """
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
        if not confirm("-> install Debian's rabbitmq-server package now (apt-get install rabbitmq-server, about "
                       "10 s; voicelab starts private nodes from it, never the system service)?", yes):
            print("not installed (`python -m voicelab doctor --ensure --yes` installs without asking).\n"
                  f"To get a broker here: {install_advice()}\n{vb.HOW_TO_GET_A_BROKER}", file=sys.stderr)
            return 1
        print("-> installing Debian's rabbitmq-server package (apt-get install rabbitmq-server) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], env=env)
        if done.returncode == 0 and vb.find_rabbitmq_server():
            print("-> installed; voicelab will start a private node from it (the system service is not used)")
            return 0
    print(f"To get a broker here: {install_advice()}\n{vb.HOW_TO_GET_A_BROKER}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------
# Ctrl-C, SIGTERM and broker errors: handled here, the same way for every verb
# ---------------------------------------------------------------------------

BROKER_ERRORS = (vb.BrokerError, pika.exceptions.AMQPError, OSError)
"""What a verb may raise when the broker is unreachable, refuses, or goes away: one line, exit status 1."""


def describe_error(error: BaseException) -> str:
    """One line on what went wrong with the broker, from the exception (pika's own ``str()`` is often empty).

    >>> describe_error(pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'jobs.dlq' in vhost '/'"))
    "the broker refused: NOT_FOUND - no queue 'jobs.dlq' in vhost '/' (404)"
    """
    if isinstance(error, vb.BrokerError):
        return str(error)  # voicelab's own: already says what happened and what to try
    if isinstance(error, (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)):
        return f"the broker refused: {error.reply_text} ({error.reply_code})"
    detail = str(error) or ", ".join(str(a) for a in error.args)
    return " ".join(f"{type(error).__name__}: {detail}".split())


def run_verb(verb: Callable[[threading.Event], int], *, graceful: str | None = None,
             interrupted: str = "interrupted") -> int:
    """Run ``verb(stop)`` with Ctrl-C, SIGTERM and broker errors handled; return its exit status.

    SIGINT and SIGTERM handlers are installed here, not inherited (a shell starts
    background jobs with SIGINT ignored, and ``kill -INT`` must stop the verb all
    the same), and restored on return. Without ``graceful``, a signal raises
    ``KeyboardInterrupt`` at once. With ``graceful`` (what the verb does then,
    e.g. "stopping after the current case"), the first signal only sets ``stop``
    and says so, and the verb ends when it sees it: an exception thrown into pika
    or a thread pool at an arbitrary point can leave a lock held and hang the
    clean-up; a second signal raises at once. ``KeyboardInterrupt`` prints
    ``interrupted`` and returns 130; a broker error (:data:`BROKER_ERRORS`) prints
    one line and returns 1.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if graceful is None or stop.is_set():
            raise KeyboardInterrupt(name)
        stop.set()
        print(f"\n{name}: {graceful} (again to stop at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return verb(stop)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except BROKER_ERRORS as e:
        print(f"error: {describe_error(e)}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------
# The verbs
# ---------------------------------------------------------------------------

def run_broker(backend: str, image: str | None) -> int:
    """``python -m voicelab broker``: start a broker, print how to reach it, wait for Ctrl-C (or SIGTERM), clean up."""
    return run_verb(lambda stop: _serve_broker(backend, image), interrupted="interrupted; nothing left running")


def _serve_broker(backend: str, image: str | None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vb.BackendFallback)  # printed below, once
        broker = vb.start_broker(backend, image)  # type: ignore[arg-type]
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


def bench(backend: str = "auto", image: str | None = None, repeats: int = 3, scale: float | None = None,
          csv: str | None = None) -> int:
    """``python -m voicelab bench``: start a broker, run :func:`voicelab.bench.run_bench`, print the report.

    Ctrl-C (or SIGTERM) ends the run after the case in progress (seconds) and
    stops the broker; a second one interrupts at once (see :func:`run_verb`).
    Returns the exit status: 0, 1 when no broker could be had, 2 on a wrong
    argument, 130 when interrupted.
    """
    from .bench import check_repeats, sizes

    try:
        sizes(scale)
        check_repeats(repeats)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_verb(lambda stop: _bench(backend, image, repeats, scale, csv, stop),
                    graceful="stopping after the current case", interrupted="interrupted; the broker is stopped")


def _bench(backend: str, image: str | None, repeats: int, scale: float | None, csv: str | None,
           stop: threading.Event) -> int:
    from .bench import CASES, format_report, report_header, run_bench, write_csv
    from .lab.measure import broker_caption

    load_before = os.getloadavg()[0]
    with vb.start_broker(backend, image) as broker:  # type: ignore[arg-type]
        if not stop.is_set():
            print(f"voicelab bench on {broker_caption(broker)}", flush=True)
        t0 = time.monotonic()
        runs = run_bench(broker, repeats=repeats, scale=scale, show_progress=True, stop=stop)
        minutes = (time.monotonic() - t0) / 60
    if stop.is_set():
        print(f"interrupted after {len(runs)} of {repeats * len(CASES)} measurements; the broker is stopped",
              file=sys.stderr)
        return 130
    print(format_report(runs, report_header(runs, minutes, load_before)))
    if csv:
        print(f"\nwrote {write_csv(runs, csv)} ({len(runs)} rows; load it with voicelab.bench.read_csv)")
    return 0


DLQ_ACTIONS = ("list", "replay", "purge")


def dlq(action: str, queue: str, url: str, jobs: list[str] | None = None, yes: bool = False) -> int:
    """``python -m voicelab dlq ACTION QUEUE``: list, replay or purge the DLQ of ``queue`` on the broker at ``url``.

    ``queue`` is the work queue or its DLQ (``QUEUE.dlq``). A broker that cannot
    be reached, or a DLQ that does not exist, is one line on stderr and exit status 1.
    ``purge`` says how many messages it would delete and asks first, unless ``yes``;
    without a yes it deletes nothing and returns 1.
    """
    if action not in DLQ_ACTIONS:
        raise ValueError(f"action must be one of {DLQ_ACTIONS}, got {action!r}")
    if not queue or not isinstance(queue, str):
        raise ValueError(f"queue must be a non-empty name, got {queue!r}")
    return run_verb(lambda stop: _dlq(action, queue, url, jobs, yes))


def _dlq(action: str, queue: str, url: str, jobs: list[str] | None, yes: bool = False) -> int:
    from .broker.base import explain_connect_error
    from .deadletters import dead_letter_frame, list_dead_letters, purge, replay
    from .queues import dlq_name

    dead = dlq_name(queue.removesuffix(".dlq"))
    vb.UrlBroker(url)  # raises BrokerError saying so if url is not an AMQP URL
    params = pika.URLParameters(url)  # (keeps amqps and the URL's options)
    try:
        connection = pika.BlockingConnection(params)
    except (pika.exceptions.AMQPConnectionError, OSError) as e:
        raise vb.ConnectFailed(f"{explain_connect_error(e, params)} [{vb.mask_url(url)}]") from e
    with connection:
        channel = connection.channel()
        if action == "list":
            frame = dead_letter_frame(list_dead_letters(channel, queue))
            if not frame.empty:
                print(frame.to_string(index=False))
            print(f"{len(frame)} message(s) in {dead}" if len(frame) else f"{dead} is empty")
        elif action == "replay":
            print(f"replayed {replay(channel, queue, jobs or None)} message(s) from {dead}")
        else:
            waiting = int(channel.queue_declare(dead, passive=True).method.message_count)  # 404 if missing
            if waiting and not confirm(f"delete the {waiting} message(s) in {dead} for good?", yes):
                print(f"not purged: {dead} keeps its messages (--yes purges without asking)", file=sys.stderr)
                return 1
            print(f"purged {purge(channel, queue)} message(s) from {dead}")
    return 0


def build_image(suite: str, tag: str) -> int:
    """Run the packaged image build script."""
    return subprocess.run(["bash", str(BUILD_SCRIPT), suite, tag]).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicelab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="what is available and which backend would be used")
    d.add_argument("--ensure", action="store_true", help="fail when no broker can be had (as root on Debian: "
                   "offer to install rabbitmq-server, asking first)")
    d.add_argument("--yes", action="store_true", help="with --ensure: install without asking (CI)")
    b = sub.add_parser("broker", help="start a broker and keep it up until Ctrl-C")
    b.add_argument("--backend", default="auto", choices=["auto", "url", "container", "local"])
    b.add_argument("--image", default=None, help="Docker image (default: $VOICELAB_RABBITMQ_IMAGE or "
                                                  f"{vb.DEFAULT_IMAGE})")
    i = sub.add_parser("build-image", help="build a RabbitMQ image from Debian packages (root, debootstrap)")
    i.add_argument("suite", choices=["bookworm", "trixie", "sid"], help="bookworm=3.10, trixie=4.0, sid=4.3")
    i.add_argument("tag", help="image tag, e.g. voicelab/rabbitmq:4.0")
    q = sub.add_parser("dlq", help="list, replay or purge the dead-letter queue QUEUE.dlq")
    q.add_argument("action", choices=DLQ_ACTIONS)
    q.add_argument("queue", help="the work queue (or its .dlq)")
    q.add_argument("--job", action="append", help="replay only this job id (repeat for several)")
    q.add_argument("--url", default=os.environ.get("VOICELAB_AMQP_URL"), help="AMQP URL "
                   "(default: $VOICELAB_AMQP_URL)")
    q.add_argument("--yes", action="store_true", help="purge without asking")
    n = sub.add_parser("bench", help="publish/consume rates with repeats and ratios on a broker it starts")
    n.add_argument("--backend", default="auto", choices=["auto", "url", "container", "local"])
    n.add_argument("--image", default=None, help="Docker image (default: $VOICELAB_RABBITMQ_IMAGE or "
                                                  f"{vb.DEFAULT_IMAGE})")
    n.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every case (default 3)")
    n.add_argument("--scale", type=float, default=None, help="run-size multiplier (default: $VOICELAB_SCALE or 1)")
    n.add_argument("--csv", default=None, metavar="PATH", help="also write one row per measurement to PATH")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench(args.backend, args.image, args.repeats, args.scale, args.csv)
    if args.command == "doctor":
        return doctor(args.ensure, args.yes)
    if args.command == "broker":
        return run_broker(args.backend, args.image)
    if args.command == "dlq":
        if not args.url:
            print("error: dlq needs a broker: pass --url amqp://... or set VOICELAB_AMQP_URL", file=sys.stderr)
            return 2
        return dlq(args.action, args.queue, args.url, args.job, args.yes)
    return build_image(args.suite, args.tag)
