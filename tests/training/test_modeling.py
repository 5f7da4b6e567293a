"""Optimizer groups, freezing and base-model loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitgate.errors import ModelLoadError
from training.modeling import (
    LARGE_VOCABULARY,
    freeze_lower_layers,
    freeze_word_embeddings,
    load_classifier,
    parameter_groups,
)


def test_no_weight_decay_on_biases_and_layernorm(tiny_model_dir: Path) -> None:
    model = load_classifier(str(tiny_model_dir), ["a", "b"], dropout=0.1, seed=0)
    groups = parameter_groups(model, learning_rate=1e-4, weight_decay=0.01, layerwise_lr_decay=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            no_decay = name.endswith("bias") or "LayerNorm" in name
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), name


def test_layerwise_decay_gives_lower_layers_smaller_learning_rates(tiny_model_dir: Path) -> None:
    model = load_classifier(str(tiny_model_dir), ["a", "b"], dropout=0.1, seed=0)
    groups = parameter_groups(model, learning_rate=1e-4, weight_decay=0.0, layerwise_lr_decay=0.5)
    lr_of = {n: g["lr"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert lr_of["classifier.weight"] == pytest.approx(1e-4)
    assert lr_of["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(0.5e-4)
    assert lr_of["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(0.25e-4)
    assert lr_of["bert.embeddings.word_embeddings.weight"] == pytest.approx(0.125e-4)


def test_freezing_stops_gradients_below_the_cut(tiny_model_dir: Path) -> None:
    model = load_classifier(str(tiny_model_dir), ["a", "b"], dropout=0.1, seed=0)
    freeze_lower_layers(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("embeddings" in n or ".layer.0." in n for n in trainable)
    assert any(".layer.1." in n for n in trainable) and "classifier.weight" in trainable


def test_dropout_override_reaches_the_model_config(tiny_model_dir: Path) -> None:
    model = load_classifier(str(tiny_model_dir), ["a", "b"], dropout=0.3, seed=0)
    assert model.config.hidden_dropout_prob == 0.3 and model.config.attention_probs_dropout_prob == 0.3
    assert model.config.id2label == {0: "a", 1: "b"}


def test_a_hub_name_is_refused_because_nothing_is_downloaded() -> None:
    with pytest.raises(ModelLoadError, match="not a local directory; fitgate never downloads weights"):
        load_classifier("bert-base-uncased", ["a", "b"], dropout=None, seed=0)


def test_word_embeddings_are_frozen_by_default_only_for_a_large_vocabulary(tiny_model_dir: Path) -> None:
    model = load_classifier(str(tiny_model_dir), ["a", "b"], dropout=0.1, seed=0)  # MiniLM's 30,522 pieces
    assert not freeze_word_embeddings(model, None)
    assert model.get_input_embeddings().weight.requires_grad
    assert freeze_word_embeddings(model, True)
    trained = {id(p) for group in parameter_groups(model, learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=1)
               for p in group["params"]}  # fmt: skip
    assert id(model.get_input_embeddings().weight) not in trained  # the optimizer keeps no state for the matrix
    assert model.bert.embeddings.position_embeddings.weight.requires_grad
    large = load_classifier(str(tiny_model_dir), ["a", "b"], dropout=0.1, seed=0)
    large.resize_token_embeddings(LARGE_VOCABULARY + 1)
    assert freeze_word_embeddings(large, None) and not large.get_input_embeddings().weight.requires_grad
