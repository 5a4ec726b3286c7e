#!/usr/bin/env python3
"""A bounded slowloris storm: N connections that each start a request and then
send one more header byte every INTERVAL seconds, never finishing the header.

  slowloris.py --port P [--connections N] [--interval S] [--duration S]

Prints "slowloris: N open" once the connections are made (or after 10 s of
trying), then at the end "slowloris: N open, M closed by the server".
Loopback only. Used by ci/demo.sh and bench/proxy/compare.sh.
"""
import argparse
import asyncio
import resource
import sys


async def one(port, interval, stop, stats, opened_event, target):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, asyncio.TimeoutError):
        stats["failed"] += 1
        return
    stats["open"] += 1
    if stats["open"] + stats["failed"] >= target:
        opened_event.set()
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        await writer.drain()
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(reader.read(4096), interval)
                if not data:  # the server closed it
                    stats["closed"] += 1
                    return
                continue  # an error response: wait for the close
            except asyncio.TimeoutError:
                pass
            writer.write(b"x")
            await writer.drain()
    except (OSError, ConnectionError):
        stats["closed"] += 1
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=15.0)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stats = {"open": 0, "failed": 0, "closed": 0}
    stop = asyncio.Event()
    opened = asyncio.Event()
    tasks = []
    for i in range(a.connections):
        tasks.append(asyncio.create_task(one(a.port, a.interval, stop, stats, opened, a.connections)))
        if i % 100 == 99:
            await asyncio.sleep(0.01)  # don't overflow the listen backlog
    try:
        await asyncio.wait_for(opened.wait(), 10)
    except asyncio.TimeoutError:
        pass
    print(f"slowloris: {stats['open']} open", flush=True)
    await asyncio.sleep(max(0.0, a.duration))
    still_open = stats["open"] - stats["closed"]
    stop.set()
    await asyncio.wait(tasks, timeout=a.interval + 2)
    print(f"slowloris: {still_open} open, {stats['closed']} closed by the server, "
          f"{stats['failed']} failed to connect", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
