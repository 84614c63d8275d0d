"""usign keys and signatures, and the ucert chain in an image's signature chunk: how OpenWrt signs firmware.

usign (OpenWrt) and signify (OpenBSD, Debian's ``signify-openbsd``) share their file formats. A file is
one comment line, then the base64 of a binary record, then a newline::

    public key   "untrusted comment: <text>\\n" base64("Ed" | key number[8] | Ed25519 public key[32]) "\\n"
    signature    "untrusted comment: <text>\\n" base64("Ed" | key number[8] | Ed25519 signature[64]) "\\n"
    secret key   base64("Ed" "BK" | kdf rounds[4] | salt[16] | checksum[8] | key number[8] | key[64])

The signature is plain Ed25519 over the whole message. The key number (usign's "fingerprint") names the
key: written as 16 lowercase hex digits, the bytes in file order, it is the file name of a trusted public
key in ``/etc/opkg/keys``. Secret keys are never read here (tests sign with ``signify-openbsd``).

**ucert** (OpenWrt's certificate tool) wraps signatures for the fwtool signature chunk. A ucert file is a
sequence of libubox ``blob`` containers (4-byte big-endian header: bit 31 "extended", bits 24-30 id,
bits 0-23 length including the header; payload padded to 4 bytes). Each container is one chain element
holding attribute 0, the text of a usign signature file, and optionally attribute 1, a payload: a
blobmsg table named ``ucert`` with ``certtype`` (int32; 1 = auth, 2 = revoke), ``validfrom`` and
``expiresat`` (int64, Unix time), ``pubkey`` (the text of a usign public key file) or ``fingerprint``.
The image build (``Build/append-metadata``) copies the build key's self-issued certificate
(``ucert -I``), appends the image's usign signature as a last element without payload (``ucert -A``),
and appends the result with ``fwtool -S``.

``verify_ucert`` does what ``ucert -V -m - -c <chunk> -P /etc/opkg/keys`` does: each element with a
payload is verified (against the key its signature names in the key directory, or against the key
certified by the previous element), must be an auth certificate valid now, and its ``pubkey`` becomes
the key for the next element; an element without payload is the message's signature. Keys whose file in
the key directory is the symlink ``.revoked.`` are refused. The lines it reports are what ucert and usign
print on stderr (``OK``, ``verification failed``, ``Failed to decode public key``...). Deliberate
differences, all stricter: verification stops at the first element that fails (ucert lets a later
message signature make up for an earlier bad one); a key file (or certified key) whose own key number
is not the one the signature names is refused (usign only looks the file up by name); a chunk that is
not a ucert blob, such as a bare usign signature file, fails like in ucert ("cannot parse cert").

Ed25519 comes from the ``cryptography`` package; without it ``verifier_available()`` is false, the
counterpart of an OpenWrt without ``/usr/bin/ucert``. The message is handed over as a buffer: the
validator maps the image (``mapped``) rather than reading it, so a large image costs page cache (already
in RAM for a file on tmpfs such as OpenWrt's /tmp), not a copy. A streamed verification is not possible
through ``cryptography``'s one-shot API (Ed25519 needs the whole message); only where a file cannot be
mapped is it read into memory, and then only up to ``READ_FALLBACK_MAX`` (64 MiB).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import mmap
import os
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum

KEYDIR = "/etc/opkg/keys"  # trusted public keys, one file per key number
REVOKED_LINK = ".revoked."  # a key file that is a symlink to this is revoked (ucert -R)
PKALG = b"Ed"
KEYNUM_SIZE = 8
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_FILE_MAX = 4096  # longer key or signature files are not key or signature files
CERT_BUF_LEN = 4096  # ucert reads at most CERT_BUF_LEN - 1 bytes of a certificate
CERTTYPE_AUTH = 1
CERTTYPE_REVOKE = 2
READ_FALLBACK_MAX = 64 << 20  # signed bytes read into memory where the image cannot be mapped

Message = bytes | bytearray | memoryview


class FormatError(ValueError):
    """A key, signature or certificate that does not decode."""


# --- usign files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    keynum: bytes
    key: bytes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        """The key number as usign prints it (``usign -F``): 16 lowercase hex digits."""
        return self.keynum.hex()

    def encode(self) -> bytes:
        return _armor(self.comment, PKALG + self.keynum + self.key)


@dataclass(frozen=True)
class Signature:
    keynum: bytes
    signature: bytes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        return self.keynum.hex()

    def encode(self) -> bytes:
        return _armor(self.comment, PKALG + self.keynum + self.signature)


def _armor(comment: str, record: bytes) -> bytes:
    return f"untrusted comment: {comment}\n".encode() + base64.b64encode(record) + b"\n"


def _unarmor(data: bytes, size: int, what: str) -> tuple[str, bytes]:
    """usign's ``get_base64_file``: skip the first line, base64-decode the rest to exactly ``size`` bytes."""
    text = data.split(b"\0", 1)[0]  # a C string: certified keys arrive NUL-terminated
    newline = text.find(b"\n")
    if newline < 0:
        raise FormatError(f"{what}: no comment line")
    comment = text[:newline].decode("utf-8", "replace").removeprefix("untrusted comment:").strip()
    try:
        record = base64.b64decode(b"".join(text[newline + 1 :].split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what}: bad base64 ({exc})") from exc
    if len(record) != size:
        raise FormatError(f"{what}: {len(record)} bytes instead of {size}")
    if record[:2] != PKALG:
        raise FormatError(f"{what}: algorithm {record[:2]!r} is not Ed25519 ('Ed')")
    return comment, record[2:]


def parse_public_key(data: bytes) -> PublicKey:
    comment, body = _unarmor(data, 2 + KEYNUM_SIZE + PUBLIC_KEY_SIZE, "public key")
    return PublicKey(body[:KEYNUM_SIZE], body[KEYNUM_SIZE:], comment)


def parse_signature(data: bytes) -> Signature:
    comment, body = _unarmor(data, 2 + KEYNUM_SIZE + SIGNATURE_SIZE, "signature")
    return Signature(body[:KEYNUM_SIZE], body[KEYNUM_SIZE:], comment)


def read_public_key(path: str) -> PublicKey:
    with open(path, "rb") as f:
        return parse_public_key(f.read(KEY_FILE_MAX))


def key_path(keydir: str, fingerprint: str) -> str:
    return os.path.join(keydir, fingerprint)


def is_revoked(keydir: str, fingerprint: str) -> bool:
    """ucert's revocation mark: the key's file is a symlink to ``.revoked.``."""
    try:
        return os.readlink(key_path(keydir, fingerprint)) == REVOKED_LINK
    except OSError:
        return False


# --- Ed25519 -------------------------------------------------------------------------------------


def verifier_available() -> bool:
    """Whether Ed25519 signatures can be checked here (the ``cryptography`` package is installed)."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: F401
    except ImportError:
        return False
    return True


def verify(message: Message, signature: Signature, key: PublicKey) -> bool:
    """Ed25519 check of ``message`` (any buffer, e.g. a mapped file) against ``key``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key.key).verify(signature.signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@contextlib.contextmanager
def mapped(path: str, length: int) -> Iterator[Message]:
    """The first ``length`` bytes of ``path`` as a read-only buffer, mapped rather than read.

    Where the file cannot be mapped (a filesystem without mmap), it is read instead, up to
    ``READ_FALLBACK_MAX`` bytes; a longer one raises ``OSError``.
    """
    if length == 0:
        yield b""
        return
    with open(path, "rb") as f:
        try:
            area = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ)
        except OSError as exc:
            if length > READ_FALLBACK_MAX:
                raise OSError(exc.errno, f"cannot map {path} ({exc.strerror}) and {length} bytes are more "
                                         f"than the {READ_FALLBACK_MAX} it may read instead") from exc
            yield f.read(length)
            return
        with area:
            view = memoryview(area)
            try:
                yield view
            finally:
                view.release()  # the map cannot close while a view of it exists


# --- libubox blob and blobmsg ---------------------------------------------------------------------

BLOB_HEADER = struct.Struct(">I")
BLOB_ID_MASK = 0x7F000000
BLOB_ID_SHIFT = 24
BLOB_LEN_MASK = 0x00FFFFFF
BLOB_EXTENDED = 0x80000000


class BlobmsgType(IntEnum):
    UNSPEC = 0
    ARRAY = 1
    TABLE = 2
    STRING = 3
    INT64 = 4
    INT32 = 5
    INT16 = 6
    INT8 = 7
    DOUBLE = 8


_FIXED_SIZE = {BlobmsgType.INT64: 8, BlobmsgType.INT32: 4, BlobmsgType.INT16: 2, BlobmsgType.INT8: 1,
               BlobmsgType.DOUBLE: 8}


@dataclass(frozen=True)
class BlobAttr:
    id: int
    extended: bool
    data: bytes  # the payload, without header and padding


def _pad(length: int) -> int:
    return (length + 3) & ~3


def encode_blob(attr_id: int, data: bytes, extended: bool = False) -> bytes:
    """One attribute, padded with zeros to 4 bytes (``blob_put``; the header counts no padding)."""
    length = BLOB_HEADER.size + len(data)
    header = (BLOB_EXTENDED if extended else 0) | (attr_id << BLOB_ID_SHIFT) & BLOB_ID_MASK | length
    return (BLOB_HEADER.pack(header) + data).ljust(_pad(length), b"\0")


def iter_blobs(data: bytes) -> Iterator[BlobAttr]:
    """The attributes laid end to end in ``data`` (``__blob_for_each_attr``): stops at the first one whose
    padded length does not fit in what is left."""
    pos = 0
    while len(data) - pos >= BLOB_HEADER.size:
        (header,) = BLOB_HEADER.unpack_from(data, pos)
        length = header & BLOB_LEN_MASK
        if length < BLOB_HEADER.size or _pad(length) > len(data) - pos:
            return
        yield BlobAttr((header & BLOB_ID_MASK) >> BLOB_ID_SHIFT, bool(header & BLOB_EXTENDED),
                       data[pos + BLOB_HEADER.size : pos + length])
        pos += _pad(length)


def encode_blobmsg(kind: BlobmsgType, name: str, value: bytes) -> bytes:
    """A named blobmsg field: extended attribute, big-endian name length, name, NUL, padding, value."""
    raw = name.encode()
    header = (struct.pack(">H", len(raw)) + raw + b"\0").ljust(_pad(2 + len(raw) + 1), b"\0")
    return encode_blob(kind, header + value, extended=True)


def _blobmsg_field(attr: BlobAttr) -> tuple[str, bytes] | None:
    """(name, value) of a named blobmsg field, None when it is malformed (``blobmsg_check_attr``)."""
    if len(attr.data) < 2:
        return None
    (namelen,) = struct.unpack_from(">H", attr.data)
    if namelen == 0 or 2 + namelen >= len(attr.data) or attr.data[2 + namelen] != 0:
        return None
    value = attr.data[_pad(2 + namelen + 1) :] if attr.extended else attr.data
    if attr.id > BlobmsgType.DOUBLE:
        return None
    kind = BlobmsgType(attr.id)
    if kind in _FIXED_SIZE and len(value) != _FIXED_SIZE[kind]:
        return None
    if kind == BlobmsgType.STRING and (not value or value[-1] != 0):
        return None
    return attr.data[2 : 2 + namelen].decode("utf-8", "replace"), value


def parse_blobmsg(data: bytes, policy: Mapping[str, BlobmsgType]) -> dict[str, bytes]:
    """``blobmsg_parse``: the value of each field named in ``policy`` with the type it gives; the first
    occurrence wins, and a malformed candidate ends the parse (the fields found so far stay)."""
    found: dict[str, bytes] = {}
    for attr in iter_blobs(data):
        field = _blobmsg_field(attr)
        if field is None:
            if any(attr.id == kind for kind in policy.values()):
                break
            continue
        name, value = field
        if policy.get(name) == attr.id and name not in found:
            found[name] = value
    return found


# --- ucert ---------------------------------------------------------------------------------------

CERT_ATTR_SIGNATURE = 0
CERT_ATTR_PAYLOAD = 1


@dataclass(frozen=True)
class ChainElement:
    signature: bytes  # the text of a usign signature file
    payload: bytes | None = None  # the signed blobmsg payload of a certificate


@dataclass(frozen=True)
class CertPayload:
    certtype: int | None
    validfrom: int | None
    expiresat: int | None
    pubkey: bytes | None  # the text of a usign public key file
    fingerprint: str | None


_PAYLOAD_POLICY = {"certtype": BlobmsgType.INT32, "certid": BlobmsgType.INT32,
                   "validfrom": BlobmsgType.INT64, "expiresat": BlobmsgType.INT64,
                   "pubkey": BlobmsgType.STRING, "fingerprint": BlobmsgType.STRING}


def parse_ucert(blob: bytes) -> list[ChainElement]:
    """The chain elements of a ucert file (``cert_load``); [] when not even the first one parses."""
    chain: list[ChainElement] = []
    for container in iter_blobs(blob[: CERT_BUF_LEN - 1]):
        attrs: dict[int, bytes] = {}
        for attr in iter_blobs(container.data):
            if attr.id in (CERT_ATTR_SIGNATURE, CERT_ATTR_PAYLOAD):
                attrs[attr.id] = attr.data
        if CERT_ATTR_SIGNATURE not in attrs:
            break
        chain.append(ChainElement(attrs[CERT_ATTR_SIGNATURE], attrs.get(CERT_ATTR_PAYLOAD)))
    return chain


def parse_cert_payload(payload: bytes) -> CertPayload | None:
    """The ``ucert`` table of a certificate's payload; None when there is none."""
    table = parse_blobmsg(payload, {"ucert": BlobmsgType.TABLE}).get("ucert")
    if table is None:
        return None
    fields = parse_blobmsg(table, _PAYLOAD_POLICY)

    def number(name: str, fmt: str) -> int | None:
        return int(struct.unpack(fmt, fields[name])[0]) if name in fields else None

    def text(name: str) -> bytes | None:
        return fields[name][:-1] if name in fields else None  # without the NUL

    fingerprint = text("fingerprint")
    return CertPayload(certtype=number("certtype", ">I"), validfrom=number("validfrom", ">q"),
                       expiresat=number("expiresat", ">q"), pubkey=text("pubkey"),
                       fingerprint=None if fingerprint is None else fingerprint.decode("ascii", "replace"))


def encode_cert_payload(*, certtype: int, validfrom: int, expiresat: int | None = None,
                        pubkey: bytes | None = None, fingerprint: str | None = None) -> bytes:
    """A certificate payload as ``ucert -I`` builds it (auth: expiresat + pubkey; revoke: fingerprint)."""
    fields = [encode_blobmsg(BlobmsgType.INT32, "certtype", struct.pack(">I", certtype)),
              encode_blobmsg(BlobmsgType.INT64, "validfrom", struct.pack(">q", validfrom))]
    if expiresat is not None:
        fields.append(encode_blobmsg(BlobmsgType.INT64, "expiresat", struct.pack(">q", expiresat)))
    if pubkey is not None:
        fields.append(encode_blobmsg(BlobmsgType.STRING, "pubkey", pubkey + b"\0"))
    if fingerprint is not None:
        fields.append(encode_blobmsg(BlobmsgType.STRING, "fingerprint", fingerprint.encode() + b"\0"))
    return encode_blobmsg(BlobmsgType.TABLE, "ucert", b"".join(fields))


def encode_chain_element(signature: bytes, payload: bytes | None = None) -> bytes:
    """One chain element: ``ucert -A`` (signature only) or a certificate of ``ucert -I``."""
    attrs = encode_blob(CERT_ATTR_SIGNATURE, signature)
    if payload is not None:
        attrs += encode_blob(CERT_ATTR_PAYLOAD, payload)
    return encode_blob(0, attrs)


@dataclass(frozen=True)
class ChainResult:
    """The outcome of ``verify_ucert``: ``lines`` are what ucert/usign print on stderr, in order."""

    ok: bool
    lines: tuple[str, ...]
    signer: str | None = None  # key number of the key that signed the message


class _Refused(Exception):
    def __init__(self, *lines: str) -> None:
        super().__init__(*lines)
        self.lines = lines


def _verify_element(message: Message, signature_text: bytes, chained: PublicKey | None,
                    keydir: str, lines: list[str]) -> Signature:
    """``usign_v``: one signature against the certified key or the key directory; appends ``OK``."""
    try:
        signature = parse_signature(signature_text)
    except FormatError as exc:
        raise _Refused("cannot get signing key fingerprint", str(exc)) from exc
    if is_revoked(keydir, signature.fingerprint):
        raise _Refused(f"key {signature.fingerprint} has been revoked!")
    if chained is not None:
        key = chained
    else:
        path = key_path(keydir, signature.fingerprint)
        try:
            key = read_public_key(path)
        except (OSError, FormatError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise _Refused("Failed to decode public key",
                           f"no usable key {signature.fingerprint} in {keydir}: {detail}") from exc
    if key.keynum != signature.keynum:
        raise _Refused("Failed to decode public key",
                       f"the signature names key {signature.fingerprint}, the key is {key.fingerprint}")
    if not verify(message, signature, key):
        raise _Refused("verification failed")
    lines.append("OK")
    return signature


def _certified_key(payload: bytes, keydir: str, now: float) -> PublicKey:
    """The key an auth certificate vouches for (``chain_verify``'s checks after the signature)."""
    cert = parse_cert_payload(payload)
    if cert is None:
        raise _Refused("chain_verify: no ucert in signed payload")
    if cert.certtype is None or cert.validfrom is None or cert.expiresat is None or cert.pubkey is None:
        raise _Refused("chain_verify: missing mandatory ucert attributes")
    if cert.certtype != CERTTYPE_AUTH:
        raise _Refused("chain_verify: wrong certificate type")
    if not cert.validfrom <= now < cert.expiresat:
        raise _Refused("chain_verify: certificate expired")
    try:
        key = parse_public_key(cert.pubkey)
    except FormatError as exc:
        raise _Refused("chain_verify: cannot get fingerprint for chained key", str(exc)) from exc
    if is_revoked(keydir, key.fingerprint):
        raise _Refused(f"chain_verify: key {key.fingerprint} has been revoked!")
    return key


def verify_ucert(blob: bytes, message: Message, keydir: str, *, now: float | None = None) -> ChainResult:
    """``ucert -V -m <message> -c <blob> -P <keydir>`` (see the module docstring for the differences)."""
    chain = parse_ucert(blob)
    if not chain:
        return ChainResult(False, ("cert_verify: cannot parse cert",))
    when = int(time.time() if now is None else now)  # ucert compares whole seconds
    lines: list[str] = []
    chained: PublicKey | None = None
    signer: str | None = None
    try:
        for element in chain:
            if element.payload is not None:
                _verify_element(element.payload, element.signature, chained, keydir, lines)
                chained = _certified_key(element.payload, keydir, when)
            else:
                signer = _verify_element(message, element.signature, chained, keydir, lines).fingerprint
    except _Refused as refused:
        return ChainResult(False, (*lines, *refused.lines))
    if signer is None:
        return ChainResult(False, (*lines, "chain_verify: missing signature to verify message!"))
    return ChainResult(True, tuple(lines), signer)
