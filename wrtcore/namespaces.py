"""Where this process lives: the machine's own PID namespace, or one made for a sandbox."""

from __future__ import annotations

import os

PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial PID namespace's fixed inode number (include/linux/proc_ns.h)


def in_initial_pid_namespace() -> bool:
    """True on a real machine or in a VM; False inside a PID namespace (the sandbox device), where
    pid 2 is an ordinary process and /dev/watchdog belongs to the host."""
    try:
        return os.readlink("/proc/self/ns/pid") == f"pid:[{PROC_PID_INIT_INO}]"
    except OSError:
        return False
