"""Storage: one module per concept, the in-memory twin beside the Redis one."""
