"""Stop every other process before the root is released: the executor, run by PID 1.

Who must go is decided in ``stage2.processes`` (plain snapshots of ``/proc`` and ``is_victim``); this
module carries it out and reports.

``terminate_all`` (PID 1 only): one SIGTERM pass, then a wait on exit events (pidfds, polled with a
deadline, reaping as PID 1 must), then rounds of *freeze and kill*: SIGSTOP sweeps over ``/proc`` until
the freeze is complete (stopped processes do not fork, so a fork bomb converges), SIGKILL to every
stopped victim, SIGCONT, and a wait on their pidfds. No fixed sleeps (OpenWrt sleeps 4 s, then 2 s per
kill, and gives up after 10 passes); every wait is an upper bound.

Three things make the freeze hold against a churning fork bomb (each was needed in the tests):
a sweep signals each process as soon as it has read its ``stat`` (no ``cmdline`` read: that waits
on the target's mmap lock while it forks); the freeze is complete only after two consecutive clean
sweeps (nothing new, every signalled victim seen stopped, nothing vanished between listing and
reading), because a stop does not interrupt a ``fork()`` in progress; and the executing thread
runs at nice -20 meanwhile, or fifty runnable bomb processes starve it to seconds per sweep.

What survives is reported (``TerminateReport``); survivors in uninterruptible sleep (state ``D``) are
``unkillable``, and the stage2 machine must abort before writing anything when that list is not empty.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from stage2.processes import (
    GONE_STATES,
    KTHREADD_PID,
    ProcessInfo,
    is_victim,
    list_pids,
    read_process,
    snapshot,
)
from wrtcore import children, log
from wrtcore.errors import NotPid1
from wrtcore.namespaces import in_initial_pid_namespace

#: A signalled victim in these states runs no user code, so it cannot be inside a fork that returns:
#: stopped, traced, or blocked in the kernel (D: it will act on the stop when it wakes up).
SETTLED_STATES = frozenset({"T", "t", "D", *GONE_STATES})


# --------------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Ended:
    """A victim that is gone: ``signal`` is the last one we sent before it ended."""

    pid: int
    name: str
    signal: str
    seconds: float
    status: str | None = None


@dataclass(frozen=True)
class Survivor:
    pid: int
    name: str
    state: str
    cmdline: tuple[str, ...] = ()


@dataclass(frozen=True)
class TerminateReport:
    ended: tuple[Ended, ...]
    survivors: tuple[Survivor, ...]
    term_sent: int
    stop_sweeps: int
    kill_passes: int
    converged: bool
    term_seconds: float
    kill_seconds: float
    total_seconds: float
    vanished: int = 0
    untracked: int = 0

    @property
    def terminated(self) -> tuple[Ended, ...]:
        return tuple(e for e in self.ended if e.signal == "SIGTERM")

    @property
    def killed(self) -> tuple[Ended, ...]:
        return tuple(e for e in self.ended if e.signal == "SIGKILL")

    @property
    def unkillable(self) -> tuple[Survivor, ...]:
        """Survivors in uninterruptible sleep: the upgrade must not write while they live."""
        return tuple(s for s in self.survivors if s.state == "D")

    @property
    def ok(self) -> bool:
        return not self.survivors

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["terminated"] = len(self.terminated)
        data["killed"] = len(self.killed)
        data["unkillable"] = [asdict(s) for s in self.unkillable]
        data["ok"] = self.ok
        return data


# --------------------------------------------------------------------------------------------------
# Executor


@dataclass
class _Tracked:
    pid: int
    name: str
    pidfd: int
    first_signal_at: float
    last_signal: int | None = None  # the last SIGTERM/SIGKILL sent (SIGSTOP/SIGCONT do not end anyone)
    ended_at: float | None = None
    status: int | None = None


_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGKILL)


@dataclass
class _Run:
    """The executor's bookkeeping: live victims (by pid, each pinned by a pidfd), the ended, the reaped."""

    reap: Callable[[], list[tuple[int, int]]]
    live: dict[int, _Tracked] = field(default_factory=dict)
    ended: list[_Tracked] = field(default_factory=list)
    awaiting_status: dict[int, _Tracked] = field(default_factory=dict)
    vanished: int = 0
    untracked: int = 0

    def track(self, info: ProcessInfo, now: float) -> _Tracked | None:
        """The tracked entry for ``info`` (opening its pidfd the first time); None if it is gone."""
        tracked = self.live.get(info.pid)
        if tracked is not None:
            return tracked
        try:
            pidfd = os.pidfd_open(info.pid)
        except ProcessLookupError:
            self.vanished += 1
            return None
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # out of descriptors (thousands of processes): no ceremony for this one
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
            self.untracked += 1
            return None
        tracked = _Tracked(info.pid, info.name, pidfd, now)
        self.live[info.pid] = tracked
        return tracked

    def send(self, tracked: _Tracked, signo: int) -> bool:
        """Signal through the pidfd (no pid-reuse race). False if the process has already exited."""
        try:
            signal.pidfd_send_signal(tracked.pidfd, signo)
        except ProcessLookupError:
            self._mark_ended(tracked, time.monotonic())
            return False
        if signo in _ENDING_SIGNALS:
            tracked.last_signal = signo
        return True

    def _mark_ended(self, tracked: _Tracked, now: float) -> None:
        if tracked.ended_at is not None:
            return
        tracked.ended_at = now
        os.close(tracked.pidfd)
        self.live.pop(tracked.pid, None)
        self.ended.append(tracked)
        if tracked.status is None:
            self.awaiting_status[tracked.pid] = tracked

    def do_reap(self) -> None:
        for pid, status in self.reap():
            tracked = self.awaiting_status.pop(pid, None)
            if tracked is None:
                tracked = self.live.get(pid)  # reaped before its pidfd was polled: the status is its own
            if tracked is not None:
                tracked.status = status

    def alive(self, tracked: _Tracked) -> bool:
        """Whether the tracked process has not exited yet (its pidfd is not readable); else mark it ended."""
        if tracked.ended_at is not None:
            return False
        poller = select.poll()
        poller.register(tracked.pidfd, select.POLLIN)
        if poller.poll(0):
            self._mark_ended(tracked, time.monotonic())
            return False
        return True

    def collect_exited(self) -> None:
        """Mark every tracked process whose pidfd is readable (it has exited) as ended."""
        if not self.live:
            return
        poller = select.poll()
        by_fd = {t.pidfd: t for t in self.live.values()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        now = time.monotonic()
        for fd, _events in poller.poll(0):
            self._mark_ended(by_fd[fd], now)

    def wait(self, pids: Iterable[int], deadline: float) -> None:
        """Wait until each of ``pids`` has exited or ``deadline`` (monotonic) passes; reap meanwhile."""
        waiting = {self.live[p].pidfd: self.live[p] for p in pids if p in self.live}
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready = poller.poll(max(1, int(remaining * 1000 + 0.999)))
            now = time.monotonic()
            for fd, _events in ready:
                tracked = waiting.pop(fd)
                poller.unregister(fd)
                self._mark_ended(tracked, now)
            self.do_reap()
        self.do_reap()

    def close(self) -> None:
        for tracked in self.live.values():
            with contextlib.suppress(OSError):
                os.close(tracked.pidfd)
        self.live.clear()


def _reap_function() -> Callable[[], list[tuple[int, int]]]:
    reaper = children.installed()
    return reaper.reap if reaper is not None else children.reap_exited


def _raise_fd_limit() -> None:
    """One pidfd per live victim: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _signame(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def _describe(status: int | None) -> str | None:
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return f"killed by {_signame(os.WTERMSIG(status))}"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"status {status}"


@contextlib.contextmanager
def _boosted(nice: int = -20) -> Iterator[None]:
    """Run the calling thread at ``nice`` (Linux: per thread): a fork bomb must not starve the sweeps.

    Without it, fifty runnable bomb processes leave PID 1 a fiftieth of a CPU, a sweep takes seconds,
    and whole short-lived generations are born and die between listing and reading. A nice value,
    not a real-time class: the signalled processes still need CPU time to act on SIGSTOP.
    """
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, before)


def _keep_set(spared: Iterable[int], proc: str) -> set[int]:
    """The spared pids and their ancestors, read from ``proc`` now (a few stat reads, not a snapshot)."""
    keep: set[int] = set()
    for pid in spared:
        current = pid
        while current > 0 and current not in keep:
            keep.add(current)
            info = read_process(current, proc, cmdline=False)
            if info is None:
                break
            current = info.ppid
    return keep


def terminate_all(spare: Iterable[int], *, term_timeout: float = 5.0, kill_passes: int = 3,
                  kill_timeout: float = 5.0, max_sweeps: int = 500, proc: str = "/proc") -> TerminateReport:
    """TERM everyone but the spared (and PID 1, kernel threads, ancestors), then freeze and KILL the rest.

    ``term_timeout`` bounds the wait after SIGTERM; each of up to ``kill_passes`` passes freezes every
    victim (SIGSTOP sweeps over ``proc`` until the freeze is complete, at most ``max_sweeps``), SIGKILLs
    and SIGCONTs them, and waits up to ``kill_timeout`` for their exits. PID 1 only: as the init it
    inherits every orphan, so it reaps while it waits (through the installed reaper if any).

    The freeze is complete when two sweeps in a row find no new victim and see every stopped victim
    actually stopped: a victim that has not yet acted on SIGSTOP may be inside ``fork()`` (a stop does
    not interrupt it), and its child is listed only once it returns. Each sweep signals a process as
    soon as it has read its ``stat``, so even short-lived generations of a fork bomb are caught.
    """
    if os.getpid() != 1:
        raise NotPid1("terminate_all refused: this process is not PID 1",
                      hint="it signals every process it can see; run it only as the init of its namespace")
    logger = log.get()
    _raise_fd_limit()
    spared = {1, *spare}
    kthreadd = KTHREADD_PID if in_initial_pid_namespace() else None

    def victims_now() -> list[ProcessInfo]:
        keep = _keep_set(spared, proc)
        return [p for p in snapshot(proc, cmdline=False) if is_victim(p, keep, kthreadd_pid=kthreadd)]

    run = _Run(reap=_reap_function())
    inert: set[int] = set()  # pids last seen as zombies or kernel threads: their vanishing is harmless
    cleanup = contextlib.ExitStack()
    cleanup.enter_context(_boosted())

    def freeze_sweep(stopped: set[int]) -> tuple[int, list[tuple[int, str]], int]:
        """SIGSTOP every victim not yet stopped, as soon as it is read.

        Returns (new victims, stopped victims not yet seen stopped, listed processes that vanished
        before they could be read: one of those may have forked after the listing was taken).
        """
        keep = _keep_set(spared, proc)
        fresh = vanished = 0
        unsettled: list[tuple[int, str]] = []
        for pid in list_pids(proc):
            if pid in keep:
                continue
            info = read_process(pid, proc, cmdline=False)
            if info is None:
                if pid not in inert:
                    vanished += 1
                continue
            if not is_victim(info, keep, kthreadd_pid=kthreadd):
                inert.add(pid)
                continue
            inert.discard(pid)
            tracked = run.live.get(pid)
            # alive after its stat was read: the stat was its own (a pid is not reused while it lives)
            if pid in stopped and tracked is not None and run.alive(tracked):
                if info.state not in SETTLED_STATES:
                    unsettled.append((pid, info.state))
                continue
            fresh += 1
            tracked = run.track(info, time.monotonic())
            if tracked is not None and run.send(tracked, signal.SIGSTOP):
                stopped.add(pid)
        return fresh, unsettled, vanished

    start = time.monotonic()
    term_sent = sweeps = passes = 0
    converged = True
    term_done = kill_done = start
    try:
        # 1. one polite pass, then wait on exit events
        victims = victims_now()
        logger.info("terminate.term", victims=len(victims), spared=sorted(spared))
        for victim in victims:
            tracked = run.track(victim, time.monotonic())
            if tracked is not None and run.send(tracked, signal.SIGTERM):
                logger.debug("terminate.signal", signal="SIGTERM", pid=victim.pid, name=victim.name)
                term_sent += 1
        run.wait(list(run.live), start + term_timeout)
        term_done = time.monotonic()
        logger.info("terminate.term_done", exited=len(run.ended), remaining=len(run.live),
                    duration=round(term_done - start, 4))

        # 2. freeze and kill, from fresh listings, at most kill_passes times
        while passes < kill_passes:
            run.collect_exited()
            run.do_reap()
            if not victims_now():
                break
            passes += 1
            stopped: set[int] = set()
            pass_converged = clean_before = False
            for _ in range(max_sweeps):
                sweeps += 1
                fresh, unsettled, vanished = freeze_sweep(stopped)
                clean = not fresh and not unsettled and not vanished
                logger.debug("terminate.sweep", sweep=sweeps, fresh=fresh, unsettled=unsettled[:5],
                             vanished=vanished, stopped=len(stopped))
                if clean and clean_before:
                    pass_converged = True
                    break
                if not clean:
                    os.sched_yield()  # let the signalled ones run into the stop
                clean_before = clean
            converged = converged and pass_converged
            targets = [run.live[pid] for pid in sorted(stopped) if pid in run.live]
            logger.info("terminate.kill", kill_pass=passes, victims=len(targets), sweeps=sweeps,
                        converged=pass_converged)
            for tracked in targets:
                if run.send(tracked, signal.SIGKILL):
                    run.send(tracked, signal.SIGCONT)
            run.wait([t.pid for t in targets], time.monotonic() + kill_timeout)
        kill_done = time.monotonic()

        run.collect_exited()
        run.do_reap()
        keep = _keep_set(spared, proc)
        left = [p for p in snapshot(proc) if is_victim(p, keep, kthreadd_pid=kthreadd)]
    finally:
        run.close()
        cleanup.close()
    end = time.monotonic()

    ended = tuple(
        Ended(t.pid, t.name, _signame(t.last_signal) if t.last_signal is not None else "none",
              round((t.ended_at or end) - t.first_signal_at, 4), _describe(t.status))
        for t in run.ended
    )
    survivors = tuple(Survivor(p.pid, p.name, p.state, p.cmdline) for p in left)
    report = TerminateReport(
        ended=ended, survivors=survivors, term_sent=term_sent, stop_sweeps=sweeps, kill_passes=passes,
        converged=converged, term_seconds=round(term_done - start, 4),
        kill_seconds=round(kill_done - term_done, 4), total_seconds=round(end - start, 4),
        vanished=run.vanished, untracked=run.untracked,
    )
    summary: dict[str, Any] = {
        "terminated": len(report.terminated), "killed": len(report.killed),
        "survivors": [f"{s.name}({s.pid}) {s.state}" for s in survivors],
        "sweeps": sweeps, "passes": passes, "duration": report.total_seconds,
    }
    if report.unkillable:
        logger.error("terminate.unkillable", processes=[f"{s.name}({s.pid})" for s in report.unkillable],
                     **summary)
    elif survivors:
        logger.warning("terminate.incomplete", **summary)
    else:
        logger.info("terminate.done", **summary)
    return report
