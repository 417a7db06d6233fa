"""The watchdog of one timed experiment: destroy it when its time is up, whatever else runs.

``python -m crosszone.chaos.watchdog --uid U --run-dir D`` runs detached from the CLI that
created the experiment. Each :meth:`Watchdog.run_cycle` observes the experiment, destroys it once
``expires_at`` has passed, and says what it did; the process exits when the experiment is no
longer live (destroyed by it or by someone else). A failed destroy is retried a few times.
"""

from __future__ import annotations

import argparse
import sys
import time

from crosszone.chaos.experiments import LIVE, ExperimentRunner
from crosszone.errors import CrosszoneError, ExperimentNotFound

MAX_SLEEP_SECONDS = 1.0
MAX_FAILURES = 5


class Watchdog:
    def __init__(self, runner: ExperimentRunner, uid: str) -> None:
        self.runner = runner
        self.uid = uid
        self.done = False
        self.failures = 0

    def run_cycle(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        try:
            experiment = self.runner.store.get(self.uid)
        except ExperimentNotFound:
            self.done = True
            return f"experiment {self.uid} is no longer recorded; exiting"
        if experiment.status not in LIVE:
            self.done = True
            return f"experiment {self.uid} is {experiment.status}; exiting"
        if experiment.expires_at is None:
            self.done = True
            return f"experiment {self.uid} has no timeout; exiting"
        if now < experiment.expires_at:
            return f"experiment {self.uid} expires in {experiment.expires_at - now:.1f}s"
        try:
            self.runner.destroy(self.uid)
        except CrosszoneError as exc:
            self.failures += 1
            self.done = self.failures >= MAX_FAILURES
            return f"destroying {self.uid} failed ({self.failures}/{MAX_FAILURES}): {exc}"
        self.done = True
        return f"timeout {experiment.timeout:g}s reached: destroyed {self.uid}"

    def sleep_seconds(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        try:
            expires = self.runner.store.get(self.uid).expires_at
        except CrosszoneError:
            return 0.0
        if expires is None:
            return 0.0
        return max(0.05, min(MAX_SLEEP_SECONDS, expires - now))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosszone.chaos.watchdog")
    parser.add_argument("--uid", required=True)
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    watchdog = Watchdog(ExperimentRunner(args.run_dir), args.uid)
    last = ""
    while True:
        sentence = watchdog.run_cycle()
        if sentence.split(" expires in ")[0] != last:
            print(f"{time.strftime('%H:%M:%S')} watchdog: {sentence}", flush=True)
            last = sentence.split(" expires in ")[0]
        if watchdog.done:
            return 0 if watchdog.failures < MAX_FAILURES else 1
        time.sleep(watchdog.sleep_seconds())


if __name__ == "__main__":
    sys.exit(main())
