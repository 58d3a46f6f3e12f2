"""Run the suite in lanes: pytest runs side by side, each with its own brokers, then the ones that run alone.

    python tests/lanes.py                      # what `make test` runs
    python tests/lanes.py --workers 2          # units on two pytest-xdist workers

Stage 1 runs together: the unit tests (pytest-xdist workers) and the notebooks whose claims are counts,
outcomes and ratios of two runs made side by side (a message lost or kept, a retry that counts, a job
accounted for, batched acks or confirms against one at a time): they must hold on a busy machine, and running
them beside the units shows that they do (02 and 05 also run beside the units on the local node in CI). Stage 2
runs alone: the notebooks whose claims rest on absolute rates, cores and staleness (throughput against
prefetch, threads and processes against cores, monitoring figures and drain predictions).
Each lane gets its own ``VOICELAB_RUN_ID``, so that its leak check counts its own brokers only. A lane's
output goes to ``.lanes/<name>.log`` and is printed when the lane ends; the last line adds the lanes up.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("00", "02", "05", "06", "08")      # counts, outcomes, ratios shown to hold on a busy machine
ALONE = ("01", "03", "04", "07")              # absolute rates, cores, staleness: measured alone
COUNTS = ("passed", "failed", "errors", "skipped")


@dataclass
class Lane:
    name: str
    args: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return ROOT / ".lanes" / f"{self.name}.log"

    def start(self, run_id: str) -> None:
        self.log.parent.mkdir(exist_ok=True)
        env = {**os.environ, "VOICELAB_RUN_ID": f"{run_id}{self.name.replace('-', '')}"}
        env.pop("VOICELAB_AMQP_URL", None)  # each lane starts its own brokers
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "pytest", *self.args], cwd=ROOT, env=env,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def wait(self) -> int:
        assert self.proc is not None
        code = self.proc.wait()
        self.seconds = time.monotonic() - self.started
        text = self.log.read_text(errors="replace")
        print(f"\n{'=' * 30} lane {self.name}: {self.seconds:.0f} s, exit {code} {'=' * 30}", flush=True)
        print(text, flush=True)
        last = [line for line in text.splitlines() if re.search(r"\b(passed|failed|error)", line)]
        summary = last[-1] if last else ""
        self.counts = {k: int(m.group(1)) for k in COUNTS
                       if (m := re.search(rf"(\d+) {k if k != 'errors' else 'errors?'}\b", summary))}
        return code if code != 5 else 0   # 5: nothing collected (an empty lane) is not a failure


def notebooks(prefixes: tuple[str, ...]) -> list[str]:
    found = [str(p.relative_to(ROOT)) for n in prefixes for p in sorted((ROOT / "notebooks").glob(f"{n}_*.ipynb"))]
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=int(os.environ.get("TEST_WORKERS", "4")))
    a = p.parse_args(argv)
    run_id = os.environ.get("VOICELAB_RUN_ID") or uuid.uuid4().hex[:8]
    t0 = time.monotonic()
    stage1 = [Lane("units", ["-n", str(a.workers), "--dist", "loadfile", "tests"]),
              Lane("notebooks-shared", notebooks(SHARED))]
    stage2 = [Lane("notebooks-alone", notebooks(ALONE))]
    codes = []
    for stage in (stage1, stage2):
        for lane in stage:
            lane.start(run_id)
        codes += [lane.wait() for lane in stage]
    lanes = stage1 + stage2
    total = {k: sum(lane.counts.get(k, 0) for lane in lanes) for k in COUNTS}
    print("\n" + "; ".join(f"{lane.name} {lane.seconds:.0f} s" for lane in lanes)
          + f"; total {time.monotonic() - t0:.0f} s")
    print(f"{total['passed']} passed, {total['failed'] + total['errors']} failed, {total['skipped']} skipped")
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
