"""A replicated key-value store: one leader, several followers, semi-synchronous replication."""
