#!/usr/bin/env python3
"""Split requests: C keep-alive connections that each send every request in
PIECES parts with GAP seconds between them (as a slow client or a mobile
network does), for DURATION seconds. A server in front of which nothing
buffers reads each piece itself; behind a buffering proxy it gets the whole
request at once.

  split_requests.py --port P [--connections 32] [--pieces 3] [--gap 0.002]
                    [--duration 10] [--path /size/100]

Prints "split_requests: N requests, E errors, S s" at the end. Loopback only.
"""
import argparse
import asyncio
import sys
import time


async def client(port, path, pieces, gap, stop_at, stats):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, asyncio.TimeoutError):
        stats["errors"] += 1
        return
    request = f"GET {path} HTTP/1.1\r\nHost: split\r\nUser-Agent: split_requests\r\nAccept: */*\r\n\r\n".encode()
    step = max(1, len(request) // pieces)
    parts = [request[i:i + step] for i in range(0, len(request), step)]
    try:
        while time.monotonic() < stop_at:
            for i, part in enumerate(parts):
                w.write(part)
                await w.drain()
                if i + 1 < len(parts):
                    await asyncio.sleep(gap)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(r.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                stats["errors"] += 1
                break
            stats["requests"] += 1
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        stats["errors"] += 1
    w.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--pieces", type=int, default=3)
    p.add_argument("--gap", type=float, default=0.002)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--path", default="/size/100")
    a = p.parse_args()
    stats = {"requests": 0, "errors": 0}
    t0 = time.monotonic()
    await asyncio.gather(*(client(a.port, a.path, a.pieces, a.gap, t0 + a.duration, stats)
                           for _ in range(a.connections)))
    print(f"split_requests: {stats['requests']} requests, {stats['errors']} errors, "
          f"{time.monotonic() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
