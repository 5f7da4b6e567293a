"""The model registry: bundles in BentoML's model store, serving pointers in SQLite.

BentoML's store holds the bytes (``bentoml.models.create`` writes into a temporary folder
and copies it into the store only when the block completes). SQLite is the registry of
record: a version exists for fitgate only once its row is committed, after the store write
finished, so a crash mid-write leaves nothing visible. A failed write (a full disk) leaves
nothing behind either: BentoML removes a half-copied store folder, and ``register`` removes
the copied one when its row cannot be written. Only a kill during the copy itself can leave
an unregistered folder in the store, which fitgate never lists or serves. The "current"
version of a model is the top of a stack that ``promote`` pushes and ``rollback`` pops.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage analytics from a closed network

import bentoml
from bentoml._internal.models.model import ModelStore

from fitgate.errors import ModelNotFound, RegistryConflict
from fitgate.settings import Settings
from fitgate.sqlite import connect
from models.bundle import BundleSpec, load_spec
from models.names import ModelName

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at REAL NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS pointer_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: str
    created_at: float
    summary: dict[str, Any]
    current: bool


class Registry:
    def __init__(self, store_dir: Path, database: Path, journal_mode: str = "wal") -> None:
        self.store_dir = Path(store_dir)
        self.database = Path(database)
        self.journal_mode = journal_mode
        (self.store_dir / "models").mkdir(parents=True, exist_ok=True)
        self.database.parent.mkdir(parents=True, exist_ok=True)
        self._store = ModelStore(self.store_dir / "models")
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.database, self.journal_mode)

    # --- writing ---------------------------------------------------------------------------

    def register(self, name: ModelName, bundle_dir: Path, summary: dict[str, Any]) -> str:
        """Copy a complete bundle into the store as a new version; return the version."""
        with bentoml.models.create(
            name.tag_name, labels={"team": name.team, "fitgate": "bundle"}, _model_store=self._store
        ) as model:
            shutil.copytree(bundle_dir, model.path, dirs_exist_ok=True)
        version = str(model.tag.version)
        with self._connect() as db:
            try:
                db.execute(
                    "INSERT INTO versions (model, version, created_at, summary) VALUES (?, ?, ?, ?)",
                    (str(name), version, time.time(), json.dumps(summary)),
                )
            except sqlite3.Error:  # the row was not written (autocommit): its bytes would never be served
                self._store.delete(model.tag)
                raise
        return version

    def promote(self, name: ModelName, version: str) -> None:
        self._require_version(name, version)
        with self._connect() as db:
            db.execute(
                "INSERT INTO pointer_events (model, version, action, at) VALUES (?, ?, 'promote', ?)",
                (str(name), version, time.time()),
            )

    def rollback(self, name: ModelName) -> str:
        """Make the previously current version current again; return it.

        Read and write happen in one IMMEDIATE transaction, so two concurrent rollbacks
        pop two different versions instead of the same one twice.
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                stack = self._stack(name, db)
                if len(stack) < 2:
                    raise RegistryConflict(
                        f"model {name} has no earlier promoted version to roll back to; promote a version instead"
                    )
                previous = stack[-2]
                db.execute(
                    "INSERT INTO pointer_events (model, version, action, at) VALUES (?, ?, 'rollback', ?)",
                    (str(name), previous, time.time()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return previous

    # --- reading ---------------------------------------------------------------------------

    def _stack(self, name: ModelName, db: sqlite3.Connection | None = None) -> list[str]:
        if db is None:
            with self._connect() as own:
                return self._stack(name, own)
        rows = db.execute(
            "SELECT version, action FROM pointer_events WHERE model = ? ORDER BY id", (str(name),)
        ).fetchall()
        stack: list[str] = []
        for version, action in rows:
            if action == "promote":
                stack.append(version)
            elif stack:
                stack.pop()
        return stack

    def current(self, name: ModelName) -> str | None:
        stack = self._stack(name)
        return stack[-1] if stack else None

    def current_versions(self) -> dict[str, str]:
        """Every model's current version (models whose pointer was rolled back to nothing are absent)."""
        with self._connect() as db:
            models = [row[0] for row in db.execute("SELECT DISTINCT model FROM versions")]
            stacks = {m: self._stack(ModelName.parse(m), db) for m in models}
        return {m: stack[-1] for m, stack in stacks.items() if stack}

    def latest_promoted(self) -> ModelName | None:
        """The model whose pointer moved last: what /predict answers when no model is named."""
        with self._connect() as db:
            row = db.execute("SELECT model FROM pointer_events ORDER BY id DESC LIMIT 1").fetchone()
        return ModelName.parse(row[0]) if row else None

    def _require_version(self, name: ModelName, version: str) -> None:
        with self._connect() as db:
            found = db.execute(
                "SELECT 1 FROM versions WHERE model = ? AND version = ?", (str(name), version)
            ).fetchone()
        if not found:
            raise ModelNotFound(f"model {name} has no version {version!r}; list versions with `fitgate models show`")

    def versions(self, name: ModelName | None = None) -> list[VersionInfo]:
        query = "SELECT model, version, created_at, summary FROM versions"
        args: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE model = ?"
            args = (str(name),)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY model, created_at", args).fetchall()
        currents = {m: self.current(ModelName.parse(m)) for m in {r[0] for r in rows}}
        return [VersionInfo(m, v, c, json.loads(s), currents[m] == v) for m, v, c, s in rows]

    def bundle_path(self, name: ModelName, version: str | None = None) -> Path:
        """The store folder of a version (default: the current one)."""
        version = version or self.current(name)
        if version is None:
            raise ModelNotFound(f"model {name} has no promoted version")
        self._require_version(name, version)
        return Path(self._store.get(f"{name.tag_name}:{version}").path)

    def spec(self, name: ModelName, version: str | None = None) -> BundleSpec:
        return load_spec(self.bundle_path(name, version))


def open_registry(settings: Settings) -> Registry:
    """The registry of this deployment: the store under ``bentoml_home()``, the pointers in its database."""
    return Registry(settings.bentoml_home(), settings.registry_database, settings.sqlite_journal_mode)
