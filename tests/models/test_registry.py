"""The registry's invariants on both engines: a version exists once its bytes are stored; one current version
per model, the top of a stack that promote pushes and rollback pops."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from fitgate.database import engine_for
from fitgate.errors import ModelNotFound, RegistryConflict
from models.names import ModelName
from models.registry import Registry

NAME = ModelName.parse("team-a/spam")


@pytest.fixture
def registry(database_url: str, tmp_path: Path) -> Registry:
    return Registry(tmp_path / "store", engine_for(database_url))


def _bundle(tmp_path: Path, content: str) -> Path:
    path = tmp_path / f"bundle-{content}"
    path.mkdir(exist_ok=True)
    (path / "spec.json").write_text(content)
    return path


def _register(registry: Registry, tmp_path: Path, n: int) -> list[str]:
    return [registry.register(NAME, _bundle(tmp_path, f"v{i}"), {"i": i}) for i in range(n)]


def test_a_registered_version_holds_the_bundle_bytes_and_is_not_current_until_promoted(
    registry: Registry, tmp_path: Path
) -> None:
    (version,) = _register(registry, tmp_path, 1)
    assert [(v.version, v.summary, v.current) for v in registry.versions(NAME)] == [(version, {"i": 0}, False)]
    assert registry.current(NAME) is None and registry.latest_promoted() is None
    assert (registry.bundle_path(NAME, version) / "spec.json").read_text() == "v0"
    registry.promote(NAME, version)
    assert registry.current(NAME) == version and registry.current_versions() == {str(NAME): version}
    assert registry.latest_promoted() == NAME


def test_promote_pushes_and_rollback_pops_back_to_the_version_before(registry: Registry, tmp_path: Path) -> None:
    v1, v2, v3 = _register(registry, tmp_path, 3)
    for v in (v1, v2, v3):
        registry.promote(NAME, v)
    assert registry.rollback(NAME) == v2
    assert registry.rollback(NAME) == v1
    with pytest.raises(RegistryConflict, match="no earlier promoted version"):
        registry.rollback(NAME)
    assert registry.current(NAME) == v1
    assert [v.version for v in registry.versions(NAME) if v.current] == [v1]  # one current version


def test_concurrent_rollbacks_pop_different_versions(registry: Registry, tmp_path: Path) -> None:
    versions = _register(registry, tmp_path, 6)
    for v in versions:
        registry.promote(NAME, v)
    popped: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def roll() -> None:
        barrier.wait()
        try:
            popped.append(registry.rollback(NAME))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=roll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(popped) == sorted(versions[1:5])  # v5, v4, v3, v2 made current in turn: never one twice
    assert registry.current(NAME) == versions[1]


def test_an_unknown_version_or_model_is_not_found(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        registry.promote(NAME, "nope")
    with pytest.raises(ModelNotFound):
        registry.bundle_path(NAME)


def test_a_failed_store_copy_registers_nothing(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_copy(*args: Any, **kwargs: Any) -> None:
        raise OSError("the volume went away")

    monkeypatch.setattr(shutil, "copytree", broken_copy)
    with pytest.raises(OSError):
        registry.register(NAME, _bundle(tmp_path, "x"), {})
    assert registry.versions() == []


def test_a_row_that_cannot_be_written_leaves_no_bytes_in_the_store(registry: Registry, tmp_path: Path) -> None:
    def refuse(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO versions"):
            raise RuntimeError("the database refused the row")

    event.listen(registry.engine, "before_cursor_execute", refuse)
    try:
        with pytest.raises(RuntimeError):
            registry.register(NAME, _bundle(tmp_path, "x"), {})
    finally:
        event.remove(registry.engine, "before_cursor_execute", refuse)
    assert registry.versions() == []
    assert not any((registry.store_dir / "models").rglob("spec.json"))
