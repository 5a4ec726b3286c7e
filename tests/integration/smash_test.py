#!/usr/bin/env python3
"""Throws random fragments of HTTP/1.1 requests at a live agent (in front of
the demo server, over TCP and over the ring) for a bounded time, then checks
that the agent still answers a plain GET and never died. It found a livelock
the unit and integration tests had missed.

    smash_test.py AGENT DEMO_SERVER [SECONDS]

Loopback only; every process it starts is stopped by PID.
"""
import os, random, re, signal, socket, subprocess, sys, time

AGENT, DEMO = sys.argv[1], sys.argv[2]
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 4.0

PARTS = [b"GET ", b"POST ", b"HEAD ", b"/size/10", b"/size/100000", b"/spin/100", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n",
         b"Host: a\r\n", b"Content-Length: 5\r\n", b"Content-Length: 99999999999999999999\r\n",
         b"Transfer-Encoding: chunked\r\n", b"\r\n", b"0\r\n\r\n", b"5\r\nhello\r\n", b"\x00", b"\r", b"\n", b" ",
         b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"X: " + b"a" * 20000 + b"\r\n",
         b"GET http://x/y HTTP/1.1\r\nHost: b\r\n\r\n", b"GET /size/3 HTTP/1.1\r\nHost: c\r\n\r\n" * 40,
         b"zzzz", b"\xff\xfe", b"HTTP/1.1 200 OK\r\n"]


def start(cmd, ready):
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    seen = b""
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        seen += line
        m = re.search(ready, line)
        if m:
            return p, m
    p.kill()
    raise SystemExit("did not start: %r\n%s" % (cmd, seen.decode(errors="replace")))


def get(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def smash(port, seconds, rng):
    deadline = time.time() + seconds
    sent = 0
    while time.time() < deadline:
        s = socket.socket()
        s.settimeout(0.3)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"".join(rng.choice(PARTS) for _ in range(rng.randint(1, 12))))
            if rng.random() < 0.5:
                s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
        except OSError:
            pass
        finally:
            s.close()
        sent += 1
    return sent


def run(upstream_kind):
    procs = []
    try:
        if upstream_kind == "tcp":
            demo, m = start([DEMO, "--listen", "127.0.0.1:0", "--workers", "4"], rb"listening on 127\.0\.0\.1:(\d+)")
            procs.append(demo)
            upstream = "tcp://127.0.0.1:%s" % m.group(1).decode()
        else:
            upstream = "shm:smash-%d" % os.getpid()
        agent, m = start([AGENT, "run", "--listen", "127.0.0.1:0", "--upstream", upstream, "--admin", "off",
                          "--max-upstream", "4", "--header-timeout-ms", "1000"], rb"listening on 127\.0\.0\.1:(\d+)")
        procs.insert(0, agent)
        port = int(m.group(1))
        if upstream_kind == "ring":
            demo = subprocess.Popen([DEMO, "--ring", upstream[4:], "--workers", "4"],
                                    stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            procs.append(demo)
            deadline = time.time() + 10
            while b"attached" not in agent.stderr.readline() and time.time() < deadline:
                pass
        rng = random.Random(1)
        sent = smash(port, SECONDS, rng)
        alive = agent.poll() is None
        try:
            answer = get(port, "/size/10") if alive else b""
        except OSError as e:  # a hung agent: the plain GET times out
            answer = b""
            print("%s: plain GET failed: %s" % (upstream_kind, e))
        ok = alive and answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"0123456789")
        print("%s: %d smash connections; agent %s; plain GET afterwards %s" %
              (upstream_kind, sent, "alive" if alive else "DIED", "answered" if ok else "NOT ANSWERED"))
        return ok
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=12)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


results = [run("tcp"), run("ring")]
passed = sum(results)
print("%d passed, %d failed" % (passed, len(results) - passed))
sys.exit(0 if all(results) else 1)
