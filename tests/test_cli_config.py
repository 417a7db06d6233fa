"""`crosszone validate` and `crosszone schema`: every problem reported, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crosszone.cli.main import app
from crosszone.config import load_topology

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed.yaml"

runner = CliRunner()


def crosszone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crosszone", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_default_topology_validates() -> None:
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 3 zones")


def test_seed_validates_with_the_seeds_values() -> None:
    result = crosszone("validate", str(SEED))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 3 zones")
    assert "us-west-2a, us-west-2b, us-west-2c" in result.stdout
    assert "HTTPS 443->8080" in result.stdout

    seed = load_topology(SEED)
    assert seed.zone_names() == ["us-west-2a", "us-west-2b", "us-west-2c"]
    hc = seed.load_balancer.health_check
    assert (hc.interval_seconds, hc.timeout_seconds) == (30, 5)
    assert (hc.healthy_threshold_count, hc.unhealthy_threshold_count) == (2, 2)
    group = seed.worker_group
    assert (group.min_size, group.max_size, group.desired_capacity) == (2, 10, 2)
    [listener] = seed.load_balancer.listeners
    assert (listener.protocol, listener.port, listener.target_port) == ("HTTPS", 443, 8080)


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(("doc", "path", "value"), [
    ({"zones": [{"name": "a", "subnet": "127.0.1.0/24"}]}, "zones", "['a']"),
    ({"zones": [{"name": "a", "subnet": "127.0.1.0/24"}, {"name": "b", "subnet": "127.0.2.0/24"}],
      "worker_group": {"desired_capacity": 0, "min_size": 1}},
     "worker_group.desired_capacity", "0"),
    ({"zones": [{"name": "a", "subnet": "127.0.1.0/24"}, {"name": "b", "subnet": "127.0.2.0/24"}],
      "load_balancer": {"healthCheck": {"intervalSeconds": 5, "timeoutSeconds": 5}}},
     "load_balancer.healthCheck.timeoutSeconds", "5"),
    ({"zones": [{"name": "a", "subnet": "127.0.1.0/24"}, {"name": "b", "subnet": "127.0.2.0/24"}],
      "failover": {"zones": ["a", "us-east-1z"]}},
     "failover.zones[1]", "us-east-1z"),
    ({"zones": [{"name": "a", "subnet": "127.0.1.0/24"}, {"name": "b", "subnet": "127.0.2.0/24"}],
      "gateway": {"port": "eighty"}},
     "gateway.port", "eighty"),
    ({"zones": [{"name": "a", "subnet": "127.0.1.0/24"}, {"name": "b", "subnet": "127.0.2.0/24"}],
      "gateway": {"prot": 8080}},
     "gateway.prot", "8080"),
])
def test_each_kind_of_problem_is_reported_with_path_and_value(
        tmp_path: Path, doc: dict[str, object], path: str, value: str) -> None:
    result = crosszone("validate", str(_write(tmp_path, doc)))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert path in result.stderr
    assert value in result.stderr


def test_several_rule_problems_are_all_reported_at_once(tmp_path: Path) -> None:
    doc = {
        "zones": [{"name": "a", "subnet": "127.0.1.0/24"}],
        "worker_group": {"desired_capacity": 0, "min_size": 1},
        "load_balancer": {"healthCheck": {"intervalSeconds": 5, "timeoutSeconds": 6}},
        "failover": {"zones": ["a", "nowhere"]},
    }
    result = crosszone("validate", str(_write(tmp_path, doc)))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    for path, value in [("zones", "['a']"), ("worker_group.desired_capacity", "0"),
                        ("load_balancer.healthCheck.timeoutSeconds", "6"),
                        ("failover.zones[1]", "nowhere")]:
        assert f"{path}:" in result.stderr and value in result.stderr, (path, result.stderr)


def test_structural_problems_are_all_reported_at_once(tmp_path: Path) -> None:
    doc = {
        "zones": [{"name": "a", "subnet": "127.0.1.0/24"}, {"name": "b", "subnet": "127.0.2.0/24"}],
        "gateway": {"port": "eighty"},
        "worker_group": {"colour": "blue"},
    }
    result = crosszone("validate", str(_write(tmp_path, doc)))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "gateway.port" in result.stderr and "eighty" in result.stderr
    assert "worker_group.colour" in result.stderr and "blue" in result.stderr


def test_all_six_problems_in_one_file(tmp_path: Path) -> None:
    """Structural and rule problems together: the brief asks for every one at once."""
    doc = {
        "zones": [{"name": "a", "subnet": "127.0.1.0/24"}],
        "worker_group": {"desired_capacity": 0, "min_size": 1},
        "load_balancer": {"healthCheck": {"intervalSeconds": 5, "timeoutSeconds": 6}},
        "failover": {"zones": ["a", "nowhere"]},
        "gateway": {"port": "eighty"},
        "colour": "blue",
    }
    result = crosszone("validate", str(_write(tmp_path, doc)))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    for path, value in [("zones", "['a']"), ("worker_group.desired_capacity", "0"),
                        ("load_balancer.healthCheck.timeoutSeconds", "6"),
                        ("failover.zones[1]", "nowhere"), ("gateway.port", "eighty"),
                        ("colour", "blue")]:
        assert f"{path}:" in result.stderr and value in result.stderr, (path, result.stderr)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("zones:\n  - name: a\n    subnet: [127.0.1.0/24\nregion: x\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "line " in result.output
    assert "Traceback" not in result.output


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = crosszone("validate", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_up_with_a_bad_file_exits_2_before_starting_anything(tmp_path: Path) -> None:
    bad = _write(tmp_path, {"zones": [{"name": "a", "subnet": "127.0.1.0/24"}]})
    result = crosszone("up", "-c", str(bad), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "zones" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "supervisor.sock").exists()


def test_run_rejects_unknown_component_and_zone(tmp_path: Path) -> None:
    result = crosszone("run", "balancer", "--zone", "us-west-2a")
    assert result.returncode == 2 and "unknown component" in result.stderr
    result = crosszone("run", "worker", "--zone", "mars-1a")
    assert result.returncode == 2 and "mars-1a" in result.stderr
    assert "Traceback" not in result.stderr


def test_schema_is_json_with_camel_case_fields(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    text = result.stdout
    schema = json.loads(text)
    assert schema["title"] == "crosszone topology"
    for name in ("healthCheck", "intervalSeconds", "timeoutSeconds", "targetPort",
                 "healthyThresholdCount", "desired_capacity"):
        assert f'"{name}"' in text, name

    out = tmp_path / "schema.json"
    result = runner.invoke(app, ["schema", "-o", str(out)])
    assert result.exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8")) == schema


def test_status_and_down_with_nothing_running(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["status", "--run-dir", str(run_dir)])
    assert result.exit_code == 1
    assert "nothing running" in result.output
    result = runner.invoke(app, ["down", "--run-dir", str(run_dir)])
    assert result.exit_code == 0
    assert "nothing running" in result.output
