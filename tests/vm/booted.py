"""A VM boot as far as the tests of the boot side need it: the init complete, the ``done`` step over
(the overlay is the real one, or the switch from tmpfs happened), the console shell answering."""

from __future__ import annotations

from wrtvm.runner import VM, Shell


def shell_after_done(vm: VM, timeout: float = 120.0) -> Shell:
    vm.wait_event("- init complete -", timeout=timeout)
    vm.wait_event("- done -", timeout=timeout)
    shell = Shell(vm)
    shell.wait_ready(timeout=60)
    return shell
