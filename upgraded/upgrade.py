"""Running stage2 from PID 1: the pre-pivot steps here, the rest after the re-exec from the ramfs."""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from typing import Any

from stage2 import before
from stage2.machine import Context, run
from stage2.states import State
from wrtcore import log, power

JOURNAL = "/tmp/upgrade-journal.jsonl"


def context(*, image: str, backup: str | None, env: dict[str, str], command: str | None,
            notify: Callable[[dict[str, Any]], None] = lambda e: None,
            stop_services: Callable[[], list[dict[str, Any]]] = lambda: []) -> Context:
    return Context(image=image, backup=backup, env=env, command=command, notify=notify,
                   stop_services=stop_services, fault_state=os.environ.get("WRT_FAULT_STATE") or None)


def run_stage2(ctx: Context) -> None:
    """Run the machine in this (PID 1) process. Never returns: the last step is a reboot."""
    try:
        log.journal(JOURNAL)
        ctx.report.image = ctx.image
        steps = {**before.steps(), State.REBOOTING: lambda c: power.reboot(f"sysupgrade {c.report.outcome}")}
        run(ctx, steps)
    except BaseException:
        log.get().critical("stage2 crashed", traceback=traceback.format_exc())
    power.reboot("stage2 ended without rebooting")


def start_thread(ctx: Context) -> threading.Thread:
    t = threading.Thread(target=run_stage2, args=(ctx,), name="stage2", daemon=True)
    t.start()
    return t
