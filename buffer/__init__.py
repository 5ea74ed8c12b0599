"""The SQLite store-and-forward outbox: append, lease, acknowledge, evict, report."""
