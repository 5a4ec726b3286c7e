#!/usr/bin/env python3
"""What the security proxy costs: the agent's CPU per request with an active
rule set against the same agent with none, in the same run.

  /usr/bin/python3 bench/proxy/security_cost.py [--build build-release]
      [--rounds 2] [--seconds 8] [--prefixes 1000]

"rules": `deny` with --prefixes prefixes (IPv4 and IPv6, of many lengths, none
covering 127.0.0.0/8, so every request is screened and served), a request
rate per source on (high enough never to refuse), and a bearer token checked
on every request head. "none": no rules. Both get the same requests, with the
token, from wrk -c64 on loopback: once over keep-alive connections (the
per-request checks) and once with a new connection per request (the accept
screen too). Each agent pinned to CPU 0, wrk and the demo server to CPU 1;
the two agents take turns, --rounds times. Prints CPU per request and the
ratio rules/none of each round. A figure, not a test: it asserts nothing.
On a shared 2-core machine these rounds move by more than the 5 % they are
meant to show; build/bench/security/bench_security gives the checks' own
cost, which does not drift.
"""
import argparse
import os
import random
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "build"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--prefixes", type=int, default=1000)
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
