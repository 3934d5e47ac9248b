"""The change follower: the database's change log (written by its own triggers, whoever wrote the row)
applied in order, in batches, to every tier, so the cache follows what the database committed.

Per change: a deletion becomes a versioned tombstone in Redis; an insert or update turns any older copy
into a *floor* at the new version (a miss that refuses older fills) and adds the id to the Bloom filter.
Both are announced, so every process's L1 drops its copy (this one's too: the announcements carry an
origin of their own). Applying a change twice is harmless (the scripts only move versions forward), so
a crash between applying a batch and saving the position only repeats work.

One follower works at a time per cache (a lease: the fleet lock, renewed every pass); every listening
process runs one, ready to take over within LEASE_MS. Its position is saved in the database after each
batch, so it survives restarts of the service and of Redis, and catches up on what happened while every
instance was down. PostgreSQL wakes it within milliseconds (LISTEN/NOTIFY); SQLite is polled.

After each pass that reached the end of the log it announces in Redis how far the log is applied there
(`applied_key`): a process that doubted Redis waits for that to pass the log's head before trusting Redis
again (cache/core/trust.py). Redis that lost writes (restarted empty, or failed over to a replica that had not
received them) is found out by that announcement going missing or backwards, and by this follower's own
calls failing or its lease lapsing; each time the follower rewinds REWIND_SECONDS into the log and applies
it again, so no copy older than a recent change can come back (a fill read before the change, a write
that landed late) once the announcement says the log is applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from cache.changelog import eviction, warm
from cache.core.background import Background
from cache.core.entry import CacheEntry, jittered
from cache.core.guard import RedisDown
from cache.core.item_cache import ItemCache
from cache.core.lock import Lease
from cache.core.metrics import CHANGELOG_APPLIED, CHANGELOG_GAPS, CHANGELOG_LAG
from cache.core.redis_tier import FLUSH_ALL, encode_flush
from db import KEY_LIFETIME, DatabaseUnavailable, ItemStore
from db.changes import Change, ChangeBatch, ChangeCursor

logger = logging.getLogger(__name__)

BATCH = 1000
CHUNK = 500  # keys per FLOOR_MANY call and ids per Bloom filter add: a call of a few ms, others served between
# The most new floors of one call announced key by key; more are announced by one flush of every L1. Each
# message costs every listener of the fleet a parse and an L1 lookup, a flush only the later re-reads of
# the entries it dropped: a statement's few rows keep L1, a bulk change (hundreds of rows a chunk) flushes.
MOST_ANNOUNCED = 100
LEASE_MS = 3000  # a dead follower's lease frees itself within this; renewed every pass
WAIT_SECONDS = 0.2  # the longest wait between looks at the log (SQLite's poll; PostgreSQL's fallback)
GATHER_SECONDS = 0.01  # after a wake-up, let a burst of commits gather into one batch (one pass, not many)
# ... and longer after a batch Redis already held every change of (the service's own writes): a stream of
# them costs a few passes a second, not one per write; a write from elsewhere waits at most this much more.
GATHER_HELD_SECONDS = 0.05
SAVE_INTERVAL = 1.0  # the position is saved at most this often (a restart repeats at most this much work)
RETRY_SECONDS = 1.0  # after the database or Redis failed
PURGE_INTERVAL = 60.0  # seconds between purges of applied log rows and old tombstones
LOG_RETENTION = 3600.0  # applied log rows are kept this long (for a second cache on the same database)
# How far back a Redis outage puts cached versions in doubt: a read's fill and a write's cache update land
# within a request's deadline (REQUEST_TIMEOUT, 10 s at most by default) of its database read or commit,
# and a failover loses only the last moments of acknowledged writes.
REWIND_SECONDS = 10.0
LOST_LOG_INTERVAL = 60.0  # seconds: "Redis lost the applied position" is a warning at most this often


def applied_key(prefix: str) -> str:
    """The Redis key where the follower announces how far the log is applied (the lease's hash tag)."""
    return f"{prefix}{{changelog}}:applied"


class ChangeFollower(Background):
    thread_name = "cache-change-follower"

    def __init__(
        self,
        cache: ItemCache,
        store: ItemStore,
        check_eviction_policy: bool = True,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        """`check_eviction_policy`: the first lease holder warns of an unsupported maxmemory-policy (off for
        the embedded Redis, which has no INFO)."""
        super().__init__()
        self.cache, self.store, self.timer = cache, store, timer
        self.check_eviction_policy = check_eviction_policy
        prefix = cache.settings.key_prefix
        self.name = f"cache:{prefix}"  # the position's name in the database: one per cache namespace
        # The holder's calls are tried past an open breaker, as a write's are (cache_set): other processes may
        # trust Redis again before this one's cooldown ends, and the changes it brings must not wait for it.
        self.lease = Lease(cache.lock, f"{prefix}{{changelog}}:lease", LEASE_MS, cache.lock.past_breaker())
        self.origin = f"changelog:{cache.origin}"  # not this process's origin: its own listener applies them
        self.applied_key = applied_key(prefix)
        self.cursor: ChangeCursor | None = None  # in memory while we hold the lease
        self.announced = -1  # the least Redis must hold at applied_key; less: it lost writes
        self.rewind_due = False  # Redis may have lost or missed writes: apply the recent log again
        self.rewind_to = -1  # ... from at most here too: the position a Redis restored from a snapshot held
        self.caught_up_at = timer()
        # Redis's maxmemory-policy, said once by the first holder (cache/changelog/eviction.py)
        self.policy_checked = False
        self._next_purge = self._next_save = self._quiet_until = float("-inf")
        self._saved: ChangeCursor | None = None
        self._flush_due = False  # a bulk change's floors are in a Redis Cluster; its flush not yet published
        self.held_all = False  # the last batch brought Redis nothing new (no new floor, no delete)
        self._lister: ThreadPoolExecutor | None = None
        self._ahead: tuple[ChangeCursor, Future[ChangeBatch]] | None = None  # the next batch, being listed

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self._lister is not None:
            self._lister.shutdown(wait=True, cancel_futures=True)
            self._lister, self._ahead = None, None
        if self.lease.held is not None:
            self._save_now()
            self.lease.release()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                applied = self.run_once() if self.hold_lease() else None
            except (DatabaseUnavailable, warm.CacheUnavailable) as exc:
                tier = "database" if isinstance(exc, DatabaseUnavailable) else "redis"
                logger.warning("change follower: %s unavailable: %s", tier, exc)
                self.stopped.wait(RETRY_SECONDS)
                continue
            except Exception:  # a bug must not stop the cache following the database for good
                logger.exception("change follower failed")
                self.stopped.wait(RETRY_SECONDS)
                continue
            if applied is None:  # another process follows; be ready to take over
                self.stopped.wait(LEASE_MS / 3000)
            elif applied < BATCH and self.store.wait_for_changes(WAIT_SECONDS):
                self.stopped.wait(GATHER_HELD_SECONDS if self.held_all else GATHER_SECONDS)

    def hold_lease(self) -> bool:
        """Take or renew the lease; a follower that loses it forgets its position (the next holder's wins)."""
        held_before = self.lease.held
        if self.lease.hold():
            if self.lease.held is not held_before:  # taken anew (first, or after it lapsed: Redis away?)
                logger.info("change follower: this process follows the database's change log now")
                self.cursor, self.announced, self.rewind_due = None, -1, True
                if not self.policy_checked and self.check_eviction_policy:  # the fleet's first holder
                    eviction.warn_if_unsupported(self.cache.redis)
            self.policy_checked = True
            return True
        self.policy_checked = True
        self.cursor = None
        CHANGELOG_LAG.set(0)  # only the follower at work reports its lag
        return False

    def run_once(self) -> int:
        """Apply the next batch; returns how many changes it held (0: caught up, or Redis failed)."""
        if self.cursor is None:
            saved = self.store.load_cursor(self.name)
            self.cursor = ChangeCursor.from_text(saved) if saved else None
        if self.rewind_due and self.cursor is not None:
            self._rewind(self.cursor)
        batch = self._list(self.cursor)
        if batch.gap:
            self._flush_for_gap()
        elif batch.changes and not self.apply(batch.changes):
            self.rewind_due = True  # Redis failed: it may have lost what it took before
            self.cache.topology.refresh_soon(self.timer())  # a failover? The batch client may not know of it
            CHANGELOG_LAG.set(self.timer() - self.caught_up_at)
            return 0  # the batch (and the recent log) is applied again when it answers
        self.cursor = batch.cursor
        if len(batch.changes) < BATCH:
            self._announce(batch.upto)
        # At most every SAVE_INTERVAL (a write per batch would double the database's write load under a stream
        # of small batches; a restart repeats at most that much), and at once after a gap.
        if batch.gap or self.timer() >= self._next_save:
            self._save_now()
        if len(batch.changes) < BATCH:
            self.caught_up_at = self.timer()
        CHANGELOG_LAG.set(self.timer() - self.caught_up_at)
        self._purge()
        return len(batch.changes)

    def _list(self, cursor: ChangeCursor | None) -> ChangeBatch:
        """The batch after `cursor`: the one listed ahead if it was listed after this very cursor. A full
        batch has the next one listed meanwhile (another thread), while this one is applied to Redis: a bulk
        change takes about as long to list as to apply."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == cursor:
            batch = ahead[1].result()
        else:
            batch = self.store.changes_after(cursor, BATCH)
        if len(batch.changes) == BATCH and not batch.gap:
            if self._lister is None:  # made here, in the follower's thread: never before a fork
                self._lister = ThreadPoolExecutor(1, thread_name_prefix="cache-change-lister")
            self._ahead = (batch.cursor, self._lister.submit(self.store.changes_after, batch.cursor, BATCH))
        return batch

    def apply(self, changes: list[Change]) -> bool:
        """One pipeline for the batch; False when Redis failed or refused a floor (nothing is assumed
        applied). A refused tombstone is still announced (SET_IF_NEWER); a refused Bloom filter add (Redis at
        maxmemory) has the filter disabled until rebuilt, as a write's does.

        Floors go CHUNK keys a call (FLOOR_MANY); a chunk with more than MOST_ANNOUNCED new floors is
        announced as one flush of every L1 ("bulk_change") instead of key by key. On a Redis Cluster the keys'
        slots differ: one call a key, and a batch of more than MOST_ANNOUNCED updates is announced by one
        flush after the pipeline (retried before the next batch if that publish fails)."""
        cache = self.cache
        if self._flush_due and not self._publish_flush():
            return False
        pipe = cache.bulk.pipeline(transaction=False)
        # A floor outlives any read that began before its commit: such a read fills within CACHE_TTL.
        floor_ttl_ms = jittered(cache.settings.ttl, cache.settings.ttl_jitter)
        queued: list[tuple[str, list[str]]] = []  # per queued command: its kind and its items' keys
        updated: list[Change] = []
        for change in changes:
            if change.deleted:
                key = cache.key(change.id)
                tombstone = CacheEntry.build(change.id, change.version, None)
                cache.redis.queue_set(pipe, key, tombstone, cache.ttl_ms(tombstone), self.origin)
                queued.append(("set", [key]))
            else:
                updated.append(change)
        cluster = hasattr(cache.bulk, "get_nodes")  # a RedisCluster: every key in a slot of its own
        flush_after = cluster and len(updated) > MOST_ANNOUNCED
        chunk = 1 if cluster else CHUNK
        most_announced = -1 if flush_after else MOST_ANNOUNCED
        for start in range(0, len(updated), chunk):
            keys = [cache.key(change.id) for change in updated[start : start + chunk]]
            versions = [change.version for change in updated[start : start + chunk]]
            cache.redis.queue_floors(pipe, keys, versions, floor_ttl_ms, self.origin, most_announced)
            queued.append(("floors", keys))
        if cache.bloom is not None:
            for start in range(0, len(updated), CHUNK):
                cache.bloom.queue_add(pipe, [change.id for change in updated[start : start + CHUNK]])
                queued.append(("bloom", []))
        results = cache.redis.guard.even_if_open("changelog", "-", pipe.execute, raise_on_error=False)
        if isinstance(results, RedisDown):
            return False
        applied, floored = self._absorb_refusals(queued, results)
        self.held_all = applied and not floored and len(updated) == len(changes)
        if flush_after and floored:  # after every floor of the batch: no reader loads the old row after it
            self._flush_due = True
            if not self._publish_flush():
                return False
        if not applied:
            return False
        CHANGELOG_APPLIED.inc(len(changes))
        return True

    def _absorb_refusals(self, queued: list[tuple[str, list[str]]], results: list[object]) -> tuple[bool, bool]:
        """Count the batch's refused commands; (False if a floor was among them: the batch is applied again,
        whether any floor was written or refused: announced)."""
        refusals, applied, floored = self.cache.redis.guard.refusals, True, False
        for (kind, keys), result in zip(queued, results, strict=True):
            if kind == "set" and isinstance(result, list):  # SET_IF_NEWER's refusal, announced all the same
                refusals.refused("changelog", keys[0], result[1].decode(errors="replace"))
            elif isinstance(result, Exception):
                refusals.refused("changelog", keys[0] if keys else "{bloom}", f"{type(result).__name__}: {result}")
                applied = applied and kind == "bloom"
                self.cache.bloom_missed = self.cache.bloom_missed or kind == "bloom"
            elif kind == "floors":
                assert isinstance(result, list)
                *outcomes, error = result
                floored = floored or any(outcomes)
                for key, outcome in zip(keys, outcomes, strict=True):
                    if outcome == -1:
                        refusals.refused("changelog", key, error.decode(errors="replace"))
                        applied = False
        return applied, floored

    def _publish_flush(self) -> bool:
        """Tell every process to flush its L1 for a bulk change (due until Redis took it)."""
        message = encode_flush(self.origin, "bulk_change")
        sent = self.cache.redis.guard.even_if_open(
            "changelog", FLUSH_ALL, self.cache.bulk.publish, self.cache.redis.channel, message
        )
        self._flush_due = isinstance(sent, RedisDown)
        return not self._flush_due

    def _announce(self, upto: int) -> None:
        """Tell every process that the log is applied up to `upto` in Redis, unless Redis turns out to have
        lost what was announced before (restarted empty, failed over): then rewind, announce later."""
        held = self.cache.redis.announce_applied(self.applied_key, upto, self.announced)
        if isinstance(held, RedisDown):
            self.rewind_due = True
        elif held < self.announced:
            # At most once a minute at WARNING: under an allkeys-* maxmemory-policy it is evicted again and again.
            level = logging.WARNING if self.timer() >= self._quiet_until else logging.INFO
            self._quiet_until = self._quiet_until if level == logging.INFO else self.timer() + LOST_LOG_INTERVAL
            logger.log(
                level,
                "change follower: Redis lost the log's applied position (%d, expected %d): it lost writes; "
                "applying the log again from there, or from %.0f s back if that is earlier",
                held,
                self.announced,
                REWIND_SECONDS,
            )
            # A Redis restored from a snapshot holds the position of its snapshot: everything after it may
            # be missing, not only the last seconds.
            self.announced, self.rewind_due, self.rewind_to = held, True, held
        else:
            self.announced = max(held, upto)

    def _rewind(self, cursor: ChangeCursor) -> None:
        """Step back REWIND_SECONDS into the log, or to the position a restored Redis held if that is earlier
        (never past a change not yet delivered: safe_seq); before what the log still has is a gap (flush)."""
        target = min(self.store.log_before(REWIND_SECONDS), cursor.safe_seq)
        if self.rewind_to >= 0:
            target = min(target, self.rewind_to)
        self.cursor = ChangeCursor(target)
        self.rewind_due, self.rewind_to = False, -1

    def _save_now(self) -> None:
        """Save the position in the database, if it moved since it was last saved."""
        if self.cursor is None or self.cursor == self._saved:
            return
        self.store.save_cursor(self.name, self.cursor.to_text())
        self._saved, self._next_save = self.cursor, self.timer() + SAVE_INTERVAL

    def _flush_for_gap(self) -> None:
        """The log was purged past our position: we cannot know what changed, so nothing cached is trusted.
        CacheUnavailable when Redis does not answer: the position stays, and the next pass tries again."""
        warm.flush(self.cache)  # every item key and every process's L1
        CHANGELOG_GAPS.inc()
        logger.warning("change follower: the change log was purged past this cache's position; flushed the cache")
        if self.cache.bloom is not None:
            self.cache.bloom.disable()  # ids inserted meanwhile are unknown to it: rebuilt by maintenance

    def _purge(self) -> None:
        if self.timer() < self._next_purge or self.cursor is None:
            return
        self._next_purge = self.timer() + PURGE_INTERVAL
        settings = self.cache.settings
        purged = self.store.purge_changes(self.cursor.safe_seq, LOG_RETENTION)
        # No cached copy of a tombstone outlives the longest TTL (+ jitter): past it, it can be forgotten.
        longest = max(settings.ttl, settings.long_ttl, settings.negative_ttl) * (1 + settings.ttl_jitter)
        tombstones = self.store.purge_tombstones(longest + self.cache.lru.ttl)
        # Here, not on the request path: one process of the fleet (the lease holder) purges, once a minute.
        keys = self.store.purge_keys(KEY_LIFETIME)
        if purged or tombstones or keys:
            logger.info(
                "change follower: purged %d applied log rows, %d old tombstones, %d expired idempotency keys",
                purged,
                tombstones,
                keys,
            )
