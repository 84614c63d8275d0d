"""Scripts: ``shellscript``, ``preinstall``, ``postinstall`` and ``lua``. Needs: nothing but the file.

Each script is first copied to a private temporary directory (its sha256 checked on the way); the
installer runs them later, in document order: before the images (``preinstall``; ``shellscript`` with
``preinst``; Lua ``preinst()``) and after them (``postinstall``; ``shellscript`` with ``postinst``; Lua
``postinst()``). ``data``, when set, is the last argument of a shell script. A non-zero exit status (a
false result in Lua) stops the update.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

from swu.decompress import Readable
from swu.handlers.base import Call, InstallError, Result, copy_verified, describe
from swu.model import Artifact
from wrtcore import log, run

NAMES = ("shellscript", "preinstall", "postinstall", "lua")
NEEDS: tuple[str, ...] = ()


class Phase(Enum):
    PRE = "preinst"
    POST = "postinst"


@dataclass(frozen=True)
class Script:
    artifact: Artifact
    path: str  # the copy in the temporary directory


def runs_in(handler: str, phase: Phase) -> bool:
    if handler == "preinstall":
        return phase is Phase.PRE
    if handler == "postinstall":
        return phase is Phase.POST
    return handler in ("shellscript", "lua")


def spool(artifact: Artifact, src: Readable, call: Call, directory: str) -> Script:
    """Copy the script to ``directory`` (names are unique in a bundle) and check its sha256."""
    what = describe(artifact)
    path = os.path.join(directory, os.path.basename(artifact.filename))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
    try:
        copy_verified(src, fd, 0, what=what, progress=call.progress, name=artifact.filename)
        call.finish()
    finally:
        os.close(fd)
    return Script(artifact, path)


def run_script(script: Script, phase: Phase) -> Result:
    artifact = script.artifact
    what = describe(artifact)
    if artifact.handler == "lua":
        _run_lua(script.path, phase, what)
        return Result(script.path, 0)
    args = [phase.value] if artifact.handler == "shellscript" else []
    if artifact.data:
        args.append(artifact.data)
    with open(script.path, "rb") as f:
        shebang = f.read(2) == b"#!"
    argv = [script.path, *args] if shebang else ["/bin/sh", script.path, *args]
    result = run.run(argv, check=False)
    for line in (result.stdout + result.stderr).decode(errors="replace").splitlines():
        log.get().info("script", script=artifact.filename, phase=phase.value, output=line)
    if result.returncode != 0:
        raise InstallError(f"script {artifact.filename} ({phase.value}) failed: "
                           f"{run.describe_status(result.returncode)}", what, written=False)
    return Result(script.path, 0)


def _run_lua(path: str, phase: Phase, what: str) -> None:
    try:
        import lupa
    except ImportError:
        raise InstallError("lua scripts are not supported here (no embedded Lua: install lupa)", what,
                           written=False) from None
    with open(path, encoding="utf-8", errors="replace") as f:
        code = f.read()
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    try:
        lua.execute(code)
        fn = lua.globals()[phase.value]
        if fn is None:
            return
        outcome = fn()
    except lupa.LuaError as exc:
        raise InstallError(f"lua script failed in {phase.value}(): {exc}", what, written=False) from None
    ok = outcome[0] if isinstance(outcome, tuple) else outcome
    if ok is False or ok is None:
        raise InstallError(f"lua script {phase.value}() returned failure", what, written=False)
