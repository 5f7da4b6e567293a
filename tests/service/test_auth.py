"""Tokens, teams and the loopback-only default."""

from __future__ import annotations

import json

import pytest

from fitgate.errors import Forbidden, Unauthorized
from fitgate.settings import Settings
from models.names import ModelName
from service.auth import Authenticator, hash_token


def _auth(monkeypatch: pytest.MonkeyPatch, tokens: list[dict[str, object]] | None, **env: str) -> Authenticator:
    if tokens is not None:
        monkeypatch.setenv("FITGATE_TOKENS", json.dumps(tokens))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Authenticator(Settings())


TOKENS = [
    {"sha256": hash_token("a-secret"), "team": "team-a", "roles": ["predict", "finetune"]},
    {"sha256": hash_token("p-secret"), "team": "team-a", "roles": ["predict"]},
    {"sha256": hash_token("root"), "team": "ops", "roles": ["admin"]},
]


def test_without_tokens_remote_callers_may_only_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = _auth(monkeypatch, None)
    assert auth.authenticate(None, "10.1.2.3", "predict").team is None
    with pytest.raises(Forbidden, match="accepted from loopback only; configure FITGATE_TOKENS"):
        auth.authenticate(None, "10.1.2.3", "finetune")
    for host in ("127.0.0.1", "::1", "127.8.9.10"):
        assert auth.authenticate(None, host, "finetune").loopback_only_mode


def test_tokens_are_checked_by_hash_and_role(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = _auth(monkeypatch, TOKENS)
    assert auth.authenticate("Bearer a-secret", "10.0.0.1", "finetune").team == "team-a"
    with pytest.raises(Unauthorized, match="missing API token"):
        auth.authenticate(None, "127.0.0.1", "finetune")  # loopback is no excuse once tokens exist
    with pytest.raises(Unauthorized, match="invalid API token"):
        auth.authenticate("Bearer guess", "10.0.0.1", "finetune")
    with pytest.raises(Forbidden, match="lacks the 'finetune' role"):
        auth.authenticate("Bearer p-secret", "10.0.0.1", "finetune")
    assert auth.authenticate("Bearer root", "10.0.0.1", "finetune").is_admin


def test_teams_only_touch_their_own_models(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = _auth(monkeypatch, TOKENS)
    mine = ModelName.parse("team-a/x")
    theirs = ModelName.parse("team-b/x")
    caller = auth.authenticate("Bearer a-secret", "10.0.0.1", "finetune")
    auth.require_model_access(caller, mine)
    with pytest.raises(Forbidden, match="belongs to team team-b"):
        auth.require_model_access(caller, theirs)
    auth.require_model_access(auth.authenticate("Bearer root", "10.0.0.1", "finetune"), theirs)


def test_with_tokens_configured_predict_needs_a_token_unless_an_operator_opens_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Secure by default: leaving the token out must not be a way around team scoping."""
    closed = _auth(monkeypatch, TOKENS)
    assert closed.predict_needs_token
    with pytest.raises(Unauthorized):
        closed.authenticate(None, "10.0.0.1", "predict")
    opened = _auth(monkeypatch, TOKENS, FITGATE_PREDICT_REQUIRES_TOKEN="false")
    assert not opened.predict_needs_token
    assert opened.authenticate(None, "10.0.0.1", "predict").team is None


def test_without_tokens_configured_anyone_may_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = _auth(monkeypatch, [])
    assert not auth.predict_needs_token
    assert auth.authenticate(None, "10.0.0.1", "predict").loopback_only_mode


def test_a_plain_token_in_the_configuration_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception, match="not a valid token list"):
        _auth(monkeypatch, [{"sha256": "a-secret", "team": "team-a", "roles": ["predict"]}])
