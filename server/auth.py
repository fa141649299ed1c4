"""Bearer tokens of the relay: one admin token, and agent tokens bound to one agent id each.

Token file (TOML):

    admin = "a-long-random-admin-token"

    [agents]
    0 = "a-long-random-token-of-agent-0"
    1 = "a-long-random-token-of-agent-1"

Or the environment: `DKT_RELAY_ADMIN_TOKEN=...` and
`DKT_RELAY_AGENT_TOKENS="0=token0,1=token1"` (both sources are merged; a file entry
wins). Clients send `authorization: Bearer <token>` in the call metadata.
Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against every
known token, so the time taken does not depend on which token or how much of it
matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ADMIN_TOKEN_ENV = "DKT_RELAY_ADMIN_TOKEN"
AGENT_TOKENS_ENV = "DKT_RELAY_AGENT_TOKENS"
MIN_TOKEN_LENGTH = 16


class TokenConfigError(ValueError):
    """The token file or environment is malformed."""


@dataclass(frozen=True)
class Principal:
    """Who made a call: the admin, one agent, or anyone (when auth is off)."""

    kind: str  # "admin" | "agent" | "anonymous"
    agent_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind in ("admin", "anonymous")

    def describe(self) -> str:
        return f"agent {self.agent_id}" if self.kind == "agent" else self.kind


ADMIN = Principal("admin")
ANONYMOUS = Principal("anonymous")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The tokens a relay accepts. Empty means authentication is off."""

    def __init__(self, admin: str | None = None, agents: Mapping[int, str] | None = None) -> None:
        entries: list[tuple[str, Principal]] = []
        if admin:
            entries.append((admin, ADMIN))
        for agent_id, token in (agents or {}).items():
            entries.append((token, Principal("agent", int(agent_id))))
        seen: set[str] = set()
        for token, principal in entries:
            if len(token) < MIN_TOKEN_LENGTH:
                raise TokenConfigError(
                    f"the token of {principal.describe()} is shorter than {MIN_TOKEN_LENGTH} "
                    "characters; generate one with `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`"
                )
            if token in seen:
                raise TokenConfigError(
                    f"the token of {principal.describe()} is also used by another "
                    "principal; every token must be unique"
                )
            seen.add(token)
        self._entries = [(_digest(t), p) for t, p in entries]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of `token`, or None if no entry matches."""
        digest = _digest(token)
        found: Principal | None = None
        for known, principal in self._entries:
            # No early exit: every entry is compared whatever matched.
            if hmac.compare_digest(known, digest):
                found = principal
        return found

    @classmethod
    def from_file(cls, path: str | Path) -> TokenTable:
        admin, agents = _parse_file(Path(path))
        return cls(admin, agents)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenTable:
        admin, agents = _parse_env(os.environ if environ is None else environ)
        return cls(admin, agents)

    @classmethod
    def load(
        cls, path: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> TokenTable:
        """Tokens from the environment, overridden entry by entry by `path` if given."""
        admin, agents = _parse_env(os.environ if environ is None else environ)
        if path is not None:
            file_admin, file_agents = _parse_file(Path(path))
            admin = file_admin or admin
            agents = {**agents, **file_agents}
        return cls(admin, agents)


def _parse_file(path: Path) -> tuple[str | None, dict[int, str]]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TokenConfigError(f"token file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise TokenConfigError(f"token file {path} is not valid TOML: {err}") from None
    unknown = set(data) - {"admin", "agents"}
    if unknown:
        raise TokenConfigError(
            f"token file {path} has unknown keys {sorted(unknown)}; "
            'expected `admin = "..."` and an `[agents]` table'
        )
    admin = data.get("admin")
    if admin is not None and not isinstance(admin, str):
        raise TokenConfigError(f"token file {path}: `admin` must be a string")
    agents: dict[int, str] = {}
    for key, token in data.get("agents", {}).items():
        if not key.isdigit() or not isinstance(token, str):
            raise TokenConfigError(
                f'token file {path}: [agents] entries must look like `0 = "token"`, '
                f"got {key} = {token!r}"
            )
        agents[int(key)] = token
    return admin, agents


def _parse_env(environ: Mapping[str, str]) -> tuple[str | None, dict[int, str]]:
    admin = environ.get(ADMIN_TOKEN_ENV) or None
    agents: dict[int, str] = {}
    for item in filter(None, (s.strip() for s in environ.get(AGENT_TOKENS_ENV, "").split(","))):
        agent, sep, token = item.partition("=")
        if not sep or not agent.strip().isdigit():
            raise TokenConfigError(
                f"{AGENT_TOKENS_ENV} entries must look like `0=token`, got {item!r}"
            )
        agents[int(agent)] = token.strip()
    return admin, agents


def load_admin_token(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The admin token as `TokenTable.load` would find it (file entry over environment)."""
    admin, _ = _parse_env(os.environ if environ is None else environ)
    if path is not None:
        admin = _parse_file(Path(path))[0] or admin
    return admin
