"""The fwtool trailer: metadata and signature chunks appended to an OpenWrt firmware image.

Byte-compatible with OpenWrt's ``fwtool`` (``fwimage.h``). Each chunk is its data followed by a 16-byte
big-endian trailer::

    off size field
    0   4    magic  0x46577830 ("FWx0")
    4   4    crc32  over every byte of the file before the trailer (image, earlier chunks, this data):
                    reflected CRC-32, initial value 0xFFFFFFFF, no final XOR
    8   1    type   0 signature, 1 metadata
    9   3    pad    zero
    12  4    size   data length + 16

Metadata data is an 8-byte header (version 0, flags 0) followed by JSON text (at most 30 KiB); signature
data is the ucert blob (at most 1 KiB, see ``sysupgrade.usign``). The build appends metadata first and the
signature last, so the signature covers the image and the metadata. Chunks are found by walking trailers
backwards from the end of the file, as fwtool does: a search for metadata skips signature chunks, chunks
of unknown type and metadata whose header version is not 0; a search for the signature skips unknown
types and ends at the first metadata chunk. The image itself is never read into memory (the CRCs are
streamed in one pass over the file). Stricter than fwtool: a chunk over its type's limit is refused
when read (fwtool only refuses more than 32 KiB), and every chunk's CRC is checked, not just the CRCs
up to the chunk found.

Run as ``python -m stage2.formats.fwtool [-i|-I|-s|-S <file>] [-q] [-t] [-T] <image>`` it behaves like
``fwtool``: ``-i``/``-s`` extract metadata/signature into a file (``-`` = stdout), ``-I``/``-S`` append
them (``-`` = stdin), ``-t`` truncates the image before the extracted chunk, ``-T`` writes the image
without it to stdout (``-T -s /dev/null`` is the message a signature covers), ``-q`` is quiet; exit 0
when found (or appended), 1 when not.
"""

from __future__ import annotations

import getopt
import io
import json
import os
import struct
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, BinaryIO, Literal, overload

from wrtcore.errors import InvalidInput

MAGIC = 0x46577830
TRAILER = struct.Struct(">IIB3xI")
TRAILER_SIZE = TRAILER.size  # 16
METADATA_HEADER = struct.Struct(">II")  # version, flags (both 0; fwtool writes them in host order)
METADATA_VERSION = 0
METADATA_MAX = 30 * 1024  # longest JSON text fwtool accepts
SIGNATURE_MAX = 1024  # longest signature blob fwtool accepts
CRC_INIT = 0xFFFFFFFF

_BLOCK = 1 << 20  # read size while streaming CRCs and copies


class ChunkType(IntEnum):
    SIGNATURE = 0
    METADATA = 1


class FwtoolError(InvalidInput):
    """A malformed or missing fwtool trailer (bad input: nothing was written)."""


class DataNotFound(FwtoolError):
    def __init__(self, message: str = "Data not found", hint: str | None = None) -> None:
        super().__init__(message, hint)


class CrcError(FwtoolError):
    def __init__(self, message: str = "CRC error", hint: str | None = None) -> None:
        super().__init__(message, hint)


class InvalidMetadata(FwtoolError):
    """The metadata chunk exists and its CRC matches, but its content is unusable."""


@dataclass(frozen=True)
class Chunk:
    """One chunk: ``length`` data bytes at ``offset``, then the 16-byte trailer."""

    type: int  # a ChunkType, or the raw byte for types fwtool does not know
    offset: int
    length: int
    crc: int

    @property
    def trailer_offset(self) -> int:
        return self.offset + self.length

    @property
    def end(self) -> int:
        return self.offset + self.length + TRAILER_SIZE


def crc32(data: bytes | bytearray | memoryview, crc: int = CRC_INIT) -> int:
    """Continue fwtool's CRC (init 0xFFFFFFFF, no final XOR) over ``data``."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def encode_trailer(chunk_type: int, crc: int, data_length: int) -> bytes:
    return TRAILER.pack(MAGIC, crc, chunk_type, data_length + TRAILER_SIZE)


# --- reading -------------------------------------------------------------------------------------


def _file_size(f: io.BufferedIOBase) -> int:
    return os.fstat(f.fileno()).st_size


def _walk_trailers(f: io.BufferedIOBase, size: int) -> list[Chunk]:
    """Trailers from EOF backwards, stopping at the first 16 bytes that are not a plausible trailer."""
    chunks: list[Chunk] = []
    pos = size
    while pos >= TRAILER_SIZE:
        f.seek(pos - TRAILER_SIZE)
        raw = f.read(TRAILER_SIZE)
        if len(raw) != TRAILER_SIZE:
            break
        magic, crc, chunk_type, total = TRAILER.unpack(raw)
        if magic != MAGIC or total < TRAILER_SIZE or total > pos:
            break
        chunk = Chunk(ChunkType(chunk_type) if chunk_type in (0, 1) else chunk_type,
                      pos - total, total - TRAILER_SIZE, crc)
        chunks.append(chunk)
        pos = chunk.offset
    return chunks


def _prefix_crcs(f: io.BufferedIOBase, offsets: list[int]) -> dict[int, int]:
    """fwtool CRC of the first ``n`` bytes for every ``n`` in ``offsets``, in one streamed pass."""
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    crc, pos, out = CRC_INIT, 0, {}
    f.seek(0)
    for target in sorted(set(offsets)):
        while pos < target:
            n = f.readinto(view[: min(_BLOCK, target - pos)])
            if not n:
                raise DataNotFound("Data not found", "image shrank while it was read")
            crc = crc32(view[:n], crc)
            pos += n
        out[target] = crc
    return out


def _chunks_of(f: io.BufferedIOBase) -> list[Chunk]:
    chunks = _walk_trailers(f, _file_size(f))
    if chunks:
        crcs = _prefix_crcs(f, [c.trailer_offset for c in chunks])
        for chunk in chunks:  # outermost first, as fwtool meets them
            if crcs[chunk.trailer_offset] != chunk.crc:
                raise CrcError()
    return chunks


def read_chunks(path: str | os.PathLike[str]) -> list[Chunk]:
    """Every chunk of the trailer chain, outermost (nearest EOF) first; [] when there is none.

    A chunk whose CRC does not match raises ``CrcError``. The chain ends at the first 16 bytes (walking
    backwards) that do not carry the magic and a size that fits in the file.
    """
    with open(path, "rb") as f:
        return _chunks_of(f)


def _read_data(f: io.BufferedIOBase, chunk: Chunk, limit: int) -> bytes:
    if chunk.length > limit:
        raise FwtoolError(f"Chunk too large ({chunk.length} bytes, at most {limit})")
    f.seek(chunk.offset)
    data = f.read(chunk.length)
    if len(data) != chunk.length:
        raise DataNotFound("Data not found", "image shrank while it was read")
    return data


def _search(f: io.BufferedIOBase, chunks: list[Chunk], wanted: ChunkType) -> tuple[Chunk, bytes]:
    """fwtool's search from EOF backwards, returning the chunk and its data.

    Looking for metadata skips signature chunks, chunks of unknown type and metadata chunks whose header
    version is not 0 (``validate_metadata``). Looking for a signature skips unknown types and stops at
    the first metadata chunk: the signature must come after the metadata.
    """
    for chunk in chunks:
        if chunk.type == wanted:
            if wanted == ChunkType.SIGNATURE:
                return chunk, _read_data(f, chunk, SIGNATURE_MAX)
            data = _read_data(f, chunk, METADATA_HEADER.size + METADATA_MAX)
            if len(data) >= METADATA_HEADER.size and METADATA_HEADER.unpack_from(data)[0] != METADATA_VERSION:
                continue
            return chunk, data
        if wanted == ChunkType.SIGNATURE and chunk.type == ChunkType.METADATA:
            break
    raise DataNotFound()


def metadata_text(data: bytes) -> bytes:
    """The JSON text of a metadata chunk's data, after checking its header as fwtool does."""
    if len(data) < METADATA_HEADER.size:
        raise InvalidMetadata("Invalid image metadata", "metadata chunk shorter than its header")
    version, _flags = METADATA_HEADER.unpack_from(data)
    if version != METADATA_VERSION:
        raise InvalidMetadata("Invalid image metadata", f"unsupported metadata header version {version}")
    return data[METADATA_HEADER.size :]


def parse_metadata(data: bytes) -> dict[str, Any]:
    """Decode a metadata chunk's data (header + JSON text) into a JSON object."""
    text = metadata_text(data).rstrip(b"\0")
    try:
        value = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMetadata("Invalid image metadata", str(exc)) from exc
    if not isinstance(value, dict):
        raise InvalidMetadata("Invalid image metadata", "not a JSON object")
    return value


@overload
def extract_metadata(path: str | os.PathLike[str], *, missing_ok: Literal[False] = ...) -> dict[str, Any]: ...
@overload
def extract_metadata(path: str | os.PathLike[str], *, missing_ok: bool) -> dict[str, Any] | None: ...
def extract_metadata(path: str | os.PathLike[str], *, missing_ok: bool = False) -> dict[str, Any] | None:
    """The image's metadata JSON object, skipping a trailing signature chunk.

    No metadata chunk raises ``DataNotFound`` ("Data not found"), or returns None with ``missing_ok``;
    a CRC mismatch raises ``CrcError`` ("CRC error"); a chunk over the size limit raises
    ``FwtoolError``; unusable content raises ``InvalidMetadata``.
    """
    with open(path, "rb") as f:
        try:
            _chunk, data = _search(f, _chunks_of(f), ChunkType.METADATA)
        except DataNotFound:
            if missing_ok:
                return None
            raise
        return parse_metadata(data)


def signature_chunk(path: str | os.PathLike[str]) -> tuple[Chunk, bytes]:
    """The signature chunk and its blob. It must be the last chunk (else ``DataNotFound``).

    ``chunk.offset`` is the length of what the signature covers: the image and its metadata, i.e. what
    ``fwtool -T -s /dev/null`` writes.
    """
    with open(path, "rb") as f:
        return _search(f, _chunks_of(f), ChunkType.SIGNATURE)


def extract_signature(path: str | os.PathLike[str]) -> bytes:
    """The signature blob; it must be the last chunk (else ``DataNotFound``)."""
    return signature_chunk(path)[1]


def payload_length(path: str | os.PathLike[str]) -> int:
    """Bytes of firmware before the first (innermost) chunk: what a writer should write."""
    with open(path, "rb") as f:
        chunks = _chunks_of(f)
        return chunks[-1].offset if chunks else _file_size(f)


# --- writing -------------------------------------------------------------------------------------


def _append_chunk(path: str | os.PathLike[str], chunk_type: ChunkType, data: bytes) -> Chunk:
    with open(path, "r+b") as f:
        size = _file_size(f)
        crc = crc32(data, _prefix_crcs(f, [size])[size])
        f.seek(size)
        f.write(data + encode_trailer(chunk_type, crc, len(data)))
        f.flush()
        os.fsync(f.fileno())
    return Chunk(chunk_type, size, len(data), crc)


def encode_metadata(metadata: Mapping[str, Any] | bytes | str) -> bytes:
    """Metadata chunk data: header + JSON text (bytes/str are taken verbatim, as ``fwtool -I`` does)."""
    if isinstance(metadata, bytes):
        text = metadata
    elif isinstance(metadata, str):
        text = metadata.encode()
    else:
        text = json.dumps(dict(metadata)).encode()
    if len(text) > METADATA_MAX:
        raise FwtoolError(f"Metadata too large ({len(text)} bytes, at most {METADATA_MAX})")
    return METADATA_HEADER.pack(METADATA_VERSION, 0) + text


def append_metadata(path: str | os.PathLike[str], metadata: Mapping[str, Any] | bytes | str) -> Chunk:
    """Append a metadata chunk (``fwtool -I``). A dict is serialised with ``json.dumps``."""
    return _append_chunk(path, ChunkType.METADATA, encode_metadata(metadata))


def append_signature(path: str | os.PathLike[str], blob: bytes) -> Chunk:
    """Append a signature chunk (``fwtool -S``); it must stay the last chunk."""
    if len(blob) > SIGNATURE_MAX:
        raise FwtoolError(f"Signature too large ({len(blob)} bytes, at most {SIGNATURE_MAX})")
    return _append_chunk(path, ChunkType.SIGNATURE, blob)


def copy_prefix(src: io.BufferedIOBase, dst: BinaryIO, length: int) -> None:
    """Stream the first ``length`` bytes of ``src`` to ``dst``."""
    src.seek(0)
    while length > 0:
        block = src.read(min(_BLOCK, length))
        if not block:
            raise DataNotFound("Data not found", "image shrank while it was read")
        dst.write(block)
        length -= len(block)


# --- command line (fwtool's) ---------------------------------------------------------------------

_USAGE = """Usage: python -m stage2.formats.fwtool <options> <firmware>

Options:
  -S <file>:		Append signature file to firmware image
  -I <file>:		Append metadata file to firmware image
  -s <file>:		Extract signature file from firmware image
  -i <file>:		Extract metadata file from firmware image
  -t:			Remove extracted chunks from firmware image (using -s, -i)
  -T:			Output firmware image without extracted chunks to stdout (using -s, -i)
  -q:			Quiet (suppress error messages)

"""


@dataclass
class _Args:
    """What fwtool's getopt loop collects."""

    signature: str | None = None
    metadata: str | None = None
    append: bool | None = None  # None until the first -S/-I/-s/-i
    quiet: bool = False
    truncate: bool = False
    to_stdout: bool = False


class _UsageError(Exception):
    """Ends the run with status 1; ``usage`` text is printed even with -q, an error line is not."""

    def __init__(self, text: str, usage: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.usage = usage


def _parse(argv: list[str]) -> tuple[_Args, str]:
    """The options and the firmware file, or ``_UsageError``."""
    try:
        opts, rest = getopt.getopt(argv, "i:I:qs:S:tT")
    except getopt.GetoptError as exc:
        raise _UsageError(f"{exc}\n{_USAGE}", usage=True) from exc
    args = _Args()
    for opt, val in opts:
        if opt in ("-S", "-I", "-s", "-i"):
            append = opt in ("-S", "-I")
            if args.append is not None and args.append != append:
                raise _UsageError("Error: mixing appending and extracting data is not supported")
            args.append = append
            field_name = "signature" if opt in ("-S", "-s") else "metadata"
            if getattr(args, field_name) is not None:
                raise _UsageError("Error: the same append/extract option cannot be used multiple times")
            setattr(args, field_name, val)
        elif opt == "-q":
            args.quiet = True
        elif opt == "-t":
            args.truncate = True
        elif opt == "-T":
            args.to_stdout = True
    if not rest or args.append is None:
        raise _UsageError(_USAGE, usage=True)
    if args.signature is not None and args.metadata is not None:
        raise _UsageError("Cannot append/extract metadata and signature in one run")
    return args, rest[0]


def _read_input(name: str, limit: int) -> bytes:
    """The file to append (``-`` = stdin), at most ``limit`` + 1 bytes (one more tells it is too long)."""
    if name == "-":
        return sys.stdin.buffer.read(limit + 1)
    with open(name, "rb") as src:
        return src.read(limit + 1)


def _write_out(name: str, data: bytes) -> None:
    if name == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        with open(name, "wb") as out:
            out.write(data)


def _append(args: _Args, image: str) -> None:
    if args.metadata is not None:
        append_metadata(image, _read_input(args.metadata, METADATA_MAX))
    elif args.signature is not None:
        append_signature(image, _read_input(args.signature, SIGNATURE_MAX))


def _extract(args: _Args, image: str) -> None:
    wanted = ChunkType.METADATA if args.metadata is not None else ChunkType.SIGNATURE
    name = args.metadata if args.metadata is not None else args.signature
    assert name is not None
    with open(image, "rb") as f:
        chunk, data = _search(f, _chunks_of(f), wanted)
        _write_out(name, metadata_text(data) if wanted == ChunkType.METADATA else data)
        if args.to_stdout:
            copy_prefix(f, sys.stdout.buffer, chunk.offset)
            sys.stdout.buffer.flush()
    if args.truncate:
        os.truncate(image, chunk.offset)


def main(argv: list[str]) -> int:
    """fwtool: exit 0 when the chunk was appended or found, 1 otherwise (message on stderr unless -q).

    Differences from the C tool: when the chunk is not found, ``-T`` writes nothing (fwtool still copies
    the image out), and the file named by ``-s``/``-i`` is only created once the chunk was found.
    """
    try:
        args, image = _parse(argv)
    except _UsageError as exc:
        if exc.usage:
            print(exc.text, file=sys.stderr, end="")
        elif "-q" not in argv:
            print(exc.text, file=sys.stderr)
        return 1
    try:
        if args.append:
            _append(args, image)
        else:
            _extract(args, image)
    except (FwtoolError, OSError) as exc:
        if not args.quiet:
            print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
