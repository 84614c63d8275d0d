"""``upgraded``: the init, procd's stage2 exec contract, and the bus client.

    upgraded                      run as the system's init (PID 1 only)
    upgraded <path> <command>     procd's contract: exec'd as PID 1 with WDTFD, UPGRADE_BACKUP,
                                  UPGRADE_OPT_* in the environment
    upgraded call OBJECT METHOD [JSON] | list [PATTERN] | listen     talk to the bus
    upgraded plan IMAGE [--backup F]  print what stage2 would do (dry run, touches nothing)

Exit codes: 0 ok, 1 failure (e.g. not PID 1), 2 usage; bus calls exit with the ubus status.
"""

from __future__ import annotations

import os
import sys

from wrtcore import log

CLIENT_COMMANDS = ("call", "list", "listen")


def _exec_contract(argv: list[str]) -> int:
    from upgraded import handover, upgrade
    from wrtcore import watchdog

    if os.getpid() != 1:
        print("this tool needs to run as pid 1", file=sys.stderr)
        return 1
    try:
        found = handover.from_exec(argv, dict(os.environ))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    # procd chroot()ed into the prefix to exec us from RAM: escape it, keep the prefix as cwd.
    prefix_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    os.chroot(".")
    os.fchdir(prefix_fd)
    os.close(prefix_fd)
    log.setup("upgraded")
    watchdog.adopt(dict(os.environ))
    ctx = upgrade.context(image=found.path, backup=found.backup, env=found.env, command=found.command)
    upgrade.run_stage2(ctx)  # never returns
    return 1


def _plan(argv: list[str]) -> int:
    import argparse

    from stage2 import before
    from stage2.plan import Target, plan_upgrade
    from wrtcore import blockdev

    parser = argparse.ArgumentParser(prog="upgraded plan")
    parser.add_argument("image")
    parser.add_argument("--backup")
    parser.add_argument("--disk", help="target disk (default: the boot disk from root= on the cmdline)")
    args = parser.parse_args(argv)
    disk = args.disk or before.boot_disk()
    plan = plan_upgrade(image=args.image, image_size=os.path.getsize(args.image),
                        payload_length=before.payload_length(args.image),
                        target=Target(disk, blockdev.size(disk)), backup=args.backup,
                        backup_exists=bool(args.backup) and os.path.isfile(args.backup),
                        env=dict(os.environ))
    for line in plan.describe():
        print(line)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] in CLIENT_COMMANDS:
        from upgraded.client import client_main

        return client_main(argv)
    if argv and argv[0] == "plan":
        from wrtcore.errors import UpgradeError

        try:
            return _plan(argv[1:])
        except (UpgradeError, OSError) as exc:
            print(f"upgraded: {exc}", file=sys.stderr)
            return 1
    if not argv or argv == ["init"]:
        if os.getpid() != 1:
            print("this tool needs to run as pid 1", file=sys.stderr)
            return 1
        from upgraded.init import main_init

        main_init()  # never returns
        return 1
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    return _exec_contract(argv)


def entry() -> None:
    sys.exit(main(sys.argv[1:]))
