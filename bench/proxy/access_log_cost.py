#!/usr/bin/env python3
"""What the access log costs: req/s and the agent's CPU per request (all its
threads, the log's writer too) with the log off, on in the combined format
and on in JSON, in the same run.

  /usr/bin/python3 bench/proxy/access_log_cost.py [--build build-release]
      [--rounds 2] [--seconds 5]

Three agents in front of one demo server, each pinned to CPU 0 (wrk and the
server to CPU 1); they take turns, --rounds times, each under wrk -t1 -c64
GET /size/100 over keep-alive for --seconds (bounded). The log goes to a
file in a temporary directory (removed at the end). Prints req/s, CPU per
request and the ratio to "off" of each round, and each log's line count
against the requests wrk made. A figure, not a test: it asserts nothing.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from harness import Processes, free_port, wait_listening, with_cpu, wrk  # noqa: E402


def lines_in(path):
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "build"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=int, default=5)
    a = p.parse_args()
    agent = os.path.join(a.build, "agent", "offload-agent")
    server = os.path.join(a.build, "server", "offload-demo-server")
    tmp = tempfile.mkdtemp(prefix="offload-access-log-cost.")
    procs = Processes(tmp, True)
    try:
        backend_port = free_port()
        backend = procs.start("backend", [server, "--listen", f"127.0.0.1:{backend_port}", "--workers", "64"], 1)
        wait_listening(backend_port, backend)
        agents = {}
        for name, flags in (("off", []),
                            ("combined", ["--access-log", os.path.join(tmp, "combined.log")]),
                            ("json", ["--access-log", os.path.join(tmp, "json.log"), "--access-log-format", "json"])):
            port = free_port()
            proc = procs.start("agent-" + name, [agent, "run", "--listen", f"127.0.0.1:{port}", "--upstream",
                                                 f"tcp://127.0.0.1:{backend_port}", "--admin", "off",
                                                 "--persistent", "16", "--max-upstream", "16"] + flags, 0)
            wait_listening(port, proc)
            agents[name] = (proc, port, 0)
        print(f"access_log_cost: wrk -t1 -c64 {a.seconds}s GET /size/100, keep-alive; {a.rounds} rounds")
        print(f"{'':12}" + "".join(f"{n + ' req/s':>16}{n + ' us/req':>16}" for n in agents) +
              f"{'combined/off':>14}{'json/off':>10}")
        for r in range(a.rounds):
            cost, rate = {}, {}
            for name, (proc, port, made) in agents.items():
                w, cpu = with_cpu(proc.pid, lambda: wrk(procs, 1, port, 64, a.seconds, "/size/100"))
                if w["errors"] or not w["requests"]:
                    print(f"access_log_cost: {name}: {w['errors']} errors in {w['requests']} requests",
                          file=sys.stderr)
                cost[name] = cpu / w["requests"] * 1e6 if w["requests"] else float("nan")
                rate[name] = w["rps"]
                agents[name] = (proc, port, made + w["requests"])
            print(f"{'round ' + str(r + 1):12}" + "".join(f"{rate[n]:>16.0f}{cost[n]:>16.2f}" for n in agents) +
                  f"{cost['combined'] / cost['off']:>14.3f}{cost['json'] / cost['off']:>10.3f}")
        time.sleep(0.5)  # the last buffers reach the files
        for name in ("combined", "json"):
            made = agents[name][2]
            print(f"access_log_cost: {name}: {lines_in(os.path.join(tmp, name + '.log'))} lines for "
                  f"{made} requests (wrk counts only completed ones)")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
