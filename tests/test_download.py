"""Downloading against a real HTTP server on 127.0.0.1 and real directory mirrors; nothing is mocked."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cnnctl.data import download
from cnnctl.data.download import (
    RemoteFile,
    default_root,
    ensure_files,
    is_present,
    resolve_mirrors,
    verify_file,
)
from cnnctl.errors import DataError, DownloadError

CONTENT = random.Random(0).randbytes(150_000) + b"idx" * 40_000
GZ = gzip.compress(CONTENT, mtime=0)
LABELS = bytes(range(256)) * 100
LABELS_GZ = gzip.compress(LABELS, mtime=0)
DATASET = "toy"


def _remote(name: str, content: bytes, published: bytes) -> RemoteFile:
    return RemoteFile(name, content_sha256=hashlib.sha256(content).hexdigest(),
                      content_md5=hashlib.md5(content).hexdigest(), file_md5=hashlib.md5(published).hexdigest(),
                      size=len(published))


IMAGES = _remote("images.gz", CONTENT, GZ)
LABEL_FILE = _remote("labels.gz", LABELS, LABELS_GZ)
FILES = (IMAGES, LABEL_FILE)
PAYLOAD = {IMAGES.name: GZ, LABEL_FILE.name: LABELS_GZ}


# --------------------------------------------------------------------------------------------------------------
# a small, real HTTP server


@dataclass
class Seen:
    path: str
    range: str | None
    status: int = 0
    sent: int = 0


Route = Callable[["_Handler", Seen], None]


@dataclass
class Server:
    url: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [seen.path for seen in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server_state: Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        seen = Seen(self.path, self.headers.get("Range"))
        self.server_state.requests.append(seen)
        route = self.server_state.routes.get(self.path)
        try:
            if route is None:
                seen.status = 404
                self.send_error(404, "Not Found")
            else:
                route(self, seen)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the access log
        pass


def serve(data: bytes, *, ranges: bool = True) -> Route:
    """Serve ``data``, answering Range requests with 206 unless ``ranges`` is False (then always 200)."""

    def route(handler: _Handler, seen: Seen) -> None:
        wanted = handler.headers.get("Range")
        start = 0
        if ranges and wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[len("bytes="):-1])
            if start >= len(data):
                seen.status = 416
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            seen.status = 206
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            seen.status = 200
            handler.send_response(200)
        body = data[start:]
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        seen.sent = len(body)

    return route


def cut_short(data: bytes, keep: int) -> Route:
    """Promise the whole file, send ``keep`` bytes, hang up: an interrupted transfer."""

    def route(handler: _Handler, seen: Seen) -> None:
        seen.status = 200
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[:keep])
        handler.wfile.flush()
        handler.close_connection = True
        seen.sent = keep

    return route


def redirect(location: str) -> Route:
    def route(handler: _Handler, seen: Seen) -> None:
        seen.status = 302
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def stall(seconds: float) -> Route:
    def route(handler: _Handler, seen: Seen) -> None:
        time.sleep(seconds)
        serve(GZ)(handler, seen)

    return route


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    handler = type("Handler", (_Handler,), {"server_state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CNNCTL_MIRROR", "CNNCTL_DATA", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                 "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def publish(server: Server, prefix: str, payload: dict[str, bytes] | None = None, **options: bool) -> str:
    """Serve every file under ``/<prefix>/`` and return that mirror's URL."""
    for name, data in (payload or PAYLOAD).items():
        server.routes[f"/{prefix}/{name}"] = serve(data, **options)
    return f"{server.url}/{prefix}/"


def fetch(root: Path, mirrors: list[str], logs: list[str] | None = None, files: tuple[RemoteFile, ...] = FILES,
          **kwargs: object) -> Path:
    return ensure_files(DATASET, files, mirrors, root=root, log=(logs if logs is not None else []).append,
                        progress=False, **kwargs)  # type: ignore[arg-type]


def assert_complete(directory: Path) -> None:
    for remote in FILES:
        path = directory / remote.name
        assert verify_file(path, remote)
        assert not (directory / f"{remote.name}.part").exists()
    assert gzip.decompress((directory / IMAGES.name).read_bytes()) == CONTENT


# --------------------------------------------------------------------------------------------------------------
# paths and mirror order


def test_default_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_root() == tmp_path / "home" / ".cache" / "cnnctl" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "cnnctl" / "data"
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "explicit"))
    assert default_root() == tmp_path / "explicit"


def test_resolve_mirrors_puts_the_users_first(monkeypatch: pytest.MonkeyPatch) -> None:
    official = ["https://a.example/", "https://b.example/"]
    assert resolve_mirrors(official, None) == official
    assert resolve_mirrors(official, "/srv/mirror") == ["/srv/mirror", *official]
    monkeypatch.setenv("CNNCTL_MIRROR", "https://mine.example/")
    assert resolve_mirrors(official, None) == ["https://mine.example/", *official]
    assert resolve_mirrors(official, "/srv/mirror")[0] == "/srv/mirror"  # the argument beats the variable
    assert resolve_mirrors(official, "https://b.example/") == ["https://b.example/", "https://a.example/"]
    monkeypatch.setenv("CNNCTL_MIRROR", "")
    assert resolve_mirrors(official, None) == official


# --------------------------------------------------------------------------------------------------------------
# downloading


def test_downloads_from_http_mirror(server: Server, tmp_path: Path) -> None:
    logs: list[str] = []
    official = publish(server, "official")
    directory = fetch(tmp_path, [official], logs)
    assert directory == tmp_path / DATASET
    assert_complete(directory)
    assert sorted(server.paths()) == sorted(f"/official/{remote.name}" for remote in FILES)
    assert any(line.startswith(f"downloading {official}{IMAGES.name}") for line in logs)
    assert is_present(DATASET, FILES, tmp_path)
    assert not is_present("other", FILES, tmp_path)


def test_progress_bar_mode_downloads_too(server: Server, tmp_path: Path) -> None:
    directory = ensure_files(DATASET, FILES, [publish(server, "official")], root=tmp_path, log=lambda _: None,
                             progress=True)
    assert_complete(directory)


@pytest.mark.parametrize("layout", ["flat", "dataset_subfolder", "file_url"])
def test_directory_mirror(server: Server, tmp_path: Path, layout: str) -> None:
    mirror_dir = tmp_path / "mirror"
    holder = mirror_dir / DATASET if layout == "dataset_subfolder" else mirror_dir
    holder.mkdir(parents=True)
    for name, data in PAYLOAD.items():
        (holder / name).write_bytes(data)
    mirror = mirror_dir.as_uri() if layout == "file_url" else str(mirror_dir)
    official = publish(server, "official")
    directory = fetch(tmp_path / "data", [official], mirror=mirror)
    assert_complete(directory)
    assert server.requests == []  # the user's mirror had everything


def test_user_mirror_is_tried_before_official(server: Server, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    official = publish(server, "official")
    mine = publish(server, "mine")
    fetch(tmp_path / "a", [official], mirror=mine)
    assert all(path.startswith("/mine/") for path in server.paths())

    server.requests.clear()
    monkeypatch.setenv("CNNCTL_MIRROR", mine)
    fetch(tmp_path / "b", [official])
    assert server.paths() and all(path.startswith("/mine/") for path in server.paths())


def test_404_mirror_then_good_one(server: Server, tmp_path: Path) -> None:
    logs: list[str] = []
    good = publish(server, "good")
    missing = f"{server.url}/nothing-here/"
    directory = fetch(tmp_path, [missing, good], logs)
    assert_complete(directory)
    assert any(f"{missing}{IMAGES.name}" in line and "404" in line for line in logs)
    assert server.paths()[:2] == [f"/nothing-here/{IMAGES.name}", f"/good/{IMAGES.name}"]


def test_wrong_checksum_mirror_then_good_one(server: Server, tmp_path: Path) -> None:
    logs: list[str] = []
    wrong = {name: gzip.compress(b"something else entirely", mtime=0) for name in PAYLOAD}
    bad = publish(server, "bad", wrong)
    good = publish(server, "good")
    directory = fetch(tmp_path, [bad, good], logs)
    assert_complete(directory)
    assert any(f"{bad}{IMAGES.name}" in line and "checksum mismatch" in line for line in logs)


def test_recompressed_gz_verifies_by_content(server: Server, tmp_path: Path) -> None:
    recompressed = {IMAGES.name: gzip.compress(CONTENT, compresslevel=1, mtime=1_234_567),
                    LABEL_FILE.name: gzip.compress(LABELS, compresslevel=9, mtime=42)}
    assert recompressed[IMAGES.name] != GZ
    directory = fetch(tmp_path, [publish(server, "recompressed", recompressed)])
    for remote in FILES:
        assert verify_file(directory / remote.name, remote)
        assert (directory / remote.name).read_bytes() == recompressed[remote.name]


def test_resumes_a_partial_download_with_range(server: Server, tmp_path: Path) -> None:
    logs: list[str] = []
    directory = tmp_path / DATASET
    directory.mkdir()
    kept = len(GZ) // 3
    (directory / f"{IMAGES.name}.part").write_bytes(GZ[:kept])
    official = publish(server, "official")
    fetch(tmp_path, [official], logs, files=(IMAGES,))
    assert verify_file(directory / IMAGES.name, IMAGES)
    assert (directory / IMAGES.name).read_bytes() == GZ
    [seen] = server.requests
    assert seen.range == f"bytes={kept}-"
    assert seen.status == 206 and seen.sent == len(GZ) - kept
    assert any("resuming at" in line for line in logs)


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    logs: list[str] = []
    directory = tmp_path / DATASET
    directory.mkdir()
    (directory / f"{IMAGES.name}.part").write_bytes(GZ[:1000])
    fetch(tmp_path, [publish(server, "plain", ranges=False)], logs, files=(IMAGES,))
    assert (directory / IMAGES.name).read_bytes() == GZ
    [seen] = server.requests
    assert seen.range == "bytes=1000-" and seen.status == 200
    assert any("ignored the range request" in line for line in logs)


def test_stale_part_that_does_not_match_is_fetched_again_from_start(server: Server, tmp_path: Path) -> None:
    directory = tmp_path / DATASET
    directory.mkdir()
    (directory / f"{IMAGES.name}.part").write_bytes(b"\x1f\x8b" + b"stale bytes from another mirror" * 10)
    fetch(tmp_path, [publish(server, "official")], files=(IMAGES,))
    assert (directory / IMAGES.name).read_bytes() == GZ
    assert [seen.range is not None for seen in server.requests] == [True, False]


def test_complete_part_answered_416_is_verified_and_kept(server: Server, tmp_path: Path) -> None:
    directory = tmp_path / DATASET
    directory.mkdir()
    (directory / f"{IMAGES.name}.part").write_bytes(GZ)  # killed after the transfer, before the rename
    fetch(tmp_path, [publish(server, "official")], files=(IMAGES,))
    assert (directory / IMAGES.name).read_bytes() == GZ
    assert [(seen.range, seen.status) for seen in server.requests] == [(f"bytes={len(GZ)}-", 416)]


def test_concurrent_downloads_into_one_folder_fetch_once(server: Server, tmp_path: Path) -> None:
    server.routes[f"/slow/{IMAGES.name}"] = stall(0.3)
    logs: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            fetch(tmp_path, [f"{server.url}/slow/"], logs[index], files=(IMAGES,))
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=10)
    assert not errors
    assert server.paths() == [f"/slow/{IMAGES.name}"]
    assert verify_file(tmp_path / DATASET / IMAGES.name, IMAGES)
    assert any("waiting for another cnnctl process" in line for line in logs[1])
    assert logs[1][-1] == f"{DATASET}/{IMAGES.name}: already there"


def test_interrupted_transfer_keeps_part_and_next_run_resumes(server: Server, tmp_path: Path) -> None:
    logs: list[str] = []
    server.routes[f"/flaky/{IMAGES.name}"] = cut_short(GZ, 50_000)
    mirror = f"{server.url}/flaky/"
    with pytest.raises(DownloadError) as raised:
        fetch(tmp_path, [mirror], logs, files=(IMAGES,))
    part = tmp_path / DATASET / f"{IMAGES.name}.part"
    assert part.stat().st_size == 50_000
    assert not (tmp_path / DATASET / IMAGES.name).exists()  # nothing unverified gets the final name
    assert "50,000" in str(raised.value)

    server.routes[f"/flaky/{IMAGES.name}"] = serve(GZ)
    fetch(tmp_path, [mirror], files=(IMAGES,))
    assert server.requests[-1].range == "bytes=50000-"
    assert (tmp_path / DATASET / IMAGES.name).read_bytes() == GZ


def test_second_call_is_already_there_without_requests(server: Server, tmp_path: Path) -> None:
    official = publish(server, "official")
    fetch(tmp_path, [official])
    count = len(server.requests)
    assert (tmp_path / DATASET / ".verified.json").is_file()

    logs: list[str] = []
    fetch(tmp_path, [official], logs)
    assert len(server.requests) == count
    assert logs == [f"{DATASET}/{remote.name}: already there" for remote in FILES]

    # a touched file is re-hashed (not re-downloaded) and trusted again afterwards
    os.utime(tmp_path / DATASET / IMAGES.name, ns=(1_000_000_000, 1_000_000_000))
    logs.clear()
    fetch(tmp_path, [official], logs)
    assert len(server.requests) == count
    assert f"{DATASET}/{IMAGES.name}: already there (verified)" in logs


def test_corrupted_file_is_fetched_again(server: Server, tmp_path: Path) -> None:
    official = publish(server, "official")
    fetch(tmp_path, [official])
    target = tmp_path / DATASET / IMAGES.name
    target.write_bytes(GZ[:-100])
    logs: list[str] = []
    fetch(tmp_path, [official], logs)
    assert target.read_bytes() == GZ
    assert any("does not match its checksum" in line for line in logs)


def test_check_reports_corruption_and_missing_files(server: Server, tmp_path: Path) -> None:
    official = publish(server, "official")
    fetch(tmp_path, [official])
    count = len(server.requests)

    logs: list[str] = []
    assert fetch(tmp_path, [official], logs, check=True) == tmp_path / DATASET
    assert logs == [f"{DATASET}/{remote.name}: ok" for remote in FILES]

    target = tmp_path / DATASET / IMAGES.name
    stat = target.stat()
    corrupted = bytearray(GZ)
    corrupted[len(corrupted) // 2] ^= 0xFF
    target.write_bytes(bytes(corrupted))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only hashing can tell
    logs.clear()
    with pytest.raises(DataError, match=IMAGES.name) as caught:
        fetch(tmp_path, [official], logs, check=True)
    assert "checksum" in str(caught.value)
    assert f"{DATASET}/{IMAGES.name}: checksum mismatch" in logs

    (tmp_path / DATASET / LABEL_FILE.name).unlink()
    with pytest.raises(DataError, match=f"{LABEL_FILE.name} is missing"):
        fetch(tmp_path, [official], check=True)
    assert len(server.requests) == count  # --check never downloads
    assert not (tmp_path / DATASET / LABEL_FILE.name).exists()
    with pytest.raises(DataError, match="not downloaded"):
        fetch(tmp_path / "elsewhere", [official], check=True)
    assert not (tmp_path / "elsewhere").exists()


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_every_mirror_failing_is_one_line_download_error(server: Server, tmp_path: Path) -> None:
    logs: list[str] = []
    missing = f"{server.url}/missing/"
    unreachable = f"http://127.0.0.1:{_unused_port()}/data/"
    empty_dir = tmp_path / "empty-mirror"
    empty_dir.mkdir()
    with pytest.raises(DownloadError) as caught:
        fetch(tmp_path / "data", [missing, unreachable], logs, mirror=str(empty_dir))
    message = str(caught.value)
    assert "\n" not in message
    assert IMAGES.name in message
    for tried in (str(empty_dir), f"{missing}{IMAGES.name}", f"{unreachable}{IMAGES.name}"):
        assert tried in message
    assert "--mirror" in message and str(tmp_path / "data" / DATASET) in message
    assert message.index(str(empty_dir)) < message.index(missing)  # the user's mirror came first
    assert not (tmp_path / "data" / DATASET / IMAGES.name).exists()
    assert unreachable in message and "cannot connect" in message
    assert logs == []  # every failure is said once, in the error, not line by line before it


def test_redirect_loop_is_reported_with_url(server: Server, tmp_path: Path) -> None:
    logs: list[str] = []
    server.routes[f"/loop/{IMAGES.name}"] = redirect(f"/loop/{IMAGES.name}")
    url = f"{server.url}/loop/{IMAGES.name}"
    with pytest.raises(DownloadError, match="redirect") as caught:
        fetch(tmp_path, [f"{server.url}/loop/"], logs, files=(IMAGES,))
    assert url in str(caught.value)
    assert "redirect" in str(caught.value)


def test_timeout_is_reported_and_next_mirror_used(server: Server, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "TIMEOUT_SECONDS", 0.3)
    logs: list[str] = []
    server.routes[f"/slow/{IMAGES.name}"] = stall(3.0)
    good = publish(server, "good")
    started = time.monotonic()
    directory = fetch(tmp_path, [f"{server.url}/slow/", good], logs, files=(IMAGES,))
    assert time.monotonic() - started < 2.5
    assert verify_file(directory / IMAGES.name, IMAGES)
    assert any(f"{server.url}/slow/{IMAGES.name}" in line and "timed out" in line for line in logs)


# --------------------------------------------------------------------------------------------------------------
# verification on its own


def test_verify_file_variants(tmp_path: Path) -> None:
    path = tmp_path / IMAGES.name
    path.write_bytes(GZ)
    assert verify_file(path, IMAGES)
    path.write_bytes(gzip.compress(CONTENT[:100_000], mtime=5) + gzip.compress(CONTENT[100_000:]) + b"\0" * 64)
    assert verify_file(path, IMAGES)  # concatenated members and zero padding, as gzip reads them
    path.write_bytes(GZ[:-8])
    assert not verify_file(path, IMAGES)  # truncated: no trailer
    path.write_bytes(b"definitely not gzip")
    assert not verify_file(path, IMAGES)  # corrupt gzip is False, not an exception
    assert not verify_file(tmp_path / "absent.gz", IMAGES)
    path.write_bytes(GZ)
    assert verify_file(path, RemoteFile(IMAGES.name, file_md5=IMAGES.file_md5))
    assert verify_file(path, RemoteFile(IMAGES.name, content_md5=IMAGES.content_md5.upper()))  # type: ignore
    assert not verify_file(path, RemoteFile(IMAGES.name, content_sha256="0" * 64))
    plain = tmp_path / "raw.bin"
    plain.write_bytes(CONTENT)
    assert verify_file(plain, RemoteFile("raw.bin", content_sha256=IMAGES.content_sha256))


# --------------------------------------------------------------------------------------------------------------
# hostile servers: endless and trickling bodies


def endless(chunk: bytes = b"\0" * 65536, announce: bool = False) -> Route:
    """A body that never ends (no Content-Length unless ``announce``), like a server streaming /dev/zero."""

    def route(handler: _Handler, seen: Seen) -> None:
        seen.status = 200
        handler.send_response(200)
        if announce:
            handler.send_header("Content-Length", str(10**12))
        handler.end_headers()
        if announce:
            return
        while True:
            handler.wfile.write(chunk)
            seen.sent += len(chunk)

    return route


def trickle(every: float) -> Route:
    """One byte every ``every`` seconds: each read succeeds within the timeout, the transfer never ends."""

    def route(handler: _Handler, seen: Seen) -> None:
        seen.status = 200
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(GZ)))
        handler.end_headers()
        for byte in GZ:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            seen.sent += 1
            time.sleep(every)

    return route


SIZED = RemoteFile("sized.bin", file_md5=hashlib.md5(LABELS).hexdigest(), size=len(LABELS))
BOUNDED_GZ = RemoteFile("images.gz", content_sha256=IMAGES.content_sha256, content_size=len(CONTENT))


def test_endless_body_is_cut_at_the_largest_possible_size(server: Server, tmp_path: Path) -> None:
    server.routes["/endless/sized.bin"] = endless()
    server.routes["/endless/images.gz"] = endless()
    for remote in (SIZED, BOUNDED_GZ):
        started = time.monotonic()
        with pytest.raises(DownloadError, match=f"more than the {remote.max_bytes:,} bytes this file can have"):
            fetch(tmp_path, [f"{server.url}/endless/"], files=(remote,))
        assert time.monotonic() - started < 20
        assert list((tmp_path / DATASET).iterdir()) == [tmp_path / DATASET / ".lock"]  # no .part left


def test_announced_size_over_the_limit_is_refused_before_reading(server: Server, tmp_path: Path) -> None:
    server.routes["/huge/sized.bin"] = endless(announce=True)
    with pytest.raises(DownloadError, match=f"announces 1,000,000,000,000 bytes, more than the {len(LABELS):,}"):
        fetch(tmp_path, [f"{server.url}/huge/"], files=(SIZED,))


def test_recompressed_gz_within_the_content_bound_verifies(server: Server, tmp_path: Path) -> None:
    stored = gzip.compress(CONTENT, compresslevel=0, mtime=0)  # the largest gzip there is of this content
    assert len(stored) > len(GZ) and len(stored) <= BOUNDED_GZ.max_bytes
    server.routes["/stored/images.gz"] = serve(stored)
    directory = fetch(tmp_path, [f"{server.url}/stored/"], files=(BOUNDED_GZ,))
    assert verify_file(directory / "images.gz", IMAGES)


def test_trickling_server_is_given_up_and_next_mirror_used(server: Server, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "TIMEOUT_SECONDS", 0.5)
    server.routes["/slow/images.gz"] = trickle(0.05)  # 20 bytes/s: every read in time, the whole file in hours
    good = publish(server, "good")
    logs: list[str] = []
    started = time.monotonic()
    directory = fetch(tmp_path, [f"{server.url}/slow/", good], logs, files=(IMAGES,))
    assert time.monotonic() - started < 15
    assert verify_file(directory / "images.gz", IMAGES)
    assert any("too slow" in line and "/slow/" in line for line in logs), logs


def test_every_registered_dataset_file_has_a_size_bound() -> None:
    from cnnctl.registry import datasets

    for spec in datasets().values():
        for remote in spec.files:
            assert remote.max_bytes is not None, f"{spec.name}/{remote.name}"
