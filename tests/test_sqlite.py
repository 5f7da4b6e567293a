"""fitgate's SQLite connections: WAL on one host, the rollback journal for volumes shared across nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitgate.sqlite import connect


@pytest.mark.parametrize(("mode", "expected"), [("wal", "wal"), ("delete", "delete")])
def test_the_journal_mode_is_the_one_asked_for(tmp_path: Path, mode: str, expected: str) -> None:
    database = tmp_path / "x.db"
    with connect(database, mode) as db:
        db.execute("CREATE TABLE t (v INTEGER)")
        db.execute("INSERT INTO t VALUES (1)")
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == expected
    with connect(database, mode) as db:
        assert db.execute("SELECT v FROM t").fetchone()[0] == 1


def test_a_wal_database_switches_to_the_rollback_journal_in_place(tmp_path: Path) -> None:
    database = tmp_path / "x.db"
    with connect(database, "wal") as db:
        db.execute("CREATE TABLE t (v INTEGER)")
        db.execute("INSERT INTO t VALUES (7)")
    with connect(database, "delete") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT v FROM t").fetchone()[0] == 7
    assert not Path(f"{database}-wal").exists()
