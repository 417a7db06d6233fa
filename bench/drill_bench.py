"""The seed's two chaos experiments at full length (issue 5): their drill reports, as measured.

``drills/seed-network-loss.yaml`` (zone us-west-2a loses 100 % of its packets for 300 s) and
``drills/seed-cpu-fullload.yaml`` (4 burners at full load in us-west-2b for 180 s), each on a
fresh local stack of the built-in topology moved to 127.0.194-196.0/24 (LB 127.0.0.194), judged
by their own SLOs. Needs root (nftables, cgroups). Run: ``python -m bench.drill_bench
[--only NAME]``; writes a section of bench/RESULTS.md and keeps the reports under
``bench/drill-reports/`` (Markdown, JSON, PNG timeline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, write_section
from crosszone.config.load import default_document_at
from crosszone.drills import load_scenario, run_drill

ROOT = BENCH_DIR.parent
FIRST = 194
SCENARIOS = ("seed-network-loss", "seed-cpu-fullload")


def topology() -> dict[str, Any]:
    return default_document_at(FIRST)


def row(name: str, report: dict[str, Any], seconds: float) -> str:
    verdicts = {v["name"]: v for v in report["verdicts"]}

    def value(key: str) -> str:
        v = verdicts.get(key)
        return "-" if v is None else f"{v['value']} ({v['status']})"

    requests = report["requests"]
    return (f"| {name} | {value('failed client requests')} | {value('RTO')} | "
            f"{value('RPO (acknowledged writes lost)')} | {requests['requests']} requests, "
            f"p95 {requests['p95_ms']:.0f} ms | {'passed' if report['passed'] else 'FAILED'} "
            f"| {seconds:.0f} s |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=SCENARIOS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: nftables rules and cgroups", file=sys.stderr)
        return 2
    keep = BENCH_DIR / "drill-reports"
    rows = []
    for name in [args.only] if args.only else SCENARIOS:
        scenario = load_scenario(ROOT / "drills" / f"{name}.yaml")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="cz-drill-") as tmp:
            result = run_drill(scenario, Path(tmp) / "run", out=keep / name,
                               topology=topology(), progress=lambda s: print(s, flush=True))
        report = json.loads((result.out_dir / "report.json").read_text())
        rows.append(row(name, report, time.monotonic() - started))
        print(rows[-1], flush=True)
    lines = ["The seed's two chaosblade experiments at full length, each on a fresh local "
             "stack (3 zones, 2 simulator workers each, embedded Raft, SQLite), with the "
             "scenario's mixed workload (chats, streams, conversations, key churn, usage) and "
             "its own SLOs. Reports: `bench/drill-reports/<name>/report.md` (and JSON, PNG).", "",
             "| scenario | failed client requests | RTO | RPO | traffic | verdict | took |",
             "|---|---|---|---|---|---|---|", *rows]
    write_section("Seed chaos experiments, full length (issue 5)", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
