"""Scripts run by fakeredis (the embedded Redis, in-process or its server) cannot reach Python or the host
(cache/embedded/lua_sandbox.py); the server's side is in tests/test_embedded_share.py."""

from __future__ import annotations

import os

import pytest
import redis
from fakeredis.commands_mixins import scripting_mixin

from cache.embedded import lua_sandbox
from cache.embedded import server as embedded
from tests.test_embedded_share import hostile_scripts


def test_the_in_process_client_runs_no_script_that_reaches_python_or_the_host(tmp_path):
    client = embedded.client()
    marker = str(tmp_path / "ran")
    for script in hostile_scripts(marker):
        with pytest.raises((redis.RedisError, AttributeError)):
            client.eval(script, 0)
        assert not os.path.exists(marker), script
    client.function_load(
        "#!lua name=hostile\nredis.register_function('hostile', function() "
        f"return loadstring('return os.execute')()('mkdir {marker}') end)",
        replace=True,
    )
    with pytest.raises(redis.RedisError):
        client.fcall("hostile", 0)
    assert not os.path.exists(marker)


def test_what_scripts_may_use_still_works():
    client = embedded.client()
    script = "redis.call('set', KEYS[1], cjson.encode({n = tonumber(ARGV[1])})); return redis.call('get', KEYS[1])"
    assert client.eval(script, 1, "sandbox:k", "3") == b'{"n":3}'
    assert client.eval("return type(os.clock())", 0) == b"number"


def test_fakeredis_still_builds_its_lua_through_the_name_the_sandbox_replaces(monkeypatch):
    """If this fails, fakeredis changed how it builds its Lua runtimes: cache/embedded/lua_sandbox.py must follow."""
    lua_sandbox.install()
    assert isinstance(scripting_mixin.LUA_MODULE, lua_sandbox._SandboxedLupa)
    monkeypatch.setattr(scripting_mixin, "LUA_MODULE", scripting_mixin.LUA_MODULE.module)
    with pytest.raises(RuntimeError, match="can still reach Python or the host.*REDIS_URL"):
        lua_sandbox._prove()  # the check that install() runs notices a runtime that is not sandboxed
    monkeypatch.delattr(scripting_mixin, "LUA_MODULE")
    with pytest.raises(RuntimeError, match="no longer builds Lua through scripting_mixin.LUA_MODULE"):
        lua_sandbox.install()


def test_scripts_cannot_load_lua_bytecode():
    """Lua 5.1 runs bytecode unverified: a crafted chunk reads and writes memory, out of any sandbox (the
    reason real Redis refuses binary chunks, CVE-2015-4335)."""
    client = embedded.client()
    assert client.eval("return type(string.dump)", 0) == b"nil"
    chunk = "\x1bLua\x51\x00" + "\x00" * 8  # a binary chunk's header: refused before it is read
    refused = "local f, err = {load}; return {{type(f), tostring(err)}}"
    for load in ("loadstring(ARGV[1])", "load(function() local c = ARGV[1]; ARGV[1] = nil; return c end)"):
        kind, err = client.eval(refused.format(load=load), 0, chunk)
        assert (kind, err) == (b"nil", b"binary chunks are not allowed"), load
    assert client.eval("return loadstring('return 6 * 7')()", 0) == 42
    assert client.eval("local n = 0; return load(function() n = n + 1; return ({'return ', '5'})[n] end)()", 0) == 5
