"""The process table as plain data, and who must go before the root is released: decided structurally.

``snapshot`` reads ``/proc`` into ``ProcessInfo`` records (tolerating processes that vanish while they
are read; ``cmdline=False`` reads ``stat`` only, which never waits on a forking target's mmap lock).
``select_victims`` decides who must be stopped: never PID 1, never kernel threads (``PF_KTHREAD`` in the
stat flags, or kthreadd and its children), never zombies, never the pids the caller spares nor any of
their ancestors. No names are hard-coded (OpenWrt's stage2 ``killall -9 telnetd dropbear ash`` and its
keep list are gone). ``is_victim`` is the same rule for one process, which the executor
(``stage2.terminate``) applies as it sweeps.

Nothing here sends a signal: unit tests assert the decisions on hand-made snapshots.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PF_KTHREAD = 0x00200000
KTHREADD_PID = 2
#: States that are not a running process: zombie, dead.
GONE_STATES = frozenset({"Z", "X", "x"})


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    name: str
    state: str
    cmdline: tuple[str, ...] = ()
    is_kernel_thread: bool = False


def parse_stat(text: str) -> tuple[int, str, str, int, int]:
    """``/proc/<pid>/stat`` -> (pid, comm, state, ppid, flags). ``comm`` may hold spaces and parens."""
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    pid = int(text[:open_paren].strip())
    comm = text[open_paren + 1:close_paren]
    rest = text[close_paren + 1:].split()
    # rest: state ppid pgrp session tty_nr tpgid flags ...
    if len(rest) < 7:
        raise ValueError(f"short stat line for pid {pid}")
    return pid, comm, rest[0], int(rest[1]), int(rest[6])


def is_kernel_thread(flags: int) -> bool:
    """The kernel's own mark on its threads (``PF_KTHREAD`` in ``/proc/<pid>/stat`` field 9)."""
    return bool(flags & PF_KTHREAD)


def read_process(pid: int, proc: str = "/proc", *, cmdline: bool = True) -> ProcessInfo | None:
    """One process from ``proc``, or None if it vanished while being read.

    ``cmdline=False`` reads ``stat`` only: reading ``cmdline`` takes the target's mmap lock, so it
    waits while the target forks, and the freeze must not wait for a fork bomb.
    """
    base = f"{proc}/{pid}"
    raw = b""
    try:
        with open(f"{base}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        if cmdline:
            with open(f"{base}/cmdline", "rb") as fb:
                raw = fb.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT):
            return None
        raise
    try:
        spid, comm, state, ppid, flags = parse_stat(stat)
    except ValueError:
        return None  # an empty read: the process is being torn down
    argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return ProcessInfo(spid, ppid, comm, state, argv, is_kernel_thread(flags))


def list_pids(proc: str = "/proc") -> list[int]:
    with os.scandir(proc) as entries:
        return sorted(int(e.name) for e in entries if e.name.isdigit())


def snapshot(proc: str = "/proc", *, cmdline: bool = True) -> list[ProcessInfo]:
    """Every process ``proc`` lists, tolerating those that vanish between listing and reading."""
    infos: list[ProcessInfo] = []
    for pid in list_pids(proc):
        info = read_process(pid, proc, cmdline=cmdline)
        if info is not None:
            infos.append(info)
    return infos


def spared_closure(snapshot: Iterable[ProcessInfo], spare: Iterable[int]) -> set[int]:
    """``spare`` plus every ancestor of a spared pid that the snapshot knows."""
    parent = {p.pid: p.ppid for p in snapshot}
    closed: set[int] = set()
    for pid in spare:
        current: int | None = pid
        while current is not None and current > 0 and current not in closed:
            closed.add(current)
            current = parent.get(current)
    return closed


def select_victims(snapshot: Sequence[ProcessInfo], spare: set[int], *,
                   kthreadd_pid: int | None = KTHREADD_PID) -> list[ProcessInfo]:
    """The processes to stop, by pid: everything but PID 1, kernel threads, zombies, spared and ancestors.

    Kernel threads are those flagged ``is_kernel_thread`` and, as a second line for snapshots without
    flags, ``kthreadd_pid`` and its children. Pass ``kthreadd_pid=None`` inside a PID namespace: there
    kernel threads are invisible and pid 2 is an ordinary process.
    """
    keep = spared_closure(snapshot, spare)
    victims = [p for p in snapshot if is_victim(p, keep, kthreadd_pid=kthreadd_pid)]
    return sorted(victims, key=lambda p: p.pid)


def is_victim(p: ProcessInfo, keep: set[int], *, kthreadd_pid: int | None = KTHREADD_PID) -> bool:
    """The rule for one process, given ``keep``: the spared pids already closed over their ancestors."""
    return (
        p.pid > 1
        and not p.is_kernel_thread
        and (kthreadd_pid is None or (p.pid != kthreadd_pid and p.ppid != kthreadd_pid))
        and p.state not in GONE_STATES
        and p.pid not in keep
    )

