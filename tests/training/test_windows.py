"""Texts longer than the window: which tokens the model reads, and how a text's windows answer as one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.runtime import encode, load_tokenizer, unknown_id
from training import batching
from training.modeling import load_tokenizer as load_training_tokenizer
from training.windows import Windowing, choose, cut, pool

PREFIX, SUFFIX = [101], [102]
BODY = list(range(1000, 1030))  # 30 tokens; a 12-token window holds 10 of them


def test_a_text_that_fits_is_read_once_whole_in_every_mode() -> None:
    for mode in ("truncate", "head_tail", "chunks"):
        assert cut(BODY[:10], PREFIX, SUFFIX, Windowing(mode, 12, 2, 8)) == [[101, *BODY[:10], 102]]


def test_truncate_reads_the_head_and_head_tail_a_quarter_head_and_the_rest_tail() -> None:
    assert cut(BODY, PREFIX, SUFFIX, Windowing("truncate", 12)) == [[101, *BODY[:10], 102]]
    assert cut(BODY, PREFIX, SUFFIX, Windowing("head_tail", 12)) == [[101, *BODY[:2], *BODY[-8:], 102]]


def test_chunks_cover_the_text_with_overlapping_windows_and_always_read_its_end() -> None:
    windows = cut(BODY, PREFIX, SUFFIX, Windowing("chunks", 12, stride=2, max_windows=8))
    bodies = [w[1:-1] for w in windows]
    assert all(w[0] == 101 and w[-1] == 102 and len(w) <= 12 for w in windows)
    assert bodies[0] == BODY[:10] and bodies[1][:2] == BODY[8:10]  # each window repeats the last 2 tokens
    assert bodies[-1] == BODY[-10:]
    assert set().union(*map(set, bodies)) == set(BODY)


def test_a_text_longer_than_max_windows_keeps_its_first_windows_and_its_last() -> None:
    windows = cut(list(range(1000)), PREFIX, SUFFIX, Windowing("chunks", 12, stride=0, max_windows=3))
    assert [w[1:-1] for w in windows] == [list(range(10)), list(range(10, 20)), list(range(990, 1000))]


def test_windows_pool_by_mean_for_one_label_and_by_max_for_several() -> None:
    logits = np.array([[1.0, 0.0], [3.0, -2.0], [0.0, 5.0]], dtype=np.float32)
    owners = np.array([0, 0, 1])
    assert pool(logits, owners, 2, "mean").tolist() == [[2.0, -1.0], [0.0, 5.0]]
    assert pool(logits, owners, 2, "max").tolist() == [[3.0, 0.0], [0.0, 5.0]]


def test_auto_reads_in_chunks_only_when_a_meaningful_share_of_texts_is_cut() -> None:
    short, long = [100] * 95, [300] * 5
    assert choose("auto", short + long, 128)[0] == "truncate"
    mode, report = choose("auto", short[:80] + [300] * 20, 128)
    assert mode == "chunks" and report["texts_over_window"] == 20 and report["median_tokens_over"] == 172
    assert "20% of the training texts are longer than the 128-token window" in str(report["reason"])
    assert choose("head_tail", short, 128)[1]["chosen_by"] == "request"


@pytest.mark.parametrize("mode", ["truncate", "head_tail", "chunks"])
def test_serving_cuts_texts_into_the_windows_training_read(tiny_model_dir: Path, mode: str) -> None:
    texts = ["short one", " ".join(f"word{i}" for i in range(200)), "another fairly short text about a prize"]
    windowing = Windowing(mode, 32, stride=8, max_windows=4)  # type: ignore[arg-type]
    trained = batching.encode(load_training_tokenizer(str(tiny_model_dir)), texts, windowing)
    served_tokenizer = load_tokenizer(tiny_model_dir, windowing)  # tokenizers only, as a bundle is served
    served = encode(served_tokenizer, texts, unknown_id(served_tokenizer), windowing)
    assert served.ids == trained.ids
    assert served.truncated == trained.cut == [False, True, False]
    if mode == "chunks":
        assert served.owners is not None and served.owners.tolist() == trained.owners.tolist() == [0, 1, 1, 1, 1, 2]
