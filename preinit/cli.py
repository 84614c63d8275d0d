"""``preinit [start|done]``: run the boot hooks, or the done step after a completed boot.

Exit codes: 0 done (a failing hook is logged, not fatal), 2 usage.
"""

from __future__ import annotations

import signal
import sys

from preinit import boot
from wrtcore import log


def main(argv: list[str]) -> int:
    log.setup("preinit")
    what = argv[0] if argv else "start"
    if what == "start":
        # SIGUSR1/SIGINT select failsafe during the wait (trigger.Wait); outside it they do nothing
        for signo in (signal.SIGUSR1, signal.SIGINT):
            signal.signal(signo, signal.SIG_IGN)
        boot.run_hooks()
        return 0
    if what == "done":
        boot.done()
        return 0
    print(f"usage: preinit [start|done] (got {what!r})", file=sys.stderr)
    return 2


def entry() -> None:
    sys.exit(main(sys.argv[1:]))
