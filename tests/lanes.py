"""Run the suite in lanes: pytest runs side by side, each with its own brokers, then the ones that run alone.

    python tests/lanes.py                      # what `make test` runs
    python tests/lanes.py --workers 2          # units on two pytest-xdist workers

Stage 1 runs together: the unit tests (pytest-xdist workers) and the notebooks whose claims are counts,
outcomes and ratios of two runs made side by side (a message lost or kept, a retry that counts, a job
accounted for, batched acks or confirms against one at a time): they must hold on a busy machine, and running
them beside the units shows that they do (.ci/run runs 02 and 09 beside them on local nodes). Stage 2
runs without the units the notebooks whose claims rest on rates and staleness (01 and 03 throughput against
prefetch beside 07 monitoring figures and drain predictions), stage 3 the one about cores (04, threads and
processes against cores) with the machine to itself.
Each lane gets its own ``VOICELAB_RUN_ID``, so that its leak check counts its own brokers only. A lane's
output goes to ``.lanes/<name>.log`` and is printed when the lane ends; the last line adds the lanes up.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# counts, outcomes, ratios shown to hold on a busy machine: two lanes of about equal length
SHARED = (("05", "08", "00"), ("02", "09", "06", "06b", "10"))
# absolute rates, cores, staleness: measured without the units beside them. 07 (statistics' staleness, drains
# sized from rates it measures, alert scenarios sized from its consumers' rate) beside 01 and 03 (rates compared
# within each run); then 04 (threads and processes against the cores) with the machine to itself.
ALONE = (("01", "03"), ("07",))
CORES_ALONE = ("04",)
# also on the oldest image (3.10): 10 accounts and TLS (.ci/run runs 02 and 09 on local 3.10 nodes; 05's facts on
# 3.10 are test_durability's and test_publishing's, on every image)
OLDEST = ("10",)
COUNTS = ("passed", "failed", "errors", "skipped")


@dataclass
class Lane:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)   # on top of this process's environment
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    _timer: threading.Thread | None = None

    @property
    def log(self) -> Path:
        return ROOT / ".lanes" / f"{self.name}.log"

    def start(self, run_id: str) -> None:
        self.log.parent.mkdir(exist_ok=True)
        env = {**os.environ, **self.env, "VOICELAB_RUN_ID": f"{run_id}{self.name.replace('-', '')}"}
        env.pop("VOICELAB_AMQP_URL", None)  # each lane starts its own brokers
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "pytest", *self.args], cwd=ROOT, env=env,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self._timer = threading.Thread(target=self._time, daemon=True)   # the lane's own end, not its wait()'s
        self._timer.start()

    def _time(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        self.seconds = time.monotonic() - self.started

    def wait(self) -> int:
        assert self.proc is not None
        code = self.proc.wait()
        if self._timer is not None:
            self._timer.join()
        text = self.log.read_text(errors="replace")
        print(f"\n{'=' * 30} lane {self.name}: {self.seconds:.0f} s, exit {code} {'=' * 30}", flush=True)
        print(text, flush=True)
        self.counts = counts(text, code)
        return code if code != 5 else 0   # 5: nothing collected (an empty lane) is not a failure


def counts(text: str, code: int = 0) -> dict[str, int]:
    """Passed, failed, errors and skipped from a pytest log's last summary line; a failing exit code with
    no failure counted (a leak check, a crash before the summary) counts as one failure."""
    last = [line for line in text.splitlines() if re.search(r"\b(passed|failed|error)", line)]
    summary = last[-1] if last else ""
    found = {k: int(m.group(1)) for k in COUNTS
             if (m := re.search(rf"(\d+) {k if k != 'errors' else 'errors?'}\b", summary))}
    if code not in (0, 5) and not found.get("failed") and not found.get("errors"):
        found["failed"] = 1
    return found


def total_line(parts: list[dict[str, int]]) -> str:
    """The closing line CI reads: ``N passed, N failed, N skipped`` over every lane."""
    total = {k: sum(part.get(k, 0) for part in parts) for k in COUNTS}
    return f"{total['passed']} passed, {total['failed'] + total['errors']} failed, {total['skipped']} skipped"


def notebooks(prefixes: tuple[str, ...]) -> list[str]:
    return [str(p.relative_to(ROOT)) for n in prefixes for p in sorted((ROOT / "notebooks").glob(f"{n}_*.ipynb"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=int(os.environ.get("TEST_WORKERS", "4")))
    p.add_argument("--add", nargs="+", metavar="LOG:EXIT", help="only print the closing line over these pytest "
                   "logs, each with its exit code (how .ci/run adds its own lane to make test's)")
    a = p.parse_args(argv)
    if a.add:
        logs = [item.rsplit(":", 1) for item in a.add]
        print(total_line([counts(Path(log).read_text(errors="replace"), int(code)) for log, code in logs]))
        return 0
    run_id = os.environ.get("VOICELAB_RUN_ID") or uuid.uuid4().hex[:8]
    t0 = time.monotonic()
    stage1 = [Lane("units", ["-n", str(a.workers), "--dist", "loadfile", "tests"]),
              *[Lane(f"notebooks-shared-{i + 1}", notebooks(part)) for i, part in enumerate(SHARED)]]
    images = [i for i in os.environ.get("VOICELAB_TEST_IMAGES", "").split(",") if i]
    if len(images) > 1:   # the newest image runs them in notebooks-shared
        stage1.append(Lane("notebooks-oldest", notebooks(OLDEST), env={"VOICELAB_RABBITMQ_IMAGE": images[0]}))
    stage2 = [Lane(f"notebooks-alone-{i + 1}", notebooks(part)) for i, part in enumerate(ALONE)]
    stage3 = [Lane("notebooks-cores", notebooks(CORES_ALONE))]
    codes = []
    for stage in (stage1, stage2, stage3):
        for lane in stage:
            lane.start(run_id)
        codes += [lane.wait() for lane in stage]
    lanes = stage1 + stage2 + stage3
    print("\n" + "; ".join(f"{lane.name} {lane.seconds:.0f} s" for lane in lanes)
          + f"; total {time.monotonic() - t0:.0f} s")
    print(total_line([lane.counts for lane in lanes]))
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
