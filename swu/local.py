"""A bundle checked for the system it would replace (``sysupgrade bundle.swu``): this system's
``/etc/hwrevision`` and ``/etc/sw-versions``, and the certificate the system trusts, when it has one
(``/etc/swupdate/public.pem``: then the bundle must be signed by it). ``root`` prefixes every system path
(the sandbox's device root seen from the host; "/" on the device itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from swu import check, signature
from swu.hwcompat import read_hwrevision
from swu.model import Target
from swu.versions import read_sw_versions

CERTIFICATE = "/etc/swupdate/public.pem"
HWREVISION = "/etc/hwrevision"
SW_VERSIONS = "/etc/sw-versions"


def rooted(path: str, root: str) -> Path:
    return Path(os.path.join(root, path.lstrip("/")))


@dataclass(frozen=True)
class System:
    """What a bundle is checked against: this board and revision, the installed versions, the trusted
    certificate's path (None: signatures are not required)."""

    target: Target
    versions: dict[str, str]
    certificate: str | None

    def to_dict(self) -> dict[str, object]:
        return {"board": self.target.board, "revision": self.target.revision, "versions": self.versions,
                "certificate": self.certificate}


def system(root: str = "/") -> System:
    found = read_hwrevision(rooted(HWREVISION, root))
    target = Target(found[0], found[1]) if found else Target(None, None)
    cert = rooted(CERTIFICATE, root)
    return System(target, read_sw_versions(rooted(SW_VERSIONS, root)), str(cert) if cert.exists() else None)


def check_file(path: str, here: System) -> check.CheckResult:
    """The whole check of ``swupdate -c`` (signature when a certificate is trusted, description, every
    artifact's sha256 and decompression). Raises ``SwuError`` (and kin) or ``OSError``."""
    cert = None
    if here.certificate is not None:
        cert = signature.load_certificate(Path(here.certificate).read_bytes())
    with open(path, "rb") as f:
        return check.check_bundle(f, here.target, here.versions, cert=cert)
