"""``sysupgrade bundle.swu``: a ``.swu`` bundle that replaces the running system, through stage2.

Before the pivot (``validating``, old root intact): the bundle gets the whole check again against this
system (``swu.local``: ``/etc/hwrevision``, ``/etc/sw-versions``, ``/etc/swupdate/public.pem``), and its
installation plan must fit what stage2 can do to a running system: ``raw`` images onto the disk stage2
replaces (the disk itself or one of its partitions), nothing else (no scripts, files, UBI, boot
environment: the old root they would run in or write to is gone after the pivot). Refused there with
nothing written.

After the pivot (``flashing``): the bundle under /tmp is opened again, its ``sw-description`` must be
the one checked (sha256), and ``swu.install`` streams the images onto the disk (each sha256 checked as
its bytes pass, each write read back). Verification and the configuration archive are stage2's own
steps (the platform's ``SAVERS``). ``/etc/sw-versions`` of the old root is gone by then: versions the
plan records go to ``/tmp/sw-versions`` (the new image carries its own).

This module is imported only for a bundle (lazily by ``stage2.afterpivot``; ``stage2.ramfs`` measures it
and its imports into the ramfs through ``extra_modules``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stage2.machine import Context
from swu import local
from swu.cpio import open_bundle
from swu.description import build_plan
from swu.handlers import raw
from swu.handlers.base import Settings
from swu.install import Event, install
from swu.model import InstallPlan, Section, SwuError, Target
from wrtcore import blockdev, log
from wrtcore.errors import InvalidInput, UpgradeError

SW_VERSIONS_AFTER_PIVOT = "/tmp/sw-versions"
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class BundlePlan:
    """What the ramfs side needs to install the bundle it was shown before the pivot."""

    payload_length: int  # bytes the images put on the disk (offset + size, the furthest one)
    description_sha256: str
    board: str | None
    revision: str | None
    signed: bool
    versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def target(self) -> Target:
        return Target(self.board, self.revision)

    def to_dict(self) -> dict[str, Any]:
        return {"payload_length": self.payload_length, "description_sha256": self.description_sha256,
                "board": self.board, "revision": self.revision, "signed": self.signed,
                "versions": dict(self.versions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundlePlan:
        return cls(int(data["payload_length"]), str(data["description_sha256"]), data["board"],
                   data["revision"], bool(data["signed"]), dict(data["versions"]))


def stage2_refusals(plan: InstallPlan, devnums: Mapping[str, int | None],
                    allowed: frozenset[int]) -> list[str]:
    """Why stage2 cannot install ``plan`` over the running system (pure: ``devnums`` maps each image's
    device as named to its device number, None when it does not exist)."""
    problems: list[str] = []
    others = [*plan.files, *plan.scripts, *plan.bootenv_files]
    problems += [f"{a.where}: {a.section.value} entries cannot run once the old root is gone" for a in others]
    if plan.partitions:
        problems.append("partitions: UBI volumes are not handled by sysupgrade of a bundle")
    if plan.bootenv:
        problems.append("bootenv: the boot environment is not written by sysupgrade of a bundle")
    if plan.embedded_script:
        problems.append("embedded-script: hooks are not run by sysupgrade of a bundle")
    if not plan.images:
        problems.append("the bundle installs no image here")
    for image in plan.images:
        if image.section is not Section.IMAGES or image.handler not in raw.NAMES:
            problems.append(f"{image.where}: handler {image.handler!r}: only raw images replace the system")
            continue
        num = devnums.get(image.device or "")
        if num is None or num not in allowed:
            problems.append(f"{image.where}: device {image.device} is not the disk being upgraded "
                            "or one of its partitions")
    return problems


def prepare(image: str, disk: str) -> BundlePlan:
    """Before the pivot: check the bundle against this system and its fit; raises ``InvalidInput``."""
    here = local.system("/")
    try:
        result = local.check_file(image, here)
    except (SwuError, OSError, ValueError) as exc:
        raise InvalidInput(f"invalid .swu bundle {image}: {exc}", hint="nothing was written") from None
    allowed = frozenset({blockdev.devnum(disk), *(blockdev.devnum(p) for p in blockdev.partitions(disk))})
    devnums: dict[str, int | None] = {}
    for artifact in result.plan.images:
        path = raw.device_path(artifact.device or "")
        try:
            devnums[artifact.device or ""] = blockdev.devnum(path)
        except OSError:
            devnums[artifact.device or ""] = None
    problems = stage2_refusals(result.plan, devnums, allowed)
    if problems:
        raise InvalidInput("sysupgrade cannot install this bundle: " + "; ".join(problems),
                           hint="nothing was written")
    sizes = {a.filename: a.size for a in result.artifacts}
    payload = max(a.offset + sizes[a.filename] for a in result.plan.images)
    with open(image, "rb") as f:
        description = open_bundle(f).description
    for line in result.describe():
        log.get().info("plan", step=f"swu {line}")
    return BundlePlan(payload, hashlib.sha256(description).hexdigest(), here.target.board,
                      here.target.revision, here.certificate is not None, here.versions)


def flash(ctx: Context, progress: Progress) -> None:
    """After the pivot: install the bundle's images from the file under /tmp."""
    bundle_plan = BundlePlan.from_dict(ctx.data["plan"]["swu"])
    done: dict[int, int] = {}

    def report(event: Event) -> None:
        if event.phase == "install":
            done[event.step] = event.done
            progress(sum(done.values()), bundle_plan.payload_length)

    with open(ctx.image, "rb") as f:
        bundle = open_bundle(f)
        if hashlib.sha256(bundle.description).hexdigest() != bundle_plan.description_sha256:
            raise UpgradeError("the bundle changed after it was checked", hint="nothing was written")
        plan = build_plan(bundle.description, bundle_plan.target, bundle_plan.versions,
                          signed=bundle_plan.signed)
        result = install(bundle.members, plan, Settings(tmpdir="/tmp", sw_versions=SW_VERSIONS_AFTER_PIVOT),
                         report)
    ctx.report.bytes_written = sum(r.written for r in result.installed)
    installed = [{"target": r.target, "bytes": r.written} for r in result.installed]
    ctx.report.details["swu"] = {"installed": installed, "skipped_members": list(result.skipped_members)}
