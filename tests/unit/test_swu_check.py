"""Check-only flow and CMS signatures (RSA, ECDSA, cert purpose), on bundles built by the tests."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from swu.check import check_bundle
from swu.model import Target
from swu.signature import CertPurpose, SignatureError, load_certificate, verify
from tests.swu_corpus import IMG, Case, build, cms_sign, corpus, cpio_bytes, make_signer


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("keys")
    return {"rsa": make_signer(d, "rsa"), "ec": make_signer(d, "ec", "ec", eku="codeSigning"),
            "other": make_signer(d, "other"), "noeku": make_signer(d, "noeku", eku=None)}


def test_rsa_ecdsa_and_purpose(keys: dict[str, object], tmp_path: Path) -> None:
    text = b'software = { version = "1"; };'
    for name, purpose in [("rsa", CertPurpose.EMAIL_PROTECTION), ("ec", CertPurpose.CODE_SIGNING),
                          ("noeku", CertPurpose.CODE_SIGNING)]:
        signer = keys[name]
        sig = cms_sign(text, signer, tmp_path)  # type: ignore[arg-type]
        assert verify(text, sig, load_certificate(signer.cert.read_bytes()), purpose).digest == "sha256"  # type: ignore[attr-defined]
    ec = keys["ec"]
    sig = cms_sign(text, ec, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="emailProtection"):
        verify(text, sig, load_certificate(ec.cert.read_bytes()))  # type: ignore[attr-defined]
    with pytest.raises(SignatureError, match="trusted"):
        verify(text, sig, load_certificate(keys["other"].cert.read_bytes()), CertPurpose.CODE_SIGNING)  # type: ignore[attr-defined]
    with pytest.raises(SignatureError, match="digest"):
        verify(text + b" ", sig, load_certificate(ec.cert.read_bytes()), CertPurpose.CODE_SIGNING)  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", [c for c in corpus() if c.name in (
    "plain-raw", "zstd", "gzip", "unused-member", "sha-mismatch", "missing-artifact", "not-gzip",
    "truncated", "not-first")], ids=lambda c: c.name)
def test_check_verdicts(case: Case, keys: dict[str, object], tmp_path: Path) -> None:
    signer = keys["rsa"]
    data = build(case, signer, tmp_path)  # type: ignore[arg-type]
    cert = load_certificate(signer.cert.read_bytes())  # type: ignore[attr-defined]
    target = Target(case.board, case.revision, case.selection, case.mode)
    if case.accept:
        result = check_bundle(io.BytesIO(data), target, cert=cert)
        assert result.signature_verified and result.artifacts[0].size == len(IMG)
    else:
        messages = {"sha-mismatch": "HASH mismatch", "missing-artifact": "Required image file",
                    "not-gzip": "inflate failed", "truncated": "truncated", "not-first": "first member"}
        with pytest.raises(Exception, match=messages[case.name]):
            check_bundle(io.BytesIO(data), target, cert=cert)


def test_unsigned_check_without_certificate() -> None:
    desc = (b'software = { version = "1"; hardware-compatibility = ["1"]; '
            b'images = ( { filename = "a"; device = "/d"; } ); };')
    result = check_bundle(io.BytesIO(cpio_bytes([("sw-description", desc), ("a", b"abc")], "newc")),
                          Target("b", "1"))
    assert not result.signature_verified
    assert result.artifacts[0].stored_size == 3
