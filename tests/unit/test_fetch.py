"""sysupgrade.fetch: the image into /tmp (reference 3.4 step 2) with the RAM check (reference 9.3).

Every download is served by an HTTP(S) server on 127.0.0.1 that the test starts and stops; RAM figures
are injected (``room=``), except in the test of the real probe.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import socket
import ssl
import subprocess
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sysupgrade import fetch
from sysupgrade.fetch import DownloadError, ImageNotFound, NotEnoughRam, Room
from wrtcore.errors import EXIT_FAILURE, EXIT_INVALID, InvalidInput, UpgradeError

MiB = 1 << 20
PLENTY = Room(tmp_free=1 << 40, mem_available=1 << 40)

App = Callable[[BaseHTTPRequestHandler], None]


# --- the local servers ---------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[str, App], tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = routes
        self.release = threading.Event()  # set at teardown: frees handlers that stall on purpose
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (refusals, timeouts) are expected here

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # for chunked responses; urllib sends Connection: close anyway

    def do_GET(self) -> None:
        assert isinstance(self.server, Server)
        app = self.server.routes.get(self.path)
        if app is None:
            self.send_error(404)
        else:
            app(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def body(data: bytes, *, length: int | None = None) -> App:
    """200 with ``data``; ``Content-Length: length`` (default: the real length)."""

    def app(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data) if length is None else length))
        h.end_headers()
        for i in range(0, len(data), 64 * 1024):
            h.wfile.write(data[i : i + 64 * 1024])

    return app


def repeated(block: bytes, count: int, *, chunked: bool = False) -> App:
    """``block`` ``count`` times, without ever holding the whole body; chunked: no Content-Length."""

    def app(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(len(block) * count))
        h.end_headers()
        head = f"{len(block):x}\r\n".encode()
        for _ in range(count):
            if chunked:
                h.wfile.write(head)
            h.wfile.write(block)
            if chunked:
                h.wfile.write(b"\r\n")
        if chunked:
            h.wfile.write(b"0\r\n\r\n")

    return app


def redirect(to: str) -> App:
    def app(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", to)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return app


def stall(head: bool) -> App:
    """Say nothing (``head`` False), or send the headers and part of the body, then wait."""

    def app(h: BaseHTTPRequestHandler) -> None:
        assert isinstance(h.server, Server)
        if head:
            h.send_response(200)
            h.send_header("Content-Length", str(MiB))
            h.end_headers()
            h.wfile.write(b"x" * 1000)
        h.server.release.wait(10)

    return app


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(routes: dict[str, App], tls: ssl.SSLContext | None = None) -> Server:
        servers.append(Server(routes, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# --- calling get_image ---------------------------------------------------------------------------


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass
class Run:
    root: Path
    said: list[str] = field(default_factory=list)
    progress: io.StringIO = field(default_factory=io.StringIO)

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def get(self, source: str, **kw: Any) -> str:
        kw.setdefault("room", lambda tmp: PLENTY)
        return fetch.get_image(source, root=str(self.root), say=self.said.append,
                               progress_stream=self.progress, **kw)

    def tmp_files(self) -> list[str]:
        return sorted(os.listdir(self.tmp))


@pytest.fixture
def run(tmp_path: Path) -> Run:
    (tmp_path / "root" / "tmp").mkdir(parents=True)
    return Run(tmp_path / "root")


def image_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# --- paths ---------------------------------------------------------------------------------------


def test_image_in_tmp_is_used_in_place(run: Run) -> None:
    image_file(run.tmp / "fw.bin", 4096)
    assert run.get(str(run.tmp / "fw.bin")) == str(run.tmp / "fw.bin")
    assert run.tmp_files() == ["fw.bin"]
    assert run.said == []


def test_link_outside_tmp_to_an_image_in_tmp_is_used_in_place(run: Run, tmp_path: Path) -> None:
    image_file(run.tmp / "fw.bin", 4096)
    (tmp_path / "link").symlink_to(run.tmp / "fw.bin")
    assert run.get(str(tmp_path / "link")) == str(run.tmp / "fw.bin")
    assert run.tmp_files() == ["fw.bin"]


def test_image_elsewhere_is_copied_with_openwrts_message(run: Run, tmp_path: Path) -> None:
    data = image_file(tmp_path / "elsewhere" / "fw.bin", 3 * MiB + 5)
    (run.tmp / "link").symlink_to(tmp_path / "elsewhere" / "fw.bin")  # readlink -f: outside /tmp after all
    got = run.get(str(run.tmp / "link"))
    assert got == str(run.tmp / "sysupgrade.img")
    assert Path(got).read_bytes() == data
    assert run.said == ["Image not in /tmp, copying..."]
    assert run.tmp_files() == ["link", "sysupgrade.img"]


@pytest.mark.parametrize("kind", ["missing", "directory", "dangling link"])
def test_image_file_not_found(run: Run, tmp_path: Path, kind: str) -> None:
    source = tmp_path / "fw.bin"
    if kind == "directory":
        source.mkdir()
    elif kind == "dangling link":
        source.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ImageNotFound) as err:
        run.get(str(source))
    assert err.value.message == "Image file not found."
    assert err.value.exit_code == EXIT_FAILURE  # OpenWrt's exit 1
    assert run.tmp_files() == []


def test_failed_copy_leaves_nothing(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image_file(tmp_path / "fw.bin", MiB)
    calls = []

    def full(fd: int, data: memoryview) -> None:
        calls.append(len(data))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.write(fd, data)

    monkeypatch.setattr(fetch, "_write_all", full)
    with pytest.raises(UpgradeError) as err:
        run.get(str(tmp_path / "fw.bin"))
    assert str(err.value) == "Failed to copy the image to /tmp/sysupgrade.img: No space left on device"
    assert run.tmp_files() == []


# --- downloads -----------------------------------------------------------------------------------


def test_download_with_length_prints_a_line_every_ten_percent(run: Run, serve: Callable[..., Server]) -> None:
    data = os.urandom(MiB)
    server = serve({"/fw.bin": body(data)})
    got = run.get(server.url("/fw.bin"))
    assert got == str(run.tmp / "sysupgrade.img")
    assert Path(got).read_bytes() == data
    lines = run.progress.getvalue().splitlines()
    assert [int(re.match(r"Downloading: (\d+)% \(", line)[1]) for line in lines] == list(range(10, 101, 10))  # type: ignore[index]
    assert re.fullmatch(r"Downloading: 100% \(1\.0 MiB of 1\.0 MiB, [\d.]+ [KMG]?i?B/s\)", lines[-1])
    assert run.said[0] == f"Downloading {server.url('/fw.bin')} to /tmp/sysupgrade.img (1.0 MiB)"
    assert re.fullmatch(r"Downloaded 1\.0 MiB in [\d.]+ s \(.*/s\)", run.said[-1])
    assert run.tmp_files() == ["sysupgrade.img"]


def test_download_on_a_terminal_redraws_one_bar(run: Run, serve: Callable[..., Server]) -> None:
    data = os.urandom(MiB)
    server = serve({"/fw.bin": body(data)})
    run.progress = TtyStringIO()
    run.get(server.url("/fw.bin"))
    out = run.progress.getvalue()
    assert out.startswith("\r") and out.endswith("\n") and out.count("\n") == 1
    last = out.rstrip("\n").split("\r")[-1].rstrip()
    assert re.fullmatch(r"100% \[#{30}\] 1\.0 MiB / 1\.0 MiB  .*/s", last)
    assert len(out.split("\r")) > 2  # redrawn, not printed once


def test_chunked_download_without_length(run: Run, serve: Callable[..., Server]) -> None:
    block = os.urandom(MiB)
    server = serve({"/fw.bin": repeated(block, 17, chunked=True)})
    got = run.get(server.url("/fw.bin"))
    assert Path(got).read_bytes() == block * 17
    lines = run.progress.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["Downloading: 8.0 MiB", "Downloading: 16.0 MiB"]
    assert run.said[0].endswith("to /tmp/sysupgrade.img (size not announced)")


def test_chunked_download_on_a_terminal_shows_bytes_and_rate(run: Run, serve: Callable[..., Server]) -> None:
    server = serve({"/fw.bin": repeated(b"z" * MiB, 2, chunked=True)})
    run.progress = TtyStringIO()
    run.get(server.url("/fw.bin"))
    last = run.progress.getvalue().rstrip("\n").split("\r")[-1].rstrip()
    assert re.fullmatch(r"2\.0 MiB  .*/s", last)


def test_redirects_are_followed_but_not_forever(run: Run, serve: Callable[..., Server]) -> None:
    chain = {f"/r/{i}": redirect(f"/r/{i + 1}") for i in range(10)}
    server = serve({"/fw.bin": body(b"image"), "/go": redirect("/fw.bin"), **chain})
    assert Path(run.get(server.url("/go"))).read_bytes() == b"image"
    with pytest.raises(DownloadError) as err:
        run.get(server.url("/r/0"))
    assert str(err.value) == f"Cannot download {server.url('/r/0')}: too many redirects (more than 5)"


def test_http_404(run: Run, serve: Callable[..., Server]) -> None:
    server = serve({})
    with pytest.raises(DownloadError) as err:
        run.get(server.url("/missing.bin"))
    assert str(err.value) == f"Cannot download {server.url('/missing.bin')}: HTTP 404 Not Found"
    assert err.value.exit_code == EXIT_FAILURE
    assert run.tmp_files() == []


def test_http_500_says_status_and_reason(run: Run, serve: Callable[..., Server]) -> None:
    server = serve({"/fw.bin": lambda h: h.send_error(503, "Maintenance")})
    with pytest.raises(DownloadError, match=r": HTTP 503 Maintenance$"):
        run.get(server.url("/fw.bin"))


def test_connection_refused(run: Run) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/fw.bin"
    with pytest.raises(DownloadError) as err:
        run.get(url)
    assert str(err.value) == f"Cannot download {url}: connection to 127.0.0.1:{port} refused"
    assert run.tmp_files() == []


def test_truncated_body_is_reported_and_removed(run: Run, serve: Callable[..., Server]) -> None:
    server = serve({"/fw.bin": body(b"x" * 400_000, length=1_000_000)})
    with pytest.raises(DownloadError) as err:
        run.get(server.url("/fw.bin"))
    assert str(err.value) == (f"Cannot download {server.url('/fw.bin')}: truncated: received 400000 of "
                              "1000000 bytes (0.4 MiB of 1.0 MiB), then the server closed the connection")
    assert run.tmp_files() == []


@pytest.mark.parametrize("head", [False, True], ids=["before-headers", "mid-body"])
def test_timeout(run: Run, serve: Callable[..., Server], head: bool) -> None:
    server = serve({"/fw.bin": stall(head)})
    with pytest.raises(DownloadError) as err:
        run.get(server.url("/fw.bin"), timeout=0.3)
    port = server.server_address[1]
    assert str(err.value).endswith(f": no answer from 127.0.0.1:{port} within 0.3 s (timeout)")
    assert run.tmp_files() == []


def test_interrupted_download_leaves_nothing(run: Run, serve: Callable[..., Server],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve({"/fw.bin": repeated(b"y" * MiB, 4)})

    def interrupt(self: fetch.Progress, done: int, *, final: bool = False) -> None:
        if done > MiB:
            raise KeyboardInterrupt

    monkeypatch.setattr(fetch.Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.get(server.url("/fw.bin"))
    assert run.tmp_files() == []


def test_write_failure_during_download(run: Run, serve: Callable[..., Server],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve({"/fw.bin": repeated(b"y" * MiB, 2)})

    def full(fd: int, data: memoryview) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fetch, "_write_all", full)
    with pytest.raises(UpgradeError) as err:
        run.get(server.url("/fw.bin"))
    assert str(err.value) == "Failed to write the image to /tmp/sysupgrade.img: No space left on device"
    assert run.tmp_files() == []


@pytest.mark.parametrize(("source", "why"), [
    ("ftp://example.org/fw.bin", "Unsupported image URL ftp://example.org/fw.bin: only http:// and https://"),
    ("http:///fw.bin", "Invalid image URL http:///fw.bin: no host"),
    ("http://127.0.0.1:99999/fw.bin", "Invalid image URL http://127.0.0.1:99999/fw.bin: Port out of range"),
    ("http://user:secret@127.0.0.1/fw.bin", "Invalid image URL: credentials in the URL are not supported"),
])
def test_bad_urls_are_invalid_input(run: Run, source: str, why: str) -> None:
    with pytest.raises(InvalidInput) as err:
        run.get(source)
    assert str(err.value).startswith(why)
    assert "secret" not in str(err.value)
    assert err.value.exit_code == EXIT_INVALID


# --- https ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: (cert, key) paths."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("openssl not installed: cannot make a test certificate")
    return cert, key


def tls_server(serve: Callable[..., Server], certificate: tuple[str, str], routes: dict[str, App]) -> Server:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    return serve(routes, tls=ctx)


def test_https_with_a_trusted_self_signed_certificate(run: Run, serve: Callable[..., Server],
                                                      certificate: tuple[str, str]) -> None:
    data = os.urandom(300_000)
    server = tls_server(serve, certificate, {"/fw.bin": body(data)})
    assert server.url("/fw.bin").startswith("https://")
    trusted = ssl.create_default_context(cafile=certificate[0])
    assert Path(run.get(server.url("/fw.bin"), ssl_context=trusted)).read_bytes() == data


def test_https_with_an_untrusted_certificate_fails(run: Run, serve: Callable[..., Server],
                                                   certificate: tuple[str, str]) -> None:
    server = tls_server(serve, certificate, {"/fw.bin": body(b"image")})
    with pytest.raises(DownloadError) as err:
        run.get(server.url("/fw.bin"))  # the default context: the system's CAs
    assert str(err.value).startswith(f"Cannot download {server.url('/fw.bin')}: "
                                     "TLS certificate verification failed: self-signed certificate")
    assert err.value.hint and "ca-bundle" in err.value.hint
    assert run.tmp_files() == []


# --- RAM -----------------------------------------------------------------------------------------


def test_url_too_big_for_ram_is_refused_before_writing(run: Run, serve: Callable[..., Server]) -> None:
    server = serve({"/fw.bin": repeated(b"r" * MiB, 6)})
    room = Room(tmp_free=100 * MiB, mem_available=50 * MiB)
    with pytest.raises(NotEnoughRam) as err:
        run.get(server.url("/fw.bin"), ram_reserve=64 * MiB, room=lambda tmp: room)
    assert str(err.value).startswith("Not enough RAM for the image: need 70.0 MiB "
                                     "(image 6.0 MiB + 64.0 MiB for stage2), MemAvailable is 50.0 MiB")
    assert run.tmp_files() == []
    assert run.progress.getvalue() == ""


def test_copy_too_big_for_tmp_is_refused_before_writing(run: Run, tmp_path: Path) -> None:
    image_file(tmp_path / "fw.bin", 6 * MiB)
    room = Room(tmp_free=5 * MiB, mem_available=500 * MiB)
    with pytest.raises(NotEnoughRam) as err:
        run.get(str(tmp_path / "fw.bin"), room=lambda tmp: room)
    assert err.value.message == "Not enough RAM for the image: the image needs 6.0 MiB, /tmp has 5.0 MiB free"
    assert err.value.exit_code == EXIT_FAILURE
    assert run.tmp_files() == [] and run.said == []


def test_both_limits_are_named(run: Run, tmp_path: Path) -> None:
    image_file(tmp_path / "fw.bin", 6 * MiB)
    room = Room(tmp_free=5 * MiB, mem_available=60 * MiB)
    with pytest.raises(NotEnoughRam) as err:
        run.get(str(tmp_path / "fw.bin"), room=lambda tmp: room)
    assert err.value.message == ("Not enough RAM for the image: the image needs 6.0 MiB, /tmp has 5.0 MiB "
                                 "free; need 78.0 MiB (image 6.0 MiB + 72.0 MiB for stage2), "
                                 "MemAvailable is 60.0 MiB")


def test_image_in_tmp_checks_only_the_stage2_reserve(run: Run) -> None:
    image_file(run.tmp / "fw.bin", 6 * MiB)
    fits = Room(tmp_free=0, mem_available=fetch.DEFAULT_RAM_RESERVE)
    assert run.get(str(run.tmp / "fw.bin"), room=lambda tmp: fits) == str(run.tmp / "fw.bin")
    short = Room(tmp_free=0, mem_available=50 * MiB)
    with pytest.raises(NotEnoughRam) as err:
        run.get(str(run.tmp / "fw.bin"), ram_reserve=64 * MiB, room=lambda tmp: short)
    assert err.value.message == ("Not enough RAM for stage2: need 64.0 MiB for stage2 (the image is already "
                                 "in /tmp: no copy, only stage2 checked), MemAvailable is 50.0 MiB")


def test_unknown_size_stops_when_crossing_the_limit(run: Run, serve: Callable[..., Server]) -> None:
    server = serve({"/fw.bin": repeated(b"u" * MiB, 20, chunked=True)})
    room = Room(tmp_free=10 * MiB, mem_available=1 << 40)
    with pytest.raises(NotEnoughRam) as err:
        run.get(server.url("/fw.bin"), room=lambda tmp: room)
    assert re.fullmatch(r"Not enough RAM for the image: the image needs at least 10\.\d MiB, "
                        r"/tmp has 10\.0 MiB free; download stopped \(no size announced\)", err.value.message)
    assert run.tmp_files() == []


def test_stale_copy_counts_as_room_and_is_replaced(run: Run, tmp_path: Path) -> None:
    (run.tmp / "sysupgrade.img").write_bytes(b"o" * 4 * MiB)
    data = image_file(tmp_path / "fw.bin", 6 * MiB)
    room = Room(tmp_free=3 * MiB, mem_available=fetch.DEFAULT_RAM_RESERVE + 3 * MiB)
    got = run.get(str(tmp_path / "fw.bin"), room=lambda tmp: room)
    assert Path(got).read_bytes() == data


def test_unknown_memavailable_checks_tmp_only(run: Run, tmp_path: Path) -> None:
    image_file(tmp_path / "fw.bin", MiB)
    run.get(str(tmp_path / "fw.bin"), room=lambda tmp: Room(tmp_free=2 * MiB, mem_available=None))
    assert run.said[0] == "Note: MemAvailable not found in /proc/meminfo: only the space in /tmp is checked"


def test_measure_room_reads_statvfs_and_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       125000 kB\nMemFree:         20000 kB\nMemAvailable:    51200 kB\n")
    seen = []

    def statvfs(path: str) -> os.statvfs_result:
        seen.append(path)
        return os.statvfs_result((4096, 4096, 1000, 600, 512, 0, 0, 0, 0, 255))

    room = fetch.measure_room("/somewhere/tmp", meminfo=str(meminfo), statvfs=statvfs)
    assert room == Room(tmp_free=512 * 4096, mem_available=50 * MiB)
    assert seen == ["/somewhere/tmp"]
    assert fetch.measure_room(str(tmp_path), meminfo=str(tmp_path / "none")).mem_available is None


def test_measure_room_on_this_machine(tmp_path: Path) -> None:
    room = fetch.measure_room(str(tmp_path))
    assert room.tmp_free > 0
    if os.path.exists("/proc/meminfo"):
        assert room.mem_available is not None and room.mem_available > 0


def test_missing_tmp_is_a_clear_error(tmp_path: Path) -> None:
    image_file(tmp_path / "fw.bin", 10)
    with pytest.raises(UpgradeError, match=r"^Cannot check the free space of /tmp: No such file or direc"):
        fetch.get_image(str(tmp_path / "fw.bin"), root=str(tmp_path / "noroot"), say=print,
                        progress_stream=io.StringIO())


# --- memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["download", "copy"])
def test_memory_stays_flat_for_a_64_mib_image(run: Run, serve: Callable[..., Server], tmp_path: Path,
                                              kind: str) -> None:
    block = os.urandom(MiB)
    if kind == "download":
        source = serve({"/fw.bin": repeated(block, 64)}).url("/fw.bin")
    else:
        with open(tmp_path / "fw.bin", "wb") as f:
            for _ in range(64):
                f.write(block)
        source = str(tmp_path / "fw.bin")
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        got = run.get(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < 1 * MiB, f"peak {peak - before} bytes above the start"
    digest = hashlib.sha256()
    with open(got, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(block * 64).digest()
