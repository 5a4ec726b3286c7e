#!/usr/bin/env python3
"""offload-agent beside nginx and HAProxy, in one run, on loopback: the
driver behind bench/compare.sh (read that file's header for how to run it).

Every scenario runs --runs times (default 2) for each proxy, and every run is
reported. Each proxy is pinned to --proxy-cpu, the load generators and the
backend to --load-cpu. CPU is utime+stime from /proc/PID/stat across the
measured part only. Processes are started by this script and stopped by PID.

Proxies:
  direct       the backend alone (offload-demo-server, blocking, one worker
               thread per connection: what the agent is meant to shield)
  nginx        1 worker, upstream keepalive 16, request and response buffering on
  haproxy      mode http, http-buffer-request, http-reuse always, 1 thread
  agent        offload-agent over a TCP keep-alive pool
  agent-ring   offload-agent over the shared-memory ring (the demo server speaks it)
Scenarios:
  throughput   wrk -c64, GET of 100 B and of 64 KiB: req/s, p50/p99, proxy CPU/request
  idle         memory per idle keep-alive connection (--idle connections)
  slowloris    wrk -c16 req/s with --slowloris connections that never finish a head,
               against the same without them
  slowreaders  wrk -c64 req/s while --readers clients read 8 MiB each at 1 MiB/s
  split        backend CPU per request when clients send each request in 3 pieces
  passthrough  --passthrough-bytes through one connection (nginx is left out:
               it has no plain TCP mode here; the agent uses `proxy = "passthrough"`)
"""
import argparse
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from harness import Processes, free_port, log_text, rss_kib, wait_listening, wait_text, with_cpu
from harness import wrk as run_wrk

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ALL_PROXIES = ["direct", "nginx", "haproxy", "agent", "agent-ring"]
ALL_SCENARIOS = ["throughput", "idle", "slowloris", "slowreaders", "split", "passthrough"]


# ------------------------------------------------------------------ the rigs

class Rig:
    """One proxy (or none) in front of one backend, for the HTTP scenarios."""

    def __init__(self, kind, a, procs):
        self.kind, self.a, self.procs = kind, a, procs
        self.proxy = None    # the proxy's process (None for direct)
        self.backend = None
        self.port = None

    def start(self):
        if self.kind == "agent-ring":
            self._start_ring()
        else:
            self._start_backend()
            getattr(self, "_start_" + self.kind.replace("-", "_"))()
        # Warm-up: pools and upstream connections, outside every figure.
        self.procs.run(["wrk", "-t1", "-c16", "-d1s", f"http://127.0.0.1:{self.port}/size/100"],
                       self.a.load_cpu, 30)

    def _start_backend(self):
        self.backend_port = free_port()
        self.backend = self.procs.start("backend", [self.a.demo_server, "--listen", f"127.0.0.1:{self.backend_port}",
                                                    "--workers", str(self.a.backend_workers)], self.a.load_cpu)
        wait_listening(self.backend_port, self.backend)

    def _start_direct(self):
        self.port = self.backend_port

    def _agent_flags(self):
        return ["--admin", "off", "--max-clients", "19000", "--max-upstream", "16", "--persistent", "16",
                "--header-timeout-ms", "60000", "--keepalive-timeout-ms", "120000"]

    def _start_agent(self):
        self.port = free_port()
        self.proxy = self.procs.start("agent", [self.a.agent, "run", "--listen", f"127.0.0.1:{self.port}",
                                                "--upstream", f"tcp://127.0.0.1:{self.backend_port}"]
                                      + self._agent_flags(), self.a.proxy_cpu)
        wait_listening(self.port, self.proxy)

    def _start_ring(self):
        # The agent makes the ring; the demo server then attaches to it.
        name = f"offload-compare-{os.getpid()}"
        self.port = free_port()
        self.proxy = self.procs.start("agent-ring", [self.a.agent, "run", "--listen", f"127.0.0.1:{self.port}",
                                                     "--upstream", f"shm:{name}"] + self._agent_flags(),
                                      self.a.proxy_cpu)
        wait_listening(self.port, self.proxy)
        self.backend = self.procs.start("backend-ring", [self.a.demo_server, "--ring", name, "--workers",
                                                         str(self.a.ring_workers)], self.a.load_cpu)
        wait_text(self.backend, "serving ring", 10)

    def _start_nginx(self):
        d = os.path.join(self.procs.tmp, "nginx")
        os.makedirs(d, exist_ok=True)
        self.port = free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1;
master_process off;
daemon off;
worker_rlimit_nofile 20000;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  client_header_timeout 60s;
  upstream backend {{
    server 127.0.0.1:{self.backend_port};
    keepalive 16;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
      proxy_request_buffering on;
    }}
  }}
}}
""")
        self.proxy = self.procs.start("nginx", [self.a.nginx, "-p", d, "-c", conf], self.a.proxy_cpu)
        wait_listening(self.port, self.proxy)

    def _start_haproxy(self):
        self.port = free_port()
        cfg = os.path.join(self.procs.tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 9900
defaults
  mode http
  option http-buffer-request
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 60s
  timeout http-request 60s
  timeout http-keep-alive 120s
frontend f
  bind 127.0.0.1:{self.port}
  default_backend b
backend b
  server s1 127.0.0.1:{self.backend_port} maxconn 16
""")
        self.proxy = self.procs.start("haproxy", [self.a.haproxy, "-f", cfg, "-db"], self.a.proxy_cpu)
        wait_listening(self.port, self.proxy)

    def stop(self):
        for p in (self.proxy, self.backend):
            if p is not None:
                self.procs.stop(p)


# ------------------------------------------------------------------ scenarios

def wrk(a, procs, port, connections, seconds, path):
    return run_wrk(procs, a.load_cpu, port, connections, seconds, path)


def sc_throughput(a, procs, rig):
    out = {}
    for label, path in (("100B", "/size/100"), ("64KiB", "/size/65536")):
        r, cpu = with_cpu(rig.proxy.pid if rig.proxy else None,
                          lambda: wrk(a, procs, rig.port, 64, a.seconds, path))
        out[f"rps_{label}"] = r["rps"]
        out[f"p50_ms_{label}"] = r.get("p50_ms")
        out[f"p99_ms_{label}"] = r.get("p99_ms")
        out[f"errors_{label}"] = r["errors"]
        out[f"proxy_cpu_us_per_request_{label}"] = (cpu / r["requests"] * 1e6) if cpu is not None and r["requests"] else None
    return out


def sc_idle(a, procs, rig):
    if rig.proxy is None:
        return {"skipped": "the blocking backend holds one worker per connection"}
    time.sleep(a.settle)
    before = rss_kib(rig.proxy.pid)
    clients = procs.start("idle", [sys.executable, os.path.join(HERE, "proxy", "idle_clients.py"), "--port",
                                   str(rig.port), "--connections", str(a.idle), "--hold", "120"], a.load_cpu)
    try:
        m = wait_text(clients, r"idle: (\d+) ready", 120)
        time.sleep(a.settle)
        after = rss_kib(rig.proxy.pid)
    finally:
        procs.stop(clients)
    held = int(m.group(1))
    return {"connections": held, "rss_kib": after,
            "bytes_per_connection": (after - before) * 1024 / held if held else None}


def sc_slowloris(a, procs, rig):
    base = wrk(a, procs, rig.port, 16, a.seconds, "/size/100")
    storm = procs.start("slowloris", [sys.executable, os.path.join(HERE, "proxy", "slowloris.py"), "--port",
                                      str(rig.port), "--connections", str(a.slowloris), "--interval", "1",
                                      "--duration", str(a.seconds + 40)], a.load_cpu)
    try:
        m = wait_text(storm, r"slowloris: (\d+) open", 40)
        during = wrk(a, procs, rig.port, 16, a.seconds, "/size/100")
    finally:
        procs.stop(storm)
    return {"slow_open": int(m.group(1)), "rps_without": base["rps"], "rps_with": during["rps"],
            "errors_with": during["errors"],
            "kept": during["rps"] / base["rps"] if base["rps"] else None}


def sc_slowreaders(a, procs, rig):
    size = 8 << 20
    readers = procs.start("slowreaders", [sys.executable, os.path.join(HERE, "proxy", "slow_readers.py"),
                                          "--port", str(rig.port), "--readers", str(a.readers), "--bytes",
                                          str(size), "--rate", str(1 << 20), "--deadline",
                                          str(a.seconds + 20)], a.load_cpu)
    try:
        wait_text(readers, r"slow_readers: \d+ started", 20)
        time.sleep(0.5)
        during = wrk(a, procs, rig.port, 64, a.seconds, "/size/100")
        rss = rss_kib(rig.proxy.pid) if rig.proxy else None
        m = wait_text(readers, r"slow_readers: (\d+) done, (\d+) bytes, (\d+) failed", a.seconds + 40)
    finally:
        procs.stop(readers)
    return {"rps_during": during["rps"], "errors_during": during["errors"], "proxy_rss_kib": rss,
            "readers_done": int(m.group(1)), "readers_failed": int(m.group(3))}


def sc_split(a, procs, rig):
    def go():
        return procs.run([sys.executable, os.path.join(HERE, "proxy", "split_requests.py"), "--port",
                          str(rig.port), "--connections", "32", "--pieces", "3", "--gap", "0.002",
                          "--duration", str(a.seconds)], a.load_cpu, a.seconds + 60)
    out, cpu = with_cpu(rig.backend.pid, go)
    m = re.search(r"split_requests: (\d+) requests, (\d+) errors", out)
    n = int(m.group(1)) if m else 0
    return {"requests": n, "errors": int(m.group(2)) if m else None,
            "backend_cpu_us_per_request": cpu / n * 1e6 if n else None}


def sc_passthrough(a, procs, kind):
    """One bulk transfer through `kind` (its own rig: a byte sink, not the demo server)."""
    if kind in ("nginx", "agent-ring"):
        return {"skipped": "no plain TCP mode in this comparison" if kind == "nginx" else "the ring carries HTTP only"}
    sink_port = free_port()
    sink = procs.start("bulk-sink", [a.bulk, "serve", str(sink_port)], a.load_cpu)
    proxy = None
    try:
        wait_text(sink, "listening on", 10)
        port = sink_port
        if kind == "haproxy":
            port = free_port()
            cfg = os.path.join(procs.tmp, "haproxy-tcp.cfg")
            with open(cfg, "w") as f:
                f.write(f"global\n  nbthread 1\ndefaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n"
                        f"  timeout client 60s\n  timeout server 60s\nfrontend f\n  bind 127.0.0.1:{port}\n"
                        f"  default_backend b\nbackend b\n  server s1 127.0.0.1:{sink_port}\n")
            proxy = procs.start("haproxy-tcp", [a.haproxy, "-f", cfg, "-db"], a.proxy_cpu)
        elif kind == "agent":
            port = free_port()
            cfg = os.path.join(procs.tmp, "agent-passthrough.toml")
            with open(cfg, "w") as f:
                f.write(f'admin = "off"\n[[upstream]]\nname = "bulk"\nservers = ["tcp://127.0.0.1:{sink_port}"]\n'
                        f'[[listener]]\nlisten = "127.0.0.1:{port}"\nproxy = "passthrough"\nupstream = "bulk"\n')
            proxy = procs.start("agent-passthrough", [a.agent, "run", "-c", cfg], a.proxy_cpu)
        if proxy is not None:
            wait_listening(port, proxy)
        out, cpu = with_cpu(proxy.pid if proxy else None,
                            lambda: procs.run([a.bulk, "send", str(port), str(a.passthrough_bytes)], a.load_cpu, 600))
        m = re.search(r"([\d.]+) ([\d.]+)\s*$", out.strip())
        if not m:
            raise RuntimeError(f"bulk_tcp send: {out}")
        seconds, gbps = float(m.group(1)), float(m.group(2))
        mode = None
        if kind == "agent":
            mm = re.search(r"(kernel|user)[- ]", log_text(proxy))
            mode = mm.group(1) if mm else None
        return {"gb_per_s": gbps, "seconds": seconds,
                "proxy_cpu_share": cpu / seconds if cpu is not None and seconds else None, "mode": mode}
    finally:
        for p in (proxy, sink):
            if p is not None:
                procs.stop(p)


# ------------------------------------------------------------------ report

ROWS = [  # scenario, key, label, format
    ("throughput", "rps_100B", "req/s, 64 conns, 100 B", "{:.0f}"),
    ("throughput", "p99_ms_100B", "  p99 latency (ms)", "{:.2f}"),
    ("throughput", "proxy_cpu_us_per_request_100B", "  proxy CPU per request (us)", "{:.1f}"),
    ("throughput", "rps_64KiB", "req/s, 64 conns, 64 KiB", "{:.0f}"),
    ("throughput", "p99_ms_64KiB", "  p99 latency (ms)", "{:.2f}"),
    ("throughput", "proxy_cpu_us_per_request_64KiB", "  proxy CPU per request (us)", "{:.1f}"),
    ("idle", "bytes_per_connection", "memory per idle keep-alive conn (B)", "{:.0f}"),
    ("idle", "connections", "  idle connections held", "{:.0f}"),
    ("slowloris", "rps_with", "req/s with slowloris open", "{:.0f}"),
    ("slowloris", "kept", "  share of req/s kept", "{:.2f}"),
    ("slowreaders", "rps_during", "req/s with slow readers", "{:.0f}"),
    ("slowreaders", "readers_done", "  slow readers served whole", "{:.0f}"),
    ("split", "backend_cpu_us_per_request", "backend CPU per split request (us)", "{:.1f}"),
    ("passthrough", "gb_per_s", "pass-through (GB/s)", "{:.2f}"),
    ("passthrough", "proxy_cpu_share", "  proxy CPU (share of one core)", "{:.2f}"),
]


def table(results, proxies):
    width = 16
    lines = ["{:<40}".format("") + "".join(f"{p:>{width}}" for p in proxies)]
    for scenario, key, label, fmt in ROWS:
        runs_by_proxy = results["scenarios"].get(scenario)
        if not runs_by_proxy:
            continue
        cells = []
        for p in proxies:
            runs = runs_by_proxy.get(p, [])
            vals = [fmt.format(r[key]) if isinstance(r.get(key), (int, float)) else "-" for r in runs]
            cells.append(" / ".join(vals) if vals else "-")
        lines.append(f"{label:<40}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


# ------------------------------------------------------------------ main

def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(ROOT, "build"), help="build directory (default: build)")
    p.add_argument("--proxies", default=",".join(ALL_PROXIES))
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    p.add_argument("--runs", type=int, default=2, help="runs of each scenario (default 2)")
    p.add_argument("--seconds", type=int, default=None, help="length of each load run (default 10; --quick: 3)")
    p.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections (default 10000)")
    p.add_argument("--slowloris", type=int, default=2000, help="slowloris connections (default 2000)")
    p.add_argument("--readers", type=int, default=20, help="slow readers of 8 MiB (default 20)")
    p.add_argument("--passthrough-bytes", type=int, default=1 << 30, help="bytes through (default 1 GiB)")
    p.add_argument("--backend-workers", type=int, default=64, help="demo server threads (default 64)")
    p.add_argument("--ring-workers", type=int, default=4, help="demo server ring channels (default 4)")
    p.add_argument("--settle", type=float, default=3.5, help="seconds of quiet before reading RSS")
    p.add_argument("--quick", action="store_true", help="short runs, fewer connections: a smoke run")
    p.add_argument("--no-pin", action="store_true", help="do not pin (for machines with one CPU)")
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1 if (os.cpu_count() or 1) > 1 else 0)
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for the JSON results")
    p.add_argument("--require-figures", action="store_true",
                   help="exit 1 when a figure is missing or zero, 77 when a tool is missing (the CI smoke run)")
    a = p.parse_args()
    if a.quick:
        a.idle, a.slowloris, a.readers = 1000, 300, 5
        a.passthrough_bytes = min(a.passthrough_bytes, 256 << 20)
    if a.seconds is None:
        a.seconds = 3 if a.quick else 10
    a.proxies = [x for x in a.proxies.split(",") if x]
    a.scenarios = [x for x in a.scenarios.split(",") if x]
    for x in a.proxies:
        if x not in ALL_PROXIES:
            p.error(f"--proxies: unknown proxy '{x}', expected some of {','.join(ALL_PROXIES)}")
    for x in a.scenarios:
        if x not in ALL_SCENARIOS:
            p.error(f"--scenarios: unknown scenario '{x}', expected some of {','.join(ALL_SCENARIOS)}")
    a.build = os.path.abspath(a.build)
    a.agent = os.path.join(a.build, "agent", "offload-agent")
    a.demo_server = os.path.join(a.build, "server", "offload-demo-server")
    a.bulk = os.path.join(a.build, "bench", "proxy", "bulk_tcp")
    a.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    a.haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return a


def versions(a):
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    return {"agent": first_line([a.agent, "--version"]), "nginx": first_line([a.nginx, "-v"]),
            "haproxy": first_line([a.haproxy, "-v"]), "wrk": first_line(["wrk", "-v"])}


def main():
    a = parse_args()
    needed = [a.agent, a.demo_server] + ([a.bulk] if "passthrough" in a.scenarios else [])
    needed += [a.nginx] if "nginx" in a.proxies else []
    needed += [a.haproxy] if "haproxy" in a.proxies else []
    for path in needed:
        if not os.access(path, os.X_OK):
            print(f"compare.py: {'SKIP: ' if a.require_figures else ''}missing {path} "
                  "(bench/compare.sh builds and installs what is missing)", file=sys.stderr)
            sys.exit(77 if a.require_figures else 1)
    tmp = tempfile.mkdtemp(prefix="offload-compare.")
    procs = Processes(tmp, not a.no_pin)
    host = socket.gethostname()
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {"host": host, "date": started.isoformat(timespec="seconds"), "kernel": os.uname().release,
               "cpus": os.cpu_count(), "pinned": not a.no_pin, "versions": versions(a),
               "settings": {k: getattr(a, k) for k in ("runs", "seconds", "idle", "slowloris", "readers",
                                                        "passthrough_bytes", "backend_workers", "ring_workers")},
               "scenarios": {}}
    print(f"compare: {', '.join(a.proxies)}; {', '.join(a.scenarios)}; {a.runs} runs each; "
          f"{a.seconds} s loads; proxy on CPU {a.proxy_cpu}, load and backend on CPU {a.load_cpu}", flush=True)
    http = [s for s in a.scenarios if s != "passthrough"]
    try:
        for kind in a.proxies:
            if http:
                rig = Rig(kind, a, procs)
                try:
                    rig.start()
                    for s in http:
                        for run in range(a.runs):
                            print(f"compare: {kind} {s} run {run + 1}", flush=True)
                            r = globals()["sc_" + s](a, procs, rig)
                            results["scenarios"].setdefault(s, {}).setdefault(kind, []).append(r)
                finally:
                    rig.stop()
            if "passthrough" in a.scenarios:
                for run in range(a.runs):
                    print(f"compare: {kind} passthrough run {run + 1}", flush=True)
                    r = sc_passthrough(a, procs, kind)
                    results["scenarios"].setdefault("passthrough", {}).setdefault(kind, []).append(r)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"{started:%Y-%m-%d}-{host}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print()
    print(table(results, a.proxies))
    print(f"\ncompare: results in {path} (each cell: run 1 / run 2)")
    if a.require_figures:
        gaps = missing_figures(results)
        for g in gaps:
            print(f"compare: no figure: {g}", file=sys.stderr)
        sys.exit(1 if gaps else 0)


def missing_figures(results):
    """Every figure of the table that a run should have given but did not (or gave as 0)."""
    gaps = []
    for scenario, key, label, _ in ROWS:
        for proxy, runs in results["scenarios"].get(scenario, {}).items():
            for i, r in enumerate(runs):
                if "skipped" in r or (proxy == "direct" and "proxy_cpu" in key):
                    continue
                if not r.get(key):
                    gaps.append(f"{scenario} {proxy} run {i + 1}: {key} = {r.get(key)}")
                errors = {k: v for k, v in r.items() if k.startswith("errors") and v}
                if errors:
                    gaps.append(f"{scenario} {proxy} run {i + 1}: {errors}")
    return sorted(set(gaps))


if __name__ == "__main__":
    main()
