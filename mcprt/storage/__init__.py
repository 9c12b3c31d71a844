"""Storage: the interface the domain uses (base), the group commit (batch), and two backends behind it,
SQLite (the embedded default) and PostgreSQL (a store several nodes share). `store_for(url)` picks one."""

from __future__ import annotations

from .base import Store, StoreOpenError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def store_for(url: str, *, check_wal: bool = False, **options) -> Store:
    """An unopened store for `--db`: a path or sqlite:///path (SQLite), or postgresql://user@host/db."""
    if is_postgres(url):
        from .postgres import PostgresStore
        return PostgresStore(url, **options)
    if "://" in url and not url.startswith("sqlite://"):
        raise StoreOpenError(f"--db must be a file path, sqlite:///path or postgresql://…, not {url.split('://')[0]}://…")
    from .sqlite import SqliteStore
    return SqliteStore(url, check_wal=check_wal, **options)
