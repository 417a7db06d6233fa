"""Proxy overhead benchmark (issue 2, ANCHORS.md "Proxies").

One fixed 233-byte chat-completion response served by nginx is the upstream. In one run, with wrk
(1 thread) at 1 and 32 connections, it measures requests/s and p50/p99 for:

* direct to the upstream;
* through one crosszone gateway hop (``crosszone run gateway``, one process);
* through the crosszone LB and a gateway (two hops);
* through an nginx reverse proxy (1 worker, keep-alive), the reference.

and writes the ratios to bench/RESULTS.md. Run: ``python -m bench.proxy_bench [--seconds 8]``.
Needs wrk and nginx (Debian: ``apt-get install wrk nginx-light``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import WrkResult, have_wrk, process, wait_port, write_section, wrk

ZONES = {"bench-a": "127.0.51", "bench-b": "127.0.52"}
UPSTREAM_PORT = 9000
LB = ("127.0.50.1", 18000)
NGINX_PROXY = ("127.0.50.2", 18081)
API_KEY = "sk-bench"

_BODY = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000,
         "model": "deepseek-chat", "choices": [{"index": 0, "message": {
             "role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}


def fixed_body() -> str:
    text = json.dumps(_BODY, separators=(",", ":"))
    pad = 233 - len(text) - len(',"pad":""')
    return text[:-1] + ',"pad":"' + "x" * pad + '"}'


def nginx_conf(tmp: Path) -> str:
    servers = "\n".join(
        f"  server {{ listen {net}.21:{UPSTREAM_PORT}; location / {{ default_type "
        f"application/json; return 200 '{fixed_body()}'; }} }}" for net in ZONES.values())
    first = next(iter(ZONES.values()))
    return f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
{servers}
  upstream fixed {{ server {first}.21:{UPSTREAM_PORT}; keepalive 64; }}
  server {{
    listen {NGINX_PROXY[0]}:{NGINX_PROXY[1]};
    location / {{ proxy_pass http://fixed; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }}
  }}
}}
"""


def topology() -> dict[str, object]:
    return {
        "region": "bench",
        "zones": [{"name": z, "subnet": f"{net}.0/24"} for z, net in ZONES.items()],
        "worker_group": {"min_size": 1, "max_size": 2, "desired_capacity": 1,
                         "port": UPSTREAM_PORT},
        "gateway": {"port": 8080, "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 0.5}},
        "load_balancer": {"address": LB[0], "listeners": [
            {"protocol": "HTTP", "port": LB[1], "targetPort": 8080}],
            "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 0.5}},
        "failover": {"mode": "active-backup"},
        "auth": {"api_keys": [API_KEY]},
    }


def wrk_script(tmp: Path) -> Path:
    script = tmp / "post.lua"
    body = json.dumps({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]})
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n')
    return script


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not have_wrk() or not Path(nginx).exists():
        print("needs wrk and nginx: apt-get install wrk nginx-light", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cz-bench-"))
    (tmp / "nginx.conf").write_text(nginx_conf(tmp))
    (tmp / "topology.json").write_text(json.dumps(topology()))
    script = wrk_script(tmp)
    cz = [sys.executable, "-m", "crosszone", "run"]
    cfg = ["-c", str(tmp / "topology.json"), "--run-dir", str(tmp)]
    first_zone, first_net = next(iter(ZONES.items()))
    paths = {
        "direct": f"http://{first_net}.21:{UPSTREAM_PORT}/v1/chat/completions",
        "gateway": f"http://{first_net}.10:8080/v1/chat/completions",
        "lb+gateway": f"http://{LB[0]}:{LB[1]}/v1/chat/completions",
        "nginx": f"http://{NGINX_PROXY[0]}:{NGINX_PROXY[1]}/v1/chat/completions",
    }
    results: dict[tuple[str, int], WrkResult] = {}
    with process([nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                 tmp / "nginx.log"), \
         process([*cz, "gateway", "--zone", first_zone, *cfg], tmp / "gw-a.log"), \
         process([*cz, "gateway", "--zone", "bench-b", *cfg], tmp / "gw-b.log"), \
         process([*cz, "lb", *cfg], tmp / "lb.log"):
        for host_port in [(f"{first_net}.21", UPSTREAM_PORT), (f"{first_net}.10", 8080), LB,
                          NGINX_PROXY]:
            wait_port(*host_port)
        time.sleep(3)  # let health checks mark everything healthy
        for name, url in paths.items():
            wrk(url, 8, 2, script)  # warm up connections and caches
            for conns in (1, 32):
                results[(name, conns)] = wrk(url, conns, args.seconds, script)
                print(name, conns, results[(name, conns)], flush=True)
    report(results, args.seconds)
    return 0


def report(r: dict[tuple[str, int], WrkResult], seconds: float) -> None:
    day = time.strftime("%Y-%m-%d")
    lines = [f"Measured {day} on this machine ({_cpus()} cores), wrk 1 thread,"
             f" {seconds:.0f} s per run, all paths in one run. Upstream: nginx returning a fixed"
             " 233-byte chat completion.", "",
             "| path | 1 conn req/s | 1 conn p50 | 32 conn req/s | 32 conn p50 | 32 conn p99 "
             "| errors |", "|---|---|---|---|---|---|---|"]
    for name in ("direct", "gateway", "lb+gateway", "nginx"):
        one, many = r[(name, 1)], r[(name, 32)]
        lines.append(f"| {name} | {one.rps:,.0f} | {one.p50_us:.0f} us | {many.rps:,.0f} "
                     f"| {many.p50_us / 1000:.2f} ms | {many.p99_us / 1000:.2f} ms "
                     f"| {one.errors + many.errors} |")
    gw32 = r[("gateway", 32)].rps
    ng32 = r[("nginx", 32)].rps
    added = r[("gateway", 1)].p50_us - r[("direct", 1)].p50_us
    lines += ["", "Ratios (targets from ANCHORS.md):",
              f"- gateway / nginx req/s at 32 connections: {gw32 / ng32:.3f} (target >= 0.2)",
              f"- gateway req/s at 32 connections / LiteLLM's published 96 req/s (ANCHORS.md, not"
              f" measured in this run): {gw32 / 96:.0f}x (target >= 100x)",
              f"- gateway p50 added over direct at 1 connection: {added:.0f} us (target <= 150 us)"]
    write_section("Proxy overhead (issue 2)", "\n".join(lines))


def _cpus() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
