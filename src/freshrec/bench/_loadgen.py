"""An open-loop HTTP load generator, run as its own process by ``freshrec bench serve``.

Request ``i`` is sent at ``t0 + i / rate`` whether or not earlier ones have been answered (open
loop), and its latency is measured from that scheduled time, not from when it was actually
sent: if the client or the server falls behind, the wait counts as latency (no coordinated
omission). Two clients, both asyncio with a pool of keep-alive connections:

* ``raw`` (default): HTTP/1.1 POSTs written and read on asyncio streams, ~0.1 ms of CPU per
  request. The generator shares the machine with the server (2 cores here), so every
  millisecond it spends is taken from the server being measured.
* ``httpx``: ``httpx.AsyncClient``, ~1.3 ms of CPU per request, and slower still once requests
  queue (its pool scans its waiters).

    python -m freshrec.bench._loadgen URL BODIES.jsonl OUT.json --rate 200 --seconds 30

writes ``{"scheduled": [...], "latency_s": [...], "status": [...], "started_wall": ...}``
(status -1: no response: a timeout or connection error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

__all__ = ["main", "run_load"]


class RawClient:
    """Keep-alive HTTP/1.1 POSTs of JSON bodies to one URL, over a pool of asyncio streams."""

    def __init__(self, url: str, max_connections: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.max_connections = max_connections
        self.freed = asyncio.Condition()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """An idle connection (reused: True) or a new one."""
        async with self.freed:
            while not self.idle and self.open >= self.max_connections:
                await self.freed.wait()
            if self.idle:
                return (*self.idle.pop(), True)
            self.open += 1
        try:
            return (*await asyncio.open_connection(self.host, self.port), False)
        except BaseException:
            async with self.freed:
                self.open -= 1
                self.freed.notify()
            raise

    async def post(self, body: bytes) -> int:
        """POST ``body``; a kept-alive connection the server closed meanwhile (uvicorn closes
        idle ones after 5 s) is replaced once, as any HTTP client does."""
        for attempt in range(2):
            reader, writer, reused = await self._connection()
            keep = False
            try:
                writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                keep = b"connection: close" not in head.lower()
                return status
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                stale = reused and attempt == 0 and not getattr(exc, "partial", b"")
                if not stale:
                    raise
            finally:
                async with self.freed:
                    if keep:
                        self.idle.append((reader, writer))
                    else:
                        self.open -= 1
                        writer.close()
                    self.freed.notify()
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def run_load(
    url: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    *,
    client: str = "raw",
    warm: int = 50,
    connections: int = 64,
    timeout_s: float = 5.0,
) -> dict:
    if client == "raw":
        return await _run_raw(url, bodies, rate, seconds, warm=warm, connections=connections, timeout_s=timeout_s)
    return await _run_httpx(url, bodies, rate, seconds, warm=warm, connections=connections, timeout_s=timeout_s)


async def _open_loop(send, n: int, rate: float) -> tuple[list[float], list[int], float, float]:  # type: ignore[no-untyped-def]
    """Start ``send(i)`` at ``t0 + i / rate``; latency from that time to its completion."""
    loop = asyncio.get_running_loop()
    latency = [0.0] * n
    status = [0] * n

    async def one(i: int, scheduled: float) -> None:
        status[i] = await send(i)
        latency[i] = loop.time() - scheduled

    started_wall = time.time()
    t0 = loop.time() + 0.05
    tasks = []
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    return latency, status, started_wall, loop.time() - t0


async def _run_raw(
    url: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    *,
    warm: int,
    connections: int,
    timeout_s: float,
) -> dict:
    n = int(rate * seconds)
    client = RawClient(url, connections)

    failures: dict[str, int] = {}

    async def send(i: int) -> int:
        try:
            return await asyncio.wait_for(client.post(bodies[i % len(bodies)]), timeout_s)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            return -1

    for i in range(warm):
        await send(i)
    latency, status, started_wall, elapsed = await _open_loop(send, n, rate)
    await client.close()
    return {
        "scheduled": [i / rate for i in range(n)],
        "latency_s": latency,
        "status": status,
        "started_wall": started_wall,
        "elapsed_s": elapsed,
        "client": "raw",
        "failures": failures,
    }


async def _run_httpx(
    url: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    *,
    warm: int,
    connections: int,
    timeout_s: float,
) -> dict:
    n = int(rate * seconds)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        for i in range(warm):  # open connections and warm both sides; not measured
            await client.post(url, content=bodies[i % len(bodies)], headers=headers)

        async def send(i: int) -> int:
            try:
                r = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
                return r.status_code
            except httpx.HTTPError:
                return -1

        latency, status, started_wall, elapsed = await _open_loop(send, n, rate)
    return {
        "scheduled": [i / rate for i in range(n)],
        "latency_s": latency,
        "status": status,
        "started_wall": started_wall,
        "elapsed_s": elapsed,
        "client": "httpx",
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("bodies", type=Path, help="one JSON request body per line")
    p.add_argument("out", type=Path)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--client", choices=["raw", "httpx"], default="raw")
    args = p.parse_args(argv)
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line.strip()]
    result = asyncio.run(run_load(args.url, bodies, args.rate, args.seconds, client=args.client))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
