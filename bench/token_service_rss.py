#!/usr/bin/env python3
"""`make bench`, token service step: resident memory after a burst of logins.

Starts the release `tollgate-token-service` on a fresh database with one
confidential client, reads its RSS (VmRSS, /proc), sends BURST concurrent
client_credentials requests with the right secret (each costs one Argon2id
verification, ~19 MiB of work memory), waits for all answers, and reads RSS and
the peak (VmHWM) again. Target: RSS after the burst under TARGET_MB.

Settings (environment): TOKEN_SERVICE (target/release/tollgate-token-service),
BASELINE_TOKEN_SERVICE (another build, e.g. an older commit's, run the same way
and shown side by side with the ratio), BENCH_TOKEN_BURST (200),
BENCH_TOKEN_ROUNDS (3: bursts in a row; RSS is read after each).

Stdlib only. Prints one `BENCH token-service-rss …` line per binary.
"""

import base64
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_MB = 150
BURST = int(os.environ.get("BENCH_TOKEN_BURST", "200"))
ROUNDS = int(os.environ.get("BENCH_TOKEN_ROUNDS", "3"))
CLIENT = "bench-client"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def measure(binary):
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-ts-") as tmp:
        db = Path(tmp) / "bench.db"
        added = subprocess.run(
            [binary, "--db", db, "clients", "add", "--id", CLIENT, "--scopes", "read:data"],
            check=True, capture_output=True, text=True,
        ).stdout
        secret = next(
            line.split(": ", 1)[1] for line in added.splitlines() if line.startswith("client_secret: ")
        )
        port = free_port()
        log = open(Path(tmp) / "serve.log", "w")
        server = subprocess.Popen(
            [binary, "--db", db, "serve", "--listen", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if request(port, "GET", "/healthz") == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{binary} did not start: {(Path(tmp) / 'serve.log').read_text()}")
                time.sleep(0.1)
            start = rss_mb(server.pid)
            basic = base64.b64encode(f"{CLIENT}:{secret}".encode()).decode()
            headers = {
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
            }
            after = []
            for _ in range(ROUNDS):
                statuses = []
                gate = threading.Barrier(BURST)

                def one():
                    gate.wait()
                    statuses.append(request(port, "POST", "/token", "grant_type=client_credentials", headers))

                threads = [threading.Thread(target=one) for _ in range(BURST)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                bad = [status for status in statuses if status != 200]
                if bad or len(statuses) != BURST:
                    raise RuntimeError(f"{len(bad)} of {BURST} token requests failed: {sorted(set(bad))}")
                time.sleep(0.5)
                after.append(rss_mb(server.pid))
            peak = rss_mb(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    return start, after, peak


def main():
    binary = os.environ.get("TOKEN_SERVICE", str(ROOT / "target/release/tollgate-token-service"))
    baseline = os.environ.get("BASELINE_TOKEN_SERVICE")
    runs = [("tollgate-token-service", binary)]
    if baseline:
        runs.insert(0, ("baseline", baseline))
    print(f"\nToken service memory: {ROUNDS} bursts of {BURST} concurrent token requests (RSS, MB)")
    print(f"  {'build':<24}{'start':>8}{'after each burst':>26}{'peak':>8}")
    results = {}
    for name, path in runs:
        start, after, peak = measure(path)
        results[name] = after[-1]
        bursts = " ".join(f"{value:.0f}" for value in after)
        print(f"  {name:<24}{start:>8.0f}{bursts:>26}{peak:>8.0f}")
        print(f"BENCH token-service-rss build={name} burst={BURST} start_mb={start:.1f} "
              f"after_mb={after[-1]:.1f} peak_mb={peak:.1f} target_mb={TARGET_MB}")
    if baseline:
        print(f"  ratio after/baseline: {results['tollgate-token-service'] / results['baseline']:.3f}")
    met = results["tollgate-token-service"] < TARGET_MB
    print(f"  target RSS < {TARGET_MB} MB after the bursts: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
