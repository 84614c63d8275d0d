"""The sandbox's "kernel": new namespaces, the squashfs root mounted, /sbin/init exec'd as PID 1.

Run as ``python -m sandbox.nsboot ROOT_DEV CMDLINE LOG_FD CONSOLE_FD``; the device gets the JSON log
channel on fd 3 and the console on fds 0-2. It prints ``{"pid": N}`` (the host pid of the device's
PID 1) and, when that process ends, ``{"ended": "signal", "signal": "SIGHUP"}`` (reboot(2) in a
PID namespace) or
``{"ended": "exit", ...}``.
Both this process and the device die with the caller (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import tempfile

from wrtcore import syscalls

PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _say(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def boot_child(root_dev: str, cmdline: str) -> None:
    """In the new namespaces, as PID 1: mount the root like a kernel would and exec init."""
    try:
        _pdeathsig(signal.SIGKILL)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        staging = tempfile.mkdtemp(prefix="wrt-root-")
        syscalls.mount(root_dev, staging, "squashfs", syscalls.MS_RDONLY)
        os.chdir(staging)
        syscalls.pivot_root(".", "mnt")
        os.chdir("/")
        syscalls.umount("/mnt", syscalls.MNT_DETACH)
        os.dup2(4, 0)
        os.dup2(4, 1)
        os.dup2(4, 2)
        os.set_inheritable(3, True)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "WRT_CMDLINE": cmdline, "WRT_LOG_FD": "3",
               "HOME": "/root", "TERM": "linux"}
        for key in ("WRT_FAULT_STATE",):
            if key in os.environ:
                env[key] = os.environ[key]
        init = "/sbin/init"
        for token in cmdline.split():  # the kernel's init= parameter
            if token.startswith("init="):
                init = token[5:]
        os.execve(init, [init], env)
    except BaseException as exc:  # report and end this namespace
        os.write(2, f"nsboot: {exc}\n".encode())
    os._exit(127)


def main(argv: list[str]) -> int:
    root_dev, cmdline, log_fd, console_fd = argv
    os.dup2(int(log_fd), 3)
    os.dup2(int(console_fd), 4)
    for fd in {int(log_fd), int(console_fd)} - {3, 4}:
        os.close(fd)
    _pdeathsig(signal.SIGKILL)
    syscalls.unshare(syscalls.CLONE_NEWNS | syscalls.CLONE_NEWPID | syscalls.CLONE_NEWUTS
                     | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWNET)
    pid = os.fork()
    if pid == 0:
        boot_child(root_dev, cmdline)
    os.close(3)
    os.close(4)
    _say({"pid": pid})
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        _say({"ended": "signal", "signal": signal.Signals(os.WTERMSIG(status)).name})
    else:
        _say({"ended": "exit", "code": os.WEXITSTATUS(status)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
