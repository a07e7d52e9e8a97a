"""Load test of `tlrepro serve`: a steady run, an overload, a soak, and the server's CPU overhead per request.

Starts the server on loopback in a subprocess (`python -m tlrepro serve`, a free port; it is always stopped
at the end) and sends skin JPEGs as the JSON contract ({"image": "<base64>", "model": ...}) from a minimal
HTTP/1.1 keep-alive client on asyncio streams (each request's bytes built once, so the load generator takes
little of the CPU it shares with the server). Traffic goes to 127.0.0.1 only; every phase is bounded in
requests or seconds. Phases (each can be skipped with its count or seconds set to 0):

1. steady: `--clients` (16) clients send `--requests` (400) requests: requests/s, p50/p95/p99 latency,
   errors; and the server's CPU seconds per answered request from its process CPU counters
   (/proc/<pid>/stat), next to the model's own CPU per image: after the server stops, the same model is run
   here on the same images, decoded in memory, replaying the batch sizes the server formed (its /health
   counts model calls by batch size), timed with this process's CPU counters. The event-loop thread's own
   CPU (/proc/<pid>/task/<pid>/stat) is printed beside. The overhead ratio is (server CPU per request - model CPU per image) /
   model CPU per image (target: at most 0.30).
2. overload: `--overload-clients` (64) clients for `--overload-seconds` (60) s, each sending its next request
   as soon as it has an answer (no back-off): answers by status (every one should be a 200 or a 503),
   latencies of each, the slowest 503, the server's RSS against its idle RSS (target: at most 1.5x), and
   /health polled every 0.5 s on its own connection (target: every answer within 1 s).
3. soak: `--clients` clients for `--soak-seconds` (300) s: errors, and RSS at the start and the end of the
   phase (target: growth at most 10 %), sampled every 5 s.

    python benchmarks/serve_load.py --models benchmarks/out/demo-models --model demo/MobileNetV2
    python benchmarks/serve_load.py --models /tmp/m --requests 50 --overload-seconds 10 --soak-seconds 0
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import make_parser, run_main

REPO = Path(__file__).resolve().parents[1]
MIRROR_SKIN = "fanconic/skin-cancer-malignant-vs-benign"


@dataclass
class Outcome:
    """Every answer of a phase: (status, seconds), and the exceptions (no answer) by type."""

    answers: list[tuple[int, float]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def latencies(self, status: int) -> list[float]:
        return sorted(t for s, t in self.answers if s == status)

    def count(self, status: int) -> int:
        return sum(1 for s, _ in self.answers if s == status)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def default_images() -> Path:
    local = REPO / "data/raw/skin/test"
    if not local.is_dir() and os.environ.get("KAGGLE_MIRROR"):
        return Path(os.environ["KAGGLE_MIRROR"]) / MIRROR_SKIN / "test"
    return local


def find_images(folder: Path, count: int) -> list[Path]:
    from tlrepro.core.errors import UserError

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
    if not files:
        raise UserError(f"no JPEG under {folder}: pass --images-dir <folder of JPEGs> (the skin dataset comes from "
                        f"`dvc repro download@skin`, or set KAGGLE_MIRROR).")
    return files[:count]


class Server:
    """`python -m tlrepro serve` on a free loopback port, its log in a temporary file, its /proc counters."""

    def __init__(self, models: Path | None, model: str | None) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, "-m", "tlrepro", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--models", str(models)] if models is not None else []
        command += ["--default", model] if model is not None else []
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, text=True, cwd=REPO)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def last_error(self) -> str:
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().splitlines() if line.strip()]
        found = [line for line in lines if line.startswith("error:")] or lines[-1:] or ["(no output)"]
        return found[-1].removeprefix("error: ")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> tuple[int, bytes]:
    writer.write(payload)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def drive(port: int, payloads: list[bytes], clients: int, *, requests: int = 0, seconds: float = 0.0,
                timeout: float = 120.0) -> Outcome:
    """`clients` keep-alive connections, each sending its next request once answered, until `requests` are sent
    or `seconds` have passed."""
    outcome, sent = Outcome(), 0
    end = time.monotonic() + seconds if seconds else None

    async def client() -> None:
        nonlocal sent
        connection = None
        while (end is None and sent < requests) or (end is not None and time.monotonic() < end):
            payload = payloads[sent % len(payloads)]
            sent += 1
            start = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection("127.0.0.1", port)
                status, _ = await asyncio.wait_for(exchange(*connection, payload), timeout)
                outcome.answers.append((status, time.perf_counter() - start))
            except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                outcome.failures[type(exc).__name__] = outcome.failures.get(type(exc).__name__, 0) + 1
                if connection is not None:
                    connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    outcome.seconds = time.perf_counter() - start
    return outcome


async def watch(port: int, server: Server, stop: asyncio.Event, health: list[float], rss: list[float],
                every: float) -> None:
    """Until `stop`: /health's latency (a new connection each time, as a monitor makes) and the server's RSS,
    every `every` seconds."""
    get = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        start = time.perf_counter()
        connection = await asyncio.open_connection("127.0.0.1", port)
        try:
            status, _ = await asyncio.wait_for(exchange(*connection, get), 30)
        finally:
            connection[1].close()
        health.append(time.perf_counter() - start if status == 200 else float("inf"))
        rss.append(server.rss_mib())
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass


async def watched(port: int, server: Server, payloads: list[bytes], clients: int, seconds: float, every: float
                  ) -> tuple[Outcome, list[float], list[float]]:
    stop, health, rss = asyncio.Event(), [], []
    watcher = asyncio.create_task(watch(port, server, stop, health, rss, every))
    outcome = await drive(port, payloads, clients, seconds=seconds)
    stop.set()
    await watcher
    return outcome, health, rss


def health_of(port: int) -> dict:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()


def wait_until_up(server: Server, timeout: float) -> dict:
    import httpx

    from tlrepro.core.errors import UserError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise UserError(f"the server exited with code {server.process.returncode}: {server.last_error()}")
        try:
            return health_of(server.port)
        except httpx.HTTPError:
            time.sleep(0.25)
    raise UserError(f"the server did not answer /health within {timeout:g} s (pass --startup-timeout).")


def model_cpu_per_image(models: Path | None, model: str, files: list[Path], sizes: dict[int, int],
                        rounds: int = 2) -> float:
    """CPU seconds (this process's counters) per image of the model's forward pass on images already decoded
    and resized in memory, replaying the batch sizes the server formed (`sizes`: size -> model calls)."""
    import numpy as np
    import tensorflow as tf

    from tlrepro.modeling.predict import Predictor

    predictor = Predictor.load(model, models)
    arrays = np.stack([predictor.decode(p.read_bytes())[0] for p in files]).astype("float32")
    batches = {size: tf.constant(np.resize(arrays, (size, *arrays.shape[1:]))) for size in sizes}
    for batch in batches.values():  # traced outside the count
        predictor.forward(batch)
    done, cpu = 0, time.process_time()
    for _ in range(rounds):
        for size, calls in sizes.items():
            for _ in range(calls):
                predictor.forward(batches[size])
                done += size
    return (time.process_time() - cpu) / done


def thread_cpu(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report_latencies(title: str, values: list[float]) -> str:
    return (f"{title}: p50 {1000 * percentile(values, 50):.0f} ms, p95 {1000 * percentile(values, 95):.0f} ms, "
            f"p99 {1000 * percentile(values, 99):.0f} ms, max {1000 * max(values, default=float('nan')):.0f} ms")


def main() -> int:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--models", type=Path, default=None, help="folder of saved models (default: models/)")
    parser.add_argument("--model", default=None, help="<study>/<row> (default: the server's default)")
    parser.add_argument("--images-dir", type=Path, default=None, help="JPEGs (default: data/raw/skin/test, "
                                                                      "else the mirror's)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--overload-seconds", type=float, default=60.0)
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    args = parser.parse_args()
    server: Server | None = None

    def run() -> None:
        nonlocal server
        files = find_images(args.images_dir or default_images(), args.images)
        server = Server(args.models, args.model)
        print(f"server pid {server.process.pid} on 127.0.0.1:{server.port}; waiting for it to load the model ...",
              flush=True)
        health = wait_until_up(server, args.startup_timeout)
        model = args.model or health["default"]
        payloads = []
        for path in files:
            body = json.dumps({"image": base64.b64encode(path.read_bytes()).decode(), "model": model}).encode()
            payloads.append(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: "
                            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        print(f"model {model}; {len(files)} JPEGs; limits {health['limits']}; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        asyncio.run(drive(server.port, payloads, args.clients, requests=4 * args.clients))  # warm-up
        idle = server.rss_mib()
        print(f"idle RSS after warm-up: {idle:.0f} MiB", flush=True)

        pid = server.process.pid
        before, cpu, loop_cpu = health_of(server.port)["batching"][model], server.cpu_seconds(), thread_cpu(pid, pid)
        steady = asyncio.run(drive(server.port, payloads, args.clients, requests=args.requests))
        cpu, loop_cpu = server.cpu_seconds() - cpu, thread_cpu(pid, pid) - loop_cpu
        after = health_of(server.port)["batching"][model]
        sizes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
        sizes = {k: v for k, v in sizes.items() if v > 0}
        ok = steady.latencies(200)
        errors = len(steady.answers) - len(ok) + sum(steady.failures.values())
        print(f"\n[steady] {args.clients} clients, {args.requests} requests: {len(ok) / steady.seconds:.1f} req/s, "
              f"errors {errors}; " + report_latencies("latency", ok))
        print(f"[steady] server CPU {cpu:.1f} s for {len(ok)} answers = {1000 * cpu / max(len(ok), 1):.1f} ms per "
              f"request (its event-loop thread {1000 * loop_cpu / max(len(ok), 1):.2f} ms); model calls by batch "
              f"size {dict(sorted(sizes.items()))}", flush=True)

        if args.overload_seconds:
            outcome, health_times, rss = asyncio.run(watched(server.port, server, payloads, args.overload_clients,
                                                             args.overload_seconds, 0.5))
            statuses = sorted({s for s, _ in outcome.answers})
            counts = ", ".join(f"{s}: {outcome.count(s)}" for s in statuses)
            print(f"\n[overload] {args.overload_clients} clients for {args.overload_seconds:g} s: answers {counts}; "
                  f"no answer {outcome.failures or 0}")
            print("[overload] " + report_latencies("200s", outcome.latencies(200)))
            print("[overload] " + report_latencies("503s", outcome.latencies(503)))
            print(f"[overload] /health: {len(health_times)} polls, slowest {1000 * max(health_times):.0f} ms; RSS "
                  f"idle {idle:.0f} MiB, max {max(rss):.0f} MiB = {max(rss) / idle:.2f}x idle", flush=True)
            time.sleep(2)

        if args.soak_seconds:
            outcome, health_times, rss = asyncio.run(watched(server.port, server, payloads, args.clients,
                                                             args.soak_seconds, 5.0))
            errors = len(outcome.answers) - outcome.count(200) + sum(outcome.failures.values())
            print(f"\n[soak] {args.clients} clients for {args.soak_seconds:g} s: {outcome.count(200)} answered, "
                  f"errors {errors}; " + report_latencies("latency", outcome.latencies(200)))
            print(f"[soak] RSS first {rss[0]:.0f} MiB, last {rss[-1]:.0f} MiB, max {max(rss):.0f} MiB: growth "
                  f"{100 * (rss[-1] / rss[0] - 1):+.1f} % (last/first), {100 * (max(rss) / rss[0] - 1):+.1f} % "
                  f"(max/first); /health slowest {1000 * max(health_times):.0f} ms", flush=True)

        server.stop()
        model_cpu = model_cpu_per_image(args.models, model, files, sizes)
        server_cpu = cpu / max(len(ok), 1)
        print(f"\n[overhead] model CPU {1000 * model_cpu:.1f} ms per image (in memory, replaying the steady run's "
              f"batch sizes twice); server CPU {1000 * server_cpu:.1f} ms per request (steady run); overhead "
              f"(server - model) / model = {(server_cpu - model_cpu) / model_cpu:.2f} (target <= 0.30)")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    try:
        return run_main(run)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
