"""stream-agent: the daemon that composes ingest, cacher, pruner and the memory."""
