"""Split-brain checks over what the control plane said while the drill ran.

The drill asks every controller ``GET /control/status`` a few times a second and keeps each
answer that claims leadership as a :class:`LeaderClaim`: who, with which term, which zone it had
made active (active/backup), and the interval ``[sent, received]`` in which the controller
answered. Point samples cannot prove two leaders overlapped at an instant, so the checks are the
ones samples *can* prove:

* two different controllers claimed the same term (two leaders in one term);
* a controller claimed an older term after another had already claimed a newer one (its claim
  was sent after the newer claim was received): a deposed leader still acting;
* in active/backup, two controllers claiming leadership published different active zones in
  answers whose intervals overlap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LeaderClaim:
    node: str  # controller node id (or its zone when it gives none)
    zone: str
    term: int
    sent: float  # drill seconds
    received: float
    active: str | None = None  # routing.active in active/backup

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def check_split_brain(claims: Iterable[LeaderClaim], active_backup: bool) -> list[str]:
    """Every violation found, as sentences (empty: none)."""
    claims = sorted(claims, key=lambda c: c.sent)
    problems: list[str] = []
    by_term: dict[int, set[str]] = defaultdict(set)
    for c in claims:
        by_term[c.term].add(c.node)
    for term, nodes in sorted(by_term.items()):
        if len(nodes) > 1:
            problems.append(f"two leaders in term {term}: {', '.join(sorted(nodes))}")
    for c in claims:
        stale = [n for n in claims if n.term > c.term and n.received < c.sent
                 and n.node != c.node]
        if stale:
            first = min(stale, key=lambda n: n.received)
            problems.append(
                f"deposed leader {c.node} (term {c.term}) still acting at {c.sent:.2f}s after "
                f"{first.node} took term {first.term} (seen at {first.received:.2f}s)")
            break
    if active_backup:
        for i, a in enumerate(claims):
            for b in claims[i + 1:]:
                if b.sent > a.received:
                    break
                if a.node != b.node and a.active and b.active and a.active != b.active:
                    problems.append(
                        f"two active zones at {a.sent:.2f}s: {a.node} (term {a.term}) made "
                        f"{a.active} active, {b.node} (term {b.term}) {b.active}")
    return problems
