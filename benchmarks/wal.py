"""Pages per commit in a SQLite WAL file: what each durable commit had to write.

A SQLite commit in WAL mode appends one frame (a page and a 24-byte header) per page
it changed, then fsyncs. The W4 note compares perdure's commits with the raw loop's:
a sequential step writes at least the history page its events go to, the single-row
limit its row and its index entry.

The file format (https://www.sqlite.org/fileformat.html#the_write_ahead_log): a
32-byte header with the page size and two salts, then frames whose header holds the
page number, the database size in pages (non-zero only on a commit's last frame) and
the salts. A checkpoint that restarts the log changes the salts, so frames of an
earlier generation left further on in the file are not counted.
"""

from __future__ import annotations

import struct
from pathlib import Path

_HEADER = 32
_FRAME_HEADER = 24
_MAGIC = (0x377F0682, 0x377F0683)


def sqlite_path(url: str) -> str:
    """The database file of a ``sqlite:///path[?options]`` URL."""
    return url[len("sqlite:///") :].split("?", 1)[0]


def wal_pages_per_commit(database: str | Path) -> float | None:
    """Frames per commit over the commits in ``database``'s WAL now; None without any.

    Read it while a connection is open: closing the last one checkpoints the log and
    deletes it. Covers the commits since the log last started over (up to
    ``wal_autocheckpoint`` pages, 1,000 by default): the recent, steady-state ones.
    """
    try:
        data = Path(f"{database}-wal").read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER:
        return None
    magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", data[:24])
    if magic not in _MAGIC:
        raise ValueError(f"{database}-wal is not a SQLite WAL file")
    frames = commits = pending = 0
    step = _FRAME_HEADER + page_size
    for offset in range(_HEADER, len(data) - step + 1, step):
        _page, db_size, s1, s2 = struct.unpack_from(">4I", data, offset)
        if (s1, s2) != (salt1, salt2):
            break  # an earlier generation's frames: the log started over before them
        pending += 1
        if db_size:
            frames += pending
            commits += 1
            pending = 0
    # Frames after the last commit frame belong to a transaction not (yet) committed.
    return frames / commits if commits else None
