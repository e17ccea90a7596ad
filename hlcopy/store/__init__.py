"""PostgreSQL storage: the only package that imports asyncpg."""

from hlcopy.store.db import Migration, Store, bundled_migrations

__all__ = ["Migration", "Store", "bundled_migrations"]
