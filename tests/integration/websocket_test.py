#!/usr/bin/python3
"""A real WebSocket client and server (Debian's python3-websockets) through
the agent's HTTP listener: the upgrade goes on as a tunnel to the server, the
frames move both ways byte for byte, a refused upgrade's answer comes back as
the server gave it, and plain HTTP on the same listener is unaffected.

  websocket_test.py AGENT

Exit 0: passed; 1: failed; 77: skipped (websockets missing), with the reason.
"""
import asyncio
import http
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

try:
    import websockets
except ImportError as e:  # reported, never a silent pass
    print(f"SKIP: python3-websockets is not installed ({e})")
    sys.exit(77)

AGENT = sys.argv[1]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")


async def echo(ws, path=None):
    async for message in ws:
        await ws.send(message)


def refuse_some(path, headers):
    # Any answer but 101 is the server's to give: it must reach the client.
    if path.startswith("/nope"):
        return (http.HTTPStatus.NOT_FOUND, [("Content-Type", "text/plain")], b"no such socket\n")
    if "Upgrade" not in headers:  # plain HTTP on the same server
        return (http.HTTPStatus.OK, [("Content-Type", "text/plain")], b"plain http\n")
    return None


def start_agent(upstream_port):
    p = subprocess.Popen([AGENT, "run", "--listen", "127.0.0.1:0", "--upstream",
                          f"tcp://127.0.0.1:{upstream_port}", "--admin", "127.0.0.1:0"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    ports = {}
    deadline = time.time() + 15
    lines = []
    while time.time() < deadline and len(ports) < 2:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            ports["listen"] = int(m.group(1))
        m = re.search(r"admin on 127\.0\.0\.1:(\d+)", line)
        if m:
            ports["admin"] = int(m.group(1))
    if len(ports) < 2:
        p.kill()
        raise SystemExit("agent did not start:\n" + "".join(lines))
    # Keep draining stderr so the agent never blocks on it.
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p, ports["listen"], ports["admin"]


def stats(admin_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?format=json", timeout=5) as r:
        doc = json.load(r)
    flat = {}
    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    flat[k] = flat.get(k, 0) + v
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    for k, v in doc.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[k] = v
        else:
            walk(v)
    return flat


async def one_client(port, n, seed):
    async with websockets.connect(f"ws://127.0.0.1:{port}/chat?{seed}", max_size=None,
                                  open_timeout=10, close_timeout=5) as ws:
        for i in range(n):
            text = f"message {seed}.{i} " * (i % 7 + 1)
            await ws.send(text)
            got = await asyncio.wait_for(ws.recv(), 10)
            if got != text:
                return f"text {seed}.{i} came back different"
        blob = os.urandom(1 << 20)
        await ws.send(blob)
        got = await asyncio.wait_for(ws.recv(), 20)
        if got != blob:
            return f"1 MiB binary of client {seed} came back different"
    return None


async def main():
    server = await websockets.serve(echo, "127.0.0.1", 0, max_size=None, process_request=refuse_some)
    upstream_port = server.sockets[0].getsockname()[1]
    agent, port, admin = start_agent(upstream_port)
    try:
        # One client, then twenty at once.
        check(await one_client(port, 100, 0) is None, "one client's echoes")
        results = await asyncio.gather(*(one_client(port, 20, s) for s in range(1, 21)))
        for r in results:
            check(r is None, r or "")
        # A refused upgrade: the server's 404 reaches the client.
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/nope", open_timeout=10):
                check(False, "an upgrade the server refused was opened")
        except websockets.exceptions.InvalidStatusCode as e:
            check(e.status_code == 404, f"refused upgrade: status {e.status_code}, expected 404")
        # Plain HTTP on the same listener goes the normal way.
        body = await asyncio.get_running_loop().run_in_executor(
            None, lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/plain", timeout=5).read())
        check(body == b"plain http\n", f"plain GET through the agent: {body!r}")
        s = stats(admin)
        check(s.get("upgrades", 0) == 22, f"upgrades counted: {s.get('upgrades')} (expected 22)")
        check(s.get("upgrades_switched", 0) == 21, f"101 answers counted: {s.get('upgrades_switched')} (expected 21)")
        check(agent.poll() is None, "the agent is still running")
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
        server.close()
        await server.wait_closed()


asyncio.run(main())
if failures:
    sys.exit(1)
print("PASS: websocket echo through the agent (21 clients, text and 1 MiB binary), refused upgrade, plain HTTP")
