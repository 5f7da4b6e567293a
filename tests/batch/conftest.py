"""A released bundle of the tiny model, shared by the batch tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitgate.settings import Settings
from models.gate import release
from models.names import ModelName
from models.registry import open_registry
from models.runtime import OnnxClassifier


@pytest.fixture(scope="session")
def spam_bundle(tmp_path_factory: pytest.TempPathFactory, healthy_run: Path) -> Path:
    settings = Settings(data_dir=tmp_path_factory.mktemp("batch-registry"))
    name = ModelName.parse("team-a/spam")
    release(healthy_run, name, settings, open_registry(settings), promote=True)
    return open_registry(settings).bundle_path(name)


@pytest.fixture(scope="session")
def spam_classifier(spam_bundle: Path) -> OnnxClassifier:
    # fp32: the int8 graph quantizes activations per call, so its answers shift with what a call holds beside them
    classifier = OnnxClassifier(spam_bundle, precision="fp32", threads=1)
    classifier.load()
    return classifier
