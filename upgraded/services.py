"""The init's declarative service supervisor: start, respawn, and stop services the way procd does.

The services are declared in ``/etc/upgraded/services.d/*.json``, read and validated by
``upgraded.service_config`` (``load_dir``, ``ServiceSpec``) before anything starts.

Each service runs in its own session (so its process group is its pid) and is started through the
init's ``wrtcore.children.Reaper``, whose exit callback drives respawning. Respawn follows procd's
triple: an instance that ran less than ``respawn_threshold`` seconds counts as a crash, more than
``respawn_retry`` consecutive crashes (0 = unlimited) end in a crash loop, and every restart waits
``respawn_timeout`` seconds. Timers are not threads: the init's loop asks ``next_deadline()`` and
calls ``tick()``.

``stop_all()`` is what procd's ``service_stop_all`` should have been: it may run in another thread (the
stage2 thread) while the init keeps reaping; it disables respawn, sends SIGTERM to every service's
process group, waits on exit events up to *each* service's own ``term_timeout`` (all at once, so the
whole wait is the longest timeout, not the sum), SIGKILLs whoever is still there and waits for that
too, and reports how each service ended (``StopReport``). No fixed sleep anywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from upgraded.service_config import DEFAULT_DIR, ServiceSpec, load_dir
from wrtcore import log
from wrtcore.children import Reaper

# --------------------------------------------------------------------------------------------------
# Reports

StopOutcome = Literal["term", "killed", "already_dead", "survived"]


@dataclass(frozen=True)
class ServiceStop:
    """How one service ended: exited after SIGTERM, was SIGKILLed, was not running, or outlived KILL."""

    name: str
    pid: int | None
    outcome: StopOutcome
    seconds: float
    status: str | None = None
    group_killed: bool = False  # members of its process group outlived the leader and were SIGKILLed


@dataclass(frozen=True)
class StopReport:
    services: tuple[ServiceStop, ...]
    seconds: float

    @property
    def survivors(self) -> tuple[ServiceStop, ...]:
        return tuple(s for s in self.services if s.outcome == "survived")

    @property
    def ok(self) -> bool:
        return not self.survivors

    def to_dict(self) -> dict[str, Any]:
        return {"services": [asdict(s) for s in self.services], "seconds": self.seconds, "ok": self.ok}


def describe_status(status: int | None) -> str | None:
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        try:
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"status {status}"


# --------------------------------------------------------------------------------------------------
# The supervisor

State = Literal["idle", "running", "waiting", "crashloop", "exited", "stopping", "stopped"]


@dataclass
class _Instance:
    spec: ServiceSpec
    state: State = "idle"
    pid: int | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None
    exited_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    crashes: int = 0
    starts: int = 0
    restart_at: float | None = None


class Supervisor:
    """Supervises declared services for a PID 1 that runs ``reaper.reap()`` on SIGCHLD.

    Thread model: ``start_all``, ``tick`` and the reaper callbacks run on the init's loop thread;
    ``stop_all`` and ``status`` may be called from any thread.
    """

    def __init__(self, specs: Sequence[ServiceSpec], reaper: Reaper, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate service names")
        self._reaper = reaper
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping = False
        self._instances: dict[str, _Instance] = {s.name: _Instance(s) for s in specs}

    @classmethod
    def from_dir(cls, reaper: Reaper, directory: str | os.PathLike[str] = DEFAULT_DIR) -> Supervisor:
        return cls(load_dir(directory), reaper)

    # ---- starting and respawning (init loop thread)

    def start_all(self) -> None:
        with self._lock:
            if self._stopping:
                return
            for inst in self._instances.values():
                if inst.state in ("idle", "exited", "crashloop"):
                    inst.crashes = 0
                    self._spawn(inst)

    def _open_streams(self, spec: ServiceSpec) -> list[int]:
        fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)]
        opened: dict[str, int] = {}
        for path in (spec.stdout, spec.stderr):
            if path is None:
                fds.append(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
            elif path in opened:
                fds.append(os.dup(opened[path]))
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
                opened[path] = fd
                fds.append(fd)
        return fds

    def _spawn(self, inst: _Instance) -> None:
        """Start ``inst`` (lock held). A failure to start counts as a crash."""
        spec = inst.spec
        now = self._clock()
        inst.restart_at = None
        inst.exited.clear()
        inst.starts += 1
        env = {**os.environ, **spec.env}
        fds: list[int] = []
        try:
            fds = self._open_streams(spec)
            pid = self._reaper.spawn(spec.command, env=env, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                     setsid=True, on_exit=self._exit_callback(inst))
        except OSError as exc:
            inst.pid = None
            inst.last_error = f"{spec.command[0]}: {exc.strerror or exc}"
            inst.started_at = inst.exited_at = now
            inst.exited.set()
            log.get().error("service.spawn_failed", service=spec.name, error=inst.last_error)
            self._after_exit(inst, now)
            return
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        inst.pid = pid
        inst.state = "running"
        inst.started_at = now
        inst.exited_at = None
        inst.last_error = None
        log.get().info("service.start", service=spec.name, pid=pid, start=inst.starts)

    def _exit_callback(self, inst: _Instance) -> Callable[[int, int], None]:
        def on_exit(pid: int, status: int) -> None:
            with self._lock:
                if inst.pid != pid:
                    return
                now = self._clock()
                inst.last_status = status
                inst.exited_at = now
                inst.exited.set()
                log.get().info("service.exit", service=inst.spec.name, pid=pid,
                               status=describe_status(status),
                               runtime=round(now - (inst.started_at or now), 3))
                self._after_exit(inst, now)
        return on_exit

    def _after_exit(self, inst: _Instance, now: float) -> None:
        """Decide what follows an exit (lock held): respawn later, crash loop, or stay down."""
        spec = inst.spec
        if self._stopping or inst.state in ("stopping", "stopped"):
            inst.state = "stopped"
            return
        if not spec.respawn:
            inst.state = "exited"
            return
        runtime = now - (inst.started_at if inst.started_at is not None else now)
        inst.crashes = inst.crashes + 1 if runtime < spec.respawn_threshold else 0
        if spec.respawn_retry > 0 and inst.crashes > spec.respawn_retry:
            inst.state = "crashloop"
            log.get().warning("service.crashloop", service=spec.name, crashes=inst.crashes,
                              runtime=round(runtime, 3))
            return
        inst.state = "waiting"
        inst.restart_at = now + spec.respawn_timeout
        log.get().info("service.respawn_scheduled", service=spec.name, crashes=inst.crashes,
                       delay=spec.respawn_timeout)

    def next_deadline(self) -> float | None:
        """The earliest pending respawn time (on the supervisor's clock, ``time.monotonic`` by default)."""
        with self._lock:
            if self._stopping:
                return None
            times = [i.restart_at for i in self._instances.values() if i.restart_at is not None]
        return min(times) if times else None

    def tick(self, now: float | None = None) -> None:
        """Respawn every service whose respawn time has come."""
        if now is None:
            now = self._clock()
        with self._lock:
            if self._stopping:
                return
            for inst in self._instances.values():
                if inst.state == "waiting" and inst.restart_at is not None and inst.restart_at <= now:
                    self._spawn(inst)

    # ---- stopping (any thread)

    def stop_all(self, *, kill_timeout: float = 5.0) -> StopReport:
        """Disable respawn, TERM every group, KILL each one still there after its term_timeout, report.

        The caller's init loop must keep calling ``reaper.reap()``: exits are seen through it.
        ``kill_timeout`` bounds the wait after SIGKILL (a process in uninterruptible sleep can outlive it).
        """
        logger = log.get()
        start = self._clock()
        with self._lock:
            self._stopping = True
            running: list[_Instance] = []
            results: dict[str, ServiceStop] = {}
            for inst in self._instances.values():
                inst.restart_at = None
                if inst.state == "running" and inst.pid is not None and not inst.exited.is_set():
                    inst.state = "stopping"
                    running.append(inst)
                else:
                    inst.state = "stopped"
                    results[inst.spec.name] = ServiceStop(inst.spec.name, inst.pid, "already_dead", 0.0,
                                                          describe_status(inst.last_status))
        logger.info("services.stop_all", running=[i.spec.name for i in running])

        term_sent: dict[str, float] = {}
        for inst in running:
            assert inst.pid is not None
            term_sent[inst.spec.name] = self._clock()
            _signal_group(inst.pid, signal.SIGTERM)

        # each service's own deadline, nearest first: one is killed as soon as its time is up,
        # while the others keep their grace period
        killed: dict[str, float] = {}
        for inst in sorted(running, key=lambda i: term_sent[i.spec.name] + i.spec.term_timeout):
            deadline = term_sent[inst.spec.name] + inst.spec.term_timeout
            if not inst.exited.wait(max(0.0, deadline - self._clock())):
                assert inst.pid is not None
                killed[inst.spec.name] = self._clock()
                logger.warning("service.kill", service=inst.spec.name, pid=inst.pid,
                               term_timeout=inst.spec.term_timeout)
                _signal_group(inst.pid, signal.SIGKILL)
        for inst in running:
            if inst.spec.name in killed:
                inst.exited.wait(max(0.0, killed[inst.spec.name] + kill_timeout - self._clock()))

        for inst in running:
            name = inst.spec.name
            assert inst.pid is not None
            with self._lock:
                done = inst.exited.is_set()
                exited_at = inst.exited_at
                status = inst.last_status if done else None
                if done:
                    inst.state = "stopped"
            group_killed = False
            if done and _group_alive(inst.pid):
                # the leader is gone but members of its group outlived the whole TERM phase
                group_killed = _signal_group(inst.pid, signal.SIGKILL)
            outcome: StopOutcome = ("survived" if not done else "killed" if name in killed else "term")
            end = exited_at if done and exited_at is not None else self._clock()
            results[name] = ServiceStop(name, inst.pid, outcome, round(end - term_sent[name], 4),
                                        describe_status(status), group_killed)
        report = StopReport(tuple(results[n] for n in self._instances), round(self._clock() - start, 4))
        for item in report.services:
            logger.info("service.stopped", service=item.name, pid=item.pid, outcome=item.outcome,
                        duration=item.seconds, status=item.status)
        (logger.error if report.survivors else logger.info)(
            "services.stopped", duration=report.seconds, survivors=[s.name for s in report.survivors])
        return report

    # ---- reporting (any thread)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per service: state, pid, starts, crashes, last exit, uptime; like procd's service list."""
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for name, inst in self._instances.items():
                running = inst.state in ("running", "stopping")
                out[name] = {
                    "state": inst.state,
                    "running": running,
                    "pid": inst.pid if running else None,
                    "command": list(inst.spec.command),
                    "starts": inst.starts,
                    "crashes": inst.crashes,
                    "respawn": inst.spec.respawn and not self._stopping,
                    "last_exit": describe_status(inst.last_status),
                    "last_error": inst.last_error,
                    "uptime": round(now - inst.started_at, 3) if running and inst.started_at else None,
                    "restart_in": (round(max(0.0, inst.restart_at - now), 3)
                                   if inst.restart_at is not None else None),
                    "term_timeout": inst.spec.term_timeout,
                }
        return out


def _signal_group(pgid: int, signo: int) -> bool:
    try:
        os.killpg(pgid, signo)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
