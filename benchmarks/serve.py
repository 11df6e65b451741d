"""Load test of ``cnnctl serve`` on 127.0.0.1: requests/s and p50/p99 latency, one image per request, with one
client and with concurrent clients, for a server that batches (``--batch-size 16 --max-wait-ms 5``) beside one
that does not (``--batch-size 1 --max-wait-ms 0``); then many connections opened at once.

    python benchmarks/serve.py                              # lenet5 and resnet18, ~3 minutes
    python benchmarks/serve.py --arch lenet5 --seconds 5 --connections 2000
    python benchmarks/serve.py --output benchmarks/results/serve-$(date +%F).txt

Each server is a real ``python -m cnnctl serve`` process with ``--threads 1`` (the model's CPU threads); the
clients run in this process on asyncio, speaking HTTP/1.1 with keep-alive directly on sockets (a Python HTTP
client library costs more CPU per request than the server, and both share the machine's cores). The models are
untrained (the same arithmetic as trained ones): lenet5 on 28x28 grey PNGs, resnet18 on 32x32 colour PNGs.
Every phase is bounded: at most ``--seconds`` and ``--requests`` each, and the many-connections phase one
request per connection with a 60 s limit.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"
SETTINGS = {"batch 1": ("--batch-size", "1", "--max-wait-ms", "0"),
            "batch 16": ("--batch-size", "16", "--max-wait-ms", "5")}
MODELS = {"lenet5": (1, 28, 2), "resnet18": (3, 32, 0)}  # channels, side, pad


def write_checkpoint(arch: str, folder: Path) -> Path:
    from cnnctl import checkpoint
    from cnnctl.checkpoint import CheckpointMeta
    from cnnctl.data.base import Preprocessing
    from cnnctl.models import build_model

    channels, side, pad = MODELS[arch]
    model = build_model(arch, num_classes=10, in_channels=channels)
    meta = CheckpointMeta(arch=arch, arch_args={}, classes=[str(i) for i in range(10)],
                          preprocessing=Preprocessing(channels, (side, side), pad, (0.5,) * channels,
                                                      (0.25,) * channels))
    path = folder / f"{arch}.safetensors"
    checkpoint.save(path, model, meta)
    return path


def png_bytes(arch: str, count: int = 64) -> list[bytes]:
    import numpy as np
    from PIL import Image

    channels, side, _ = MODELS[arch]
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (side, side, channels) if channels == 3 else (side, side), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


class Server:
    def __init__(self, checkpoint: Path, log: Path, *options: str) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cnnctl", "serve", str(checkpoint), "--port", "0", "--threads", "1", *options],
            stdout=subprocess.DEVNULL, stderr=self.handle, env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited: {log.read_text()}")
            time.sleep(0.2)
        self.process.kill()
        raise SystemExit("the server did not start in 180 s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.handle.close()

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+)", text)
        return int(found.group(1)) / 1024 if found else float("nan")

    def log_lines(self) -> int:
        return len(self.log.read_text(errors="replace").splitlines())


# ------------------------------------------------------------------------------------------ the client

def request_bytes(image: bytes, close: bool = False) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: image/png\r\ncontent-length: {len(image)}\r\n"
            f"{'connection: close' if close else 'connection: keep-alive'}\r\n\r\n").encode() + image


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection) of one response, its body read and dropped."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("closed")
    status = int(status_line.split()[1])
    length, close = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "connection" and value.strip().lower() == "close":
            close = True
    await reader.readexactly(length)
    return status, close


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self, label: str) -> str:
        done = sum(v for k, v in self.statuses.items() if isinstance(k, int))  # HTTP answers
        ok = self.latencies
        ms = sorted(x * 1000 for x in ok)
        p50 = statistics.median(ms) if ms else float("nan")
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else float("nan")
        others = {k: v for k, v in self.statuses.items() if k != 200}
        return (f"{label:<34} {done:>7,} {len(ok) / self.seconds:>9,.0f} {p50:>8.1f} {p99:>8.1f}"
                f"  {', '.join(f'{k}: {v:,}' for k, v in others.items()) or '-'}")


async def keep_alive_clients(port: int, images: list[bytes], clients: int, seconds: float, limit: int) -> Result:
    """``clients`` connections, each sending one image per request and waiting for the answer, until ``seconds``
    passed or ``limit`` requests were sent."""
    result = Result()
    requests = [request_bytes(image) for image in images]
    deadline = time.monotonic() + seconds
    sent = 0

    async def client(offset: int) -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(HOST, port)
        index = offset
        try:
            while time.monotonic() < deadline and sent < limit:
                sent += 1
                started = time.perf_counter()
                writer.write(requests[index % len(requests)])
                index += 1
                await writer.drain()
                status, close = await read_response(reader)
                result.statuses[status] += 1
                if status == 200:
                    result.latencies.append(time.perf_counter() - started)
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
        except (OSError, asyncio.IncompleteReadError) as error:
            result.statuses[type(error).__name__] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(clients)])
    result.seconds = time.perf_counter() - started
    return result


async def many_connections(port: int, image: bytes, count: int, timeout: float = 60.0) -> Result:
    """``count`` connections opened at once, one request each (``connection: close``)."""
    result = Result()
    request = request_bytes(image, close=True)

    async def one() -> None:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(request)
                await writer.drain()
                status, _ = await read_response(reader)
            finally:
                writer.close()
            result.statuses[status] += 1
            if status == 200:
                result.latencies.append(time.perf_counter() - started)
        except (OSError, asyncio.IncompleteReadError) as error:
            result.statuses[type(error).__name__] += 1

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*[one() for _ in range(count)]), timeout)
    except TimeoutError:
        result.statuses["unanswered in time"] = count - sum(result.statuses.values())
    result.seconds = time.perf_counter() - started
    return result


def more_open_files() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seconds", type=float, default=10.0, help="each phase at most this long")
    parser.add_argument("--requests", type=int, default=20_000, help="each phase at most this many requests")
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive clients")
    parser.add_argument("--connections", type=int, default=10_000, help="connections opened at once (0: skip)")
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args()
    more_open_files()
    lines = [f"cnnctl serve load test, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
             f"load average {os.getloadavg()[0]:.1f} at the start; server --threads 1; one image per request",
             f"{'':<34} {'answered':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  other statuses"]
    print(*lines, sep="\n", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.arch:
            checkpoint = write_checkpoint(arch, Path(folder))
            images = png_bytes(arch)
            for name, options in SETTINGS.items():
                limit = str(max(args.connections, args.clients) + 64)
                server = Server(checkpoint, Path(folder) / f"{arch}-{name}.log", *options,
                                "--limit-concurrency", limit, "--queue-size", "4096")
                try:
                    phases = [(f"{arch} {name}, 1 client", 1), (f"{arch} {name}, {args.clients} clients",
                                                                 args.clients)]
                    for label, clients in phases:
                        result = asyncio.run(keep_alive_clients(server.port, images, clients, args.seconds,
                                                                args.requests))
                        print(line := result.line(label), flush=True)
                        lines.append(line)
                    if args.connections and name == "batch 16":
                        before = server.rss_mib()
                        result = asyncio.run(many_connections(server.port, images[0], args.connections))
                        label = f"{arch} {name}, {args.connections:,} connections"
                        print(line := result.line(label) + f"; server memory {before:,.0f} -> "
                              f"{server.rss_mib():,.0f} MiB", flush=True)
                        lines.append(line)
                finally:
                    server.stop()
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
