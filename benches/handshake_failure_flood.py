#!/usr/bin/env python3
"""A flood of failed handshakes against a tlsvisor binary, and the log lines it writes.

    benches/handshake_failure_flood.py target/release/tlsvisor [N] [PROCESSES]

Starts `tlsvisor serve` (JSON logs, an admin listener), then N clients, spread over
PROCESSES processes of asyncio connections, each sending a plain HTTP request to the TLS port
(class `not_tls`) and reading until the server closes. Prints how long the N took, the
failures counted in `tlsvisor_handshake_failures_total`, and the `handshake failed` lines
written with the sum of their `suppressed` counts (docs/operations.md, "Failed handshakes";
the figures are in docs/benchmarks.md). Loopback only; every loop is bounded by N.
"""
import asyncio
import json
import multiprocessing
import re
import subprocess
import sys
import threading
import time
import urllib.request

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def one(port):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        await writer.drain()
        while await reader.read(4096):
            pass
        writer.close()
    except OSError:
        pass


async def many(port, n, in_flight):
    gate = asyncio.Semaphore(in_flight)

    async def gated():
        async with gate:
            await one(port)

    await asyncio.gather(*(gated() for _ in range(n)))


def client(port, n):
    asyncio.run(many(port, n, 200))


def metric(admin, name):
    body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--log-format", "json",
         # One address floods here: the per-IP handshake limit would turn most of it away
         # before a handshake could fail.
         "--max-handshakes-per-ip", "0"],
        stderr=subprocess.PIPE, text=True)
    lines = []
    listen = admin = None
    while listen is None or admin is None:
        line = server.stderr.readline()
        if not line:
            sys.exit("tlsvisor exited before it listened")
        lines.append(line)
        if m := re.search(r'"listen":"127\.0\.0\.1:(\d+)"', line):
            listen = int(m.group(1))
        if m := re.search(r'"admin_listen":"(127\.0\.0\.1:\d+)"', line):
            admin = m.group(1)
    # Keep reading the log while the flood runs, so the pipe never fills.
    reader = threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True)
    reader.start()

    per = n // processes
    started = time.monotonic()
    workers = [multiprocessing.Process(target=client, args=(listen, per)) for _ in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    # One throttle window more, so that a last line can report what the window held.
    time.sleep(1.5)
    counted = metric(admin, 'tlsvisor_handshake_failures_total{class="not_tls"}')
    server.terminate()
    server.wait(timeout=30)
    reader.join(timeout=5)
    failed = [json.loads(l) for l in lines if '"handshake failed"' in l]
    suppressed = sum(l.get("suppressed", 0) for l in failed)
    print(f"{per * processes} clients in {elapsed:.2f} s ({per * processes / elapsed:.0f}/s), "
          f"{processes} client processes")
    print(f"counted not_tls: {counted:.0f}")
    print(f"'handshake failed' lines: {len(failed)}, their suppressed counts sum to {suppressed}")


if __name__ == "__main__":
    main()
