"""Things worth counting or alerting on, reported from one place.

Grants, the refresh-token store and the key lifecycle call these functions; they write the log
line (security events get their own line at WARNING) and, through ``server.metrics``, the
Prometheus series. Callers never format log lines or touch metrics themselves.
"""

from __future__ import annotations

import logging

security_log = logging.getLogger("tessera.security")
log = logging.getLogger("tessera.events")


def token_issued(grant_type: str, client_id: str) -> None:
    """An access token was issued by ``grant_type`` to ``client_id``."""


def refresh_rotated(client_id: str) -> None:
    """A refresh token was rotated (a successful refresh_token grant)."""


def refresh_retry_answered(client_id: str) -> None:
    """A retry inside the reuse grace was answered with the same successor."""


def refresh_reuse_detected(*, family_id: str, client_id: str, user_id: str, remote: str | None) -> None:
    """A spent refresh token was presented again: its family is revoked (RFC 9700 section 4.14.2)."""
    security_log.warning(
        "refresh token reuse detected; family revoked",
        extra={"event": "refresh_reuse", "family_id": family_id, "client_id": client_id, "user_id": user_id,
               "remote": remote},
    )


def families_revoked(reason: str, count: int) -> None:
    """``count`` refresh-token families were revoked for ``reason`` (reuse, logout, user_disabled, ...)."""
    if count:
        log.info("refresh families revoked", extra={"event": "families_revoked", "reason": reason, "count": count})


def key_rotated(new_kid: str, retired_kid: str | None) -> None:
    log.info("signing key rotated", extra={"event": "key_rotated", "kid": new_kid, "retired_kid": retired_kid})


def key_revoked(kid: str) -> None:
    security_log.warning("signing key revoked", extra={"event": "key_revoked", "kid": kid})


def login_failed(kind: str, subject: str, remote: str | None) -> None:
    """A failed password login (kind "user") or client authentication (kind "client")."""


def login_throttled(kind: str, remote: str) -> None:
    """An attempt for a throttled username or client (kind "user"/"client") from ``remote`` got 429."""
    security_log.warning("login throttled", extra={"event": "login_throttled", "kind": kind, "remote": remote})


def hasher_saturated() -> None:
    """A password or secret check was refused because the argon2 queue was full (503)."""
    log.warning("argon2 queue full; request refused", extra={"event": "hasher_saturated"})
