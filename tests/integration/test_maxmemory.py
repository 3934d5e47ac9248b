"""A Redis at maxmemory refuses writes (OOM) or evicts keys (issue 27): no worker may serve an item older than
its last acknowledged write beyond the invalidation lag, and the log says so once, not once per refused call.
Two workers, a redis-server of the test's own at a small maxmemory, full before the service starts; 150 items
of 10 KB written twice, each round then read three times through both workers (L1 long-lived, so it cannot
hide a stale copy). Before the fix about 200 of the 450 reads after round 2 answered round 1 from L1: the
write script was refused before its announcement, and the change follower could not take its lease."""

from __future__ import annotations

import pytest

from tests.integration.fleet import database_url
from tests.integration.maxmemory import Outcome, read_round, refusals, service, warnings, write_round

ITEMS, SIZE, READS = 150, 10_000, 3


@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lru"])
def test_a_full_redis_never_serves_an_older_version(policy, request, tmp_path):
    ids = [f"oom-{n}" for n in range(ITEMS)]
    with database_url(request, tmp_path) as db_url, service(policy, "1400kb", db_url) as (_, server):
        out = Outcome()
        first = write_round(server, ids, 1, SIZE, out)
        read_round(server, first, READS, out)  # both workers' L1 take round 1
        second = write_round(server, ids, 2, SIZE, out)
        read_round(server, second, READS, out)
        logged, refused = warnings(server), refusals(server)
        summary = (
            f"{policy}: {out.reads} reads, {out.stale} stale, tiers {dict(out.tiers)}, {len(logged)} warnings, "
            f"{refused:.0f} refusals counted; {out.examples}"
        )
        print(summary)
        assert out.write_failures == 0 and out.read_failures == 0, summary
        assert out.stale == 0, summary
        assert refused > 0, summary  # Redis really was full
        # One line a process about the refusals, the policy's at start: not one a refused call.
        assert len(logged) <= 5, summary + "\n" + "\n".join(logged[:20])
