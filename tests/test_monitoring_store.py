"""Contract suite of the metrics databases: DuckDB (embedded) and PostgreSQL (production) return
the same answers, and the seed's two queries (section 5.2) run verbatim on both."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crosszone.monitoring.duckdb import DuckDBMetricsStore
from crosszone.monitoring.postgres import PostgresMetricsStore
from crosszone.monitoring.report import failover_report, latency_report, slo_report
from crosszone.monitoring.store import (
    FAILOVER_QUERY,
    LATENCY_QUERY,
    FailoverRecord,
    LatencySample,
    MetricsStore,
    SeriesPoint,
)
from needs import missing
from pgutil import SKIP_REASON, PgServer, new_schema, pg_bin, postgres_servers

ROOT = Path(__file__).resolve().parent.parent
PG_HOST = "127.0.165.1"  # this file's own throw-away server
PG_PORT = 5433
MINUTE = 60.0
DAY = 86400.0


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    if pg_bin() is None:
        missing(SKIP_REASON)
    with postgres_servers([PG_HOST], port=PG_PORT) as servers:
        yield servers[0]


@pytest.fixture(params=["duckdb", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetricsStore]:
    made: MetricsStore
    if request.param == "duckdb":
        made = DuckDBMetricsStore(str(tmp_path / "metrics.duckdb"))
    else:
        server = request.getfixturevalue("pg_server")
        made = PostgresMetricsStore(new_schema(server, "metrics"))
    made.open()
    yield made
    made.close()


def _seed_text() -> str | None:
    for base in (ROOT.parent / "shared", Path("/work/shared")):
        path = base / "seed" / "000_555997a1a75f8b14.txt"
        if path.exists():
            return path.read_text(encoding="utf-8")
    return None


def test_queries_are_the_seeds_verbatim() -> None:
    seed = _seed_text()
    if seed is None:
        pytest.skip("the seed article (shared/seed) is not beside this checkout")
    # The article lost its line breaks; everything else must be identical.
    assert LATENCY_QUERY.replace("\n", "") in seed
    assert FAILOVER_QUERY.replace("\n", "") in seed


LATENCIES = {  # zone -> latencies probed within the last hour
    "us-west-2a": [10.0, 20.0, 30.0, 40.0],
    "us-west-2b": [5.0, 1.0, 9.0, 3.0, 7.0],
    "us-west-2c": [100.0],
}
# PERCENTILE_CONT(0.95): rank 0.95 * (n - 1) in the sorted values, linear between neighbours.
EXPECTED = {"us-west-2a": (25.0, 30.0 + 0.85 * 10.0),  # rank 2.85
            "us-west-2b": (5.0, 7.0 + 0.8 * 2.0),  # rank 3.8 of [1, 3, 5, 7, 9]
            "us-west-2c": (100.0, 100.0)}


def _seed_latency(store: MetricsStore, now: float) -> None:
    rows = []
    for zone, values in LATENCIES.items():
        peer = "us-west-2b" if zone != "us-west-2b" else "us-west-2a"
        rows += [LatencySample(now - (i + 1) * MINUTE, zone, peer, v)
                 for i, v in enumerate(values)]
    rows += [LatencySample(now - 2 * 3600, "us-west-2a", "us-west-2c", 1000.0),  # too old
             LatencySample(now - 3 * 3600, "us-west-2d", "us-west-2a", 5.0)]
    store.add_latency(rows)


def test_latency_query_gives_exact_average_and_p95(store: MetricsStore) -> None:
    _seed_latency(store, time.time())
    rows = store.latency_by_zone()
    assert [r.zone for r in rows] == sorted(EXPECTED)
    for row in rows:
        avg, p95 = EXPECTED[row.zone]
        assert row.avg_latency == pytest.approx(avg, abs=1e-9)
        assert row.p95_latency == pytest.approx(p95, abs=1e-9)


def _event(t: float, success: bool, kind: str = "failover", src: str = "us-west-2a",
           dst: str = "us-west-2b") -> FailoverRecord:
    return FailoverRecord(t, kind, src, dst, "zone unhealthy", 1200.0, 300.0, success, 7,
                          f"{src}/controller")


def test_failover_success_rate_over_seven_days(store: MetricsStore) -> None:
    now = time.time()
    assert store.failover_success_rate() is None  # no event: no division by zero
    store.add_failover_events([_event(now - 8 * DAY, False), _event(now - 9 * DAY, False)])
    assert store.failover_success_rate() is None  # only events older than the window
    store.add_failover_events([_event(now - i * DAY - 1, ok) for i, ok in
                               enumerate([True, True, False, True])])
    assert store.failover_success_rate() == pytest.approx(75.0)


def test_failover_events_are_copied_once(store: MetricsStore) -> None:
    now = time.time()
    events = [_event(now - 30, True), _event(now - 20, False, "failback", "us-west-2b",
                                             "us-west-2a")]
    store.add_failover_events(events)
    store.add_failover_events(events)  # the importer may see the same rows again
    found = store.failover_events(now - 3600)
    assert [(e.kind, e.success) for e in found] == [("failback", False), ("failover", True)]
    assert found[1].time == pytest.approx(now - 30, abs=1e-5)
    assert found[1].rto_ms == 1500.0 and found[1].term == 7
    assert store.failover_counts() == {("failover", True): 1, ("failback", False): 1}
    assert store.latest_failover_time() == pytest.approx(now - 20, abs=1e-5)


def test_latency_samples_after_a_cursor(store: MetricsStore) -> None:
    now = time.time()
    store.add_latency([LatencySample(now - 3, "a", "b", 1.5), LatencySample(now - 2, "a", "c", 2.5),
                       LatencySample(now - 1, "b", "a", 3.5)])
    assert store.latest_latency_time("a") == pytest.approx(now - 2, abs=1e-5)
    assert store.latest_latency_time("zz") is None
    after = store.latency_samples("a", now - 2.5)
    assert [(s.peer_zone, s.latency_ms) for s in after] == [("c", 2.5)]
    assert [(z, p, n) for z, p, _, n in store.latency_matrix(now - 10)] == [
        ("a", "b", 1), ("a", "c", 1), ("b", "a", 1)]


def test_series_are_kept_per_monitor_and_pruned(store: MetricsStore) -> None:
    now = time.time()
    store.add_series([SeriesPoint(now - 7200, "service_up", 1.0, monitor="a"),
                      SeriesPoint(now - 2, "service_up", 0.0, monitor="a"),
                      SeriesPoint(now - 1, "service_up", 1.0, monitor="b"),
                      SeriesPoint(now - 1, "p95_ms", 12.5, "us-west-2a", monitor="a")])
    assert [p.value for p in store.series("service_up", now - 10)] == [0.0, 1.0]
    assert [p.value for p in store.series("service_up", now - 10, monitor="b")] == [1.0]
    store.prune(now - 3600)
    assert len(store.series("service_up", 0)) == 2
    assert store.series("p95_ms", 0)[0].zone == "us-west-2a"


def test_reports(store: MetricsStore) -> None:
    now = time.time()
    _seed_latency(store, now)
    store.add_failover_events([_event(now - 100, True), _event(now - 50, False)])
    store.add_series([SeriesPoint(now - 30 + i, name, v, monitor="a")
                      for i, (name, v) in enumerate([("service_requests", 600.0),
                                                     ("service_errors", 0.0),
                                                     ("service_requests", 400.0),
                                                     ("service_errors", 1.0),
                                                     ("service_up", 1.0), ("service_up", 0.0),
                                                     ("service_up", 1.0), ("service_up", 1.0)])])
    latency = latency_report(store)
    assert {r["zone"]: r["p95_latency"] for r in latency["rows"]}["us-west-2b"] == \
        pytest.approx(8.6)
    failovers = failover_report(store, now)
    assert failovers["success_rate"] == pytest.approx(50.0)
    assert [e["success"] for e in failovers["events"]] == [False, True]
    slo = slo_report(store, target=0.999, window_seconds=DAY, monitor="a", now=now,
                     burn_windows={"short": 300.0})
    assert slo["availability_by_requests"] == pytest.approx(0.999)
    assert slo["availability_by_time"] == pytest.approx(0.75)
    assert slo["error_budget_spent"] == pytest.approx(1.0)
    assert slo["burn_rates"]["short"] == pytest.approx(1.0)
    assert [f["rto_ms"] for f in slo["failovers"]] == [1500.0, 1500.0]


def test_a_second_process_cannot_open_a_duckdb_file_in_use(tmp_path: Path) -> None:
    """DuckDB allows one writer: the CLI must ask the monitor, and says so when it cannot."""
    from crosszone.errors import MetricsStoreError

    path = tmp_path / "m.duckdb"
    with DuckDBMetricsStore(str(path)) as writer:
        writer.add_latency([LatencySample(time.time(), "a", "b", 1.0)])
        with contextlib.closing(DuckDBMetricsStore(str(tmp_path / "none.duckdb"),
                                                   read_only=True)) as missing, \
                pytest.raises(MetricsStoreError, match="no metrics database"):
            missing.open()
    with DuckDBMetricsStore(str(path), read_only=True) as reader:
        assert len(reader.latency_samples("a", 0)) == 1
