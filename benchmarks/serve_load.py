"""Load test of `tlrepro serve`: requests/s and latency at several concurrency levels, against raw model speed.

Starts the server on loopback in a subprocess (`python -m tlrepro serve`, a free port) unless `--url` points
at a running one, then sends skin-dataset JPEGs (default: the test images under data/raw/skin) as the lin2024
JSON contract ({"image": "<base64>", "model": ...}) from an async client (`--client raw`: a minimal HTTP/1.1
keep-alive client on asyncio streams, light on the CPU it shares with the server; `--client httpx`: httpx),
with 1, 4 and 16 clients at once (`--concurrency`), `--requests` requests per level after a warm-up. For each
level it prints requests/s, p50/p95/p99 latency (ms), errors and the client's own CPU time per request. Then it loads the same model in this process and times its
raw batched `predict` on the same images already decoded in memory (batches of serve.max_batch), and prints
the ratio of the best served rate to that raw rate (what HTTP, base64, decoding and batching cost).

    python benchmarks/serve_load.py --models /tmp/m --requests 20                 # a tiny model, a quick look
    python benchmarks/serve_load.py --model sarker2025/MobileNetV2 --images 200 --requests 500
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --models models   # a server already running
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


class BenchError(Exception):
    """A problem the user can fix; printed as one line."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running server (default: start one on loopback)")
    parser.add_argument("--models", type=Path, default=None,
                        help="folder of saved models with cards (default: the project's models/)")
    parser.add_argument("--model", default=None, help="<study>/<row> to ask for (default: the server's default)")
    parser.add_argument("--images-dir", type=Path, default=REPO / "data/raw/skin/test",
                        help="folder searched recursively for JPEGs (default: %(default)s)")
    parser.add_argument("--images", type=int, default=64, metavar="N", help="use the first N JPEGs (default: 64)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], metavar="C",
                        help="concurrent clients per level (default: 1 4 16)")
    parser.add_argument("--requests", type=int, default=200, metavar="N", help="requests per level (default: 200)")
    parser.add_argument("--endpoint", choices=("predict", "explain"), default="predict")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: a minimal asyncio HTTP/1.1 client, light on the shared CPU, or an "
                             "httpx.AsyncClient (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: 120)")
    parser.add_argument("--startup-timeout", type=float, default=300.0,
                        help="seconds to wait for the server to answer /health (default: 300)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.requests < 1 or min(args.concurrency) < 1:
        parser.error("--images, --requests and every --concurrency must be at least 1")
    return args


def find_images(folder: Path, count: int) -> list[Path]:
    if not folder.is_dir():
        raise BenchError(f"{folder} is not a folder: pass --images-dir <folder of JPEGs> "
                         f"(the skin dataset comes from `dvc repro download@skin`).")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
    if not files:
        raise BenchError(f"no JPEG under {folder}: pass --images-dir <folder of JPEGs>.")
    return files[:count]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(models: Path | None, model: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "tlrepro", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if models is not None:
        command += ["--models", str(models)]
    if model is not None:
        command += ["--default", model]
    log = tempfile.TemporaryFile("w+")  # the server's log (one line per request) stays out of the table
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    process.log = log  # type: ignore[attr-defined]
    return process, f"http://127.0.0.1:{port}"


def server_error(process: subprocess.Popen) -> str:
    """The server's `error:` line (or its last line of output)."""
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    found = [line for line in lines if line.startswith("error:")] or lines[-1:] or ["(no output)"]
    return found[-1].removeprefix("error: ")


def wait_until_up(url: str, process: subprocess.Popen | None, timeout: float) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BenchError(f"the server exited with code {process.returncode}: {server_error(process)}")
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise BenchError(f"{url}/health did not answer within {timeout:g} s: is the server up (pass --startup-timeout)?")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def run_level(url: str, bodies: list[dict], concurrency: int, requests: int, endpoint: str,
                    timeout: float) -> dict:
    """`requests` POSTs from `concurrency` clients at once: requests/s, latencies (ms) and errors."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/{endpoint}", json=bodies[i % len(bodies)])
                ok = response.status_code == 200
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                ok, reason = False, type(exc).__name__
            if ok:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors[reason] = errors.get(reason, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return summary(concurrency, requests, latencies, errors, elapsed, cpu)


async def run_level_raw(url: str, bodies: list[dict], concurrency: int, requests: int, endpoint: str,
                        timeout: float) -> dict:
    """As run_level, from a minimal HTTP/1.1 keep-alive client on asyncio streams: each request's bytes are
    built once, so the load generator takes little of the CPU it shares with the server on one machine."""
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payloads = []
    for body in bodies:
        data = json.dumps(body).encode()
        payloads.append(f"POST /v1/{endpoint} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> int:
        writer.write(payload)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return status

    async def client() -> None:
        nonlocal next_index
        connection = None
        while next_index < requests:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                status = await asyncio.wait_for(exchange(*connection, payloads[i % len(payloads)]), timeout)
                ok, reason = status == 200, f"HTTP {status}"
            except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                ok, reason = False, type(exc).__name__
                if connection is not None:
                    connection[1].close()
                connection = None
            if ok:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors[reason] = errors.get(reason, 0) + 1
        if connection is not None:
            connection[1].close()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return summary(concurrency, requests, latencies, errors, elapsed, cpu)


def summary(concurrency: int, requests: int, latencies: list[float], errors: dict[str, int], elapsed: float,
            cpu: float) -> dict:
    return {"concurrency": concurrency, "requests": requests, "rps": len(latencies) / elapsed,
            "p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
            "errors": sum(errors.values()), "why": errors, "client_cpu_ms": 1000 * cpu / max(requests, 1)}


def raw_throughput(models: Path | None, model: str, files: list[Path], batch: int, total: int) -> float:
    """Images/s of the model's batched forward pass on images already decoded and resized in memory."""
    import numpy as np
    import tensorflow as tf

    from tlrepro.modeling.predict import Predictor

    predictor = Predictor.load(model, models)
    arrays = []
    for path in files:
        array, _, ok, _ = predictor.decode(path.read_bytes())
        if ok:
            arrays.append(array)
    if not arrays:
        raise BenchError("none of the images could be decoded")
    images = np.stack(arrays).astype("float32")
    batches = [tf.constant(images[i : i + batch]) for i in range(0, len(images), batch)]
    predictor.forward(batches[0])  # trace once, outside the timing
    if len(batches) > 1:
        predictor.forward(batches[-1])
    done, start = 0, time.perf_counter()
    while done < total:
        for chunk in batches:
            np.asarray(predictor.forward(chunk))
            done += int(chunk.shape[0])
            if done >= total:
                break
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    process = None
    try:
        files = find_images(args.images_dir, args.images)
        bodies_raw = [base64.b64encode(p.read_bytes()).decode("ascii") for p in files]
        if args.url:
            url = args.url.rstrip("/")
        else:
            process, url = start_server(args.models, args.model)
            print(f"started the server at {url} (pid {process.pid}); waiting for it to load the model ...", flush=True)
        health = wait_until_up(url, process, args.startup_timeout)
        model = args.model or health["default"]
        max_batch = int(health.get("batching", {}).get("max_batch", 16))
        max_wait = health.get("batching", {}).get("max_wait_ms")
        bodies = [{"image": b, "model": model} for b in bodies_raw]
        print(f"model {model}; {len(files)} JPEG(s) from {args.images_dir}; POST /v1/{args.endpoint}; server "
              f"batching max_batch={max_batch}, max_wait_ms={max_wait}")
        level = run_level_raw if args.client == "raw" else run_level
        warm = max(args.concurrency)
        asyncio.run(level(url, bodies, warm, min(4 * warm, 64), args.endpoint, args.timeout))  # warm-up

        rows = [asyncio.run(level(url, bodies, c, args.requests, args.endpoint, args.timeout))
                for c in args.concurrency]
        print(f"\n{'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
              f"{'client CPU ms/req':>17}")
        for r in rows:
            print(f"{r['concurrency']:>7} {r['requests']:>8} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p95']:>8.1f} "
                  f"{r['p99']:>8.1f} {r['errors']:>6} {r['client_cpu_ms']:>17.2f}"
                  + (f"  ({r['why']})" if r["errors"] else ""))
        print(f"(load generator: {args.client} client, in this process, on the same CPU as the server)")
        if process is not None:  # the server's CPU is free again for the raw measurement
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
            process = None
        if args.url and args.models is None and not (REPO / "models" / f"{model}.keras").is_file():
            print("\n(raw throughput skipped: pass --models <folder> so the model can be loaded here)")
            return 0
        raw = raw_throughput(args.models, model, files, max_batch, max(args.requests, len(files)))
        best = max(r["rps"] for r in rows)
        print(f"\nraw batched predict (batch {max_batch}, images decoded in memory): {raw:.1f} images/s")
        print(f"best served rate / raw rate: {best:.1f} / {raw:.1f} = {best / raw:.2f}")
        return 0
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a benchmark prints one line, not a traceback
        from tlrepro.core.errors import UserError

        kind = "error" if isinstance(exc, UserError) else f"error ({type(exc).__name__})"
        print(f"{kind}: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return 2
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
