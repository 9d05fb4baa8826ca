#!/usr/bin/env python3
"""A request loop for the scale-out run: each request is a fresh TLS connection through the
balancer carrying one redis command (INCR on one key), so every request picks an instance anew
and a restart or a kill shows up as failed requests, not as one broken long connection.

Usage: load.py HOST PORT CAFILE KEY SECONDS THREADS
Prints one line: ok=N failed=N refused=N reset=N other=N longest_gap_ms=N
"""
import socket
import ssl
import sys
import threading
import time

host, port, cafile, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seconds, threads = float(sys.argv[5]), int(sys.argv[6])
context = ssl.create_default_context(cafile=cafile)
context.check_hostname = False  # the development certificate names localhost
command = ("*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(key), key)).encode()
lock = threading.Lock()
counts = {"ok": 0, "failed": 0, "refused": 0, "reset": 0, "other": 0}
longest_gap = [0.0]
last_ok = [time.monotonic()]
deadline = time.monotonic() + seconds


def one():
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(command)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = tls.recv(64)
                if not chunk:
                    raise ConnectionError("closed before the reply")
                reply += chunk
            if not reply.startswith(b":"):
                raise ValueError("unexpected reply %r" % reply)


def loop():
    while time.monotonic() < deadline:
        try:
            one()
            with lock:
                counts["ok"] += 1
                now = time.monotonic()
                longest_gap[0] = max(longest_gap[0], now - last_ok[0])
                last_ok[0] = now
        except ConnectionRefusedError:
            with lock:
                counts["failed"] += 1
                counts["refused"] += 1
        except ConnectionResetError:
            with lock:
                counts["failed"] += 1
                counts["reset"] += 1
        except Exception as e:  # handshake failures, closes before the reply, timeouts
            with lock:
                counts["failed"] += 1
                counts["other"] += 1
            print("load: %s" % e, file=sys.stderr)


workers = [threading.Thread(target=loop) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(" ".join("%s=%d" % kv for kv in counts.items()),
      "longest_gap_ms=%d" % (longest_gap[0] * 1000))
