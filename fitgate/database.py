"""One storage layer for the job queue and the model registry: SQLAlchemy Core on SQLite or PostgreSQL.

Why SQLAlchemy Core rather than psycopg 3 with a thin SQLite twin: the two engines differ in
a handful of places (``FOR UPDATE SKIP LOCKED``, advisory locks, how a write transaction
begins, the DDL of an added column), and Core renders each statement for the engine it
runs on, so the queries are written once; a twin would be a second copy of every query that
drifts from the first. Core also brings connection pooling with pre-ping (a managed
PostgreSQL drops idle connections) and the DDL that :func:`migrate` needs. No ORM: the
rows are small and the queries are the specification.

Transactions: :func:`read` for reads, :func:`write` for anything that changes rows. On
SQLite a write begins ``BEGIN IMMEDIATE``, which takes the database's write lock up front,
so read-then-write sequences (claim a job, pop the rollback stack) are serialised; on
PostgreSQL the same code takes row locks (``SKIP LOCKED``) or a named advisory lock.

SQLite journal: WAL lets readers run beside the writer, but its shared-memory index only
works when every process opening the file runs on one host. On a volume shared by pods on
several nodes use the rollback journal (FITGATE_SQLITE_JOURNAL_MODE=delete) — or better,
PostgreSQL (FITGATE_DATABASE_URL), which is what several nodes need (docs/DEPLOY.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateColumn

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str, sqlite_journal_mode: str = "wal") -> Engine:
    """The process's engine for a database URL (one pool per URL: jobs and registry share PostgreSQL's)."""
    key = f"{url}#{sqlite_journal_mode}"
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create(url, sqlite_journal_mode)
        return engine


def _create(url: str, sqlite_journal_mode: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        # psycopg 3 whatever the URL names (postgresql:// means psycopg2 to SQLAlchemy, which is not installed)
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True, pool_size=4, max_overflow=4
        )
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        raise ValueError(f"unsupported database URL {parsed!r}: use postgresql://user@host/db or leave it unset")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # a connection per use, as SQLite is meant to be opened: cheap, and no pooled handles across forks
    engine = create_engine(parsed, poolclass=NullPool, connect_args={"timeout": 30})
    journal = "DELETE" if sqlite_journal_mode == "delete" else "WAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, says when a transaction begins
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA journal_mode={journal}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("fitgate_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests that create many databases; a process about to exit)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A connection for reads: one consistent snapshot per block."""
    with engine.connect() as connection:
        yield connection


@contextmanager
def write(engine: Engine, lock: str | None = None) -> Iterator[Connection]:
    """One write transaction, committed when the block ends, rolled back if it raises.

    ``lock`` names a PostgreSQL advisory lock held until commit, for writes that must not
    interleave (a model's pointer stack, migrations); SQLite's ``BEGIN IMMEDIATE`` already
    serialises every writer.
    """
    with engine.connect() as connection:
        connection.execution_options(fitgate_write=True)
        with connection.begin():
            if lock is not None and is_postgresql(connection):
                connection.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"), {"lock": lock})
            yield connection


def migrate(engine: Engine, metadata: MetaData) -> None:
    """Bring the database up to ``metadata``: create missing tables, indexes and columns.

    Runs at every start, in one transaction under one lock, so pods starting together
    migrate once and the others find the work done. Only additive changes are made this
    way (a new table, index, or a column that is nullable or has a server default), which is
    all fitgate's schema has needed; a change that rewrites data will need numbered
    migrations (Alembic), behind the same lock.
    """
    with write(engine, lock="fitgate.migrate") as connection:
        metadata.create_all(connection, checkfirst=True)
        inspector = inspect(connection)
        for table in metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    ddl = CreateColumn(column).compile(dialect=connection.dialect)
                    connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
