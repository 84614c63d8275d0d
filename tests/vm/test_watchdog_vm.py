"""The init's watchdog keeper on a real watchdog: QEMU's i6300esb, driven by the Linux driver in the guest.

* Fed through a long busy operation: with the timeout set short through ``system watchdog``, a CPU- and
  I/O-bound loop on the console shell runs for more than twice the timeout and the guest stays up (a
  reset ends QEMU under ``-no-reboot``).
* Then frozen: PID 1 cannot be stopped (the kernel ignores SIGSTOP for it) and its keeper is a thread,
  so the honest way to stop the pings of the real process is the keeper's own ``stop`` without magic
  close: the device stays open and armed, nobody writes to it. QEMU's watchdog then resets the guest
  (QMP event ``WATCHDOG``, QEMU exits), one timeout after the last ping, with no reboot record in the log.
* Fed through a whole upgrade: the x86 cycle with the short timeout set before ``sysupgrade``; stage2's
  re-exec in the ramfs adopts the device with that timeout and the guest ends by stage2's own reboot(2)
  (the ``rebooting`` record, no ``WATCHDOG`` event), not by a watchdog reset.

Figures (time per test, reset latency) are printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from wrtvm.device import Assets, Device
from wrtvm.runner import VM, Shell

from tests.vm.booted import shell_after_done

pytestmark = pytest.mark.vm

TIMEOUT = 8  # s, the driver timeout set through system watchdog
FREQUENCY = 1  # s between pings
BUSY = 2.5 * TIMEOUT  # s of busy work while fed


def _watchdog(shell: Shell, **args: Any) -> dict[str, Any]:
    out = shell.check(f"upgraded call system watchdog '{json.dumps(args)}'")
    reply: dict[str, Any] = json.loads(out[out.index("{"):out.rindex("}") + 1])
    return reply


def _watchdog_events(vm: VM) -> list[dict[str, Any]]:
    return [e for e in vm.qmp.events if e["event"] == "WATCHDOG"]


def test_fed_while_busy_then_reset_when_pings_stop(vm_assets: Assets, tmp_path: Path) -> None:
    start = time.monotonic()
    with Device(tmp_path / "vm", vm_assets, vm_assets.images.v1) as dev:
        vm = dev.boot()
        shell = shell_after_done(vm)
        boot_seconds = time.monotonic() - start
        assert _watchdog(shell)["status"] == "running"  # the init opened /dev/watchdog at boot
        reply = _watchdog(shell, timeout=TIMEOUT, frequency=FREQUENCY)
        assert reply == {"status": "running", "timeout": TIMEOUT, "frequency": FREQUENCY, "magicclose": False}
        # the driver's own view: i6300esb armed with the new timeout
        assert shell.check("cat /sys/class/watchdog/watchdog0/timeout").split()[-1] == str(TIMEOUT)
        assert shell.check("cat /sys/class/watchdog/watchdog0/state").split()[-1] == "active"

        # (a) busy for 2.5 timeouts: a shell loop hashing random data (fork, CPU, I/O), timed by the guest
        before = float(shell.check("cut -d' ' -f1 /proc/uptime").split()[-1])
        busy = (f"end=$(( $(cut -d. -f1 /proc/uptime) + {BUSY + 1:.0f} )); n=0; "  # whole seconds: one more
                "while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do "
                "dd if=/dev/urandom bs=64k count=8 2>/dev/null | md5sum >/dev/null; n=$((n+1)); done; "
                "echo rounds=$n")
        rounds = int(shell.check(busy, timeout=BUSY * 6).split("rounds=")[-1].split()[0])
        after = float(shell.check("cut -d' ' -f1 /proc/uptime").split()[-1])
        assert rounds > 0
        assert after - before >= BUSY  # the guest ran busy for that long, in one boot, never reset
        assert vm.returncode is None and not _watchdog_events(vm)
        assert _watchdog(shell)["status"] == "running"
        fed_seconds = after - before

        # (b) the pings stop, the device stays armed (no magic close): QEMU's watchdog resets the guest
        reply = _watchdog(shell, stop=True, magicclose=False)
        stopped = time.monotonic()
        stopped_wall = time.time()
        assert reply["status"] == "stopped"
        assert vm.wait_exit(timeout=TIMEOUT * 6) == 0  # the reset ends QEMU under -no-reboot
        latency = time.monotonic() - stopped
        events = _watchdog_events(vm)
        assert [e["data"]["action"] for e in events] == ["reset"], vm.qmp.events
        fired = events[0]["timestamp"]["seconds"] + events[0]["timestamp"]["microseconds"] / 1e6
        # the last ping was at most FREQUENCY s before the stop: the reset comes one timeout later
        assert fired - stopped_wall >= TIMEOUT - FREQUENCY - 1, (fired, stopped_wall)
        assert not [r for r in vm.records if r.get("event") == "rebooting"]  # nobody called reboot(2)
    print(f"\n  boot to shell {boot_seconds:.1f} s; fed through {fed_seconds:.1f} s of busy work "
          f"({rounds} rounds, timeout {TIMEOUT} s); reset {fired - stopped_wall:.2f} s after the pings "
          f"stopped (QEMU exit after {latency:.2f} s); test {time.monotonic() - start:.1f} s")


def test_fed_through_an_upgrade(vm_device: Device) -> None:
    start = time.monotonic()
    vm = vm_device.boot()
    shell = shell_after_done(vm)
    reply = _watchdog(shell, timeout=TIMEOUT, frequency=FREQUENCY)
    assert reply["timeout"] == TIMEOUT and reply["status"] == "running"
    vm_device.fetch_transfer(shell)
    vm.send("sysupgrade /tmp/sysupgrade.img\n")
    vm.wait_event("transition", timeout=120, state="flashing")
    flashing = time.monotonic()
    vm.wait_event("transition", timeout=180, state="rebooting")
    assert vm.wait_exit(timeout=60) == 0
    ended = time.monotonic()
    states = [r["state"] for r in vm.records if r.get("event") == "transition"]
    assert states[-5:] == ["flashing", "verifying", "saving_config", "finalizing", "rebooting"], states
    # stage2 after the re-exec adopted the handed-over device with the short timeout
    adopted = [r for r in vm.records if r.get("event") == "watchdog fed" and r.get("handed_over")]
    assert adopted and adopted[-1]["timeout"] == TIMEOUT and adopted[-1]["status"] == "running", adopted
    # the end was stage2's reboot(2): its record, and no watchdog action in QEMU
    assert [r for r in vm.records if r.get("event") == "rebooting"]
    assert not _watchdog_events(vm), vm.qmp.events
    resumed = next(r for r in vm.records if r.get("event") == "resumed from ramfs")
    last = max(r["ts"] for r in vm.records)
    print(f"\n  upgrade under a {TIMEOUT} s watchdog: flashing to exit {ended - flashing:.1f} s, "
          f"post-pivot stage2 ran {last - resumed['ts']:.1f} s (guest clock); test {ended - start:.1f} s")
