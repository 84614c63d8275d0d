"""``sw-description.sig``: a CMS (PKCS#7) detached signature in DER over ``sw-description``, verified
against an X.509 certificate as SWUpdate's CMS mode does (``-k CERT``, ``--cert-purpose``).

Accepted: a signer whose certificate is in the CMS and is either the given certificate itself or one it
issued (the given certificate is the trust anchor); RSA (PKCS#1 v1.5 or PSS) and ECDSA; with signed
attributes (``openssl cms -sign`` default: the ``messageDigest`` attribute must match the content) or
without (``-noattr``). The signer certificate must be within its validity period and pass the purpose
check: ``emailProtection`` (default, OpenSSL's S/MIME signing purpose) or ``codeSigning``: when it has
an extended key usage, the purpose must be in it; when it has a key usage, it must allow
digitalSignature (or nonRepudiation). A signer certificate without extended key usage passes either
purpose. The signer must be found in the CMS ``certificates`` (``openssl cms -sign`` puts it there;
``-nocerts`` is refused, as by SWUpdate).
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from enum import Enum
from typing import Any

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from swu.model import SwuError


class CertPurpose(Enum):
    EMAIL_PROTECTION = "emailProtection"
    CODE_SIGNING = "codeSigning"


_EKU = {CertPurpose.EMAIL_PROTECTION: ExtendedKeyUsageOID.EMAIL_PROTECTION,
        CertPurpose.CODE_SIGNING: ExtendedKeyUsageOID.CODE_SIGNING}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512}


class SignatureError(SwuError):
    """The signature does not verify; nothing may be installed."""


@dataclass(frozen=True)
class Verified:
    signer: str  # the signer certificate's subject
    digest: str  # digest algorithm name


def load_certificate(data: bytes) -> x509.Certificate:
    """A PEM or DER certificate; :class:`SignatureError` when neither."""
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data \
            else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SignatureError(f"cannot read certificate: {exc}") from None


def _purpose_problem(cert: x509.Certificate, purpose: CertPurpose) -> str | None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if _EKU[purpose] not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            return f"certificate extended key usage does not include {purpose.value}"
    except x509.ExtensionNotFound:
        pass
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (ku.digital_signature or ku.content_commitment):
            return "certificate key usage allows neither digitalSignature nor nonRepudiation"
    except x509.ExtensionNotFound:
        pass
    return None


def _verify_raw(public_key: Any, signature: bytes, data: bytes, digest: type[hashes.HashAlgorithm],
                algorithm: str) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding = padding.PSS(padding.MGF1(digest()), padding.PSS.AUTO) \
            if algorithm == "rsassa_pss" else padding.PKCS1v15()
        public_key.verify(signature, data, pad, digest())
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(digest()))
    else:
        raise SignatureError(f"unsupported signer key type {type(public_key).__name__}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _signer_cert(signed: Any, info: Any) -> x509.Certificate | None:
    sid = info["sid"]
    for choice in signed["certificates"] or []:
        if choice.name != "certificate":
            continue
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if cert.issuer == wanted["issuer"] and cert.serial_number == wanted["serial_number"].native:
                return x509.load_der_x509_certificate(cert.dump())
        elif cert.key_identifier == sid.chosen.native:
            return x509.load_der_x509_certificate(cert.dump())
    return None


def verify(content: bytes, signature: bytes, trusted: x509.Certificate,
           purpose: CertPurpose = CertPurpose.EMAIL_PROTECTION,
           now: datetime.datetime | None = None) -> Verified:
    """Check ``signature`` (DER CMS, detached) over ``content``; :class:`SignatureError` when it fails."""
    try:
        info_outer = cms.ContentInfo.load(signature)
        if info_outer["content_type"].native != "signed_data":
            raise SignatureError("sw-description.sig is not CMS signed data")
        signed = info_outer["content"]
        signers = list(signed["signer_infos"])
    except (ValueError, TypeError, KeyError) as exc:
        raise SignatureError(f"sw-description.sig is not a DER CMS signature: {exc}") from None
    if signed["encap_content_info"]["content"].native is not None:
        raise SignatureError("sw-description.sig must be detached (it embeds content)")
    now = now or datetime.datetime.now(datetime.UTC)
    reasons: list[str] = []
    for info in signers:
        try:
            return _verify_signer(content, signed, info, trusted, purpose, now)
        except SignatureError as exc:
            reasons.append(str(exc))
    raise SignatureError("Authentication of all signatures failed: " + ("; ".join(reasons) or "no signer"))


def _verify_signer(content: bytes, signed: Any, info: Any, trusted: x509.Certificate,
                   purpose: CertPurpose, now: datetime.datetime) -> Verified:
    cert = _signer_cert(signed, info)
    if cert is None:
        raise SignatureError("signer certificate not in the signature")
    if cert != trusted and not _issued_by(cert, trusted):
        raise SignatureError("signer certificate is not the trusted certificate nor issued by it")
    for c in {cert, trusted}:
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            raise SignatureError(f"certificate {c.subject.rfc4514_string()} is not valid now")
    if (why := _purpose_problem(cert, purpose)) is not None:
        raise SignatureError(why)
    digest_name = info["digest_algorithm"]["algorithm"].native
    digest = _HASHES.get(digest_name)
    if digest is None:
        raise SignatureError(f"unsupported digest {digest_name}")
    algorithm = info["signature_algorithm"].signature_algo
    attrs = info["signed_attrs"]
    if attrs.native is not None and len(attrs):
        wanted = hashlib.new(digest_name, content).digest()
        digests = [a["values"][0].native for a in attrs if a["type"].native == "message_digest"]
        if digests != [wanted]:
            raise SignatureError("message digest does not match sw-description")
        data = attrs.untag().dump()
    else:
        data = content
    try:
        _verify_raw(cert.public_key(), info["signature"].native, data, digest, algorithm)
    except InvalidSignature:
        raise SignatureError("signature does not match sw-description") from None
    return Verified(signer=cert.subject.rfc4514_string(), digest=digest_name)
