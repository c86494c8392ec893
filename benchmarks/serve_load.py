"""Requests per second and latency of `alexnet-cifar10 serve` for single-image POST /predict over loopback.

    python benchmarks/serve_load.py --weights best --requests 400 --concurrency 1 8 32 --out results/serve.json

Starts the server in its own process (127.0.0.1, a free port), warms it up, then for each concurrency level sends
``--requests`` uploads of distinct 32x32 PNGs from that many client threads (one keep-alive connection each),
stopping early at ``--seconds``. The client shares the machine with the server: on a 2-core CPU it takes part of
the time it measures.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image


def image(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), ((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256)).save(out, format="PNG")
    return out.getvalue()


def form(data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def load(port: int, requests: int, concurrency: int, seconds: float) -> dict[str, float | int]:
    bodies = [form(image(i)) for i in range(64)]
    deadline = time.perf_counter() + seconds
    per_client = -(-requests // concurrency)

    def client(worker: int) -> list[float]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies = []
        for i in range(per_client):
            if time.perf_counter() > deadline:
                break
            body, headers = bodies[(worker * per_client + i) % len(bodies)]
            start = time.perf_counter()
            connection.request("POST", "/predict", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"error: HTTP {response.status} from the server")
            latencies.append(time.perf_counter() - start)
        connection.close()
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(x for part in pool.map(client, range(concurrency)) for x in part)
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="best")
    parser.add_argument("--requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=60, help="time limit per concurrency level")
    parser.add_argument("--out", default=None, help="also write the results as JSON")
    parser.add_argument("--quiet-server", action="store_true", help="drop the server's stderr")
    args = parser.parse_args()
    if args.requests < 1 or args.seconds <= 0 or min(args.concurrency) < 1 or max(args.concurrency) > 64:
        parser.error("--requests and --seconds must be positive, --concurrency 1-64 (the server takes 64 at once)")
    server = subprocess.Popen([sys.executable, "-m", "alexnet_cifar10", "serve", "--weights", args.weights,
                               "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL if args.quiet_server else None)
    try:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", server.stdout.readline())
        if not found:
            raise SystemExit("error: the server did not start")
        port = int(found.group(1))
        load(port, 20, 1, 30)  # warm-up
        rows = [load(port, args.requests, c, args.seconds) for c in args.concurrency]
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{'clients':>8}{'requests':>10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for r in rows:
        print(f"{r['concurrency']:>8}{r['requests']:>10}{r['requests_per_s']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}")
    if args.out:
        import torch

        record = {"weights": args.weights, "machine": platform.machine(), "cores": os.cpu_count(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                  "requests_per_level": args.requests, "rows": rows, "date": time.strftime("%Y-%m-%d")}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
