#!/usr/bin/env python3
"""Opens N keep-alive connections that each make one request and then stay
idle, for measuring a proxy's memory per idle connection.

  idle_clients.py --port P [--connections N] [--path /size/100] [--hold S]

Prints "idle: N ready (F failed)" once every connection has its response, then
holds them until stdin closes, a signal, or --hold seconds pass.
"""
import argparse
import resource
import selectors
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--path", default="/size/100")
    p.add_argument("--hold", type=float, default=120.0)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = f"GET {a.path} HTTP/1.1\r\nHost: idle\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    socks, pending, failed = [], {}, 0
    for i in range(a.connections):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", a.port))
            s.sendall(request)
        except OSError:
            failed += 1
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
        if i % 200 == 199:
            time.sleep(0.005)
    deadline = time.time() + 60
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                failed += 1
                sel.unregister(s)
                pending.pop(s, None)
                continue
            buf = pending[s] + data
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                pending[s] = buf
                continue
            length = 0
            for line in buf[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(buf) >= head_end + 4 + length:
                sel.unregister(s)
                pending.pop(s)
            else:
                pending[s] = buf
    failed += len(pending)
    print(f"idle: {len(socks) - failed} ready ({failed} failed)", flush=True)
    end = time.time() + a.hold
    try:
        while time.time() < end:
            if sys.stdin.closed:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
