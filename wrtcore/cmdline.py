"""The kernel command line as key/value pairs.

In the sandbox there is no kernel of the device's own, so the launcher hands the device its command
line in ``WRT_CMDLINE``; everywhere else it is /proc/cmdline.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up: wrtcore.light_tuple)
if TYPE_CHECKING:
    from collections.abc import Mapping


def parse(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in text.split():
        key, _, value = token.partition("=")
        out[key] = value
    return out


def read(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The command line: ``WRT_CMDLINE`` of ``env`` (default: this process's), else /proc/cmdline."""
    text = (os.environ if env is None else env).get("WRT_CMDLINE")
    if text is None:
        try:
            with open("/proc/cmdline") as f:
                text = f.read()
        except OSError:
            text = ""
    return parse(text)
