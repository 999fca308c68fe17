"""Things worth counting or alerting on, reported from one place.

Grants, the refresh-token store and the key lifecycle call these functions; they write the log
line (security events get their own line at WARNING) and, through ``tessera.server.ops.metrics``, the
Prometheus series. Callers never format log lines or touch metrics themselves.
"""

from __future__ import annotations

import logging

from tessera.server.ops import metrics

security_log = logging.getLogger("tessera.security")
log = logging.getLogger("tessera.events")


def token_issued(grant_type: str, client_id: str) -> None:
    """An access token was issued by ``grant_type`` to ``client_id``."""
    if (series := metrics.current()) is not None:
        series.count(series.tokens_issued, (grant_type, client_id))


def refresh_rotated(client_id: str) -> None:
    """A refresh token was rotated (a successful refresh_token grant)."""
    if (series := metrics.current()) is not None:
        series.count(series.refresh_rotations, (client_id,))


def rotations_sent(rows: int) -> None:
    """``rows`` refresh rotations went to the database as one statement (group commit)."""
    if (series := metrics.current()) is not None:
        series.rotation_batch_rows.observe(rows)


def refresh_retry_answered(client_id: str) -> None:
    """A retry inside the reuse grace was answered with the same successor."""
    if (series := metrics.current()) is not None:
        series.refresh_retries.labels(client_id).inc()


def refresh_reuse_detected(*, family_id: str, client_id: str, user_id: str, remote: str | None) -> None:
    """A spent refresh token was presented again: its family is revoked (RFC 9700 section 4.14.2)."""
    if (series := metrics.current()) is not None:
        series.refresh_reuse.labels(client_id).inc()
    security_log.warning(
        "refresh token reuse detected; family revoked",
        extra={"event": "refresh_reuse", "family_id": family_id, "client_id": client_id, "user_id": user_id,
               "remote": remote},
    )


def refresh_wrong_client(
    *, family_id: str, client_id: str, presented_by: str, user_id: str, remote: str | None
) -> None:
    """A genuine refresh token of ``client_id`` was presented by another client: stolen; family revoked."""
    security_log.warning(
        "refresh token presented by another client; family revoked",
        extra={"event": "refresh_wrong_client", "family_id": family_id, "client_id": client_id,
               "presented_by": presented_by, "user_id": user_id, "remote": remote},
    )


def garbage_collected(what: str, count: int) -> None:
    """``count`` expired rows of ``what`` (refresh_families, security_events, ...) were deleted."""
    if count:
        log.info("garbage collected", extra={"event": "garbage_collected", "what": what, "count": count})


def families_revoked(reason: str, count: int) -> None:
    """``count`` refresh-token families were revoked for ``reason`` (reuse, logout, user_disabled, ...)."""
    if count:
        if (series := metrics.current()) is not None:
            series.families_revoked.labels(reason).inc(count)
        log.info("refresh families revoked", extra={"event": "families_revoked", "reason": reason, "count": count})


def key_rotated(new_kid: str, retired_kid: str | None) -> None:
    if (series := metrics.current()) is not None:
        series.key_rotations.inc()
    log.info("signing key rotated", extra={"event": "key_rotated", "kid": new_kid, "retired_kid": retired_kid})


def key_revoked(kid: str) -> None:
    if (series := metrics.current()) is not None:
        series.key_revocations.inc()
    security_log.warning("signing key revoked", extra={"event": "key_revoked", "kid": kid})


def key_next_replaced(old_kid: str, new_kid: str, alg: str) -> None:
    """TESSERA_SIGNING_ALG changed: the unused next key was replaced by one of the new algorithm."""
    log.info("next signing key replaced", extra={"event": "key_next_replaced", "kid": new_kid, "old_kid": old_kid,
                                                 "alg": alg})


def keys_rewrapped(keys: int, secrets: int) -> None:
    security_log.warning("private keys re-sealed under a new key-encryption key",
                         extra={"event": "keys_rewrapped", "keys": keys, "secrets": secrets})


def keyring_problem(problem: str) -> None:
    """This instance cannot load the key set it should sign with (it reports not ready)."""
    log.error("keyring not loaded", extra={"event": "keyring_problem", "problem": problem})


def rotation_unanswered(*, family_id: str, client_id: str, generation: int) -> None:
    """A refresh rotation committed although its request was answered with an error (a lost
    commit acknowledgement); the family is marked so that the client's retry gets its token."""
    log.warning(
        "refresh rotation committed but its answer failed; the retry will be answered",
        extra={"event": "rotation_unanswered", "family_id": family_id, "client_id": client_id,
               "generation": generation},
    )


def change_listener_lost(cause: str) -> None:
    """The LISTEN connection for key changes dropped; it reconnects, and polling covers the gap."""
    log.warning("change listener lost; reconnecting", extra={"event": "change_listener_lost", "cause": cause})


def login_failed(kind: str, subject: str, remote: str | None) -> None:
    """A failed password login (kind "user") or client authentication (kind "client")."""
    if (series := metrics.current()) is not None:
        series.login_failures.labels(kind).inc()  # never the subject: usernames are unbounded input


def login_throttled(kind: str, remote: str) -> None:
    """An attempt for a throttled username or client (kind "user"/"client") from ``remote`` got 429."""
    security_log.warning("login throttled", extra={"event": "login_throttled", "kind": kind, "remote": remote})


def hasher_saturated() -> None:
    """A password or secret check was refused because the argon2 queue was full (503)."""
    log.warning("argon2 queue full; request refused", extra={"event": "hasher_saturated"})


def authorization_code_issued(client_id: str) -> None:
    """A person's sign-in ended in an authorization code for ``client_id``."""
    log.info("authorization code issued", extra={"event": "authorization_code_issued", "client_id": client_id})


def authorization_code_replayed(client_id: str, user_id: str, remote: str | None) -> None:
    """A redeemed authorization code was presented again: the family it started is revoked."""
    security_log.warning(
        "authorization code presented again; its tokens are revoked",
        extra={"event": "authorization_code_replay", "client_id": client_id, "user_id": user_id, "remote": remote},
    )


def signed_in(user_id: str, remote: str | None) -> None:
    log.info("signed in", extra={"event": "signed_in", "user_id": user_id, "remote": remote})


def signed_out(user_id: str, families_revoked: int) -> None:
    log.info("signed out", extra={"event": "signed_out", "user_id": user_id, "families_revoked": families_revoked})


def client_assertion_refused(reason: str, client_id: str, remote: str | None) -> None:
    """A private_key_jwt client assertion was refused (RFC 7523 section 3): ``reason`` is one of
    ``tessera.server.oauth.client_assertions.REFUSALS``; ``client_id`` is the one it claimed."""
    if (series := metrics.current()) is not None:
        series.count(series.client_assertions_refused, (reason,))
    security_log.warning(
        "client assertion refused",
        extra={"event": "client_assertion_refused", "reason": reason, "client_id": client_id, "remote": remote},
    )


def client_assertion_replayed(client_id: str, remote: str | None) -> None:
    """A client assertion whose jti was already used was presented again: a copy of a genuine one."""
    if (series := metrics.current()) is not None:
        series.count(series.client_assertion_replays, (client_id,))
        series.count(series.client_assertions_refused, ("replayed",))
    security_log.warning(
        "client assertion replayed; refused",
        extra={"event": "client_assertion_replay", "client_id": client_id, "remote": remote},
    )


def client_jwks_unavailable(client_id: str, reason: str) -> None:
    """A private_key_jwt client's jwks_uri could not be fetched and no usable copy was cached."""
    log.warning("client key set unavailable", extra={"event": "client_jwks_unavailable", "client_id": client_id,
                                                      "reason": reason})


# RFC 8693 refusals that point at a stolen, forged or misdirected token rather than a client's bug.
_SUSPICIOUS_EXCHANGE_REFUSALS = frozenset({"subject_token", "subject_audience", "session_revoked"})


def token_exchange_refused(*, client_id: str, reason: str, remote: str | None) -> None:
    """A token exchange (RFC 8693) by ``client_id`` was refused for ``reason``: request, client,
    target, scope, subject_token (not a valid, unexpired token of this server), subject_audience
    (not one the client may exchange from), session_revoked or delegation_depth."""
    if (series := metrics.current()) is not None:
        series.count(series.token_exchanges_refused, (client_id, reason))
    if reason in _SUSPICIOUS_EXCHANGE_REFUSALS:
        security_log.warning(
            "token exchange refused",
            extra={"event": "token_exchange_refused", "client_id": client_id, "reason": reason, "remote": remote},
        )


def token_exchanged(*, client_id: str, subject_client_id: str, subject: str, audience: str) -> None:
    """``client_id`` now acts for ``subject`` at ``audience``, with a token it got by exchanging one
    issued to ``subject_client_id`` (RFC 8693): who acted for whom, for the audit trail."""
    log.info(
        "token exchanged",
        extra={"event": "token_exchanged", "client_id": client_id, "subject_client_id": subject_client_id,
               "sub": subject, "aud": audience},
    )
