"""The fwtool trailer, byte for byte (reference 4.1)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from stage2.formats import fwtool
from stage2.formats.fwtool import ChunkType, CrcError, DataNotFound, FwtoolError, InvalidMetadata

IMAGE = b"\xeb\x48" + bytes(range(256)) * 4 + b"firmware-end"


def bitwise_crc(data: bytes) -> int:
    """fwtool's CRC written out: reflected poly 0xEDB88320, init 0xFFFFFFFF, no final XOR."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
    return crc


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(IMAGE)
    return path


def test_crc_rule_is_zlib_without_final_xor() -> None:
    for data in (b"", b"a", b"123456789", IMAGE):
        assert fwtool.crc32(data) == bitwise_crc(data) == zlib.crc32(data) ^ 0xFFFFFFFF
    assert fwtool.crc32(b"123456789") == 0xCBF43926 ^ 0xFFFFFFFF  # the CRC-32 check value, unxored
    assert fwtool.crc32(b"6789", fwtool.crc32(b"12345")) == fwtool.crc32(b"123456789")


def test_metadata_chunk_bytes_for_known_input(image: Path) -> None:
    text = b'{"supported_devices":["vendor,model"]}'
    fwtool.append_metadata(image, text)

    data = b"\0\0\0\0" + b"\0\0\0\0" + text  # header: version 0, flags 0
    expected_crc = bitwise_crc(IMAGE + data)
    trailer = struct.pack(">IIB3xI", 0x46577830, expected_crc, 1, len(data) + 16)
    assert trailer[:4] == b"FWx0"
    assert len(trailer) == 16
    assert image.read_bytes() == IMAGE + data + trailer


def test_signature_chunk_bytes_for_known_input(image: Path) -> None:
    blob = b"\x01\x02untrusted comment"
    fwtool.append_signature(image, blob)
    trailer = struct.pack(">IIB3xI", 0x46577830, bitwise_crc(IMAGE + blob), 0, len(blob) + 16)
    assert image.read_bytes() == IMAGE + blob + trailer


def test_round_trip_dict(image: Path) -> None:
    meta = {"metadata_version": "1.1", "compat_version": "1.0",
            "supported_devices": ["vendor,model", "legacy-name"],
            "version": {"dist": "OpenWrt", "target": "x86/64"}}
    fwtool.append_metadata(image, meta)
    assert fwtool.extract_metadata(image) == meta
    assert fwtool.payload_length(image) == len(IMAGE)
    assert image.read_bytes()[: len(IMAGE)] == IMAGE


def test_signature_is_skipped_when_looking_for_metadata(image: Path) -> None:
    fwtool.append_metadata(image, {"supported_devices": ["a"]})
    fwtool.append_signature(image, b"SIG")
    chunks = fwtool.read_chunks(image)
    assert [c.type for c in chunks] == [ChunkType.SIGNATURE, ChunkType.METADATA]  # outermost first
    assert chunks[1].offset == len(IMAGE)
    assert chunks[0].end == image.stat().st_size
    assert fwtool.extract_metadata(image) == {"supported_devices": ["a"]}
    assert fwtool.extract_signature(image) == b"SIG"
    assert fwtool.payload_length(image) == len(IMAGE)


def test_signature_must_be_the_last_chunk(image: Path) -> None:
    fwtool.append_signature(image, b"SIG")
    fwtool.append_metadata(image, {"x": 1})
    with pytest.raises(DataNotFound, match="Data not found"):
        fwtool.extract_signature(image)


def test_no_trailer(image: Path) -> None:
    assert fwtool.read_chunks(image) == []
    with pytest.raises(DataNotFound, match=r"^Data not found"):
        fwtool.extract_metadata(image)
    assert fwtool.extract_metadata(image, missing_ok=True) is None
    assert fwtool.payload_length(image) == len(IMAGE)


def test_only_signature_means_no_metadata(image: Path) -> None:
    fwtool.append_signature(image, b"SIG")
    assert fwtool.extract_metadata(image, missing_ok=True) is None


@pytest.mark.parametrize("where", [0, len(IMAGE) - 1, len(IMAGE) + 12])  # image start, end, JSON
def test_crc_error_detected(image: Path, where: int) -> None:
    fwtool.append_metadata(image, {"supported_devices": ["vendor,model"]})
    raw = bytearray(image.read_bytes())
    raw[where] ^= 0x40
    image.write_bytes(bytes(raw))
    with pytest.raises(CrcError, match=r"^CRC error$"):
        fwtool.extract_metadata(image)
    with pytest.raises(CrcError):
        fwtool.payload_length(image)


def raw_chunk(path: Path, chunk_type: int, data: bytes) -> None:
    """Append a chunk by hand (any type, any content) with a correct CRC."""
    prefix = path.read_bytes() + data
    path.write_bytes(prefix + fwtool.encode_trailer(chunk_type, fwtool.crc32(prefix), len(data)))


def test_metadata_with_header_version_other_than_0_is_skipped(image: Path) -> None:
    """fwtool's validate_metadata: such a chunk is passed over, as if it were not metadata."""
    raw_chunk(image, ChunkType.METADATA, struct.pack(">II", 1, 0) + b'{"v": 1}')
    with pytest.raises(DataNotFound):
        fwtool.extract_metadata(image)
    image.write_bytes(IMAGE)
    fwtool.append_metadata(image, {"v": 0})
    raw_chunk(image, ChunkType.METADATA, struct.pack(">II", 1, 0) + b'{"v": 1}')
    assert fwtool.extract_metadata(image) == {"v": 0}


def test_chunks_of_unknown_type_are_skipped(image: Path) -> None:
    fwtool.append_metadata(image, {"a": 1})
    raw_chunk(image, 7, b"vendor extension")
    fwtool.append_signature(image, b"SIG")
    raw_chunk(image, 9, b"another")
    assert fwtool.extract_metadata(image) == {"a": 1}
    _chunk, blob = fwtool.signature_chunk(image)
    assert blob == b"SIG"
    assert [c.type for c in fwtool.read_chunks(image)] == [9, ChunkType.SIGNATURE, 7, ChunkType.METADATA]


def test_signature_chunk_offset_is_what_it_signs(image: Path) -> None:
    fwtool.append_metadata(image, {"a": 1})
    signed_length = image.stat().st_size
    fwtool.append_signature(image, b"SIG")
    chunk, blob = fwtool.signature_chunk(image)
    assert (chunk.offset, chunk.length, blob) == (signed_length, 3, b"SIG")


def test_short_metadata_chunk_is_invalid(image: Path) -> None:
    raw_chunk(image, ChunkType.METADATA, b"\0\0\0")
    with pytest.raises(InvalidMetadata):
        fwtool.extract_metadata(image)


@pytest.mark.parametrize("text", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_unusable_metadata(image: Path, text: bytes) -> None:
    fwtool.append_metadata(image, text)
    with pytest.raises(InvalidMetadata):
        fwtool.extract_metadata(image)


def test_trailing_nul_after_json_is_tolerated(image: Path) -> None:
    fwtool.append_metadata(image, b'{"a": 1}\0')
    assert fwtool.extract_metadata(image) == {"a": 1}


def test_size_larger_than_file_is_not_a_trailer(image: Path) -> None:
    image.write_bytes(IMAGE + struct.pack(">IIB3xI", 0x46577830, 0, 1, 1 << 30))
    assert fwtool.read_chunks(image) == []


def test_oversized_chunk_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = b"\0" * 8 + b" " * (fwtool.METADATA_MAX + 100)
    path.write_bytes(IMAGE + data + fwtool.encode_trailer(ChunkType.METADATA,
                                                          fwtool.crc32(IMAGE + data), len(data)))
    with pytest.raises(FwtoolError, match="too large"):
        fwtool.extract_metadata(path)
    with pytest.raises(FwtoolError, match="too large"):
        fwtool.append_metadata(path, b" " * (fwtool.METADATA_MAX + 1))
    with pytest.raises(FwtoolError, match="too large"):
        fwtool.append_signature(path, b"s" * (fwtool.SIGNATURE_MAX + 1))


def test_large_sparse_image_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(200 << 20)  # 200 MiB of holes
    start = time.monotonic()
    assert fwtool.read_chunks(path) == []  # no trailer: 16 bytes read, nothing else
    assert time.monotonic() - start < 0.5

    fwtool.append_metadata(path, {"supported_devices": ["x"]})
    tracemalloc.start()
    try:
        assert fwtool.extract_metadata(path) == {"supported_devices": ["x"]}
        assert fwtool.payload_length(path) == 200 << 20
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes: the image was held in memory"


def test_cli_append_extract_strip(image: Path, tmp_path: Path,
                                  capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"supported_devices": ["vendor,model"]}))
    assert fwtool.main(["-I", str(meta), str(image)]) == 0
    out = tmp_path / "out.json"
    assert fwtool.main(["-i", str(out), str(image)]) == 0
    assert out.read_bytes() == meta.read_bytes()

    capsysbinary.readouterr()
    assert fwtool.main(["-q", "-i", "/dev/null", "-T", str(image)]) == 0
    assert capsysbinary.readouterr().out == IMAGE

    assert fwtool.main(["-i", "/dev/null", "-t", str(image)]) == 0
    assert image.read_bytes() == IMAGE
    assert fwtool.main(["-q", "-i", str(out), str(image)]) == 1
    assert fwtool.main(["-s", str(out), str(image)]) == 1
    assert b"Data not found" in capsysbinary.readouterr().err
    assert fwtool.main([str(image)]) == 1  # no mode: usage


def test_cli_signature(image: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    fwtool.append_metadata(image, {"supported_devices": ["vendor,model"]})
    with_metadata = image.read_bytes()
    sig = tmp_path / "fw.ucert"
    sig.write_bytes(b"ucert blob")
    assert fwtool.main(["-S", str(sig), str(image)]) == 0
    assert fwtool.signature_chunk(image)[1] == b"ucert blob"

    out = tmp_path / "out.sig"
    assert fwtool.main(["-q", "-s", str(out), str(image)]) == 0
    assert out.read_bytes() == b"ucert blob"
    capsysbinary.readouterr()
    assert fwtool.main(["-q", "-T", "-s", "/dev/null", str(image)]) == 0  # what the signature covers
    assert capsysbinary.readouterr().out == with_metadata
    assert fwtool.main(["-s", "-", str(image)]) == 0
    assert capsysbinary.readouterr().out == b"ucert blob"

    assert fwtool.main(["-t", "-s", "/dev/null", str(image)]) == 0
    assert image.read_bytes() == with_metadata
    assert fwtool.main(["-s", str(out), str(image)]) == 1  # metadata is last now: no signature
    assert capsysbinary.readouterr().err == b"Data not found\n"
    assert fwtool.main(["-q", "-s", str(out), str(image)]) == 1
    assert capsysbinary.readouterr().err == b""

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    assert fwtool.main(["-S", "-", str(image)]) == 0
    assert fwtool.extract_signature(image) == b"from stdin"
    big = tmp_path / "big.sig"
    big.write_bytes(b"s" * (fwtool.SIGNATURE_MAX + 1))
    assert fwtool.main(["-S", str(big), str(image)]) == 1
    assert b"too large" in capsysbinary.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["-s", "a", "-S", "b"], b"Error: mixing appending and extracting data is not supported\n"),
    (["-s", "a", "-s", "b"], b"Error: the same append/extract option cannot be used multiple times\n"),
    (["-s", "a", "-i", "b"], b"Cannot append/extract metadata and signature in one run\n"),
])
def test_cli_option_errors(image: Path, capsysbinary: pytest.CaptureFixture[bytes], argv: list[str],
                           message: bytes) -> None:
    assert fwtool.main([*argv, str(image)]) == 1
    assert capsysbinary.readouterr().err == message
    assert fwtool.main(["-q", *argv, str(image)]) == 1
    assert capsysbinary.readouterr().err == b""
    assert fwtool.main(["-q", "-t"]) == 1
    assert capsysbinary.readouterr().err.startswith(b"Usage:")  # usage is printed even with -q


def test_module_runs_as_a_command(image: Path, tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text('{"supported_devices": ["vendor,model"]}')
    run = [sys.executable, "-m", "stage2.formats.fwtool"]
    assert subprocess.run([*run, "-I", str(meta), str(image)], check=False).returncode == 0
    proc = subprocess.run([*run, "-q", "-i", "-", str(image)], capture_output=True, check=False)
    assert (proc.returncode, proc.stdout) == (0, meta.read_bytes())
    proc = subprocess.run([*run, "-s", "-", str(image)], capture_output=True, check=False)
    assert (proc.returncode, proc.stderr) == (1, b"Data not found\n")
