"""/dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run) opens the
page served by gunicorn, which must load without a console error or a CSP violation and show its figures
change as traffic arrives; Redis going down is shown, not a crash.

DASHBOARD_SCREENSHOT=docs/dashboard.png pytest tests/integration/test_dashboard.py saves the page as a PNG
(after a longer run of traffic, so its chart has something to show)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import redis

from tests.browser import Chromium, Page, chromium_binary
from tests.support import Gunicorn, RedisServer, wait_until

pytestmark = pytest.mark.skipif(chromium_binary() is None, reason="no chromium on PATH (apt-get install chromium)")
TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRITE = {**AUTH, "Content-Type": "application/json"}
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")


def figure(page: Page, element_id: str) -> float | None:
    """The raw number behind a figure on the page (its data-value), None while it has none."""
    value = page.evaluate(f"document.getElementById({element_id!r})?.dataset.value ?? ''")
    return float(value) if value else None


def text(page: Page, element_id: str) -> str:
    return str(page.evaluate(f"document.getElementById({element_id!r}).textContent"))


def traffic(server: Gunicorn, rounds: int, tag: str) -> None:
    """Writes, a flush (so the first reads load from the database), reads on both workers (L1 and Redis
    hits), and ids that never existed (Bloom filter and negative cache)."""
    for round_ in range(rounds):
        ids = [f"{tag}-{round_}-{n}" for n in range(10)]
        for item_id in ids:
            body = json.dumps({"name": item_id}).encode()
            assert server.request("PUT", f"/items/{item_id}", body, WRITE)[0] == 201
        assert server.request("DELETE", "/admin/cache", headers=AUTH)[0] == 200
        for item_id in ids * 4:
            assert server.get(f"/items/{item_id}")[0] == 200
        for n in range(3):
            assert server.get(f"/items/never-{tag}-{round_}-{n}")[0] == 404


def test_dashboard_loads_clean_and_its_figures_follow_the_traffic(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}", "REQUEST_METRICS": "false", "API_TOKEN": TOKEN}
    with RedisServer() as redis_server, Gunicorn({**env, "REDIS_URL": redis_server.url}, workers=2) as server:
        client = redis.Redis.from_url(redis_server.url)
        # The workers build the Bloom filter in the background at start; until it exists the ids that never
        # existed below are database loads, not Bloom answers.
        wait_until(lambda: client.exists("{bloom}:meta") and not client.exists("{bloom}:build-lock"), timeout=30)
        with Chromium() as browser:
            page = browser.open(f"{server.base}/dashboard")
            wait_until(lambda: page.evaluate("document.getElementById('status').dataset.state") == "ok", timeout=15)
            before = figure(page, "reads-lru-total")
            assert before is not None and figure(page, "db-loads") == 0

            if SCREENSHOT:  # a longer run, spread out, so the chart shows rates over time
                for n in range(12):
                    traffic(server, rounds=1 + n % 3, tag=f"shot{n}")
                    time.sleep(1)
            else:
                traffic(server, rounds=2, tag="t")
            wait_until(lambda: figure(page, "reads-lru-total") > before, timeout=10)
            wait_until(lambda: (figure(page, "reads-bloom-total") or 0) > 0, timeout=10)
            assert figure(page, "db-loads") > 0 and figure(page, "reads-redis-total") > 0
            assert 0 < figure(page, "hit-ratio") < 1  # lru, redis and bloom answers over all reads
            wait_until(lambda: figure(page, "lag-mean") is not None, timeout=10)  # writes seen by the other worker
            assert figure(page, "lag-mean") > 0 and figure(page, "invalidations") > 0
            assert text(page, "breaker") == "closed" and text(page, "listener") == "subscribed"
            assert figure(page, "redis-memory") > 0 and figure(page, "l1-entries") > 0
            assert figure(page, "changelog-lag") is not None  # the change follower reports (0 while caught up)
            assert page.errors() == []
            if SCREENSHOT:
                page.screenshot(Path(SCREENSHOT))

            redis_server.kill()  # Redis down: shown on the page, which keeps refreshing

            def shows_redis_down() -> bool:
                server.get("/items/t-0-0")  # reads go on; failures open the breaker
                return text(page, "redis-memory").startswith("unavailable") and text(page, "breaker").startswith("open")

            wait_until(shows_redis_down, timeout=15, interval=0.2)
            assert page.errors() == []

            # /metrics unreachable (a proxy that hides it, a service without it): said on the page, which goes on.
            page.call("Network.enable")
            page.call("Network.setBlockedURLs", {"urls": ["*/metrics"]})
            wait_until(lambda: text(page, "status").startswith("metrics unavailable"), timeout=10)
            assert page.errors() == []  # handled: no uncaught rejection, nothing logged as an error
            page.call("Network.setBlockedURLs", {"urls": []})
            wait_until(lambda: page.evaluate("document.getElementById('status').dataset.state") == "ok", timeout=10)
            assert text(page, "redis-memory").startswith("unavailable")  # still down, still said

            # The watch can fail: an inline script is refused by the page's policy, and both reports see it.
            page.evaluate("document.head.append(Object.assign(document.createElement('script'), {textContent: '1'}))")
            errors = wait_until(page.errors, timeout=5)
            assert any(e.startswith("CSP violation: script-src") for e in errors), errors


def test_with_metrics_token_the_page_shows_figures_given_the_token_in_its_fragment_and_says_so_without(tmp_path):
    metrics_token = "dashboard-metrics-token"
    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}", "METRICS_TOKEN": metrics_token}
    with Gunicorn(env, workers=2) as server, Chromium() as browser:
        page = browser.open(f"{server.base}/dashboard#token={metrics_token}")
        wait_until(lambda: page.evaluate("document.getElementById('status').dataset.state") == "ok", timeout=15)
        assert figure(page, "reads-lru-total") is not None and page.errors() == []
        page = browser.open(f"{server.base}/dashboard")
        wait_until(lambda: "HTTP 401" in text(page, "status"), timeout=15)
        assert "#token=<METRICS_TOKEN>" in text(page, "status")
