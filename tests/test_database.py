"""The storage layer: SQLite's journal as configured, and migrations that pods starting together run once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from fitgate.database import engine_for, read, write

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_sqlite_uses_the_journal_asked_for(tmp_path: Path, mode: str) -> None:
    engine = engine_for(f"sqlite:///{tmp_path / 'x.db'}", mode)
    with write(engine) as db:
        db.execute(text("CREATE TABLE t (v INTEGER)"))
        db.execute(text("INSERT INTO t VALUES (7)"))
    with read(engine) as db:
        assert db.execute(text("PRAGMA journal_mode")).scalar_one() == mode
        assert db.execute(text("SELECT v FROM t")).scalar_one() == 7


def test_a_write_that_raises_is_rolled_back(database_url: str) -> None:
    engine = engine_for(database_url)
    with write(engine) as db:
        db.execute(text("CREATE TABLE t (v INTEGER)"))
    with pytest.raises(RuntimeError), write(engine) as db:
        db.execute(text("INSERT INTO t VALUES (1)"))
        raise RuntimeError("halfway")
    with read(engine) as db:
        assert db.execute(text("SELECT COUNT(*) FROM t")).scalar_one() == 0


OPEN_BOTH = """
import sys
from fitgate.database import engine_for
from models.registry import Registry
from service.jobs import JobStore
JobStore(sys.argv[1])
Registry(sys.argv[2], engine_for(sys.argv[1]))
"""


def test_pods_starting_at_once_migrate_the_same_empty_database_once(database_url: str, tmp_path: Path) -> None:
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_BOTH, database_url, str(tmp_path / f"store-{i}")],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outcomes = [(p.wait(timeout=120), p.communicate()[1]) for p in starts]
    assert [stderr for code, stderr in outcomes if code != 0] == []
    with read(engine_for(database_url)) as db:
        tables = set(inspect(db).get_table_names())
    assert {"jobs", "versions", "pointer_events"} <= tables
