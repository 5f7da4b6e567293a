"""One way to open fitgate's SQLite databases: WAL, autocommit, waiting on locks instead of failing.

WAL lets readers run beside the writer, but its shared-memory index only works when every
process opening the file runs on one host. On a volume shared by pods on several nodes
(NFS, CephFS, cloud file shares) use the rollback journal instead:
FITGATE_SQLITE_JOURNAL_MODE=delete (the Kubernetes manifests set it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def connect(database: Path, journal_mode: str = "wal") -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(database, timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute(f"PRAGMA journal_mode={'DELETE' if journal_mode == 'delete' else 'WAL'}")
        db.execute("PRAGMA busy_timeout=30000")
        yield db
    finally:
        db.close()
