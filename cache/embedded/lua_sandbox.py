"""Scripts sent to the embedded Redis (EVAL, FUNCTION/FCALL) cannot reach Python or the host.

fakeredis runs them in lupa, whose Lua has `python.eval`, `python.builtins` and attribute access to every
Python object it is handed, plus Lua's own `os.execute`, `io.popen`, `require`: whoever can send a script
would run code as this service. `install()` makes every Lua runtime fakeredis creates afterwards a
sandboxed one (no `python`, no attribute access on Python objects, no io/package/loaders, `os` and
`debug` cut to what scripts need: less than a real Redis allows), then proves it on a fresh server; it
raises RuntimeError (and the embedded Redis does not start) if a fakeredis release changed how it builds
its runtimes.

fakeredis builds them through `fakeredis.commands_mixins.scripting_mixin.LUA_MODULE.LuaRuntime(...)`
(the lupa module; for EVAL and for function libraries alike). That name is fakeredis' own: install()
replaces it with a stand-in and checks the outcome, not the name, so a change cannot pass silently.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn

# Run in every new runtime before fakeredis sets up its globals. `os.clock` is all of `os` a real Redis 7
# script has; fakeredis' function engine needs `debug.getinfo` (error lines); `load`/`loadstring` stay (they
# compile Lua against these same globals) but take text only: Lua 5.1 runs bytecode unverified, and a crafted
# chunk reads and writes memory (real Redis refuses it too). No getregistry/getmetatable/upvalues: they lead
# back to Python.
_STRIP = """
package.loaded.python = nil
python = nil
os = {clock = os.clock}
debug = {getinfo = debug.getinfo, traceback = debug.traceback}
io, package, require, module, dofile, loadfile = nil, nil, nil, nil, nil, nil
string.dump = nil
local load_text = loadstring
loadstring = function(chunk, name)
    if type(chunk) == "string" and string.byte(chunk, 1) == 27 then
        return nil, "binary chunks are not allowed"
    end
    return load_text(chunk, name)
end
load = function(reader, name)
    local parts = {}
    while type(reader) == "function" do
        local part = reader()
        if part == nil or part == "" then break end
        if type(part) ~= "string" then return nil, "reader function must return a string" end
        parts[#parts + 1] = part
    end
    if type(reader) ~= "function" then error("bad argument #1 to 'load' (function expected)", 2) end
    return loadstring(table.concat(parts), name)
end
"""

# What a script must not see, each looked up through `loadstring`, which compiles against the runtime's
# real globals even inside a function library (whose own globals are narrower): "nil" for each if sandboxed.
_FORBIDDEN = (
    "python",
    "os.execute",
    "io",
    "debug.getregistry",
    "require",
    "package",
    "dofile",
    "loadfile",
    "string.dump",
)
_PROBE = (
    "local seen = '' "
    f"for _, name in ipairs({{{', '.join(repr(name) for name in _FORBIDDEN)}}}) do "
    "seen = seen .. type(loadstring('return ' .. name)()) .. ' ' end "
    "return seen"
)
_PROBE_LIBRARY = f"#!lua name=item_cache_probe\nredis.register_function('item_cache_probe', function() {_PROBE} end)"

_lock = threading.Lock()
_proven = False


def _no_attributes(obj: object, name: object, is_setting: bool) -> NoReturn:
    raise AttributeError("scripts may not read or set attributes of Python objects")


class _SandboxedLupa:
    """Stands in for the lupa module fakeredis uses: the same module, with a sandboxed LuaRuntime."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def LuaRuntime(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (lupa's name)
        kwargs.update(register_eval=False, register_builtins=False, attribute_filter=_no_attributes)
        runtime = self.module.LuaRuntime(*args, **kwargs)
        runtime.execute(_STRIP)
        return runtime


def install() -> None:
    """Sandbox every Lua runtime fakeredis creates from now on in this process, and prove it once.
    Raises RuntimeError when a script could still reach Python or the host."""
    global _proven
    from fakeredis.commands_mixins import scripting_mixin

    with _lock:
        current = getattr(scripting_mixin, "LUA_MODULE", None)
        if current is None:
            raise RuntimeError("fakeredis no longer builds Lua through scripting_mixin.LUA_MODULE: set REDIS_URL")
        if not isinstance(current, _SandboxedLupa):
            scripting_mixin.LUA_MODULE = _SandboxedLupa(current)  # type: ignore[assignment]
        if not _proven:
            _prove()
            _proven = True


def _prove() -> None:
    """EVAL and FCALL on a fresh server see none of what `_PROBE` looks up, else RuntimeError."""
    import fakeredis

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), protocol=2)
    client.function_load(_PROBE_LIBRARY)
    seen = {"EVAL": client.eval(_PROBE, 0), "FCALL": client.fcall("item_cache_probe", 0)}
    for how, types in seen.items():
        if set(types.split()) != {b"nil"}:
            found = types.decode()
            raise RuntimeError(f"fakeredis' {how} scripts can still reach Python or the host ({found}): set REDIS_URL")
