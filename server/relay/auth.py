"""Who may call the relay: an admin token, a conductor token, and agent tokens bound to
one agent id each, which agents never send: they send a run credential derived from
the token and a run id (proto/run_credential.py), good for that run only.

Token file (TOML):

    admin = "a-long-random-admin-token"
    conductor = "a-long-random-conductor-token"

    [agents]
    0 = "a-long-random-token-of-agent-0"
    1 = "a-long-random-token-of-agent-1"

Or the environment: `DKT_RELAY_ADMIN_TOKEN=...`, `DKT_RELAY_CONDUCTOR_TOKEN=...` and
`DKT_RELAY_AGENT_TOKENS="0=token0,1=token1"` (both sources are merged; a file entry
wins). Every entry is optional; `dkt server` makes up a conductor token at start-up when
neither source has one. Clients send `authorization: Bearer <token or credential>` in
the call metadata:

- the admin token may do everything;
- the conductor token (what the Flower ServerApp holds) creates runs and drives, reads
  and watches the runs it created, and no run the admin created;
- agent N sends `dkt-run.N.<base64url run id>.<HMAC>` (relay.proto's header): it acts
  as agent N in that one run, and an agent's token sent as it is is refused.

Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against every known
token, so the time taken does not depend on which token or how much of it matched; a
run credential's HMAC is recomputed with the agent's key (the SHA-256 of its token) and
compared the same way.

`AuthInterceptor` resolves the token of every call to the relay service to a
`Principal` before its handler runs, refuses calls without a valid token or credential
(UNAUTHENTICATED), and hands the handler a context that carries the principal
(`principal_of(context)`); what a principal may do is checked by the handler
(`require_manager`, `require_agent`, `require_credential_run`, `require_owner`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
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
    CONDUCTOR_TOKEN_ENV,
)
from dkt.proto.run_credential import (
    PREFIX as CREDENTIAL_PREFIX,
)
from dkt.proto.run_credential import (
    RunCredential,
    credential_matches,
    looks_like_run_credential,
    parse_run_credential,
)
from dkt.server.relay.admission import IdleDeadline, StreamAdmission
from dkt.server.relay.rejection import Rejection

MIN_TOKEN_LENGTH = 16
# Where an agent reads how to derive its run credential.
CREDENTIAL_DOC = (
    f"{CREDENTIAL_PREFIX}.<agent id>.<base64url run id>.<hex HMAC-SHA256>, as the header of "
    "proto/dkt/v1/relay.proto says (dkt.proto.run_credential in Python)"
)


class TokenConfigError(ValueError):
    """The token file or environment is malformed."""


@dataclass(frozen=True)
class Principal:
    """Who made a call: the admin, the conductor, one agent in one run, or anyone (when
    auth is off)."""

    kind: str  # "admin" | "conductor" | "agent" | "anonymous"
    agent_id: int | None = None
    # An agent's: the run its credential is for (None for a token looked up as it is).
    run_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind in ("admin", "anonymous")

    @property
    def manages_runs(self) -> bool:
        """The admin and the conductor create and drive runs (the conductor its own)."""
        return self.kind in ("admin", "conductor", "anonymous")

    @property
    def creator(self) -> str:
        """What a run this principal creates records as its creator."""
        return "conductor" if self.kind == "conductor" else "admin"

    def describe(self) -> str:
        return f"agent {self.agent_id}" if self.kind == "agent" else self.kind


ADMIN = Principal("admin")
CONDUCTOR = Principal("conductor")
ANONYMOUS = Principal("anonymous")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The tokens a relay accepts. Empty means authentication is off."""

    def __init__(
        self,
        admin: str | None = None,
        agents: Mapping[int, str] | None = None,
        conductor: str | None = None,
    ) -> None:
        entries: list[tuple[str, Principal]] = []
        if admin:
            entries.append((admin, ADMIN))
        if conductor:
            entries.append((conductor, CONDUCTOR))
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
            if looks_like_run_credential(token):
                raise TokenConfigError(
                    f"the token of {principal.describe()} starts with '{CREDENTIAL_PREFIX}.', "
                    "as run credentials do; choose another"
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
        """The key of agent `agent_id`'s identity proofs and run credentials (the SHA-256
        of its token, proto/identity_proof.py), or None when it has no token here."""
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

    def authenticate_credential(self, credential: RunCredential) -> Principal | None:
        """Agent `credential.agent_id` in run `credential.run_id`, if the credential's
        HMAC is that agent's; None otherwise."""
        key = self.agent_key(credential.agent_id)
        if key is None or not credential_matches(key, credential):
            return None
        return Principal("agent", credential.agent_id, credential.run_id)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenTable:
        return cls.load(None, environ)

    @classmethod
    def load(
        cls, path: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> TokenTable:
        """Tokens from the environment, overridden entry by entry by `path` if given."""
        found = _load(path, environ)
        return cls(found.admin, found.agents, found.conductor)


@dataclass(frozen=True)
class _Tokens:
    admin: str | None
    conductor: str | None
    agents: dict[int, str]


def _load(path: str | Path | None, environ: Mapping[str, str] | None) -> _Tokens:
    """The environment's tokens, overridden entry by entry by the file at `path`."""
    found = _parse_env(os.environ if environ is None else environ)
    if path is None:
        return found
    in_file = _parse_file(Path(path))
    return _Tokens(
        in_file.admin or found.admin,
        in_file.conductor or found.conductor,
        {**found.agents, **in_file.agents},
    )


def _parse_file(path: Path) -> _Tokens:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TokenConfigError(f"token file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise TokenConfigError(f"token file {path} is not valid TOML: {err}") from None
    unknown = set(data) - {"admin", "conductor", "agents"}
    if unknown:
        raise TokenConfigError(
            f"token file {path} has unknown keys {sorted(unknown)}; "
            'expected `admin = "..."`, `conductor = "..."` and an `[agents]` table'
        )
    for key in ("admin", "conductor"):
        if key in data and not isinstance(data[key], str):
            raise TokenConfigError(f"token file {path}: `{key}` must be a string")
    agents: dict[int, str] = {}
    for key, token in data.get("agents", {}).items():
        if not key.isdigit() or not isinstance(token, str):
            raise TokenConfigError(
                f'token file {path}: [agents] entries must look like `0 = "token"`, '
                f"got {key} = {token!r}"
            )
        agents[int(key)] = token
    return _Tokens(data.get("admin"), data.get("conductor"), agents)


def _parse_env(environ: Mapping[str, str]) -> _Tokens:
    agents: dict[int, str] = {}
    for item in filter(None, (s.strip() for s in environ.get(AGENT_TOKENS_ENV, "").split(","))):
        agent, sep, token = item.partition("=")
        if not sep or not agent.strip().isdigit():
            raise TokenConfigError(
                f"{AGENT_TOKENS_ENV} entries must look like `0=token`, got {item!r}"
            )
        agents[int(agent)] = token.strip()
    return _Tokens(
        environ.get(ADMIN_TOKEN_ENV) or None, environ.get(CONDUCTOR_TOKEN_ENV) or None, agents
    )


def tokens_with_conductor(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[TokenTable, str | None]:
    """The relay's tokens as `TokenTable.load` finds them, and the conductor's token:
    the file's (or environment's) `conductor`, else a random one made now and added to
    the table. None, and the table empty, when there are no tokens (authentication off)."""
    found = _load(path, environ)
    conductor = found.conductor
    if conductor is None and (found.admin or found.agents):
        conductor = secrets.token_urlsafe(32)
        while looks_like_run_credential(conductor):  # a token may not look like one
            conductor = secrets.token_urlsafe(32)
    return TokenTable(found.admin, found.agents, conductor), conductor


# -- the interceptor -------------------------------------------------------------------


def authenticate(tokens: TokenTable, metadata: Any) -> Principal:
    """The principal of a call's `authorization` metadata; raises an UNAUTHENTICATED
    Rejection when it is missing, malformed or unknown, or an agent's token sent as it is."""
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
    token = token.strip()
    if scheme.lower() != BEARER_SCHEME.lower() or not token:
        raise Rejection(
            grpc.StatusCode.UNAUTHENTICATED,
            f"malformed {AUTHORIZATION_KEY} metadata: expected '{BEARER_SCHEME} <token>'",
        )
    if looks_like_run_credential(token):
        return _authenticate_credential(tokens, token)
    principal = tokens.authenticate(token)
    if principal is None:
        raise Rejection(
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid token: this relay does not know it; check the relay's token file",
        )
    if principal.kind == "agent":
        raise Rejection(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the token of agent {principal.agent_id} was sent as it is; an agent sends the "
            f"run credential derived from its token and the run id instead: {CREDENTIAL_DOC}",
        )
    return principal


def _authenticate_credential(tokens: TokenTable, value: str) -> Principal:
    credential = parse_run_credential(value)
    if credential is None:
        raise Rejection(
            grpc.StatusCode.UNAUTHENTICATED,
            f"malformed run credential: expected {CREDENTIAL_DOC}",
        )
    principal = tokens.authenticate_credential(credential)
    if principal is None:
        raise Rejection(
            grpc.StatusCode.UNAUTHENTICATED,
            f"invalid run credential: it is not derived from the token this relay holds for "
            f"agent {credential.agent_id}; derive it from that token: {CREDENTIAL_DOC}",
        )
    return principal


def require_manager(principal: Principal, action: str) -> None:
    """The admin or the conductor (which of the runs is `require_owner`'s to say)."""
    if not principal.manages_runs:
        raise Rejection(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{action} needs the admin or the conductor token; the credential sent belongs "
            f"to {principal.describe()}",
        )


def require_agent(
    principal: Principal, agent_id: int, action: str, conductor_may: bool = False
) -> None:
    """The admin, the agent `agent_id` itself, and where `conductor_may` the conductor."""
    if principal.kind == "agent" and principal.agent_id != agent_id:
        raise Rejection(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the credential of agent {principal.agent_id} cannot {action} agent {agent_id}; "
            f"use agent {agent_id}'s own credential",
        )
    if principal.kind == "conductor" and not conductor_may:
        raise Rejection(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the conductor token cannot {action} agent {agent_id}; only the agent's own "
            "credential (or the admin token) can",
        )


def require_credential_run(principal: Principal, run_id: str) -> None:
    """An agent acts only in the run its credential is for (checked before the run is
    looked up, so a credential tells nothing of other runs)."""
    if principal.kind == "agent" and principal.run_id != run_id:
        raise Rejection(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the credential of agent {principal.agent_id} is for run {principal.run_id!r}, "
            f"not run {run_id!r}; derive the credential of run {run_id!r} from the agent's "
            "token",
        )


def require_owner(principal: Principal, run_id: str, created_by: str) -> None:
    """The conductor reaches only the runs the conductor created."""
    if principal.kind == "conductor" and created_by != "conductor":
        raise Rejection(
            grpc.StatusCode.PERMISSION_DENIED,
            f"run {run_id!r} was created by the {created_by}; the conductor token reaches "
            "only the runs the conductor created",
        )


def may_see(principal: Principal, run_id: str, created_by: str) -> bool:
    """Whether `principal` may see run `run_id` (in GetStatus): the admin every run, the
    conductor the runs it created, an agent the run of its credential."""
    if principal.kind == "agent":
        return principal.run_id == run_id
    if principal.kind == "conductor":
        return created_by == "conductor"
    return True


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
            # The admin's and the conductor's calls are not limited: agents cannot starve them.
            unlimited = principal.kind in ("admin", "conductor")
            if admission is None or unlimited or not (streams_in or streams_out):
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
