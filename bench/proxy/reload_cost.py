#!/usr/bin/env python3
"""What a reload costs: the time from SIGHUP to the agent's "reloaded" line,
and the memory and threads of old generations kept alive by idle kept-alive
clients (a reload never closes an idle client: each holds its generation
until its next response, its keep-alive timeout or drain_timeout_ms).
Starts the recording backend and the agent on loopback.

  reload_cost.py AGENT RECORDING_BACKEND [--reloads 20]

Per reload, one new kept-alive client makes one request and then idles.
Prints the reload times (median, max), RSS and threads before, with every
old generation held, and after each idle client's next request (its
generation ends). A figure, not a test: it asserts nothing.
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import tempfile
import time


def read_until(proc, pattern, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(pattern, line)
        if m:
            return m
    raise SystemExit(f"no line matching {pattern!r}")


def rss_threads(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) // 1024
    return rss, len(os.listdir(f"/proc/{pid}/task"))


def get(sock):
    sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    data = b""
    deadline = time.time() + 5
    while b"\r\n\r\nok" not in data and time.time() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("agent")
    ap.add_argument("backend")
    ap.add_argument("--reloads", type=int, default=20)
    args = ap.parse_args()
    backend = subprocess.Popen([args.backend, "--listen", "127.0.0.1:0", "--workers", "512"],
                               stderr=subprocess.PIPE, text=True)
    agent = None
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    try:
        bport = int(read_until(backend, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        cfg.write(f'[[upstream]]\nservers = ["tcp://127.0.0.1:{bport}"]\n'
                  '[[listener]]\nlisten = "127.0.0.1:0"\n')
        cfg.close()
        agent = subprocess.Popen([args.agent, "run", "-c", cfg.name, "--admin", "127.0.0.1:0"],
                                 stderr=subprocess.PIPE, text=True)
        port = int(read_until(agent, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        read_until(agent, r"admin on ")
        print("before: RSS %d MiB, %d threads" % rss_threads(agent.pid))
        idle, times = [], []
        for i in range(args.reloads):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            get(s)
            idle.append(s)
            t0 = time.monotonic()
            agent.send_signal(signal.SIGHUP)
            read_until(agent, r"reloaded: generation|reload failed")
            times.append((time.monotonic() - t0) * 1000)
        times.sort()
        print("reload, SIGHUP to its line: median %.1f ms, max %.1f ms (%d reloads)" %
              (times[len(times) // 2], times[-1], len(times)))
        print("%d old generations held by one idle client each: RSS %d MiB, %d threads" %
              ((args.reloads,) + rss_threads(agent.pid)))
        for s in idle:
            get(s)  # its response says close: that generation ends
            s.close()
        time.sleep(1)
        print("after each idle client's next request: RSS %d MiB, %d threads" % rss_threads(agent.pid))
    finally:
        if agent:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        backend.kill()
        backend.wait()
        os.unlink(cfg.name)


if __name__ == "__main__":
    main()
