"""The drill's report: ``report.json`` (everything), ``report.md`` (for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crosszone.drills.judge import DrillData, Verdict, failures_by_kind, passed
from crosszone.drills.scenario import Scenario
from crosszone.errors import DrillError
from crosszone.workload.history import History

MARK = {"passed": "✅ passed", "failed": "❌ FAILED", "not applicable": "➖ not applicable"}


def report_document(scenario: Scenario, data: DrillData, verdicts: list[Verdict],
                    meta: dict[str, Any]) -> dict[str, Any]:
    summary = data.timeline.summary()
    for key in ("fault_zone", "settle_seconds", "zones_before_fault", "zones_after_fault"):
        summary.pop(key, None)
    summary["by_zone"] = data.timeline.by_zone()
    summary["failures_by_kind"] = dict(failures_by_kind(data.timeline))
    return {
        "scenario": {"name": scenario.name, "description": scenario.description,
                     "source": scenario.source, "duration_seconds": scenario.duration,
                     "faults": [f.model_dump() for f in scenario.faults],
                     "slo": scenario.slo.model_dump(by_alias=True)},
        "passed": passed(verdicts),
        **meta,
        "verdicts": [v.to_json() for v in verdicts],
        "faults": [f.to_json() for f in data.faults],
        "rto": {"baseline_p95_ms": {k: round(v, 1) for k, v in data.baseline_p95_ms.items()},
                "threshold_ms": {k: round(v, 1) for k, v in data.threshold_ms.items()},
                "episodes": [r.to_json() for r in data.recoveries]},
        "requests": summary,
        "history": {"operations": data.kv_counts, "note": data.kv_note,
                    "check": data.check.to_json() if data.check else None},
        "control_plane": {"present": data.control.present, "note": data.control.note,
                          "urls": data.control.urls, "samples": data.control_samples,
                          "leader_claims": len(data.claims),
                          "terms": sorted({c.term for c in data.claims}),
                          "split_brain": data.split_brain, "events": data.control_events},
        "lb_events": [{"at": round(t, 3), "what": w} for t, w in data.lb_events],
        "leftovers": {"prepared": data.prepared, "chaos": data.chaos_leftovers,
                      "orphans": data.orphans},
        "features": {k: f.to_json() for k, f in data.features.items()},
        "usage": data.usage,
        "notes": data.notes,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    _write(path, json.dumps(document, indent=2, default=str) + "\n")


def write_history(path: Path, history: History) -> None:
    """The store operations, one JSON object a line (what the history checker read)."""
    _write(path, "".join(json.dumps(op.to_json()) + "\n" for op in history.ops))


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DrillError(f"cannot write {path}: {exc.strerror}") from exc


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(path: Path, doc: dict[str, Any], image: str | None) -> None:
    s = doc["scenario"]
    lines = [f"# Drill `{s['name']}`: {'PASSED' if doc['passed'] else 'FAILED'}", ""]
    if s["description"]:
        lines += [s["description"].strip(), ""]
    how = "attached" if doc.get("attached") else "brought up and down by the drill"
    lines += [f"- started {doc.get('started_at')}, workload {s['duration_seconds']:g}s, "
              f"{'short variant' if doc.get('short') else 'full length'}",
              f"- stack: `{doc.get('run_dir')}` ({how})",
              f"- control plane: {doc['control_plane']['note']}", ""]
    lines += ["## SLOs", "", "| check | result | value | budget | detail |",
              "|---|---|---|---|---|"]
    lines += [f"| {_cell(v['name'])} | {MARK[v['status']]} | {_cell(v['value'])} | "
              f"{_cell(v['budget'])} | {_cell(v['detail'])} |" for v in doc["verdicts"]]
    lines += ["", "## Faults", "", "| # | kind | what | start | healed | error |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {f['index']} | {f['kind']} | {_cell(f['description'])} | {f['start']} | "
              f"{f['end']} | {_cell(f['error'] or '')} |" for f in doc["faults"]]
    rto = doc["rto"]
    lines += ["", "## Recovery (RTO)", "",
              "Full service = no failure, and p95 latency of each class within its threshold, "
              f"per {s['slo']['bin_seconds']:g}s bin (p95 baseline -> threshold: "
              + ", ".join(f"{k} {rto['baseline_p95_ms'][k]} -> {v} ms"
                          for k, v in rto["threshold_ms"].items()) + ").", "",
              "| faults | start | healed | RTO | failback | first bad bins |",
              "|---|---|---|---|---|---|"]
    for e in rto["episodes"]:
        bad = "; ".join(f"{b['at']:.1f}s {b['why'][:160]}" for b in e["bad_bins"][:3])
        value = "not recovered" if e["rto_seconds"] is None else f"{e['rto_seconds']}s"
        if not e["recovered_during_fault"] and e["rto_seconds"] is not None:
            value += " (after the heal)"
        back = "-" if not e["recovered_during_fault"] else (
            "not recovered" if e["failback_seconds"] is None else f"{e['failback_seconds']}s")
        lines.append(f"| {_cell(', '.join(e['faults']))} | {e['start']} | {e['healed']} | "
                     f"{value} | {back} | {_cell(bad)} |")
    lines += _requests(doc) + _history(doc) + _other(doc)
    if image:
        lines += ["", "## Timeline", "", f"![timeline]({image})"]
    lines += ["", "Files: `report.json` (everything above), `history.jsonl` (every store "
              "operation: invoke, outcome, value)."]
    _write(path, "\n".join(lines) + "\n")


def _requests(doc: dict[str, Any]) -> list[str]:
    r = doc["requests"]
    lines = ["", "## Client requests", "",
             f"{r['requests']} requests: {r['ok']} ok, {r['failed']} failed, "
             f"{r['streams_cut']} streams cut; p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms.", "",
             "| zone | ok | failed | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    lines += [f"| {z} | {v['ok']:.0f} | {v['failed']:.0f} | {v['p50_ms']:.1f} | "
              f"{v['p95_ms']:.1f} |" for z, v in r["by_zone"].items()]
    features = doc["features"]
    if features:
        lines += ["", "Product operations: " + "; ".join(
            f"{k} {'used' if f['available'] else 'not available'} ({f['detail']})"
            for k, f in features.items())]
    return lines


def _history(doc: dict[str, Any]) -> list[str]:
    h = doc["history"]
    check = h["check"]
    if check is None:
        return ["", "## Store writes (RPO)", "", h["note"] or "No store operations."]
    lines = ["", "## Store writes (RPO)", "",
             "| class | acknowledged | lost | unreplicated | failed | unknown (applied) | "
             "reads |", "|---|---|---|---|---|---|---|"]
    for cls, st in check["classes"].items():
        lines.append(f"| {cls} | {st['acknowledged']} | {st['lost']} | {st['unreplicated']} | "
                     f"{st['failed']} | {st['unknown']} ({st['unknown_present']}) | "
                     f"{st['reads']} |")
    if check["violations"]:
        lines += ["", "Violations:", ""] + [f"- {v}" for v in check["violations"][:20]]
    if h["note"]:
        lines += ["", h["note"]]
    return lines


def _other(doc: dict[str, Any]) -> list[str]:
    lines = []
    events = doc["lb_events"] + [{"at": e.get("at"), "what": f"controller: {e.get('kind')} "
                                  f"{e.get('from_zone')} -> {e.get('to_zone')}"}
                                 for e in doc["control_plane"]["events"]]
    if events:
        lines += ["", "## Failover events", ""]
        lines += [f"- {e['at']}s {e['what']}" for e in sorted(events, key=lambda e: e["at"])]
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return lines
