"""Opening a store from a database URL."""

from __future__ import annotations

from urllib.parse import urlparse

from perdure._store._base import Store


def sqlite_path(url: str) -> str:
    """``sqlite:///perdure.db`` -> ``perdure.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or len(rest) < 2:
        raise ValueError(
            f"malformed SQLite URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    return rest[1:]


def open_store(url: str) -> Store:
    scheme = urlparse(url).scheme.lower()
    if scheme == "sqlite":
        from perdure._store._sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres", "cockroachdb"):
        try:
            from perdure._store._cockroach import CockroachStore
            from perdure._store._postgres import PostgresStore
        except ImportError as exc:  # psycopg is an optional dependency
            raise ValueError(
                f"{scheme}:// URLs need psycopg: pip install 'perdure[postgres]' ({exc})"
            ) from exc
        return CockroachStore(url) if scheme == "cockroachdb" else PostgresStore(url)
    raise ValueError(
        f"unsupported database URL {url!r}: expected sqlite:///path.db, postgresql://... "
        "or cockroachdb://..."
    )
