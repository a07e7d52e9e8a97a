"""Load test of `tlrepro serve`: a steady run, an overload, a soak, and the server's CPU overhead per request.

Starts the server on loopback in a subprocess (`python -m tlrepro serve`, a free port; it is always stopped
at the end) and sends skin JPEGs as the JSON contract ({"image": "<base64>", "model": ...}) from a minimal
HTTP/1.1 keep-alive client on asyncio streams (each request's bytes built once, so the load generator takes
little of the CPU it shares with the server). Traffic goes to 127.0.0.1 only; every phase is bounded in
requests or seconds. Every answer that is not a 200 is printed with its status, its time and the server's
reason (one line each; past 20, one line per reason, with counts and times). Phases (each can be skipped with
its count or seconds set to 0):

0. cold: the first request is sent as soon as the server accepts connections, while /health still says
   `loading` (the server loads and warms up its default model as it starts): its status and time, and when
   /health said `ok`. Target: a 200.
1. steady: `--clients` (16) clients send `--requests` (400) requests: requests/s, p50/p95/p99 latency,
   errors; and the server's CPU seconds per answered request from its process CPU counters
   (/proc/<pid>/stat), next to the model's own CPU per image: after the server stops, the same model is run
   here on the same images, decoded in memory, replaying the batch sizes the server formed (its /health
   counts model calls by batch size), timed with this process's CPU counters. The event-loop thread's own
   CPU (/proc/<pid>/task/<pid>/stat) is printed beside. The overhead ratio is (server CPU per request - model CPU per image) /
   model CPU per image (target: at most 0.30).
2. overload: `--overload-clients` (64) clients for `--overload-seconds` (60) s, each sending its next request
   as soon as it has an answer (no back-off): answers by status (every one should be a 200 or a 503), the
   answered share, latencies of the 200s (targets: within serve.deadline_s) and of the 503s (time to 503:
   at once, not after the deadline), the server's RSS against its idle RSS (target: at most 1.5x), and
   /health polled every 0.5 s on its own connection from its own thread (target: every answer within 1 s).
3. explain: `--explain-clients` (32) clients ask for Grad-CAM explanations of the model for `--explain-seconds`
   (30) s while one client sends predicts to `--predict-model` (default: the same model), one after another:
   that predict's latency alone and during (explanations run in their own threads and predict there, so they
   should not hold it up), and the explanations' answers and refusals.
4. soak: `--clients` clients for `--soak-seconds` (300) s: errors, and RSS at the start and the end of the
   phase (target: growth at most 10 %), sampled every 5 s.

    python benchmarks/serve_load.py --models benchmarks/out/demo-models --model demo/MobileNetV2
    python benchmarks/serve_load.py --models /tmp/m --requests 50 --overload-seconds 10 --soak-seconds 0
    python benchmarks/serve_load.py --smoke     # seconds, on a tiny generated model and generated images
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import make_parser, run_main, smoke_folder, smoke_pictures, tiny_model

REPO = Path(__file__).resolve().parents[1]
MIRROR_SKIN = "fanconic/skin-cancer-malignant-vs-benign"


@dataclass
class Outcome:
    """Every answer of a phase: (status, seconds), the reason of each that is not a 200 (status, seconds,
    the server's error), and the exceptions (no answer) by type."""

    answers: list[tuple[int, float]] = field(default_factory=list)
    refusals: list[tuple[int, float, str]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, status: int, seconds: float, body: bytes) -> None:
        self.answers.append((status, seconds))
        if status != 200:
            self.refusals.append((status, seconds, reason(body)))

    def latencies(self, status: int) -> list[float]:
        return sorted(t for s, t in self.answers if s == status)

    def count(self, status: int) -> int:
        return sum(1 for s, _ in self.answers if s == status)


def reason(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace") or "(no body)"


def print_refusals(title: str, outcome: Outcome, one_by_one: int = 20) -> None:
    """Every answer that is not a 200: one line each, or past `one_by_one`, one line per reason (numbers in
    it blanked) with how many and their times."""
    found = outcome.refusals
    if not found:
        return
    if len(found) <= one_by_one:
        for status, seconds, text in found:
            print(f"{title}   {status} after {seconds:.2f} s: {text}")
        return
    groups: dict[tuple[int, str], list[float]] = {}
    for status, seconds, text in found:
        groups.setdefault((status, re.sub(r"\d+(\.\d+)?", "#", text)), []).append(seconds)
    for (status, text), times in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(f"{title}   {len(times)} x {status} after {min(times):.2f}-{max(times):.2f} s (median "
              f"{percentile(times, 50):.2f} s): {text}")


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

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())
    if not files:
        raise UserError(f"no JPEG or PNG under {folder}: pass --images-dir <folder of JPEGs> (the skin dataset comes "
                        f"from `dvc repro download@skin`, or set KAGGLE_MIRROR).")
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

    def errors(self, limit: int = 40) -> list[str]:
        """The server log's error lines and the tracebacks after them (the reasons of 500s)."""
        self.log.seek(0)
        lines, keep, shown = self.log.read().splitlines(), 0, []
        for line in lines:
            if line.startswith(("ERROR", "Traceback")) or " ERROR " in line:
                keep = 30
            if keep:
                shown.append(line)
                keep -= 1
        return shown[-limit:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> tuple[int, bytes]:
    """(status, body) of one request on a keep-alive connection."""
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
                status, body = await asyncio.wait_for(exchange(*connection, payload), timeout)
                outcome.add(status, time.perf_counter() - start, body)
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


def http_get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of one GET on a new connection (as a monitor makes), with blocking sockets."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class Watch(threading.Thread):
    """/health's latency and the server's RSS every `every` seconds until stopped, from a thread of its own
    (the load generator's event loop never delays a poll, so the figure is the server's)."""

    def __init__(self, port: int, server: Server, every: float) -> None:
        super().__init__(daemon=True)
        self.port, self.server, self.every = port, server, every
        self.health: list[float] = []
        self.rss: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            start = time.perf_counter()
            try:
                status, _ = http_get(self.port, "/health")
            except OSError:
                status = 0
            self.health.append(time.perf_counter() - start if status == 200 else float("inf"))
            self.rss.append(self.server.rss_mib())
            self.stopped.wait(self.every)


def watched(port: int, server: Server, payloads: list[bytes], clients: int, seconds: float, every: float
            ) -> tuple[Outcome, list[float], list[float]]:
    watch = Watch(port, server, every)
    watch.start()
    try:
        outcome = asyncio.run(drive(port, payloads, clients, seconds=seconds))
    finally:
        watch.stopped.set()
        watch.join(timeout=60)
    return outcome, watch.health, watch.rss


def health_of(port: int) -> dict:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()


def wait_until(server: Server, timeout: float, ready: bool) -> dict:
    """/health once the server answers it (`ready`: once it says its default model is loaded)."""
    import httpx

    from tlrepro.core.errors import UserError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise UserError(f"the server exited with code {server.process.returncode}: {server.last_error()}")
        try:
            health = health_of(server.port)
            if not ready or health["status"] != "loading":
                return health
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise UserError(f"the server did not answer /health{' ready' if ready else ''} within {timeout:g} s (pass "
                    f"--startup-timeout).")


def cold_start(server: Server, payload: bytes, timeout: float) -> None:
    """The first request, sent as soon as the server accepts connections: its answer and time, and when /health
    said the default model was ready (polled meanwhile from another thread)."""
    first_status = wait_until(server, timeout, ready=False)["status"]
    started = time.monotonic()  # the server accepts connections
    ready: list[float] = []

    def poll() -> None:
        while time.monotonic() - started < timeout:
            try:
                if json.loads(http_get(server.port, "/health")[1])["status"] != "loading":
                    ready.append(time.monotonic() - started)
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    outcome = asyncio.run(drive(server.port, [payload], 1, requests=1, timeout=timeout))
    poller.join(timeout=timeout)
    status, seconds = outcome.answers[0] if outcome.answers else (0, float("nan"))
    print(f"[cold] first request, sent while /health said {first_status!r}: "
          f"{status or outcome.failures} in {seconds:.2f} s; /health said ready "
          f"{ready[0] if ready else float('nan'):.1f} s after the server accepted connections", flush=True)
    print_refusals("[cold]", outcome)


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


def request_bytes(port: int, path: Path, model: str | None, endpoint: str = "/v1/predict") -> bytes:
    """One POST /v1/predict (or `endpoint`), as the JSON contract, byte for byte (built once, sent many times)."""
    fields = {"image": base64.b64encode(path.read_bytes()).decode(), **({"model": model} if model else {})}
    body = json.dumps(fields).encode()
    return (f"POST {endpoint} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def explanations_beside_a_predict(port: int, files: list[Path], explained: str, predicted: str, clients: int,
                                  seconds: float) -> None:
    """`clients` clients asking for Grad-CAM explanations of `explained` while one client sends predicts to
    `predicted`, one after another: the lone predict's latency alone and during, and what the explanations got."""
    predicts = [request_bytes(port, path, predicted) for path in files]
    explains = [request_bytes(port, path, explained, "/v1/explain") for path in files]
    alone = asyncio.run(drive(port, predicts, 1, requests=max(20, len(files) // 2)))

    async def both() -> tuple[Outcome, Outcome]:
        return await asyncio.gather(drive(port, explains, clients, seconds=seconds),
                                    drive(port, predicts, 1, seconds=seconds))

    explain, during = asyncio.run(both())
    print(f"\n[explain] {clients} clients asking for explanations of {explained} for {seconds:g} s, beside one "
          f"client predicting with {predicted}:")
    print("[explain] lone predict " + report_latencies("alone", alone.latencies(200)))
    print("[explain] lone predict " + report_latencies("during", during.latencies(200))
          + f" ({during.count(200)} answered, {len(during.refusals)} refused)")
    sent = len(explain.answers) + sum(explain.failures.values())
    print(f"[explain] explanations: {explain.count(200)} of {sent} answered; "
          + report_latencies("200s", explain.latencies(200)) + "; " + report_latencies("time to 503", explain.latencies(503)),
          flush=True)
    print_refusals("[explain]", explain)
    print_refusals("[explain, predict]", during)


def smoke_setup(args) -> None:
    """`--smoke`: a tiny model trained on generated pictures, a few of them as the images, phases of seconds."""
    base = smoke_folder() / "serve-load"
    tiny_model(base / "models", train_per_class=40, epochs=2)
    args.models, args.model = base / "models", "demo/tiny"
    args.images_dir = smoke_pictures(base / "images", 4, seed=7)
    args.images, args.clients, args.requests = 8, 4, 16
    args.overload_clients, args.overload_seconds, args.soak_seconds = 8, 2.0, 2.0
    args.explain_clients, args.explain_seconds = 2, 2.0
    args.startup_timeout = 120.0


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
    parser.add_argument("--explain-clients", type=int, default=32, help="clients asking for explanations of "
                        "--model beside one predicting client (0 skips the phase)")
    parser.add_argument("--explain-seconds", type=float, default=30.0)
    parser.add_argument("--predict-model", default=None, help="the lone predicting client's model during the "
                        "explanations (default: --model)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    args = parser.parse_args()
    server: Server | None = None

    def run() -> None:
        nonlocal server
        if args.smoke:
            smoke_setup(args)
        files = find_images(args.images_dir or default_images(), args.images)
        server = Server(args.models, args.model)
        print(f"server pid {server.process.pid} on 127.0.0.1:{server.port}; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        cold_start(server, request_bytes(server.port, files[0], args.model), args.startup_timeout)
        health = wait_until(server, args.startup_timeout, ready=True)
        model = args.model or health["default"]
        payloads = [request_bytes(server.port, path, model) for path in files]
        print(f"model {model}; {len(files)} images; limits {health['limits']}; measured seconds per model call by "
              f"batch size {health['batching'].get(model, {}).get('call_seconds')}", flush=True)
        warm = asyncio.run(drive(server.port, payloads, args.clients, requests=4 * args.clients))
        print_refusals("[warm-up]", warm)
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
              f"errors {errors}{f' (no answer: {steady.failures})' if steady.failures else ''}; "
              + report_latencies("latency", ok))
        print_refusals("[steady]", steady)
        print(f"[steady] server CPU {cpu:.1f} s for {len(ok)} answers = {1000 * cpu / max(len(ok), 1):.1f} ms per "
              f"request (its event-loop thread {1000 * loop_cpu / max(len(ok), 1):.2f} ms); model calls by batch "
              f"size {dict(sorted(sizes.items()))}", flush=True)

        if args.overload_seconds:
            before = health_of(server.port)["batching"][model]
            outcome, health_times, rss = watched(server.port, server, payloads, args.overload_clients,
                                                 args.overload_seconds, 0.5)
            after = health_of(server.port)["batching"][model]
            calls = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
            statuses = sorted({s for s, _ in outcome.answers})
            counts = ", ".join(f"{s}: {outcome.count(s)}" for s in statuses)
            sent = len(outcome.answers) + sum(outcome.failures.values())
            print(f"\n[overload] {args.overload_clients} clients for {args.overload_seconds:g} s: answers {counts}; "
                  f"no answer {outcome.failures or 0}; answered (200) {100 * outcome.count(200) / max(sent, 1):.1f} % "
                  f"of {sent}")
            print("[overload] " + report_latencies("200s", outcome.latencies(200)))
            print("[overload] " + report_latencies("time to 503", outcome.latencies(503)))
            print_refusals("[overload]", outcome)
            print(f"[overload] model calls by batch size {({k: v for k, v in calls.items() if v})}; seconds per call "
                  f"by batch size after it {after['call_seconds']}")
            print(f"[overload] /health: {len(health_times)} polls, p50 {1000 * percentile(health_times, 50):.0f} ms, "
                  f"slowest {1000 * max(health_times):.0f} ms; RSS "
                  f"idle {idle:.0f} MiB, max {max(rss):.0f} MiB = {max(rss) / idle:.2f}x idle", flush=True)
            time.sleep(2)

        if args.explain_clients and args.explain_seconds:
            explanations_beside_a_predict(server.port, files, model, args.predict_model or model,
                                          args.explain_clients, args.explain_seconds)
            time.sleep(2)

        if args.soak_seconds:
            outcome, health_times, rss = watched(server.port, server, payloads, args.clients, args.soak_seconds, 5.0)
            errors = len(outcome.answers) - outcome.count(200) + sum(outcome.failures.values())
            print(f"\n[soak] {args.clients} clients for {args.soak_seconds:g} s: {outcome.count(200)} answered, "
                  f"errors {errors}; " + report_latencies("latency", outcome.latencies(200)))
            print_refusals("[soak]", outcome)
            print(f"[soak] RSS first {rss[0]:.0f} MiB, last {rss[-1]:.0f} MiB, max {max(rss):.0f} MiB: growth "
                  f"{100 * (rss[-1] / rss[0] - 1):+.1f} % (last/first), {100 * (max(rss) / rss[0] - 1):+.1f} % "
                  f"(max/first); /health slowest {1000 * max(health_times):.0f} ms", flush=True)

        server.stop()
        if errors := server.errors():
            print("\n[server log] errors:\n" + "\n".join(errors))
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
