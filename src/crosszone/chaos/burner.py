"""One CPU burner of ``chaos create cpu fullload``: join the experiment's cgroup, then spin.

``python -m crosszone.chaos.burner --uid U --cgroup DIR [--until EPOCH]``. The cgroup's CFS
quota, not the burner, sets how much CPU it gets. It stops by itself at ``--until`` (the
experiment's timeout plus a grace), so a burner outlives its experiment by seconds at most even
if nothing destroys it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def burn(until: float | None) -> None:
    while until is None or time.time() < until:
        for _ in range(20_000):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosszone.chaos.burner")
    parser.add_argument("--uid", required=True)
    parser.add_argument("--cgroup", required=True)
    parser.add_argument("--until", type=float, default=None)
    args = parser.parse_args(argv)
    try:
        (Path(args.cgroup) / "cgroup.procs").write_text("0\n")
    except OSError as exc:
        print(f"burner {args.uid}: cannot join {args.cgroup}: {exc}", file=sys.stderr)
        return 1
    burn(args.until)
    return 0


if __name__ == "__main__":
    sys.exit(main())
