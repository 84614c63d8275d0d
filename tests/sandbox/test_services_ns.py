"""The service supervisor for real, as PID 1 of a fresh PID + mount namespace.

Run: .venv/bin/pytest -m sandbox tests/sandbox/test_services_ns.py -s
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nsutil

from upgraded import service_config, services
from wrtcore import children

pytestmark = pytest.mark.sandbox

# argv of every service: -c CODE <ready fd> <name>; each writes "<name>\n" once it is ready
IGNORE_TERM = """
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(int(sys.argv[1]), (sys.argv[2] + "\\n").encode())
while True:
    signal.pause()
"""

PROMPT = """
import os, signal, sys
os.write(int(sys.argv[1]), (sys.argv[2] + "\\n").encode())
while True:
    signal.pause()
"""

GRACEFUL = """
import os, select, signal, sys
def on_term(_s, _f):
    select.select([], [], [], 1.0)  # a second of cleanup
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
os.write(int(sys.argv[1]), (sys.argv[2] + "\\n").encode())
while True:
    signal.pause()
"""

# crashes on its first run, runs for good on the second
CRASH_ONCE = """
import os, signal, sys
marker = sys.argv[3]
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit(3)
os.write(int(sys.argv[1]), (sys.argv[2] + "\\n").encode())
while True:
    signal.pause()
"""

ALWAYS_CRASH = "import sys; sys.exit(3)"
ONESHOT = "pass"

# the leader dies of TERM; its child, in the same process group, ignores TERM
FORKER = """
import os, signal, sys
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(int(sys.argv[1]), b"forker-child\\n")
    while True:
        signal.pause()
os.write(int(sys.argv[1]), (sys.argv[2] + "\\n").encode())
while True:
    signal.pause()
"""


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("sandbox tests need root (namespaces, mounts)")


def _svc(name: str, code: str, ready_w: int, *extra: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "command": nsutil.python_argv(code, str(ready_w), name, *extra, f"svc-{name}"),
            **keys}


def scenario_services(workdir: str) -> dict[str, Any]:
    reaper = children.installed()
    assert reaper is not None and os.getpid() == 1
    ready_r, ready_w = os.pipe2(os.O_NONBLOCK)
    os.set_inheritable(ready_w, True)
    confdir = Path(workdir, "services.d")
    confdir.mkdir()
    logfile = str(Path(workdir, "prompt.log"))
    declared = [
        _svc("stubborn", IGNORE_TERM, ready_w, term_timeout=0.5, respawn_timeout=0.1),
        _svc("stubborn2", IGNORE_TERM, ready_w, term_timeout=1.5, respawn_timeout=0.1),
        _svc("prompt", PROMPT, ready_w, term_timeout=3, respawn_timeout=0.1, stdout=logfile,
             env={"SVC_TEST": "1"}),
        _svc("graceful", GRACEFUL, ready_w, term_timeout=3, respawn_timeout=0.1),
        _svc("respawner", CRASH_ONCE, ready_w, str(Path(workdir, "crashed-once")),
             term_timeout=2, respawn_timeout=0.2),
        _svc("crasher", ALWAYS_CRASH, ready_w, respawn_timeout=0.05, respawn_retry=3),
        _svc("oneshot", ONESHOT, ready_w, respawn=False),
        _svc("forker", FORKER, ready_w, term_timeout=2, respawn_timeout=0.1),
    ]
    for item in declared:
        (confdir / f"{item['name']}.json").write_text(json.dumps(item))

    sup = services.Supervisor(service_config.load_dir(confdir), reaper)
    loop = nsutil.NsLoop(reaper, sup)
    expected = {"stubborn", "stubborn2", "prompt", "graceful", "respawner", "forker", "forker-child"}
    seen: set[str] = set()
    buf = b""

    def all_ready() -> bool:
        nonlocal buf
        with contextlib.suppress(BlockingIOError):
            buf += os.read(ready_r, 4096)
        seen.update(line.decode() for line in buf.split(b"\n")[:-1])
        st = sup.status()
        settled = st["crasher"]["state"] == "crashloop" and st["oneshot"]["state"] == "exited"
        return expected <= seen and settled

    t0 = time.monotonic()
    sup.start_all()
    ready = loop.run(all_ready, 20.0)
    ready_seconds = time.monotonic() - t0
    before = sup.status()

    reports: list[services.StopReport] = []

    def stopper() -> None:
        try:
            reports.append(sup.stop_all(kill_timeout=3.0))
        finally:
            loop.wake()

    t1 = time.monotonic()
    thread = threading.Thread(target=stopper, name="stage2")
    thread.start()
    stopped_in_time = loop.run(lambda: not thread.is_alive(), 30.0)
    stop_wall = time.monotonic() - t1
    thread.join(5.0)
    # respawn timers would fire within 0.2 s if stop_all had not disabled them
    loop.run(lambda: False, 0.6)
    after = sup.status()
    leftovers = {name: nsutil.pids_tagged(f"svc-{name}") for name in [d["name"] for d in declared]}
    with open(logfile, "rb") as f:
        log_size = len(f.read())
    return {
        "ready": ready, "ready_seconds": ready_seconds, "seen": sorted(seen),
        "before": before, "after": after, "stopped_in_time": stopped_in_time, "stop_wall": stop_wall,
        "report": reports[0].to_dict() if reports else None,
        "leftovers": leftovers, "next_deadline_after": sup.next_deadline(), "log_size": log_size,
    }


def test_services_respawn_and_stop_all(tmp_path: Path) -> None:
    _need_root()
    res = nsutil.run_in_pid_ns(lambda: scenario_services(str(tmp_path)), timeout=90)
    before, after, rep = res["before"], res["after"], res["report"]
    assert res["ready"], (res["seen"], before)
    assert rep is not None
    by_name = {s["name"]: s for s in rep["services"]}
    print(f"\nservices ready in {res['ready_seconds']:.3f}s; stop_all took {rep['seconds']}s "
          f"(wall {res['stop_wall']:.3f}s; sum of the waits if sequential would be ~"
          f"{0.5 + 1.5 + 1.0:.1f}s, the longest term_timeout hit is 1.5s)")
    for s in rep["services"]:
        print(f"  {s['name']:<10} pid={s['pid']} outcome={s['outcome']:<12} {s['seconds']:>7.4f}s "
              f"status={s['status']} group_killed={s['group_killed']}")

    # respawn after a crash: the second instance is the one running
    assert before["respawner"]["starts"] == 2 and before["respawner"]["state"] == "running"
    assert before["respawner"]["last_exit"] == "exit status 3"
    # crash loop after respawn_retry (3) consecutive short runs: 1 start + 3 respawns
    assert before["crasher"]["state"] == "crashloop" and before["crasher"]["starts"] == 4
    assert before["oneshot"]["state"] == "exited" and before["oneshot"]["starts"] == 1

    # every service ended the way its behaviour and term_timeout dictate
    assert res["stopped_in_time"]
    assert rep["ok"]
    assert by_name["stubborn"]["outcome"] == "killed"
    assert by_name["stubborn"]["status"] == "killed by SIGKILL"
    assert by_name["stubborn2"]["outcome"] == "killed"
    assert by_name["prompt"]["outcome"] == "term" and by_name["prompt"]["status"] == "killed by SIGTERM"
    assert by_name["graceful"]["outcome"] == "term" and by_name["graceful"]["status"] == "exit status 0"
    assert by_name["respawner"]["outcome"] == "term"
    assert by_name["forker"]["outcome"] == "term" and by_name["forker"]["group_killed"]
    assert by_name["crasher"]["outcome"] == "already_dead"
    assert by_name["oneshot"]["outcome"] == "already_dead"
    # per-service term_timeout respected (loose bounds: print the timings, don't race the scheduler)
    assert 0.4 <= by_name["stubborn"]["seconds"] < by_name["stubborn2"]["seconds"]
    assert by_name["stubborn2"]["seconds"] >= 1.4
    assert by_name["prompt"]["seconds"] < by_name["stubborn"]["seconds"]
    assert 0.9 <= by_name["graceful"]["seconds"] < by_name["stubborn2"]["seconds"]
    # concurrent waits: the whole stop is about the longest wait, well under the sum
    assert rep["seconds"] < 0.5 + 1.5 + 1.0

    # stop_all disabled respawn: nothing came back, no timers pending, no service process left
    assert res["next_deadline_after"] is None
    for name, st in after.items():
        assert st["state"] == "stopped", (name, st)
        assert not st["running"] and st["starts"] == before[name]["starts"], (name, st)
    assert all(not pids for pids in res["leftovers"].values()), res["leftovers"]


def scenario_nothing_running(workdir: str) -> dict[str, Any]:
    reaper = children.installed()
    assert reaper is not None
    sup = services.Supervisor([], reaper)
    start = time.monotonic()
    report = sup.stop_all()
    return {"report": report.to_dict(), "seconds": time.monotonic() - start}


def test_stop_all_with_nothing_running_is_immediate(tmp_path: Path) -> None:
    _need_root()
    res = nsutil.run_in_pid_ns(lambda: scenario_nothing_running(str(tmp_path)), timeout=30)
    print(f"\nstop_all with no services: {res['seconds']:.4f}s")
    assert res["report"]["services"] == [] and res["report"]["ok"]
    assert res["seconds"] < 0.5
