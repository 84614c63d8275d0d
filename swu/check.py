"""Check only (``-c``): read a bundle as a stream, verify everything, install nothing.

In order: ``sw-description`` first (``sw-description.sig`` second when signed); the signature against the
certificate when one is given (then it is required, and every artifact needs ``sha256``); the whole
description (``swu.description.build_plan``); then every member as it streams past: the 070702 sum of
every member, and for each wanted artifact the sha256 over the stored bytes and a real decompression
(zlib/zstd) to its end. Members the plan does not use are skipped (their sums still checked). A wanted
artifact absent from the archive: "Required image file X missing...aborting". No handler runs.

Without a certificate a signature, when present, is not verified (``CheckResult.signature_verified``
False): SWUpdate's signed builds refuse to run at all without ``-k``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

from cryptography import x509

from swu import signature
from swu.cpio import MemberReader, open_bundle
from swu.decompress import decompressing
from swu.description import build_plan
from swu.model import Artifact, InstallPlan, SwuError, Target

READ = 1 << 20


@dataclass(frozen=True)
class CheckedArtifact:
    filename: str
    stored_size: int  # bytes in the cpio
    sha256: str  # over the stored bytes
    size: int  # bytes after decompression


@dataclass(frozen=True)
class CheckResult:
    plan: InstallPlan
    signature_verified: bool
    signer: str | None
    artifacts: tuple[CheckedArtifact, ...]
    unused: tuple[str, ...]  # members the plan does not read

    def describe(self) -> list[str]:
        lines = [f"signature: verified, signer {self.signer}" if self.signature_verified
                 else "signature: not verified"]
        lines += self.plan.describe()
        lines += [f"checked {a.filename}: {a.stored_size} bytes stored, {a.size} installed, sha256 {a.sha256}"
                  for a in self.artifacts]
        lines += [f"not required: {name}" for name in self.unused]
        return lines


def _check_member(member: MemberReader, artifacts: list[Artifact]) -> CheckedArtifact:
    hashes = {a.sha256 for a in artifacts if a.sha256}
    if len(hashes) > 1:
        raise SwuError(f"entries {', '.join(a.where for a in artifacts)} give different sha256", member.name)
    if hashes:
        member.expect_sha256(hashes.pop())
    else:
        member.hash()
    first = artifacts[0]
    reader = decompressing(member, first.compressed, first.where)
    size = 0
    while chunk := reader.read(READ):
        size += len(chunk)
    member.skip()  # bytes after the end of a compressed stream still count for the hash
    return CheckedArtifact(filename=member.name, stored_size=member.header.size,
                           sha256=member.hexdigest() or "", size=size)


def check_bundle(stream: BinaryIO, target: Target, installed_versions: Mapping[str, str] | None = None, *,
                 cert: x509.Certificate | None = None,
                 purpose: signature.CertPurpose = signature.CertPurpose.EMAIL_PROTECTION) -> CheckResult:
    """Check the bundle read from ``stream`` for ``target``. Raises :class:`SwuError` (or its
    ``DescriptionError``/``CpioError``/``SignatureError`` kin) at the first failure."""
    bundle = open_bundle(stream)
    verified: signature.Verified | None = None
    if cert is not None:
        if bundle.signature is None:
            raise signature.SignatureError("bundle not signed: no sw-description.sig after sw-description")
        verified = signature.verify(bundle.description, bundle.signature, cert, purpose)
    plan = build_plan(bundle.description, target, installed_versions, signed=cert is not None)
    wanted: dict[str, list[Artifact]] = {}
    for artifact in plan.artifacts():
        wanted.setdefault(artifact.filename, []).append(artifact)
    checked: list[CheckedArtifact] = []
    unused: list[str] = []
    for member in bundle.members:
        if member.name in wanted:
            checked.append(_check_member(member, wanted.pop(member.name)))
        else:
            unused.append(member.name)
            member.skip()
    if wanted:
        name = next(iter(wanted))
        raise SwuError(f"Required image file {name} missing...aborting", wanted[name][0].where)
    return CheckResult(plan=plan, signature_verified=verified is not None,
                       signer=verified.signer if verified else None, artifacts=tuple(checked),
                       unused=tuple(unused))
