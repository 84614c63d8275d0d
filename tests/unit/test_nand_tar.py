"""The NAND sysupgrade tar and image types by magic (stage2.formats.nand_tar)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from stage2.formats import nand_tar
from stage2.formats.nand_tar import ImageType
from wrtcore.errors import InvalidInput


@pytest.mark.parametrize(("head", "kind"), [
    (b"UBI#\x01", ImageType.UBI), (b"\x31\x18\x10\x06", ImageType.UBIFS), (b"hsqs", ImageType.SQUASHFS),
    (b"\xd0\x0d\xfe\xed", ImageType.FIT), (b"CI\x00\x01", ImageType.COMBINED),
    (b"\x1f\x8b\x08", ImageType.GZIP),
    (b"sysu", ImageType.UNKNOWN), (b"", ImageType.UNKNOWN)])
def test_identify(head: bytes, kind: ImageType) -> None:
    assert nand_tar.identify(head) is kind


def _tar(path: Path, members: dict[str, bytes], *, compress: bool = False, trailer: bytes = b"") -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = gzip.compress(buf.getvalue()) if compress else buf.getvalue()
    path.write_bytes(raw + trailer)
    return path


KERNEL = bytes(range(256)) * 300
ROOT = b"hsqs" + b"\x00" * 70000


@pytest.mark.parametrize("compress", [False, True])
def test_index_and_streams(tmp_path: Path, compress: bool) -> None:
    img = _tar(tmp_path / "img", {"sysupgrade-my_board/": b"", "sysupgrade-my_board/CONTROL": b"BOARD=x\n",
                                  "sysupgrade-my_board/kernel": KERNEL, "sysupgrade-my_board/root": ROOT},
               compress=compress, trailer=b"FWx0" * 10)
    index = nand_tar.read_index(str(img))
    assert index.board_dir == "sysupgrade-my_board" and index.board == "my_board"
    assert index.control == b"BOARD=x\n"
    assert index.kernel == nand_tar.Member("sysupgrade-my_board/kernel", len(KERNEL))
    assert index.root is not None and index.root.size == len(ROOT)
    assert index.dtb is None
    assert index.root_type is ImageType.SQUASHFS
    assert index.kernel is not None
    with nand_tar.open_member(str(img), index.kernel) as f:
        got = b"".join(iter(lambda: f.read(1000), b""))
    assert got == KERNEL
    assert nand_tar.board_matches(index, "my,board") and nand_tar.board_matches(index, "my_board")
    assert not nand_tar.board_matches(index, "other")


def test_directory_without_its_own_entry_and_ubifs_root(tmp_path: Path) -> None:
    img = _tar(tmp_path / "img", {"sysupgrade-b/CONTROL": b"x", "sysupgrade-b/root": b"\x31\x18\x10\x06rest"})
    index = nand_tar.read_index(str(img))
    assert index.board_dir == "sysupgrade-b" and index.kernel is None
    assert index.root_type is ImageType.UBIFS


@pytest.mark.parametrize(("members", "message"), [
    ({"other/CONTROL": b"x"}, "no sysupgrade-<board>/ directory"),
    ({"sysupgrade-b/CONTROL": b"", "sysupgrade-b/root": ROOT}, "CONTROL is missing or empty"),
    ({"sysupgrade-b/kernel": KERNEL}, "CONTROL is missing or empty"),
    ({"sysupgrade-b/CONTROL": b"x"}, "neither kernel nor root"),
])
def test_invalid_tars(tmp_path: Path, members: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        nand_tar.read_index(str(_tar(tmp_path / "img", members)))


def test_not_a_tar(tmp_path: Path) -> None:
    (tmp_path / "img").write_bytes(b"UBI#" + bytes(4000))
    with pytest.raises(InvalidInput, match="not a sysupgrade tar"):
        nand_tar.read_index(str(tmp_path / "img"))
