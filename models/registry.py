"""The model registry: bundles in BentoML's model store, serving pointers in the database.

BentoML's store holds the bytes (``bentoml.models.create`` writes into a temporary folder
and copies it into the store only when the block completes). The database (SQLite, or
PostgreSQL with FITGATE_DATABASE_URL: ``fitgate/database.py``) is the registry of
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage analytics from a closed network

import bentoml
from bentoml._internal.models.model import ModelStore
from sqlalchemy import Column, Connection, Double, Engine, Integer, MetaData, String, Table, Text, select

from fitgate.database import engine_for, migrate, read, write
from fitgate.errors import ModelNotFound, RegistryConflict
from fitgate.settings import Settings
from models.bundle import BundleSpec, load_spec
from models.names import ModelName

METADATA = MetaData()
VERSIONS = Table(
    "versions",
    METADATA,
    Column("model", String(200), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("created_at", Double, nullable=False),
    Column("summary", Text, nullable=False),
)
POINTER_EVENTS = Table(
    "pointer_events",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("version", String(64), nullable=False),
    Column("action", String(16), nullable=False),  # promote | rollback
    Column("at", Double, nullable=False),
)


def _pointer_lock(name: ModelName) -> str:
    """Writes to one model's pointer stack take this lock: event ids then follow commit order."""
    return f"fitgate.registry.pointer:{name}"


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: str
    created_at: float
    summary: dict[str, Any]
    current: bool


class Registry:
    def __init__(self, store_dir: Path, engine: Engine) -> None:
        self.store_dir = Path(store_dir)
        self.engine = engine
        (self.store_dir / "models").mkdir(parents=True, exist_ok=True)
        self._store = ModelStore(self.store_dir / "models")
        migrate(engine, METADATA)

    # --- writing ---------------------------------------------------------------------------

    def register(self, name: ModelName, bundle_dir: Path, summary: dict[str, Any]) -> str:
        """Copy a complete bundle into the store as a new version; return the version."""
        with bentoml.models.create(
            name.tag_name, labels={"team": name.team, "fitgate": "bundle"}, _model_store=self._store
        ) as model:
            shutil.copytree(bundle_dir, model.path, dirs_exist_ok=True)
        version = str(model.tag.version)
        try:
            with write(self.engine) as db:
                db.execute(
                    VERSIONS.insert().values(
                        model=str(name), version=version, created_at=time.time(), summary=json.dumps(summary)
                    )
                )
        except Exception:  # the row was not committed: its bytes would never be served
            self._store.delete(model.tag)
            raise
        return version

    def promote(self, name: ModelName, version: str) -> None:
        self._require_version(name, version)
        with write(self.engine, lock=_pointer_lock(name)) as db:
            db.execute(
                POINTER_EVENTS.insert().values(model=str(name), version=version, action="promote", at=time.time())
            )

    def rollback(self, name: ModelName) -> str:
        """Make the previously current version current again; return it.

        Read and write happen in one transaction under the model's pointer lock, so two
        concurrent rollbacks pop two different versions instead of the same one twice.
        """
        with write(self.engine, lock=_pointer_lock(name)) as db:
            stack = self._stack(name, db)
            if len(stack) < 2:
                raise RegistryConflict(
                    f"model {name} has no earlier promoted version to roll back to; promote a version instead"
                )
            previous = stack[-2]
            db.execute(
                POINTER_EVENTS.insert().values(model=str(name), version=previous, action="rollback", at=time.time())
            )
        return previous

    # --- reading ---------------------------------------------------------------------------

    def _stack(self, name: ModelName, db: Connection | None = None) -> list[str]:
        if db is None:
            with read(self.engine) as own:
                return self._stack(name, own)
        rows = db.execute(
            select(POINTER_EVENTS.c.version, POINTER_EVENTS.c.action)
            .where(POINTER_EVENTS.c.model == str(name))
            .order_by(POINTER_EVENTS.c.id)
        ).all()
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
        with read(self.engine) as db:
            models = list(db.execute(select(VERSIONS.c.model).distinct()).scalars())
            stacks = {m: self._stack(ModelName.parse(m), db) for m in models}
        return {m: stack[-1] for m, stack in stacks.items() if stack}

    def latest_promoted(self) -> ModelName | None:
        """The model whose pointer moved last: what /predict answers when no model is named."""
        with read(self.engine) as db:
            model = db.execute(
                select(POINTER_EVENTS.c.model).order_by(POINTER_EVENTS.c.id.desc()).limit(1)
            ).scalar_one_or_none()
        return ModelName.parse(model) if model else None

    def _require_version(self, name: ModelName, version: str) -> None:
        with read(self.engine) as db:
            found = db.execute(
                select(VERSIONS.c.version).where(VERSIONS.c.model == str(name), VERSIONS.c.version == version)
            ).first()
        if not found:
            raise ModelNotFound(f"model {name} has no version {version!r}; list versions with `fitgate models show`")

    def versions(self, name: ModelName | None = None) -> list[VersionInfo]:
        query = select(VERSIONS.c.model, VERSIONS.c.version, VERSIONS.c.created_at, VERSIONS.c.summary)
        if name is not None:
            query = query.where(VERSIONS.c.model == str(name))
        with read(self.engine) as db:
            rows = db.execute(query.order_by(VERSIONS.c.model, VERSIONS.c.created_at)).all()
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
    return Registry(settings.bentoml_home(), engine_for(settings.database("registry"), settings.sqlite_journal_mode))
