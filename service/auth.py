"""Bearer tokens with roles (admin, worker, reader), hashed at rest.

``ARCHSEARCH_ADMIN_TOKEN`` bootstraps an admin; more tokens are made with
``archsearch token create --role worker``, listed with ``archsearch token list`` and
revoked with ``archsearch token revoke ID|NAME``. Roles nest: admin may do everything, a
worker may also read, a reader may only read. With ``open_reads`` the read routes need no
token. The only module that writes ``api_tokens`` rows.

Identity: :func:`authorize` answers a :class:`Caller` (role and the token's row id). A
worker is bound to the token that registered it (``workers.token_id``), and only that
token may claim, heartbeat or report for it (:mod:`service.trial_store` checks it). The
bootstrap admin token has no row: its ``token_id`` is ``None``, and workers it registers
(``token_id`` NULL, like workers registered before migration 0003) belong to "the admin
token" -- only the bootstrap admin token may act for them. No other token, admin rows
included, may act for a worker it did not register.

Revocation: ``revoked_at`` is set by :func:`revoke_token`. A revoked token is refused
(401) at once by every worker action (claim, heartbeat, complete, fail, release check the
worker's token row in the same transaction). Other routes trust a :class:`TokenCache` hit
for at most its ``ttl`` (10 s) in coordinator processes other than the one that revoked;
:func:`revoke_token` given a cache drops the token from it at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .errors import Forbidden, NotFound, Unauthorized
from .models import ApiToken, Role

TOKEN_PREFIX = "as_"
RANK = {Role.READER: 0, Role.WORKER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Caller:
    """Who sent a request: ``role`` (``None``: an anonymous open read) and ``token_id``,
    the ``api_tokens`` row (``None`` for the bootstrap admin token and anonymous reads)."""

    role: Role | None
    token_id: int | None = None

    @property
    def is_bootstrap_admin(self) -> bool:
        return self.role == Role.ADMIN and self.token_id is None


ANONYMOUS = Caller(None, None)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, role: Role, name: str) -> str:
    """Store a new token's hash and return the token itself (shown once, never stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role, token_hash=hash_token(token)))
    session.flush()
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token row (revoked ones too), oldest first."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, ident: str, cache: TokenCache | None = None) -> ApiToken:
    """Revoke the token with row id ``ident`` (digits) or, else, name ``ident``.

    Revoking a revoked token changes nothing. Raises :class:`NotFound` for no such
    token, and (naming the ids) when several live tokens share the name: revoke by id.
    """
    query = select(ApiToken)
    if ident.isdigit() and len(ident) < 19:
        rows = list(session.scalars(query.where(ApiToken.id == int(ident))))
    else:
        rows = list(session.scalars(query.where(ApiToken.name == ident).order_by(ApiToken.id)))
        live = [r for r in rows if r.revoked_at is None]
        if len(live) > 1:
            ids = ", ".join(str(r.id) for r in live)
            raise NotFound(f"{len(live)} live tokens are named {ident!r} (ids {ids}): revoke by id")
        rows = live or rows[-1:]
    if not rows:
        raise NotFound(f"no token with id or name {ident!r}", field="token")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = func.now()
        session.flush()
        session.refresh(row)
    if cache is not None:
        cache.invalidate(row.token_hash)
    return row


class TokenCache:
    """Known token hashes -> (role, token id) for ``ttl`` seconds, so that a busy worker's
    every claim and report does not cost a token lookup. Unknown tokens are never cached;
    :meth:`invalidate` drops one at once (revocation in this process)."""

    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Caller, float]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> Caller | None:
        with self._lock:
            hit = self._entries.get(token_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, token_hash: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[token_hash] = (caller, time.monotonic() + self.ttl)

    def invalidate(self, token_hash: str) -> None:
        with self._lock:
            self._entries.pop(token_hash, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def caller_of(
    session: Session, token: str, admin_token: str | None, cache: TokenCache | None = None
) -> Caller | None:
    """The :class:`Caller` a presented token stands for, or ``None`` for an unknown or
    revoked token."""
    if admin_token is not None and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Caller(Role.ADMIN, None)
    digest = hash_token(token)
    if cache is not None and (hit := cache.get(digest)) is not None:
        return hit
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    caller = Caller(row.role, row.id)
    if cache is not None:
        cache.put(digest, caller)
    return caller


def role_of(
    session: Session, token: str, admin_token: str | None, cache: TokenCache | None = None
) -> Role | None:
    """The role a presented token carries, or ``None`` for an unknown/revoked token."""
    caller = caller_of(session, token, admin_token, cache)
    return None if caller is None else caller.role


def authorize(
    session: Session,
    authorization: str | None,
    needed: Role,
    *,
    admin_token: str | None,
    open_reads: bool,
    cache: TokenCache | None = None,
) -> Caller:
    """Check the ``Authorization`` header against the role ``needed``.

    Returns the :class:`Caller` (:data:`ANONYMOUS` for an anonymous open read). Raises
    :class:`Unauthorized` (401) for a missing, unknown or revoked token and
    :class:`Forbidden` (403) for a token whose role is too low.
    """
    if not authorization:
        if needed == Role.READER and open_reads:
            return ANONYMOUS
        raise Unauthorized(
            "a bearer token is required (Authorization: Bearer <token>)", field="Authorization"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'", field="Authorization")
    caller = caller_of(session, token.strip(), admin_token, cache)
    if caller is None or caller.role is None:
        raise Unauthorized("unknown or revoked token", field="Authorization")
    if RANK[caller.role] < RANK[needed]:
        raise Forbidden(
            f"this route needs the {needed.value} role; the token is {caller.role.value}",
            field="Authorization",
        )
    return caller
