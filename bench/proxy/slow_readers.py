#!/usr/bin/env python3
"""Slow readers: N connections that each ask for one large response and read
it at a fixed rate, so that a proxy must hold the response while the server
is already free (or the server's worker is held, without a proxy).

  slow_readers.py --port P [--readers 20] [--bytes 8388608] [--rate 1048576]
                  [--deadline 60]

Prints "slow_readers: N started" once every request is sent, then at the end
"slow_readers: D done, B bytes, F failed, S s". Each reader stops at
--deadline seconds whatever it got (so the run is bounded). Loopback only.
"""
import argparse
import asyncio
import sys
import time


async def reader(port, size, rate, deadline, stats, started, total):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, asyncio.TimeoutError):
        stats["failed"] += 1
        return
    w.write(f"GET /size/{size} HTTP/1.1\r\nHost: slow\r\nConnection: close\r\n\r\n".encode())
    await w.drain()
    stats["started"] += 1
    if stats["started"] + stats["failed"] >= total:
        started.set()
    got = 0
    t0 = time.monotonic()
    chunk = max(1, rate // 20)  # twenty reads a second
    try:
        while time.monotonic() < deadline:
            data = await asyncio.wait_for(r.read(chunk), max(0.1, deadline - time.monotonic()))
            if not data:
                break
            got += len(data)
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
    except (OSError, asyncio.TimeoutError):
        pass
    stats["bytes"] += got
    if got >= size:
        stats["done"] += 1
    else:
        stats["failed"] += 1
    w.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--readers", type=int, default=20)
    p.add_argument("--bytes", type=int, default=8 << 20)
    p.add_argument("--rate", type=int, default=1 << 20, help="bytes per second per reader")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds; every reader stops then")
    a = p.parse_args()
    stats = {"started": 0, "failed": 0, "done": 0, "bytes": 0}
    started = asyncio.Event()
    t0 = time.monotonic()
    deadline = t0 + a.deadline
    tasks = [asyncio.create_task(reader(a.port, a.bytes, a.rate, deadline, stats, started, a.readers))
             for _ in range(a.readers)]
    try:
        await asyncio.wait_for(started.wait(), 10)
    except asyncio.TimeoutError:
        pass
    print(f"slow_readers: {stats['started']} started", flush=True)
    await asyncio.gather(*tasks)
    print(f"slow_readers: {stats['done']} done, {stats['bytes']} bytes, {stats['failed']} failed, "
          f"{time.monotonic() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
