-- The cache outbox (writes that never reached Redis, listed for any process to repair) is redundant now:
-- every committed write is in the change log, which the change follower applies to Redis whoever wrote it.
DROP TABLE IF EXISTS cache_outbox;
