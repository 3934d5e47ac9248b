"""The listener's watchdog against a real half-open connection (a proxy that stops forwarding), timed."""

from __future__ import annotations

import time

import cache
from cache import CacheEntry, SetOutcome, cache_get, cache_key, cache_set
from cache import service as cache_service
from cache.core.metrics import L1_FLUSHES
from cache.core.redis_tier import connect
from config import load_config
from tests.support import RedisServer, TcpProxy, running_cache, wait_until


def test_watchdog_detects_a_silent_connection_and_bypasses_l1(key_prefix):
    with RedisServer() as server:
        proxy = TcpProxy(server.port)
        try:
            config = load_config({"CACHE_KEY_PREFIX": key_prefix, "REDIS_SOCKET_TIMEOUT": "0.25"})
            cache_service.init_cache(config, client=connect(proxy.url, socket_timeout=0.25))
            cache_service.start_listener()
            s = running_cache()
            wait_until(lambda: s.trust.usable, timeout=5)
            key = cache_key("a")
            # Through a Python proxy on a busy machine a first call can outlast the 0.25 s timeout: retry.
            entry = CacheEntry.build("a", 1, b'{"v":"one"}')
            wait_until(lambda: cache_set(key, entry) is SetOutcome.WRITTEN and cache_get(key)[1] == "lru")
            watchdog = L1_FLUSHES.labels("watchdog")._value.get()
            proxy.pause()
            paused_at = time.monotonic()
            wait_until(lambda: not s.trust.usable, timeout=10)
            detected_after = time.monotonic() - paused_at
            listener = cache_service.running().listener
            assert listener is not None
            assert detected_after < listener.watchdog.ping_interval + listener.watchdog.pong_timeout + 1.0
            assert cache_get(key) == (cache.MISS, None)  # L1 bypassed; Redis does not answer in time
            proxy.resume()
            wait_until(lambda: s.trust.usable, timeout=10)
            assert L1_FLUSHES.labels("watchdog")._value.get() == watchdog + 1
            assert cache_get(key)[1] == "redis"
        finally:
            proxy.close()
            cache_service.reset()
