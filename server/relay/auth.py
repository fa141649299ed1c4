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

`AuthInterceptor` resolves the token of every call to the relay service to a
`Principal` before its handler runs, refuses calls without a valid token
(UNAUTHENTICATED), and hands the handler a context that carries the principal
(`principal_of(context)`); what a principal may do is checked by the handler
(`require_admin`, `require_agent`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from dkt.proto.relay_connection import (
    ADMIN_TOKEN_ENV,
    AGENT_TOKENS_ENV,
    AUTHORIZATION_KEY,
    BEARER_SCHEME,
)
from dkt.server.relay.admission import IdleDeadline, StreamAdmission
from dkt.server.relay.rejection import Rejection

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

    @property
    def has_admin(self) -> bool:
        """Whether an admin token is set (the status endpoint beyond loopback needs one)."""
        return any(principal.kind == "admin" for _, principal in self._entries)

    def agent_key(self, agent_id: int) -> bytes | None:
        """The key of agent `agent_id`'s identity proofs (the SHA-256 of its token,
        proto/identity_proof.py), or None when it has no token here."""
        found = None
        for digest, principal in self._entries:
            if principal.kind == "agent" and principal.agent_id == agent_id:
                found = digest
        return found

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


# -- the interceptor -------------------------------------------------------------------


def authenticate(tokens: TokenTable, metadata: Any) -> Principal:
    """The principal of a call's `authorization` metadata; raises an UNAUTHENTICATED
    Rejection when it is missing, malformed or unknown."""
    if not tokens.enabled:
        return ANONYMOUS
    header = next((v for k, v in metadata or () if k == AUTHORIZATION_KEY), None)
    if not header:
        raise Rejection(
            grpc.StatusCode.UNAUTHENTICATED,
            f"missing token: send '{AUTHORIZATION_KEY}: {BEARER_SCHEME} <token>' in the call "
            "metadata",
        )
    scheme, _, token = str(header).partition(" ")
    if scheme.lower() != BEARER_SCHEME.lower() or not token.strip():
        raise Rejection(
            grpc.StatusCode.UNAUTHENTICATED,
            f"malformed {AUTHORIZATION_KEY} metadata: expected '{BEARER_SCHEME} <token>'",
        )
    principal = tokens.authenticate(token.strip())
    if principal is None:
        raise Rejection(
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid token: this relay does not know it; check the relay's token file",
        )
    return principal


def require_admin(principal: Principal, action: str) -> None:
    if not principal.is_admin:
        raise Rejection(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{action} needs the admin token; the token sent belongs to {principal.describe()}",
        )


def require_agent(principal: Principal, agent_id: int, action: str) -> None:
    """The admin, or the agent `agent_id` itself."""
    if principal.kind == "agent" and principal.agent_id != agent_id:
        raise Rejection(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the token of agent {principal.agent_id} cannot {action} agent {agent_id}; "
            f"use agent {agent_id}'s own token",
        )


class AuthenticatedContext:
    """A handler's `grpc.ServicerContext`, plus the principal that made the call."""

    def __init__(self, context: grpc.ServicerContext, principal: Principal) -> None:
        self._context = context
        self.principal = principal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def principal_of(context: Any) -> Principal:
    """Who made the call; only calls that passed the AuthInterceptor have a principal."""
    principal = getattr(context, "principal", None)
    if not isinstance(principal, Principal):
        raise RuntimeError("the relay service must be served behind the AuthInterceptor")
    return principal


# Streams with a limit of their own (RelayLimits.max_watches), not the per-credential one.
OWN_LIMIT_STREAMS = frozenset({"Watch"})

# (request streaming, response streaming) -> the RpcMethodHandler attribute that holds
# the behaviour of such a method, and the function that wraps a behaviour of that kind.
_HANDLER_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every call to the methods of one service (`/dkt.v1.Relay/...`).

    A call without a valid token ends with UNAUTHENTICATED before its handler runs
    (`on_rejected(method, code)` is told, e.g. to count it); the handler of any other
    call gets an `AuthenticatedContext`. Other services (health, reflection) pass as is.
    """

    def __init__(
        self,
        tokens: TokenTable,
        service: str,
        on_rejected: Callable[[str, grpc.StatusCode], None] | None = None,
        admission: StreamAdmission | None = None,
    ) -> None:
        self.tokens = tokens
        self._prefix = f"/{service}/"
        self._on_rejected = on_rejected
        self._admission = admission

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        full_name = handler_call_details.method
        if handler is None or not full_name.startswith(self._prefix):
            return handler
        method = full_name.removeprefix(self._prefix)
        metadata = handler_call_details.invocation_metadata
        streams_in, streams_out = handler.request_streaming, handler.response_streaming
        behavior_name, make = _HANDLER_KINDS[streams_in, streams_out]
        behavior = getattr(handler, behavior_name)

        def refuse(context: grpc.ServicerContext, rejection: Rejection) -> None:
            if self._on_rejected is not None:
                self._on_rejected(method, rejection.code)
            context.abort(rejection.code, rejection.message)

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                principal = authenticate(self.tokens, metadata)
            except Rejection as rejection:
                refuse(context, rejection)
            call_context = AuthenticatedContext(context, principal)
            admission = self._admission
            if admission is None or principal.kind == "admin" or not (streams_in or streams_out):
                return behavior(request, call_context)
            # One stream slot of this credential for as long as the call lasts.
            who = principal.describe()
            try:
                admission.acquire(who, own_limit=method not in OWN_LIMIT_STREAMS)
            except Rejection as rejection:
                refuse(context, rejection)
            if streams_in:
                request = IdleDeadline(request, context, admission.limits.idle_seconds)
            if streams_out:
                return _released_after(behavior(request, call_context), admission, who)
            try:
                return behavior(request, call_context)
            finally:
                admission.release(who)

        return make(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _released_after(responses: Iterator[Any], admission: StreamAdmission, who: str) -> Any:
    """`responses`, then `who`'s stream slot given back (also when the call ends early)."""
    try:
        yield from responses
    finally:
        admission.release(who)
