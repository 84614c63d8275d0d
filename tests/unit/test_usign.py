"""usign keys and signatures, libubox blobs and ucert chains, with keys and signatures made by signify.

Debian's ``signify-openbsd`` writes the same files as OpenWrt's usign: keys and signatures here are real
Ed25519 ones, made by an implementation other than ours.
"""

from __future__ import annotations

import base64
import errno
import mmap
import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sysupgrade import usign
from sysupgrade.usign import BlobmsgType

SIGNIFY = shutil.which("signify-openbsd")


@dataclass(frozen=True)
class Key:
    pub: Path
    sec: Path
    public: usign.PublicKey

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint


class Signify:
    """Key pairs and signatures made by ``signify-openbsd`` (usign-compatible), in ``workdir``."""

    def __init__(self, tool: str, workdir: Path) -> None:
        self.tool = tool
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def run(self, *args: str) -> None:
        proc = subprocess.run([self.tool, *args], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr

    def keypair(self, name: str) -> Key:
        pub, sec = self.workdir / f"{name}.pub", self.workdir / f"{name}.sec"
        self.run("-G", "-n", "-p", str(pub), "-s", str(sec))
        return Key(pub, sec, usign.parse_public_key(pub.read_bytes()))

    def sign(self, key: Key, message: Path | bytes) -> bytes:
        """The text of the signature file of ``message`` (a file, or bytes)."""
        self.count += 1
        if isinstance(message, bytes):
            path = self.workdir / f"message{self.count}"
            path.write_bytes(message)
            message = path
        sig = self.workdir / f"sig{self.count}"
        self.run("-S", "-s", str(key.sec), "-m", str(message), "-x", str(sig))
        return sig.read_bytes()

    @staticmethod
    def install(key: Key, keydir: Path) -> Path:
        """The key as opkg-key installs it: ``<keydir>/<16 hex digits of the key number>``."""
        keydir.mkdir(parents=True, exist_ok=True)
        path = keydir / key.fingerprint
        shutil.copyfile(key.pub, path)
        return path

    def certificate(self, issuer: Key, subject: Key, *, validfrom: int | None = None,
                    expiresat: int | None = None, certtype: int = usign.CERTTYPE_AUTH) -> bytes:
        """A chain element as ``ucert -I`` writes it: ``subject``'s key, signed by ``issuer``."""
        now = int(time.time())
        payload = usign.encode_cert_payload(
            certtype=certtype, validfrom=now - 60 if validfrom is None else validfrom,
            expiresat=now + 365 * 86400 if expiresat is None else expiresat, pubkey=subject.pub.read_bytes())
        return usign.encode_chain_element(self.sign(issuer, payload), payload)


def make_signify(tmp_path: Path) -> Signify:
    """A ``Signify`` working in ``tmp_path``; skips the test (a failure under CI) without the tool."""
    if SIGNIFY is None:
        pytest.skip("signify-openbsd is not installed (apt-get install signify-openbsd)")
    return Signify(SIGNIFY, tmp_path / "signify")


@pytest.fixture
def signify(tmp_path: Path) -> Signify:
    return make_signify(tmp_path)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.mkdir()
    return path


MESSAGE = b"\xeb\x63firmware image" + bytes(range(256)) * 8


# --- key and signature files ---------------------------------------------------------------------


def test_signify_files_parse(signify: Signify) -> None:
    key = signify.keypair("build")
    pub_record = base64.b64decode(key.pub.read_text().splitlines()[1])
    assert pub_record[:2] == b"Ed" and len(pub_record) == 42
    assert key.public.keynum == pub_record[2:10] and key.public.key == pub_record[10:]
    assert key.fingerprint == pub_record[2:10].hex() and len(key.fingerprint) == 16
    assert key.public.comment == "signify public key"

    sig = usign.parse_signature(signify.sign(key, MESSAGE))
    assert sig.keynum == key.public.keynum and len(sig.signature) == 64
    assert usign.parse_signature(sig.encode()) == sig
    assert usign.parse_public_key(key.public.encode()) == key.public
    assert key.public.encode().startswith(b"untrusted comment: signify public key\n")


def test_ed25519_verification(signify: Signify) -> None:
    key, other = signify.keypair("a"), signify.keypair("b")
    sig = usign.parse_signature(signify.sign(key, MESSAGE))
    assert usign.verifier_available()
    assert usign.verify(MESSAGE, sig, key.public)
    assert usign.verify(memoryview(MESSAGE), sig, key.public)
    assert not usign.verify(MESSAGE[:-1], sig, key.public)
    assert not usign.verify(MESSAGE[:5] + b"\0" + MESSAGE[6:], sig, key.public)
    assert not usign.verify(MESSAGE, sig, other.public)


@pytest.mark.parametrize(("text", "why"), [
    (b"no newline", "no comment line"),
    (b"untrusted comment: x\n!!!!\n", "bad base64"),
    (b"untrusted comment: x\n" + base64.b64encode(b"Ed" + bytes(38)) + b"\n", "40 bytes instead of 42"),
    (b"untrusted comment: x\n" + base64.b64encode(b"Ed" + bytes(41)) + b"\nmore\n", "bad base64"),
    (b"untrusted comment: x\n" + base64.b64encode(b"XX" + bytes(40)) + b"\n", "not Ed25519"),
])
def test_malformed_key_files(text: bytes, why: str) -> None:
    with pytest.raises(usign.FormatError, match=why):
        usign.parse_public_key(text)


def test_key_text_may_end_in_nul_and_be_wrapped() -> None:
    record = b"Ed" + bytes(range(40))
    b64 = base64.b64encode(record)
    text = b"untrusted comment: k\n" + b64[:20] + b"\n" + b64[20:] + b"\n\0garbage"
    assert usign.parse_public_key(text).keynum == bytes(range(8))


def test_mapped_prefix(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(MESSAGE)
    with usign.mapped(str(path), 10) as view:
        assert bytes(view) == MESSAGE[:10]
    with usign.mapped(str(path), 0) as view:
        assert bytes(view) == b""


def test_unmappable_file_is_read_up_to_a_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "img"
    path.write_bytes(MESSAGE)

    def no_mmap(*_args: object, **_kwargs: object) -> mmap.mmap:
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    with usign.mapped(str(path), 10) as view:
        assert bytes(view) == MESSAGE[:10]
    monkeypatch.setattr(usign, "READ_FALLBACK_MAX", 9)
    with pytest.raises(OSError, match="more than the 9"), usign.mapped(str(path), 10):
        pass


# --- blob and blobmsg ----------------------------------------------------------------------------


def test_blob_bytes() -> None:
    assert usign.encode_blob(0, b"abc") == b"\x00\x00\x00\x07abc\x00"  # length counts no padding
    assert usign.encode_blob(1, b"abcd") == b"\x01\x00\x00\x08abcd"
    # extended bit, type int32 (5), length 20: header, name length 8, "certtype", NUL, pad to 12, value
    assert usign.encode_blobmsg(BlobmsgType.INT32, "certtype", struct.pack(">I", 1)) == (
        b"\x85\x00\x00\x14" + b"\x00\x08certtype\x00\x00" + b"\x00\x00\x00\x01")
    attrs = list(usign.iter_blobs(usign.encode_blob(0, b"abc") + usign.encode_blob(1, b"xy")))
    assert attrs == [usign.BlobAttr(0, False, b"abc"), usign.BlobAttr(1, False, b"xy")]
    assert list(usign.iter_blobs(b"\x00\x00\x00\x09abc")) == []  # runs past the end
    assert list(usign.iter_blobs(b"\x00\x00\x00\x02")) == []  # shorter than its header


# The certificate of the ucert test suite's key-build.ucert, as its dump shows it (tests/cram/test_ucert.t:
# certtype 1, validfrom 1546188410, expiresat 1577724410, the "Local build key", its signature), laid out
# the way ucert -I's calls to libubox's blob_buf/blobmsg builder lay it out. The bytes came from a C
# transcription of libubox's blob_add, blob_new, blob_put, blob_nest_end, blobmsg_new and
# blobmsg_open_nested: our encoder is checked against libubox's algorithm, not against itself.
BUILD_KEY = (b"untrusted comment: Local build key\n"
             b"RWSEv8iKFxZld6vicE1icWhYNfEV9PM7C9MKUKl+YNEKB+PdAWGDF5Z9\n")
LIBUBOX_PAYLOAD = bytes.fromhex(
    "820000c00005756365727400850000140008636572747479706500000000000184000018000976616c696466726f6d00"
    "000000005c28f67a84000018000965787069726573617400000000005e0a29fa8300006d00067075626b657900000000"
    "756e7472757374656420636f6d6d656e743a204c6f63616c206275696c64206b65790a525753457638694b46785a6c64"
    "36766963453169635768594e66455639504d3743394d4b554b6c2b594e454b422b50644157474446355a390a00000000")

BUILD_CERT_SIGNATURE = (b"untrusted comment: signed by key 84bfc88a17166577\n"
                        b"RWSEv8iKFxZld+bQ+NTqCdDlHOuVYNw5Qw7Q8shjfMgFJcTqrzaqO0bysjIQhTadmcwvWiWvHlyMcwAXSix2"
                        b"BYdfghz/zhDjvgU=\n")
LIBUBOX_CERTIFICATE = bytes.fromhex(
    "000001640000009b756e7472757374656420636f6d6d656e743a207369676e6564206279206b65792038346266633838"
    "6131373136363537370a525753457638694b46785a6c642b62512b4e54714364446c484f7556594e7735517737513873"
    "686a664d67464a635471727a61714f306279736a4951685461646d63777657695776486c794d63774158536978324259"
    "646667687a2f7a68446a7667553d0a00010000c4820000c0000575636572740085000014000863657274747970650000"
    "0000000184000018000976616c696466726f6d00000000005c28f67a8400001800096578706972657361740000000000"
    "5e0a29fa8300006d00067075626b657900000000756e7472757374656420636f6d6d656e743a204c6f63616c20627569"
    "6c64206b65790a525753457638694b46785a6c6436766963453169635768594e66455639504d3743394d4b554b6c2b59"
    "4e454b422b50644157474446355a390a00000000")


def test_cert_payload_bytes_match_libubox() -> None:
    payload = usign.encode_cert_payload(certtype=1, validfrom=1546188410, expiresat=1577724410,
                                        pubkey=BUILD_KEY)
    assert payload == LIBUBOX_PAYLOAD
    assert usign.parse_cert_payload(LIBUBOX_PAYLOAD) == usign.CertPayload(1, 1546188410, 1577724410,
                                                                          BUILD_KEY, None)
    # ucert -I's container: the signature text (attribute 0, padded), then the payload (attribute 1)
    assert usign.encode_chain_element(BUILD_CERT_SIGNATURE, payload) == LIBUBOX_CERTIFICATE
    assert usign.parse_ucert(LIBUBOX_CERTIFICATE) == [usign.ChainElement(BUILD_CERT_SIGNATURE, payload)]


def test_cert_payload_round_trip() -> None:
    payload = usign.encode_cert_payload(certtype=1, validfrom=1546188410, expiresat=1577724410,
                                        pubkey=b"untrusted comment: k\nRWSE\n")
    assert len(payload) % 4 == 0
    cert = usign.parse_cert_payload(payload)
    assert cert == usign.CertPayload(1, 1546188410, 1577724410, b"untrusted comment: k\nRWSE\n", None)
    revoker = usign.parse_cert_payload(usign.encode_cert_payload(certtype=2, validfrom=5,
                                                                 fingerprint="84bfc88a17166577"))
    assert revoker == usign.CertPayload(2, 5, None, None, "84bfc88a17166577")
    assert usign.parse_cert_payload(usign.encode_blobmsg(BlobmsgType.TABLE, "other", b"")) is None


def test_blobmsg_first_field_wins_and_types_are_checked() -> None:
    data = (usign.encode_blobmsg(BlobmsgType.INT32, "n", struct.pack(">I", 1))
            + usign.encode_blobmsg(BlobmsgType.INT32, "n", struct.pack(">I", 2))
            + usign.encode_blobmsg(BlobmsgType.STRING, "s", b"no nul"))
    assert usign.parse_blobmsg(data, {"n": BlobmsgType.INT32}) == {"n": struct.pack(">I", 1)}
    assert usign.parse_blobmsg(data, {"n": BlobmsgType.INT64}) == {}
    assert usign.parse_blobmsg(data, {"s": BlobmsgType.STRING}) == {}  # not NUL-terminated


def test_parse_ucert_chain() -> None:
    blob = usign.encode_chain_element(b"sig one", b"payload") + usign.encode_chain_element(b"sig two")
    assert usign.parse_ucert(blob) == [usign.ChainElement(b"sig one", b"payload"),
                                       usign.ChainElement(b"sig two")]
    assert usign.parse_ucert(b"untrusted comment: a bare usign signature\nRWQ=\n") == []
    assert usign.parse_ucert(b"") == []
    no_signature = usign.encode_blob(0, usign.encode_blob(1, b"payload only"))
    assert usign.parse_ucert(no_signature + usign.encode_chain_element(b"sig")) == []


# --- ucert chains ----------------------------------------------------------------------------------


def test_single_signature_verifies(signify: Signify, keydir: Path) -> None:
    key = signify.keypair("build")
    signify.install(key, keydir)
    blob = usign.encode_chain_element(signify.sign(key, MESSAGE))  # ucert -A on an empty certificate
    result = usign.verify_ucert(blob, MESSAGE, str(keydir))
    assert result == usign.ChainResult(True, ("OK",), key.fingerprint)


def test_openwrt_build_layout_verifies(signify: Signify, keydir: Path) -> None:
    """Build key's self-issued certificate (``ucert -I``), then the image's signature (``ucert -A``)."""
    key = signify.keypair("key-build")
    signify.install(key, keydir)
    blob = signify.certificate(key, key) + usign.encode_chain_element(signify.sign(key, MESSAGE))
    assert usign.verify_ucert(blob, MESSAGE, str(keydir)) == usign.ChainResult(True, ("OK", "OK"),
                                                                               key.fingerprint)
    result = usign.verify_ucert(blob, MESSAGE + b"x", str(keydir))
    assert result == usign.ChainResult(False, ("OK", "verification failed"))


def test_certified_key_need_not_be_installed(signify: Signify, keydir: Path) -> None:
    ca, build = signify.keypair("ca"), signify.keypair("build")
    signify.install(ca, keydir)
    signature = usign.encode_chain_element(signify.sign(build, MESSAGE))
    blob = signify.certificate(ca, build) + signature
    assert usign.verify_ucert(blob, MESSAGE, str(keydir)).signer == build.fingerprint
    # without the certificate the build key is unknown
    result = usign.verify_ucert(signature, MESSAGE, str(keydir))
    assert not result.ok
    assert result.lines[0] == "Failed to decode public key"
    assert build.fingerprint in result.lines[1]


def test_certificate_by_an_unknown_issuer_fails(signify: Signify, keydir: Path) -> None:
    ca, build = signify.keypair("ca"), signify.keypair("build")
    blob = signify.certificate(ca, build) + usign.encode_chain_element(signify.sign(build, MESSAGE))
    assert usign.verify_ucert(blob, MESSAGE, str(keydir)).lines[0] == "Failed to decode public key"


@pytest.mark.parametrize(("validity", "line"), [
    ({"validfrom": 1000, "expiresat": 2000}, "chain_verify: certificate expired"),
    ({"validfrom": 4_000_000_000, "expiresat": 4_100_000_000}, "chain_verify: certificate expired"),
    ({"certtype": usign.CERTTYPE_REVOKE}, "chain_verify: wrong certificate type"),
])
def test_certificate_checks(signify: Signify, keydir: Path, validity: dict[str, int], line: str) -> None:
    ca, build = signify.keypair("ca"), signify.keypair("build")
    signify.install(ca, keydir)
    blob = signify.certificate(ca, build, **validity)
    blob += usign.encode_chain_element(signify.sign(build, MESSAGE))
    assert usign.verify_ucert(blob, MESSAGE, str(keydir)) == usign.ChainResult(False, ("OK", line))


def test_certificate_without_pubkey(signify: Signify, keydir: Path) -> None:
    ca = signify.keypair("ca")
    signify.install(ca, keydir)
    payload = usign.encode_cert_payload(certtype=1, validfrom=0, expiresat=4_000_000_000)
    blob = usign.encode_chain_element(signify.sign(ca, payload), payload)
    blob += usign.encode_chain_element(signify.sign(ca, MESSAGE))
    assert usign.verify_ucert(blob, MESSAGE, str(keydir)).lines == (
        "OK", "chain_verify: missing mandatory ucert attributes")


def test_tampered_certificate_payload(signify: Signify, keydir: Path) -> None:
    ca, build, evil = signify.keypair("ca"), signify.keypair("build"), signify.keypair("evil")
    signify.install(ca, keydir)
    good = usign.parse_ucert(signify.certificate(ca, build))[0]
    forged_payload = good.payload.replace(build.pub.read_bytes(), evil.pub.read_bytes())  # type: ignore[union-attr]
    blob = usign.encode_chain_element(good.signature, forged_payload)
    blob += usign.encode_chain_element(signify.sign(evil, MESSAGE))
    assert usign.verify_ucert(blob, MESSAGE, str(keydir)).lines == ("verification failed",)


def test_revoked_keys(signify: Signify, keydir: Path) -> None:
    ca, build = signify.keypair("ca"), signify.keypair("build")
    signify.install(ca, keydir)
    blob = signify.certificate(ca, build) + usign.encode_chain_element(signify.sign(build, MESSAGE))
    os.symlink(".revoked.", keydir / build.fingerprint)  # ucert -R's dead link
    assert usign.verify_ucert(blob, MESSAGE, str(keydir)).lines == (
        "OK", f"chain_verify: key {build.fingerprint} has been revoked!")

    direct = usign.encode_chain_element(signify.sign(build, MESSAGE))
    assert usign.verify_ucert(direct, MESSAGE, str(keydir)).lines == (
        f"key {build.fingerprint} has been revoked!",)


def test_certificate_alone_does_not_sign_the_message(signify: Signify, keydir: Path) -> None:
    key = signify.keypair("key")
    signify.install(key, keydir)
    assert usign.verify_ucert(signify.certificate(key, key), MESSAGE, str(keydir)).lines == (
        "OK", "chain_verify: missing signature to verify message!")


def test_a_bad_signature_is_not_rescued_by_a_later_one(signify: Signify, keydir: Path) -> None:
    """Stricter than ucert, where the last message signature decides."""
    key = signify.keypair("key")
    signify.install(key, keydir)
    blob = (usign.encode_chain_element(signify.sign(key, b"something else"))
            + usign.encode_chain_element(signify.sign(key, MESSAGE)))
    result = usign.verify_ucert(blob, MESSAGE, str(keydir))
    assert result == usign.ChainResult(False, ("verification failed",))


def test_key_file_must_hold_the_key_it_is_named_after(signify: Signify, keydir: Path) -> None:
    key, other = signify.keypair("key"), signify.keypair("other")
    shutil.copyfile(other.pub, keydir / key.fingerprint)
    result = usign.verify_ucert(usign.encode_chain_element(signify.sign(key, MESSAGE)), MESSAGE, str(keydir))
    assert not result.ok and result.lines[0] == "Failed to decode public key"


@pytest.mark.parametrize("blob", [b"", b"untrusted comment: signed by key 0011223344556677\nRWQ=\n",
                                  b"\x00\x00\x00\x08\xff\xff\xff\xff"])
def test_unparsable_chunk_fails(keydir: Path, blob: bytes) -> None:
    assert usign.verify_ucert(blob, MESSAGE, str(keydir)) == usign.ChainResult(
        False, ("cert_verify: cannot parse cert",))


def test_undecodable_signature_in_the_chain(keydir: Path) -> None:
    blob = usign.encode_chain_element(b"untrusted comment: x\nnot base64!\n")
    result = usign.verify_ucert(blob, MESSAGE, str(keydir))
    assert not result.ok and result.lines[0] == "cannot get signing key fingerprint"
