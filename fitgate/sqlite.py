"""One way to open fitgate's SQLite databases: WAL, autocommit, waiting on locks instead of failing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def connect(database: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(database, timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (several workers share one file)
        db.execute("PRAGMA busy_timeout=30000")
        yield db
    finally:
        db.close()
