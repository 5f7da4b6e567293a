"""Model names: team/name, nothing that could escape a folder or break a BentoML tag."""

from __future__ import annotations

import pytest

from fitgate.errors import InvalidModelName
from models.names import ModelName


def test_valid_name_maps_to_a_reversible_bentoml_tag() -> None:
    name = ModelName.parse("support/ticket-router_v2")
    assert (name.team, name.name, name.tag_name) == ("support", "ticket-router_v2", "support.ticket-router_v2")
    assert ModelName.from_tag_name(name.tag_name) == name


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "team/../x",
        "Team/model",
        "team/my model",
        "",
        "team/",
        "/model",
        "team/model/extra",
        "a/" + "b" * 31,
        "team/model-",
        "team/.hidden",
        "team\\model",
        "team/mödel",
    ],
)
def test_bad_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(InvalidModelName, match="use team/name, each part 1-30 characters"):
        ModelName.parse(bad)
