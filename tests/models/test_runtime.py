"""How the runtime groups texts into ONNX Runtime calls: similar lengths together, padding bounded."""

from __future__ import annotations

import random
from pathlib import Path

from models.runtime import length_batches


def test_every_text_lands_in_exactly_one_batch() -> None:
    lengths = [random.Random(0).randint(1, 128) for _ in range(500)]
    batches = length_batches(lengths, batch_size=64)
    assert sorted(i for b in batches for i in b) == list(range(500))


def test_texts_of_one_length_fill_batches_up_to_the_batch_size() -> None:
    assert [len(b) for b in length_batches([20] * 150, batch_size=64)] == [64, 64, 22]


def test_padding_stays_within_the_slack_of_the_real_tokens() -> None:
    lengths = [random.Random(1).choice([4, 9, 15, 30, 60, 128]) for _ in range(300)]
    for batch in length_batches(lengths, batch_size=64, slack=0.5):
        width = max(lengths[i] for i in batch)
        assert width * len(batch) <= 1.5 * sum(lengths[i] for i in batch) or len(batch) == 1


def test_a_long_text_does_not_pad_a_batch_of_short_ones() -> None:
    batches = length_batches([8, 8, 8, 8, 120], batch_size=64)
    assert batches == [[0, 1, 2, 3], [4]]


def test_no_texts_make_no_batches() -> None:
    assert length_batches([], batch_size=64) == []


def test_the_unknown_piece_is_found_in_word_piece_and_unigram_vocabularies() -> None:
    from tokenizers import Tokenizer
    from tokenizers import models as tokenizer_models

    from models.runtime import unknown_id
    from training.modeling import default_base_model

    bert = Tokenizer.from_file(str(Path(default_base_model()) / "tokenizer.json"))
    assert unknown_id(bert) == bert.token_to_id("[UNK]") == 100
    unigram = Tokenizer(tokenizer_models.Unigram([("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0),
                                                  ("▁a", -1.0)], unk_id=3, byte_fallback=False))  # fmt: skip
    assert unknown_id(unigram) == 3  # XLM-R numbers its <unk>: the serving metrics count it as they count [UNK]
