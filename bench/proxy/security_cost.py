#!/usr/bin/env python3
"""What the security proxy costs: the agent's CPU per request with an active
rule set against the same agent with none, in the same run.

  /usr/bin/python3 bench/proxy/security_cost.py [--build build-release]
      [--rounds 2] [--seconds 8] [--prefixes 1000] [--callgrind 2000]

"rules": `deny` with --prefixes prefixes (IPv4 and IPv6, of many lengths, none
covering 127.0.0.0/8, so every request is screened and served), a request
rate per source on (high enough never to refuse), and a bearer token checked
on every request head. "none": no rules. Both get the same requests, with the
token, from wrk -c64 on loopback: once over keep-alive connections (the
per-request checks) and once with a new connection per request (the accept
screen too). Each agent pinned to CPU 0, wrk and the demo server to CPU 1;
the two agents take turns, --rounds times. Prints CPU per request and the
ratio rules/none of each round. A figure, not a test: it asserts nothing.

CPU time per request on a shared 2-core machine moves by more than the 5 %
this is meant to show, so --callgrind N counts instructions instead, which
do not drift: each agent runs under valgrind's callgrind twice, serving N
and then 2N requests (the same requests, sent one at a time by this script,
over keep-alive connections of 100 requests and then with a connection per
request), and the difference over N is its instructions per request, start-up
(1,000 prefixes parsed) left out. Nothing of the kernel's is counted.
"""
import argparse
import os
import random
import re
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from harness import Processes, free_port, wait_listening, with_cpu, wrk  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def deny_prefixes(n, seed=7):
    """n distinct prefixes, none of them covering loopback."""
    rnd = random.Random(seed)
    out = set()
    while len(out) < n:
        if rnd.random() < 0.7:
            first = rnd.choice([10, 100, 172, 192, 198, 203, 45, 81, 91, 185])
            length = rnd.choice([8, 12, 16, 20, 24, 28, 32])
            addr = [first, rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)]
            bits = int.from_bytes(bytes(addr), "big") & (((1 << length) - 1) << (32 - length))
            if length == 8 and first == 127:
                continue
            out.add(f"{'.'.join(str(b) for b in bits.to_bytes(4, 'big'))}/{length}")
        else:
            length = rnd.choice([32, 48, 56, 64, 128])
            groups = [0x2001, 0xdb8] + [rnd.randrange(65536) for _ in range(6)]
            bits = int.from_bytes(b"".join(g.to_bytes(2, "big") for g in groups), "big")
            bits &= ((1 << length) - 1) << (128 - length)
            text = ":".join(f"{(bits >> (112 - 16 * i)) & 0xffff:x}" for i in range(8))
            out.add(f"{text}/{length}")
    return sorted(out)


def write_config(path, port, backend_port, rules, token_file, prefixes):
    lines = ['admin = "off"', "max_clients = 19000", "header_timeout_ms = 60000", "keepalive_timeout_ms = 120000"]
    if rules:
        lines.append("deny = [" + ", ".join(f'"{p}"' for p in deny_prefixes(prefixes)) + "]")
        lines += ["rate_limit = 1000000", "rate_burst = 1000000"]
    lines += ["[[upstream]]", 'name = "app"',
              f'servers = [{{ address = "tcp://127.0.0.1:{backend_port}", max_connections = 16, persistent = 16 }}]',
              "[[listener]]", f'listen = "127.0.0.1:{port}"', 'upstream = "app"']
    if rules:
        lines.append(f'security = {{ auth = "bearer", token_file = "{token_file}" }}')
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def send_requests(port, n, per_connection, headers):
    """n GET /size/100, per_connection of them on each connection, one at a
    time, each response read whole (Content-Length framed)."""
    request = ("GET /size/100 HTTP/1.1\r\nHost: bench\r\n" + "".join(h + "\r\n" for h in headers)
               + "\r\n").encode()
    sent = 0
    while sent < n:
        with socket.create_connection(("127.0.0.1", port), 60) as s:
            buf = b""
            for _ in range(min(per_connection, n - sent)):
                s.sendall(request)
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("the agent closed the connection before a response")
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("unexpected response: " + head.split(b"\r\n")[0].decode(errors="replace"))
                length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
                while len(buf) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("the agent closed the connection inside a body")
                    buf += chunk
                buf = buf[length:]
                sent += 1


def instructions(agent, cfg, port, tmp, name, n, per_connection, headers):
    """Instructions callgrind counted in an agent that served n requests."""
    out = os.path.join(tmp, f"callgrind.{name}.{n}.{per_connection}")
    log = open(out + ".log", "w")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", agent, "run", "-c", cfg],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc.log_path, proc.name = log.name, "agent-" + name
    try:
        wait_listening(port, proc, 120)
        send_requests(port, n, per_connection, headers)
    finally:
        proc.terminate()  # SIGTERM: the agent drains and exits, and callgrind writes its counts
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def callgrind_table(agent, tmp, backend_port, token_file, prefixes, n):
    auth = f"Authorization: Bearer {TOKEN}"
    print(f"security_cost: instructions per request under callgrind ({prefixes} deny prefixes, rate limit on, "
          f"bearer token on), from agents that served {n} and {2 * n} requests")
    print(f"{'':34}{'none (instr/req)':>18}{'rules (instr/req)':>18}{'rules/none':>12}")
    for label, per_connection in (("keep-alive (100 a connection)", 100), ("a connection per request", 1)):
        per_request = {}
        for name, rules in (("none", False), ("rules", True)):
            port = free_port()
            cfg = os.path.join(tmp, f"cg-{name}.toml")
            write_config(cfg, port, backend_port, rules, token_file, prefixes)
            counts = [instructions(agent, cfg, port, tmp, name, k, per_connection, (auth,)) for k in (n, 2 * n)]
            per_request[name] = (counts[1] - counts[0]) / n
        print(f"{label:34}{per_request['none']:>18,.0f}{per_request['rules']:>18,.0f}"
              f"{per_request['rules'] / per_request['none']:>12.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "build"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--prefixes", type=int, default=1000)
    p.add_argument("--callgrind", type=int, default=0, metavar="N",
                   help="count instructions per request under callgrind (N and 2N requests) instead of CPU time")
    a = p.parse_args()
    agent = os.path.join(a.build, "agent", "offload-agent")
    server = os.path.join(a.build, "server", "offload-demo-server")
    tmp = tempfile.mkdtemp(prefix="offload-security-cost.")
    procs = Processes(tmp, True)
    token_file = os.path.join(tmp, "tokens")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    try:
        backend_port = free_port()
        backend = procs.start("backend", [server, "--listen", f"127.0.0.1:{backend_port}", "--workers", "64"], 1)
        wait_listening(backend_port, backend)
        if a.callgrind > 0:
            callgrind_table(agent, tmp, backend_port, token_file, a.prefixes, a.callgrind)
            return
        agents = {}
        for name, rules in (("none", False), ("rules", True)):
            port = free_port()
            cfg = os.path.join(tmp, name + ".toml")
            write_config(cfg, port, backend_port, rules, token_file, a.prefixes)
            proc = procs.start("agent-" + name, [agent, "run", "-c", cfg], 0)
            wait_listening(port, proc)
            agents[name] = (proc, port)
        auth = f"Authorization: Bearer {TOKEN}"
        print(f"security_cost: {a.prefixes} deny prefixes, rate limit on, bearer token on; wrk -c64 "
              f"{a.seconds}s GET /size/100; {a.rounds} rounds")
        print(f"{'':34}{'none (us/req)':>16}{'rules (us/req)':>16}{'rules/none':>12}")
        for label, headers in (("keep-alive", (auth,)), ("a connection per request", (auth, "Connection: close"))):
            for r in range(a.rounds):
                cost = {}
                for name, (proc, port) in agents.items():
                    w, cpu = with_cpu(proc.pid, lambda: wrk(procs, 1, port, 64, a.seconds, "/size/100", headers))
                    if w["errors"] or not w["requests"]:
                        print(f"security_cost: {name}: {w['errors']} errors in {w['requests']} requests",
                              file=sys.stderr)
                    cost[name] = cpu / w["requests"] * 1e6 if w["requests"] else float("nan")
                print(f"{label + ', round ' + str(r + 1):34}{cost['none']:>16.2f}{cost['rules']:>16.2f}"
                      f"{cost['rules'] / cost['none']:>12.3f}")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
