"""Alert rules, their evaluation, and notifications (log and webhook, with resolve messages).

A :class:`Rule` is one comparison of one metric the monitor exports (``crosszone_zone_up == 0``)
held for ``for_seconds``: exactly what a Prometheus alerting rule is, so the same rules are
evaluated here and exported as a Prometheus rules file (:mod:`crosszone.monitoring.export`).
Each series that satisfies the comparison is one alert, labelled like the series.

Every monitor evaluates and logs; only the notifying monitor (the first zone in failover order
whose monitor answers) posts webhooks. Notification is reconciled, not edge-triggered: the
notifier announces every firing alert it has not announced yet and resolves every announced
alert that no longer fires, so a monitor taking over announces what its predecessor could not,
and a webhook that failed is retried on the next cycle.
"""

from __future__ import annotations

import logging
import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import orjson

from crosszone.errors import MonitoringError
from crosszone.monitoring.exported import Series

log = logging.getLogger("crosszone.alerts")

Op = Literal[">", ">=", "<", "<=", "==", "!="]
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne}
_FIELD = re.compile(r"\{(\w+)\}")
_ZERO_TIME = "0001-01-01T00:00:00Z"


def prom_duration(seconds: float) -> str:
    """A Prometheus duration: ``0s``, ``30s``, ``1500ms``."""
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str  # exposed sample name
    op: Op
    threshold: float
    severity: str
    summary: str  # "{zone}", "{peer_zone}"... are the alert's labels, "{value}" its value
    description: str
    for_seconds: float = 0.0
    match: tuple[tuple[str, str], ...] = ()

    def expr(self) -> str:
        """The rule in PromQL."""
        selector = self.metric
        if self.match:
            selector += "{" + ",".join(f'{k}="{v}"' for k, v in self.match) + "}"
        return f"{selector} {self.op} {self.threshold:g}"

    def prom_template(self, text: str) -> str:
        """``{zone}`` -> ``{{ $labels.zone }}``, ``{value}`` -> ``{{ $value }}``."""
        return _FIELD.sub(lambda m: "{{ $value }}" if m.group(1) == "value"
                          else "{{ $labels." + m.group(1) + " }}", text)

    def applies(self, s: Series) -> bool:
        labels = dict(s.labels)
        return s.name == self.metric and all(labels.get(k) == v for k, v in self.match)

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)


@dataclass
class Alert:
    rule: Rule
    labels: dict[str, str]
    value: float
    active_since: float
    state: Literal["pending", "firing", "resolved"] = "pending"
    fired_at: float | None = None
    resolved_at: float | None = None

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.rule.name, tuple(sorted(self.labels.items()))

    def render(self, text: str) -> str:
        """``text`` with ``{label}`` and ``{value}`` filled in."""
        fields = {**self.labels, "value": f"{self.value:.4g}"}
        return _FIELD.sub(lambda m: fields.get(m.group(1), m.group(0)), text)

    @property
    def summary(self) -> str:
        return self.render(self.rule.summary)

    def describe(self) -> str:
        where = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.rule.name}{{{where}}}"

    def to_json(self) -> dict[str, Any]:
        return {"alertname": self.rule.name, "severity": self.rule.severity,
                "labels": self.labels, "value": self.value, "state": self.state,
                "summary": self.summary, "active_since": self.active_since,
                "fired_at": self.fired_at, "resolved_at": self.resolved_at}


@dataclass
class Changes:
    fired: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


class AlertEvaluator:
    """Pending -> firing after ``for_seconds``; resolved when the comparison stops holding (or
    its series disappears)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.active: dict[tuple[str, tuple[tuple[str, str], ...]], Alert] = {}

    def evaluate(self, series: Iterable[Series], now: float) -> Changes:
        changes = Changes()
        seen = set()
        all_series = list(series)
        for rule in self.rules:
            for s in all_series:
                if not rule.applies(s) or not rule.holds(s.value):
                    continue
                labels = dict(s.labels)
                alert = Alert(rule, labels, s.value, now)
                current = self.active.setdefault(alert.key, alert)
                current.value = s.value
                seen.add(alert.key)
                if current.state == "pending" and now - current.active_since >= rule.for_seconds:
                    current.state, current.fired_at = "firing", now
                    changes.fired.append(current)
        for key in [k for k in self.active if k not in seen]:
            alert = self.active.pop(key)
            if alert.state == "firing":
                alert.state, alert.resolved_at = "resolved", now
                changes.resolved.append(alert)
        return changes

    def firing(self) -> list[Alert]:
        return [a for a in self.active.values() if a.state == "firing"]


class Notifier(ABC):
    @abstractmethod
    async def notify(self, status: Literal["firing", "resolved"], alerts: Sequence[Alert]
                     ) -> None:
        """Deliver, or raise :class:`crosszone.errors.MonitoringError` saying why not."""

    async def close(self) -> None:
        return None


def _rfc3339(t: float | None) -> str:
    if t is None:
        return _ZERO_TIME
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def alertmanager_payload(status: str, alerts: Sequence[Alert], source: str) -> dict[str, Any]:
    """The body Prometheus' Alertmanager posts to webhooks (version 4), so existing receivers
    understand ours."""
    items = []
    for a in alerts:
        labels = {"alertname": a.rule.name, "severity": a.rule.severity, **a.labels}
        items.append({"status": status, "labels": labels,
                      "annotations": {"summary": a.summary,
                                      "description": a.render(a.rule.description)},
                      "startsAt": _rfc3339(a.fired_at or a.active_since),
                      "endsAt": _rfc3339(a.resolved_at if status == "resolved" else None),
                      "generatorURL": source, "value": a.value})
    common = {"alertname": alerts[0].rule.name} if len({a.rule.name for a in alerts}) == 1 else {}
    return {"version": "4", "status": status, "receiver": "crosszone", "alerts": items,
            "groupLabels": {}, "commonLabels": common, "commonAnnotations": {},
            "externalURL": source, "groupKey": f"crosszone:{status}", "truncatedAlerts": 0}


class WebhookNotifier(Notifier):
    def __init__(self, urls: Sequence[str], source: str, timeout: float = 2.0) -> None:
        self.urls = list(urls)
        self.source = source
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<WebhookNotifier {len(self.urls)} url(s)>"

    async def notify(self, status: Literal["firing", "resolved"], alerts: Sequence[Alert]
                     ) -> None:
        if not alerts or not self.urls:
            return
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        body = orjson.dumps(alertmanager_payload(status, alerts, self.source))
        failed = []
        for url in self.urls:
            try:
                async with self._session.post(url, data=body, headers={
                        "content-type": "application/json"}) as resp:
                    if resp.status >= 300:
                        failed.append(f"{url}: HTTP {resp.status}")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failed.append(f"{url}: {type(exc).__name__} {exc}".rstrip())
        if failed:
            raise MonitoringError("webhook not delivered: " + "; ".join(failed))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AlertManager:
    """Evaluates the rules each cycle, logs every change, notifies when it is the notifier."""

    def __init__(self, rules: Sequence[Rule], notifiers: Sequence[Notifier], monitor: str) -> None:
        self.evaluator = AlertEvaluator(rules)
        self.notifiers = list(notifiers)
        self.monitor = monitor
        self.announced: dict[tuple[str, tuple[tuple[str, str], ...]], Alert] = {}
        self.history: list[dict[str, Any]] = []  # recent transitions, newest last

    def __repr__(self) -> str:
        return (f"<AlertManager {self.monitor}: {len(self.evaluator.firing())} firing, "
                f"{len(self.announced)} announced>")

    def _remember(self, alert: Alert, what: str, now: float) -> None:
        self.history.append({"time": now, "event": what, **alert.to_json()})
        del self.history[:-100]

    async def run(self, series: Iterable[Series], now: float, notify: bool) -> str:
        """One evaluation; returns what changed, in a sentence."""
        changes = self.evaluator.evaluate(series, now)
        for alert in changes.fired:
            log.warning("ALERT firing %s: %s", alert.describe(), alert.summary)
            self._remember(alert, "firing", now)
        for alert in changes.resolved:
            log.warning("ALERT resolved %s: %s", alert.describe(), alert.summary)
            self._remember(alert, "resolved", now)
        said = [f"{a.describe()} fired" for a in changes.fired]
        said += [f"{a.describe()} resolved" for a in changes.resolved]
        if notify:
            firing = {a.key: a for a in self.evaluator.firing()}
            new = [a for k, a in firing.items() if k not in self.announced]
            gone = [a for k, a in self.announced.items() if k not in firing]
            batches: list[tuple[Literal["firing", "resolved"], list[Alert]]] = [
                ("firing", new), ("resolved", gone)]
            for status, alerts in batches:
                if not alerts:
                    continue
                if status == "resolved":
                    for a in alerts:
                        a.resolved_at = a.resolved_at or now
                try:
                    for notifier in self.notifiers:
                        await notifier.notify(status, alerts)
                except MonitoringError as exc:
                    said.append(f"notifying {status} failed ({exc}); retrying next cycle")
                    continue
                for a in alerts:
                    if status == "firing":
                        self.announced[a.key] = a
                    else:
                        self.announced.pop(a.key, None)
                said.append(f"notified {len(alerts)} {status}")
        if not said:
            return f"{len(self.evaluator.firing())} alert(s) firing, nothing changed"
        return "; ".join(said)

    async def close(self) -> None:
        for notifier in self.notifiers:
            await notifier.close()
