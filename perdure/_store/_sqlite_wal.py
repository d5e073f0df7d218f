"""Give a SQLite database's WAL its working size before a worker's steps append to it.

Each durable commit appends frames to the WAL and fsyncs it. While the file grows,
that fsync must also make the new file size durable (a filesystem journal commit on
ext4): measured here, a one-row commit costs ~0.37 ms while the WAL grows and ~0.25 ms
once it has wrapped after its first checkpoint and commits overwrite blocks that
already exist. SQLite deletes the WAL when its last connection closes, so every
worker start paid that for its first ~1,000 frames (a sequential workflow's first
~300 steps). Writing the zeros up front is what PostgreSQL does for its own WAL
segments (``wal_init_zero``).

Zeros past the last frame are never taken for frames: every frame carries the salts
of the WAL header and a running checksum, and recovery stops at the first frame that
does not match (as it does over the stale frames of a WAL that started over).
"""

from __future__ import annotations

import logging
import os
import sqlite3

log = logging.getLogger("perdure.store")

_FRAME_HEADER = 24
_WAL_HEADER = 32
_CHUNK = 1 << 20


def wal_target_size(conn: sqlite3.Connection) -> int:
    """Bytes for a checkpoint's worth of frames and a quarter more (the commit that
    crosses the threshold and a batch of many runs write past it); 0 when the WAL has
    no bound because automatic checkpoints are off."""
    frames = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    if frames <= 0:
        return 0
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    return _WAL_HEADER + (frames + frames // 4) * (page_size + _FRAME_HEADER)


def preallocate_wal(conn: sqlite3.Connection) -> int:
    """Extend the WAL of ``conn``'s database with zeros up to ``wal_target_size``.

    Call it inside a write transaction: only the holder of the write lock appends
    frames or starts the WAL over, so nothing else writes where the zeros go. Returns
    the bytes added (0 for in-memory databases, rollback journals, or a WAL that is
    already that large). Failing to extend (a full disk) costs speed, not data: logged,
    not raised.
    """
    row = conn.execute("PRAGMA main.journal_mode").fetchone()
    if row is None or str(row[0]).lower() != "wal":
        return 0
    filename = next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
    if not filename:
        return 0  # in-memory or temporary database
    target = wal_target_size(conn)
    wal = f"{filename}-wal"
    try:
        fd = os.open(wal, os.O_WRONLY)
    except OSError:
        return 0  # no WAL open yet: nothing to extend
    try:
        size = os.fstat(fd).st_size
        if size >= target:
            return 0
        zeros = bytes(_CHUNK)
        offset = size
        while offset < target:
            # Real zeros, not a hole or fallocate's unwritten extents: either would
            # make the first commit over them change the file's metadata again.
            offset += os.pwrite(fd, zeros[: min(_CHUNK, target - offset)], offset)
        os.fsync(fd)
        return target - size
    except OSError as exc:
        log.warning("could not preallocate %s (commits stay slower while it grows): %s", wal, exc)
        return 0
    finally:
        os.close(fd)
