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

Metadata data is an 8-byte header (version 0, flags 0) followed by JSON text; signature data is the
ucert blob. The build appends metadata first and the signature last, so the signature covers the
metadata. Chunks are found by walking trailers backwards from the end of the file; the image itself is
never read into memory (the CRCs are streamed in one pass over the file).

Run as ``python -m stage2.formats.fwtool [-i|-I|-s|-S <file>] [-q] [-t] [-T] <image>`` it behaves like
``fwtool``: ``-i``/``-s`` extract metadata/signature into a file (``-`` = stdout), ``-I``/``-S`` append
them, ``-t`` truncates the image before the extracted chunk, ``-T`` writes the image without it to
stdout, ``-q`` is quiet; exit 0 when found, 1 when not.
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


def _find(chunks: list[Chunk], wanted: ChunkType) -> Chunk:
    """fwtool's search: metadata skips a signature chunk; a signature must be the last chunk."""
    for chunk in chunks:
        if chunk.type == wanted:
            return chunk
        if wanted == ChunkType.METADATA and chunk.type == ChunkType.SIGNATURE:
            continue
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
    a CRC mismatch raises ``CrcError`` ("CRC error"); unusable content raises ``InvalidMetadata``.
    """
    with open(path, "rb") as f:
        try:
            chunk = _find(_chunks_of(f), ChunkType.METADATA)
        except DataNotFound:
            if missing_ok:
                return None
            raise
        return parse_metadata(_read_data(f, chunk, METADATA_HEADER.size + METADATA_MAX))


def extract_signature(path: str | os.PathLike[str]) -> bytes:
    """The signature blob; it must be the last chunk (else ``DataNotFound``)."""
    with open(path, "rb") as f:
        chunk = _find(_chunks_of(f), ChunkType.SIGNATURE)
        return _read_data(f, chunk, SIGNATURE_MAX)


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


def _write_out(name: str, data: bytes) -> None:
    if name == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        with open(name, "wb") as out:
            out.write(data)


def main(argv: list[str]) -> int:
    try:
        opts, args = getopt.getopt(argv, "i:I:s:S:qtT")
    except getopt.GetoptError as exc:
        print(f"{exc}\n{_USAGE}", file=sys.stderr, end="")
        return 1
    mode: tuple[str, str] | None = None
    quiet = truncate = to_stdout = False
    for opt, val in opts:
        if opt in ("-i", "-I", "-s", "-S"):
            if mode is not None:
                print(_USAGE, file=sys.stderr, end="")
                return 1
            mode = (opt, val)
        elif opt == "-q":
            quiet = True
        elif opt == "-t":
            truncate = True
        elif opt == "-T":
            to_stdout = True
    if mode is None or len(args) != 1:
        print(_USAGE, file=sys.stderr, end="")
        return 1
    opt, name = mode
    image = args[0]
    try:
        if opt in ("-I", "-S"):
            with open(name, "rb") as src:
                payload = src.read(METADATA_MAX + 1)
            if opt == "-I":
                append_metadata(image, payload)
            else:
                append_signature(image, payload)
            return 0
        wanted = ChunkType.METADATA if opt == "-i" else ChunkType.SIGNATURE
        with open(image, "rb") as f:
            chunk = _find(_chunks_of(f), wanted)
            data = _read_data(f, chunk, METADATA_HEADER.size + METADATA_MAX if opt == "-i" else SIGNATURE_MAX)
            if wanted == ChunkType.METADATA:
                data = metadata_text(data)
            _write_out(name, data)
            if to_stdout:
                copy_prefix(f, sys.stdout.buffer, chunk.offset)
                sys.stdout.buffer.flush()
        if truncate:
            os.truncate(image, chunk.offset)
        return 0
    except (FwtoolError, OSError) as exc:
        if not quiet:
            print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
