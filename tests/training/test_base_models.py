"""Base models by name, and the choice of one that reads the upload: a model never trains on text it cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitgate.errors import ArgumentsError, UnreadableText
from tests.conftest import chinese_keyword_rows, keyword_rows
from training.base_models import DEFAULT_BASE_MODEL, MULTILINGUAL, SERVER_DEFAULT, BaseModels, choose_base_model

ENGLISH = [text for text, _ in keyword_rows(50)]
CHINESE = [text for text, _ in chinese_keyword_rows(50)]
ARABIC = ["مرحبا بكم في المطعم الجديد، الطعام لذيذ جدا", "الخدمة سيئة والغرفة غير نظيفة"] * 5


def _refusal(texts: list[str], tmp_path: Path) -> str:
    """The 422 message of asking the English model to train on ``texts``."""
    with pytest.raises(UnreadableText) as refused:
        choose_base_model(texts, "minilm", BaseModels(tmp_path))
    assert refused.value.status_code == 422
    return refused.value.message


def test_english_text_gets_the_default_english_model_and_the_report_says_why(tmp_path: Path) -> None:
    choice = choose_base_model(ENGLISH, None, BaseModels(tmp_path))
    assert choice.name == DEFAULT_BASE_MODEL and choice.chosen_by == "automatic"
    assert choice.reason.startswith("minilm reads the texts (0.0% unknown pieces; scripts: Latin 100%)")
    assert [r.model for r in choice.readings] == ["minilm"]  # the first reader is kept: nothing else is measured


def test_chinese_text_asked_of_the_english_model_is_refused_with_the_share_an_example_and_who_reads_it(
    tmp_path: Path,
) -> None:
    message = _refusal(CHINESE, tmp_path)
    assert "base model 'minilm'" in message and "of the word pieces are unknown to its vocabulary" in message
    assert "[UNK]" in message  # the example, as the model would see it
    assert "scripts it was not trained on (Han" in message
    assert "Choose base_model 'multilingual-e5-small'" in message


def test_a_script_the_english_model_spells_out_letter_by_letter_is_refused_though_it_has_no_unknowns(
    tmp_path: Path,
) -> None:
    message = _refusal(ARABIC, tmp_path)
    assert "unknown to its vocabulary" not in message  # [UNK] alone would have let it through
    assert "it spells the words out" in message and "Arabic 100%" in message


def test_the_readability_limits_are_the_operators(tmp_path: Path) -> None:
    from training.base_models import ReadabilityLimits

    lenient = ReadabilityLimits(max_unknown_share=1.0, max_single_letter_share=1.0, max_unfamiliar_script_share=1.0)
    choice = choose_base_model(CHINESE, "minilm", BaseModels(tmp_path, limits=lenient))
    assert choice.name == "minilm" and choice.readings[0].coverage.unknown_share > 0.3


def test_without_a_request_the_first_model_that_reads_the_text_is_chosen_and_the_report_names_the_others(
    tmp_path: Path, tiny_model_dir: Path, chinese_model_dir: Path
) -> None:
    catalogue = BaseModels(tmp_path, {"chinese-tiny": str(chinese_model_dir)}, default=str(tiny_model_dir))
    assert catalogue.names()[:3] == [SERVER_DEFAULT, "chinese-tiny", DEFAULT_BASE_MODEL]  # default, own, built-in
    choice = choose_base_model(CHINESE, None, catalogue)
    assert choice.name == "chinese-tiny" and choice.path == chinese_model_dir
    assert choice.reason.startswith("chinese-tiny reads the texts (0.0% unknown pieces; scripts: Han 100%)")
    assert f"{SERVER_DEFAULT} does not (" in choice.reason
    assert [r.readable for r in choice.readings] == [False, True]
    assert choose_base_model(ENGLISH, None, catalogue).name == SERVER_DEFAULT


def test_when_no_model_reads_the_text_the_upload_is_refused_and_says_to_ask_for_one(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    catalogue = BaseModels(tmp_path, default=str(tiny_model_dir))
    catalogue.cards = {SERVER_DEFAULT: catalogue.cards[SERVER_DEFAULT]}  # a server offering one English model
    with pytest.raises(UnreadableText, match="No base model on this server reads it"):
        choose_base_model(CHINESE, None, catalogue)


def test_a_request_names_a_model_never_a_path(tmp_path: Path, tiny_model_dir: Path) -> None:
    catalogue = BaseModels(tmp_path)
    with pytest.raises(ArgumentsError, match=f"this server offers {DEFAULT_BASE_MODEL}, {MULTILINGUAL}"):
        catalogue.card("/etc")
    widened = catalogue.including(str(tiny_model_dir))  # the CLI and library callers may name a directory
    assert choose_base_model(ENGLISH, str(tiny_model_dir), widened).path == tiny_model_dir


def test_the_choice_is_reported_with_each_candidates_numbers(tmp_path: Path, chinese_model_dir: Path) -> None:
    catalogue = BaseModels(tmp_path, {"chinese-tiny": str(chinese_model_dir)})
    report = choose_base_model(CHINESE, None, catalogue).to_dict()
    assert report["name"] == "chinese-tiny" and report["chosen_by"] == "automatic"
    english, chinese = report["readings"]  # the default is measured first, then the operator's model
    assert english["model"] == DEFAULT_BASE_MODEL and not english["readable"] and english["unknown_share"] > 0.5
    assert "[UNK]" in english["examples"][0]["pieces"]
    assert chinese["model"] == "chinese-tiny" and chinese["readable"] and chinese["scripts"] == {"Han": 1.0}
    assert set(chinese) >= {"unknown_share", "mostly_unknown_share", "pieces_per_word", "single_letter_share"}
    assert chinese["examples"][0]["pieces"][:2] == list(chinese["examples"][0]["text"][:2])  # a piece per character
