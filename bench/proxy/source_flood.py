#!/usr/bin/env python3
"""A flood of distinct sources: the agent's memory before and after, with the
per-source table bounded by source_table_size. Starts the demo server and the
agent on loopback, then makes one request from each of N distinct sources in
127.0.0.0/8 (one connection each, closed after its response), in order.

  source_flood.py AGENT SERVER [--sources 100000] [--table 65536] [--rate 10]

Prints the agent's RSS before the flood, after it, and the counters
source_evictions, rate_limited, rejected_source_table_full. A figure, not a
test: it asserts nothing.
"""
import argparse
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def wait_line(proc, needle, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline().decode()
        if needle in line:
            return line.strip()
    sys.exit(f"no '{needle}' from the agent")


def port_of(line):
    return int(line.rsplit(":", 1)[1])


def stats(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?format=json", timeout=5) as r:
        return json.load(r)


def one(source, port):
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: flood\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("agent")
    p.add_argument("server")
    p.add_argument("--sources", type=int, default=100000)
    p.add_argument("--table", type=int, default=65536)
    p.add_argument("--rate", type=int, default=10)
    a = p.parse_args()
    server = subprocess.Popen([a.server, "--listen", "127.0.0.1:18731", "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    agent = subprocess.Popen([a.agent, "run", "--listen", "127.0.0.1:0", "--upstream", "tcp://127.0.0.1:18731",
                              "--admin", "127.0.0.1:0", "--rate-limit", str(a.rate), "--source-table-size",
                              str(a.table), "--max-clients-per-source", "4"], stderr=subprocess.PIPE)
    try:
        port = port_of(wait_line(agent, "listening on "))
        admin = port_of(wait_line(agent, "admin on "))
        one("127.0.0.1", port)
        before = rss_kib(agent.pid)
        started = time.time()
        for i in range(a.sources):
            n = i + 256  # 127.0.1.0 onwards
            one(f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", port)
        took = time.time() - started
        after = rss_kib(agent.pid)
        s = stats(admin)
        print(f"sources {a.sources} table {a.table}: agent RSS {before} KiB before, {after} KiB after "
              f"({after - before:+d} KiB) in {took:.1f} s; source_evictions {s.get('source_evictions')} "
              f"rate_limited {s.get('rate_limited')} rejected_source_table_full {s.get('rejected_source_table_full')}")
    finally:
        agent.terminate()
        server.terminate()
        agent.wait(10)
        server.wait(10)


if __name__ == "__main__":
    main()
