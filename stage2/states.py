"""The stage2 states and the transition table, as data (drawn into machine.mmd)."""

from __future__ import annotations

import itertools
from enum import Enum


class State(Enum):
    IDLE = "idle"
    VALIDATING = "validating"
    STOPPING_SERVICES = "stopping_services"
    TERMINATING = "terminating"
    PREPARING_RAMFS = "preparing_ramfs"
    PIVOTING = "pivoting"
    RELEASING_ROOT = "releasing_root"
    FLASHING = "flashing"
    VERIFYING = "verifying"
    SAVING_CONFIG = "saving_config"
    FINALIZING = "finalizing"
    REBOOTING = "rebooting"
    ABORTED = "aborted"
    FAILED_AFTER_WRITE = "failed_after_write"


# The forward path. `advance` moves one step along it; the post-pivot process resumes at PIVOTING.
# The ramfs is built while the services still run: it needs no quiet system, and building it first
# keeps it out of the downtime (services stopped -> first byte written).
FORWARD: tuple[State, ...] = (
    State.IDLE,
    State.VALIDATING,
    State.PREPARING_RAMFS,
    State.STOPPING_SERVICES,
    State.TERMINATING,
    State.PIVOTING,
    State.RELEASING_ROOT,
    State.FLASHING,
    State.VERIFYING,
    State.SAVING_CONFIG,
    State.FINALIZING,
    State.REBOOTING,
)

# States in which nothing has been written to the target yet: a failure there is `aborted`.
BEFORE_WRITE: frozenset[State] = frozenset(FORWARD[: FORWARD.index(State.FLASHING)])

TERMINAL_FAILURES: frozenset[State] = frozenset({State.ABORTED, State.FAILED_AFTER_WRITE})


def transition_table() -> list[dict[str, object]]:
    """The whole table: forward steps, the two failure exits, and the reboot every path ends in."""
    table: list[dict[str, object]] = []
    for src, dst in itertools.pairwise(FORWARD):
        if dst is State.REBOOTING:
            continue
        table.append({"trigger": "advance", "source": src, "dest": dst})
    running = [s for s in FORWARD if s not in (State.IDLE, State.REBOOTING)]
    # FLASHING may still abort: a write refused before its first byte (short target) wrote nothing.
    table.append({"trigger": "abort",
                  "source": [s for s in running if s in BEFORE_WRITE or s is State.FLASHING],
                  "dest": State.ABORTED})
    table.append({"trigger": "fail_after_write", "source": [s for s in running if s not in BEFORE_WRITE],
                  "dest": State.FAILED_AFTER_WRITE})
    table.append({"trigger": "reboot", "source": [State.FINALIZING, State.ABORTED, State.FAILED_AFTER_WRITE],
                  "dest": State.REBOOTING})
    return table
