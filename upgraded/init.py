"""upgraded as the system's init (PID 1): early mounts, preinit, services, the bus, and never exiting.

Every path ends in ``wrtcore.power.reboot``: an exception in the loop is logged and the loop goes on;
SIGTERM/SIGINT start an orderly reboot, except during an upgrade, where they are logged and ignored
(so a stray ``kill 1`` cannot cut the flash short).

An ordinary reboot (``system reboot``, SIGTERM/SIGINT; SIGUSR1 halts, SIGUSR2 powers off): the services
stop through the supervisor (SIGTERM, each up to its ``term_timeout`` on exit events, then SIGKILL),
every other process gets SIGTERM, up to 1 s on exit events, then SIGKILL; then the filesystems go
read-only (``unmount_plan``: the root first, then the others deepest first, unmounted or else
remounted read-only), sync, reboot(2). The watchdog keeps being fed until the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any

from upgraded import handover
from upgraded.bus import Bus
from upgraded.request import UpgradeRequest
from upgraded.services import Supervisor
from upgraded.system import SystemObject
from wrtcore import children, log, mounts, power, syscalls
from wrtcore import watchdog as wdt

SERVICES_DIR = "/etc/upgraded/services.d"
LAST_REPORT = "/tmp/log/last-upgrade.json"


def early_mounts() -> None:
    plan = [
        ("proc", "/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC, None),
        ("sysfs", "/sys", "sysfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC, None),
        ("devtmpfs", "/dev", "devtmpfs", syscalls.MS_NOSUID, "mode=0755"),
        ("devpts", "/dev/pts", "devpts", syscalls.MS_NOSUID | syscalls.MS_NOEXEC, "newinstance,mode=600"),
        ("tmpfs", "/tmp", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=01777"),
    ]
    for source, target, fstype, flags, data in plan:
        os.makedirs(target, exist_ok=True)
        if not os.path.ismount(target):
            try:
                syscalls.mount(source, target, fstype, flags, data)
            except OSError as exc:
                log.get().warning("early mount failed", target=target, error=str(exc))
    for d in ("/tmp/run", "/tmp/lock", "/tmp/state", "/tmp/log"):
        os.makedirs(d, exist_ok=True)


KEEP_MOUNTED = ("proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup", "cgroup2", "efivarfs", "debugfs",
                "securityfs", "pstore", "bpf", "tracefs", "mqueue", "configfs", "fusectl", "hugetlbfs")


def unmount_plan(table: list[mounts.Mount]) -> list[str]:
    """The mount points to close on the way down: the root first, then every other mount of a real
    filesystem, deepest first. Each is remounted read-only while still reachable (an overlay's upper
    filesystem stays in use by the overlay after an unmount: only the remount closes its journal),
    then unmounted where nothing holds it."""
    return ["/", *(m.mountpoint for m in reversed(table)
                   if m.mountpoint != "/" and m.fstype not in KEEP_MOUNTED)]


def unmount_all() -> list[dict[str, str]]:
    done: list[dict[str, str]] = []
    syscalls.sync()
    try:
        table = mounts.read_mountinfo()
    except OSError as exc:
        log.get().warning("mount table unreadable", error=str(exc))
        return done
    for target in unmount_plan(table):
        try:
            syscalls.mount(None, target, None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
            result = "read-only"
        except OSError as exc:
            result = f"left writable: {exc.strerror}"
        if target != "/":
            try:
                syscalls.umount(target)
                result = "unmounted" if result == "read-only" else f"unmounted ({result})"
            except OSError:
                pass  # busy (a lower or upper of the root overlay): read-only is what counts
        done.append({"mountpoint": target, "result": result})
    log.get().info("filesystems", done=done)
    return done


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


class Init:
    """The init and the ``Host`` of the system object."""

    def __init__(self, services_dir: str = SERVICES_DIR) -> None:
        self.reaper = children.Reaper()
        children.install(self.reaper)
        self.services_dir = services_dir
        self.supervisor: Supervisor | None = None
        self.bus: Bus | None = None
        self.system: SystemObject | None = None
        self.upgrading = threading.Event()
        self.shutting_down = threading.Event()
        self.watchdog: wdt.Keeper | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- signals -------------------------------------------------------------------------------
    def _on_signal(self, signo: int, _frame: FrameType | None) -> None:
        if signo == signal.SIGCHLD:
            return  # the wakeup fd does the work
        name = signal.Signals(signo).name
        if self.upgrading.is_set():
            log.get().warning("signal ignored during upgrade", signal=name)
            return
        if not self.shutting_down.is_set():
            # procd's meaning: SIGUSR1 halts, SIGUSR2 powers off, SIGTERM/SIGINT reboot
            cmd = {signal.SIGUSR1: syscalls.LINUX_REBOOT_CMD_HALT,
                   signal.SIGUSR2: syscalls.LINUX_REBOOT_CMD_POWER_OFF}.get(signal.Signals(signo),
                                                                         syscalls.LINUX_REBOOT_CMD_RESTART)
            log.get().info("signal received, shutting down", signal=name)
            threading.Thread(target=self.reboot, args=(cmd,), name="shutdown", daemon=True).start()

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signo in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signo, self._on_signal)

    # -- boot ------------------------------------------------------------------------------------
    def run_preinit(self) -> None:
        pid = self.reaper.spawn([sys.executable, "-m", "preinit", "start"])
        status = self.reaper.wait(pid)
        code = os.waitstatus_to_exitcode(status or 0)
        if code != 0:
            log.get().error("preinit failed", exit=code)

    def start_services(self) -> None:
        try:
            self.supervisor = Supervisor.from_dir(self.reaper, self.services_dir)
        except Exception as exc:
            log.get().error("services not started", error=str(exc))
            return
        self.supervisor.start_all()

    def start_bus(self) -> None:
        self.system = SystemObject(self, watchdog=lambda: self.watchdog)
        self.bus = Bus()
        self.system.register(self.bus)
        self.bus.start()
        log.get().info("bus ready", socket=self.bus.path)

    def boot(self) -> None:
        """Early work here, the rest on a thread while this (main) thread reaps and supervises."""
        log.setup("upgraded")
        self.install_signals()
        early_mounts()
        log.setup("upgraded")  # again: /proc and /dev now exist for a ``wrt.log=`` channel (VM)
        self.watchdog = wdt.adopt(dict(os.environ))
        log.get().info("- early -", pid=os.getpid())
        threading.Thread(target=self._boot_sequence, name="boot", daemon=True).start()
        self.loop()

    def _boot_sequence(self) -> None:
        try:
            self._boot_steps()
        except Exception:
            log.get().critical("boot sequence failed", traceback=traceback.format_exc())

    def _boot_steps(self) -> None:
        self.run_preinit()
        found = handover.read_failsafe()
        if found is not None:
            log.get().info("failsafe upgrade requested", image=found.path, backup=found.backup)
            self._run_upgrade(found.path, found.backup, found.env, found.command)
        log.get().info("- init -")
        self.start_services()
        self.start_bus()
        self.reaper.spawn([sys.executable, "-m", "preinit", "done"], on_exit=lambda p, s: None)
        log.get().info("- init complete -")

    def loop(self) -> None:
        while True:
            try:
                deadline = self.supervisor.next_deadline() if self.supervisor else None
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                with contextlib.suppress(InterruptedError):
                    select.select([self._wake_r], [], [], timeout)
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                self.reaper.reap()
                if self.supervisor:
                    self.supervisor.tick()
            except Exception:
                log.get().error("init loop error", traceback=traceback.format_exc())

    # -- Host --------------------------------------------------------------------------------------
    def board(self) -> dict[str, Any]:
        release: dict[str, str] = {}
        for line in _read("/etc/openwrt_release").splitlines():
            key, _, value = line.partition("=")
            if key.startswith("DISTRIB_"):
                release[key[8:].lower()] = value.strip("'\"")
        return {"kernel": os.uname().release, "hostname": os.uname().nodename,
                "board_name": _read("/tmp/sysinfo/board_name") or "generic",
                "model": _read("/tmp/sysinfo/model"), "rootfs_type": "squashfs", "release": release}

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"localtime": int(time.time()), "uptime": int(time.monotonic())}
        try:
            with open(LAST_REPORT) as f:
                info["last_upgrade"] = json.load(f)
        except (OSError, ValueError):
            info["last_upgrade"] = None
        if self.supervisor:
            info["services"] = self.supervisor.status()
        return info

    def _notify(self, record: dict[str, Any]) -> None:
        if self.bus is not None:
            self.bus.notify("system", "progress", record)

    def _stop_services(self) -> list[dict[str, Any]]:
        if self.supervisor is None:
            return []
        report = self.supervisor.stop_all()
        result: list[dict[str, Any]] = report.to_dict().get("services", [])
        return result

    def _run_upgrade(self, image: str, backup: str | None, env: dict[str, str], command: str | None) -> None:
        self.upgrading.set()
        from upgraded import upgrade  # stage2 is loaded when an upgrade starts: boot stays light

        ctx = upgrade.context(image=image, backup=backup, env=env, command=command, notify=self._notify,
                              stop_services=self._stop_services)
        upgrade.run_stage2(ctx)

    def start_upgrade(self, req: UpgradeRequest) -> None:
        self._run_upgrade(req.path, req.backup, dict(req.env), req.command)

    def reboot(self, cmd: int = syscalls.LINUX_REBOOT_CMD_RESTART) -> None:
        """An ordinary shutdown: stop services, end every process, sync, reboot(2) with ``cmd``."""
        self.shutting_down.set()
        log.get().info("- shutdown -")
        try:
            self._stop_services()
            from stage2 import terminate  # only on the way down

            result = terminate.terminate_all(spare=set(), term_timeout=1.0)
            log.get().info("- SIGTERM/SIGKILL processes -", ended=len(result.ended),
                           killed=sorted({e.name for e in result.ended if e.signal == "SIGKILL"}),
                           survivors=[s.name for s in result.survivors])
            self.reaper.reap()
            unmount_all()
        except Exception:
            log.get().error("shutdown error", traceback=traceback.format_exc())
        power.reboot("shutdown requested", cmd)


def main_init() -> None:
    init = Init()
    try:
        init.boot()
    except BaseException:
        with contextlib.suppress(Exception):
            log.get().critical("init crashed", traceback=traceback.format_exc())
    power.reboot("init ended")
