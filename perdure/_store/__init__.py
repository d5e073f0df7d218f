"""Opening a store from a database URL."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from perdure._store._base import Store

_SYNCHRONOUS = ("FULL", "NORMAL", "OFF", "EXTRA")


def sqlite_path(url: str) -> str:
    """``sqlite:///perdure.db`` -> ``perdure.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    rest = url[len("sqlite://") :].split("?", 1)[0]
    if not rest.startswith("/") or len(rest) < 2:
        raise ValueError(
            f"malformed SQLite URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    return rest[1:]


def sqlite_options(url: str) -> dict[str, str]:
    """Options of a SQLite URL.

    ``?synchronous=NORMAL`` trades power-loss durability for speed (FULL is the
    default); ``?io=thread`` runs SQLite on its own thread instead of the loop.
    """
    query = parse_qs(urlparse(url).query)
    unknown = set(query) - {"synchronous", "io"}
    if unknown:
        raise ValueError(f"unknown SQLite URL option(s) {sorted(unknown)} in {url!r}")
    synchronous = query.get("synchronous", ["FULL"])[-1].upper()
    if synchronous not in _SYNCHRONOUS:
        raise ValueError(
            f"synchronous must be one of {', '.join(_SYNCHRONOUS)} in {url!r}, got {synchronous!r}"
        )
    io = query.get("io", ["loop"])[-1].lower()
    if io not in ("loop", "thread"):
        raise ValueError(f"io must be 'loop' or 'thread' in {url!r}, got {io!r}")
    return {"synchronous": synchronous, "io": io}


def open_store(url: str) -> Store:
    scheme = urlparse(url).scheme.lower()
    if scheme == "sqlite":
        from perdure._store._sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), **sqlite_options(url))
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
