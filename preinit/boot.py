"""The preinit hooks in OpenWrt's order, each run at most once, and the ``done`` step of a boot.

OpenWrt's ``/etc/preinit`` sources ``/lib/preinit/*`` in glob order, each file adding functions to hook
lists, and runs ``preinit_essential`` then ``preinit_main``; a function runs at most once
(``PI_RAN_<func>``) even when several lists name it. Here the lists are data (``MAIN``, ``FAILSAFE``,
``MOUNT_ROOT``), named after OpenWrt's files, and ``State.run`` keeps the run-once rule. A hook that
raises is logged and the boot goes on with the next one (preinit must not leave the box unbootable).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from preinit import failsafe, lastupgrade, mount_root, restore, sysinfo, trigger
from preinit.settings import Settings
from preinit.settings import load as load_settings
from wrtcore import cmdline as cmdline_mod
from wrtcore import log

ARCHIVES = ("/sysupgrade.tgz", "/tmp/sysupgrade.tar")


@dataclass
class State:
    """What the hooks share and decide, in the order they run."""

    settings: Settings
    cmdline: dict[str, str]
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: bool = False  # failsafe: the rest of preinit_main does not run
    board_name: str | None = None
    consoles: list[str] = field(default_factory=list)
    failsafe: trigger.Trigger | None = None
    shells: object | None = None
    network: dict[str, object] | None = None
    ssh: dict[str, object] | None = None  # failsafe's dropbear: its port and host keys
    handover: str | None = None
    overlay: str | None = None
    archive: str | None = None
    report: str | None = None
    restored: list[str] = field(default_factory=list)

    def run(self, hooks: tuple[tuple[str, Hook], ...]) -> None:
        for name, hook in hooks:
            if self.stopped:
                return
            if name in self.ran:
                continue
            self.ran.append(name)  # before running: a hook that runs a list naming itself stops there
            try:
                with log.step(name):
                    hook(self)
            except Exception as exc:
                self.failed.append(name)
                log.get().error("preinit hook failed", hook=name, error=f"{type(exc).__name__}: {exc}",
                                traceback=traceback.format_exc())


Hook = Callable[[State], None]


# -- preinit_main ---------------------------------------------------------------------------------
def hook_sysinfo(state: State) -> None:
    state.board_name = sysinfo.write()


def hook_indicate_preinit(state: State) -> None:
    print("- preinit -", flush=True)
    for problem in state.settings.problems:
        log.get().warning("preinit setting", problem=problem)


def hook_failsafe_wait(state: State) -> None:
    state.consoles = trigger.active_consoles()
    found = trigger.decide(state.cmdline, no_failsafe=state.settings.no_failsafe,
                           seconds=state.settings.failsafe_wait, consoles=state.consoles)
    if found is None:
        return
    if found.how == "button":
        print(f"- failsafe button {found.detail} was pressed -", flush=True)
    state.failsafe = found
    log.get().info("failsafe requested", trigger=found.how, detail=found.detail)


def hook_run_failsafe(state: State) -> None:
    if state.failsafe is None:
        return
    state.run(FAILSAFE)
    state.handover = failsafe.wait_for_upgrade()
    state.stopped = True  # OpenWrt exits preinit here: the init takes the hand-over file


def hook_indicate_regular(state: State) -> None:
    print("- regular preinit -", flush=True)


def hook_mount_root(state: State) -> None:
    """80_mount_root (do_mount_root): mount_root start, the preinit_mount_root hooks, the restore."""
    state.overlay = mount_root.start()
    state.run(MOUNT_ROOT)


def hook_publish_report(state: State) -> None:
    """The boot partition's report, or the overlay's in-progress record when a cut left only that."""
    lastupgrade.publish(state.report, restored=state.restored)


# -- preinit_mount_root (inside 80_mount_root) -------------------------------------------------------
def hook_move_config(state: State) -> None:
    found = mount_root.move_config(state.cmdline.get("root", ""))
    state.archive = found["archive"]
    state.report = found["report"]


def hook_restore_config(state: State) -> None:
    for archive in ARCHIVES:
        if os.path.exists(archive):
            print("- config restore -", flush=True)
            result = restore.extract(archive, "/")
            state.restored += result["restored"]
            log.get().info("config restored", archive=archive, files=len(result["restored"]),
                           refused=result["refused"])


# -- failsafe ------------------------------------------------------------------------------------------
def hook_indicate_failsafe(state: State) -> None:
    failsafe.indicate(state.settings, state.consoles)


def hook_failsafe_network(state: State) -> None:
    state.network = failsafe.network(state.settings)


def hook_failsafe_shell(state: State) -> None:
    from preinit import shells

    state.shells = shells.Shells(state.consoles).start()


def hook_failsafe_dropbear(state: State) -> None:
    from preinit import failsafe_ssh

    state.ssh = failsafe_ssh.start()


MAIN: tuple[tuple[str, Hook], ...] = (
    ("02_sysinfo", hook_sysinfo),
    ("10_indicate_preinit", hook_indicate_preinit),
    ("30_failsafe_wait", hook_failsafe_wait),
    ("40_run_failsafe_hook", hook_run_failsafe),
    ("50_indicate_regular_preinit", hook_indicate_regular),
    ("80_mount_root", hook_mount_root),
    ("90_last_upgrade_report", hook_publish_report),
)
MOUNT_ROOT: tuple[tuple[str, Hook], ...] = (
    ("79_move_config", hook_move_config),
    ("80_config_restore", hook_restore_config),
)
FAILSAFE: tuple[tuple[str, Hook], ...] = (
    ("indicate_failsafe", hook_indicate_failsafe),
    ("failsafe_network", hook_failsafe_network),
    ("failsafe_shell", hook_failsafe_shell),
    ("failsafe_dropbear", hook_failsafe_dropbear),
)


def run_hooks(state: State | None = None, hooks: tuple[tuple[str, Hook], ...] = MAIN) -> State:
    if state is None:
        line = cmdline_mod.read()
        state = State(settings=load_settings(cmdline=line), cmdline=line)
    state.run(hooks)
    return state


def done() -> None:
    """S95done: mount_root done (mark the overlay ready, or move a tmpfs overlay onto the real one),
    then delete the restored archive: a power cut before this point re-applies it on the next boot.
    A failing switch is logged and the system goes on from the tmpfs overlay (fstools goes on too)."""
    try:
        with log.step("mount_root done"):
            log.get().info("mount_root done", result=mount_root.done())
    except Exception as exc:
        log.get().error("mount_root done failed", error=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc())
    for path in ARCHIVES:
        if os.path.exists(path):
            os.unlink(path)
            os.sync()
            log.get().info("config archive removed", path=path)
    log.get().info("- done -")
