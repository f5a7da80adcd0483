"""Bearer tokens with roles (admin, worker, reader), hashed at rest.

``ARCHSEARCH_ADMIN_TOKEN`` bootstraps an admin; more tokens are made with
``archsearch token create --role worker``. Roles nest: admin may do everything, a worker
may also read, a reader may only read. With ``open_reads`` the read routes need no token.
The only module that writes ``api_tokens`` rows.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Forbidden, Unauthorized
from .models import ApiToken, Role

TOKEN_PREFIX = "as_"
RANK = {Role.READER: 0, Role.WORKER: 1, Role.ADMIN: 2}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, role: Role, name: str) -> str:
    """Store a new token's hash and return the token itself (shown once, never stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role, token_hash=hash_token(token)))
    session.flush()
    return token


class TokenCache:
    """Known token hashes -> role for ``ttl`` seconds, so that a busy worker's every claim
    and report does not cost a token lookup. Unknown tokens are never cached."""

    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Role, float]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> Role | None:
        with self._lock:
            hit = self._entries.get(token_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, token_hash: str, role: Role) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[token_hash] = (role, time.monotonic() + self.ttl)


def role_of(
    session: Session, token: str, admin_token: str | None, cache: TokenCache | None = None
) -> Role | None:
    """The role a presented token carries, or ``None`` for an unknown/revoked token."""
    if admin_token is not None and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Role.ADMIN
    digest = hash_token(token)
    if cache is not None and (role := cache.get(digest)) is not None:
        return role
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    if cache is not None:
        cache.put(digest, row.role)
    return row.role


def authorize(
    session: Session,
    authorization: str | None,
    needed: Role,
    *,
    admin_token: str | None,
    open_reads: bool,
    cache: TokenCache | None = None,
) -> Role | None:
    """Check the ``Authorization`` header against the role ``needed``.

    Returns the caller's role (``None`` for an anonymous open read). Raises
    :class:`Unauthorized` (401) for a missing or unknown token and :class:`Forbidden`
    (403) for a token whose role is too low.
    """
    if not authorization:
        if needed == Role.READER and open_reads:
            return None
        raise Unauthorized(
            "a bearer token is required (Authorization: Bearer <token>)", field="Authorization"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'", field="Authorization")
    role = role_of(session, token.strip(), admin_token, cache)
    if role is None:
        raise Unauthorized("unknown or revoked token", field="Authorization")
    if RANK[role] < RANK[needed]:
        raise Forbidden(
            f"this route needs the {needed.value} role; the token is {role.value}",
            field="Authorization",
        )
    return role
