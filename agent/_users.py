"""People, their API tokens and their browser sessions (the web UI and the API, DESIGN §10).

- A **token** is ``lnt_`` + 32 random bytes (URL-safe base64): shown once when issued, stored as its
  SHA-256 only. A key-stretching hash (scrypt) buys nothing for 256 random bits and would cost
  every API request; a server-side pepper would add a secret to manage for no gain either.
- A **browser session** is another random value in an ``HttpOnly`` cookie, also stored as its
  SHA-256, with the session's CSRF (synchronizer) token. It dies at its expiry, at sign-out, when
  its token is revoked and when its user is disabled.
- **Roles** are ordered: ``viewer`` < ``reviewer`` < ``admin``; each includes the ones before it.

Everything runs in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from store._inventory import as_utc
from store._models import ApiToken, User, UserRole, WebSession

TOKEN_PREFIX: Final = "lnt_"  # noqa: S105 - a marker for secret scanners, not a secret
#: Random bytes in a token or a session id (256 bits: guessing is hopeless, no rate limit needed).
SECRET_BYTES: Final = 32
#: A token's or session's last use is written at most this often (not one write per request).
TOUCH_INTERVAL: Final = timedelta(minutes=1)
DEFAULT_SESSION_TTL: Final = timedelta(hours=12)
MAX_NAME: Final = 128
_ROLE_RANK: Final = {UserRole.VIEWER: 0, UserRole.REVIEWER: 1, UserRole.ADMIN: 2}


class UserError(ValueError):
    """A user or token operation that cannot be done (bad name, unknown user, duplicate)."""


class UnknownUser(UserError):
    """No user of that name."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is making a request: the user, their role and the token they authenticated with."""

    user_id: int
    name: str
    role: UserRole
    token_id: int
    needs_touch: bool = field(default=False, compare=False)
    """Whether the token's recorded last use is older than TOUCH_INTERVAL (see ``touch``)."""

    def allows(self, needed: UserRole) -> bool:
        """Whether this role includes ``needed``."""
        return role_allows(self.role, needed)


@dataclass(frozen=True, slots=True)
class BrowserSession:
    """A signed-in browser: who, and the CSRF token its forms must carry."""

    principal: Principal
    csrf_token: str
    expires_at: datetime


def role_allows(role: UserRole, needed: UserRole) -> bool:
    """Whether ``role`` includes ``needed`` (admin > reviewer > viewer)."""
    return _ROLE_RANK[role] >= _ROLE_RANK[needed]


def digest(secret: str) -> str:
    """The SHA-256 (hex) under which a token or a session id is stored."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A new random API token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def check_name(name: str) -> str:
    """Return a user name cleaned of surrounding blanks, or raise UserError."""
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME:
        raise UserError(f"a user name has 1 to {MAX_NAME} characters")
    # The name is written as the author of decisions and shown in pages: only printable text.
    if any(unicodedata.category(char).startswith(("C", "Z")) and char != " " for char in cleaned):
        raise UserError("a user name has printable characters only")
    return cleaned


def get_user(session: Session, name: str) -> User:
    """The user of that name, or UserError."""
    user = session.scalar(select(User).where(User.name == name.strip()))
    if user is None:
        raise UnknownUser(f"no user {name!r}")
    return user


def list_users(session: Session) -> list[User]:
    """Every user, by name."""
    return list(session.scalars(select(User).order_by(User.name)))


def live_tokens(session: Session) -> dict[int, int]:
    """How many unrevoked tokens each user has, by user id."""
    rows = session.execute(
        select(ApiToken.user_id, func.count()).where(ApiToken.revoked_at.is_(None)).group_by(ApiToken.user_id)
    )
    return {int(user_id): int(count) for user_id, count in rows}


def add_user(
    session: Session, name: str, role: UserRole | str, now: datetime, *, label: str | None = None
) -> tuple[User, str]:
    """Create a user and their first token; return both (the token is never retrievable again)."""
    name = check_name(name)
    try:
        role = UserRole(role)
    except ValueError as exc:
        raise UserError(f"unknown role {role!r}: one of {', '.join(UserRole)}") from exc
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise UserError(f"user {name!r} already exists")
    user = User(name=name, role=role, created_at=now)
    session.add(user)
    session.flush()
    return user, issue_token(session, user, now, label=label)


def issue_token(session: Session, user: User, now: datetime, *, label: str | None = None) -> str:
    """A new token for ``user`` (their other tokens stay valid)."""
    token = new_token()
    session.add(
        ApiToken(user_id=user.id, token_hash=digest(token), label=(label or "")[:128] or None, created_at=now)
    )
    session.flush()
    return token


def revoke_tokens(session: Session, user: User, now: datetime) -> int:
    """Revoke every token of ``user`` (and so their browser sessions); return how many."""
    tokens = list(
        session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)))
    )
    for token in tokens:
        token.revoked_at = now
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    session.flush()
    return len(tokens)


def set_role(session: Session, user: User, role: UserRole | str) -> None:
    """Change a user's role."""
    try:
        user.role = UserRole(role)
    except ValueError as exc:
        raise UserError(f"unknown role {role!r}: one of {', '.join(UserRole)}") from exc
    session.flush()


def disable_user(session: Session, user: User, now: datetime) -> None:
    """Disable a user: their tokens stop working and their sessions end (history keeps the name)."""
    user.disabled_at = now
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    session.flush()


def authenticate(session: Session, token: str, now: datetime) -> Principal | None:
    """The principal a bearer token belongs to, or None (unknown, revoked, disabled user); reads only."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    wanted = digest(token)
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == wanted, ApiToken.revoked_at.is_(None), User.disabled_at.is_(None))
    ).first()
    if row is None:
        return None
    api_token, user = row
    # The lookup is by hash (no secret-dependent prefix to time); compare once more in constant time.
    if not hmac.compare_digest(api_token.token_hash, wanted):
        return None
    return _principal(user, api_token, now)


def _principal(user: User, token: ApiToken, now: datetime) -> Principal:
    last = token.last_used_at
    stale = last is None or now - as_utc(last) >= TOUCH_INTERVAL
    return Principal(user.id, user.name, user.role, token.id, needs_touch=stale)


def touch(session: Session, principal: Principal, now: datetime) -> None:
    """Record the use of a principal's token (callers do it off the request path: it writes)."""
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == principal.token_id,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - TOUCH_INTERVAL),
        )
        .values(last_used_at=now)
    )


def open_session(
    session: Session, principal: Principal, now: datetime, ttl: timedelta = DEFAULT_SESSION_TTL
) -> tuple[str, BrowserSession]:
    """Start a browser session; return the cookie value (never stored) and the session."""
    session.execute(delete(WebSession).where(WebSession.expires_at <= now))
    cookie = secrets.token_urlsafe(SECRET_BYTES)
    csrf = secrets.token_urlsafe(SECRET_BYTES)
    expires = now + ttl
    session.add(
        WebSession(
            id_hash=digest(cookie),
            user_id=principal.user_id,
            token_id=principal.token_id,
            csrf_token=csrf,
            created_at=now,
            expires_at=expires,
            last_seen_at=now,
        )
    )
    session.flush()
    return cookie, BrowserSession(principal, csrf, expires)


def find_session(session: Session, cookie: str, now: datetime) -> BrowserSession | None:
    """The live browser session of a cookie value, or None; reads only (no sliding expiry)."""
    if not cookie or len(cookie) > 200:
        return None
    row = session.execute(
        select(WebSession, User, ApiToken)
        .join(User, User.id == WebSession.user_id)
        .join(ApiToken, ApiToken.id == WebSession.token_id)
        .where(
            WebSession.id_hash == digest(cookie),
            WebSession.expires_at > now,
            User.disabled_at.is_(None),
            ApiToken.revoked_at.is_(None),
        )
    ).first()
    if row is None:
        return None
    web, user, token = row
    return BrowserSession(_principal(user, token, now), web.csrf_token, as_utc(web.expires_at))


def close_session(session: Session, cookie: str) -> None:
    """End a browser session (sign-out)."""
    session.execute(delete(WebSession).where(WebSession.id_hash == digest(cookie)))
