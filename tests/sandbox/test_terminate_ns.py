"""terminate_all for real, as PID 1 of a fresh PID + mount namespace (never on the machine's processes).

Run: .venv/bin/pytest -m sandbox tests/sandbox/test_terminate_ns.py -s
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nsutil

from stage2 import processes, terminate
from wrtcore import children, syscalls

pytestmark = pytest.mark.sandbox

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)

IGNORER = """
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(int(sys.argv[1]), b"i")
while True:
    signal.pause()
"""

PROMPT = """
import os, signal, sys
os.write(int(sys.argv[1]), b"p")
while True:
    signal.pause()
"""

HOLDER = """
import os, signal, sys
os.chdir(sys.argv[2])
f = open("held.log", "a")
f.write("holding\\n"); f.flush()
os.write(int(sys.argv[1]), b"h")
while True:
    signal.pause()
"""

# Fork bomb, capped by design: a process may only fork after taking a token from a shared pipe,
# and returns it when it exits, so at most 1 + TOKENS bomb processes live at once, while forks go
# on as fast as tokens come back. Every process forks in a loop; children live LOW-HIGH seconds, the
# root forever. SIGTERM is ignored (inherited), so only the freeze + KILL phase can end it.
BOMB = """
import os, random, select, signal, sys, time
tok_r, tok_w, ready = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
LOW, HIGH = float(sys.argv[4]), float(sys.argv[5])
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
end = None
os.write(ready, b"b")
while end is None or time.monotonic() < end:
    timeout = None if end is None else max(0.0, end - time.monotonic())
    if not select.select([tok_r], [], [], timeout)[0]:
        continue
    try:
        os.read(tok_r, 1)
    except BlockingIOError:
        continue
    if os.fork() == 0:
        random.seed()
        end = time.monotonic() + random.uniform(LOW, HIGH)
os.write(tok_w, b"t")
os._exit(0)
"""

HELPER = """
import os, signal, subprocess, sys
sub = subprocess.Popen([sys.executable, "-c", "import signal\\nwhile True: signal.pause()", "subhelper"])
os.write(int(sys.argv[1]), b"s")
sub.wait()
"""

TOKENS = 48


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("sandbox tests need root (namespaces, mounts)")


def _read_ready(fd: int, count: int, loop: nsutil.NsLoop, timeout: float = 20.0) -> bytes:
    got = b""

    def enough() -> bool:
        nonlocal got
        with contextlib.suppress(BlockingIOError):
            got += os.read(fd, 64)
        return len(got) >= count

    if not loop.run(enough, timeout):
        raise RuntimeError(f"only {got!r} of {count} ready signals")
    return got


def _holders_of(path: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") == path:
                        found.append(int(entry))
    return found


def scenario_mixed(workdir: str) -> dict[str, Any]:
    reaper = children.installed()
    assert reaper is not None and os.getpid() == 1
    loop = nsutil.NsLoop(reaper)
    ready_r, ready_w = os.pipe2(os.O_NONBLOCK)
    os.set_inheritable(ready_w, True)
    tok_r, tok_w = os.pipe()
    os.set_blocking(tok_r, False)
    os.set_inheritable(tok_r, True)
    os.set_inheritable(tok_w, True)
    os.write(tok_w, b"t" * TOKENS)

    # a tmpfs only this namespace sees; the holder keeps its cwd and a file open there
    held_dir = os.path.join(workdir, "held")
    os.makedirs(held_dir, exist_ok=True)
    syscalls.mount("tmpfs", held_dir, "tmpfs", 0, "size=1m")

    w = str(ready_w)
    pid_ignorer = reaper.spawn(nsutil.python_argv(IGNORER, w, "ignorer"))
    pid_prompt = reaper.spawn(nsutil.python_argv(PROMPT, w, "prompt"))
    pid_holder = reaper.spawn(nsutil.python_argv(HOLDER, w, held_dir, "holder"))
    pid_helper = reaper.spawn(nsutil.python_argv(HELPER, w, "helper"))
    pid_bomb = reaper.spawn(nsutil.python_argv(BOMB, str(tok_r), str(tok_w), w, "0.1", "0.6", "bomb"))
    _read_ready(ready_r, 5, loop)
    # let the bomb grow to most of its cap
    grown = loop.run(lambda: len(nsutil.pids_tagged("bomb")) >= TOKENS // 2, 20.0)
    bomb_before = len(nsutil.pids_tagged("bomb"))
    subhelpers = nsutil.pids_tagged("subhelper")
    assert len(subhelpers) == 1, subhelpers
    held_file = os.path.join(held_dir, "held.log")
    holders_before = _holders_of(held_file)
    umount_busy = False
    try:
        syscalls.umount(held_dir)
    except OSError as exc:
        umount_busy = exc.errno == errno.EBUSY

    # spare only the sub-helper: its parent (the helper) must be spared as its ancestor
    report = terminate.terminate_all({subhelpers[0]}, term_timeout=1.5, kill_passes=3, kill_timeout=3.0)

    after = processes.snapshot()
    holders_after = _holders_of(held_file)
    umount_error = None
    try:
        syscalls.umount(held_dir)
    except OSError as exc:
        umount_error = str(exc)
    alive_helper = os.path.exists(f"/proc/{pid_helper}") and os.path.exists(f"/proc/{subhelpers[0]}")
    return {
        "report": report.to_dict(),
        "terminated": [e.pid for e in report.terminated],
        "killed": [e.pid for e in report.killed],
        "pids": {"ignorer": pid_ignorer, "prompt": pid_prompt, "holder": pid_holder,
                 "helper": pid_helper, "subhelper": subhelpers[0], "bomb": pid_bomb},
        "bomb_grown": grown, "bomb_before": bomb_before, "bomb_after": nsutil.pids_tagged("bomb"),
        "holders_before": holders_before, "holders_after": holders_after,
        "umount_busy_before": umount_busy, "umount_error_after": umount_error,
        "alive_helper": alive_helper,
        "left": [[p.pid, p.name, p.state, list(p.cmdline[-1:])] for p in after if p.state != "Z"],
    }


def test_terminate_all_in_namespace(tmp_path: Path) -> None:
    _need_root()
    res = nsutil.run_in_pid_ns(lambda: scenario_mixed(str(tmp_path)), timeout=90)
    rep = res["report"]
    pids = res["pids"]
    ended = {e["pid"]: e for e in rep["ended"]}
    print(f"\nterminate: total {rep['total_seconds']}s (TERM phase {rep['term_seconds']}s, "
          f"freeze+kill {rep['kill_seconds']}s), TERM sent {rep['term_sent']}, "
          f"ended {len(rep['ended'])} ({res['report']['terminated']} by TERM, "
          f"{res['report']['killed']} by KILL), sweeps {rep['stop_sweeps']}, passes {rep['kill_passes']}, "
          f"vanished {rep['vanished']}")
    print(f"bomb: {res['bomb_before']} processes before, {len(res['bomb_after'])} after")
    print(f"prompt ended: {ended.get(pids['prompt'])}")
    print(f"ignorer ended: {ended.get(pids['ignorer'])}")
    print(f"left: {res['left']}")

    # nothing survives, and the freeze converged
    assert rep["survivors"] == [] and rep["ok"], rep["survivors"]
    assert rep["unkillable"] == []
    assert rep["converged"]
    # the prompt one ended by TERM, fast (well inside the 1.5 s TERM budget)
    assert pids["prompt"] in res["terminated"]
    assert ended[pids["prompt"]]["signal"] == "SIGTERM"
    assert ended[pids["prompt"]]["status"] == "killed by SIGTERM"
    assert ended[pids["prompt"]]["seconds"] < 1.0
    # the TERM-ignoring one had to be KILLed
    assert pids["ignorer"] in res["killed"]
    assert ended[pids["ignorer"]]["status"] == "killed by SIGKILL"
    # the file holder is gone and its filesystem can be unmounted (it was busy before)
    assert res["holders_before"] == [pids["holder"]]
    assert res["umount_busy_before"]
    assert pids["holder"] in ended
    assert res["holders_after"] == []
    assert res["umount_error_after"] is None
    # the fork bomb converged to zero processes
    assert res["bomb_grown"], res["bomb_before"]
    assert res["bomb_after"] == []
    assert pids["bomb"] in res["killed"]
    assert rep["stop_sweeps"] >= 2
    # spared: the sub-helper and (as its ancestor) the helper; nothing else left but PID 1
    assert res["alive_helper"]
    assert pids["helper"] not in ended and pids["subhelper"] not in ended
    assert sorted(p[0] for p in res["left"]) == sorted([1, pids["helper"], pids["subhelper"]])


def scenario_bomb_churn() -> dict[str, Any]:
    reaper = children.installed()
    assert reaper is not None
    loop = nsutil.NsLoop(reaper)
    ready_r, ready_w = os.pipe2(os.O_NONBLOCK)
    os.set_inheritable(ready_w, True)
    tok_r, tok_w = os.pipe()
    os.set_blocking(tok_r, False)
    os.set_inheritable(tok_r, True)
    os.set_inheritable(tok_w, True)
    os.write(tok_w, b"t" * TOKENS)
    # children live 5-30 ms: the population turns over all the time while the freeze runs
    bomb = reaper.spawn(nsutil.python_argv(BOMB, str(tok_r), str(tok_w), str(ready_w), "0.005", "0.03",
                                           "bomb"))
    _read_ready(ready_r, 1, loop)
    forks_seen: set[int] = set()

    def busy() -> bool:
        forks_seen.update(nsutil.pids_tagged("bomb"))
        return len(forks_seen) >= 200

    churning = loop.run(busy, 20.0)
    report = terminate.terminate_all(set(), term_timeout=0.3, kill_passes=3, kill_timeout=3.0)
    return {"report": report.to_dict(), "bomb": bomb, "churning": churning, "forks_seen": len(forks_seen),
            "after": nsutil.pids_tagged("bomb")}


def test_fork_bomb_with_fast_churn_converges() -> None:
    _need_root()
    res = nsutil.run_in_pid_ns(scenario_bomb_churn, timeout=60)
    rep = res["report"]
    print(f"\nchurning bomb ({res['forks_seen']} distinct pids seen before): total {rep['total_seconds']}s, "
          f"freeze+kill {rep['kill_seconds']}s, sweeps {rep['stop_sweeps']}, passes {rep['kill_passes']}, "
          f"killed {rep['killed']}, ended after TERM {rep['terminated']}, vanished {rep['vanished']}, "
          f"converged {rep['converged']}")
    survivors = [(x["pid"], x["name"], x["state"]) for x in rep["survivors"]]
    print(f"survivors: {survivors}; after: {res['after']}")
    assert res["churning"]
    assert rep["ok"] and rep["converged"]
    assert res["after"] == []
    assert res["bomb"] in [e["pid"] for e in rep["ended"] if e["signal"] == "SIGKILL"]


def scenario_nothing_to_do() -> dict[str, Any]:
    start = time.monotonic()
    report = terminate.terminate_all(set(), term_timeout=5.0, kill_passes=3, kill_timeout=5.0)
    return {"report": report.to_dict(), "seconds": time.monotonic() - start}


def test_nothing_to_kill_returns_at_once() -> None:
    _need_root()
    res = nsutil.run_in_pid_ns(scenario_nothing_to_do, timeout=30)
    print(f"\nempty namespace: terminate_all took {res['seconds']:.4f}s")
    assert res["report"]["ok"] and res["report"]["ended"] == []
    assert res["report"]["kill_passes"] == 0
    assert res["seconds"] < 1.0  # no fixed sleeps: nothing to wait for


def scenario_prompt_only() -> dict[str, Any]:
    reaper = children.installed()
    assert reaper is not None
    loop = nsutil.NsLoop(reaper)
    ready_r, ready_w = os.pipe2(os.O_NONBLOCK)
    os.set_inheritable(ready_w, True)
    pids = [reaper.spawn(nsutil.python_argv(PROMPT, str(ready_w), f"prompt{i}")) for i in range(4)]
    _read_ready(ready_r, len(pids), loop)
    report = terminate.terminate_all(set(), term_timeout=10.0, kill_passes=3, kill_timeout=5.0)
    return {"report": report.to_dict(), "pids": pids}


def test_prompt_processes_do_not_wait_for_the_timeout() -> None:
    _need_root()
    res = nsutil.run_in_pid_ns(scenario_prompt_only, timeout=60)
    rep = res["report"]
    print(f"\n4 prompt processes, term_timeout 10 s: terminate_all took {rep['total_seconds']}s")
    assert sorted(e["pid"] for e in rep["ended"]) == sorted(res["pids"])
    assert all(e["signal"] == "SIGTERM" for e in rep["ended"])
    assert rep["total_seconds"] < 5.0
    assert rep["kill_passes"] == 0


# ---- D state: a writer blocked on a frozen ext4 cannot be killed and must be reported unkillable

WRITER = """
import os, sys
fd = os.open(os.path.join(sys.argv[2], "data"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(int(sys.argv[1]), b"w")
while True:
    os.write(fd, b"x" * 4096)
    os.fsync(fd)
"""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def scenario_d_state(mnt: str) -> dict[str, Any]:
    reaper = children.installed()
    assert reaper is not None
    loop = nsutil.NsLoop(reaper)
    ready_r, ready_w = os.pipe2(os.O_NONBLOCK)
    os.set_inheritable(ready_w, True)
    writer = reaper.spawn(nsutil.python_argv(WRITER, str(ready_w), mnt, "writer"))
    _read_ready(ready_r, 1, loop)
    dirfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    frozen = False
    try:
        fcntl.ioctl(dirfd, FIFREEZE, 0)
        frozen = True
        in_d = loop.run(lambda: _state(writer) == "D", 10.0)
        report = terminate.terminate_all(set(), term_timeout=0.5, kill_passes=2, kill_timeout=0.5)
        state_during = _state(writer)
    finally:
        if frozen:
            fcntl.ioctl(dirfd, FITHAW, 0)
        os.close(dirfd)
    # thawed: the pending SIGKILL takes it now
    status = None
    if loop.run(lambda: _state(writer) in ("gone", "Z"), 10.0):
        loop.run(lambda: False, 0.05)
        status = reaper.wait(writer, 5.0)
    return {"report": report.to_dict(), "writer": writer, "in_d": in_d, "state_during": state_during,
            "after_thaw_status": status}


def test_d_state_writer_is_reported_unkillable(tmp_path: Path) -> None:
    _need_root()
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    image = tmp_path / "fs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    # mounted here (a pytest tmp dir) so that this process holds the fs and can always thaw it;
    # -o loop sets autoclear: the loop device goes away with the last mount
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    guard = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        res = nsutil.run_in_pid_ns(lambda: scenario_d_state(str(mnt)), timeout=60)
    finally:
        with contextlib.suppress(OSError):  # EINVAL: not frozen (the namespace thawed it)
            fcntl.ioctl(guard, FITHAW, 0)
        os.close(guard)
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        image.unlink(missing_ok=True)
    rep = res["report"]
    brief = [(s["pid"], s["name"], s["state"]) for s in rep["unkillable"]]
    print(f"\nD-state writer {res['writer']}: in D before terminate {res['in_d']}, state after "
          f"terminate {res['state_during']}, survivors {len(rep['survivors'])}, unkillable {brief}, "
          f"took {rep['total_seconds']}s; after thaw: wait status {res['after_thaw_status']}")
    assert res["in_d"]
    assert not rep["ok"]
    assert [s["pid"] for s in rep["unkillable"]] == [res["writer"]]
    assert rep["unkillable"][0]["state"] == "D"
    # once thawed it dies of the fatal signal already pending: the kernel fixed the exit code when
    # the (default-action) SIGTERM was queued, so the status says SIGTERM although KILL came later
    assert res["after_thaw_status"] is not None and os.WIFSIGNALED(res["after_thaw_status"])
    assert os.WTERMSIG(res["after_thaw_status"]) in (15, 9)
