"""The preinit hooks in OpenWrt's order, each run once, and the ``done`` step of a completed boot."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from preinit import failsafe, mount_root, restore, sysinfo
from wrtcore import cmdline, log

LAST_REPORT = "/tmp/log/last-upgrade.json"  # /var/log/last-upgrade.json, /var -> /tmp

Hook = Callable[[dict[str, object]], None]


def hook_sysinfo(state: dict[str, object]) -> None:
    state["board_name"] = sysinfo.write()


def hook_mount_root(state: dict[str, object]) -> None:
    state["overlay"] = mount_root.start()


def hook_move_config(state: dict[str, object]) -> None:
    found = mount_root.move_config(cmdline.read().get("root", ""))
    state.update(found)


def hook_restore_config(state: dict[str, object]) -> None:
    for archive in ("/sysupgrade.tgz", "/tmp/sysupgrade.tar"):
        if os.path.exists(archive):
            print("- config restore -", flush=True)
            result = restore.extract(archive, "/")
            log.get().info("config restored", archive=archive, files=len(result["restored"]),
                           refused=result["refused"])


def hook_publish_report(state: dict[str, object]) -> None:
    src = state.get("report")
    if not isinstance(src, str):
        return
    try:
        with open(src) as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        log.get().warning("last upgrade report unreadable", error=str(exc))
        return
    os.makedirs(os.path.dirname(LAST_REPORT), exist_ok=True)
    with open(LAST_REPORT, "w") as f:
        json.dump(report, f, indent=1)
    line = f"last upgrade: {report.get('outcome')}"
    if report.get("error"):
        line += f" in {report.get('failed_state')}: {report.get('error')}"
    print(line, flush=True)
    log.get().info("last upgrade", outcome=report.get("outcome"), error=report.get("error"),
                   failed_state=report.get("failed_state"), written=report.get("written"))


# preinit_main order, named after OpenWrt's /lib/preinit files; inside 80_mount_root (do_mount_root)
# come the preinit_mount_root hooks (x86's 79_move_config) and then the config restore.
HOOKS: tuple[tuple[str, Hook], ...] = (
    ("02_sysinfo", hook_sysinfo),
    ("80_mount_root", hook_mount_root),
    ("80_mount_root/79_move_config", hook_move_config),
    ("80_mount_root/config_restore", hook_restore_config),
    ("90_last_upgrade_report", hook_publish_report),
)


def hook_failsafe_wait(state: dict[str, object]) -> None:
    state["failsafe"] = True
    state["handover"] = failsafe.wait_for_upgrade()


# failsafe: no overlay, no config restore; wait for an upgrade handed over in /tmp/sysupgrade
FAILSAFE_HOOKS: tuple[tuple[str, Hook], ...] = (
    ("02_sysinfo", hook_sysinfo),
    ("40_run_failsafe_hook", hook_failsafe_wait),
)


def run_hooks(hooks: tuple[tuple[str, Hook], ...] | None = None) -> dict[str, object]:
    if hooks is None:
        hooks = FAILSAFE_HOOKS if failsafe.requested() else HOOKS
    state: dict[str, object] = {"ran": []}
    ran: list[str] = []
    for name, hook in hooks:
        if name in ran:
            continue
        with log.step(name):
            hook(state)
        ran.append(name)
    state["ran"] = ran
    return state


def done() -> None:
    """S95done: mark the overlay ready, then delete the restored archive (a power cut before this
    point re-applies it on the next boot)."""
    mount_root.done()
    for path in ("/sysupgrade.tgz", "/tmp/sysupgrade.tar"):
        if os.path.exists(path):
            os.unlink(path)
            os.sync()
            log.get().info("config archive removed", path=path)
    log.get().info("- done -")
