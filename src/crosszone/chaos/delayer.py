"""The userspace delayer behind ``chaos create network delay`` where tc netem is missing.

``python -m crosszone.chaos.delayer --uid U --time MS --offset MS --first-queue N`` binds the
first free NFQUEUE number from N, reports it on ``--ready-fd``, then holds every packet the
experiment's nft rules queue to it for ``time ± offset`` ms (uniform, like netem's jitter) before
accepting it. Packets leave in the order they came (a packet is never released before the one
queued ahead of it), so jitter does not reorder a TCP stream as plain netem jitter would.

Each iteration is one :meth:`Delayer.run_cycle`. On SIGTERM, or past ``--until`` (epoch
seconds), everything still held is accepted at once and the queue is unbound; the nft rule has
the bypass flag, so with no delayer bound packets simply pass.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import random
import select
import signal
import sys
import time

from crosszone.chaos.nfnetlink import PacketQueue
from crosszone.errors import ChaosError, NetlinkError

QUEUE_TRIES = 64


class Delayer:
    def __init__(self, queue: PacketQueue, delay_ms: float, offset_ms: float,
                 until: float | None = None, seed: int | None = None) -> None:
        self.queue = queue
        self.delay = delay_ms / 1000.0
        self.offset = offset_ms / 1000.0
        self.until = until
        self.random = random.Random(seed)
        self.held: collections.deque[tuple[float, int]] = collections.deque()
        self.last_release = 0.0
        self.stopping = False
        self.passed = 0

    def _hold_time(self) -> float:
        jitter = self.random.uniform(-self.offset, self.offset) if self.offset else 0.0
        return max(0.0, self.delay + jitter)

    def release_due(self, now: float) -> int:
        released = 0
        while self.held and (self.held[0][0] <= now or self.stopping):
            self.queue.accept(self.held.popleft()[1])
            released += 1
        self.passed += released
        return released

    def run_cycle(self, max_wait: float = 0.5) -> str:
        """Release what is due, then wait for new packets until the next release is due."""
        now = time.monotonic()
        if self.until is not None and time.time() >= self.until:
            self.stopping = True
        released = self.release_due(now)
        if self.stopping:
            return f"stopping: released {released} held packets at once"
        wait = max_wait if not self.held else max(0.0, min(max_wait, self.held[0][0] - now))
        queued = 0
        readable, _, _ = select.select([self.queue], [], [], wait)
        if readable:
            arrived = time.monotonic()
            for packet_id in self.queue.receive():
                release = max(arrived + self._hold_time(), self.last_release)
                self.last_release = release
                self.held.append((release, packet_id))
                queued += 1
        return f"released {released}, queued {queued}, holding {len(self.held)}"


def bind_first_free(first: int) -> PacketQueue:
    for number in range(first, first + QUEUE_TRIES):
        try:
            return PacketQueue(number)
        except NetlinkError as exc:
            if exc.code not in (errno.EBUSY, errno.EEXIST, errno.EPERM):
                raise
    raise ChaosError(f"no free NFQUEUE number in {first}..{first + QUEUE_TRIES - 1}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosszone.chaos.delayer")
    parser.add_argument("--uid", required=True)
    parser.add_argument("--time", type=float, required=True, help="delay in ms")
    parser.add_argument("--offset", type=float, default=0.0, help="uniform jitter in ms")
    parser.add_argument("--first-queue", type=int, default=31000)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--until", type=float, default=None, help="epoch seconds to stop at")
    args = parser.parse_args(argv)
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    try:
        queue = bind_first_free(args.first_queue)
    except ChaosError as exc:
        if ready is not None:
            ready.write(f"error {exc}\n")
            ready.close()
        print(f"delayer {args.uid}: {exc}", file=sys.stderr)
        return 1
    delayer = Delayer(queue, args.time, args.offset, args.until)

    def stop(_sig: int, _frame: object) -> None:
        delayer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready is not None:
        ready.write(f"queue {queue.queue_num}\n")
        ready.close()
    print(f"delayer {args.uid}: queue {queue.queue_num}, {args.time:g}±{args.offset:g} ms",
          flush=True)
    try:
        while True:
            sentence = delayer.run_cycle()
            if delayer.stopping:
                print(f"delayer {args.uid}: {sentence}; {delayer.passed} packets in all",
                      flush=True)
                break
    finally:
        delayer.release_due(float("inf"))
        queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
