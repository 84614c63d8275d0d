"""``embedded-script`` and per-entry ``hook`` functions, run in a sandboxed Lua (``lupa``).

As in SWUpdate, the embedded script is loaded once; an entry with ``hook = "fn"`` calls ``fn(entry)``
with the entry's attributes as a table (dashes in names become underscores: ``install_if_different``)
and gets ``(true, table)`` to keep the entry (changed fields taken over), ``(true, nil)`` to skip it,
or ``false`` (or an error) to fail the description.

The sandbox: the script runs in an environment of its own holding only ``string``, ``table``, ``math``,
``utf8`` and the pure base functions (no ``io``, ``os``, ``require``, ``load*``, ``dofile``, ``debug``,
no access to Python), plus a ``swupdate`` table with the logging functions (``trace``, ``debug``,
``info``, ``warn``, ``error``) and the ``RECOVERY_STATUS`` constants; at most :data:`MAX_MEMORY` bytes
and :data:`MAX_INSTRUCTIONS` VM instructions per call. Scripts that need SWUpdate's other Lua APIs
(``swupdate.mount``, ``swupdate.getroot``...) fail with the Lua error, which is reported.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from wrtcore import log

MAX_MEMORY = 32 << 20
MAX_INSTRUCTIONS = 10_000_000
_SAFE_BASE = ("assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber", "tostring",
              "type", "xpcall", "rawequal", "rawget", "rawset", "rawlen", "setmetatable", "getmetatable")
_SETUP = """
local script, limit, logger, names = ...
local env = {}
for _, name in ipairs(names) do env[name] = _G[name] end
for _, lib in ipairs({"string", "table", "math", "utf8"}) do
  local copy = {}
  for k, v in pairs(_G[lib]) do copy[k] = v end
  env[lib] = copy
end
env.swupdate = {
  trace = function(...) logger("trace", ...) end, debug = function(...) logger("debug", ...) end,
  info = function(...) logger("info", ...) end, warn = function(...) logger("warn", ...) end,
  error = function(...) logger("error", ...) end,
  RECOVERY_STATUS = {IDLE = 0, START = 1, RUN = 2, SUCCESS = 3, FAILURE = 4, DOWNLOAD = 5, DONE = 6},
}
env.print = function(...) logger("print", ...) end
env._G = env
local chunk, err = load(script, "=embedded-script", "t", env)
if not chunk then return nil, err end
local sethook = debug.sethook
local function guarded(fn, ...)
  sethook(function() error("instruction limit exceeded", 2) end, "", limit)
  local result = table.pack(pcall(fn, ...))
  sethook()
  return table.unpack(result, 1, result.n)
end
local ok, loaded = guarded(chunk)
if not ok then return nil, loaded end
return env, guarded
"""


class HookError(Exception):
    """The embedded script cannot be loaded, or a hook failed."""


def _lupa() -> ModuleType:
    """The embedded Lua, imported when a description has Lua in it (bundles without keep working where
    ``lupa`` is not installed)."""
    try:
        return importlib.import_module("lupa")
    except ImportError:
        raise HookError("embedded-script and hooks need an embedded Lua (python module lupa), which is "
                        "not installed") from None


class HookRunner:
    """The loaded ``embedded-script``; :meth:`call` runs one hook."""

    def __init__(self, script: str) -> None:
        lupa = _lupa()
        self._lua = lupa.LuaRuntime(register_eval=False, register_builtins=False,
                                    unpack_returned_tuples=True, max_memory=MAX_MEMORY,
                                    attribute_filter=_deny)
        setup = self._lua.eval(f"function(...) {_SETUP} end")
        try:
            env, guarded = setup(script, MAX_INSTRUCTIONS, self._log, self._lua.table(*_SAFE_BASE))
        except lupa.LuaError as exc:
            raise HookError(f"embedded-script: {exc}") from None
        if env is None:
            raise HookError(f"embedded-script cannot be loaded: {guarded}")
        self._env = env
        self._guarded = guarded
        self._lua.execute("python = nil")

    @staticmethod
    def _log(level: str, *args: Any) -> None:
        log.get().info("embedded-script", level=level, message=" ".join(str(a) for a in args))

    def call(self, name: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run hook ``name`` on ``entry`` (attribute names as in sw-description); the changed entry,
        or None when the hook skips it. Raises :class:`HookError`."""
        lupa = _lupa()
        function = self._env[name]
        if function is None or lupa.lua_type(function) != "function":
            raise HookError(f"hook {name!r} is not a function of embedded-script")
        table = self._lua.table_from({k.replace("-", "_"): _to_lua(self._lua, v) for k, v in entry.items()})
        try:
            result = self._guarded(function, table)
        except (lupa.LuaError, MemoryError) as exc:
            raise HookError(f"hook {name!r}: {exc}") from None
        result = result if isinstance(result, tuple) else (result,)
        if not result or result[0] is not True:
            raise HookError(f"hook {name!r} failed: {result[1] if len(result) > 1 else 'no result'}")
        status = result[1:]
        if not status or status[0] is not True:
            raise HookError(f"hook {name!r} returned {status[0] if status else 'nothing'} (want true)")
        changed = status[1] if len(status) > 1 else None
        if changed is None:
            return None
        if lupa.lua_type(changed) != "table":
            raise HookError(f"hook {name!r} returned a {lupa.lua_type(changed)}, not a table")
        return {str(k).replace("_", "-"): _from_lua(v) for k, v in changed.items()}


def _deny(obj: object, attr: object, is_setting: bool) -> object:
    raise AttributeError("no Python access from embedded-script")


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def _from_lua(value: Any) -> Any:
    if _lupa().lua_type(value) == "table":
        items = dict(value.items())
        if items and all(isinstance(k, int) for k in items):
            return tuple(_from_lua(items[k]) for k in sorted(items))
        return {str(k): _from_lua(v) for k, v in items.items()}
    return value
