"""Building ``.swu`` bundles for tests: a cpio writer (newc / crc), ``cpio -o`` itself, throwaway
certificates and CMS signatures made with the openssl CLI, and a corpus of valid and invalid bundles.

Nothing here is committed key material: every key is generated into the test's temporary directory.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard


def cpio_bytes(members: Sequence[tuple[str, bytes]], fmt: str = "crc") -> bytes:
    """A cpio archive of ``members`` in ``newc`` or ``crc`` format, trailer included."""
    magic = {"newc": b"070701", "crc": b"070702"}[fmt]
    out = bytearray()
    for ino, (name, data) in enumerate([*members, ("TRAILER!!!", b"")], 1):
        raw_name = name.encode() + b"\0"
        check = sum(data) & 0xFFFFFFFF if fmt == "crc" else 0
        mode = 0o100644 if name != "TRAILER!!!" else 0
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw_name), check]
        out += magic + b"".join(b"%08X" % f for f in fields) + raw_name
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


def cpio_tool(directory: Path, names: Sequence[str], fmt: str = "crc") -> bytes:
    """The archive ``cpio -o -H fmt`` makes of ``names`` (files in ``directory``), in that order."""
    result = subprocess.run(["cpio", "-o", "-H", fmt, "--quiet"], cwd=directory, check=True,
                            input="".join(f"{n}\n" for n in names).encode(), capture_output=True)
    return result.stdout


@dataclass(frozen=True)
class Signer:
    cert: Path
    key: Path


def make_signer(directory: Path, name: str = "signer", kind: str = "rsa",
                eku: str | None = "emailProtection") -> Signer:
    """A self-signed certificate and key (``rsa`` 2048 or ``ec`` P-256), optional extended key usage."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    argv = ["openssl", "req", "-x509", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={name}", "-addext", "keyUsage=digitalSignature"]
    argv += ["-newkey", "rsa:2048"] if kind == "rsa" else ["-newkey", "ec", "-pkeyopt",
                                                           "ec_paramgen_curve:P-256"]
    if eku:
        argv += ["-addext", f"extendedKeyUsage={eku}"]
    subprocess.run(argv, check=True, capture_output=True)
    return Signer(cert, key)


def cms_sign(description: bytes, signer: Signer, workdir: Path) -> bytes:
    """The DER CMS detached signature of ``description`` (flags as SWUpdate's own tests use)."""
    src, sig = workdir / "to-sign", workdir / "to-sign.sig"
    src.write_bytes(description)
    subprocess.run(["openssl", "cms", "-sign", "-in", str(src), "-out", str(sig), "-signer", str(signer.cert),
                    "-inkey", str(signer.key), "-outform", "DER", "-nosmimecap", "-binary"],
                   check=True, capture_output=True)
    return sig.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@dataclass
class Case:
    """One bundle: a description, its artifacts, how to run it, and the expected verdicts.

    ``accept`` is our verdict; ``swupdate_accepts`` SWUpdate 2022.12's, which differs only where
    ``difference`` says why."""

    name: str
    description: str
    artifacts: list[tuple[str, bytes]] = field(default_factory=list)
    accept: bool = True
    board: str = "test"
    revision: str = "1.0"
    selection: str | None = None
    mode: str | None = None
    fmt: str = "crc"
    difference: str | None = None
    swupdate_accepts: bool | None = None  # None: same as ``accept``
    tamper: str | None = None  # "truncate", "not-first", "odc", "resign-other", "no-sig", "bad-check"

    @property
    def swupdate_verdict(self) -> bool:
        return self.accept if self.swupdate_accepts is None else self.swupdate_accepts


def build(case: Case, signer: Signer, workdir: Path) -> bytes:
    """The signed bundle of ``case`` (tampered as it asks)."""
    text = case.description.encode()
    sig = cms_sign(text, signer, workdir)
    if case.tamper == "resign-other":
        text = text.replace(b'version = "1.0"', b'version = "6.6"')
    members = [("sw-description", text), ("sw-description.sig", sig), *case.artifacts]
    if case.tamper == "no-sig":
        members = [m for m in members if m[0] != "sw-description.sig"]
    if case.tamper == "not-first":
        members = [*members[2:3], *members[:2], *members[3:]]
    data = cpio_bytes(members, case.fmt)
    if case.tamper == "truncate":
        data = data[: len(data) - 700]
    if case.tamper == "odc":
        data = b"070707" + data[6:]
    if case.tamper == "bad-check":  # the last artifact's 070702 check field off by one, its data intact
        name = case.artifacts[-1][0].encode() + b"\0"
        field_at = data.rindex(name) - 110 + 102
        check = (int(data[field_at:field_at + 8], 16) + 1) & 0xFFFFFFFF
        data = data[:field_at] + b"%08X" % check + data[field_at + 8:]
    return data


ZLIB, ZSTD, FPGA = 'compressed = "zlib";', 'compressed = "zstd";', 'type = "fpga";'
IMG = bytes(range(256)) * 64
IMG2 = b"second image " * 1000


def _desc(body: str, hw: str = '"1.0"', version: str = "1.0") -> str:
    return f'software = {{\n  version = "{version}";\n  hardware-compatibility = [ {hw} ];\n{body}\n}};\n'


def _image(name: str, data: bytes, extra: str = "", device: str = "/dev/null") -> str:
    return f'{{ filename = "{name}"; device = "{device}"; sha256 = "{sha(data)}"; {extra} }}'


def corpus() -> list[Case]:
    """Valid and invalid bundles covering the issue's inputs."""
    raw = _image("rootfs.img", IMG)
    cases = [
        Case("plain-raw", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG)]),
        Case("newc-format", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG)], fmt="newc"),
        Case("gzip", _desc(f"images = ( {_image('r.gz', gz(IMG), ZLIB)} );"),
             [("r.gz", gz(IMG))]),
        Case("gzip-bool", _desc(f"images = ( {_image('r.gz', gz(IMG), 'compressed = true;')} );"),
             [("r.gz", gz(IMG))]),
        Case("zstd", _desc(f"images = ( {_image('r.zst', zst(IMG), ZSTD)} );"),
             [("r.zst", zst(IMG))]),
        Case("unused-member", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG), ("extra", b"x")]),
        Case("board-section", _desc(f"myboard = {{ images = ( {raw} ); }};", hw='"9"'),
             [("rootfs.img", IMG)], board="myboard", revision="9"),
        Case("selection-mode", _desc(
            f"stable = {{ copy1 = {{ images = ( {raw} ); }}; copy2 = {{ images = ( "
            f"{_image('other.img', IMG2)} ); }}; }};"), [("rootfs.img", IMG)],
            selection="stable", mode="copy1"),
        Case("list-link", _desc(f'common = {{ images = ( {raw} ); }};\n'
                                f'images = ( {{ ref = "#./common/images"; }} );'), [("rootfs.img", IMG)]),
        Case("regex-hw", _desc(f"images = ( {raw} );", hw='"#RE:^1\\\\.[0-9]$"'), [("rootfs.img", IMG)],
             revision="1.7"),
        Case("bootenv-only", _desc('bootenv = ( { name = "slot"; value = "b"; } );'), []),
        # invalid
        Case("sha-mismatch", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG[:-1] + b"!")], accept=False),
        Case("missing-artifact", _desc(f"images = ( {raw} );"), [], accept=False),
        Case("not-first", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG)], accept=False,
             tamper="not-first"),
        Case("truncated", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG)], accept=False,
             tamper="truncate"),
        Case("odc-magic", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG)], accept=False, tamper="odc"),
        Case("hw-incompatible", _desc(f"images = ( {raw} );", hw='"1.1", "1.2"'), [("rootfs.img", IMG)],
             accept=False),
        Case("hw-missing", 'software = { version = "1.0"; images = ( ' + raw + " ); };",
             [("rootfs.img", IMG)], accept=False),
        Case("unknown-handler", _desc(f"images = ( {_image('rootfs.img', IMG, FPGA)} );"),
             [("rootfs.img", IMG)], accept=False),
        Case("not-gzip", _desc(f"images = ( {_image('r.gz', IMG, ZLIB)} );"),
             [("r.gz", IMG)], accept=False),
        Case("no-sha-signed", _desc('images = ( { filename = "rootfs.img"; device = "/dev/null"; } );'),
             [("rootfs.img", IMG)], accept=False),
        Case("bad-signature", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG)], accept=False,
             tamper="resign-other"),
        Case("unsigned", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG)], accept=False, tamper="no-sig"),
        Case("nothing-to-install", _desc("images = ( );"), [], accept=False),
        Case("syntax-error", _desc(f"images = ( {raw} ) ]"), [("rootfs.img", IMG)], accept=False),
        # deliberate differences: SWUpdate accepts these, we refuse
        Case("ref-loop", _desc(f'images = ( {raw} );\n'
                               'myboard = { images = { ref = "#./../myboard/images"; }; };'),
             [("rootfs.img", IMG)], board="myboard", accept=False, swupdate_accepts=True,
             difference="SWUpdate silently ignores a looping link and falls back to software.images; "
                        "we refuse the bundle so a typo cannot change what is installed"),
        Case("path-escapes", _desc('files = ( { filename = "f"; path = "/tmp/../etc/passwd"; '
                                   f'sha256 = "{sha(b"x")}"; }} );'), [("f", b"x")], accept=False,
             swupdate_accepts=True,
             difference="SWUpdate passes path to the rawfile handler as written; we refuse '..' components"),
        # deliberate difference: we accept this, SWUpdate refuses it
        Case("crc-check-wrong", _desc(f"images = ( {raw} );"), [("rootfs.img", IMG)], tamper="bad-check",
             swupdate_accepts=False,
             difference="a member whose sha256 is checked is not summed (swu/cpio.py): the sha256 binds its "
                        "bytes and is signed; SWUpdate also refuses a wrong 070702 check in the header"),
        Case("duplicate-scripts", _desc(
            f'scripts = ( {{ filename = "s.sh"; type = "shellscript"; sha256 = "{sha(b"true")}"; }}, '
            f'{{ filename = "s.sh"; type = "postinstall"; sha256 = "{sha(b"true")}"; }} );'),
            [("s.sh", b"true")], accept=False, swupdate_accepts=True,
            difference="SWUpdate copies both entries to the same temporary name; we refuse duplicates"),
    ]
    return cases
