"""API tokens: stored as sha256 hashes, each belonging to one team with roles.

With no tokens configured, fitgate still never lets a remote caller fine-tune or change
models: those calls are accepted from loopback only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from fitgate.errors import ConfigurationError, Forbidden, Unauthorized
from fitgate.settings import Settings
from models.names import ModelName

log = logging.getLogger(__name__)

Role = Literal["predict", "finetune", "admin"]


class TokenEntry(BaseModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    team: str = Field(pattern=r"^[a-z0-9]([a-z0-9_-]{0,28}[a-z0-9])?$")
    roles: list[Role]


@dataclass(frozen=True)
class Caller:
    team: str | None  # None: an anonymous loopback caller (no tokens configured)
    roles: frozenset[str]
    loopback_only_mode: bool = False

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def may_use(self, model: ModelName) -> bool:
        return self.is_admin or self.team is None or self.team == model.team


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(settings: Settings) -> list[TokenEntry]:
    raw = settings.tokens
    if settings.tokens_file is not None:
        raw = settings.tokens_file.read_text()
    if not raw:
        return []
    try:
        return TypeAdapter(list[TokenEntry]).validate_python(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ConfigurationError(f"FITGATE_TOKENS is not a valid token list: {exc}") from exc


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens = load_tokens(settings)
        if not self.tokens:
            log.warning(
                "no API tokens configured: fine-tune, cancel, promote and rollback are accepted from loopback only"
            )

    @property
    def predict_needs_token(self) -> bool:
        """Whether predict-role routes refuse a caller without a token (never, when no tokens are configured)."""
        return bool(self.tokens) and self.settings.predict_requires_token

    def _match(self, token: str) -> TokenEntry | None:
        digest = hash_token(token)
        found = None
        for entry in self.tokens:  # compare with every entry, in constant time, so timing reveals nothing
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found

    def authenticate(self, authorization: str | None, client_host: str | None, role: Role) -> Caller:
        """Who is calling, checked for ``role``; raises 401/403 with what to do."""
        if not self.tokens:
            if role == "predict" or is_loopback(client_host):
                return Caller(team=None, roles=frozenset({"predict", "finetune", "admin"}), loopback_only_mode=True)
            raise Forbidden(
                "no API tokens are configured on this server, so fine-tuning and model changes are accepted "
                "from loopback only; configure FITGATE_TOKENS to allow remote callers"
            )
        if role == "predict" and not self.predict_needs_token and not authorization:
            return Caller(team=None, roles=frozenset({"predict"}))
        caller = self._token_caller(authorization)
        if role not in caller.roles and not caller.is_admin:
            raise Forbidden(f"this token (team {caller.team}) lacks the {role!r} role")
        return caller

    def identify(self, authorization: str | None, client_host: str | None) -> Caller:
        """Who is calling and what they may do, with no role required (the console's sign-in asks this)."""
        if not self.tokens:
            everything = is_loopback(client_host)
            roles = {"predict", "finetune", "admin"} if everything else {"predict"}
            return Caller(team=None, roles=frozenset(roles), loopback_only_mode=True)
        return self._token_caller(authorization)

    def _token_caller(self, authorization: str | None) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
        entry = self._match(authorization.removeprefix("Bearer ").strip())
        if entry is None:
            raise Unauthorized("invalid API token")
        return Caller(team=entry.team, roles=frozenset(entry.roles))

    @staticmethod
    def require_model_access(caller: Caller, model: ModelName) -> None:
        if not caller.may_use(model):
            raise Forbidden(f"team {caller.team} may not use model {model}, which belongs to team {model.team}")
