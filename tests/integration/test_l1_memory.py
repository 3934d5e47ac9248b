"""L1 is bounded by the bytes it holds (CACHE_L1_MAX_BYTES), not only by its count: a worker that reads
more large items than the bound keeps its memory near its baseline plus the bound."""

from __future__ import annotations

import http.client
import json
import os
import re
from pathlib import Path

from config import load_config
from tests.support import Gunicorn, RedisServer, seed_items

ITEMS, BODY_BYTES = 3000, 60_000  # 180 MB of bodies: far past the default bound
SLACK = 30 * 1024 * 1024  # the allocator's and the reads' own memory beside L1's bytes


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def read_all(port: int, ids: list[str]) -> set[str]:
    """GET each id over one keep-alive connection; the X-Cache tiers seen."""
    conn, tiers = http.client.HTTPConnection("127.0.0.1", port, timeout=10), set()
    try:
        for item_id in ids:
            conn.request("GET", f"/items/{item_id}")
            response = conn.getresponse()
            assert response.status == 200 and len(response.read()) > BODY_BYTES
            tiers.add(response.getheader("X-Cache"))
    finally:
        conn.close()
    return tiers


def test_one_worker_reading_more_than_the_bound_stays_within_it(tmp_path):
    bound = load_config({}).l1_max_bytes
    database_url = f"sqlite:///{tmp_path / 'items.sqlite3'}"
    ids = seed_items(database_url, ITEMS, "big", lambda i: json.dumps({"data": os.urandom(BODY_BYTES // 2).hex()}))
    with RedisServer() as redis_server:
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_server.url, "ACCESS_LOG": "false"}
        with Gunicorn(env, workers=1) as server:
            assert server.proc is not None
            children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
            (worker,) = map(int, children)
            read_all(server.port, ids[:20] * 2)  # imports, pools and threads warmed: the worker's baseline
            baseline = rss(worker)
            tiers = read_all(server.port, ids) | read_all(server.port, ids)
            after = rss(worker)
    mib = 2**20
    print(f"worker RSS: baseline {baseline / mib:.1f} MiB, after {after / mib:.1f} MiB, bound {bound / mib:.0f} MiB")
    assert "lru" in tiers  # L1 held some: the bound evicts, it does not turn L1 off
    assert after < baseline + bound + SLACK
