"""``cnnctl serve``: a real server process on 127.0.0.1, a real HTTP client (httpx, raw sockets where a client
must misbehave), a lenet5 trained here in seconds. Every bad request is answered with its status and one log line,
and the server stays up."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import synthetic_digits
from PIL import Image
from typer.testing import CliRunner

import cnnctl
from cnnctl.cli import app
from cnnctl.engine.predict import Predictor, decode_image, load_for_inference
from cnnctl.errors import UsageError
from cnnctl.serve.batcher import Batcher, QueueFull
from cnnctl.serve.settings import ServeSettings

SERVER_OPTIONS = ("--max-body-mb", "1", "--max-images", "8", "--header-timeout", "3", "--body-timeout", "3",
                  "--limit-concurrency", "64", "--batch-size", "8", "--max-wait-ms", "2", "--threads", "1",
                  "--max-pixels", "1000000", "--reject-below", "0.3")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve") / "digits"
    images, labels = synthetic_digits(64, seed=5, classes=4)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def run_dir(digits: Path, one_thread: None) -> Path:
    result = cnnctl.train("lenet5", data=str(digits), epochs=1, out=str(digits.parent / "runs"), plots=False,
                          val_split=0, threads=1)
    return Path(result.run_dir)


class Server:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.process, self.log, self.port = process, log, port
        self.url = f"http://127.0.0.1:{port}"

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def lines_after(self, mark: int, expected: int = 1, settle: float = 0.3) -> list[str]:
        """The log lines written after line ``mark``, once at least ``expected`` of them arrived (and a moment
        more, so that an extra line would be seen)."""
        deadline = time.monotonic() + 10
        while len(self.lines()) - mark < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        return self.lines()[mark:]

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def alive(self) -> bool:
        return self.process.poll() is None and httpx.get(self.url + "/health").status_code == 200


def start_server(run: Path, log: Path, *options: str) -> Server:
    handle = log.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "cnnctl", "serve", str(run), "--port", "0", *options],
                               stdout=subprocess.DEVNULL, stderr=handle)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found:
            return Server(process, log, int(found.group(1)))
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the server did not start: {log.read_text()}")


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[Server]:
    running = start_server(run_dir, run_dir / "server.log", *SERVER_OPTIONS)
    yield running
    running.process.terminate()
    running.process.wait(30)


def png_files(digits: Path) -> list[Path]:
    return sorted(digits.glob("*/*.png"), key=lambda p: int(p.stem))


# ------------------------------------------------------------------------------------------ what it answers

def test_predictions_equal_predict_json(server: Server, run_dir: Path, digits: Path) -> None:
    files = png_files(digits)[:12]
    expected = json.loads(CliRunner().invoke(app, ["predict", str(run_dir), *map(str, files), "--json",
                                                   "--reject-below", "0.3"]).stdout)
    multipart = [("image", (f.name, f.read_bytes(), "image/png")) for f in files[:8]]
    answered = httpx.post(server.url + "/predict", files=multipart)
    assert answered.status_code == 200, answered.text
    rows = answered.json()
    for f in files[8:]:  # one image as the raw body
        raw = httpx.post(server.url + "/predict", content=f.read_bytes(), headers={"content-type": "image/png"})
        assert raw.status_code == 200, raw.text
        rows += [{**row, "path": f.name} for row in raw.json()]
    assert [row["path"] for row in rows] == [f.name for f in files]
    for row, reference in zip(rows, expected):
        assert (row["label"], row["class_name"], row["rejected"], row["error"]) == \
            (reference["label"], reference["class_name"], reference["rejected"], None)
        assert [entry[:2] for entry in row["topk"]] == [entry[:2] for entry in reference["topk"]]
        np.testing.assert_allclose([p for *_, p in row["topk"]], [p for *_, p in reference["topk"]], atol=1e-6)


def test_health_and_model(server: Server, run_dir: Path) -> None:
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["queued"] == 0
    model = httpx.get(server.url + "/model").json()
    meta = cnnctl.checkpoint.read_meta(run_dir / "best.safetensors")
    assert model["arch"] == "lenet5" and model["classes"] == meta.classes
    assert model["preprocessing"] == json.loads(json.dumps(meta.preprocessing.to_dict()))
    assert model["metrics"] == meta.metrics
    assert model["serving"]["batch_size"] == 8 and model["serving"]["max_body_mb"] == 1
    assert model["serving"]["reject_below"] == 0.3


# ------------------------------------------------------------------------------------------ bad requests

def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds one byte of image data: a decompression bomb as
    far as its header goes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def bad_requests(digits: Path) -> dict[str, tuple[dict, int, str]]:
    """name: (httpx.request arguments, status, a fragment of the log line)."""
    png = png_files(digits)[0]
    data = png.read_bytes()
    nine = [("image", (f"{i}.png", data, "image/png")) for i in range(9)]
    return {
        "empty body": ({"content": b""}, 400, "empty body"),
        "non-image": ({"content": b"hello, I am text\n" * 10}, 415, "it is a text file"),
        "truncated image": ({"content": data[:len(data) // 2]}, 422, "truncated"),
        "decompression bomb": ({"content": png_header(30_000, 30_000)}, 413, "900,000,000 pixels"),
        "too many images": ({"files": nine}, 413, "more than 8 images"),
        "a text field": ({"data": {"note": "hi"}, "files": [("image", ("a.png", data, "image/png"))]}, 400,
                         "is not a file"),
        "malformed multipart": ({"content": b"--x\r\nnonsense", "headers": {"content-type":
                                                                              "multipart/form-data; boundary=x"}},
                                400, "multipart"),
        # the name is a label, never a path: the server's own copy of this file is not read
        "a server path as the name": ({"files": [("image", (str(png), b"", "image/png"))]}, 400, "empty image"),
        "a non-image named /etc/passwd": ({"files": [("image", ("/etc/passwd", b"root:x:0:0", "text/plain"))]},
                                          415, "/etc/passwd: not a readable image"),
    }


def test_each_bad_request_is_answered_with_its_status_and_one_log_line(server: Server, digits: Path) -> None:
    for name, (arguments, status, fragment) in bad_requests(digits).items():
        mark = len(server.lines())
        answered = httpx.post(server.url + "/predict", **arguments)
        assert answered.status_code == status, (name, answered.text)
        assert fragment in answered.json()["error"], (name, answered.text)
        lines = server.lines_after(mark)
        assert len(lines) == 1 and f" {status} " in lines[0] and fragment in lines[0], (name, lines)
    for method, path, status in (("GET", "/nothing", 404), ("GET", "/predict", 405)):
        mark = len(server.lines())
        assert httpx.request(method, server.url + path).status_code == status
        lines = server.lines_after(mark)
        assert len(lines) == 1 and f" {status} " in lines[0], lines
    assert server.alive()


def test_a_readable_and_an_unreadable_image_together(server: Server, digits: Path) -> None:
    png = png_files(digits)[0]
    mark = len(server.lines())
    answered = httpx.post(server.url + "/predict", files=[("image", ("good.png", png.read_bytes(), "image/png")),
                                                         ("image", ("bomb.png", png_header(5000, 5000)))])
    assert answered.status_code == 200
    good, bomb = answered.json()
    assert good["error"] is None and good["class_name"] is not None
    assert bomb["label"] is None and "25,000,000 pixels" in bomb["error"]
    lines = server.lines_after(mark)
    assert len(lines) == 1 and " 200 2 images " in lines[0] and "1 of 2 images unreadable" in lines[0], lines


def test_a_ten_gigabyte_body_is_cut_off_at_the_limit(server: Server) -> None:
    sent = 0

    def ten_gigabytes() -> Iterator[bytes]:
        nonlocal sent
        chunk = b"\0" * 65536
        while sent < 10 * 2**30:
            sent += len(chunk)
            yield chunk

    for headers, fragment in (({}, "stopped reading after"),  # a stream (chunked): read up to the limit
                              ({"content-length": str(10 * 2**30)}, "not read")):  # refused from its header
        mark, sent = len(server.lines()), 0
        answered = httpx.post(server.url + "/predict", content=ten_gigabytes(), headers=headers, timeout=30)
        assert answered.status_code == 413 and fragment in answered.json()["error"]
        # what the socket buffers took, not the body: the server read about 1 MiB and closed the connection
        assert sent < 64 * 2**20
        lines = server.lines_after(mark)
        assert len(lines) == 1 and " 413 " in lines[0], lines
    assert server.alive()


def raw_exchange(port: int, data: bytes, then: Iterator[bytes] = iter(()), pause: float = 0.0) -> tuple[bytes, int]:
    """Send ``data``, then each piece of ``then`` ``pause`` seconds apart until the server closes; the server's
    answer and the bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        try:
            connection.sendall(data)
            sent += len(data)
            for piece in then:
                time.sleep(pause)
                connection.sendall(piece)
                sent += len(piece)
        except OSError:  # the server closed the connection: what it answered is still to be read
            pass
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, sent


def test_a_content_length_lie_and_an_endless_head(server: Server, digits: Path) -> None:
    """The body ends where Content-Length says; what follows is not a request: 400, and the connection closes.
    A request head that never ends is cut off the same way once h11 holds 16 KiB of it."""
    data = png_files(digits)[0].read_bytes()
    mark = len(server.lines())
    head = f"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n\r\n".encode()
    answer, sent = raw_exchange(server.port, head + data, iter([b"x" * 65536] * 16384))  # 1 GiB more
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400" in answer
    assert sent < 64 * 2**20
    lines = server.lines_after(mark)
    assert len(lines) == 1 and " 400 " in lines[0], lines
    mark = len(server.lines())
    answer, sent = raw_exchange(server.port, b"GET /health HTTP/1.1\r\nhost: x\r\nx-long: ",
                                iter([b"a" * 65536] * 16384))  # a header of 1 GiB
    assert answer.startswith(b"HTTP/1.1 400") and sent < 64 * 2**20
    lines = server.lines_after(mark)
    assert len(lines) == 1 and "request head still incomplete" in lines[0], lines
    assert server.alive()


def test_slow_clients_are_closed_by_a_timeout(server: Server) -> None:
    """One byte a second: in the request head (h11 is still reading it) or in the body (the application is)."""
    head = b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: image/png\r\n"
    cases = {"head": (b"P", iter([bytes([b]) for b in head[1:]])),
             "body": (head + b"content-length: 500\r\n\r\n", iter([b"\x89"] * 500))}
    results: dict[str, tuple[bytes, int, float]] = {}

    def run(name: str) -> None:
        started = time.monotonic()
        answer, sent = raw_exchange(server.port, cases[name][0], cases[name][1], pause=1.0)
        results[name] = (answer, sent, time.monotonic() - started)

    mark = len(server.lines())
    threads = [threading.Thread(target=run, args=(name,)) for name in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for name, (answer, _, seconds) in results.items():
        assert answer.startswith(b"HTTP/1.1 408"), (name, answer)
        assert seconds < 10, (name, seconds)  # the 3 s timeout and the next byte that found the socket closed
    lines = server.lines_after(mark, expected=2)
    assert len(lines) == 2 and all(" 408 " in line for line in lines), lines
    assert any("request head" in line for line in lines) and any("body not complete" in line for line in lines)
    assert server.alive()


def test_two_thousand_concurrent_connections(server: Server, digits: Path) -> None:
    """More connections than --limit-concurrency: each one is answered (200, or 503 beyond the limit) and each
    refusal is one log line; memory stays bounded and the server answers afterwards."""
    data = png_files(digits)[0].read_bytes()
    request = (f"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: image/png\r\n"
               f"content-length: {len(data)}\r\nconnection: close\r\n\r\n").encode() + data

    async def one() -> int | str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 60)
            await reader.read()
            writer.close()
            return int(status_line.split()[1]) if status_line else "closed"
        except OSError as error:
            return type(error).__name__

    async def all_of_them() -> list[int | str]:
        return await asyncio.gather(*[one() for _ in range(2000)])

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this process holds 2,000 sockets at once
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    before = server.rss_mib()
    mark = len(server.lines())
    statuses = Counter(asyncio.run(all_of_them()))
    assert set(statuses) <= {200, 503, 408}, statuses
    assert statuses[503] > 0 and sum(statuses.values()) == 2000
    lines = server.lines_after(mark, expected=statuses[503] + statuses[408])
    assert len(lines) == statuses[503] + statuses[408], (statuses, lines[:3])
    assert sum("--limit-concurrency" in line for line in lines) == statuses[503]
    assert server.rss_mib() - before < 300
    assert server.alive()


# ------------------------------------------------------------------------------------------ batching, the CLI

def test_waiting_requests_share_a_batch_and_the_queue_is_bounded(run_dir: Path, digits: Path) -> None:
    model, _ = load_for_inference(run_dir)
    predictor = Predictor(model, model.cnnctl_meta)
    files = png_files(digits)[:9]
    images = [decode_image(f, predictor.preprocessing) for f in files]
    batcher = Batcher(predictor, batch_size=16, max_wait_s=0.05, capacity=10)
    futures = [batcher.submit([f.name for f in files[a:b]], images[a:b]) for a, b in ((0, 2), (2, 5), (5, 9))]
    with pytest.raises(QueueFull):  # 9 waiting, 2 more do not fit in 10
        batcher.submit(["a", "b"], images[:2])
    batcher.start()
    try:
        answers = [p for future in futures for p in future.result(30)]
    finally:
        batcher.stop()
    assert batcher.stats.batches == 1 and batcher.stats.largest == 9  # the three requests went through together
    alone = [predictor.classify([f.name], image[None])[0] for f, image in zip(files, images)]
    assert [p.label for p in answers] == [p.label for p in alone]
    assert [p.path for p in answers] == [f.name for f in files]
    np.testing.assert_allclose([p.probability for p in answers], [p.probability for p in alone], atol=1e-6)


def test_a_full_queue_is_answered_503_over_http(run_dir: Path, digits: Path) -> None:
    """The worker held inside the model (its classify waits to be released): a request whose image does not fit
    behind the two waiting ones is answered 503 with Retry-After, and the waiting requests are answered once the
    model runs again."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from cnnctl.serve.app import create_app

    model, _ = load_for_inference(run_dir)
    predictor = Predictor(model, model.cnnctl_meta)
    inside, release = threading.Event(), threading.Event()
    classify = predictor.classify

    def held(names: list[str], batch: object) -> object:
        inside.set()
        release.wait(30)
        return classify(names, batch)

    predictor.classify = held  # type: ignore[method-assign]
    batcher = Batcher(predictor, batch_size=1, max_wait_s=0.0, capacity=2).start()
    app = create_app(predictor, batcher, ServeSettings(batch_size=1, queue_size=2), logging.getLogger("serve-test"))
    files = png_files(digits)
    try:
        with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
            def post(paths: list[Path]) -> httpx.Response:
                return client.post("/predict", files=[("image", (p.name, p.read_bytes(), "image/png"))
                                                      for p in paths])

            first = pool.submit(post, files[:1])
            assert inside.wait(30)  # the worker holds the first image inside the model
            second = pool.submit(post, files[1:3])  # two images wait: the queue (2) is full
            deadline = time.monotonic() + 30
            while batcher.waiting < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = post(files[3:4])
            release.set()
            answered = [first.result(30), second.result(30)]
    finally:
        release.set()
        batcher.stop()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "busy: 2 images are waiting for the model (--queue-size 2)" in refused.text
    assert [response.status_code for response in answered] == [200, 200]
    assert [len(response.json()) for response in answered] == [1, 2]


def serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnctl", "serve", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ})


def test_bad_command_lines_fail_in_one_line(server: Server, run_dir: Path, tmp_path: Path) -> None:
    for args, fragment in (  # through the console script
        ((str(tmp_path / "missing.safetensors"),), "missing.safetensors"),
        ((str(run_dir), "--port", str(server.port)), "the port is in use"),
    ):
        result = serve_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert fragment in lines[0] and "Traceback" not in result.stderr, (args, lines)
    assert server.alive()
    for args, fragment in (  # in this process: refused before anything loads
        (("--max-body-mb", "0"), "--max-body-mb must be in (0, 4096], got 0"),
        (("--port", "eighty"), "--port must be a whole number"),
        (("--batch-size", "32", "--queue-size", "8"), "--queue-size (8) must hold at least one batch"),
        (("--header-timeout", "-1"), "--header-timeout must be positive"),
    ):
        result = CliRunner().invoke(app, ["serve", str(run_dir), *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {fragment}"), lines
    for settings, fragment in ((ServeSettings(port=70000), "port must be in [0, 65535], got 70000"),
                               (ServeSettings(batch_size=32, queue_size=8), "queue_size (8) must hold"),
                               (ServeSettings(header_timeout=0), "header_timeout must be positive"),
                               (ServeSettings(limit_concurrency=0), "limit_concurrency must be at least 1")):
        with pytest.raises(UsageError, match=re.escape(fragment)):
            settings.check()


def test_help_imports_neither_the_web_framework_nor_torch() -> None:
    code = ("import sys; from cnnctl.cli import main\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "loaded = {'torch', 'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)\n"
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--max-body-mb" in result.stdout


def test_without_the_serve_extra_one_line_names_it(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now raises ImportError
    result = CliRunner().invoke(app, ["serve", str(run_dir), "--port", "0"])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "cnnctl serve needs uvicorn, which is not installed" in lines[0] and "cnnctl[serve]" in lines[0]
