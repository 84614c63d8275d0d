"""Drive a bundle stream through an :class:`InstallPlan`: artifacts installed as they arrive.

Order (SWUpdate's): scripts that run before the images (``preinstall``, ``shellscript preinst``, Lua
``preinst``), in document order; the images and files; the scripts that run after them; the boot
environment (``bootloader`` files, then ``bootenv`` pairs, one write); ``/etc/sw-versions``.

Streaming: each wanted cpio member is handed to its handler as it comes off the stream (decompressed on
the way, its sha256 checked as its bytes pass); members the plan does not use are skipped (their
checksum still read). Scripts are copied to a private temporary directory. An image or file that arrives
*before* every pre-install script has arrived is spooled there (its stored bytes) and installed once the
pre-install scripts have run; bundles that put their scripts first (as SWUpdate's generators do) never
spool. Memory stays at a few chunk buffers whatever the bundle's size.

Dual copy: the environment is written only after every artifact has been written and read back and the
post-install scripts succeeded, so a ``copy-2`` mode whose images target the inactive slot and whose
``bootenv`` names that slot switches the boot only after the slot is verified (docs/ab-updates.md).

The ``partitions`` section (UBI volumes created, resized or removed) is applied once the pre-install
scripts have run, before the first image (SWUpdate's order), all of it planned and checked first.

Refused before anything is written: unknown handlers, a handler missing what it needs, ``encrypted``
artifacts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from swu import bootenv
from swu.cpio import CpioReader, MemberReader
from swu.decompress import Readable, decompressing
from swu.handlers import archive, bootloader, mtd, raw, rawfile, scripts, ubi
from swu.handlers.base import Call, InstallError, Progress, Result, Settings, describe
from swu.model import Artifact, InstallPlan, Section, SwuError
from swu.versions import read_sw_versions, write_sw_versions
from wrtcore import log

Installer = Callable[[Artifact, Readable, Call], Result]
INSTALLERS: dict[str, Installer] = {
    **{name: raw.install for name in raw.NAMES},
    **{name: rawfile.install for name in rawfile.NAMES},
    **{name: archive.install for name in archive.NAMES},
    **{name: bootloader.install for name in bootloader.NAMES},
    **{name: mtd.install for name in mtd.NAMES},
    **{name: ubi.install for name in ubi.NAMES},
}
NEEDS: dict[str, tuple[str, ...]] = {
    **{n: raw.NEEDS for n in raw.NAMES}, **{n: rawfile.NEEDS for n in rawfile.NAMES},
    **{n: archive.NEEDS for n in archive.NAMES}, **{n: bootloader.NEEDS for n in bootloader.NAMES},
    **{n: mtd.NEEDS for n in mtd.NAMES}, **{n: ubi.NEEDS for n in ubi.NAMES},
    **{n: scripts.NEEDS for n in scripts.NAMES},
}


@dataclass(frozen=True)
class Event:
    """Progress: ``step`` of ``steps`` (artifacts in the plan), the artifact, bytes done of total."""

    step: int
    steps: int
    name: str
    phase: str  # "install", "spool", "script", "partitions", "bootenv", "done"
    done: int = 0
    total: int | None = None


Reporter = Callable[[Event], None]


@dataclass(frozen=True)
class Report:
    installed: tuple[Result, ...]
    skipped_members: tuple[str, ...]
    spooled: tuple[str, ...]
    bootenv: dict[str, str] | None  # the environment written, None when the plan sets nothing
    versions_updated: tuple[str, ...]


def refusals(plan: InstallPlan) -> list[str]:
    """Why this plan cannot be installed here, decided before anything is touched."""
    problems: list[str] = []
    for artifact in plan.artifacts():
        if artifact.handler not in INSTALLERS and artifact.handler not in scripts.NAMES:
            problems.append(f"{describe(artifact)}: no installer for handler {artifact.handler!r}")
        missing = [need for need in NEEDS.get(artifact.handler, ()) if not _has(artifact, need)]
        if missing:
            problems.append(f"{describe(artifact)}: handler {artifact.handler} needs {', '.join(missing)}")
        elif artifact.handler in mtd.NAMES and (why := mtd.missing(artifact)):
            problems.append(f"{describe(artifact)}: {why}")
        if artifact.encrypted:
            problems.append(f"{describe(artifact)}: encrypted artifacts are not supported "
                            "(no AES decryption key support)")
    return problems


def _has(artifact: Artifact, need: str) -> bool:
    if need == "mtd":
        return bool(artifact.device or artifact.mtdname)
    return bool(getattr(artifact, need))


@dataclass
class _Run:
    plan: InstallPlan
    settings: Settings
    reporter: Reporter | None
    workdir: str
    by_name: dict[str, list[Artifact]] = field(default_factory=dict)
    pre_pending: set[str] = field(default_factory=set)
    pre_done: bool = False
    pending: list[tuple[Artifact, str]] = field(default_factory=list)  # spooled, not installed yet
    spooled: list[str] = field(default_factory=list)
    scripts: dict[str, scripts.Script] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    step: int = 0

    @property
    def steps(self) -> int:
        return len(self.plan.artifacts())

    def emit(self, name: str, phase: str, done: int = 0, total: int | None = None) -> None:
        if self.reporter is not None:
            self.reporter(Event(self.step, self.steps, name, phase, done, total))

    def progress(self, total: int | None = None) -> Progress:
        """Byte progress of one artifact; ``total`` when known (its stored size, not compressed)."""
        return lambda name, done, _total: self.emit(name, "install", done, total)


def install(members: CpioReader, plan: InstallPlan, settings: Settings | None = None,
            reporter: Reporter | None = None) -> Report:
    """Install ``plan`` from the remaining ``members`` of an opened bundle (``swu.cpio.open_bundle``)."""
    settings = settings or Settings()
    problems = refusals(plan)
    if problems:
        raise SwuError("; ".join(problems))
    with _workdir(settings) as workdir:
        state = _Run(plan, settings, reporter, workdir)
        for artifact in plan.artifacts():
            state.by_name.setdefault(artifact.filename, []).append(artifact)
        pre = scripts.Phase.PRE
        state.pre_pending = {a.filename for a in plan.scripts if scripts.runs_in(a.handler, pre)}
        _maybe_pre(state)
        for member in members:
            _member(state, member)
            _maybe_pre(state)
        missing = sorted(set(state.by_name) - state.seen)
        if missing:
            written = any(r.written for r in state.results)
            raise InstallError(f"Required image file(s) missing from the bundle: {', '.join(missing)}",
                               None, written=written)
        _run_phase(state, scripts.Phase.POST)
        env = _bootenv(state)
        updated = _sw_versions(state)
        state.emit("", "done")
        return Report(tuple(state.results), tuple(state.skipped), tuple(state.spooled), env,
                      updated)


@contextlib.contextmanager
def _workdir(settings: Settings) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="swupdate-", dir=settings.tmpdir)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _member(state: _Run, member: MemberReader) -> None:
    artifacts = state.by_name.get(member.name)
    if not artifacts:
        log.get().info("swu", step="skip", member=member.name, reason="not required")
        state.skipped.append(member.name)
        member.skip()
        return
    state.seen.add(member.name)
    first = artifacts[0]
    if first.sha256:
        member.expect_sha256(first.sha256)
    if first.section is Section.SCRIPTS:
        state.step += 1
        state.emit(member.name, "script")
        state.scripts[member.name] = scripts.spool(first, member, Call(state.settings, state.progress(),
                                                                       member.skip), state.workdir)
        state.pre_pending.discard(member.name)
        return
    if not state.pre_done or len(artifacts) > 1:
        path = os.path.join(state.workdir, f"spool-{len(state.spooled)}")
        state.spooled.append(member.name)
        state.emit(member.name, "spool")
        with open(path, "wb") as out:
            for chunk in member.chunks():
                out.write(chunk)
        state.pending += [(a, path) for a in artifacts]
        log.get().info("swu", step="spool", member=member.name, bytes=member.header.size)
        return
    _install_one(state, first, member, member.skip, member.header.size)


def _install_one(state: _Run, artifact: Artifact, src: Readable, finish: Callable[[], None],
                 size: int | None) -> None:
    state.step += 1
    what = describe(artifact)
    total = None if artifact.compressed else size
    state.emit(artifact.filename, "install", 0, total)
    installer = INSTALLERS[artifact.handler]
    log.get().info("swu", step="install", artifact=artifact.filename, handler=artifact.handler, where=what)
    result: Result | None = None
    try:
        result = installer(artifact, decompressing(src, artifact.compressed, what),
                           Call(state.settings, state.progress(total), finish))
        finish()  # the rest of the member (gzip stops at its end marker): checksum and sha256
    except InstallError:
        raise
    except SwuError as exc:
        wrote = result is not None and result.written > 0
        raise InstallError(str(exc), what, written=wrote) from None
    state.results.append(result)


def _maybe_pre(state: _Run) -> None:
    """Run the pre-install scripts once all of them have arrived, then install what was spooled."""
    if state.pre_pending:
        return
    if not state.pre_done:
        _run_phase(state, scripts.Phase.PRE)
        if state.plan.partitions:
            state.emit("partitions", "partitions")
            log.get().info("swu", step="partitions", count=len(state.plan.partitions))
            ubi.apply_partitions(state.plan.partitions)
        state.pre_done = True
    pending, state.pending = state.pending, []
    for artifact, path in pending:
        with open(path, "rb") as f:
            _install_one(state, artifact, f, lambda: None, os.fstat(f.fileno()).st_size)
    for _, path in pending:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _run_phase(state: _Run, phase: scripts.Phase) -> None:
    for artifact in state.plan.scripts:
        if scripts.runs_in(artifact.handler, phase) and artifact.filename in state.scripts:
            state.emit(artifact.filename, "script")
            log.get().info("swu", step="script", script=artifact.filename, phase=phase.value)
            scripts.run_script(state.scripts[artifact.filename], phase)


def _bootenv(state: _Run) -> dict[str, str] | None:
    changes = [c for r in state.results for c in r.env_changes]
    changes += [(v.name, v.value) for v in state.plan.bootenv]
    if not changes:
        return None
    state.emit("bootenv", "bootenv")
    config = bootenv.read_config(state.settings.fw_env_config)
    return bootenv.store(config, changes, lock=state.settings.fw_env_lock)


def _sw_versions(state: _Run) -> tuple[str, ...]:
    named = [a for a in state.plan.artifacts() if a.name and a.version]
    if not named:
        return ()
    path = Path(state.settings.sw_versions)
    versions = read_sw_versions(path)
    for artifact in named:
        assert artifact.name is not None and artifact.version is not None
        versions[artifact.name] = artifact.version
    write_sw_versions(path, versions)
    return tuple(a.name for a in named if a.name)
