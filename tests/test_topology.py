"""Topology models, placement and localization (the CLI-level checks are in test_cli_config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosszone.config import Placement, load_topology, localize, parse_topology, topology_schema
from crosszone.config.load import default_document
from crosszone.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_default_places_every_zone_on_its_own_loopback_slash24() -> None:
    t = load_topology()
    placement = Placement(t)
    assert t.zone_names() == ["us-west-2a", "us-west-2b", "us-west-2c"]
    for n, zone in enumerate(t.zone_names(), start=1):
        assert placement.gateway(zone).host == f"127.0.{n}.10"
        assert [w.host for w in placement.workers(zone)] == [f"127.0.{n}.21", f"127.0.{n}.22"]
    assert placement.lb_urls()["https"] == "https://127.0.0.1:8443/v1"
    names = [node.name for node in placement.all_nodes()]
    assert len(names) == len(set(names)) == 3 * 6 + 1
    assert placement.store("us-west-2b").host == "127.0.2.6"


def test_detection_time_is_computed_from_the_health_check() -> None:
    seed = load_topology(ROOT / "examples" / "seed.yaml")
    # The seed's 30 s interval, 5 s timeout, 2 failures: 65 s in the worst case.
    assert seed.load_balancer.health_check.detection_seconds() == 65.0
    assert load_topology().load_balancer.health_check.detection_seconds() < 2.0


def test_localize_moves_the_seed_onto_loopback_and_keeps_the_rest() -> None:
    seed = load_topology(ROOT / "examples" / "seed.yaml")
    local, notes = localize(seed)
    assert [z.subnet for z in local.zones] == ["127.0.1.0/24", "127.0.2.0/24", "127.0.3.0/24"]
    assert len(notes) == 3
    assert local.load_balancer.health_check == seed.load_balancer.health_check
    assert local.worker_group == seed.worker_group
    again, more = localize(local)
    assert again == local and more == []


def test_zone_order_and_per_zone_worker_group_override() -> None:
    doc = default_document()
    doc["failover"] = {"mode": "active-backup", "zones": ["us-west-2c", "us-west-2a",
                                                          "us-west-2b"]}
    doc["zones"][1]["worker_group"] = {"min_size": 1, "max_size": 3, "desired_capacity": 3}
    t = parse_topology(doc)
    assert t.zone_order() == ["us-west-2c", "us-west-2a", "us-west-2b"]
    assert len(Placement(t).workers("us-west-2b")) == 3
    assert len(Placement(t).workers("us-west-2a")) == 2


@pytest.mark.parametrize(("edit", "path"), [
    (lambda d: d["zones"].append({"name": "x", "subnet": "127.0.1.128/25"}), "zones[3].subnet"),
    (lambda d: d.update(vpc={"cidr": "127.1.0.0/16"}), "zones[0].subnet"),
    (lambda d: d["load_balancer"]["listeners"][0].update(targetPort=9999),
     "load_balancer.listeners[0].targetPort"),
    (lambda d: d.update(failover={"mode": "active-backup", "weights": {"us-west-2a": 1}}),
     "failover.weights"),
    (lambda d: d["inference"].update(backend="openai"), "inference.upstream"),
])
def test_rules_name_the_path(edit: object, path: str) -> None:
    doc = default_document()
    edit(doc)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        parse_topology(doc)
    assert path in [p.path for p in info.value.problems], str(info.value)


def test_schema_uses_the_seed_field_names() -> None:
    text = str(topology_schema())
    for name in ("healthCheck", "intervalSeconds", "targetPort", "desired_capacity", "min_size"):
        assert name in text
