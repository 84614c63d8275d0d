"""The one subprocess chokepoint: argv logged, failures decoded, output captured for the error.

In a PID 1 (a ``wrtcore.children.Reaper`` is installed) children are spawned and waited for through
the reaper, so the init's ``waitpid(-1)`` never steals their status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from wrtcore import children, log
from wrtcore.errors import UpgradeError


class CommandFailed(UpgradeError):
    pass


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


def describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _drain(fd: int, out: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as f:
        out.append(f.read())


def _run_reaped(reaper: children.Reaper, argv: Sequence[str], input: bytes | None) -> Result:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = reaper.spawn(argv, stdin=in_r, stdout=out_w, stderr=err_w)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    outs: list[bytes] = []
    errs: list[bytes] = []
    threads = [threading.Thread(target=_drain, args=(out_r, outs)),
               threading.Thread(target=_drain, args=(err_r, errs))]
    for t in threads:
        t.start()
    try:
        if input:
            os.write(in_w, input)
    except BrokenPipeError:
        pass
    finally:
        os.close(in_w)
    for t in threads:
        t.join()
    status = reaper.wait(pid)
    assert status is not None
    return Result(os.waitstatus_to_exitcode(status), b"".join(outs), b"".join(errs))


def run(argv: Sequence[str], *, check: bool = True, input: bytes | None = None) -> Result:
    log.get().debug("run", argv=list(argv))
    reaper = children.installed()
    try:
        if reaper is not None:
            result = _run_reaped(reaper, argv, input)
        else:
            proc = subprocess.run(list(argv), input=input, capture_output=True, check=False)
            result = Result(proc.returncode, proc.stdout, proc.stderr)
    except FileNotFoundError as exc:
        raise CommandFailed(f"{argv[0]}: not found") from exc
    if check and result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        tail = f": {err[-1]}" if err else ""
        raise CommandFailed(f"{' '.join(argv)} failed ({describe_status(result.returncode)}){tail}")
    return result
