"""Bring the image into the system's /tmp (reference 3.4 step 2), checking RAM first (reference 9.3).

``get_image(source, ...)`` returns the host path of the image under ``<root>/tmp``:

- a path is resolved like ``readlink -f``; a missing or non-regular file is ``Image file not found.``
  (OpenWrt's message, exit code 1); an image already under /tmp is used in place, anything else is
  announced with ``Image not in /tmp, copying...`` and copied to /tmp/sysupgrade.img;
- an ``http://`` or ``https://`` URL is downloaded to /tmp/sysupgrade.img (OpenWrt runs ``wget`` there),
  streamed in ``CHUNK`` bytes with progress on ``progress_stream``.

Either way the file is written under a temporary name in /tmp and renamed at the end; every failure
(including Ctrl-C) removes it. A stale /tmp/sysupgrade.img from an earlier run is counted as free room
and removed just before the new one is written.

RAM, before anything is written. /tmp is a tmpfs: the image costs RAM twice over, as space in /tmp's
tmpfs (capped by its ``size=``, ``f_bavail * f_frsize``) and as memory (``MemAvailable``). Stage 2 then
builds its ramfs in a tmpfs of its own and runs the writer, which costs memory but not /tmp space. So
the checks are: /tmp free >= image, and MemAvailable >= image + ``ram_reserve``. An image already in
/tmp is in RAM already: only the stage-2 reserve is checked. When a download announces no length the
checks run as the bytes arrive, and the download stops cleanly before it would cross either limit.
MemAvailable missing (no /proc, kernels before 3.14) skips the memory check, with a note.

Defaults: ``DEFAULT_RAM_RESERVE`` 72 MiB (the README's measurements: the stage-2 ramfs holds 42.4 MiB
of interpreter, libraries and code, and the writer's peak RSS is 29.7 MiB; counting the writer's pages
mapped from the ramfs twice errs on the safe side). ``DEFAULT_TIMEOUT`` 30 s per socket operation
(connect, each read): a download can take as long as it needs, but one that stalls that long fails.
At most ``MAX_REDIRECTS`` (5) redirects, http and https only. HTTPS verifies certificates against the
system's CA store (OpenWrt: the ``ca-bundle`` package) or the ``ssl_context`` given; there is no
option to skip verification. Proxies come from the environment (``http_proxy``...), as with wget.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

from sysupgrade import paths
from wrtcore.errors import InvalidInput, UpgradeError

MiB = 1 << 20
CHUNK = 64 * 1024  # the one buffer a download uses
DEFAULT_RAM_RESERVE = 72 * MiB
DEFAULT_TIMEOUT = 30.0
MAX_REDIRECTS = 5
PROGRESS_STEP_UNKNOWN = 8 * MiB  # a plain progress line every this many bytes when the size is unknown
TTY_REDRAW = 0.2  # seconds between redraws of the terminal bar (plus one per percent)
MEMINFO = "/proc/meminfo"
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ImageNotFound(UpgradeError):
    """OpenWrt's ``Image file not found.``, with OpenWrt's exit code 1."""


class NotEnoughRam(UpgradeError):
    """The image (or stage 2) would not fit: refused before anything was written."""


class DownloadError(UpgradeError):
    """The image could not be downloaded; nothing is left in /tmp."""


@dataclass(frozen=True)
class Room:
    """What the system can still take: bytes free on /tmp's filesystem, and MemAvailable (None: unknown)."""

    tmp_free: int
    mem_available: int | None


def measure_room(tmp_dir: str, *, meminfo: str = MEMINFO,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> Room:
    """``f_bavail * f_frsize`` of ``tmp_dir`` and ``MemAvailable`` from ``meminfo`` (kB there)."""
    try:
        st = statvfs(tmp_dir)
    except OSError as exc:
        raise UpgradeError(f"Cannot check the free space of {paths.TMP}: {exc.strerror or exc}") from exc
    available: int | None = None
    with contextlib.suppress(OSError), open(meminfo, encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "MemAvailable":
                words = value.split()
                if words and words[0].isdigit():
                    available = int(words[0]) * 1024
                break
    return Room(tmp_free=st.f_bavail * st.f_frsize, mem_available=available)


def mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(frozen=True)
class Budget:
    """The checks of the module docstring, for one image. ``reclaim``: a stale copy about to go."""

    room: Room
    reserve: int
    reclaim: int = 0

    def shortfalls(self, image: int, *, in_place: bool = False, so_far: bool = False) -> list[str]:
        """One clause per limit crossed (empty: it fits). ``so_far``: ``image`` is a lower bound."""
        out = []
        least = "at least " if so_far else ""
        tmp_free = self.room.tmp_free + self.reclaim
        if not in_place and image > tmp_free:
            out.append(f"the image needs {least}{mib(image)}, {paths.TMP} has {mib(tmp_free)} free")
        if self.room.mem_available is not None:
            mem = self.room.mem_available + (0 if in_place else self.reclaim)
            if in_place and self.reserve > mem:
                out.append(f"need {mib(self.reserve)} for stage2 (the image is already in {paths.TMP}: "
                           f"no copy, only stage2 checked), MemAvailable is {mib(mem)}")
            elif not in_place and image + self.reserve > mem:
                out.append(f"need {least}{mib(image + self.reserve)} (image {least}{mib(image)} + "
                           f"{mib(self.reserve)} for stage2), MemAvailable is {mib(mem)}")
        return out

    def check(self, image: int, *, in_place: bool = False, so_far: bool = False) -> None:
        """Raise ``NotEnoughRam`` with the figures when ``image`` (or stage 2 alone) does not fit."""
        short = self.shortfalls(image, in_place=in_place, so_far=so_far)
        if short:
            what = "stage2" if in_place else "the image"
            stopped = "; download stopped (no size announced)" if so_far else ""
            raise NotEnoughRam(f"Not enough RAM for {what}: " + "; ".join(short) + stopped,
                               hint="stop services to free memory, or use a device with more RAM")


class Progress:
    """Download progress: a bar redrawn with ``\\r`` on a terminal, else a plain line every 10 %."""

    def __init__(self, stream: TextIO, total: int | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.total = total
        self.clock = clock
        self.tty = stream.isatty()
        self.start = clock()
        self.shown = -1  # last percent (known size) or step (unknown size) shown
        self.last_draw = self.start
        self.width = 0  # of the bar last drawn, to blank leftovers

    def rate(self, done: int) -> str:
        elapsed = self.clock() - self.start
        return f"{human(done / elapsed) if elapsed > 0 else '-'}/s"

    def update(self, done: int, *, final: bool = False) -> None:
        if self.tty:
            self._draw(done, final)
        elif self.total:
            tenth = done * 10 // self.total
            if tenth > self.shown and (tenth > 0 or final):
                self.shown = tenth
                self._line(f"{tenth * 10}% ({mib(done)} of {mib(self.total)}, {self.rate(done)})")
        else:
            step = done // PROGRESS_STEP_UNKNOWN
            if step > self.shown and step > 0:
                self.shown = step
                self._line(f"{mib(done)} ({self.rate(done)})")

    def _line(self, text: str) -> None:
        self.stream.write(f"Downloading: {text}\n")
        self.stream.flush()

    def _draw(self, done: int, final: bool) -> None:
        now = self.clock()
        if self.total:
            pct = min(100, done * 100 // self.total)
            if not final and pct == self.shown and now - self.last_draw < TTY_REDRAW:
                return
            self.shown = pct
            filled = pct * 30 // 100
            text = (f"{pct:3d}% [{'#' * filled}{' ' * (30 - filled)}] "
                    f"{mib(done)} / {mib(self.total)}  {self.rate(done)}")
        else:
            if not final and now - self.last_draw < TTY_REDRAW:
                return
            text = f"{mib(done)}  {self.rate(done)}"
        self.last_draw = now
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line, so what follows starts on a line of its own."""
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


# --- the image on disk ---------------------------------------------------------------------------


@contextlib.contextmanager
def _staged(dest: str) -> Iterator[int]:
    """A temporary file next to ``dest``, renamed to it on success, removed on any failure."""
    directory, name = os.path.split(dest)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    try:
        yield fd
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _stale(dest: str, source: str | None = None) -> int:
    """Size of an old copy at ``dest`` that the new one replaces (0 when there is none)."""
    try:
        st = os.stat(dest)
    except OSError:
        return 0
    if source is not None and os.path.exists(source) and os.path.samefile(source, dest):
        return 0
    return st.st_size if os.path.isfile(dest) else 0


def _write_error(exc: OSError) -> UpgradeError:
    return UpgradeError(f"Failed to write the image to {paths.IMAGE_COPY}: {exc.strerror or exc}")


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def copy_image(real: str, dest: str, budget: Budget, say: Callable[[str], None]) -> None:
    """Reference 3.4 step 2's copy, streamed through one ``CHUNK`` buffer."""
    budget.check(os.path.getsize(real))
    say("Image not in /tmp, copying...")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dest)
    buf = bytearray(CHUNK)
    try:
        with _staged(dest) as fd, open(real, "rb", buffering=0) as src, memoryview(buf) as view:
            while n := src.readinto(buf):
                _write_all(fd, view[:n])
    except OSError as exc:
        raise UpgradeError(f"Failed to copy the image to {paths.IMAGE_COPY}: {exc.strerror or exc}") from exc


# --- downloads -----------------------------------------------------------------------------------


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """http and https only (no ftp://, no file:// even after a redirect), env proxies, few redirects."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(context=context or ssl.create_default_context()),
                    _Redirects(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _hostport(parts: urllib.parse.SplitResult) -> str:
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _describe(exc: BaseException, parts: urllib.parse.SplitResult, timeout: float) -> tuple[str, str | None]:
    """One line for a network failure (and a hint), whatever layer raised it."""
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code in (301, 302, 303, 307, 308) and "infinite loop" in str(exc.msg):
            return f"too many redirects (more than {MAX_REDIRECTS})", None
        return f"HTTP {exc.code} {str(exc.msg).splitlines()[0] if exc.msg else ''}".rstrip(), None
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return _describe(reason, parts, timeout) if isinstance(reason, BaseException) else (str(reason), None)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate verification failed: {exc.verify_message or exc.reason}",
                "install the CA certificates (OpenWrt: ca-bundle), or download the image yourself "
                "and pass the file")
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}", None
    if isinstance(exc, TimeoutError):  # socket.timeout too
        return f"no answer from {_hostport(parts)} within {timeout:g} s (timeout)", None
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {parts.hostname}: {exc.strerror}", None
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {_hostport(parts)} refused", None
    if isinstance(exc, http.client.IncompleteRead):
        return "truncated: the server closed the connection in the middle of a chunk", None
    if isinstance(exc, OSError):
        return f"connection to {_hostport(parts)} failed: {(exc.strerror or str(exc)).lower()}", None
    return f"{type(exc).__name__}: {exc}", None


def parse_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidInput(f"Invalid image URL {url}: {exc}") from exc
    if not parts.hostname:
        raise InvalidInput(f"Invalid image URL {url}: no host")
    if parts.username is not None:
        raise InvalidInput("Invalid image URL: credentials in the URL are not supported")
    return parts


def download(url: str, dest: str, budget: Budget, *, say: Callable[[str], None], progress_stream: TextIO,
             timeout: float, ssl_context: ssl.SSLContext | None) -> None:
    parts = parse_url(url)

    def fail(exc: BaseException) -> DownloadError:
        line, hint = _describe(exc, parts, timeout)
        return DownloadError(f"Cannot download {url}: {line}", hint)

    request = urllib.request.Request(url, headers={"User-Agent": "sysupgrade", "Accept-Encoding": "identity"})
    try:
        response = _opener(ssl_context).open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise fail(exc) from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise fail(exc) from exc
    with response:
        header = response.headers.get("Content-Length")
        total = int(header) if header and header.strip().isdigit() else None
        budget.check(total or 0)
        say(f"Downloading {url} to {paths.IMAGE_COPY}"
            + (f" ({mib(total)})" if total is not None else " (size not announced)"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        progress = Progress(progress_stream, total)
        done = 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            with _staged(dest) as fd:
                while True:
                    try:
                        n = response.readinto(buf)
                    except (OSError, http.client.HTTPException) as exc:
                        raise fail(exc) from exc
                    if not n:
                        break
                    done += n
                    if total is None:
                        budget.check(done, so_far=True)
                    try:
                        _write_all(fd, view[:n])
                    except OSError as exc:
                        raise _write_error(exc) from exc
                    progress.update(done)
                if total is not None and done < total:
                    raise DownloadError(f"Cannot download {url}: truncated: received {done} of {total} "
                                        f"bytes ({mib(done)} of {mib(total)}), then the server closed "
                                        "the connection")
                progress.update(done, final=True)
        finally:
            progress.close()
            view.release()
    elapsed = max(time.monotonic() - progress.start, 1e-9)
    say(f"Downloaded {mib(done)} in {elapsed:.1f} s ({human(done / elapsed)}/s)")


# --- the entry point -----------------------------------------------------------------------------


def get_image(source: str, *, root: str, say: Callable[[str], None], progress_stream: TextIO,
              ram_reserve: int = DEFAULT_RAM_RESERVE, timeout: float = DEFAULT_TIMEOUT,
              ssl_context: ssl.SSLContext | None = None,
              room: Callable[[str], Room] = measure_room) -> str:
    """Host path of the image in ``<root>/tmp``: used in place, copied, or downloaded (module docstring).

    Raises ``ImageNotFound`` (``Image file not found.``), ``InvalidInput`` (a malformed URL, another
    scheme), ``NotEnoughRam`` (before anything is written), ``DownloadError``, ``UpgradeError`` (copy
    or write failures). ``room`` measures /tmp and MemAvailable (tests inject small figures).
    """
    tmp = os.path.realpath(paths.rooted(paths.TMP, root))
    dest = paths.rooted(paths.IMAGE_COPY, root)
    is_url = source.startswith(("http://", "https://"))
    if not is_url and URL_SCHEME.match(source) and not os.path.exists(source):
        raise InvalidInput(f"Unsupported image URL {source}: only http:// and https:// are fetched")
    real = None if is_url else os.path.realpath(source)
    if real is not None and not os.path.isfile(real):
        raise ImageNotFound("Image file not found.", hint=f"{source}: missing or not a regular file")
    measured = room(tmp)
    if measured.mem_available is None:
        say(f"Note: MemAvailable not found in {MEMINFO}: only the space in {paths.TMP} is checked")
    if real is not None and real.startswith(tmp + "/"):
        Budget(measured, ram_reserve).check(0, in_place=True)
        return real
    budget = Budget(measured, ram_reserve, reclaim=_stale(dest, real))
    if real is not None:
        copy_image(real, dest, budget, say)
    else:
        download(source, dest, budget, say=say, progress_stream=progress_stream, timeout=timeout,
                 ssl_context=ssl_context)
    return dest
